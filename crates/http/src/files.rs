//! Files: resumable uploads (tus 1.0: core, creation, creation-with-upload, termination,
//! checksum, expiration) at `/api/v1/uploads`, single-request uploads, and downloads with Range,
//! ETag and conditional requests. The design is in docs/design/files.md.

use std::ops::Range;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use mica_cloud::{Checksum, CloudError, FileInfo, UploadInfo, CHECKSUM_ALGORITHMS};
use mica_core::{AccountId, Timestamp};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::extract::Auth;
use crate::AppState;

const TUS_VERSION: &str = "1.0.0";
const TUS_EXTENSIONS: &str = "creation,creation-with-upload,termination,checksum,expiration";
const OFFSET_STREAM: &str = "application/offset+octet-stream";

static TUS_RESUMABLE: HeaderName = HeaderName::from_static("tus-resumable");
static UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
static UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");
static UPLOAD_METADATA: HeaderName = HeaderName::from_static("upload-metadata");
static UPLOAD_EXPIRES: HeaderName = HeaderName::from_static("upload-expires");
static UPLOAD_CHECKSUM: HeaderName = HeaderName::from_static("upload-checksum");
static MICA_FILE_ID: HeaderName = HeaderName::from_static("mica-file-id");

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(tus_options, create_upload))
        .routes(routes!(upload_status, write_upload, terminate_upload))
        .routes(routes!(upload_info))
        .routes(routes!(put_file))
        .routes(routes!(file_info))
        .routes(routes!(file_content))
        .routes(routes!(file_preview))
        .routes(routes!(gallery))
        .routes(routes!(gallery_albums))
        .layer(axum::middleware::map_response(crate::user_content_headers))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PreviewQuery {
    /// `small` (256 px, the default) or `large` (1024 px) on the long side.
    pub size: Option<String>,
}

/// A photo's preview, made in the background once a gallery item refers to the file.
/// `409 preview_pending` while it is being made; `404 no_preview` says why there is none
/// (a damaged image, one too large to decode, not an image).
#[utoipa::path(get, path = "/files/{id}/preview", tag = "files", security(("bearer" = [])),
    params(("id" = String, Path), PreviewQuery),
    responses((status = 200, description = "image/jpeg"), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn file_preview(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    crate::extract::ApiQuery(q): crate::extract::ApiQuery<PreviewQuery>,
) -> Result<Response, ApiError> {
    let large = match q.size.as_deref() {
        None | Some("small") => false,
        Some("large") => true,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_input",
                "size is `small` or `large`",
            ))
        }
    };
    let bytes = app.cloud.preview(p.account, &id, large).await?;
    Response::builder()
        .header(header::CONTENT_TYPE, "image/jpeg")
        .header(header::CACHE_CONTROL, "private, max-age=86400")
        .body(Body::from(bytes))
        .map_err(|_| ApiError::internal())
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct GalleryQuery {
    /// Only this album's photos and videos.
    pub album: Option<String>,
    /// The `next` of the page before.
    pub cursor: Option<String>,
    /// Entries per page: 1 to 500, 100 unless given.
    pub limit: Option<usize>,
}

/// The gallery as a timeline, newest first (undated ones last), a page at a time: each photo
/// or video with its capture time and place (as the device recorded them, or else from the
/// file's EXIF or container), its size and its preview state. Follow `next` for the next page.
#[utoipa::path(get, path = "/gallery", tag = "files", security(("bearer" = [])),
    params(GalleryQuery),
    responses((status = 200, body = mica_cloud::media::GalleryPage),
              (status = 422, body = ErrorBody)))]
async fn gallery(
    State(app): State<AppState>,
    Auth(p): Auth,
    crate::extract::ApiQuery(q): crate::extract::ApiQuery<GalleryQuery>,
) -> Result<Json<mica_cloud::media::GalleryPage>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=mica_cloud::media::MAX_GALLERY_PAGE).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            "limit is 1 to 500 entries",
        ));
    }
    Ok(Json(
        app.cloud
            .gallery(p.account, q.album.as_deref(), q.cursor.as_deref(), limit)
            .await?,
    ))
}

/// The gallery's albums that hold at least one photo or video, by name: each with how many it
/// holds and its newest (whose `file_id` gives the preview to show). Open one with
/// `GET /gallery?album=<name>`.
#[utoipa::path(get, path = "/gallery/albums", tag = "files", security(("bearer" = [])),
    responses((status = 200, body = Vec<mica_cloud::media::AlbumSummary>)))]
