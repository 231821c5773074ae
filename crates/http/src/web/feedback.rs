//! Feedback in the browser: send the operator a bug report or an idea, and read the answers.
//! (Logs are attached from a device: `mica agent feedback --attach`.)

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use mica_commerce::feedback::NewFeedback;
use mica_identity::Principal;
use serde::Deserialize;

use super::{check_csrf, human_time, page, Layout, PageError, WebForm, WebQuery, WebSession};
use crate::error::ApiError;
use crate::AppState;

pub(crate) struct ReportRow {
    kind: &'static str,
    subject: String,
    sent: String,
    closed: bool,
    reply: Option<String>,
    attachments: usize,
}

#[derive(Template)]
#[template(path = "web/feedback.html")]
struct FeedbackPage {
    layout: Layout,
    reports: Vec<ReportRow>,
    /// What was typed, shown again when it was refused.
    kind: String,
    subject: String,
    description: String,
}

async fn feedback_page(
    app: &AppState,
    p: &Principal,
    layout: Layout,
    typed: Option<&SendForm>,
) -> Result<FeedbackPage, PageError> {
    let reports = app
        .commerce
        .my_feedback(p.account)
        .await
        .map_err(ApiError::from)?;
    Ok(FeedbackPage {
        layout,
        reports: reports
            .iter()
            .map(|r| ReportRow {
                kind: match r.kind.as_str() {
                    "bug" => "Problem",
                    "idea" => "Idea",
                    _ => "Other",
                },
                subject: r.subject.clone(),
                sent: human_time(&r.created_at),
                closed: r.state == "closed",
                reply: r.reply.clone(),
                attachments: r.attachments.len(),
            })
            .collect(),
        kind: typed.map_or_else(|| "bug".to_owned(), |t| t.kind.clone()),
        subject: typed.map(|t| t.subject.clone()).unwrap_or_default(),
        description: typed.map(|t| t.description.clone()).unwrap_or_default(),
    })
}

#[derive(Deserialize)]
pub(crate) struct FeedbackQuery {
    done: Option<String>,
}

pub(crate) async fn show(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    WebQuery(q): WebQuery<FeedbackQuery>,
) -> Result<Response, PageError> {
    let mut layout = Layout::for_session(&app, &p, "Feedback");
    if q.done.as_deref() == Some("sent") {
        layout.notice = Some("Sent. The answer comes by mail and shows here.".into());
    }
    Ok(page(
        StatusCode::OK,
        &feedback_page(&app, &p, layout, None).await?,
    ))
}

#[derive(Deserialize)]
pub(crate) struct SendForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    description: String,
}

pub(crate) async fn send(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    WebForm(form): WebForm<SendForm>,
) -> Result<Response, PageError> {
    check_csrf(&app, &p, &form.csrf)?;
    let sent = app
        .commerce
        .send_feedback(
            p.account,
            NewFeedback {
                kind: form.kind.clone(),
                subject: form.subject.clone(),
                description: form.description.clone(),
                app: Some("Mica web".into()),
                attachments: Vec::new(),
            },
            None,
        )
        .await;
    match sent {
        Ok(_) => Ok(Redirect::to("/web/feedback?done=sent").into_response()),
        Err(e) => {
            let e = ApiError::from(e);
            let mut layout = Layout::for_session(&app, &p, "Feedback");
            layout.error = Some(super::sentence(&e.message));
            Ok(page(
                e.status,
                &feedback_page(&app, &p, layout, Some(&form)).await?,
            ))
        }
    }
}
