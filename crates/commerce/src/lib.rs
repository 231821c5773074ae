//! Commerce: the credits wallet (CM-1), storage plans bought with credits (CM-2), the
//! purchase history (CM-4), the theme store (CM-3, `themes.rs`) and feedback reports to the
//! operator (CM-5, `feedback.rs`). The protocol and its rules are in docs/design/commerce.md.
//!
//! - Credits come from the operator (`mica admin account credits`) or from a payment
//!   provider's webhook, signed with a shared secret ([`Commerce::payment_webhook`]); each
//!   has a reference unique on the server, so a delivery repeated is counted once.
//! - A plan raises the account's quota (the larger of the operator's and the plan's) and,
//!   when premium, keeps the recycle bin 60 days. Buying another plan replaces it at once and
//!   gives back the unused time of the old one in credits; buying the same plan again adds a
//!   period. At its end a plan renews from the wallet, or ends if renewal was turned off, the
//!   plan is no longer offered, or the credits are short — the owner was reminded a week
//!   before. An account over its quota afterwards keeps everything, but nothing new can be
//!   stored until it frees space or buys a plan again.
//!
//! Like the other domains, this crate never knows which database it talks to, and never
//! imports axum.

mod error;
mod export;
pub mod feedback;
pub mod themes;
pub mod webhook;

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mica_core::crypto::Keys;
use mica_core::notices::OwnerNotices;
use mica_core::{AccountId, Clock, Timestamp};
use mica_store::{
    BuyOutcome, Credit, CreditOutcome, LedgerRow, NewPurchase, OperatorEntry, PlanChange,
    PurchaseRow, RenewOutcome, Renewal, Store, SubscriptionRow,
};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use error::CommerceError;

type Result<T, E = CommerceError> = std::result::Result<T, E>;

const DAY: Duration = Duration::from_secs(86_400);

/// How far ahead a plan may be paid for.
const MAX_AHEAD: Duration = Duration::from_secs(10 * 366 * 86_400);

/// The most credits one change may move (and so far from `i64`'s end that no sum of them
/// overflows): a million million.
pub const MAX_CREDITS: i64 = 1_000_000_000_000;

/// A plan the operator offers.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Stable id, e.g. `plus-200`.
    pub id: String,
    /// What people see.
    pub name: String,
    /// The storage the plan gives, in bytes.
    pub quota_bytes: i64,
    /// How long one period lasts, in days.
    pub period_days: i64,
    /// The price of a period, in credits.
    pub price: i64,
    /// Premium perks: the recycle bin keeps deleted things 60 days instead of 30.
    #[serde(default = "yes")]
    pub premium: bool,
}

fn yes() -> bool {
    true
}

/// Tunables (`[commerce]` in the configuration file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommerceConfig {
    /// The plans on offer. Removing one lets those who have it keep it to the end of the
    /// period they paid for; it then ends rather than renews.
    pub plans: Vec<Plan>,
    /// The secret a payment provider signs its webhooks with (`Mica-Signature`). Unset: the
    /// webhook is off and only the operator adds credits.
    #[serde(skip_serializing)]
    pub webhook_secret: Option<SecretString>,
    /// How far a webhook's signed time may be from the server's, in seconds.
    pub webhook_tolerance_secs: u64,
    /// How many days before a plan renews (or ends) its owner is told.
    pub reminder_days: u64,
}

impl Default for CommerceConfig {
    fn default() -> Self {
        const GB: i64 = 1_000_000_000;
        let plan = |id: &str, name: &str, gb: i64, days: i64, price: i64| Plan {
            id: id.into(),
            name: name.into(),
            quota_bytes: gb * GB,
            period_days: days,
            price,
            premium: true,
        };
        CommerceConfig {
            plans: vec![
                plan("plus-50-month", "Mica+ 50 GB, monthly", 50, 30, 10),
                plan("plus-50", "Mica+ 50 GB", 50, 365, 100),
                plan("plus-200", "Mica+ 200 GB", 200, 365, 300),
                plan("plus-2000", "Mica+ 2 TB", 2000, 365, 1000),
            ],
            webhook_secret: None,
            webhook_tolerance_secs: 300,
            reminder_days: 7,
        }
    }
}

