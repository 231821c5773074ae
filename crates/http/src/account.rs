//! The signed-in person's own account.

use axum::extract::State;
use axum::Json;
use mica_core::AccountId;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiQuery, Auth};
use crate::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me))
        .routes(routes!(logins))
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
