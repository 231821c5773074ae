//! Device backups (CL-7): plan, create, list, read, verify and delete. A part's bytes are a
//! file uploaded through `/api/v1/uploads` and read back through `/api/v1/files/{id}/content`.
//! The protocol is in docs/design/backups.md.

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::Json;
use mica_cloud::backups::{BackupDetail, BackupPlan, BackupView, PartSpec};
use mica_cloud::BackupSource;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, Auth};
use crate::AppState;

/// A backup's manifest: up to 10,000 parts of a few hundred bytes each.
const MAX_MANIFEST_BODY: usize = 4 << 20;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(plan_backup))
        .routes(routes!(list_backups, create_backup))
        .routes(routes!(get_backup, delete_backup))
        .routes(routes!(verify_backup))
        .layer(DefaultBodyLimit::max(MAX_MANIFEST_BODY))
}

/// The parts of a backup about to be made.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub parts: Vec<PartSpec>,
}

/// Which parts must be uploaded before the backup is created: those whose content no backup of
/// the account holds (by content id and size). The others are named without a file.
#[utoipa::path(post, path = "/backups/plan", tag = "backups", security(("bearer" = [])),
    request_body = Manifest,
    responses((status = 200, body = BackupPlan), (status = 422, body = ErrorBody)))]
async fn plan_backup(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiJson(m): ApiJson<Manifest>,
) -> Result<Json<BackupPlan>, ApiError> {
    Ok(Json(app.cloud.plan_backup(p.account, &m.parts).await?))
}

/// Creates a backup of the device this session belongs to, from every part, in one step: it
/// exists whole or not at all. The device's backups past the configured number are deleted,
/// oldest first. `409 backup_parts_missing` names parts to upload first (no file given, and no
/// backup holds their content); `409 device_not_linked` when the session is no linked device's.
#[utoipa::path(post, path = "/backups", tag = "backups", security(("bearer" = [])),
    request_body = Manifest,
    responses((status = 201, body = BackupDetail), (status = 409, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn create_backup(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiJson(m): ApiJson<Manifest>,
) -> Result<(StatusCode, Json<BackupDetail>), ApiError> {
    let Some((device_id, name, model)) = app.devices.of_session(&p).await? else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "device_not_linked",
            "backups are kept per device: link this device to the account first (`mica agent link`), \
             and back up with the session linking gave it",
        ));
    };
    let source = BackupSource {
        device_id,
        name,
        model,
    };
    let detail = app
        .cloud
        .create_backup(p.account, &source, &m.parts)
        .await?;
    Ok((StatusCode::CREATED, Json(detail)))
}

/// The account's backups from every device, newest first.
#[utoipa::path(get, path = "/backups", tag = "backups", security(("bearer" = [])),
    responses((status = 200, body = Vec<BackupView>)))]
async fn list_backups(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<Vec<BackupView>>, ApiError> {
    Ok(Json(app.cloud.backups(p.account).await?))
}

/// A backup with its parts: what a restore downloads, wholly or in part.
#[utoipa::path(get, path = "/backups/{id}", tag = "backups", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = BackupDetail), (status = 404, body = ErrorBody)))]
async fn get_backup(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<BackupDetail>, ApiError> {
    Ok(Json(app.cloud.backup(p.account, &id).await?))
}

/// Deletes a backup; the bytes no other backup holds are freed.
#[utoipa::path(delete, path = "/backups/{id}", tag = "backups", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_backup(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.cloud.delete_backup(p.account, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Reads the backup's bytes back and checks them, now rather than at the next periodic check.
/// Answers at once; `state` becomes `verified` or `damaged` when the check has run.
#[utoipa::path(post, path = "/backups/{id}/verify", tag = "backups", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 202, body = BackupView), (status = 404, body = ErrorBody)))]
async fn verify_backup(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<BackupView>), ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(app.cloud.verify_backup(p.account, &id).await?),
    ))
}
