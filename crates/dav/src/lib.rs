//! WebDAV for the drive (class 1 and 2), so that rclone, davfs2, Finder, Explorer and phone
//! file managers can mount it. The protocol (PROPFIND, PROPPATCH, MKCOL, COPY, MOVE, LOCK, …)
//! is dav-server's; this crate gives it a file system that *is* the drive: every path is
//! resolved to drive entries of the signed-in account, reads stream the stored chunks, writes
//! go through the same uploads as the API (dedup, quota, fsync), deletions go to the recycle
//! bin. No second copy of anything.
//!
//! Locks live in the memory of the node (dav-server's `MemLs`, one table per account, with
//! timeouts enforced: `locks.rs`): a lock is advisory and short lived, and a client that loses
//! one re-locks; several nodes need a shared lock table (noted for the scale-out work). A
//! request's XML is read whole (64 KiB at most) and its nesting bounded before dav-server
//! parses it.

use std::io::SeekFrom;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::{Buf, Bytes};
use dav_server::davpath::DavPath;
use dav_server::fs::{
    DavDirEntry, DavFile, DavMetaData, DavProp, FsError, FsFuture, FsResult, FsStream,
    GuardedFileSystem, OpenOptions, ReadDirMeta,
};
use dav_server::DavHandler;
use futures_util::{FutureExt, StreamExt};
use mica_cloud::category::{xml_depth, DeadProp, MAX_XML_DEPTH};
use mica_cloud::video::Scratch;
use mica_cloud::{Cloud, CloudError, DriveItem};
use mica_core::AccountId;

pub mod filter;
pub mod groupware;
mod locks;
use locks::Locks;

/// The WebDAV service of one node. Cheap to clone.
#[derive(Clone)]
pub struct Dav {
    cloud: Cloud,
    locks: Locks,
}

/// The most a request body other than a PUT's may hold: dav-server reads that much of the XML
/// of a PROPFIND, PROPPATCH or LOCK, and refuses more.
const MAX_XML_BODY: usize = 64 * 1024;

impl Dav {
    pub fn new(cloud: Cloud) -> Dav {
        Dav {
            cloud,
            locks: Locks::default(),
        }
    }

    /// Serves one request for `account`, whose drive is mounted at `prefix`
    /// (`/dav/files/<account id>`).
    pub async fn handle<B, D, E>(
        &self,
        req: http::Request<B>,
        prefix: String,
        principal: String,
        account: AccountId,
    ) -> http::Response<dav_server::body::Body>
    where
        D: Buf + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
        B: http_body::Body<Data = D, Error = E>,
    {
        let fs = DriveFs {
            cloud: self.cloud.clone(),
        };
        // What dav-server would do wrongly (delete the whole drive, or a destination that
        // holds the source, before failing) is refused here; what can be done in one
        // transaction is done here.
        let early = match req.method().as_str() {
            "DELETE" => {
                self.delete(&fs, req.uri(), req.headers(), &prefix, account)
                    .await
            }
            m @ ("COPY" | "MOVE") => {
                self.copy_or_move(&fs, m == "MOVE", req.uri(), req.headers(), &prefix, account)
                    .await
            }
            _ => None,
        };
        if let Some(done) = early {
            return done;
        }
        let handler: DavHandler<AccountId> = DavHandler::builder()
            .filesystem(Box::new(fs))
            .locksystem(self.locks.of(account))
            .strip_prefix(prefix)
            .read_buf_size(READ_PIECE)
            .build_handler();
        // A PUT (or PATCH) streams its body to the file; every other body is XML, read whole
        // here first and checked.
        if req.method() == http::Method::PUT || req.method().as_str() == "PATCH" {
            let Some(declared) = expected_length(req.headers()) else {
                return handler.handle_guarded(req, principal, account).await;
            };
            // hyper holds a body to its Content-Length; a chunked body to the length it
            // declared is held here, so that a longer one fails before dav-server stores the
            // part that fitted (it stops reading at the declared length, then keeps what came).
            let mismatch = Arc::new(AtomicBool::new(false));
            let req = req.map(|body| Declared {
                inner: Box::pin(body),
                left: declared,
                mismatch: mismatch.clone(),
            });
            let answer = handler.handle_guarded(req, principal, account).await;
            if mismatch.load(Ordering::Relaxed) {
                return refusal(
                    http::StatusCode::BAD_REQUEST,
                    "length_mismatch",
                    "the body is not the length its X-Expected-Entity-Length header declared; nothing was stored",
                );
            }
            return answer;
        }
        let (mut parts, body) = req.into_parts();
        // dav-server walks a whole tree for a Depth: infinity PROPFIND when the request carries
        // the litmus suite's `X-Litmus` header (and refuses it otherwise, as RFC 4918 allows):
        // any client could send it. Without it, the answer is the standard refusal.
        parts.headers.remove("x-litmus");
        let body = match http_body_util::BodyExt::collect(http_body_util::Limited::new(
            body,
            MAX_XML_BODY,
        ))
        .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return refusal(
                    http::StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "a WebDAV request body (other than a PUT's) holds at most 64 KiB",
                )
            }
            Err(_) => {
                return refusal(
                    http::StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the request body could not be read",
                )
            }
        };
        if xml_depth(&body) > MAX_XML_DEPTH {
            return refusal(
                http::StatusCode::BAD_REQUEST,
                "xml_too_deep",
                "the request's XML nests deeper than any WebDAV request does",
            );
        }
        let req = http::Request::from_parts(parts, http_body_util::Full::new(body));
        handler.handle_guarded(req, principal, account).await
    }
}

