//! The sync API: collections, pull and push, the recycle bin, usage, and the device channel.
//! The protocol is described in docs/design/sync.md.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use mica_cloud::{BinEntry, Category, CloudError, CollectionInfo, ItemView, Wake, WriteResult};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, Auth, StreamToken};
use crate::AppState;

/// Largest batch body: up to 1,000 writes of items up to 1 MiB each is more than this; a client
/// splits big uploads into several batches.
pub const MAX_BATCH_BODY: usize = 32 * 1024 * 1024;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    let push = OpenApiRouter::new()
        .routes(routes!(push))
        .layer(DefaultBodyLimit::max(MAX_BATCH_BODY));
    OpenApiRouter::new()
        .routes(routes!(list_collections))
        .routes(routes!(create_collection))
        .routes(routes!(pull))
        .routes(routes!(get_item))
        .routes(routes!(recycle_bin, empty_bin))
        .routes(routes!(restore))
        .routes(routes!(restore_since))
        .routes(routes!(purge))
        .routes(routes!(usage))
        .routes(routes!(get_device_sync, put_device_sync))
        .routes(routes!(channel))
        .merge(push)
}

impl From<CloudError> for ApiError {
    fn from(e: CloudError) -> Self {
        if let CloudError::Internal(detail) = &e {
            tracing::error!(error = %detail, "internal error");
            return ApiError::internal();
        }
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
        ApiError::new(status, e.code(), e.to_string())
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct CollectionView {
    pub id: String,
    pub category: Category,
    pub name: String,
}

impl From<CollectionInfo> for CollectionView {
    fn from(c: CollectionInfo) -> Self {
        CollectionView {
            id: c.id,
            category: c.category,
            name: c.name,
        }
    }
}

/// The account's collections. Every category has a default collection named after it
/// (`contacts`, `calendar`, …), which exists as soon as it is used.
#[utoipa::path(get, path = "/collections", tag = "sync", security(("bearer" = [])),
    responses((status = 200, body = Vec<CollectionView>), (status = 401, body = ErrorBody)))]
