//! The signed-in person's own account.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mica_core::AccountId;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiQuery, Auth, Client};
use crate::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me))
        .routes(routes!(logins))
        .routes(routes!(request_export, list_exports))
        .routes(routes!(download_export))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct MeResponse {
    pub account_id: AccountId,
    pub email: Option<String>,
    pub phone: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: String,
    #[schema(value_type = String, format = DateTime)]
    pub password_changed_at: String,
}

/// The signed-in account.
#[utoipa::path(get, path = "/me", tag = "account", security(("bearer" = [])),
    responses((status = 200, body = MeResponse), (status = 401, body = ErrorBody)))]
async fn me(State(app): State<AppState>, Auth(p): Auth) -> Result<Json<MeResponse>, ApiError> {
    let v = app.identity.me(&p).await?;
    Ok(Json(MeResponse {
        account_id: v.id,
        email: v.email.as_ref().map(ToString::to_string),
        phone: v.phone.as_ref().map(ToString::to_string),
        created_at: v.created_at.to_rfc3339(),
        password_changed_at: v.password_changed_at.to_rfc3339(),
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LoginsQuery {
    /// At most this many records, newest first (1–500, default 50).
    pub limit: Option<u32>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct LoginRecordView {
    #[schema(value_type = String, format = DateTime)]
    pub at: String,
    /// What the user agent says: client, operating system, kind of device.
    pub agent: AgentView,
    /// `success`, `wrong_password`, …
    pub outcome: String,
    pub ip: String,
    pub user_agent: String,
    pub device_model: Option<String>,
    pub os_version: Option<String>,
    pub client: Option<String>,
}

/// Sign-in records of the account: successes and wrong passwords, newest first.
#[utoipa::path(get, path = "/me/logins", tag = "account", security(("bearer" = [])),
    params(LoginsQuery),
    responses((status = 200, body = Vec<LoginRecordView>), (status = 401, body = ErrorBody)))]
async fn logins(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<LoginsQuery>,
) -> Result<Json<Vec<LoginRecordView>>, ApiError> {
    let rows = app
        .identity
        .login_history(&p, i64::from(q.limit.unwrap_or(50)))
        .await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| LoginRecordView {
                agent: AgentView::of(&r.user_agent),
                at: r.at.to_rfc3339(),
                outcome: r.outcome,
                ip: r.ip,
                user_agent: r.user_agent,
                device_model: r.device_model,
                os_version: r.os_version,
                client: r.client,
            })
            .collect(),
    ))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ExportView {
    pub id: String,
    /// `pending` while it is being built, then `ready`.
    pub status: String,
    /// Bytes, once ready.
    pub size: Option<i64>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: String,
    /// After this the archive is deleted.
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: String,
    /// Where to download it (with the same bearer token), once ready.
    pub download: Option<String>,
}

fn export_view(e: mica_store::ExportRow) -> ExportView {
    let ready = e.status == "ready";
    ExportView {
        download: ready.then(|| format!("/api/v1/me/exports/{}/download", e.id)),
        id: e.id,
        status: e.status,
        size: e.size,
        created_at: e.created_at.to_rfc3339(),
        expires_at: e.expires_at.to_rfc3339(),
    }
}

/// Asks for an archive (zip) of everything the account holds; it is built in the background.
/// Needs a fresh step-up (`403 step_up_required`), and the owner is told by mail.
#[utoipa::path(post, path = "/me/exports", tag = "account", security(("bearer" = [])),
    responses((status = 202, body = ExportView), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
async fn request_export(
    State(app): State<AppState>,
    Auth(p): Auth,
    client: Client,
) -> Result<(StatusCode, Json<ExportView>), ApiError> {
    let e = app.identity.request_export(&p, &client.info(None)).await?;
    Ok((StatusCode::ACCEPTED, Json(export_view(e))))
}

/// The account's archives that have not expired.
#[utoipa::path(get, path = "/me/exports", tag = "account", security(("bearer" = [])),
    responses((status = 200, body = Vec<ExportView>), (status = 401, body = ErrorBody)))]
async fn list_exports(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<Vec<ExportView>>, ApiError> {
    Ok(Json(
        app.identity
            .exports(&p)
            .await?
            .into_iter()
            .map(export_view)
            .collect(),
    ))
}

/// Downloads a ready archive (until it expires).
#[utoipa::path(get, path = "/me/exports/{id}/download", tag = "account", security(("bearer" = [])),
    params(("id" = String, Path, description = "Export id")),
    responses((status = 200, content_type = "application/zip", description = "The archive"), (status = 404, body = ErrorBody)))]
async fn download_export(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (path, e) = app.identity.export_file(&p, &id).await?;
    let file = tokio::fs::File::open(&path).await.map_err(|err| {
        tracing::error!(export = %e.id, error = %err, "export file missing");
        ApiError::not_found()
    })?;
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let disposition = format!(
        "attachment; filename=\"mica-{}-{}.zip\"",
        e.account_id, e.id
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/zip".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
            (header::CONTENT_LENGTH, e.size.unwrap_or(0).to_string()),
        ],
        body,
    )
        .into_response())
}

/// A user agent, parsed.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct AgentView {
    /// e.g. `Chrome 120.0.0.0`, `mica-client 0.1.0`.
    pub client: Option<String>,
    /// e.g. `Windows 10`, `Android 14`.
    pub os: Option<String>,
    /// `pc`, `smartphone`, `mobilephone`, `appliance`, `crawler` or `misc`.
    pub category: Option<String>,
}

impl AgentView {
    pub fn of(user_agent: &str) -> Self {
        let a = mica_identity::agent::describe(user_agent);
        AgentView {
            client: a.client,
            os: a.os,
            category: a.category,
        }
    }
}
