//! Files (PRODUCT.md CL-5): resumable uploads, content-addressed chunks, downloads, and the
//! collection of what nothing references any more.
//!
//! An upload receives bytes in order. Every [`CHUNK_SIZE`] bytes form a chunk, named by its
//! BLAKE3 hash; a chunk the account already has is not written again. A chunk is written to the
//! blob store (durably) before the transaction that adds it to the upload commits, and that
//! transaction charges its bytes against the quota. Bytes after the last whole chunk are kept
//! as the upload's *tail* object when a request ends, so an upload resumes from the exact offset
//! it reached — after a dropped connection and after a server restart alike. The finished upload
//! becomes a *file* (a list of chunks), which an item (gallery, recordings) references; the
//! item's size counts the file's bytes, so two items of the same content count twice in the
//! person's usage while storage holds the chunks once.
//!
//! With `Upload-Checksum` (tus checksum extension), a request's chunks are written as they come
//! but committed only once the whole request's checksum matches; otherwise nothing of it is kept.

use std::ops::Range;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use mica_blobs::{chunk_key, BlobStore, CHUNK_SIZE};
use mica_core::{AccountId, Timestamp};
use mica_store::{
    FileChunk, FileRow, GcReport, NewPart, NewUpload, ProgressOutcome, UploadPosition, UploadRow,
};
use serde::Serialize;
use sha1::Digest as _;
use utoipa::ToSchema;

use crate::{Cloud, CloudError};

const _: () = assert!(CHUNK_SIZE as i64 == mica_store::CHUNK_BYTES);

/// How long an object being written may stay unreferenced before the collector removes it.
pub(crate) const WRITE_GRACE: Duration = Duration::from_secs(24 * 3600);

/// An upload as tus reports it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UploadInfo {
    pub id: String,
    /// Declared size in bytes (`Upload-Length`).
    pub length: i64,
    /// Bytes received (`Upload-Offset`).
    pub offset: i64,
    /// The raw `Upload-Metadata` header the upload was created with.
    #[serde(skip)]
    pub metadata: String,
    /// RFC 3339: when an unfinished upload is dropped (`Upload-Expires`).
    #[schema(value_type = String)]
    pub expires_at: Timestamp,
    /// The file this upload became, once complete.
    pub file_id: Option<String>,
}

/// A stored file.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FileInfo {
    pub id: String,
    pub size: i64,
    /// The file's content id: BLAKE3 over its chunks' hashes and sizes (see docs/design/files.md).
    pub content_hash: String,
    pub mime_type: String,
    #[schema(value_type = String)]
    pub created_at: Timestamp,
    /// True until an item (gallery, recordings, …) references the file; a file nobody
    /// references is dropped after `pending_file_hours`.
    pub pending: bool,
}

impl FileInfo {
    fn from_row(r: FileRow) -> FileInfo {
        FileInfo {
            id: r.id,
            size: r.size,
            content_hash: r.content_hash,
            mime_type: r.mime_type,
            created_at: r.created_at,
            pending: r.pending_since.is_some(),
        }
    }
}

/// `Upload-Checksum`: an algorithm and the expected digest of one request's body.
#[derive(Debug, Clone)]
pub struct Checksum {
    algorithm: ChecksumAlgorithm,
    expected: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
enum ChecksumAlgorithm {
    Sha1,
    Sha256,
    Blake3,
}

/// The algorithms `Tus-Checksum-Algorithm` announces.
pub const CHECKSUM_ALGORITHMS: &str = "sha1,sha256,blake3";

impl Checksum {
    /// Parses the header value `<algorithm> <base64 digest>`.
    pub fn parse(header: &str) -> Result<Checksum, CloudError> {
        let (alg, digest) = header
            .trim()
            .split_once(' ')
            .ok_or(CloudError::UnsupportedChecksum)?;
        let algorithm = match alg.to_ascii_lowercase().as_str() {
            "sha1" => ChecksumAlgorithm::Sha1,
            "sha256" => ChecksumAlgorithm::Sha256,
            "blake3" => ChecksumAlgorithm::Blake3,
            _ => return Err(CloudError::UnsupportedChecksum),
        };
        let expected = B64.decode(digest.trim()).map_err(|_| CloudError::Invalid {
            field: "Upload-Checksum",
            message: "the digest is not base64".into(),
        })?;
        Ok(Checksum {
            algorithm,
            expected,
        })
    }
}

enum Hasher {
    Sha1(Box<sha1::Sha1>),
    Sha256(Box<sha2::Sha256>),
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    fn new(a: ChecksumAlgorithm) -> Hasher {
        match a {
            ChecksumAlgorithm::Sha1 => Hasher::Sha1(Box::default()),
            ChecksumAlgorithm::Sha256 => Hasher::Sha256(Box::default()),
            ChecksumAlgorithm::Blake3 => Hasher::Blake3(Box::default()),
        }
    }
    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha1(h) => h.update(b),
            Hasher::Sha256(h) => h.update(b),
            Hasher::Blake3(h) => {
                h.update(b);
            }
        }
    }
    fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Blake3(h) => h.finalize().as_bytes().to_vec(),
        }
    }
}