impl CommerceConfig {
    /// Refuses a catalogue that would misbehave, naming the plan.
    pub fn check(&self) -> Result<(), String> {
        let mut ids = HashSet::new();
        for p in &self.plans {
            if !(1..=64).contains(&p.id.len())
                || !p
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "commerce.plans: the id {:?} must be 1 to 64 letters, digits, '-' or '_'",
                    p.id
                ));
            }
            if !ids.insert(p.id.as_str()) {
                return Err(format!("commerce.plans: the id {:?} is used twice", p.id));
            }
            if p.name.trim().is_empty() || p.name.chars().any(char::is_control) {
                return Err(format!(
                    "commerce.plans.{}: the name must be plain text",
                    p.id
                ));
            }
            if !(1..=1 << 53).contains(&p.quota_bytes) {
                return Err(format!(
                    "commerce.plans.{}: quota_bytes must be from 1 to 2^53",
                    p.id
                ));
            }
            if !(1..=3660).contains(&p.period_days) {
                return Err(format!(
                    "commerce.plans.{}: period_days must be from 1 to 3660",
                    p.id
                ));
            }
            if !(0..=MAX_CREDITS).contains(&p.price) {
                return Err(format!(
                    "commerce.plans.{}: price must be from 0 to {MAX_CREDITS} credits",
                    p.id
                ));
            }
        }
        if let Some(secret) = &self.webhook_secret {
            use secrecy::ExposeSecret;
            let secret = secret.expose_secret();
            if secret.len() < 32 || secret.contains(char::is_whitespace) {
                return Err(
                    "commerce.webhook_secret must be at least 32 characters, without \
                     spaces (anyone who guesses it can add credits)"
                        .into(),
                );
            }
        }
        if self.webhook_tolerance_secs == 0 || self.webhook_tolerance_secs > 3600 {
            return Err("commerce.webhook_tolerance_secs must be from 1 to 3600".into());
        }
        if self.reminder_days == 0 || self.reminder_days > 60 {
            return Err("commerce.reminder_days must be from 1 to 60".into());
        }
        Ok(())
    }
}

/// One line of the wallet's history.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LedgerEntry {
    /// When (RFC 3339).
    pub at: String,
    /// Credits added (> 0) or spent (< 0).
    pub credits: i64,
    /// The balance afterwards.
    pub balance: i64,
    /// `top_up`, `grant`, `purchase`, `renewal` or `refund`.
    pub kind: String,
    pub memo: String,
}

impl From<&LedgerRow> for LedgerEntry {
    fn from(r: &LedgerRow) -> Self {
        LedgerEntry {
            at: r.at.to_rfc3339(),
            credits: r.delta,
            balance: r.balance_after,
            kind: r.kind.clone(),
            memo: r.memo.clone(),
        }
    }
}

/// The wallet: its balance and a page of its history, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Wallet {
    pub balance: i64,
    pub entries: Vec<LedgerEntry>,
    /// Pass as `cursor` for the next (older) page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// The account's plan.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Subscription {
    pub plan: String,
    pub name: String,
    pub quota_bytes: i64,
    pub premium: bool,
    /// When it was first bought (RFC 3339).
    pub started_at: String,
    /// The end of the period paid for (RFC 3339).
    pub expires_at: String,
    /// Whether it renews from the wallet at `expires_at`.
    pub auto_renew: bool,
    /// What the next period costs (absent when the plan is no longer offered: it ends).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewal_price: Option<i64>,
}

/// A purchase.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Purchase {
    pub id: String,
    /// When (RFC 3339).
    pub at: String,
    /// `plan` (bought) or `renewal`.
    pub kind: String,
    pub product: String,
    pub name: String,
    /// Credits spent.
    pub price: i64,
    /// Credits given back for the unused time of the plan it replaced.
    pub credited: i64,
    /// The end of the period it paid for (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<String>,
}

impl From<&PurchaseRow> for Purchase {
    fn from(r: &PurchaseRow) -> Self {
        Purchase {
            id: r.id.clone(),
            at: r.at.to_rfc3339(),
            kind: r.kind.clone(),
            product: r.product_id.clone(),
            name: r.product_name.clone(),
            price: r.price,
            credited: r.credited,
            valid_until: r.valid_until.map(Timestamp::to_rfc3339),
        }
    }
}

/// A page of purchases, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Purchases {
    pub purchases: Vec<Purchase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// What buying a plan did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Bought {
    pub purchase: Purchase,
    pub subscription: Option<Subscription>,
    pub balance: i64,
    /// True when this answers a retry of a purchase made before (same `Idempotency-Key`).
    pub replayed: bool,
}

