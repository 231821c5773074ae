use mica_identity::IdentityError;

/// Everything that can go wrong with devices, with a stable code for clients.
#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("not found")]
    NotFound,
    #[error("this device is bound to another account ({owner}) by its activation lock; sign in with that account, or ask its owner to remove the device")]
    ActivationLocked { owner: String },
    #[error("Find Device is off for this device; turn it on first")]
    FindDeviceOff,
    #[error("this device is no longer linked (it was erased or removed)")]
    DeviceUnlinked,
    #[error("the device credential is not valid (the device was removed or erased, or the credential is wrong); link the device again")]
    BadCredential,
    #[error("this command expired before the device acknowledged it; it will not run")]
    CommandExpired,
    #[error("this command has already finished")]
    CommandFinished,
    #[error("the owner cancelled this command")]
    CommandCancelled,
    #[error("the device has already taken this command, so it can no longer be cancelled")]
    NotCancellable,
    #[error("this command was acknowledged already; it runs only after its first acknowledgement")]
    AlreadyAcknowledged,
    #[error("acknowledge the command before reporting its result")]
    NotAcknowledged,
    #[error("no device is waiting for this code: check it, or start linking again on the device")]
    LinkCodeUnknown,
    #[error("the owner has not approved this device yet; ask again after the interval")]
    LinkPending,
    #[error("polling too often; wait {} s between polls", retry_after.as_secs().max(1))]
    LinkSlowDown { retry_after: std::time::Duration },
    #[error("the account's owner declined to link this device")]
    LinkDenied,
    #[error("this link code expired or was already used; start linking again")]
    LinkCodeExpired,
    #[error("too many attempts; try again in {} s", retry_after.as_secs().max(1))]
    RateLimited { retry_after: std::time::Duration },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<mica_store::StoreError> for DevicesError {
    fn from(e: mica_store::StoreError) -> Self {
        match e {
            e @ mica_store::StoreError::UnstorableText => DevicesError::Invalid {
                field: "text",
                message: e.to_string(),
            },
            mica_store::StoreError::Gone => DevicesError::NotFound,
            e => DevicesError::Internal(e.to_string()),
        }
    }
}

impl DevicesError {
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        DevicesError::Invalid {
            field,
            message: message.into(),
        }
    }

    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            DevicesError::Invalid { .. } => "invalid_field",
            DevicesError::NotFound => "not_found",
            DevicesError::ActivationLocked { .. } => "activation_locked",
            DevicesError::FindDeviceOff => "find_device_off",
            DevicesError::DeviceUnlinked => "device_unlinked",
            DevicesError::BadCredential => "invalid_device_credential",
            DevicesError::CommandExpired => "command_expired",
            DevicesError::CommandFinished => "command_finished",
            DevicesError::CommandCancelled => "command_cancelled",
            DevicesError::NotCancellable => "command_not_cancellable",
            DevicesError::AlreadyAcknowledged => "command_already_acknowledged",
            DevicesError::NotAcknowledged => "command_not_acknowledged",
            DevicesError::LinkCodeUnknown => "link_code_unknown",
            // RFC 8628's names, which device-flow clients know.
            DevicesError::LinkPending => "authorization_pending",
            DevicesError::LinkSlowDown { .. } => "slow_down",
            DevicesError::LinkDenied => "access_denied",
            DevicesError::LinkCodeExpired => "expired_token",
            DevicesError::RateLimited { .. } => "rate_limited",
            DevicesError::Identity(e) => e.code(),
            DevicesError::Internal(_) => "internal",
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            DevicesError::Invalid { .. } => 422,
            DevicesError::NotFound => 404,
            DevicesError::ActivationLocked { .. } => 403,
            DevicesError::FindDeviceOff | DevicesError::DeviceUnlinked => 409,
            DevicesError::BadCredential => 401,
            DevicesError::CommandExpired => 410,
            DevicesError::CommandFinished
            | DevicesError::CommandCancelled
            | DevicesError::NotCancellable
            | DevicesError::AlreadyAcknowledged
            | DevicesError::NotAcknowledged => 409,
            DevicesError::LinkCodeUnknown => 404,
            DevicesError::LinkPending | DevicesError::LinkCodeExpired => 400,
            DevicesError::LinkDenied => 403,
            DevicesError::RateLimited { .. } | DevicesError::LinkSlowDown { .. } => 429,
            DevicesError::Identity(e) => e.http_status(),
            DevicesError::Internal(_) => 500,
        }
    }
}