/// The `filetype` (or `type`) entry of tus `Upload-Metadata`, if it is a plausible media type.
fn mime_from_metadata(metadata: &str) -> Option<String> {
    metadata.split(',').find_map(|pair| {
        let mut it = pair.trim().splitn(2, ' ');
        let key = it.next()?;
        if key != "filetype" && key != "type" && key != "contentType" {
            return None;
        }
        let value = B64.decode(it.next()?.trim()).ok()?;
        String::from_utf8(value).ok().filter(|m| valid_mime(m))
    })
}

/// `type/subtype` with token characters, optionally followed by parameters.
pub fn valid_mime(m: &str) -> bool {
    let essence = m.split(';').next().unwrap_or("").trim();
    let token = |s: &str| {
        !s.is_empty()
            && s.len() <= 127
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    m.len() <= 255
        && !m.bytes().any(|b| b.is_ascii_control())
        && essence
            .split_once('/')
            .is_some_and(|(t, s)| token(t) && token(s))
}

/// Validates tus `Upload-Metadata`: comma-separated `key base64value` pairs, keys unique.
fn check_metadata(metadata: &str) -> Result<(), CloudError> {
    let bad = |why: &str| CloudError::Invalid {
        field: "Upload-Metadata",
        message: why.to_owned(),
    };
    if metadata.len() > 4096 {
        return Err(bad("at most 4096 bytes"));
    }
    if metadata.trim().is_empty() {
        return Ok(());
    }
    let mut keys = std::collections::HashSet::new();
    for pair in metadata.split(',') {
        let mut it = pair.trim().splitn(2, ' ');
        let key = it.next().unwrap_or("");
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
            return Err(bad("keys are non-empty ASCII without spaces or commas"));
        }
        if !keys.insert(key) {
            return Err(bad("a key appears twice"));
        }
        if let Some(v) = it.next() {
            B64.decode(v.trim())
                .map_err(|_| bad("values are base64-encoded"))?;
        }
    }
    Ok(())
}

/// The content id of a file: BLAKE3 over its chunks' hashes and sizes, in order.
pub(crate) fn content_hash(parts: &[(String, i64)]) -> String {
    mica_blobs::content_id(parts.iter().map(|(h, s)| (h.as_str(), *s)))
}

fn random_suffix() -> String {
    mica_core::crypto::random_token_string(9)
}

impl Cloud {
    pub(crate) fn blobs(&self) -> &BlobStore {
        &self.inner.blobs
    }

    fn upload_info(u: &UploadRow) -> UploadInfo {
        UploadInfo {
            id: u.id.clone(),
            length: u.length,
            offset: u.offset(),
            metadata: u.metadata.clone(),
            expires_at: u.expires_at,
            file_id: u.file_id.clone(),
        }
    }

    async fn quota_left(&self, account: AccountId) -> Result<(i64, i64), CloudError> {
        let acct = self.store().cloud_account(account).await?;
        let quota = acct.quota(self.inner.cfg.quota_bytes);
        Ok((acct.used_bytes, quota))
    }