async fn list_collections(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<Vec<CollectionView>>, ApiError> {
    let list = app.cloud.collections(p.account).await?;
    Ok(Json(list.into_iter().map(Into::into).collect()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCollection {
    pub category: String,
    pub name: String,
}

/// Creates another collection of a category, such as a second calendar. Idempotent.
#[utoipa::path(put, path = "/collections/{collection}", tag = "sync", security(("bearer" = [])),
    params(("collection" = String, Path)),
    request_body = CreateCollection,
    responses((status = 200, body = CollectionView), (status = 409, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn create_collection(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(collection): Path<String>,
    ApiJson(req): ApiJson<CreateCollection>,
) -> Result<Json<CollectionView>, ApiError> {
    let c = app
        .cloud
        .create_collection(p.account, &collection, &req.category, &req.name)
        .await?;
    Ok(Json(c.into()))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ItemBody {
    pub id: String,
    /// The item's version (etag): send it back as `base_version` when changing the item.
    pub version: String,
    pub deleted: bool,
    #[schema(value_type = String, format = DateTime)]
    pub modified_at: String,
    /// vCard or iCalendar text, or the category's JSON object; absent when deleted.
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
}

impl From<ItemView> for ItemBody {
    fn from(v: ItemView) -> Self {
        ItemBody {
            id: v.id,
            version: v.version,
            deleted: v.deleted,
            modified_at: v.modified_at.to_rfc3339(),
            body: v.body,
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PullQuery {
    /// The token of the last pull; absent for everything.
    pub token: Option<String>,
    /// At most this many changes (1–1000, default 500).
    pub limit: Option<i64>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct PullResponse {
    /// Creates, updates and deletions, oldest first; each item once, in its latest state.
    pub changes: Vec<ItemBody>,
    /// Pass as `token` next time.
    pub token: String,
    /// More changes wait: pull again now with `token`.
    pub more: bool,
}

/// What changed in a collection since a token. Pages are stable under concurrent writes: no
/// change is skipped or repeated. An expired or unknown token answers `410`: pull again without
/// a token (a full resync).
#[utoipa::path(get, path = "/collections/{collection}/changes", tag = "sync", security(("bearer" = [])),
    params(("collection" = String, Path), PullQuery),
    responses((status = 200, body = PullResponse), (status = 400, description = "Not a token", body = ErrorBody),
              (status = 404, body = ErrorBody),
              (status = 410, description = "Expired or unknown token: resync", body = ErrorBody)))]
async fn pull(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(collection): Path<String>,
    ApiQuery(q): ApiQuery<PullQuery>,
) -> Result<Json<PullResponse>, ApiError> {
    let pull = app
        .cloud
        .pull(p.account, &collection, q.token.as_deref(), q.limit)
        .await?;
    Ok(Json(PullResponse {
        changes: pull.changes.into_iter().map(Into::into).collect(),
        token: pull.token,
        more: pull.more,
    }))
}

/// One item.
#[utoipa::path(get, path = "/collections/{collection}/items/{id}", tag = "sync", security(("bearer" = [])),
    params(("collection" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = ItemBody), (status = 404, body = ErrorBody)))]
async fn get_item(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path((collection, id)): Path<(String, String)>,
) -> Result<Json<ItemBody>, ApiError> {
    Ok(Json(
        app.cloud.item(p.account, &collection, &id).await?.into(),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteBody {
    /// The item's id, chosen by the client: letters, digits and `- _ . ~ @ + =`, at most 200.
    pub id: String,
    /// `put` or `delete`.
    pub op: String,
    /// The version the client last saw. Absent for a create; required to delete (except in
    /// append-only categories).
    pub base_version: Option<String>,
    /// For `put`: vCard (contacts) or iCalendar (calendar) text, or the category's JSON object.
    #[schema(value_type = Option<Object>)]
    pub body: Option<Box<serde_json::value::RawValue>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    /// At most 1,000.
    pub writes: Vec<WriteBody>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct WriteOutcome {
    pub id: String,
    /// `applied`, `conflict` (nothing written; `current` is the server's item) or `unchanged`.
    pub status: String,
    /// The item's version now.
    pub version: Option<String>,
    pub deleted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<ItemBody>,
}

impl From<WriteResult> for WriteOutcome {
    fn from(r: WriteResult) -> Self {
        WriteOutcome {
            id: r.id,
            status: match r.status {
                mica_store::OpStatus::Applied => "applied",
                mica_store::OpStatus::Conflict => "conflict",
                mica_store::OpStatus::Unchanged => "unchanged",
            }
            .into(),
            version: r.version,
            deleted: r.deleted,
            current: r.current.map(Into::into),
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct PushResponse {
    /// One per write, in order.
    pub results: Vec<WriteOutcome>,
    /// This batch was already applied under its `Idempotency-Key`: these are its results.
    pub replayed: bool,
}

/// Applies a batch of writes. Every write is validated first — one invalid write refuses the
/// whole batch (`422`, with its index) and nothing is stored; a batch that would exceed the
/// quota is refused whole (`507`). Otherwise it is applied in one transaction, with a result per
/// write: a write based on an old version is a `conflict` carrying the server's item, the others
/// apply. Send an `Idempotency-Key` header so that a retried batch is applied once.
#[utoipa::path(post, path = "/collections/{collection}/batch", tag = "sync", security(("bearer" = [])),
    params(("collection" = String, Path),
           ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe")),
    request_body = PushRequest,
    responses((status = 200, body = PushResponse), (status = 404, body = ErrorBody),
              (status = 409, description = "A drive batch would delete a folder that still holds an entry (folder_not_empty), or reuse a name (name_taken)", body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 507, description = "Out of storage", body = ErrorBody)))]
async fn push(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(collection): Path<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PushRequest>,
) -> Result<Json<PushResponse>, ApiError> {
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_input",
                "Idempotency-Key must be visible ASCII",
            )
        })?),
    };
    let writes: Vec<mica_cloud::Write> = req
        .writes
        .into_iter()
        .map(|w| mica_cloud::Write {
            id: w.id,
            op: w.op,
            base_version: w.base_version,
            body: w.body,
        })
        .collect();
    let out = app.cloud.push(p.account, &collection, writes, key).await?;
    Ok(Json(PushResponse {
        results: out.results.into_iter().map(Into::into).collect(),
        replayed: out.replayed,
    }))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct BinEntryView {
    /// Restore or purge with this id.
    pub id: String,
    pub category: Category,
    pub collection: String,
    pub item_id: String,
    /// A name or title to recognise it by.
    pub summary: String,
    pub size: i64,
    #[schema(value_type = String, format = DateTime)]
    pub deleted_at: String,
    /// Deleted for good then (30 days on the free plan, 60 on premium).
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: String,
}

impl From<BinEntry> for BinEntryView {
    fn from(b: BinEntry) -> Self {
        BinEntryView {
            id: b.id,
            category: b.category,
            collection: b.collection_id,
            item_id: b.item_id,
            summary: b.summary,
            size: b.size,
            deleted_at: b.deleted_at.to_rfc3339(),
            expires_at: b.expires_at.to_rfc3339(),
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BinQuery {
    /// Only this category.
    pub category: Option<String>,
    /// The `next` of the page before.
    pub cursor: Option<String>,
    /// Entries per page: 1 to 1,000, 200 unless given.
    pub limit: Option<usize>,
}

/// A page of the recycle bin.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct BinPageView {
    pub entries: Vec<BinEntryView>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next: Option<String>,
}

/// The recycle bin: deleted contacts, events, notes, messages, photos, recordings and drive
/// entries, newest first, a page at a time. Follow `next` for the next page.
#[utoipa::path(get, path = "/recycle-bin", tag = "sync", security(("bearer" = [])),
    params(BinQuery),
    responses((status = 200, body = BinPageView), (status = 422, body = ErrorBody)))]
async fn recycle_bin(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<BinQuery>,
) -> Result<Json<BinPageView>, ApiError> {
    let limit = q.limit.unwrap_or(200);
    if !(1..=mica_cloud::MAX_BIN_PAGE).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            "limit is 1 to 1000 entries",
        ));
    }
    let page = app
        .cloud
        .recycle_bin(p.account, q.category.as_deref(), q.cursor.as_deref(), limit)
        .await?;
    Ok(Json(BinPageView {
        entries: page.entries.into_iter().map(Into::into).collect(),
        next: page.next,
    }))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct PurgedResponse {
    pub purged: u64,
}

/// Empties the recycle bin for good.
#[utoipa::path(delete, path = "/recycle-bin", tag = "sync", security(("bearer" = [])),
    responses((status = 200, body = PurgedResponse)))]
async fn empty_bin(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<PurgedResponse>, ApiError> {
    Ok(Json(PurgedResponse {
        purged: app.cloud.empty_bin(p.account).await?,
    }))
}

/// Restores a deleted item; it comes back to every device on their next pull.
#[utoipa::path(post, path = "/recycle-bin/{id}/restore", tag = "sync", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = ItemBody), (status = 404, body = ErrorBody),
              (status = 409, description = "An item with the same id exists", body = ErrorBody)))]
async fn restore(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<ItemBody>, ApiError> {
    Ok(Json(app.cloud.restore(p.account, &id).await?.into()))
}

/// What to put back from the recycle bin at once.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreSinceRequest {
    /// Only this category (`contacts`, `notes`, `drive`, …); every one when absent.
    pub category: Option<String>,
    /// Everything deleted at this moment or later (RFC 3339) and still in the bin.
    pub deleted_since: String,
    /// The `next` of the call before, to go on where it stopped.
    pub cursor: Option<String>,
}

/// What a restore of everything deleted since a moment did.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct RestoreSinceResponse {
    /// Entries back where they were (a drive folder's contents included).
    pub restored: u64,
    /// Entries left in the bin because their place is taken again.
    pub kept: u64,
    /// More entries deleted since then are still in the bin (5,000 are tried per call): call
    /// again with `next` as `cursor`.
    pub more: bool,
    pub next: Option<String>,
}

/// Undoes deletions: puts back everything (of a category) deleted since a moment — a device
/// whose sync went wrong and deleted a whole address book, say. Every entry comes back to every
/// device on their next pull; one whose place is taken again stays in the bin.
#[utoipa::path(post, path = "/recycle-bin/restore", tag = "sync", security(("bearer" = [])),
    request_body = RestoreSinceRequest,
    responses((status = 200, body = RestoreSinceResponse), (status = 422, body = ErrorBody)))]