impl Dav {
    /// Whether a request on a folder can be answered as the API would, in one transaction:
    /// no live lock in the account's drive, no precondition (`If`, `If-Match`, …), and the
    /// depth infinity that a folder's DELETE or COPY means when none is given.
    fn plain(&self, headers: &http::HeaderMap, account: AccountId) -> bool {
        self.unconditional(headers, account)
            && headers
                .get("depth")
                .is_none_or(|d| d.as_bytes().eq_ignore_ascii_case(b"infinity"))
    }

    /// Whether a request leaves nothing for dav-server's lock and precondition checks to
    /// decide: no live lock in the account's drive and no `If`, `If-Match`, … header.
    fn unconditional(&self, headers: &http::HeaderMap, account: AccountId) -> bool {
        use http::header;
        let preconditions = [
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_UNMODIFIED_SINCE,
        ];
        !(headers.contains_key("if")
            || preconditions.iter().any(|h| headers.contains_key(h))
            || self.locks.of(account).holds_live_locks())
    }

    /// A DELETE: of the top of the drive, refused (dav-server would empty the drive entry by
    /// entry and only then refuse to remove the top); of a folder, whole when it can be.
    async fn delete(
        &self,
        fs: &DriveFs,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        prefix: &str,
        account: AccountId,
    ) -> Option<http::Response<dav_server::body::Body>> {
        let path = in_drive(uri, prefix)?;
        if names(&path).ok()?.is_empty() {
            return Some(refusal(
                http::StatusCode::FORBIDDEN,
                "drive_top",
                "the top of the drive cannot be deleted; delete the entries in it instead",
            ));
        }
        self.delete_folder(fs, uri, headers, prefix, account).await
    }

    /// A COPY or MOVE whose two paths are both in the drive. Refused when the destination is
    /// the top of the drive, or when the two overlap — the same entry (names compare in NFC,
    /// as the drive stores them), or one inside the other — where dav-server would first
    /// delete the destination, and with it the source. A file onto a file is done in one
    /// transaction when nothing else has to be checked; so is a folder's COPY to a free place.
    async fn copy_or_move(
        &self,
        fs: &DriveFs,
        is_move: bool,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        prefix: &str,
        account: AccountId,
    ) -> Option<http::Response<dav_server::body::Body>> {
        use unicode_normalization::UnicodeNormalization;
        let from = in_drive(uri, prefix)?;
        let to = destination_in_drive(headers, prefix)?;
        let nfc = |p: &DavPath| -> Option<Vec<String>> {
            Some(names(p).ok()?.iter().map(|n| n.nfc().collect()).collect())
        };
        let (from_names, to_names) = (nfc(&from)?, nfc(&to)?);
        if to_names.is_empty() {
            return Some(refusal(
                http::StatusCode::FORBIDDEN,
                "drive_top",
                "nothing can be copied or moved onto the top of the drive",
            ));
        }
        if to_names.starts_with(&from_names) || from_names.starts_with(&to_names) {
            return Some(refusal(
                http::StatusCode::FORBIDDEN,
                "overlapping_paths",
                "the source and the destination overlap: they are the same entry, or one is inside the other",
            ));
        }
        let overwrite = !headers
            .get("overwrite")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"F"));
        if overwrite && self.unconditional(headers, account) {
            if let (Ok(Some(item)), Ok(Some(there))) = (
                fs.lookup(account, &from).await,
                fs.lookup(account, &to).await,
            ) {
                if item.kind == "file" && there.kind == "file" {
                    return match self
                        .cloud
                        .drive_replace(account, &item.id, &there.id, !is_move)
                        .await
                        .map_err(fs_error)
                    {
                        Ok(_) => Some(empty(http::StatusCode::NO_CONTENT)),
                        Err(FsError::InsufficientStorage) => Some(refusal(
                            http::StatusCode::INSUFFICIENT_STORAGE,
                            "quota_exceeded",
                            "the copy does not fit in the account's storage; nothing was changed",
                        )),
                        // Changed meanwhile: dav-server decides, as it always did.
                        Err(_) => None,
                    };
                }
            }
        }
        if is_move {
            return None;
        }
        self.copy_folder(fs, uri, headers, prefix, account).await
    }

    /// The folder a [`Dav::plain`] request names, if it names one.
    async fn plain_folder(
        &self,
        fs: &DriveFs,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        prefix: &str,
        account: AccountId,
    ) -> Option<(DavPath, DriveItem)> {
        if !self.plain(headers, account) {
            return None;
        }
        let path = in_drive(uri, prefix)?;
        let item = fs.lookup(account, &path).await.ok()??;
        (item.kind == "folder").then_some((path, item))
    }

    /// A DELETE of a folder as the API deletes one: the folder and everything in it go to the
    /// recycle bin in one transaction (up to `cloud.max_tree` entries), where dav-server would
    /// remove each entry in a transaction of its own, deepest first. Only for a [`Dav::plain`]
    /// request; anything else, and any refusal (a folder past the bound included), is left to
    /// dav-server, which then does what it always did.
    async fn delete_folder(
        &self,
        fs: &DriveFs,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        prefix: &str,
        account: AccountId,
    ) -> Option<http::Response<dav_server::body::Body>> {
        let (_, item) = self.plain_folder(fs, uri, headers, prefix, account).await?;
        let n = self.cloud.drive_delete(account, &item.id).await.ok()?;
        tracing::debug!(entries = n, "webdav: a folder deleted whole");
        Some(empty(http::StatusCode::NO_CONTENT))
    }

    /// A COPY of a folder to a place where nothing is, as the API copies one: in one
    /// transaction (up to `cloud.max_tree` entries), where dav-server would make each folder
    /// and copy each file in a transaction of its own. Only for a [`Dav::plain`] request whose
    /// `Destination` is in the same drive, free, and in a folder that exists (the caller has
    /// refused one inside the folder); anything else (an overwrite, a shallow copy, a
    /// refusal) is left to dav-server.
    async fn copy_folder(
        &self,
        fs: &DriveFs,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        prefix: &str,
        account: AccountId,
    ) -> Option<http::Response<dav_server::body::Body>> {
        let (_, item) = self.plain_folder(fs, uri, headers, prefix, account).await?;
        let to = destination_in_drive(headers, prefix)?;
        if !matches!(fs.lookup(account, &to).await, Err(FsError::NotFound)) {
            return None;
        }
        let (parent, name) = fs.place(account, &to).await.ok()?;
        self.cloud
            .drive_copy(account, &item.id, parent.as_deref(), Some(&name))
            .await
            .ok()?;
        tracing::debug!("webdav: a folder copied whole");
        Some(empty(http::StatusCode::CREATED))
    }
}