async fn gallery_albums(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<Vec<mica_cloud::media::AlbumSummary>>, ApiError> {
    Ok(Json(app.cloud.albums(p.account).await?))
}

fn header_str<'a>(h: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn http_date(t: Timestamp) -> String {
    let secs = u64::try_from(t.millis() / 1000).unwrap_or(0);
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

fn value(s: impl AsRef<str>) -> HeaderValue {
    HeaderValue::from_str(s.as_ref()).unwrap_or(HeaderValue::from_static(""))
}

/// A tus error: the API's error body, with `Tus-Resumable` as every tus response carries.
fn tus_error(e: impl Into<ApiError>) -> Response {
    let mut r = e.into().into_response();
    r.headers_mut()
        .insert(TUS_RESUMABLE.clone(), HeaderValue::from_static(TUS_VERSION));
    r
}

/// Every tus request but OPTIONS names the protocol version it speaks.
fn tus_refusal(h: &HeaderMap) -> Option<Response> {
    if header_str(h, &TUS_RESUMABLE) == Some(TUS_VERSION) {
        return None;
    }
    let mut r = ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        "tus_version_unsupported",
        "send `Tus-Resumable: 1.0.0`: this server speaks tus 1.0.0",
    )
    .into_response();
    r.headers_mut()
        .insert(HeaderName::from_static("tus-version"), value(TUS_VERSION));
    Some(r)
}

fn parse_len(h: &HeaderMap, name: &HeaderName) -> Result<Option<i64>, ApiError> {
    match h.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<i64>().ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_header",
                    format!("{name} must be a non-negative integer"),
                )
            }),
    }
}

/// A length header the request must carry.
fn required_len(h: &HeaderMap, name: &HeaderName) -> Result<i64, ApiError> {
    parse_len(h, name)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_header",
            format!("{name} is required"),
        )
    })
}

/// `Upload-Checksum`, when the request carries one.
fn checksum(h: &HeaderMap) -> Result<Option<Checksum>, CloudError> {
    match h.get(&UPLOAD_CHECKSUM) {
        None => Ok(None),
        // Not text: not a checksum to skip, but one that cannot be checked.
        Some(v) => {
            Checksum::parse(v.to_str().map_err(|_| CloudError::UnsupportedChecksum)?).map(Some)
        }
    }
}

fn upload_headers(r: &mut Response, u: &UploadInfo) {
    let h = r.headers_mut();
    h.insert(TUS_RESUMABLE.clone(), HeaderValue::from_static(TUS_VERSION));
    h.insert(UPLOAD_OFFSET.clone(), value(u.offset.to_string()));
    h.insert(UPLOAD_LENGTH.clone(), value(u.length.to_string()));
    if u.file_id.is_none() {
        h.insert(UPLOAD_EXPIRES.clone(), value(http_date(u.expires_at)));
    }
    if let Some(f) = &u.file_id {
        h.insert(MICA_FILE_ID.clone(), value(f));
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// Runs an upload write on its own task, so that a client that disconnects mid-request
/// does not cancel it: the bytes that arrived are kept and the upload resumes from them.
async fn spawn_write(
    app: &AppState,
    account: AccountId,
    id: String,
    offset: i64,
    body: Body,
    checksum: Option<Checksum>,
) -> Result<UploadInfo, CloudError> {
    let cloud = app.cloud.clone();
    tokio::spawn(async move {
        cloud
            .write_upload(account, &id, offset, body.into_data_stream(), checksum)
            .await
    })
    .await
    .map_err(|e| CloudError::Internal(format!("upload task: {e}")))?
}

/// What the server supports (tus discovery). Needs no authentication.
#[utoipa::path(options, path = "/uploads", tag = "files",
    responses((status = 204, description = "`Tus-Version`, `Tus-Extension`, `Tus-Max-Size`, `Tus-Checksum-Algorithm`")))]
async fn tus_options(State(app): State<AppState>) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(TUS_RESUMABLE.clone(), HeaderValue::from_static(TUS_VERSION));
    h.insert(HeaderName::from_static("tus-version"), value(TUS_VERSION));
    h.insert(
        HeaderName::from_static("tus-extension"),
        HeaderValue::from_static(TUS_EXTENSIONS),
    );
    h.insert(
        HeaderName::from_static("tus-max-size"),
        value(app.cloud.config().max_file_bytes.to_string()),
    );
    h.insert(
        HeaderName::from_static("tus-checksum-algorithm"),
        HeaderValue::from_static(CHECKSUM_ALGORITHMS),
    );
    r
}