async fn restore_since(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<RestoreSinceRequest>,
) -> Result<Json<RestoreSinceResponse>, ApiError> {
    let since = time::OffsetDateTime::parse(
        &req.deleted_since,
        &time::format_description::well_known::Rfc3339,
    )
    .map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            "deleted_since: give the time as RFC 3339, e.g. 2026-11-30T10:00:00Z",
        )
    })?;
    let since = mica_core::Timestamp::from_offset(since);
    let done = app
        .cloud
        .restore_since(
            p.account,
            req.category.as_deref(),
            since,
            req.cursor.as_deref(),
        )
        .await?;
    Ok(Json(RestoreSinceResponse {
        restored: done.restored,
        kept: done.kept,
        more: done.more,
        next: done.next,
    }))
}

/// Deletes one recycle-bin entry for good, freeing its space.
#[utoipa::path(delete, path = "/recycle-bin/{id}", tag = "sync", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 204, description = "Gone"), (status = 404, body = ErrorBody)))]
async fn purge(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.cloud.purge(p.account, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct CategoryUsage {
    /// A category, or `recycle_bin`.
    pub category: String,
    pub bytes: i64,
    pub items: i64,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct UsageResponse {
    pub plan: String,
    pub quota_bytes: i64,
    pub used_bytes: i64,
    pub categories: Vec<CategoryUsage>,
}

/// Storage used against the quota, per category.
#[utoipa::path(get, path = "/usage", tag = "sync", security(("bearer" = [])),
    responses((status = 200, body = UsageResponse)))]
async fn usage(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<UsageResponse>, ApiError> {
    let u = app.cloud.usage(p.account).await?;
    Ok(Json(UsageResponse {
        plan: u.plan,
        quota_bytes: u.quota_bytes,
        used_bytes: u.used_bytes,
        categories: u
            .categories
            .into_iter()
            .map(|(category, bytes, items)| CategoryUsage {
                category,
                bytes,
                items,
            })
            .collect(),
    }))
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceSync {
    /// The categories this device syncs.
    pub categories: Vec<String>,
}

/// Which categories this device (this session) syncs; all of them until it chooses.
#[utoipa::path(get, path = "/sync/device", tag = "sync", security(("bearer" = [])),
    responses((status = 200, body = DeviceSync)))]
async fn get_device_sync(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<DeviceSync>, ApiError> {
    let list = app.cloud.device_categories(p.account, &p.session).await?;
    Ok(Json(DeviceSync {
        categories: list.iter().map(|c| c.as_str().to_owned()).collect(),
    }))
}

/// Chooses the categories this device syncs; the device channel only wakes it for those.
#[utoipa::path(put, path = "/sync/device", tag = "sync", security(("bearer" = [])),
    request_body = DeviceSync,
    responses((status = 200, body = DeviceSync), (status = 422, body = ErrorBody)))]
