/// Everything that can go wrong in commerce, with a stable code for clients.
#[derive(Debug, thiserror::Error)]
pub enum CommerceError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("there is no plan {0:?}: the plans on offer are listed at GET /api/v1/plans")]
    UnknownPlan(String),
    #[error(
        "not enough credits: this needs {needed} and the balance is {balance}; add credits first"
    )]
    InsufficientCredits { balance: i64, needed: i64 },
    #[error("this account has no storage plan")]
    NoPlan,
    #[error("this idempotency key was already used for a different purchase")]
    KeyReused,
    #[error("payments by webhook are not set up on this server")]
    WebhookOff,
    #[error("the webhook's signature is not valid: {0}")]
    BadSignature(&'static str),
    #[error("the event names no account of this server")]
    UnknownAccount,
    #[error("this event id was already used for a different top-up")]
    EventReused,
    #[error("not found")]
    NotFound,
    #[error("this account has it already: download it on any of its devices")]
    AlreadyOwned,
    #[error("get this theme first: it is priced in credits")]
    NotOwned,
    #[error("the price changed meanwhile: it is now {0} credits; look again before buying")]
    PriceChanged(i64),
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("an account sends at most {0} reports a day; try again tomorrow")]
    TooManyReports(i64),
    #[error("storage: {0}")]
    Store(#[from] mica_store::StoreError),
}

impl CommerceError {
    /// Stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            CommerceError::Invalid { .. } => "invalid_input",
            CommerceError::UnknownPlan(_) => "unknown_plan",
            CommerceError::InsufficientCredits { .. } => "insufficient_credits",
            CommerceError::NoPlan => "no_plan",
            CommerceError::KeyReused => "idempotency_key_reused",
            CommerceError::WebhookOff => "not_found",
            CommerceError::BadSignature(_) => "bad_signature",
            CommerceError::UnknownAccount => "unknown_account",
            CommerceError::EventReused => "event_reused",
            CommerceError::NotFound => "not_found",
            CommerceError::AlreadyOwned => "already_owned",
            CommerceError::NotOwned => "theme_not_owned",
            CommerceError::PriceChanged(_) => "price_changed",
            CommerceError::TooLarge(_) => "payload_too_large",
            CommerceError::TooManyReports(_) => "rate_limited",
            CommerceError::Store(mica_store::StoreError::Gone) => "not_found",
            CommerceError::Store(mica_store::StoreError::UnstorableText) => "invalid_input",
            CommerceError::Store(_) => "internal",
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            CommerceError::Invalid { .. } | CommerceError::KeyReused => 422,
            CommerceError::UnknownPlan(_) | CommerceError::NoPlan => 404,
            // Payment Required: the balance does not cover it.
            CommerceError::InsufficientCredits { .. } => 402,
            CommerceError::WebhookOff => 404,
            CommerceError::BadSignature(_) => 401,
            CommerceError::UnknownAccount => 422,
            CommerceError::EventReused => 409,
            CommerceError::NotFound => 404,
            CommerceError::AlreadyOwned => 409,
            CommerceError::NotOwned => 403,
            CommerceError::PriceChanged(_) => 409,
            CommerceError::TooLarge(_) => 413,
            CommerceError::TooManyReports(_) => 429,
            CommerceError::Store(mica_store::StoreError::Gone) => 404,
            CommerceError::Store(mica_store::StoreError::UnstorableText) => 422,
            CommerceError::Store(_) => 500,
        }
    }
}