/// Creates an upload (tus creation). `Upload-Length` is required; `Upload-Metadata` may carry
/// `filename` and `filetype`. With a body (`Content-Type: application/offset+octet-stream`) the
/// first bytes come in the same request (creation-with-upload). The upload lives at `Location`.
#[utoipa::path(post, path = "/uploads", tag = "files", security(("bearer" = [])),
    params(("Tus-Resumable" = String, Header, description = "1.0.0"),
           ("Upload-Length" = i64, Header, description = "The file's size in bytes"),
           ("Upload-Metadata" = Option<String>, Header, description = "tus metadata: `key base64value` pairs")),
    responses((status = 201, description = "Created: `Location`, `Upload-Expires`, `Upload-Offset`"),
              (status = 400, body = ErrorBody), (status = 412, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 507, body = ErrorBody)))]
async fn create_upload(
    State(app): State<AppState>,
    Auth(p): Auth,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(r) = tus_refusal(&headers) {
        return r;
    }
    if headers.contains_key("upload-defer-length") {
        return tus_error(ApiError::new(
            StatusCode::BAD_REQUEST,
            "defer_length_unsupported",
            "declare Upload-Length when creating the upload (creation-defer-length is not supported)",
        ));
    }
    let length = match required_len(&headers, &UPLOAD_LENGTH) {
        Ok(l) => l,
        Err(e) => return tus_error(e),
    };
    let metadata = header_str(&headers, &UPLOAD_METADATA).unwrap_or("");
    // What would refuse the first bytes is checked before the upload exists, so a refusal
    // leaves nothing behind (the answer has no `Location` to resume at).
    let with_body = header_str(&headers, &header::CONTENT_TYPE) == Some(OFFSET_STREAM);
    let checksum = match checksum(&headers) {
        Ok(c) => c,
        Err(e) => return tus_error(e),
    };
    if with_body
        && header_str(&headers, &header::CONTENT_LENGTH)
            .and_then(|v| v.parse::<i64>().ok())
            .is_some_and(|len| len > length)
    {
        return tus_error(CloudError::PastUploadLength);
    }
    let info = match app
        .cloud
        .create_upload(p.account, length, metadata, None)
        .await
    {
        Ok(i) => i,
        Err(e) => return tus_error(e),
    };
    let info = if with_body {
        match spawn_write(&app, p.account, info.id.clone(), 0, body, checksum).await {
            Ok(i) => i,
            // The upload exists; the client learns its offset with HEAD and resumes.
            Err(CloudError::ChecksumMismatch | CloudError::IncompleteBody) => info,
            Err(e) => {
                // Refused without a `Location`, the upload could be neither resumed nor ended
                // by the client: end it here, releasing what it had stored.
                if let Err(end) = app.cloud.terminate_upload(p.account, &info.id).await {
                    tracing::warn!(upload = %info.id, error = %end, "ending a refused upload");
                }
                return tus_error(e);
            }
        }
    } else {
        info
    };
    let mut r = StatusCode::CREATED.into_response();
    upload_headers(&mut r, &info);
    r.headers_mut().insert(
        header::LOCATION,
        value(format!("/api/v1/uploads/{}", info.id)),
    );
    r
}

/// Where an upload stands (tus HEAD): `Upload-Offset` is where to resume. Once complete,
/// `Mica-File-Id` names the file it became.
#[utoipa::path(head, path = "/uploads/{id}", tag = "files", security(("bearer" = [])),
    params(("id" = String, Path), ("Tus-Resumable" = String, Header, description = "1.0.0")),
    responses((status = 200, description = "`Upload-Offset`, `Upload-Length`, `Upload-Expires`, `Mica-File-Id`"),
              (status = 404, description = "No such upload (or it expired)")))]
async fn upload_status(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = tus_refusal(&headers) {
        return r;
    }
    match app.cloud.upload(p.account, &id).await {
        Ok(info) => {
            let mut r = StatusCode::OK.into_response();
            upload_headers(&mut r, &info);
            if !info.metadata.is_empty() {
                r.headers_mut()
                    .insert(UPLOAD_METADATA.clone(), value(&info.metadata));
            }
            r
        }
        Err(e) => tus_error(e),
    }
}

/// Appends bytes at `Upload-Offset` (tus PATCH). A wrong offset is 409; with
/// `Upload-Checksum`, a mismatch is 460 and nothing of the request is kept.
#[utoipa::path(patch, path = "/uploads/{id}", tag = "files", security(("bearer" = [])),
    params(("id" = String, Path), ("Tus-Resumable" = String, Header, description = "1.0.0"),
           ("Upload-Offset" = i64, Header), ("Upload-Checksum" = Option<String>, Header,
            description = "`sha1|sha256|blake3 <base64 digest>` of this request's body")),
    request_body(content_type = "application/offset+octet-stream", content = Vec<u8>),
    responses((status = 204, description = "`Upload-Offset` after the bytes"),
              (status = 409, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 460, body = ErrorBody), (status = 507, body = ErrorBody)))]