/// The length a chunked PUT declares in `X-Expected-Entity-Length` (macOS Finder's), when it
/// has no `Content-Length`.
fn expected_length(headers: &http::HeaderMap) -> Option<u64> {
    if headers.contains_key(http::header::CONTENT_LENGTH) {
        return None;
    }
    headers
        .get("x-expected-entity-length")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A PUT's body held to the length it declared: a frame past it is an error (so dav-server
/// stops before storing anything), and an end before it is noted. Either sets `mismatch`.
struct Declared<B> {
    inner: std::pin::Pin<Box<B>>,
    left: u64,
    mismatch: Arc<AtomicBool>,
}

/// Why a [`Declared`] body failed.
#[derive(Debug)]
enum DeclaredError<E> {
    Body(E),
    TooLong,
}

impl<E: std::fmt::Display> std::fmt::Display for DeclaredError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeclaredError::Body(e) => e.fmt(f),
            DeclaredError::TooLong => f.write_str("the body is longer than it declared"),
        }
    }
}

impl<E: std::error::Error> std::error::Error for DeclaredError<E> {}

impl<B: http_body::Body> http_body::Body for Declared<B> {
    type Data = B::Data;
    type Error = DeclaredError<B::Error>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, Self::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.remaining() as u64;
                    if n > this.left {
                        this.mismatch.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(DeclaredError::TooLong)));
                    }
                    this.left -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(DeclaredError::Body(e)))),
            Poll::Ready(None) => {
                if this.left > 0 {
                    this.mismatch.store(true, Ordering::Relaxed);
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

/// The `Destination` of a COPY or MOVE in the drive mounted at `prefix`, read exactly as
/// dav-server reads it — the path as sent when it starts with `/` (raw spaces included), else
/// a URL's path — so that what is checked here is the place dav-server would act on.
fn destination_in_drive(headers: &http::HeaderMap, prefix: &str) -> Option<DavPath> {
    let sent = headers.get("destination")?.to_str().ok()?;
    let path = if sent.starts_with('/') {
        sent.to_owned()
    } else {
        url::Url::parse(sent).ok()?.path().to_owned()
    };
    let mut path = DavPath::new(&path).ok()?;
    path.set_prefix(prefix).ok()?;
    Some(path)
}

/// The path of `uri` in the drive mounted at `prefix`, if it is in it.
fn in_drive(uri: &http::Uri, prefix: &str) -> Option<DavPath> {
    let mut path = DavPath::new(uri.path()).ok()?;
    path.set_prefix(prefix).ok()?;
    Some(path)
}

/// An answer with no body.
fn empty(status: http::StatusCode) -> http::Response<dav_server::body::Body> {
    let mut r = http::Response::new(dav_server::body::Body::empty());
    *r.status_mut() = status;
    r
}

/// An answer in the API's error shape.
fn refusal(
    status: http::StatusCode,
    code: &str,
    message: &str,
) -> http::Response<dav_server::body::Body> {
    let body = format!(r#"{{"error":{{"code":"{code}","message":"{message}"}}}}"#);
    let mut r = http::Response::new(dav_server::body::Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// A dead property's XML, when dav-server may parse it: base64 that decodes, nested no deeper
/// than any stored since the sync API checks it (an older one is left out, not parsed).
fn parseable(p: &DeadProp) -> Option<Vec<u8>> {
    B64.decode(&p.xml)
        .ok()
        .filter(|xml| xml_depth(xml) <= MAX_XML_DEPTH)
}

#[derive(Clone)]
struct DriveFs {
    cloud: Cloud,
}

fn fs_error(e: CloudError) -> FsError {
    match e {
        CloudError::NotFound | CloudError::UnknownFile(_) => FsError::NotFound,
        CloudError::NameTaken => FsError::Exists,
        CloudError::QuotaExceeded { .. } => FsError::InsufficientStorage,
        CloudError::UploadTooLarge(_) | CloudError::ItemTooLarge(_) => FsError::TooLarge,
        CloudError::Invalid { .. }
        | CloudError::InvalidItem(_)
        | CloudError::DriveConflict
        | CloudError::FolderNotEmpty(_)
        | CloudError::FolderTooLarge(_) => FsError::Forbidden,
        CloudError::InBatch { source, .. } => fs_error(*source),
        other => {
            tracing::warn!(error = %other, "webdav: drive operation failed");
            FsError::GeneralFailure
        }
    }
}

/// A path's names (percent-decoded, UTF-8); the top level is the empty list.
fn names(path: &DavPath) -> FsResult<Vec<String>> {
    let raw = path.as_bytes();
    let text = std::str::from_utf8(raw).map_err(|_| FsError::NotFound)?;
    Ok(text
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect())
}

#[derive(Debug, Clone)]
struct Meta {
    len: u64,
    modified: SystemTime,
    dir: bool,
    etag: Option<String>,
}

fn time_of(rfc3339: &str) -> SystemTime {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map(SystemTime::from)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

impl Meta {
    fn root() -> Meta {
        Meta {
            len: 0,
            modified: SystemTime::UNIX_EPOCH,
            dir: true,
            etag: None,
        }
    }

    fn of(item: &DriveItem) -> Meta {
        Meta {
            len: u64::try_from(item.size).unwrap_or(0),
            modified: time_of(item.modified_at.as_deref().unwrap_or(&item.changed_at)),
            dir: item.kind == "folder",
            etag: Some(format!("{}-{}", item.id, item.version)),
        }
    }
}

impl DavMetaData for Meta {
    fn len(&self) -> u64 {
        self.len
    }
    fn modified(&self) -> FsResult<SystemTime> {
        Ok(self.modified)
    }
    fn is_dir(&self) -> bool {
        self.dir
    }
    fn etag(&self) -> Option<String> {
        self.etag.clone()
    }
}

struct Entry {
    name: String,
    meta: Meta,
}

impl DavDirEntry for Entry {
    fn name(&self) -> Vec<u8> {
        self.name.as_bytes().to_vec()
    }
    fn metadata(&'_ self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let m: Box<dyn DavMetaData> = Box::new(self.meta.clone());
        async move { Ok(m) }.boxed()
    }
}

impl DriveFs {
    async fn lookup(&self, account: AccountId, path: &DavPath) -> FsResult<Option<DriveItem>> {
        let names = names(path)?;
        if names.is_empty() {
            return Ok(None);
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        self.cloud
            .drive_lookup(account, &refs)
            .await
            .map_err(fs_error)?
            .map(Some)
            .ok_or(FsError::NotFound)
    }

    /// The folder a new entry at `path` goes into (`None`: the top level) and its name.
    async fn place(
        &self,
        account: AccountId,
        path: &DavPath,
    ) -> FsResult<(Option<String>, String)> {
        let mut names = names(path)?;
        let name = names.pop().ok_or(FsError::Forbidden)?;
        if names.is_empty() {
            return Ok((None, name));
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let parent = self
            .cloud
            .drive_lookup(account, &refs)
            .await
            .map_err(fs_error)?
            .ok_or(FsError::NotFound)?;
        if parent.kind != "folder" {
            return Err(FsError::Forbidden);
        }
        Ok((Some(parent.id), name))
    }

    async fn existing(&self, account: AccountId, path: &DavPath) -> FsResult<DriveItem> {
        self.lookup(account, path).await?.ok_or(FsError::Forbidden)
    }

    /// The dead properties of the entry at `path`.
    async fn props(&self, account: AccountId, path: &DavPath) -> FsResult<Vec<DeadProp>> {
        let item = self.existing(account, path).await?;
        self.cloud
            .drive_props(account, &item.id)
            .await
            .map_err(fs_error)
    }
}

impl GuardedFileSystem<AccountId> for DriveFs {
    fn open<'a>(
        &'a self,
        path: &'a DavPath,
        options: OpenOptions,
        account: &'a AccountId,
    ) -> FsFuture<'a, Box<dyn DavFile>> {
        let account = *account;
        async move {
            let found = match self.lookup(account, path).await {
                Ok(f) => f,
                Err(FsError::NotFound) => None,
                Err(e) => return Err(e),
            };
            if !options.write {
                let item = found.ok_or(FsError::NotFound)?;
                let file_id = item.file_id.clone().ok_or(FsError::Forbidden)?;
                let f: Box<dyn DavFile> = Box::new(Reader {
                    cloud: self.cloud.clone(),
                    account,
                    file_id,
                    meta: Meta::of(&item),
                    pos: 0,
                    open: std::sync::Mutex::new(None),
                });
                return Ok(f);
            }
            match &found {
                Some(_) if options.create_new => return Err(FsError::Exists),
                Some(i) if i.kind == "folder" => return Err(FsError::Forbidden),
                None if !options.create && !options.create_new => return Err(FsError::NotFound),
                _ => {}
            }
            // A write replaces the whole file: a partial update of one that exists (PATCH with
            // a range, PUT with Content-Range, an append) is not done rather than done wrong.
            if options.append || (!options.truncate && found.is_some()) {
                return Err(FsError::NotImplemented);
            }
            let (parent, name) = match &found {
                Some(i) => (i.parent.clone(), i.name.clone()),
                None => self.place(account, path).await?,
            };
            // What can be refused before a byte arrives is: a bad name, a declared size past
            // the largest file or the account's free space.
            let name = mica_cloud::category::drive_name(&name).map_err(fs_error)?;
            let usage = self.cloud.usage(account).await.map_err(fs_error)?;
            let room =
                u64::try_from(usage.quota_bytes.saturating_sub(usage.used_bytes)).unwrap_or(0);
            let largest = u64::try_from(self.cloud.config().max_file_bytes).unwrap_or(0);
            let limit = Limit { largest, room };
            limit.check(options.size.unwrap_or(0))?;
            let f: Box<dyn DavFile> = Box::new(Writer::new(
                self.cloud.clone(),
                account,
                found.map(|i| i.id),
                parent,
                name,
                options.size,
                limit,
            )?);
            Ok(f)
        }
        .boxed()
    }

    fn read_dir<'a>(
        &'a self,
        path: &'a DavPath,
        _meta: ReadDirMeta,
        account: &'a AccountId,
    ) -> FsFuture<'a, FsStream<Box<dyn DavDirEntry>>> {
        let account = *account;
        async move {
            let parent = match self.lookup(account, path).await? {
                None => None,
                Some(i) if i.kind == "folder" => Some(i.id),
                Some(_) => return Err(FsError::Forbidden),
            };
            let list = self
                .cloud
                .drive_list(account, parent.as_deref())
                .await
                .map_err(fs_error)?;
            let entries: Vec<FsResult<Box<dyn DavDirEntry>>> = list
                .iter()
                .map(|i| {
                    let e: Box<dyn DavDirEntry> = Box::new(Entry {
                        name: i.name.clone(),
                        meta: Meta::of(i),
                    });
                    Ok(e)
                })
                .collect();
            let s: FsStream<Box<dyn DavDirEntry>> = Box::pin(futures_util::stream::iter(entries));
            Ok(s)
        }
        .boxed()
    }

    fn metadata<'a>(
        &'a self,
        path: &'a DavPath,
        account: &'a AccountId,
    ) -> FsFuture<'a, Box<dyn DavMetaData>> {
        let account = *account;
        async move {
            let m: Box<dyn DavMetaData> = match self.lookup(account, path).await? {
                None => Box::new(Meta::root()),
                Some(i) => Box::new(Meta::of(&i)),
            };
            Ok(m)
        }
        .boxed()
    }

    fn create_dir<'a>(&'a self, path: &'a DavPath, account: &'a AccountId) -> FsFuture<'a, ()> {
        let account = *account;
        async move {
            if self.lookup(account, path).await.is_ok() {
                return Err(FsError::Exists);
            }
            let (parent, name) = self.place(account, path).await?;
            self.cloud
                .drive_create_folder(account, parent.as_deref(), &name)
                .await
                .map_err(fs_error)?;
            Ok(())
        }
        .boxed()
    }

    fn remove_dir<'a>(&'a self, path: &'a DavPath, account: &'a AccountId) -> FsFuture<'a, ()> {
        self.remove_file(path, account)
    }

    fn remove_file<'a>(&'a self, path: &'a DavPath, account: &'a AccountId) -> FsFuture<'a, ()> {
        let account = *account;
        async move {
            let item = self
                .lookup(account, path)
                .await?
                .ok_or(FsError::Forbidden)?;
            self.cloud
                .drive_delete(account, &item.id)
                .await
                .map_err(fs_error)?;
            Ok(())
        }
        .boxed()
    }

    fn rename<'a>(
        &'a self,
        from: &'a DavPath,
        to: &'a DavPath,
        account: &'a AccountId,
    ) -> FsFuture<'a, ()> {
        let account = *account;
        async move {
            let item = self.existing(account, from).await?;
            let (parent, name) = self.place(account, to).await?;
            // dav-server removed an overwritten destination already; a file still in the way
            // of a file is replaced, as rename(2) does.
            if let Ok(Some(there)) = self.lookup(account, to).await {
                if there.id == item.id {
                    return Ok(());
                }
                if there.kind == "folder" || item.kind == "folder" {
                    return Err(FsError::Exists);
                }
                self.cloud
                    .drive_delete(account, &there.id)
                    .await
                    .map_err(fs_error)?;
            }
            self.cloud
                .drive_update(
                    account,
                    &item.id,
                    Some(&name),
                    Some(parent.as_deref()),
                    None,
                )
                .await
                .map_err(fs_error)?;
            Ok(())
        }
        .boxed()
    }

    fn copy<'a>(
        &'a self,
        from: &'a DavPath,
        to: &'a DavPath,
        account: &'a AccountId,
    ) -> FsFuture<'a, ()> {
        let account = *account;
        async move {
            let item = self.existing(account, from).await?;
            let (parent, name) = self.place(account, to).await?;
            if let Ok(Some(there)) = self.lookup(account, to).await {
                if there.kind == "folder" {
                    return Err(FsError::Exists);
                }
                self.cloud
                    .drive_delete(account, &there.id)
                    .await
                    .map_err(fs_error)?;
            }
            self.cloud
                .drive_copy(account, &item.id, parent.as_deref(), Some(&name))
                .await
                .map_err(fs_error)?;
            Ok(())
        }
        .boxed()
    }

    fn have_props<'a>(
        &'a self,
        path: &'a DavPath,
        _account: &'a AccountId,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        // Dead properties live on entries; the top level is not one.
        let top = names(path).map(|n| n.is_empty()).unwrap_or(true);
        async move { !top }.boxed()
    }

    fn patch_props<'a>(
        &'a self,
        path: &'a DavPath,
        patch: Vec<(bool, DavProp)>,
        account: &'a AccountId,
    ) -> FsFuture<'a, Vec<(http::StatusCode, DavProp)>> {
        let account = *account;
        async move {
            let item = self.existing(account, path).await?;
            let mut out = Vec::with_capacity(patch.len());
            let mut changes = Vec::with_capacity(patch.len());
            for (set, p) in patch {
                changes.push((
                    set,
                    DeadProp {
                        name: p.name.clone(),
                        namespace: p.namespace.clone(),
                        prefix: p.prefix.clone(),
                        xml: B64.encode(p.xml.as_deref().unwrap_or_default()),
                    },
                ));
                out.push((http::StatusCode::OK, DavProp { xml: None, ..p }));
            }
            self.cloud
                .drive_patch_props(account, &item.id, changes)
                .await
                .map_err(fs_error)?;
            Ok(out)
        }
        .boxed()
    }

    fn get_props<'a>(
        &'a self,
        path: &'a DavPath,
        do_content: bool,
        account: &'a AccountId,
    ) -> FsFuture<'a, Vec<DavProp>> {
        let account = *account;
        async move {
            Ok(self
                .props(account, path)
                .await?
                .into_iter()
                .filter_map(|p| {
                    let xml = parseable(&p)?;
                    Some(DavProp {
                        name: p.name,
                        prefix: p.prefix,
                        namespace: p.namespace,
                        xml: do_content.then_some(xml),
                    })
                })
                .collect())
        }
        .boxed()
    }

    fn get_prop<'a>(
        &'a self,
        path: &'a DavPath,
        prop: DavProp,
        account: &'a AccountId,
    ) -> FsFuture<'a, Vec<u8>> {
        let account = *account;
        async move {
            self.props(account, path)
                .await?
                .into_iter()
                .find(|p| p.name == prop.name && p.namespace == prop.namespace)
                .and_then(|p| parseable(&p))
                .ok_or(FsError::NotFound)
        }
        .boxed()
    }

    fn get_quota<'a>(&'a self, account: &'a AccountId) -> FsFuture<'a, (u64, Option<u64>)> {
        let account = *account;
        async move {
            let u = self.cloud.usage(account).await.map_err(fs_error)?;
            Ok((
                u64::try_from(u.used_bytes).unwrap_or(0),
                Some(u64::try_from(u.quota_bytes).unwrap_or(0)),
            ))
        }
        .boxed()
    }
}

