//! Backups in the browser: what each device keeps, checking one now, deleting one.

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use mica_cloud::backups::BackupView;
use mica_identity::Principal;
use serde::Deserialize;

use super::{
    check_csrf, human_bytes, human_time, page, Layout, PageError, WebForm, WebPath, WebQuery,
    WebSession,
};
use crate::error::ApiError;
use crate::AppState;

/// A backup, as the page lists it.
pub(crate) struct BackupRow {
    id: String,
    device: String,
    model: String,
    created: String,
    size: String,
    parts: i64,
    state: String,
}

impl From<&BackupView> for BackupRow {
    fn from(b: &BackupView) -> Self {
        let state = match (b.state.as_str(), &b.verified_at, &b.damage) {
            ("verified", Some(at), _) => format!("Checked intact {}", human_time(at)),
            ("damaged", _, Some(d)) => format!("Damaged: {d}"),
            ("damaged", _, None) => "Damaged".into(),
            _ => "Not checked yet".into(),
        };
        BackupRow {
            id: b.id.clone(),
            device: b.device.name.clone(),
            model: b.device.model.clone(),
            created: human_time(&b.created_at),
            size: human_bytes(b.size),
            parts: b.parts,
            state,
        }
    }
}

#[derive(Template)]
#[template(path = "web/backups.html")]
struct BackupsPage {
    layout: Layout,
    kept: usize,
    backups: Vec<BackupRow>,
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    done: Option<String>,
}

async fn backups_page(
    app: &AppState,
    p: &Principal,
    layout: Layout,
) -> Result<BackupsPage, PageError> {
    let list = app.cloud.backups(p.account).await.map_err(ApiError::from)?;
    Ok(BackupsPage {
        layout,
        kept: app.cloud.config().backups_per_device,
        backups: list.iter().map(BackupRow::from).collect(),
    })
}

pub(crate) async fn list(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    WebQuery(q): WebQuery<ListQuery>,
) -> Result<Response, PageError> {
    let mut layout = Layout::for_session(&app, &p, "Backups");
    layout.notice = match q.done.as_deref() {
        Some("verify") => {
            Some("The backup is being read back; its state changes here once checked.".into())
        }
        Some("delete") => {
            Some("The backup is deleted; what no other backup holds is freed.".into())
        }
        _ => None,
    };
    let page_ = backups_page(&app, &p, layout).await?;
    Ok(page(StatusCode::OK, &page_))
}

#[derive(Deserialize)]
pub(crate) struct BackupForm {
    #[serde(default)]
    csrf: String,
    confirm: Option<String>,
}

/// Shows the list again with what went wrong; another account's backup is not found.
async fn backups_error(app: &AppState, p: &Principal, e: ApiError) -> Result<Response, PageError> {
    if e.status == StatusCode::NOT_FOUND {
        return Err(PageError::from(e));
    }
    let mut layout = Layout::for_session(app, p, "Backups");
    layout.error = Some(super::sentence(&e.message));
    let page_ = backups_page(app, p, layout).await?;
    Ok(page(e.status, &page_))
}

pub(crate) async fn verify(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    WebPath(id): WebPath<String>,
    WebForm(form): WebForm<BackupForm>,
) -> Result<Response, PageError> {
    check_csrf(&app, &p, &form.csrf)?;
    match app
        .cloud
        .verify_backup(p.account, &id)
        .await
        .map_err(ApiError::from)
    {
        Ok(_) => Ok(Redirect::to("/web/backups?done=verify").into_response()),
        Err(e) => backups_error(&app, &p, e).await,
    }
}

pub(crate) async fn delete(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    WebPath(id): WebPath<String>,
    WebForm(form): WebForm<BackupForm>,
) -> Result<Response, PageError> {
    check_csrf(&app, &p, &form.csrf)?;
    if let Err(e) = super::ticked(form.confirm.as_deref(), "you want to delete this backup") {
        return backups_error(&app, &p, e).await;
    }
    match app
        .cloud
        .delete_backup(p.account, &id)
        .await
        .map_err(ApiError::from)
    {
        Ok(()) => Ok(Redirect::to("/web/backups?done=delete").into_response()),
        Err(e) => backups_error(&app, &p, e).await,
    }
}
