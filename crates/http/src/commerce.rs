//! Commerce (CM-1, CM-2, CM-3, CM-4): the credits wallet, storage plans, the theme store and
//! purchases, and the payment provider's webhook. The rules are in docs/design/commerce.md.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mica_commerce::themes::{Theme, ThemeFile, Themes};
use mica_commerce::webhook::Receipt;
use mica_commerce::{Bought, Plan, Purchases, Subscription, Wallet};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, Auth};
use crate::AppState;

/// The largest webhook body read (an event is a few hundred bytes).
const MAX_WEBHOOK_BODY: usize = 64 * 1024;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(wallet))
        .routes(routes!(plans))
        .routes(routes!(subscription, buy_plan, change_subscription))
        .routes(routes!(purchases))
        .routes(routes!(payment_webhook))
        .routes(routes!(themes))
        .routes(routes!(theme))
        .routes(routes!(buy_theme))
        .routes(routes!(theme_package))
        .routes(routes!(theme_preview))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// The `next` of the page before.
    cursor: Option<String>,
    /// Entries per page (1–200, 50 by default).
    limit: Option<usize>,
}

/// The wallet: its balance in credits, and its history (newest first) — every top-up, grant,
/// purchase, renewal and refund, each with the balance it left.
#[utoipa::path(get, path = "/wallet", tag = "commerce", security(("bearer" = [])),
    params(PageQuery),
    responses((status = 200, body = Wallet), (status = 422, body = ErrorBody)))]
async fn wallet(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Wallet>, ApiError> {
    Ok(Json(
        app.commerce
            .wallet(p.account, q.cursor.as_deref(), q.limit.unwrap_or(50))
            .await?,
    ))
}

/// The plans on offer, and the account's own.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlansView {
    pub plans: Vec<Plan>,
    /// The account's plan; absent on the free plan.
    pub current: Option<Subscription>,
    /// The account's storage without a plan, in bytes.
    pub free_quota_bytes: i64,
}

/// The plans on offer, and the account's own.
#[utoipa::path(get, path = "/plans", tag = "commerce", security(("bearer" = [])),
    responses((status = 200, body = PlansView)))]
async fn plans(State(app): State<AppState>, Auth(p): Auth) -> Result<Json<PlansView>, ApiError> {
    Ok(Json(PlansView {
        plans: app.commerce.plans().to_vec(),
        current: app.commerce.subscription(p.account).await?,
        free_quota_bytes: app.cloud.base_quota(p.account).await?,
    }))
}

/// The account's plan (`404 no_plan` on the free plan).
#[utoipa::path(get, path = "/subscription", tag = "commerce", security(("bearer" = [])),
    responses((status = 200, body = Subscription), (status = 404, body = ErrorBody)))]