async fn put_device_sync(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<DeviceSync>,
) -> Result<Json<DeviceSync>, ApiError> {
    let list = app
        .cloud
        .set_device_categories(p.account, &p.session, &req.categories)
        .await?;
    Ok(Json(DeviceSync {
        categories: list.iter().map(|c| c.as_str().to_owned()).collect(),
    }))
}

/// The device channel (Server-Sent Events). First a `ready` event; then a `changed` event
/// (`{"collection", "category", "version"}`) whenever a collection of a category this device
/// syncs changes — pull it then; `resync` if the device fell behind and should pull everything
/// it syncs; `notice` (`{"kind", "title", "text"}`) for the user to see, e.g. a request to
/// recover the account. A comment every 15 seconds keeps the connection open. The channel lasts as long
/// as its access token: signed out, revoked or expired, it ends with `ended`
/// (`{"reason": "signed_out" | "token_expired"}`; reconnect with a fresh token).
#[utoipa::path(get, path = "/device/channel", tag = "sync", security(("bearer" = [])),
    responses((status = 200, description = "text/event-stream", content_type = "text/event-stream")))]
async fn channel(
    State(app): State<AppState>,
    Auth(p): Auth,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let token = StreamToken::from_headers(&headers);
    let categories = app.cloud.device_categories(p.account, &p.session).await?;
    let rx = app.cloud.hub().subscribe(p.account);
    let ready = Event::default()
        .event("ready")
        .json_data(serde_json::json!({
            "categories": categories.iter().map(|c| c.as_str()).collect::<Vec<_>>()
        }))
        .unwrap_or_default();
    let state = (rx, categories, StreamToken::ticks(), app, token);
    let changes = stream::unfold(Some(state), |state| async move {
        let (mut rx, categories, mut tick, app, token) = state?;
        loop {
            let received = tokio::select! {
                r = rx.recv() => Some(r),
                _ = tick.tick() => None,
            };
            if let Some(ended) = token.ended(&app) {
                return Some((Ok(ended), None));
            }
            let ev = match received {
                None => continue,
                Some(Ok(Wake::Changed(change))) if categories.contains(&change.category) => {
                    Event::default()
                        .event("changed")
                        .id(change.version.to_string())
                        .json_data(&change)
                        .unwrap_or_default()
                }
                Some(Ok(Wake::Changed(_))) => continue,
                Some(Ok(Wake::Notice(n))) => Event::default()
                    .event("notice")
                    .json_data(&n)
                    .unwrap_or_default(),
                Some(Err(RecvError::Lagged(_))) => Event::default().event("resync").data("{}"),
                Some(Err(RecvError::Closed)) => return None,
            };
            return Some((Ok(ev), Some((rx, categories, tick, app, token))));
        }
    });
    let stream = stream::once(async move { Ok(ready) }).chain(changes);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