async fn write_upload(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(r) = tus_refusal(&headers) {
        return r;
    }
    if header_str(&headers, &header::CONTENT_TYPE) != Some(OFFSET_STREAM) {
        return tus_error(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the bytes as Content-Type: application/offset+octet-stream",
        ));
    }
    let offset = match required_len(&headers, &UPLOAD_OFFSET) {
        Ok(o) => o,
        Err(e) => return tus_error(e),
    };
    let checksum = match checksum(&headers) {
        Ok(c) => c,
        Err(e) => return tus_error(e),
    };
    // A body declared longer than what is left of the upload is refused before it is read.
    if let Some(len) =
        header_str(&headers, &header::CONTENT_LENGTH).and_then(|v| v.parse::<i64>().ok())
    {
        match app.cloud.upload(p.account, &id).await {
            Ok(u) if u.file_id.is_none() && u.offset == offset && len > u.length - u.offset => {
                return tus_error(CloudError::PastUploadLength)
            }
            Ok(_) => {}
            Err(e) => return tus_error(e),
        }
    }
    match spawn_write(&app, p.account, id, offset, body, checksum).await {
        Ok(info) => {
            let mut r = StatusCode::NO_CONTENT.into_response();
            upload_headers(&mut r, &info);
            r
        }
        Err(e) => tus_error(e),
    }
}

/// Abandons an upload (tus termination); its bytes are released.
#[utoipa::path(delete, path = "/uploads/{id}", tag = "files", security(("bearer" = [])),
    params(("id" = String, Path), ("Tus-Resumable" = String, Header, description = "1.0.0")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn terminate_upload(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = tus_refusal(&headers) {
        return r;
    }
    match app.cloud.terminate_upload(p.account, &id).await {
        Ok(()) => {
            let mut r = StatusCode::NO_CONTENT.into_response();
            r.headers_mut()
                .insert(TUS_RESUMABLE.clone(), HeaderValue::from_static(TUS_VERSION));
            r
        }
        Err(e) => tus_error(e),
    }
}

/// An upload as JSON (for clients that want the file id without reading headers).
#[utoipa::path(get, path = "/uploads/{id}", tag = "files", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = UploadInfo), (status = 404, body = ErrorBody)))]
async fn upload_info(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<UploadInfo>, ApiError> {
    Ok(Json(app.cloud.upload(p.account, &id).await?))
}

/// Stores a file sent whole in one request (for small files; large ones use `/uploads`).
/// `Content-Length` is required; `Content-Type` becomes the file's type.
#[utoipa::path(post, path = "/files", tag = "files", security(("bearer" = [])),
    request_body(content_type = "application/octet-stream", content = Vec<u8>),
    responses((status = 201, body = FileInfo), (status = 400, body = ErrorBody),
              (status = 411, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 507, body = ErrorBody)))]
async fn put_file(
    State(app): State<AppState>,
    Auth(p): Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<FileInfo>), ApiError> {
    let length = header_str(&headers, &header::CONTENT_LENGTH)
        .and_then(|v| v.parse::<i64>().ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::LENGTH_REQUIRED,
                "length_required",
                "send Content-Length (or use the resumable /api/v1/uploads)",
            )
        })?;
    let mime = header_str(&headers, &header::CONTENT_TYPE).map(str::to_owned);
    let cloud = app.cloud.clone();
    let account = p.account;
    let info = tokio::spawn(async move {
        cloud
            .put_file(account, length, mime.as_deref(), body.into_data_stream())
            .await
    })
    .await
    .map_err(|e| CloudError::Internal(format!("upload task: {e}")))??;
    Ok((StatusCode::CREATED, Json(info)))
}

