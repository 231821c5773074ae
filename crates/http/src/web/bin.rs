//! The recycle bin in the browser: what was deleted, from every device, with when it goes for
//! good; put back one entry, or delete it for good.

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use mica_cloud::category::Category;
use mica_cloud::BinEntry;
use mica_identity::Principal;
use serde::Deserialize;

use super::{
    check_csrf, human_bytes, human_time, page, percent_encode, Layout, PageError, WebForm, WebPath,
    WebQuery, WebSession,
};
use crate::error::ApiError;
use crate::AppState;

/// Entries on one page.
const PAGE: usize = 50;

/// What a person calls an entry of each category.
fn what(c: Category) -> &'static str {
    match c {
        Category::Contacts => "Contact",
        Category::Calendar => "Event",
        Category::Notes => "Note",
        Category::Messages => "Message",
        Category::Calls => "Call",
        Category::Bookmarks => "Bookmark",
        Category::BrowserHistory => "Browsing history",
        Category::Wifi => "Wi-Fi network",
        Category::Settings => "App settings",
        Category::Gallery => "Photo or video",
        Category::Recordings => "Recording",
        Category::Drive => "File or folder",
    }
}

/// An entry, as the page lists it.
pub(crate) struct BinRow {
    id: String,
    what: &'static str,
    summary: String,
    size: String,
    deleted: String,
    expires: String,
}

impl From<&BinEntry> for BinRow {
    fn from(e: &BinEntry) -> Self {
        BinRow {
            id: e.id.clone(),
            what: what(e.category),
            summary: e.summary.chars().take(120).collect(),
            size: human_bytes(e.size),
            deleted: human_time(&e.deleted_at.to_rfc3339()),
            expires: human_time(&e.expires_at.to_rfc3339()),
        }
    }
}

#[derive(Template)]
#[template(path = "web/bin.html")]
struct BinPage {
    layout: Layout,
    entries: Vec<BinRow>,
    /// The address of the next (older) page, if any.
    older: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct BinQuery {
    cursor: Option<String>,
    done: Option<String>,
}

async fn bin_page(
    app: &AppState,
    p: &Principal,
    cursor: Option<&str>,
    layout: Layout,
) -> Result<BinPage, PageError> {
    let page_ = app
        .cloud
        .recycle_bin(p.account, None, cursor, PAGE)
        .await
        .map_err(ApiError::from)?;
    Ok(BinPage {
        layout,
        entries: page_.entries.iter().map(BinRow::from).collect(),
        older: page_
            .next
            .map(|n| format!("/web/bin?cursor={}", percent_encode(&n))),
    })
}

pub(crate) async fn list(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    WebQuery(q): WebQuery<BinQuery>,
) -> Result<Response, PageError> {
    let mut layout = Layout::for_session(&app, &p, "Recycle bin");
    layout.notice = match q.done.as_deref() {
        Some("restore") => Some("Put back where it was, on every device.".into()),
        Some("purge") => Some("Deleted for good; its space is free.".into()),
        _ => None,
    };
    let page_ = bin_page(&app, &p, q.cursor.as_deref(), layout).await?;
    Ok(page(StatusCode::OK, &page_))
}

#[derive(Deserialize)]
pub(crate) struct EntryForm {
    #[serde(default)]
    csrf: String,
    confirm: Option<String>,
}

/// Shows the bin again with what went wrong; another account's entry is not found.
async fn bin_error(app: &AppState, p: &Principal, e: ApiError) -> Result<Response, PageError> {
    if e.status == StatusCode::NOT_FOUND {
        return Err(PageError::from(e));
    }
    let mut layout = Layout::for_session(app, p, "Recycle bin");
    layout.error = Some(super::sentence(&e.message));
    let page_ = bin_page(app, p, None, layout).await?;
    Ok(page(e.status, &page_))
}

pub(crate) async fn restore(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    WebPath(id): WebPath<String>,
    WebForm(form): WebForm<EntryForm>,
) -> Result<Response, PageError> {
    check_csrf(&app, &p, &form.csrf)?;
    match app
        .cloud
        .restore(p.account, &id)
        .await
        .map_err(ApiError::from)
    {
        Ok(_) => Ok(Redirect::to("/web/bin?done=restore").into_response()),
        Err(e) => bin_error(&app, &p, e).await,
    }
}

pub(crate) async fn purge(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    WebPath(id): WebPath<String>,
    WebForm(form): WebForm<EntryForm>,
) -> Result<Response, PageError> {
    check_csrf(&app, &p, &form.csrf)?;
    if let Err(e) = super::ticked(form.confirm.as_deref(), "this entry goes for good") {
        return bin_error(&app, &p, e).await;
    }
    match app
        .cloud
        .purge(p.account, &id)
        .await
        .map_err(ApiError::from)
    {
        Ok(()) => Ok(Redirect::to("/web/bin?done=purge").into_response()),
        Err(e) => bin_error(&app, &p, e).await,
    }
}