    /// Creates an upload of `length` bytes (tus creation). Refused when the file could not fit
    /// in what is left of the quota.
    pub async fn create_upload(
        &self,
        account: AccountId,
        length: i64,
        metadata: &str,
        mime_type: Option<&str>,
    ) -> Result<UploadInfo, CloudError> {
        let cfg = &self.inner.cfg;
        if length < 0 {
            return Err(CloudError::Invalid {
                field: "Upload-Length",
                message: "a length is a non-negative number of bytes".into(),
            });
        }
        if length > cfg.max_file_bytes {
            return Err(CloudError::UploadTooLarge(cfg.max_file_bytes));
        }
        check_metadata(metadata)?;
        let (used, quota) = self.quota_left(account).await?;
        if used + length > quota {
            return Err(CloudError::QuotaExceeded {
                used,
                quota,
                needed: length,
            });
        }
        let mime = mime_type
            .filter(|m| valid_mime(m))
            .map(str::to_owned)
            .or_else(|| mime_from_metadata(metadata))
            .unwrap_or_else(|| "application/octet-stream".to_owned());
        let id = format!("up_{}", mica_core::crypto::random_token_string(16));
        let now = self.now();
        let expires_at = self.upload_expiry();
        self.store()
            .create_upload(
                account,
                &NewUpload {
                    id: &id,
                    length,
                    metadata,
                    mime_type: &mime,
                    expires_at,
                },
                now,
            )
            .await?;
        Ok(UploadInfo {
            id,
            length,
            offset: 0,
            metadata: metadata.to_owned(),
            expires_at,
            file_id: None,
        })
    }

    /// When an upload that moves now expires if it then stays idle.
    fn upload_expiry(&self) -> Timestamp {
        self.now()
            .plus(Duration::from_secs(self.inner.cfg.upload_ttl_hours * 3600))
    }

    /// Where an upload stands (tus HEAD). Expired and other accounts' uploads are not found.
    /// One whose every byte is in but whose file was not made (the request that sent the last
    /// bytes ended in between) is finished now, so a client that sees its offset at the length
    /// also gets its file.
    pub async fn upload(&self, account: AccountId, id: &str) -> Result<UploadInfo, CloudError> {
        let u = self.live_upload(account, id).await?;
        if u.file_id.is_none() && u.offset() == u.length && u.tail_len == 0 {
            self.finish_upload(account, &u).await?;
            return Ok(Self::upload_info(&self.live_upload(account, id).await?));
        }
        Ok(Self::upload_info(&u))
    }

    /// Makes the file of an upload whose every byte is committed (idempotent).
    async fn finish_upload(&self, account: AccountId, up: &UploadRow) -> Result<(), CloudError> {
        let hashes = self.store().upload_part_hashes(account, &up.id).await?;
        let mut parts = Vec::with_capacity(hashes.len());
        let mut left = up.length;
        for h in hashes {
            let size = left.min(mica_store::CHUNK_BYTES);
            left -= size;
            parts.push((h, size));
        }
        let file_id = format!("f_{}", mica_core::crypto::random_token_string(16));
        self.store()
            .complete_upload(account, &up.id, &file_id, &content_hash(&parts), self.now())
            .await?;
        Ok(())
    }

    async fn live_upload(&self, account: AccountId, id: &str) -> Result<UploadRow, CloudError> {
        match self.store().upload(account, id).await? {
            Some(u) if u.expires_at > self.now() || u.file_id.is_some() => Ok(u),
            _ => Err(CloudError::NotFound),
        }
    }

    /// Ends an upload (tus termination): its received bytes are released.
    pub async fn terminate_upload(&self, account: AccountId, id: &str) -> Result<(), CloudError> {
        if self.store().remove_upload(account, id, self.now()).await? {
            self.collect_account(account).await?;
            Ok(())
        } else {
            Err(CloudError::NotFound)
        }
    }