/// What the maintenance did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Maintenance {
    pub renewed: u64,
    pub ended: u64,
    pub reminded: u64,
}

struct Inner {
    store: Store,
    keys: Arc<Keys>,
    clock: Arc<dyn Clock>,
    cfg: CommerceConfig,
    notices: OnceLock<Arc<dyn OwnerNotices>>,
}

/// The commerce service. Cheap to clone.
#[derive(Clone)]
pub struct Commerce(Arc<Inner>);

/// Credits given back for the unused part of a period: its price times the share of the
/// period left, rounded down (never more than the price, never below zero).
pub fn unused_credit(s: &SubscriptionRow, now: Timestamp) -> i64 {
    let whole = s.expires_at.millis() - s.period_start.millis();
    let left = s.expires_at.millis() - now.millis();
    if whole <= 0 || left <= 0 {
        return 0;
    }
    let left = left.min(whole);
    i64::try_from(i128::from(s.price) * i128::from(left) / i128::from(whole)).unwrap_or(0)
}

fn period(days: i64) -> Duration {
    DAY * u32::try_from(days).unwrap_or(u32::MAX)
}

/// A page cursor of the ledger: the id of the last row shown.
fn ledger_cursor(c: &str) -> Result<i64> {
    c.strip_prefix("l")
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|n| *n > 0)
        .ok_or(CommerceError::Invalid {
            field: "cursor",
            message: "not a cursor this server gave: pass the `next` of the page before".into(),
        })
}

/// A page cursor of the purchases: the number of the last one shown.
fn purchase_cursor(c: &str) -> Result<i64> {
    c.strip_prefix("p")
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|n| *n > 0)
        .ok_or(CommerceError::Invalid {
            field: "cursor",
            message: "not a cursor this server gave: pass the `next` of the page before".into(),
        })
}

/// Checks an idempotency key: 1 to 255 visible ASCII characters.
fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CommerceError::Invalid {
            field: "Idempotency-Key",
            message: "an idempotency key is 1 to 255 visible ASCII characters".into(),
        });
    }
    Ok(())
}

impl Commerce {
    pub fn new(store: Store, keys: Arc<Keys>, clock: Arc<dyn Clock>, cfg: CommerceConfig) -> Self {
        Commerce(Arc::new(Inner {
            store,
            keys,
            clock,
            cfg,
            notices: OnceLock::new(),
        }))
    }

    /// How the owner is told of renewals and ends (set once at start-up).
    pub fn set_owner_notices(&self, n: Arc<dyn OwnerNotices>) {
        let _ = self.0.notices.set(n);
    }

    fn now(&self) -> Timestamp {
        self.0.clock.now()
    }

    fn store(&self) -> &Store {
        &self.0.store
    }

    pub fn config(&self) -> &CommerceConfig {
        &self.0.cfg
    }

    /// The plans on offer.
    pub fn plans(&self) -> &[Plan] {
        &self.0.cfg.plans
    }

    fn plan(&self, id: &str) -> Option<&Plan> {
        self.0.cfg.plans.iter().find(|p| p.id == id)
    }

    fn view(&self, s: &SubscriptionRow) -> Subscription {
        Subscription {
            plan: s.plan_id.clone(),
            name: s.plan_name.clone(),
            quota_bytes: s.quota_bytes,
            premium: s.premium,
            started_at: s.started_at.to_rfc3339(),
            expires_at: s.expires_at.to_rfc3339(),
            auto_renew: s.renewal_off_at.is_none(),
            renewal_price: self.plan(&s.plan_id).map(|p| p.price),
        }
    }

