/// Everything that can go wrong in the cloud, with a stable code for clients.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    InvalidItem(String),
    /// A write of a batch was refused: which one, and why.
    #[error("write {index} (id {id:?}): {source}")]
    InBatch {
        index: usize,
        id: String,
        #[source]
        source: Box<CloudError>,
    },
    #[error("unknown category; the categories are contacts, calendar, notes, messages, calls, bookmarks, browser_history, wifi, settings, gallery and recordings")]
    UnknownCategory,
    #[error("a collection with this id already exists for another category")]
    CollectionExists,
    #[error("the item is larger than {0} bytes")]
    ItemTooLarge(usize),
    #[error("a batch holds at most {0} writes; split it")]
    BatchTooLarge(usize),
    #[error("this is not a sync token; pull without one to resync the collection")]
    InvalidToken,
    #[error("this sync token is unknown for this collection; pull without a token to resync it")]
    UnknownToken,
    #[error("this sync token has expired; pull without a token to resync the collection")]
    TokenExpired,
    #[error("this idempotency key was already used for a different batch")]
    IdempotencyKeyReused,
    #[error("out of storage: {used} of {quota} bytes used, this needs {needed} more; delete something or upgrade the plan")]
    QuotaExceeded { used: i64, quota: i64, needed: i64 },
    #[error("an item with the same id exists again; delete or rename it first")]
    RestoreConflict,
    #[error("not found")]
    NotFound,
    #[error("internal error: {0}")]
    Internal(String),
}

impl CloudError {
    /// Tags an error with the batch write it belongs to.
    pub(crate) fn at(self, index: usize, id: &str) -> CloudError {
        CloudError::InBatch {
            index,
            id: id.chars().take(200).collect(),
            source: Box::new(self),
        }
    }

    /// Stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            CloudError::Invalid { .. } => "invalid_input",
            CloudError::InvalidItem(_) => "invalid_item",
            CloudError::InBatch { source, .. } => source.code(),
            CloudError::UnknownCategory => "unknown_category",
            CloudError::CollectionExists => "collection_exists",
            CloudError::ItemTooLarge(_) => "item_too_large",
            CloudError::BatchTooLarge(_) => "batch_too_large",
            CloudError::InvalidToken => "invalid_sync_token",
            CloudError::UnknownToken => "sync_token_unknown",
            CloudError::TokenExpired => "sync_token_expired",
            CloudError::IdempotencyKeyReused => "idempotency_key_reused",
            CloudError::QuotaExceeded { .. } => "quota_exceeded",
            CloudError::RestoreConflict => "restore_conflict",
            CloudError::NotFound => "not_found",
            CloudError::Internal(_) => "internal",
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            CloudError::Invalid { .. }
            | CloudError::InvalidItem(_)
            | CloudError::UnknownCategory
            | CloudError::IdempotencyKeyReused => 422,
            CloudError::InBatch { source, .. } => source.http_status(),
            CloudError::CollectionExists | CloudError::RestoreConflict => 409,
            CloudError::ItemTooLarge(_) | CloudError::BatchTooLarge(_) => 413,
            CloudError::InvalidToken => 400,
            CloudError::UnknownToken | CloudError::TokenExpired => 410,
            CloudError::QuotaExceeded { .. } => 507,
            CloudError::NotFound => 404,
            CloudError::Internal(_) => 500,
        }
    }
}

impl From<mica_store::StoreError> for CloudError {
    fn from(e: mica_store::StoreError) -> Self {
        CloudError::Internal(e.to_string())
    }
}