    /// Appends a request's body at `offset` (tus PATCH). Streams: at most one chunk is held in
    /// memory. When the body breaks off, what arrived is kept (unless a checksum was given) and
    /// the upload can resume from the offset it reached.
    pub async fn write_upload<S, E>(
        &self,
        account: AccountId,
        id: &str,
        offset: i64,
        body: S,
        checksum: Option<Checksum>,
    ) -> Result<UploadInfo, CloudError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let mut up = self.live_upload(account, id).await?;
        if up.file_id.is_none() && up.offset() == up.length && up.tail_len == 0 {
            // Every byte is in, but the request that sent the last ones ended before the file
            // was made: make it now.
            self.finish_upload(account, &up).await?;
            up = self.live_upload(account, id).await?;
        }
        if up.file_id.is_some() {
            return if offset == up.length {
                Ok(Self::upload_info(&up))
            } else {
                Err(CloudError::OffsetMismatch(up.length))
            };
        }
        if offset != up.offset() {
            return Err(CloudError::OffsetMismatch(up.offset()));
        }
        let mut w = Writer {
            cloud: self,
            held: HeldBytes {
                held: &self.inner.held,
                account,
                bytes: 0,
            },
            account,
            upload: &up,
            pos: UploadPosition {
                committed: up.committed,
                tail_len: up.tail_len,
            },
            deferred: checksum.as_ref().map(|_| Vec::new()),
            inflight: std::collections::VecDeque::new(),
            spare: Vec::new(),
        };
        let mut buf = mica_blobs::chunk_buffer();
        if let Some(k) = &up.tail_key {
            let tail = match self.blobs().get(k).await {
                Ok(t) => t,
                // Another request at the same offset moved the upload on and dropped this tail
                // since it was read: say where the upload is now.
                Err(e @ mica_blobs::BlobError::Missing(_)) => {
                    let now_at = self.live_upload(account, id).await?;
                    if now_at.tail_key == up.tail_key {
                        return Err(e.into());
                    }
                    return Err(CloudError::OffsetMismatch(now_at.offset()));
                }
                Err(e) => return Err(e.into()),
            };
            if i64::try_from(tail.len()).ok() != Some(up.tail_len) {
                return Err(CloudError::Internal(format!(
                    "upload {id}: tail is not its recorded size"
                )));
            }
            buf.extend_from_slice(&tail);
        }
        // Each chunk is hashed as its bytes arrive, while they are still in the CPU's cache
        // (hashing the whole 4 MiB chunk afterwards reads it back from memory).
        let mut chunk_hasher = blake3::Hasher::new();
        chunk_hasher.update(&buf);
        let mut hasher = checksum.as_ref().map(|c| Hasher::new(c.algorithm));
        let room = up.length - up.offset();
        let mut received: i64 = 0;
        let mut broken = false;
        let mut body = std::pin::pin!(body);
        let result: Result<(), CloudError> = async {
            while let Some(frame) = body.next().await {
                let frame = match frame {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::debug!(upload = id, error = %e, "upload body broke off");
                        broken = true;
                        break;
                    }
                };
                received += i64::try_from(frame.len()).unwrap_or(i64::MAX);
                if received > room {
                    return Err(CloudError::PastUploadLength);
                }
                if let Some(h) = &mut hasher {
                    h.update(&frame);
                }
                let mut frame = &frame[..];
                while !frame.is_empty() {
                    let take = (CHUNK_SIZE - buf.len()).min(frame.len());
                    buf.extend_from_slice(&frame[..take]);
                    chunk_hasher.update(&frame[..take]);
                    frame = &frame[take..];
                    if buf.len() == CHUNK_SIZE {
                        let next = w.buffer();
                        let full = std::mem::replace(&mut buf, next);
                        let hash = mica_blobs::chunk_name(&chunk_hasher);
                        chunk_hasher.reset();
                        w.add_chunk(full.freeze(), Some(hash)).await?;
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            return Err(w.fail(e).await);
        }
        if let (Some(h), Some(c)) = (hasher, &checksum) {
            if broken || h.finish() != c.expected {
                w.discard_deferred().await?;
                return Err(if broken {
                    CloudError::IncompleteBody
                } else {
                    CloudError::ChecksumMismatch
                });
            }
        }
        let complete = up.offset() + received == up.length;
        if received == 0 && !complete {
            return Ok(Self::upload_info(&up));
        }
        let tail = buf.freeze();
        let finish = if complete {
            w.add_chunk_final(tail).await
        } else {
            w.set_tail(tail).await
        };
        if let Err(e) = finish {
            return Err(w.fail(e).await);
        }
        if complete {
            self.finish_upload(account, &up).await?;
        }
        // The tail this request started from is in a chunk or a new tail now, and queued for
        // deletion: delete it now if the store lets us, or leave it to the collector.
        if let Some(old) = &up.tail_key {
            match self.blobs().delete(old).await {
                Ok(()) => {
                    let _ = self.store().blobs_deleted(std::slice::from_ref(old)).await;
                }
                Err(e) => tracing::warn!(upload = id, error = %e, "deleting a used tail"),
            }
        }
        let up = self.live_upload(account, id).await?;
        Ok(Self::upload_info(&up))
    }

    /// Stores a whole file sent in one request (small files; no resumption).
    pub async fn put_file<S, E>(
        &self,
        account: AccountId,
        length: i64,
        mime_type: Option<&str>,
        body: S,
    ) -> Result<FileInfo, CloudError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let up = self.create_upload(account, length, "", mime_type).await?;
        let info = match self.write_upload(account, &up.id, 0, body, None).await {
            Ok(i) => i,
            Err(e) => {
                let _ = self
                    .store()
                    .remove_upload(account, &up.id, self.now())
                    .await;
                return Err(e);
            }
        };
        let Some(file_id) = info.file_id else {
            self.store()
                .remove_upload(account, &up.id, self.now())
                .await?;
            self.collect_account(account).await?;
            return Err(CloudError::IncompleteBody);
        };
        // The upload record has served its purpose.
        self.store()
            .remove_upload(account, &up.id, self.now())
            .await?;
        self.file(account, &file_id).await
    }