    /// The wallet's balance and a page of its history.
    pub async fn wallet(
        &self,
        account: AccountId,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Wallet> {
        let before = cursor.map(ledger_cursor).transpose()?;
        let limit = limit.clamp(1, 200);
        let balance = self.store().balance(account).await?;
        let mut rows = self
            .store()
            .ledger(account, before, i64::try_from(limit + 1).unwrap_or(201))
            .await?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        Ok(Wallet {
            balance,
            next: more
                .then(|| rows.last().map(|r| format!("l{}", r.id)))
                .flatten(),
            entries: rows.iter().map(LedgerEntry::from).collect(),
        })
    }

    pub async fn subscription(&self, account: AccountId) -> Result<Option<Subscription>> {
        Ok(self
            .store()
            .subscription(account)
            .await?
            .map(|s| self.view(&s)))
    }

    /// A page of what the account bought.
    pub async fn purchases(
        &self,
        account: AccountId,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Purchases> {
        let before = cursor.map(purchase_cursor).transpose()?;
        let limit = limit.clamp(1, 200);
        let mut rows = self
            .store()
            .purchases(account, before, i64::try_from(limit + 1).unwrap_or(201))
            .await?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        Ok(Purchases {
            next: more
                .then(|| rows.last().map(|r| format!("p{}", r.seq)))
                .flatten(),
            purchases: rows.iter().map(Purchase::from).collect(),
        })
    }

    /// Buys a period of `plan_id` with credits. The same plan again adds a period after the
    /// one paid for; another plan replaces it now, and the unused time of the old one comes
    /// back as credits. A retry with the same `idempotency_key` answers the first purchase.
    pub async fn buy_plan(
        &self,
        account: AccountId,
        plan_id: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Bought> {
        if let Some(k) = idempotency_key {
            check_key(k)?;
        }
        let plan = self
            .plan(plan_id)
            .cloned()
            .ok_or_else(|| CommerceError::UnknownPlan(plan_id.chars().take(64).collect()))?;
        let now = self.now();
        if let Some(c) = self.store().subscription(account).await? {
            if c.plan_id == plan.id
                && c.expires_at.plus(period(plan.period_days)) > now.plus(MAX_AHEAD)
            {
                return Err(CommerceError::Invalid {
                    field: "plan",
                    message: format!(
                        "your plan is paid until {}: a plan is bought at most ten years ahead",
                        day(c.expires_at)
                    ),
                });
            }
        }
        let id = format!("pur_{}", mica_core::crypto::random_token_string(12));
        let outcome = self
            .store()
            .buy_plan(
                account,
                &NewPurchase {
                    id: &id,
                    idempotency_key,
                    product_id: &plan.id,
                },
                |current| plan_change(&plan, current, now),
                now,
            )
            .await?;
        match outcome {
            BuyOutcome::Bought {
                purchase,
                subscription,
                balance,
            } => {
                tracing::info!(%account, plan = %plan.id, price = purchase.price, credited = purchase.credited, "plan bought");
                Ok(Bought {
                    purchase: Purchase::from(&purchase),
                    subscription: Some(self.view(&subscription)),
                    balance,
                    replayed: false,
                })
            }
            BuyOutcome::Replayed(purchase) => Ok(Bought {
                purchase: Purchase::from(&purchase),
                subscription: self.subscription(account).await?,
                balance: self.store().balance(account).await?,
                replayed: true,
            }),
            BuyOutcome::KeyReused => Err(CommerceError::KeyReused),
            BuyOutcome::Insufficient { balance, needed } => {
                Err(CommerceError::InsufficientCredits { balance, needed })
            }
        }
    }

    /// Turns the plan's renewal on or off.
    pub async fn set_auto_renew(&self, account: AccountId, on: bool) -> Result<Subscription> {
        let s = self
            .store()
            .set_renewal(account, on, self.now())
            .await?
            .ok_or(CommerceError::NoPlan)?;
        Ok(self.view(&s))
    }

    /// The operator adds (or, negative, takes back) credits, recorded in the operator's log.
    pub async fn adjust_credits(
        &self,
        account: AccountId,
        credits: i64,
        operator: &str,
        reason: &str,
    ) -> Result<LedgerEntry> {
        if credits == 0 || !(-MAX_CREDITS..=MAX_CREDITS).contains(&credits) {
            return Err(CommerceError::Invalid {
                field: "credits",
                message: format!("give a number of credits other than 0, up to {MAX_CREDITS}"),
            });
        }
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > 500 || reason.chars().any(char::is_control)
        {
            return Err(CommerceError::Invalid {
                field: "reason",
                message: "a reason of one line, up to 500 characters".into(),
            });
        }
        let reference = format!("grant:{}", mica_core::crypto::random_token_string(12));
        let detail = format!("{credits:+} credits: {reason}");
        let entry = OperatorEntry::on_account(operator, "credits_adjusted", account, &detail);
        let memo = if credits > 0 {
            format!("From the operator: {reason}")
        } else {
            format!("Taken back by the operator: {reason}")
        };
        let outcome = self
            .store()
            .credit(
                account,
                &Credit {
                    delta: credits,
                    kind: "grant",
                    reference: &reference,
                    memo: &memo,
                },
                Some(&entry),
                self.now(),
            )
            .await?;
        match outcome {
            CreditOutcome::Applied(row) | CreditOutcome::Duplicate(row) => {
                Ok(LedgerEntry::from(&row))
            }
            CreditOutcome::Insufficient { balance } => Err(CommerceError::InsufficientCredits {
                balance,
                needed: -credits,
            }),
            CreditOutcome::ReferenceTaken => Err(CommerceError::EventReused),
        }
    }

    /// A payment provider says credits were paid for: checks the signature and the time,
    /// then credits the account once per event id however often it is delivered.
    pub async fn payment_webhook(
        &self,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<webhook::Receipt> {
        let secret = self
            .0
            .cfg
            .webhook_secret
            .as_ref()
            .ok_or(CommerceError::WebhookOff)?;
        let now = self.now();
        webhook::verify(
            secret,
            signature.ok_or(CommerceError::BadSignature("no Mica-Signature header"))?,
            body,
            now,
            Duration::from_secs(self.0.cfg.webhook_tolerance_secs),
        )?;
        let event = webhook::Event::parse(body)?;
        let Some(topup) = event.top_up()? else {
            return Ok(webhook::Receipt {
                event: event.id,
                applied: false,
                duplicate: false,
            });
        };
        let reference = format!("top_up:{}", event.id);
        let memo = topup
            .memo
            .clone()
            .unwrap_or_else(|| format!("Bought {} credits", topup.credits));
        let outcome = self
            .store()
            .credit(
                topup.account,
                &Credit {
                    delta: topup.credits,
                    kind: "top_up",
                    reference: &reference,
                    memo: &memo,
                },
                None,
                now,
            )
            .await
            .map_err(|e| match e {
                mica_store::StoreError::Gone => CommerceError::UnknownAccount,
                e => CommerceError::Store(e),
            })?;
        match outcome {
            CreditOutcome::Applied(row) => {
                tracing::info!(account = %topup.account, credits = row.delta, event = %event.id, "credits topped up");
                Ok(webhook::Receipt {
                    event: event.id,
                    applied: true,
                    duplicate: false,
                })
            }
            CreditOutcome::Duplicate(row) if row.delta == topup.credits => Ok(webhook::Receipt {
                event: event.id,
                applied: true,
                duplicate: true,
            }),
            CreditOutcome::Duplicate(_) | CreditOutcome::ReferenceTaken => {
                Err(CommerceError::EventReused)
            }
            CreditOutcome::Insufficient { .. } => Err(CommerceError::Invalid {
                field: "credits",
                message: "a top-up adds credits".into(),
            }),
        }
    }

    /// Renews or ends the plans that are due, and reminds owners of the ones coming up. Run
    /// with the other maintenance, every few minutes; safe on several nodes at once.
    pub async fn maintenance(&self) -> Result<Maintenance> {
        let mut done = Maintenance::default();
        let now = self.now();
        let horizon = now.plus(DAY * u32::try_from(self.0.cfg.reminder_days).unwrap_or(7));
        loop {
            let due = self
                .store()
                .claim_renewal_reminders(now, horizon, 100)
                .await?;
            if due.is_empty() {
                break;
            }
            for (account, s) in due {
                self.remind(account, &s).await;
                done.reminded += 1;
            }
        }
        loop {
            let due = self.store().due_subscriptions(self.now(), 100).await?;
            if due.is_empty() {
                break;
            }
            let mut progress = false;
            for account in due {
                // One account's trouble does not hold back the others' renewals.
                match self.renew(account).await {
                    Ok(RenewOutcome::NotDue) => {}
                    Ok(RenewOutcome::Renewed { .. }) => {
                        done.renewed += 1;
                        progress = true;
                    }
                    Ok(RenewOutcome::Ended { .. }) => {
                        done.ended += 1;
                        progress = true;
                    }
                    Err(e) => {
                        tracing::warn!(%account, error = %e, "renewing a plan failed");
                    }
                }
            }
            if !progress {
                break;
            }
        }
        if done != Maintenance::default() {
            tracing::info!(?done, "plans renewed and ended");
        }
        Ok(done)
    }

    async fn renew(&self, account: AccountId) -> Result<RenewOutcome> {
        let now = self.now();
        let purchase_id = format!("pur_{}", mica_core::crypto::random_token_string(12));
        let outcome = self
            .store()
            .renew_subscription(
                account,
                |s| {
                    self.plan(&s.plan_id).map(|p| Renewal {
                        purchase_id,
                        plan_name: p.name.clone(),
                        quota_bytes: p.quota_bytes,
                        premium: p.premium,
                        price: p.price,
                        period_days: p.period_days,
                        memo: format!("{}: renewed for {} days", p.name, p.period_days),
                    })
                },
                now,
            )
            .await?;
        match &outcome {
            RenewOutcome::Renewed {
                subscription,
                balance,
            } => {
                self.tell(
                    account,
                    "Your storage plan was renewed",
                    format!(
                        "Your plan {} was renewed until {} for {} credits. Your balance is {} credits.\n\n\
                         To stop renewing it, turn renewal off on your account's Plan page.",
                        subscription.plan_name,
                        day(subscription.expires_at),
                        subscription.price,
                        balance
                    ),
                )
                .await;
            }
            RenewOutcome::Ended {
                subscription,
                short,
            } => {
                let why = match (short, self.plan(&subscription.plan_id)) {
                    (Some(balance), Some(p)) => format!(
                        "Renewing it takes {} credits and your balance is {balance}.",
                        p.price
                    ),
                    (_, None) => "This plan is no longer offered.".to_owned(),
                    (None, Some(_)) => "You turned its renewal off.".to_owned(),
                };
                self.tell(
                    account,
                    "Your storage plan has ended",
                    format!(
                        "Your plan {} ended. {why}\n\n\
                         Everything you stored is kept. If it is more than the free storage, \
                         nothing new can be added until you free space or choose a plan again.{}",
                        subscription.plan_name,
                        bin_note(subscription)
                    ),
                )
                .await;
            }
            RenewOutcome::NotDue => {}
        }
        Ok(outcome)
    }

    async fn remind(&self, account: AccountId, s: &SubscriptionRow) {
        let balance = self.store().balance(account).await.unwrap_or(0);
        let ends =
            s.renewal_off_at.is_some() || self.plan(&s.plan_id).is_none_or(|p| balance < p.price);
        let text = match self.plan(&s.plan_id) {
            _ if s.renewal_off_at.is_some() => format!(
                "Your plan {} ends on {}, as you chose: its renewal is off. Turn renewal on \
                 from your account's Plan page to keep it.{}",
                s.plan_name,
                day(s.expires_at),
                bin_note(s)
            ),
            Some(p) if balance >= p.price => format!(
                "Your plan {} renews on {} for {} credits, from your balance of {balance}.\n\n\
                 To stop it, turn renewal off on your account's Plan page before then.",
                s.plan_name,
                day(s.expires_at),
                p.price
            ),
            Some(p) => format!(
                "Your plan {} ends on {} unless it can renew: that takes {} credits and your \
                 balance is {balance}. Add credits before then to keep it.",
                s.plan_name,
                day(s.expires_at),
                p.price
            ),
            None => format!(
                "Your plan {} ends on {}: it is no longer offered. Choose another plan on your \
                 account's Plan page to keep more than the free storage.",
                s.plan_name,
                day(s.expires_at)
            ),
        };
        let subject = if ends {
            "Your storage plan ends soon"
        } else {
            "Your storage plan renews soon"
        };
        self.tell(account, subject, text).await;
    }

    async fn tell(&self, account: AccountId, subject: &str, text: String) {
        if let Some(n) = self.0.notices.get() {
            n.tell(account, subject, text).await;
        }
    }
}

/// What a premium plan's end does to the recycle bin, for the owner's messages.
fn bin_note(s: &SubscriptionRow) -> &'static str {
    if s.premium {
        " The recycle bin then keeps deleted things for the free plan's shorter time: what \
         was deleted longer ago than that goes for good."
    } else {
        ""
    }
}

/// A day, for a message: `2027-01-31`.
fn day(t: Timestamp) -> String {
    t.to_rfc3339().chars().take(10).collect()
}

/// What buying `plan` does to the account's plan `current`, at `now`.
pub fn plan_change(plan: &Plan, current: Option<&SubscriptionRow>, now: Timestamp) -> PlanChange {
    let length = period(plan.period_days);
    let fresh = |started_at: Timestamp| SubscriptionRow {
        plan_id: plan.id.clone(),
        plan_name: plan.name.clone(),
        quota_bytes: plan.quota_bytes,
        premium: plan.premium,
        price: plan.price,
        period_days: plan.period_days,
        started_at,
        period_start: now,
        expires_at: now.plus(length),
        renewal_off_at: None,
        reminded_for: None,
    };
    match current {
        // The same plan, still running: one more period after the one paid for.
        Some(c) if c.plan_id == plan.id && c.expires_at > now => PlanChange {
            subscription: SubscriptionRow {
                plan_name: plan.name.clone(),
                quota_bytes: plan.quota_bytes,
                premium: plan.premium,
                // What the term from `period_start` to the new end cost: what a change of
                // plan gives back a share of.
                price: c.price.saturating_add(plan.price),
                period_days: plan.period_days,
                expires_at: c.expires_at.plus(length),
                // Buying a period by hand does not turn renewal back on.
                reminded_for: None,
                ..c.clone()
            },
            price: plan.price,
            memo: format!("{}: {} more days", plan.name, plan.period_days),
            refund: None,
        },
        // Another plan: this one now, the unused time of the old one back.
        Some(c) => {
            let back = unused_credit(c, now);
            PlanChange {
                subscription: fresh(now),
                price: plan.price,
                memo: format!("{}: {} days", plan.name, plan.period_days),
                refund: (back > 0)
                    .then(|| (back, format!("{}: unused time given back", c.plan_name))),
            }
        }
        None => PlanChange {
            subscription: fresh(now),
            price: plan.price,
            memo: format!("{}: {} days", plan.name, plan.period_days),
            refund: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(price: i64, start: i64, end: i64) -> SubscriptionRow {
        SubscriptionRow {
            plan_id: "a".into(),
            plan_name: "A".into(),
            quota_bytes: 1,
            premium: true,
            price,
            period_days: 30,
            started_at: Timestamp(start),
            period_start: Timestamp(start),
            expires_at: Timestamp(end),
            renewal_off_at: None,
            reminded_for: None,
        }
    }

    #[test]
    fn unused_time_is_given_back_rounded_down() {
        let s = sub(100, 0, 1000);
        assert_eq!(unused_credit(&s, Timestamp(0)), 100);
        assert_eq!(unused_credit(&s, Timestamp(250)), 75);
        assert_eq!(unused_credit(&s, Timestamp(999)), 0);
        assert_eq!(unused_credit(&s, Timestamp(1000)), 0);
        assert_eq!(unused_credit(&s, Timestamp(5000)), 0);
        // Bought ahead (a period added after the current one): never more than the price.
        assert_eq!(unused_credit(&s, Timestamp(-1000)), 100);
        // The largest price does not overflow.
        let big = sub(MAX_CREDITS, 0, i64::MAX / 2);
        assert_eq!(unused_credit(&big, Timestamp(0)), MAX_CREDITS);
    }

    #[test]
    fn the_same_plan_adds_a_period_and_another_replaces_it() {
        let cfg = CommerceConfig::default();
        let monthly = &cfg.plans[0];
        let yearly = &cfg.plans[1];
        let now = Timestamp(1_000_000);
        let first = plan_change(monthly, None, now);
        assert_eq!(first.subscription.expires_at, now.plus(DAY * 30));
        assert!(first.refund.is_none());
        let again = plan_change(monthly, Some(&first.subscription), now.plus(DAY));
        assert_eq!(again.subscription.expires_at, now.plus(DAY * 60));
        assert_eq!(again.subscription.started_at, now);
        assert_eq!(again.subscription.price, 2 * monthly.price);
        let halfway = now.plus(DAY * 15);
        let switch = plan_change(yearly, Some(&first.subscription), halfway);
        assert_eq!(switch.subscription.plan_id, "plus-50");
        assert_eq!(switch.subscription.expires_at, halfway.plus(DAY * 365));
        assert_eq!(switch.refund.map(|r| r.0), Some(monthly.price / 2));
    }

    #[test]
    fn the_default_catalogue_is_valid_and_a_bad_one_is_named() {
        CommerceConfig::default().check().unwrap();
        let mut c = CommerceConfig::default();
        c.plans[1].id = c.plans[0].id.clone();
        assert!(c.check().unwrap_err().contains("used twice"));
        let mut c = CommerceConfig::default();
        c.plans[0].period_days = 0;
        assert!(c.check().unwrap_err().contains("period_days"));
        let mut c = CommerceConfig::default();
        c.plans[0].price = -1;
        assert!(c.check().unwrap_err().contains("price"));
    }
}