async fn subscription(
    State(app): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<Subscription>, ApiError> {
    Ok(Json(
        app.commerce
            .subscription(p.account)
            .await?
            .ok_or(mica_commerce::CommerceError::NoPlan)?,
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuyPlan {
    /// The plan's id (from `GET /plans`).
    pub plan: String,
}

/// Buys a period of a plan with credits. The same plan again adds a period after the one paid
/// for; another plan replaces the current one now, and its unused time comes back as credits.
/// The quota changes at once. `402 insufficient_credits` when the balance does not cover it
/// (nothing changes). Send an `Idempotency-Key` header so that a retry buys once.
#[utoipa::path(post, path = "/subscription", tag = "commerce", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe")),
    request_body = BuyPlan,
    responses((status = 201, body = Bought), (status = 200, description = "A retry: the purchase made before", body = Bought),
              (status = 402, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn buy_plan(
    State(app): State<AppState>,
    Auth(p): Auth,
    headers: HeaderMap,
    ApiJson(req): ApiJson<BuyPlan>,
) -> Result<(StatusCode, Json<Bought>), ApiError> {
    let key = idempotency_key(&headers)?;
    let bought = app.commerce.buy_plan(p.account, &req.plan, key).await?;
    let status = if bought.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(bought)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeSubscription {
    /// Renew from the wallet when the period ends (`false`: the plan ends then).
    pub auto_renew: bool,
}

/// Turns the plan's renewal on or off.
#[utoipa::path(patch, path = "/subscription", tag = "commerce", security(("bearer" = [])),
    request_body = ChangeSubscription,
    responses((status = 200, body = Subscription), (status = 404, body = ErrorBody)))]
async fn change_subscription(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<ChangeSubscription>,
) -> Result<Json<Subscription>, ApiError> {
    Ok(Json(
        app.commerce
            .set_auto_renew(p.account, req.auto_renew)
            .await?,
    ))
}

/// What the account bought (plans and their renewals), newest first.
#[utoipa::path(get, path = "/purchases", tag = "commerce", security(("bearer" = [])),
    params(PageQuery),
    responses((status = 200, body = Purchases), (status = 422, body = ErrorBody)))]
async fn purchases(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Purchases>, ApiError> {
    Ok(Json(
        app.commerce
            .purchases(p.account, q.cursor.as_deref(), q.limit.unwrap_or(50))
            .await?,
    ))
}

/// For the payment provider: an account paid for credits. The body is an event
/// `{"id", "type": "credits.paid", "data": {"account", "credits", "memo"?}}`, signed in the
/// `Mica-Signature` header (`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` with the
/// configured `commerce.webhook_secret`). An event is credited once however often it is
/// delivered; other event types are acknowledged and ignored. `401 bad_signature` for a
/// signature that does not match or a time more than five minutes off; `404` when the server
/// has no webhook secret.
#[utoipa::path(post, path = "/commerce/webhook", tag = "commerce",
    params(("Mica-Signature" = String, Header, description = "t=<unix seconds>,v1=<hex HMAC-SHA256>")),
    request_body(content = String, content_type = "application/json"),
    responses((status = 200, body = Receipt), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn payment_webhook(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Receipt>, ApiError> {
    let body = axum::body::to_bytes(body, MAX_WEBHOOK_BODY)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "an event is at most 64 KiB",
            )
        })?;
    let signature = headers.get("mica-signature").and_then(|v| v.to_str().ok());
    Ok(Json(app.commerce.payment_webhook(signature, &body).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ThemeQuery {
    /// Words to look for in the name, author, tags and description (all of them must match).
    q: Option<String>,
    /// The `next` of the page before.
    cursor: Option<String>,
    /// Themes per page (1–200, 50 by default).
    limit: Option<usize>,
}

/// The theme store: themes on offer, and those the account has, by name; `q` searches.
#[utoipa::path(get, path = "/themes", tag = "commerce", security(("bearer" = [])),
    params(ThemeQuery),
    responses((status = 200, body = Themes), (status = 422, body = ErrorBody)))]
async fn themes(
    State(app): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<ThemeQuery>,
) -> Result<Json<Themes>, ApiError> {
    Ok(Json(
        app.commerce
            .themes(
                p.account,
                q.q.as_deref(),
                q.cursor.as_deref(),
                q.limit.unwrap_or(50),
            )
            .await?,
    ))
}

/// One theme.
#[utoipa::path(get, path = "/themes/{id}", tag = "commerce", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = Theme), (status = 404, body = ErrorBody)))]
async fn theme(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> Result<Json<Theme>, ApiError> {
    Ok(Json(app.commerce.theme(p.account, &id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BuyThemeQuery {
    /// The price the person was shown: when the theme's price is another now, nothing is
    /// bought (`409 price_changed`).
    price: Option<i64>,
}

/// Gets a theme for the account: bought once with credits (a free one for nothing), then
/// downloaded on every device of the account. `402 insufficient_credits`, `409 already_owned`,
/// `409 price_changed`. Send an `Idempotency-Key` header so that a retry buys once.
#[utoipa::path(post, path = "/themes/{id}/purchase", tag = "commerce", security(("bearer" = [])),
    params(("id" = String, Path), BuyThemeQuery,
           ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe")),
    responses((status = 201, body = Bought), (status = 200, description = "A retry: the purchase made before", body = Bought),
              (status = 402, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn buy_theme(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<BuyThemeQuery>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Bought>), ApiError> {
    let key = idempotency_key(&headers)?;
    let bought = app.commerce.buy_theme(p.account, &id, key, q.price).await?;
    let status = if bought.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(bought)))
}

/// The hashes an `If-None-Match` header names (without their quotes).
pub(crate) fn known_hash(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|t| t.trim().trim_start_matches("W/").trim_matches('"'))
}

/// Serves a theme's file with its hash as the entity tag (`304` when the asker has it).
pub(crate) fn theme_file(f: ThemeFile, headers: &HeaderMap, attachment: bool) -> Response {
    let etag = format!("\"{}\"", f.sha256);
    let mut resp = if f.unchanged || known_hash(headers) == Some(f.sha256.as_str()) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        f.bytes.into_response()
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&f.media_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    if attachment {
        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{}\"", f.name)) {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
    }
    resp
}

/// Downloads a theme's package (a zip), for an account that has it — or anyone, for a free
/// theme. `403 theme_not_owned` otherwise. `ETag` is the package's SHA-256.
#[utoipa::path(get, path = "/themes/{id}/package", tag = "commerce", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, content_type = "application/zip", body = Vec<u8>), (status = 304),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn theme_package(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let f = app
        .commerce
        .theme_package(p.account, &id, known_hash(&headers))
        .await?;
    Ok(theme_file(f, &headers, true))
}

/// A theme's preview image.
#[utoipa::path(get, path = "/themes/{id}/preview", tag = "commerce", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, content_type = "image/png", body = Vec<u8>), (status = 304),
              (status = 404, body = ErrorBody)))]
async fn theme_preview(
    State(app): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let f = app.commerce.theme_preview(p.account, &id).await?;
    Ok(theme_file(f, &headers, false))
}

/// The `Idempotency-Key` header, if sent.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_input",
                "Idempotency-Key must be visible ASCII",
            )
        }),
    }
}
