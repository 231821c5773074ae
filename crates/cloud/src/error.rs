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
    #[error("unknown category; the categories are contacts, calendar, notes, messages, calls, bookmarks, browser_history, wifi, settings, gallery, recordings and drive")]
    UnknownCategory,
    #[error("a collection with this id already exists for another category")]
    CollectionExists,
    #[error("an account holds at most {0} collections; put new items in one it has")]
    TooManyCollections(i64),
    #[error("the item is larger than {0} bytes")]
    ItemTooLarge(usize),
    #[error("a batch holds at most {0} writes; split it")]
    BatchTooLarge(usize),
    #[error(
        "this folder holds more than {0} entries: copy or delete its subfolders one at a time"
    )]
    FolderTooLarge(usize),
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
    #[error("no preview: {0}")]
    NoPreview(String),
    #[error("the preview is being made; try again in a moment")]
    PreviewPending,
    #[error("the folder already holds an entry of that name")]
    NameTaken,
    #[error("the entry changed meanwhile; reload it and try again")]
    DriveConflict,
    #[error("the folder still holds {0}: delete or move what is in it in the same batch")]
    FolderNotEmpty(String),
    #[error("no such file in this account: {0}")]
    UnknownFile(String),
    #[error("the upload is at offset {0}: resume from there (HEAD tells the offset)")]
    OffsetMismatch(i64),
    #[error("the bytes do not match Upload-Checksum; nothing of this request was kept")]
    ChecksumMismatch,
    #[error("unsupported checksum algorithm; use sha1, sha256 or blake3")]
    UnsupportedChecksum,
    #[error("a file is at most {0} bytes")]
    UploadTooLarge(i64),
    #[error("the request carries more bytes than Upload-Length leaves")]
    PastUploadLength,
    #[error("the request ended before all of Content-Length arrived; nothing was kept")]
    IncompleteBody,
    #[error("the range is outside the file ({0} bytes)")]
    RangeNotSatisfiable(u64),
    #[error("upload these parts first, then name their files: {}", missing_list(.0))]
    BackupPartsMissing(Vec<String>),
    #[error("part of this file's bytes were lost on the server; upload the file again to mend it")]
    Damaged,
    #[error("file storage is unavailable: {0}")]
    Storage(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// The first names of a list, for a message.
fn missing_list(names: &[String]) -> String {
    let mut out: Vec<String> = names.iter().take(10).map(|n| format!("{n:?}")).collect();
    if names.len() > 10 {
        out.push(format!("and {} more", names.len() - 10));
    }
    out.join(", ")
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
            CloudError::TooManyCollections(_) => "too_many_collections",
            CloudError::ItemTooLarge(_) => "item_too_large",
            CloudError::BatchTooLarge(_) => "batch_too_large",
            CloudError::FolderTooLarge(_) => "folder_too_large",
            CloudError::InvalidToken => "invalid_sync_token",
            CloudError::UnknownToken => "sync_token_unknown",
            CloudError::TokenExpired => "sync_token_expired",
            CloudError::IdempotencyKeyReused => "idempotency_key_reused",
            CloudError::QuotaExceeded { .. } => "quota_exceeded",
            CloudError::RestoreConflict => "restore_conflict",
            CloudError::NotFound => "not_found",
            CloudError::UnknownFile(_) => "unknown_file",
            CloudError::NameTaken => "name_taken",
            CloudError::NoPreview(_) => "no_preview",
            CloudError::PreviewPending => "preview_pending",
            CloudError::DriveConflict => "conflict",
            CloudError::FolderNotEmpty(_) => "folder_not_empty",
            CloudError::OffsetMismatch(_) => "upload_offset_mismatch",
            CloudError::ChecksumMismatch => "checksum_mismatch",
            CloudError::UnsupportedChecksum => "unsupported_checksum",
            CloudError::UploadTooLarge(_) => "upload_too_large",
            CloudError::PastUploadLength => "past_upload_length",
            CloudError::IncompleteBody => "incomplete_body",
            CloudError::RangeNotSatisfiable(_) => "range_not_satisfiable",
            CloudError::BackupPartsMissing(_) => "backup_parts_missing",
            CloudError::Damaged => "file_damaged",
            CloudError::Storage(_) => "storage_unavailable",
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
            CloudError::CollectionExists
            | CloudError::RestoreConflict
            | CloudError::TooManyCollections(_) => 409,
            CloudError::ItemTooLarge(_) | CloudError::BatchTooLarge(_) => 413,
            CloudError::FolderTooLarge(_) => 422,
            CloudError::InvalidToken => 400,
            CloudError::UnknownToken | CloudError::TokenExpired => 410,
            CloudError::QuotaExceeded { .. } => 507,
            CloudError::NotFound => 404,
            CloudError::UnknownFile(_) => 422,
            CloudError::NameTaken
            | CloudError::DriveConflict
            | CloudError::FolderNotEmpty(_)
            | CloudError::PreviewPending => 409,
            CloudError::NoPreview(_) => 404,
            CloudError::OffsetMismatch(_) | CloudError::BackupPartsMissing(_) => 409,
            // The tus checksum extension's status for a mismatch.
            CloudError::ChecksumMismatch => 460,
            CloudError::UnsupportedChecksum | CloudError::IncompleteBody => 400,
            CloudError::UploadTooLarge(_) | CloudError::PastUploadLength => 413,
            CloudError::RangeNotSatisfiable(_) => 416,
            CloudError::Storage(_) => 503,
            // The server lost data: not the client's doing, and not worth retrying.
            CloudError::Damaged => 500,
            CloudError::Internal(_) => 500,
        }
    }
}

impl From<mica_blobs::BlobError> for CloudError {
    fn from(e: mica_blobs::BlobError) -> Self {
        CloudError::Storage(e.to_string())
    }
}

impl From<mica_store::StoreError> for CloudError {
    fn from(e: mica_store::StoreError) -> Self {
        match e {
            e @ mica_store::StoreError::UnstorableText => CloudError::Invalid {
                field: "text",
                message: e.to_string(),
            },
            mica_store::StoreError::Gone => CloudError::NotFound,
            e => CloudError::Internal(e.to_string()),
        }
    }
}
