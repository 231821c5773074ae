use std::time::Duration;

/// Everything that can go wrong in the identity domain, with a stable code for clients.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    Ident(#[from] mica_core::IdentError),
    #[error("{0}")]
    WeakPassword(String),
    #[error("the code is wrong; {remaining} attempt(s) left")]
    InvalidCode { remaining: i64 },
    #[error("this code has expired or was already used; ask for a new one")]
    CodeExpired,
    #[error("too many wrong codes; ask for a new one")]
    CodeLocked,
    #[error("wait before asking for another code")]
    ResendTooSoon { retry_after: Duration },
    #[error("too many requests; try again later")]
    RateLimited { retry_after: Duration },
    #[error("too many wrong passwords for this account; try again later or reset your password")]
    SignInBackoff { retry_after: Duration },
    #[error("the account, email, phone number or password is wrong")]
    InvalidCredentials,
    #[error("an account with this email address or phone number already exists; sign in or reset the password")]
    IdentifierTaken,
    #[error("sign in first")]
    Unauthenticated,
    #[error("the session has expired; sign in again")]
    TokenExpired,
    #[error("this refresh token is not valid; sign in again")]
    InvalidRefreshToken,
    #[error("this refresh token was already used; the session has been revoked for safety, sign in again")]
    RefreshTokenReused,
    #[error("confirm it's you first: verify a code sent to your phone or email, or from your authenticator app (POST /api/v1/step-up)")]
    StepUpRequired,
    #[error(
        "two-step verification is already on; turn it off first to set up a new authenticator"
    )]
    TwoStepEnabled,
    #[error("two-step verification is not set up")]
    TwoStepNotEnabled,
    #[error("{0}")]
    FactorMissing(&'static str),
    #[error("this passkey challenge has expired or was already answered; start again")]
    ChallengeExpired,
    #[error("the passkey was not accepted: {0}")]
    PasskeyRejected(String),
    #[error("there is no passkey for this account; sign in with the password")]
    NoPasskey,
    #[error("passkeys are not available on this server: it must be reached by a domain name (public_url)")]
    PasskeysUnavailable,
    #[error("not found")]
    NotFound,
    #[error("this recovery request is still in its waiting period, until {until}")]
    RecoveryWaiting { until: mica_core::Timestamp },
    #[error("this recovery request is not approved (it is {state})")]
    RecoveryNotApproved { state: String },
    #[error("this recovery request is already closed or decided")]
    RecoveryClosed,
    #[error("this account is suspended by the operator of this service; ask them to reinstate it")]
    AccountSuspended,
    #[error("internal error: {0}")]
    Internal(String),
}

impl IdentityError {
    /// Stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            IdentityError::Invalid { .. } => "invalid_input",
            IdentityError::Ident(e) => e.code(),
            IdentityError::WeakPassword(_) => "weak_password",
            IdentityError::InvalidCode { .. } => "invalid_code",
            IdentityError::CodeExpired => "code_expired",
            IdentityError::CodeLocked => "code_locked",
            IdentityError::ResendTooSoon { .. } => "resend_too_soon",
            IdentityError::RateLimited { .. } => "rate_limited",
            IdentityError::SignInBackoff { .. } => "signin_backoff",
            IdentityError::InvalidCredentials => "invalid_credentials",
            IdentityError::IdentifierTaken => "identifier_taken",
            IdentityError::Unauthenticated => "unauthenticated",
            IdentityError::TokenExpired => "token_expired",
            IdentityError::InvalidRefreshToken => "invalid_refresh_token",
            IdentityError::RefreshTokenReused => "refresh_token_reused",
            IdentityError::StepUpRequired => "step_up_required",
            IdentityError::TwoStepEnabled => "two_step_enabled",
            IdentityError::TwoStepNotEnabled => "two_step_not_enabled",
            IdentityError::FactorMissing(_) => "factor_missing",
            IdentityError::ChallengeExpired => "challenge_expired",
            IdentityError::PasskeyRejected(_) => "passkey_rejected",
            IdentityError::NoPasskey => "no_passkey",
            IdentityError::PasskeysUnavailable => "passkeys_unavailable",
            IdentityError::NotFound => "not_found",
            IdentityError::RecoveryWaiting { .. } => "recovery_waiting",
            IdentityError::RecoveryNotApproved { .. } => "recovery_not_approved",
            IdentityError::RecoveryClosed => "recovery_closed",
            IdentityError::AccountSuspended => "account_suspended",
            IdentityError::Internal(_) => "internal",
        }
    }

    /// The HTTP status this error maps to.
    pub fn http_status(&self) -> u16 {
        match self {
            IdentityError::Invalid { .. }
            | IdentityError::Ident(_)
            | IdentityError::WeakPassword(_) => 422,
            IdentityError::InvalidCode { .. }
            | IdentityError::CodeExpired
            | IdentityError::CodeLocked
            | IdentityError::ChallengeExpired
            | IdentityError::PasskeyRejected(_)
            | IdentityError::NoPasskey => 400,
            IdentityError::PasskeysUnavailable => 503,
            IdentityError::ResendTooSoon { .. }
            | IdentityError::RateLimited { .. }
            | IdentityError::SignInBackoff { .. } => 429,
            IdentityError::InvalidCredentials
            | IdentityError::Unauthenticated
            | IdentityError::TokenExpired
            | IdentityError::InvalidRefreshToken
            | IdentityError::RefreshTokenReused => 401,
            IdentityError::IdentifierTaken
            | IdentityError::RecoveryWaiting { .. }
            | IdentityError::RecoveryNotApproved { .. }
            | IdentityError::RecoveryClosed
            | IdentityError::TwoStepEnabled
            | IdentityError::TwoStepNotEnabled => 409,
            IdentityError::StepUpRequired | IdentityError::AccountSuspended => 403,
            IdentityError::FactorMissing(_) => 422,
            IdentityError::NotFound => 404,
            IdentityError::Internal(_) => 500,
        }
    }

    /// For 429s: when to retry.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            IdentityError::ResendTooSoon { retry_after }
            | IdentityError::RateLimited { retry_after }
            | IdentityError::SignInBackoff { retry_after } => Some(*retry_after),
            _ => None,
        }
    }
}

impl From<mica_store::StoreError> for IdentityError {
    fn from(e: mica_store::StoreError) -> Self {
        match e {
            e @ mica_store::StoreError::UnstorableText => IdentityError::Invalid {
                field: "text",
                message: e.to_string(),
            },
            mica_store::StoreError::Gone => IdentityError::NotFound,
            e => IdentityError::Internal(e.to_string()),
        }
    }
}

impl From<mica_core::crypto::OpenError> for IdentityError {
    fn from(e: mica_core::crypto::OpenError) -> Self {
        IdentityError::Internal(e.to_string())
    }
}
