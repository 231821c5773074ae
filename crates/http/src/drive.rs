//! The drive: folders and files, listed, created, renamed, moved, copied, deleted to the
//! recycle bin (restored through `/recycle-bin`). Files' bytes arrive through `/uploads` or
//! `/files` first; a drive entry then names the file.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use mica_cloud::DriveItem;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, Auth};
use crate::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(entry, update, delete))
        .routes(routes!(copy))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// The folder to list; the top level when absent.
    pub parent: Option<String>,
}

/// A folder's entries: folders first, then by name.
#[utoipa::path(get, path = "/drive", tag = "files", security(("bearer" = [])),
    params(ListQuery),
    responses((status = 200, body = Vec<DriveItem>), (status = 404, body = ErrorBody)))]
async fn list(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<DriveItem>>, ApiError> {
    Ok(Json(
        app.cloud.drive_list(p.account, q.parent.as_deref()).await?,
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEntry {
    /// `folder` or `file`.
    pub kind: String,
    pub name: String,
    /// The folder to put it in; the top level when absent.
    pub parent: Option<String>,
    /// For a file: the uploaded file (from `/uploads` or `/files`).
    pub file_id: Option<String>,
    /// RFC 3339, as the client's file system had it.
    pub modified_at: Option<String>,
}

/// Creates a folder, or puts an uploaded file into the drive.
#[utoipa::path(post, path = "/drive", tag = "files", security(("bearer" = [])),
    request_body = NewEntry,
    responses((status = 201, body = DriveItem), (status = 409, description = "The name is taken in that folder", body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 507, body = ErrorBody)))]
async fn create(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<NewEntry>,
) -> Result<(StatusCode, Json<DriveItem>), ApiError> {
    let item = match (req.kind.as_str(), req.file_id.as_deref()) {
        ("folder", None) => {
            app.cloud
                .drive_create_folder(p.account, req.parent.as_deref(), &req.name)
                .await?
        }
        ("file", Some(f)) => {
            app.cloud
                .drive_add_file(
                    p.account,
                    req.parent.as_deref(),
                    &req.name,
                    f,
                    req.modified_at.as_deref(),
                )
                .await?
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_input",
                "kind is `folder` (without file_id) or `file` (with file_id)",
            ))
        }
    };
    Ok((StatusCode::CREATED, Json(item)))
}

/// One entry.
#[utoipa::path(get, path = "/drive/{id}", tag = "files", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = DriveItem), (status = 404, body = ErrorBody)))]
async fn entry(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<DriveItem>, ApiError> {
    Ok(Json(app.cloud.drive_entry(p.account, &id).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EntryChange {
    /// A new name.
    pub name: Option<String>,
    /// A new folder: an entry id, or `null` for the top level. Absent: stays where it is.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub parent: Option<Option<String>>,
    /// The version the client last saw; a stale one is refused with `409`.
    pub base_version: Option<String>,
}

/// Distinguishes an absent field (`None`) from `null` (`Some(None)`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Renames and/or moves an entry.
#[utoipa::path(patch, path = "/drive/{id}", tag = "files", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = EntryChange,
    responses((status = 200, body = DriveItem), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<EntryChange>,
) -> Result<Json<DriveItem>, ApiError> {
    Ok(Json(
        app.cloud
            .drive_update(
                p.account,
                &id,
                req.name.as_deref(),
                req.parent.as_ref().map(|p| p.as_deref()),
                req.base_version.as_deref(),
            )
            .await?,
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CopyRequest {
    /// The folder to copy into; the top level when absent.
    pub parent: Option<String>,
    /// The copy's name; the original's by default.
    pub name: Option<String>,
}

/// Copies an entry (a folder with all it holds). Copies share stored bytes: they count in
/// usage, not in storage.
#[utoipa::path(post, path = "/drive/{id}/copy", tag = "files", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = CopyRequest,
    responses((status = 201, body = DriveItem), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody),
              (status = 422, description = "`folder_too_large`: more entries than `max_tree`", body = ErrorBody),
              (status = 507, body = ErrorBody)))]
async fn copy(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<CopyRequest>,
) -> Result<(StatusCode, Json<DriveItem>), ApiError> {
    let item = app
        .cloud
        .drive_copy(p.account, &id, req.parent.as_deref(), req.name.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(item)))
}

/// Moves an entry, and for a folder everything in it, to the recycle bin.
#[utoipa::path(delete, path = "/drive/{id}", tag = "files", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, description = "`{\"deleted\": n}`: the entries that went to the bin"),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 422, description = "`folder_too_large`: more entries than `max_tree`", body = ErrorBody)))]
async fn delete(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let n = app.cloud.drive_delete(p.account, &id).await?;
    Ok(Json(serde_json::json!({ "deleted": n })))
}