    pub async fn file(&self, account: AccountId, id: &str) -> Result<FileInfo, CloudError> {
        self.store()
            .file(account, id)
            .await?
            .map(FileInfo::from_row)
            .ok_or(CloudError::NotFound)
    }

    /// A file's bytes in `range` (all of them when `None`), as a stream read chunk by chunk.
    pub async fn read_file(
        &self,
        account: AccountId,
        id: &str,
        range: Option<Range<u64>>,
    ) -> Result<
        (
            FileInfo,
            impl Stream<Item = Result<Bytes, CloudError>> + Send + 'static,
        ),
        CloudError,
    > {
        let info = self.file(account, id).await?;
        let size = u64::try_from(info.size).unwrap_or(0);
        let range = range.unwrap_or(0..size);
        if range.start > range.end || range.end > size {
            return Err(CloudError::RangeNotSatisfiable(size));
        }
        let chunks = self.store().file_chunks(account, id).await?;
        let mut pieces: Vec<(FileChunk, Range<u64>)> = Vec::new();
        let mut at = 0u64;
        for c in chunks {
            let len = u64::try_from(c.size).unwrap_or(0);
            let (start, end) = (at, at + len);
            at = end;
            if end <= range.start || start >= range.end {
                continue;
            }
            let from = range.start.max(start) - start;
            let to = range.end.min(end) - start;
            pieces.push((c, from..to));
        }
        if at != size {
            // A chunk a backup's verification found damaged and forgot, not stored again yet.
            return Err(CloudError::Damaged);
        }
        let blobs = self.blobs().clone();
        // The next chunks are read while this one is sent (the disk sees several reads at once),
        // and the ones after those are already asked of the disk (read into the page cache).
        let keys: Vec<String> = pieces.iter().map(|(c, _)| c.object_key.clone()).collect();
        let stream = futures_util::stream::iter(pieces.into_iter().enumerate())
            .map(move |(i, (c, r))| {
                let blobs = blobs.clone();
                let next = keys.get(i + READS_AHEAD).cloned();
                async move {
                    let len = u64::try_from(c.size).unwrap_or(0);
                    if r.start == 0 && r.end == len {
                        Ok(blobs.get_then(&c.object_key, next.as_deref()).await?)
                    } else {
                        Ok(blobs.get_range(&c.object_key, r).await?)
                    }
                }
            })
            .buffered(READS_AHEAD);
        Ok((info, stream))
    }

    /// Collects one account's garbage and deletes the objects that became unreferenced.
    pub async fn collect_account(&self, account: AccountId) -> Result<GcReport, CloudError> {
        let now = self.now();
        let cutoff = now.minus(Duration::from_secs(
            self.inner.cfg.pending_file_hours * 3600,
        ));
        let report = self.store().collect_garbage(account, now, cutoff).await?;
        self.delete_due_blobs().await?;
        Ok(report)
    }

    /// Deletes the objects whose deletion is due; returns how many.
    pub async fn delete_due_blobs(&self) -> Result<u64, CloudError> {
        let mut n = 0;
        loop {
            let keys = self.store().due_blobs(self.now(), 500).await?;
            if keys.is_empty() {
                return Ok(n);
            }
            for k in &keys {
                self.blobs().delete(k).await?;
            }
            self.store().blobs_deleted(&keys).await?;
            n += keys.len() as u64;
        }
    }

    /// Collects every account's garbage (the periodic job).
    pub async fn collect_garbage(&self) -> Result<GcReport, CloudError> {
        let mut total = GcReport::default();
        for account in self.store().accounts_with_blobs().await? {
            let r = self.collect_account(account).await?;
            total.uploads_expired += r.uploads_expired;
            total.files_removed += r.files_removed;
            total.chunks_removed += r.chunks_removed;
        }
        self.delete_due_blobs().await?;
        Ok(total)
    }

