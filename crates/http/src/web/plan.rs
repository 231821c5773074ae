//! Plan and credits in the browser: storage used, the wallet and its history, the plans on
//! offer with buying one, renewal on or off, and what was bought.

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use mica_identity::Principal;
use serde::Deserialize;

use super::{
    check_csrf, human_bytes, human_time, page, Layout, PageError, WebForm, WebQuery, WebSession,
};
use crate::error::ApiError;
use crate::AppState;

/// History lines shown.
const HISTORY: usize = 20;

pub(crate) struct PlanRow {
    id: String,
    name: String,
    storage: String,
    period: String,
    price: i64,
    current: bool,
    affordable: bool,
}

pub(crate) struct CurrentPlan {
    name: String,
    storage: String,
    until: String,
    auto_renew: bool,
    renewal_price: Option<i64>,
}

pub(crate) struct HistoryRow {
    at: String,
    credits: String,
    balance: i64,
    memo: String,
}

pub(crate) struct PurchaseRow {
    at: String,
    name: String,
    kind: &'static str,
    price: i64,
    credited: i64,
    until: String,
}

#[derive(Template)]
#[template(path = "web/plan.html")]
struct PlanPage {
    layout: Layout,
    used: String,
    quota: String,
    over_quota: bool,
    free: String,
    balance: i64,
    current: Option<CurrentPlan>,
    plans: Vec<PlanRow>,
    history: Vec<HistoryRow>,
    purchases: Vec<PurchaseRow>,
    /// A fresh key per page shown: submitting the same form twice buys once.
    key: String,
}

fn period(days: i64) -> String {
    match days {
        365 => "a year".into(),
        30 | 31 => "a month".into(),
        1 => "a day".into(),
        d if d % 365 == 0 => format!("{} years", d / 365),
        d => format!("{d} days"),
    }
}

async fn plan_page(app: &AppState, p: &Principal, layout: Layout) -> Result<PlanPage, PageError> {
    let usage = app.cloud.usage(p.account).await.map_err(ApiError::from)?;
    let wallet = app
        .commerce
        .wallet(p.account, None, HISTORY)
        .await
        .map_err(ApiError::from)?;
    let sub = app
        .commerce
        .subscription(p.account)
        .await
        .map_err(ApiError::from)?;
    let purchases = app
        .commerce
        .purchases(p.account, None, HISTORY)
        .await
        .map_err(ApiError::from)?;
    Ok(PlanPage {
        layout,
        used: human_bytes(usage.used_bytes),
        quota: human_bytes(usage.quota_bytes),
        over_quota: usage.used_bytes > usage.quota_bytes,
        free: human_bytes(
            app.cloud
                .base_quota(p.account)
                .await
                .map_err(ApiError::from)?,
        ),
        balance: wallet.balance,
        plans: app
            .commerce
            .plans()
            .iter()
            .map(|pl| PlanRow {
                id: pl.id.clone(),
                name: pl.name.clone(),
                storage: human_bytes(pl.quota_bytes),
                period: period(pl.period_days),
                price: pl.price,
                current: sub.as_ref().is_some_and(|s| s.plan == pl.id),
                affordable: wallet.balance >= pl.price,
            })
            .collect(),
        current: sub.map(|s| CurrentPlan {
            name: s.name,
            storage: human_bytes(s.quota_bytes),
            until: human_time(&s.expires_at),
            auto_renew: s.auto_renew,
            renewal_price: s.renewal_price,
        }),
        history: wallet
            .entries
            .iter()
            .map(|e| HistoryRow {
                at: human_time(&e.at),
                credits: format!("{:+}", e.credits),
                balance: e.balance,
                memo: e.memo.clone(),
            })
            .collect(),
        purchases: purchases
            .purchases
            .iter()
            .map(|b| PurchaseRow {
                at: human_time(&b.at),
                name: b.name.clone(),
                kind: if b.kind == "renewal" {
                    "Renewed"
                } else {
                    "Bought"
                },
                price: b.price,
                credited: b.credited,
                until: b.valid_until.as_deref().map(human_time).unwrap_or_default(),
            })
            .collect(),
        key: format!("web_{}", mica_core::crypto::random_token_string(16)),
    })
}

#[derive(Deserialize)]
pub(crate) struct PlanQuery {
    done: Option<String>,
}

pub(crate) async fn show(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    WebQuery(q): WebQuery<PlanQuery>,
) -> Result<Response, PageError> {
    let mut layout = Layout::for_session(&app, &p, "Plan and credits");
    layout.notice = match q.done.as_deref() {
        Some("bought") => Some("Done: your new storage is ready on every device.".into()),
        Some("renew-on") => Some("Your plan will renew from your credits.".into()),
        Some("renew-off") => {
            Some("Your plan will not renew; it ends at the end of the period paid for.".into())
        }
        _ => None,
    };
    Ok(page(StatusCode::OK, &plan_page(&app, &p, layout).await?))
}

async fn plan_error(app: &AppState, p: &Principal, e: ApiError) -> Result<Response, PageError> {
    let mut layout = Layout::for_session(app, p, "Plan and credits");
    layout.error = Some(super::sentence(&e.message));
    Ok(page(e.status, &plan_page(app, p, layout).await?))
}

#[derive(Deserialize)]
pub(crate) struct BuyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    plan: String,
    #[serde(default)]
    key: String,
}

pub(crate) async fn buy(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    WebForm(form): WebForm<BuyForm>,
) -> Result<Response, PageError> {
    check_csrf(&app, &p, &form.csrf)?;
    let key = Some(form.key.as_str()).filter(|k| !k.is_empty());
    match app.commerce.buy_plan(p.account, &form.plan, key).await {
        Ok(_) => Ok(Redirect::to("/web/plan?done=bought").into_response()),
        Err(e) => plan_error(&app, &p, ApiError::from(e)).await,
    }
}

#[derive(Deserialize)]
pub(crate) struct RenewalForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    renew: String,
}

pub(crate) async fn renewal(
    State(app): State<AppState>,
    WebSession(p): WebSession,
    WebForm(form): WebForm<RenewalForm>,
) -> Result<Response, PageError> {
    check_csrf(&app, &p, &form.csrf)?;
    let on = match form.renew.as_str() {
        "on" => true,
        "off" => false,
        _ => {
            return plan_error(
                &app,
                &p,
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_input",
                    "choose whether the plan renews",
                ),
            )
            .await
        }
    };
    match app.commerce.set_auto_renew(p.account, on).await {
        // What the plan says now, whatever another device did meanwhile.
        Ok(sub) => Ok(Redirect::to(if sub.auto_renew {
            "/web/plan?done=renew-on"
        } else {
            "/web/plan?done=renew-off"
        })
        .into_response()),
        Err(e) => plan_error(&app, &p, ApiError::from(e)).await,
    }
}