/// Reads a stored file: one read of the file from the position on, kept open across
/// `read_bytes` calls (dav-server asks for `READ_PIECE` at a time) and reopened only when the
/// client seeks elsewhere (a range request), so a download is one look-up of the file's chunks
/// and one pass over each, not one per piece.
#[derive(Debug)]
struct Reader {
    cloud: Cloud,
    account: AccountId,
    file_id: String,
    meta: Meta,
    pos: u64,
    /// The open read at `pos`. In a mutex only because a `DavFile` must be `Sync`: it is
    /// reached through `&mut self`, never locked.
    open: std::sync::Mutex<Option<OpenRead>>,
}

/// A read of a file in progress: what is left of its last piece, then the rest.
struct OpenRead {
    held: Bytes,
    rest: std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, CloudError>> + Send>>,
}

impl std::fmt::Debug for OpenRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenRead")
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

/// How much dav-server asks a file for at a time when it answers a GET (its default, 16 KiB,
/// made a download of a large file thousands of calls).
const READ_PIECE: usize = 256 * 1024;

impl DavFile for Reader {
    fn metadata(&'_ mut self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let m: Box<dyn DavMetaData> = Box::new(self.meta.clone());
        async move { Ok(m) }.boxed()
    }
    fn write_buf(&'_ mut self, _buf: Box<dyn Buf + Send>) -> FsFuture<'_, ()> {
        async { Err(FsError::Forbidden) }.boxed()
    }
    fn write_bytes(&'_ mut self, _buf: Bytes) -> FsFuture<'_, ()> {
        async { Err(FsError::Forbidden) }.boxed()
    }
    fn read_bytes(&'_ mut self, count: usize) -> FsFuture<'_, Bytes> {
        async move {
            let end = (self.pos + count as u64).min(self.meta.len);
            if end <= self.pos {
                return Ok(Bytes::new());
            }
            let want = usize::try_from(end - self.pos).unwrap_or(usize::MAX);
            let open = self
                .open
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if open.is_none() {
                let (_, stream) = self
                    .cloud
                    .read_file(self.account, &self.file_id, Some(self.pos..self.meta.len))
                    .await
                    .map_err(fs_error)?;
                *open = Some(OpenRead {
                    held: Bytes::new(),
                    rest: Box::pin(stream),
                });
            }
            let Some(read) = open.as_mut() else {
                return Err(FsError::GeneralFailure);
            };
            let mut out = bytes::BytesMut::new();
            loop {
                if read.held.is_empty() {
                    match read.rest.next().await {
                        Some(piece) => read.held = piece.map_err(fs_error)?,
                        None => break,
                    }
                }
                let take = read.held.len().min(want - out.len());
                let piece = read.held.split_to(take);
                if out.is_empty() && take == want {
                    // The whole answer from one piece: handed on without a copy.
                    self.pos += piece.len() as u64;
                    return Ok(piece);
                }
                out.extend_from_slice(&piece);
                if out.len() == want {
                    break;
                }
            }
            self.pos += out.len() as u64;
            Ok(out.freeze())
        }
        .boxed()
    }
    fn seek(&'_ mut self, pos: SeekFrom) -> FsFuture<'_, u64> {
        async move {
            let len = i128::from(self.meta.len);
            let at = match pos {
                SeekFrom::Start(p) => i128::from(p),
                SeekFrom::End(d) => len + i128::from(d),
                SeekFrom::Current(d) => i128::from(self.pos) + i128::from(d),
            };
            if at < 0 {
                return Err(FsError::GeneralFailure);
            }
            let at = u64::try_from(at).unwrap_or(u64::MAX);
            if at != self.pos {
                // The open read is at the old position: the next read opens one here.
                *self
                    .open
                    .get_mut()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
            }
            self.pos = at;
            Ok(self.pos)
        }
        .boxed()
    }
    fn flush(&'_ mut self) -> FsFuture<'_, ()> {
        async { Ok(()) }.boxed()
    }
}

/// Receives a PUT: bytes go to a temporary file, then through the upload path (chunks,
/// dedup, quota) when the body is complete, and the drive entry is created or given the new
/// contents. A PUT that breaks off leaves the entry as it was.
#[derive(Debug)]
struct Writer {
    cloud: Cloud,
    account: AccountId,
    existing: Option<String>,
    parent: Option<String>,
    name: String,
    spool: Option<std::fs::File>,
    /// Removes the spool when the PUT ends, however it ends.
    _scratch: Scratch,
    written: u64,
    declared: Option<u64>,
    limit: Limit,
    done: bool,
}

/// How many bytes a PUT may bring: the largest file, and the account's free space when it
/// began (the upload re-checks the quota exactly when it lands). Checked as the bytes arrive, so
/// a body past either never fills the spool.
#[derive(Debug, Clone, Copy)]
struct Limit {
    largest: u64,
    room: u64,
}

impl Limit {
    fn check(&self, bytes: u64) -> FsResult<()> {
        if bytes > self.largest {
            Err(FsError::TooLarge)
        } else if bytes > self.room {
            Err(FsError::InsufficientStorage)
        } else {
            Ok(())
        }
    }
}

impl Writer {
    fn new(
        cloud: Cloud,
        account: AccountId,
        existing: Option<String>,
        parent: Option<String>,
        name: String,
        declared: Option<u64>,
        limit: Limit,
    ) -> FsResult<Writer> {
        // The data folder's scratch space (not TMPDIR, which is often memory); a spool a dead
        // process left behind is removed with the media worker's.
        let dir = cloud
            .config()
            .scratch_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        let (scratch, spool) = Scratch::create(&dir).map_err(|e| {
            tracing::warn!(error = %e, "webdav: no scratch file for a PUT");
            FsError::GeneralFailure
        })?;
        Ok(Writer {
            cloud,
            account,
            existing,
            parent,
            name,
            spool: Some(spool),
            _scratch: scratch,
            written: 0,
            declared,
            limit,
            done: false,
        })
    }

    async fn append(&mut self, bytes: Bytes) -> FsResult<()> {
        let Some(file) = self.spool.take() else {
            return Err(FsError::GeneralFailure);
        };
        let n = bytes.len() as u64;
        self.limit.check(self.written.saturating_add(n))?;
        let file = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut f = file;
            f.write_all(&bytes).map(|_| f)
        })
        .await
        .map_err(|_| FsError::GeneralFailure)?
        .map_err(|_| FsError::GeneralFailure)?;
        self.spool = Some(file);
        self.written += n;
        Ok(())
    }
}

impl DavFile for Writer {
    fn metadata(&'_ mut self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let m: Box<dyn DavMetaData> = Box::new(Meta {
            len: self.written,
            modified: SystemTime::now(),
            dir: false,
            etag: None,
        });
        async move { Ok(m) }.boxed()
    }
    fn write_buf(&'_ mut self, mut buf: Box<dyn Buf + Send>) -> FsFuture<'_, ()> {
        let bytes = buf.copy_to_bytes(buf.remaining());
        self.write_bytes(bytes)
    }
    fn write_bytes(&'_ mut self, buf: Bytes) -> FsFuture<'_, ()> {
        async move { self.append(buf).await }.boxed()
    }
    fn read_bytes(&'_ mut self, _count: usize) -> FsFuture<'_, Bytes> {
        async { Err(FsError::Forbidden) }.boxed()
    }
    fn seek(&'_ mut self, pos: SeekFrom) -> FsFuture<'_, u64> {
        // Writes are sequential: only "where am I" is answered.
        let at = self.written;
        async move {
            match pos {
                SeekFrom::Current(0) | SeekFrom::End(0) => Ok(at),
                SeekFrom::Start(p) if p == at => Ok(at),
                _ => Err(FsError::NotImplemented),
            }
        }
        .boxed()
    }
    fn flush(&'_ mut self) -> FsFuture<'_, ()> {
        async move {
            if self.done {
                return Ok(());
            }
            if let Some(d) = self.declared {
                if d != self.written {
                    // The body is not the length it said (X-Expected-Entity-Length): the
                    // client's mistake, and nothing is stored.
                    return Err(FsError::Forbidden);
                }
            }
            let Some(file) = self.spool.take() else {
                return Err(FsError::GeneralFailure);
            };
            let length = i64::try_from(self.written).map_err(|_| FsError::TooLarge)?;
            let file = tokio::fs::File::from_std(file);
            let mut file = file;
            tokio::io::AsyncSeekExt::seek(&mut file, SeekFrom::Start(0))
                .await
                .map_err(|_| FsError::GeneralFailure)?;
            let body = tokio_util_stream(file);
            let mime = guess_mime(&self.name);
            let stored = self
                .cloud
                .put_file(self.account, length, Some(mime), body)
                .await
                .map_err(fs_error)?;
            match &self.existing {
                Some(id) => {
                    self.cloud
                        .drive_set_file(self.account, id, &stored.id)
                        .await
                }
                None => {
                    self.cloud
                        .drive_add_file(
                            self.account,
                            self.parent.as_deref(),
                            &self.name,
                            &stored.id,
                            None,
                        )
                        .await
                }
            }
            .map_err(fs_error)?;
            self.done = true;
            Ok(())
        }
        .boxed()
    }
}

/// Reads a file as a stream of buffers.
fn tokio_util_stream(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    futures_util::stream::unfold(Some(file), |state| async move {
        let mut file = state?;
        let mut buf = vec![0u8; 1 << 20];
        match tokio::io::AsyncReadExt::read(&mut file, &mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

/// A media type from a file name's extension, for what WebDAV clients do not say.
fn guess_mime(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("heic") => "image/heic",
        Some("mp4") => "video/mp4",
        Some("mov") => "video/quicktime",
        Some("mp3") => "audio/mpeg",
        Some("m4a") => "audio/mp4",
        Some("pdf") => "application/pdf",
        Some("txt") => "text/plain",
        Some("html" | "htm") => "text/html",
        Some("json") => "application/json",
        Some("zip") => "application/zip",
        _ => "application/octet-stream",
    }
}