    /// Deletes every object of an account from the blob store (account deletion, before its
    /// rows go).
    pub async fn forget_blobs(&self, account: AccountId) -> Result<(), CloudError> {
        for prefix in [
            mica_blobs::account_prefix(account.as_i64()),
            upload_prefix(account),
            format!("thumbs/{}/", account.as_i64()),
        ] {
            self.blobs().delete_prefix(&prefix).await?;
        }
        Ok(())
    }

    /// Objects the store holds for an account: `(count, bytes)` (what storage really costs).
    pub async fn stored_bytes(&self, account: AccountId) -> Result<(u64, u64), CloudError> {
        let (n1, b1) = self
            .blobs()
            .stored(&mica_blobs::account_prefix(account.as_i64()))
            .await?;
        let (n2, b2) = self.blobs().stored(&upload_prefix(account)).await?;
        let (n3, b3) = self
            .blobs()
            .stored(&format!("thumbs/{}/", account.as_i64()))
            .await?;
        Ok((n1 + n2 + n3, b1 + b2 + b3))
    }
}

fn upload_prefix(account: AccountId) -> String {
    format!("uploads/{}/", account.as_i64())
}

/// Upload bytes this node has written for requests with a checksum and not yet committed
/// (they count in usage only once the checksum matches), per account. Checked with the usage
/// before each such chunk is written, so requests sent at once cannot, together, put more
/// than the account's free quota in the blob store.
#[derive(Debug, Default)]
pub(crate) struct Held(std::sync::Mutex<std::collections::HashMap<AccountId, i64>>);

impl Held {
    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<AccountId, i64>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What one request holds in [`Held`]; given back when the request ends, however it ends.
struct HeldBytes<'a> {
    held: &'a Held,
    account: AccountId,
    bytes: i64,
}

impl Drop for HeldBytes<'_> {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let mut map = self.held.map();
        if let Some(n) = map.get_mut(&self.account) {
            *n -= self.bytes;
            if *n <= 0 {
                map.remove(&self.account);
            }
        }
    }
}

/// One request's progress through an upload.
struct Writer<'a> {
    cloud: &'a Cloud,
    /// With a checksum: the bytes of the chunks held back, counted against the quota.
    held: HeldBytes<'a>,
    account: AccountId,
    upload: &'a UploadRow,
    pos: UploadPosition,
    /// With a checksum: chunks written but not committed until the checksum matches.
    deferred: Option<Vec<(String, i64, Option<String>)>>,
    /// Chunks being hashed and written while the next ones arrive, oldest first (at most
    /// [`WRITES_IN_FLIGHT`], so an upload holds a bounded number of chunks in memory and the
    /// disk's fsync latency is overlapped rather than paid once per chunk).
    inflight: std::collections::VecDeque<tokio::task::JoinHandle<Result<StoredChunk, CloudError>>>,
    /// Chunk buffers whose bytes are stored, for the next chunks: an upload allocates a few
    /// buffers, not one per chunk (the allocator would keep freed ones as resident memory).
    spare: Vec<BytesMut>,
}

/// How many chunks of a download are read at once, ahead of the one being sent; as many again
/// beyond those are prefetched into the page cache.
const READS_AHEAD: usize = 4;

/// How many chunks of one upload may be on their way to the blob store at once.
const WRITES_IN_FLIGHT: usize = 4;

/// A chunk whose bytes are in the store (or were already): ready to be added to the upload.
struct StoredChunk {
    hash: String,
    size: i64,
    bytes: Bytes,
    /// The object written for it; `None` when the account had the chunk.
    written: Option<String>,
}

/// Hashes a chunk (unless its hash is known) and writes its object unless the account has it.
async fn store_chunk(
    cloud: Cloud,
    account: AccountId,
    bytes: Bytes,
    hash: Option<String>,
) -> Result<StoredChunk, CloudError> {
    let hash = hash.unwrap_or_else(|| mica_blobs::chunk_hash(&bytes));
    let size = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
    let store = cloud.store();
    if store.chunk(account, &hash).await?.is_some() {
        return Ok(StoredChunk {
            hash,
            size,
            bytes,
            written: None,
        });
    }
    let key = chunk_key(account.as_i64(), &hash, &random_suffix());
    store
        .blob_intent(account, &key, cloud.now().plus(WRITE_GRACE))
        .await?;
    cloud.blobs().put(&key, bytes.clone()).await?;
    Ok(StoredChunk {
        hash,
        size,
        bytes,
        written: Some(key),
    })
}

