//! The theme store in the browser: browse and search themes, get one (bought once with
//! credits, or free), download it.

use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use mica_commerce::themes::Theme;
use mica_identity::Principal;
use serde::Deserialize;

use super::{
    check_csrf, human_bytes, page, percent_encode, Layout, PageError, WebForm, WebPath, WebQuery,
    WebSession,
};
use crate::error::ApiError;
use crate::AppState;

pub(crate) struct ThemeRow {
    id: String,
    name: String,
    author: String,
    description: String,
    tags: String,
    price: i64,
    size: String,
    preview: bool,
    owned: bool,
    withdrawn: bool,
    free: bool,
}

impl From<&Theme> for ThemeRow {
    fn from(t: &Theme) -> Self {
        ThemeRow {
            id: t.id.clone(),
            name: t.name.clone(),
            author: t.author.clone(),
            description: t.description.clone(),
            tags: t.tags.join(", "),
            price: t.price,
            size: human_bytes(t.size),
            preview: t.preview,
            owned: t.owned,
            withdrawn: t.withdrawn,
            free: t.price == 0,
        }
    }
}

#[derive(Template)]
#[template(path = "web/themes.html")]
struct ThemesPage {
    layout: Layout,
    q: String,
    balance: i64,
    themes: Vec<ThemeRow>,
    more: Option<String>,
    /// A fresh key per page shown: submitting the same form twice buys once.
    key: String,
}

#[derive(Deserialize)]
pub(crate) struct ThemesQuery {
    q: Option<String>,
    cursor: Option<String>,
    done: Option<String>,
}

async fn themes_page(
    app: &AppState,
    p: &Principal,
    q: Option<&str>,
    cursor: Option<&str>,
    layout: Layout,
) -> Result<ThemesPage, PageError> {
    let list = app
        .commerce
        .themes(p.account, q, cursor, 50)
        .await
        .map_err(ApiError::from)?;
    let balance = app
        .commerce
        .wallet(p.account, None, 1)
        .await
        .map_err(ApiError::from)?
        .balance;
    let q = q.unwrap_or("").to_owned();
    Ok(ThemesPage {
        layout,
        balance,
        themes: list.themes.iter().map(ThemeRow::from).collect(),
        more: list.next.map(|n| {
            format!(
                "/web/themes?q={}&cursor={}",
                percent_encode(&q),
                percent_encode(&n)
            )
        }),
        q,
        key: format!("web_{}", mica_core::crypto::random_token_string(16)),
    })
}

pub(crate) async fn list(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    WebQuery(q): WebQuery<ThemesQuery>,
) -> Result<Response, PageError> {
    let mut layout = Layout::for_session(&app, &p, "Themes");
    if q.done.as_deref() == Some("got") {
        layout.notice = Some("It is yours, on every device of your account.".into());
    }
    let page_ = themes_page(&app, &p, q.q.as_deref(), q.cursor.as_deref(), layout).await?;
    Ok(page(StatusCode::OK, &page_))
}

#[derive(Deserialize)]
pub(crate) struct GetForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    key: String,
    /// The price the page showed.
    price: Option<i64>,
    /// The search the page showed, to show again.
    #[serde(default)]
    q: String,
}

pub(crate) async fn get_theme(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    WebPath(id): WebPath<String>,
    WebForm(form): WebForm<GetForm>,
) -> Result<Response, PageError> {
    check_csrf(&app, &p, &form.csrf)?;
    let key = Some(form.key.as_str()).filter(|k| !k.is_empty());
    match app
        .commerce
        .buy_theme(p.account, &id, key, form.price)
        .await
    {
        Ok(_) => Ok(Redirect::to("/web/themes?done=got").into_response()),
        Err(e) => {
            let e = ApiError::from(e);
            if e.status == StatusCode::NOT_FOUND {
                return Err(PageError::from(e));
            }
            let mut layout = Layout::for_session(&app, &p, "Themes");
            layout.error = Some(super::sentence(&e.message));
            let q = Some(form.q.as_str()).filter(|q| !q.is_empty());
            Ok(page(
                e.status,
                &themes_page(&app, &p, q, None, layout).await?,
            ))
        }
    }
}

pub(crate) async fn package(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    WebPath(id): WebPath<String>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let f = app
        .commerce
        .theme_package(p.account, &id, crate::commerce::known_hash(&headers))
        .await
        .map_err(ApiError::from)?;
    Ok(crate::commerce::theme_file(f, &headers, true))
}

pub(crate) async fn preview(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    WebPath(id): WebPath<String>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let f = app
        .commerce
        .theme_preview(p.account, &id)
        .await
        .map_err(ApiError::from)?;
    Ok(crate::commerce::theme_file(f, &headers, false))
}