/// A file's description.
#[utoipa::path(get, path = "/files/{id}", tag = "files", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = FileInfo), (status = 404, body = ErrorBody)))]
async fn file_info(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<FileInfo>, ApiError> {
    Ok(Json(app.cloud.file(p.account, &id).await?))
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` against a size; `None` for anything else (several
/// ranges, other units), which is answered with the whole file as RFC 9110 allows.
fn parse_range(h: &str, size: u64) -> Option<Result<Range<u64>, ()>> {
    let spec = h.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let range = match (a.trim(), b.trim()) {
        ("", n) => {
            let n = num(n)?;
            if n == 0 {
                return Some(Err(()));
            }
            size.saturating_sub(n)..size
        }
        (s, "") => num(s)?..size,
        (s, e) => {
            let (s, e) = (num(s)?, num(e)?);
            if e < s {
                return None;
            }
            s..e.saturating_add(1).min(size)
        }
    };
    if range.start >= size {
        return Some(Err(()));
    }
    Some(Ok(range))
}

/// Whether an `If-None-Match`/`If-Match` list holds the tag (or `*`).
fn etag_listed(list: &str, etag: &str) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t == etag || t.strip_prefix("W/") == Some(etag))
}

/// A file's bytes, with `Range` (one range), `ETag`, `If-None-Match`, `If-Match`, `If-Range`.
#[utoipa::path(get, path = "/files/{id}/content", tag = "files", security(("bearer" = [])),
    params(("id" = String, Path), ("Range" = Option<String>, Header, description = "bytes=first-last")),
    responses((status = 200, description = "The bytes"), (status = 206, description = "The requested range"),
              (status = 304, description = "Not modified"), (status = 404, body = ErrorBody),
              (status = 412, body = ErrorBody), (status = 416, body = ErrorBody)))]
async fn file_content(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let info = app.cloud.file(p.account, &id).await?;
    let etag = format!("\"{}\"", info.content_hash);
    let size = u64::try_from(info.size).unwrap_or(0);
    if let Some(m) = header_str(&headers, &header::IF_MATCH) {
        if !etag_listed(m, &etag) {
            return Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                "the file is not the version If-Match names",
            ));
        }
    }
    let mut base = Response::builder()
        .header(header::ETAG, value(&etag))
        .header(header::LAST_MODIFIED, value(http_date(info.created_at)))
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "private, no-cache")
        // What people store is served as data, never run as a page of this site.
        .header(
            header::CONTENT_SECURITY_POLICY,
            "sandbox; default-src 'none'",
        );
    if let Some(m) = header_str(&headers, &header::IF_NONE_MATCH) {
        if etag_listed(m, &etag) {
            return base
                .status(StatusCode::NOT_MODIFIED)
                .body(Body::empty())
                .map_err(|_| ApiError::internal());
        }
    }
    let if_range_ok = header_str(&headers, &header::IF_RANGE).is_none_or(|t| t.trim() == etag);
    let range = match header_str(&headers, &header::RANGE)
        .filter(|_| if_range_ok)
        .and_then(|r| parse_range(r, size))
    {
        None => None,
        Some(Ok(r)) => Some(r),
        Some(Err(())) => {
            return base
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, value(format!("bytes */{size}")))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(
                    serde_json::json!({"error": {"code": "range_not_satisfiable",
                        "message": format!("the range is outside the file ({size} bytes)")}})
                    .to_string(),
                ))
                .map_err(|_| ApiError::internal());
        }
    };
    let (_, stream) = app.cloud.read_file(p.account, &id, range.clone()).await?;
    let stream = stream.map(|r| r.map_err(std::io::Error::other));
    base = base.header(header::CONTENT_TYPE, value(&info.mime_type));
    let resp = match range {
        Some(r) => base
            .status(StatusCode::PARTIAL_CONTENT)
            .header(
                header::CONTENT_RANGE,
                value(format!("bytes {}-{}/{size}", r.start, r.end - 1)),
            )
            .header(header::CONTENT_LENGTH, (r.end - r.start).to_string()),
        None => base
            .status(StatusCode::OK)
            .header(header::CONTENT_LENGTH, size.to_string()),
    };
    resp.body(Body::from_stream(stream))
        .map_err(|_| ApiError::internal())
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok(0..10)));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok(90..100)));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok(90..100)));
        assert_eq!(parse_range("bytes=-1000", 100), Some(Ok(0..100)));
        assert_eq!(parse_range("bytes=50-1000", 100), Some(Ok(50..100)));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=-0", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_range("bytes=9-3", 100), None);
        assert_eq!(parse_range("bytes=a-3", 100), None);
        // The largest last byte a client can write is the whole file, not an overflow.
        let max = u64::MAX.to_string();
        assert_eq!(
            parse_range(&format!("bytes=0-{max}"), 100),
            Some(Ok(0..100))
        );
        assert_eq!(
            parse_range(&format!("bytes={max}-{max}"), 100),
            Some(Err(()))
        );
        assert_eq!(parse_range(&format!("bytes=-{max}"), 100), Some(Ok(0..100)));
    }
}