impl Writer<'_> {
    fn now(&self) -> Timestamp {
        self.cloud.now()
    }

    /// Starts storing a chunk in the background: writing chunk N overlaps receiving the next
    /// ones; chunks are still added to the upload in order.
    async fn add_chunk(&mut self, bytes: Bytes, hash: Option<String>) -> Result<(), CloudError> {
        while self.inflight.len() >= WRITES_IN_FLIGHT {
            self.settle_one().await?;
        }
        if self.deferred.is_some() {
            self.hold(i64::try_from(bytes.len()).unwrap_or(i64::MAX))
                .await?;
        }
        self.inflight.push_back(tokio::spawn(store_chunk(
            self.cloud.clone(),
            self.account,
            bytes,
            hash,
        )));
        Ok(())
    }

    /// Counts a chunk about to be written and held for the checksum: refused when what the
    /// account uses and what this node holds for it would pass the quota.
    async fn hold(&mut self, size: i64) -> Result<(), CloudError> {
        let (used, quota) = self.cloud.quota_left(self.account).await?;
        let mut map = self.held.held.map();
        let held = map.entry(self.account).or_insert(0);
        if used + *held + size > quota {
            let needed = *held + size;
            if *held == 0 {
                map.remove(&self.account);
            }
            return Err(CloudError::QuotaExceeded {
                used,
                quota,
                needed,
            });
        }
        *held += size;
        self.held.bytes += size;
        Ok(())
    }

    /// Ends a request that failed: chunks in flight are dropped, and at the quota the upload
    /// ends and its received bytes are released. Returns the error to report.
    async fn fail(&mut self, e: CloudError) -> CloudError {
        self.abandon().await;
        if matches!(e, CloudError::QuotaExceeded { .. }) {
            let store = self.cloud.store();
            if let Err(inner) = store
                .remove_upload(self.account, &self.upload.id, self.now())
                .await
            {
                return inner.into();
            }
            if let Err(inner) = self.cloud.collect_account(self.account).await {
                return inner;
            }
        }
        e
    }

    /// Gives up the chunks still on their way: waits for their writes and queues the objects
    /// for deletion (nothing of them is added to the upload).
    async fn abandon(&mut self) {
        while let Some(task) = self.inflight.pop_front() {
            if let Ok(Ok(StoredChunk {
                written: Some(key), ..
            })) = task.await
            {
                let _ = self
                    .cloud
                    .store()
                    .discard_blob(self.account, &key, self.now())
                    .await;
            }
        }
    }

    /// A buffer for the next chunk: a reused one when a stored chunk gave its back.
    fn buffer(&mut self) -> BytesMut {
        self.spare.pop().unwrap_or_else(mica_blobs::chunk_buffer)
    }

    /// Waits for every chunk being stored and adds them to the upload, in order.
    async fn settle(&mut self) -> Result<(), CloudError> {
        while !self.inflight.is_empty() {
            self.settle_one().await?;
        }
        Ok(())
    }

    /// Waits for the oldest chunk being stored and adds it to the upload (or holds it back for
    /// the checksum).
    async fn settle_one(&mut self) -> Result<(), CloudError> {
        let Some(task) = self.inflight.pop_front() else {
            return Ok(());
        };
        let c = task
            .await
            .map_err(|e| CloudError::Internal(format!("chunk task: {e}")))??;
        if let Some(d) = &mut self.deferred {
            d.push((c.hash, c.size, c.written));
            self.reuse(c.bytes);
            return Ok(());
        }
        self.commit(&c.hash, c.size, c.written, Some(c.bytes.clone()))
            .await?;
        self.reuse(c.bytes);
        Ok(())
    }

    fn reuse(&mut self, bytes: Bytes) {
        if let Ok(mut b) = bytes.try_into_mut() {
            if b.capacity() >= CHUNK_SIZE && self.spare.len() <= WRITES_IN_FLIGHT {
                b.clear();
                self.spare.push(b);
            }
        }
    }

    /// Adds a chunk to the upload in the database (retrying once with a write when the chunk
    /// vanished meanwhile).
    async fn commit(
        &mut self,
        hash: &str,
        size: i64,
        written: Option<String>,
        bytes: Option<Bytes>,
    ) -> Result<(), CloudError> {
        let mut written = written;
        for _ in 0..2 {
            let outcome = self
                .cloud
                .store()
                .upload_progress(
                    self.account,
                    &self.upload.id,
                    self.pos,
                    Some(NewPart {
                        hash,
                        size,
                        written_key: written.as_deref(),
                    }),
                    None,
                    self.cloud.inner.cfg.quota_bytes,
                    self.now(),
                    self.cloud.upload_expiry(),
                )
                .await?;
            match outcome {
                ProgressOutcome::Applied => {
                    self.pos = UploadPosition {
                        committed: self.pos.committed + size,
                        tail_len: 0,
                    };
                    return Ok(());
                }
                ProgressOutcome::NeedsWrite => {
                    // A chunk held for the checksum keeps no bytes: the client sends it again
                    // from the offset it is told.
                    let Some(b) = &bytes else {
                        return Err(self
                            .refused(ProgressOutcome::Moved, written.as_deref())
                            .await);
                    };
                    let key = chunk_key(self.account.as_i64(), hash, &random_suffix());
                    self.cloud
                        .store()
                        .blob_intent(self.account, &key, self.now().plus(WRITE_GRACE))
                        .await?;
                    self.cloud.blobs().put(&key, b.clone()).await?;
                    written = Some(key);
                }
                other => return Err(self.refused(other, written.as_deref()).await),
            }
        }
        Err(self
            .refused(ProgressOutcome::Moved, written.as_deref())
            .await)
    }

    async fn refused(&self, outcome: ProgressOutcome, written: Option<&str>) -> CloudError {
        if let Some(k) = written {
            let _ = self
                .cloud
                .store()
                .discard_blob(self.account, k, self.now())
                .await;
        }
        if matches!(
            outcome,
            ProgressOutcome::Moved | ProgressOutcome::NeedsWrite
        ) {
            // Another request moved the upload on (or ended it): tell where it is now.
            return match self
                .cloud
                .store()
                .upload(self.account, &self.upload.id)
                .await
            {
                Ok(Some(u)) => CloudError::OffsetMismatch(u.offset()),
                _ => CloudError::NotFound,
            };
        }
        match outcome {
            ProgressOutcome::QuotaExceeded {
                used,
                quota,
                needed,
            } => CloudError::QuotaExceeded {
                used,
                quota,
                needed,
            },
            _ => CloudError::OffsetMismatch(-1),
        }
    }

    /// The last, possibly short, chunk of a complete upload.
    async fn add_chunk_final(&mut self, bytes: Bytes) -> Result<(), CloudError> {
        if !bytes.is_empty() {
            self.add_chunk(bytes, None).await?;
        }
        self.settle().await?;
        self.flush_deferred().await?;
        if self.pos.tail_len != 0 {
            // The old tail was consumed by the chunks: record that it is gone.
            self.set_tail(Bytes::new()).await?;
        }
        Ok(())
    }

    /// Commits the chunks held back for the checksum, now that it matched.
    async fn flush_deferred(&mut self) -> Result<(), CloudError> {
        if let Some(parts) = self.deferred.take() {
            for (hash, size, written) in parts {
                self.commit(&hash, size, written, None).await?;
            }
        }
        Ok(())
    }

    async fn discard_deferred(&mut self) -> Result<(), CloudError> {
        self.settle().await?;
        if let Some(parts) = self.deferred.take() {
            for (_, _, written) in parts {
                if let Some(k) = written {
                    self.cloud
                        .store()
                        .discard_blob(self.account, &k, self.now())
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Keeps the bytes after the last whole chunk for the next request.
    async fn set_tail(&mut self, bytes: Bytes) -> Result<(), CloudError> {
        self.settle().await?;
        self.flush_deferred().await?;
        let len = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        if len == 0 && self.pos.tail_len == 0 {
            return Ok(());
        }
        let key = if len > 0 {
            let key = format!(
                "{}{}.{}",
                upload_prefix(self.account),
                self.upload.id,
                random_suffix()
            );
            self.cloud
                .store()
                .blob_intent(self.account, &key, self.now().plus(WRITE_GRACE))
                .await?;
            self.cloud.blobs().put(&key, bytes).await?;
            Some(key)
        } else {
            None
        };
        let outcome = self
            .cloud
            .store()
            .upload_progress(
                self.account,
                &self.upload.id,
                self.pos,
                None,
                key.as_deref().map(|k| (k, len)),
                self.cloud.inner.cfg.quota_bytes,
                self.now(),
                self.cloud.upload_expiry(),
            )
            .await?;
        match outcome {
            ProgressOutcome::Applied => {
                self.pos.tail_len = len;
                Ok(())
            }
            other => Err(self.refused(other, key.as_deref()).await),
        }
    }
}
