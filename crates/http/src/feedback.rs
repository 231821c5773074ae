//! Feedback and bug reports to the operator (CM-5): sent from a device with attached logs,
//! listed back with the operator's answers.

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::Json;
use base64::Engine as _;
use mica_commerce::feedback::{Attachment, NewFeedback, Report, ReportDevice};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, Auth};
use crate::AppState;

/// Attachments of up to 4 MiB in all, as base64, and the words around them.
const MAX_FEEDBACK_BODY: usize = 6 << 20;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(my_feedback, send_feedback))
        .layer(DefaultBodyLimit::max(MAX_FEEDBACK_BODY))
}

/// An attached file (a log, a screenshot).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachmentIn {
    /// A file name, e.g. `agent.log`.
    pub name: String,
    /// E.g. `text/plain`, `image/png`.
    pub media_type: String,
    /// The bytes, base64 (standard alphabet, padded). At most 2 MiB each, 4 MiB together.
    pub content: String,
}

/// A report to the operator.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackIn {
    /// `bug`, `idea` or `other`.
    pub kind: String,
    /// One line, up to 200 characters.
    pub subject: String,
    /// What happened, or the idea: up to 20,000 characters.
    pub description: String,
    /// The app it is about, with its version (e.g. `Gallery 2.3.1`).
    #[serde(default)]
    pub app: Option<String>,
    /// Up to 5 files.
    #[serde(default)]
    pub attachments: Vec<AttachmentIn>,
}

/// Sends feedback or a bug report to the operator, with attached logs. When the session is a
/// linked device's, the report says which device (model, system and app versions). An
/// account sends at most 20 reports a day (`429 rate_limited`).
#[utoipa::path(post, path = "/feedback", tag = "feedback", security(("bearer" = [])),
    request_body = FeedbackIn,
    responses((status = 201, body = Report), (status = 413, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn send_feedback(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiJson(f): ApiJson<FeedbackIn>,
) -> Result<(StatusCode, Json<Report>), ApiError> {
    let mut attachments = Vec::with_capacity(f.attachments.len());
    for a in f.attachments {
        let content = base64::engine::general_purpose::STANDARD
            .decode(a.content.as_bytes())
            .map_err(|_| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_input",
                    format!("attachments.content of {:?} is not base64", a.name),
                )
            })?;
        attachments.push(Attachment {
            name: a.name,
            media_type: a.media_type,
            content,
        });
    }
    let device = app.devices.session_device(&p).await?.map(|d| ReportDevice {
        id: d.id,
        name: d.name,
        model: d.model,
        os_version: d.os_version,
        app_version: d.app_version,
    });
    let report = app
        .commerce
        .send_feedback(
            p.account,
            NewFeedback {
                kind: f.kind,
                subject: f.subject,
                description: f.description,
                app: f.app,
                attachments,
            },
            device,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(report)))
}

/// The account's reports, newest first, with the operator's answers.
#[utoipa::path(get, path = "/feedback", tag = "feedback", security(("bearer" = [])),
    responses((status = 200, body = Vec<Report>)))]
async fn my_feedback(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<Vec<Report>>, ApiError> {
    Ok(Json(app.commerce.my_feedback(p.account).await?))
}
