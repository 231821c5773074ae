//! Commerce (CM-1, CM-2, CM-4): the credits wallet and its ledger, the account's storage plan,
//! and what it bought.
//!
//! A balance never changes without its ledger row, in the same transaction; it never goes
//! below zero (a conditional update, and the table's CHECK behind it); and every ledger row's
//! `reference` is unique across the server, so the same top-up, purchase or renewal cannot be
//! counted twice however often it is delivered, retried or run by several nodes. A purchase
//! and a renewal take the account's lock (`cloud_accounts`), so the plan they read is the plan
//! they replace, and the quota they set is the one writes check.

use mica_core::{AccountId, Timestamp};
use sqlx::{Any, AnyConnection, Row, Transaction};

use crate::operator_log::{self, OperatorEntry};
use crate::{Result, Store, StoreError};

/// A change to a wallet, to record.
#[derive(Debug, Clone, Copy)]
pub struct Credit<'a> {
    /// Credits added (> 0) or spent (< 0).
    pub delta: i64,
    /// `top_up`, `grant`, `purchase`, `renewal`, `refund`.
    pub kind: &'a str,
    /// Unique across the server: the same reference is the same change.
    pub reference: &'a str,
    /// What the owner reads in the history.
    pub memo: &'a str,
}

#[derive(Debug, Clone)]
pub struct LedgerRow {
    pub id: i64,
    pub account: AccountId,
    pub at: Timestamp,
    pub delta: i64,
    pub balance_after: i64,
    pub kind: String,
    pub reference: String,
    pub memo: String,
}

/// What became of a credit.
#[derive(Debug)]
pub enum CreditOutcome {
    Applied(LedgerRow),
    /// The reference was recorded before (for this account): that change, not a second one.
    Duplicate(LedgerRow),
    /// The reference was recorded for another account.
    ReferenceTaken,
    /// Spending this would take the balance below zero; nothing changed.
    Insufficient {
        balance: i64,
    },
}

/// An account's storage plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRow {
    pub plan_id: String,
    pub plan_name: String,
    pub quota_bytes: i64,
    pub premium: bool,
    pub price: i64,
    pub period_days: i64,
    pub started_at: Timestamp,
    pub period_start: Timestamp,
    pub expires_at: Timestamp,
    pub renewal_off_at: Option<Timestamp>,
    pub reminded_for: Option<Timestamp>,
}

#[derive(Debug, Clone)]
pub struct PurchaseRow {
    pub id: String,
    /// Its number among the account's purchases (1, 2, …).
    pub seq: i64,
    pub at: Timestamp,
    /// `plan` or `renewal`.
    pub kind: String,
    pub product_id: String,
    pub product_name: String,
    pub price: i64,
    pub credited: i64,
    pub valid_until: Option<Timestamp>,
}

/// A purchase of a plan about to be made.
#[derive(Debug, Clone, Copy)]
pub struct NewPurchase<'a> {
    pub id: &'a str,
    pub idempotency_key: Option<&'a str>,
    pub product_id: &'a str,
}

/// What a purchase of a plan does, decided by the domain on the plan the account has.
#[derive(Debug, Clone)]
pub struct PlanChange {
    /// The account's plan afterwards.
    pub subscription: SubscriptionRow,
    /// Credits spent.
    pub price: i64,
    pub memo: String,
    /// Credits given back for the unused time of the plan it replaces, with their memo.
    pub refund: Option<(i64, String)>,
}

#[derive(Debug)]
pub enum BuyOutcome {
    Bought {
        purchase: PurchaseRow,
        subscription: SubscriptionRow,
        balance: i64,
    },
    /// The idempotency key was used before for the same plan: that purchase.
    Replayed(PurchaseRow),
    /// The idempotency key was used before for another product.
    KeyReused,
    /// The balance (after any refund) does not cover the price; nothing changed.
    Insufficient { balance: i64, needed: i64 },
}

/// What a renewal does, decided by the domain on the plan as it is now.
#[derive(Debug, Clone)]
pub struct Renewal {
    pub purchase_id: String,
    pub plan_name: String,
    pub quota_bytes: i64,
    pub premium: bool,
    pub price: i64,
    pub period_days: i64,
    pub memo: String,
}

#[derive(Debug)]
pub enum RenewOutcome {
    /// No plan, or it is not due (renewed or bought meanwhile).
    NotDue,
    Renewed {
        subscription: SubscriptionRow,
        balance: i64,
    },
    /// The plan ended: renewal was off, the plan is no longer offered, or the credits did
    /// not cover it. The account is back on the free plan.
    Ended {
        subscription: SubscriptionRow,
        /// The balance, when credits were short.
        short: Option<i64>,
    },
}

const DAY_MS: i64 = 86_400_000;

const SUBSCRIPTION_COLUMNS: &str = "plan_id, plan_name, quota_bytes, premium, price, \
     period_days, started_at, period_start, expires_at, renewal_off_at, reminded_for";

fn subscription_of(r: &sqlx::any::AnyRow) -> Result<SubscriptionRow> {
    Ok(SubscriptionRow {
        plan_id: r.try_get("plan_id")?,
        plan_name: r.try_get("plan_name")?,
        quota_bytes: r.try_get("quota_bytes")?,
        premium: r.try_get::<i64, _>("premium")? != 0,
        price: r.try_get("price")?,
        period_days: r.try_get("period_days")?,
        started_at: Timestamp(r.try_get("started_at")?),
        period_start: Timestamp(r.try_get("period_start")?),
        expires_at: Timestamp(r.try_get("expires_at")?),
        renewal_off_at: r
            .try_get::<Option<i64>, _>("renewal_off_at")?
            .map(Timestamp),
        reminded_for: r.try_get::<Option<i64>, _>("reminded_for")?.map(Timestamp),
    })
}

fn ledger_of(r: &sqlx::any::AnyRow) -> Result<LedgerRow> {
    Ok(LedgerRow {
        id: r.try_get("id")?,
        account: AccountId::from_i64(r.try_get("account_id")?)
            .ok_or_else(|| StoreError::Corrupt("a ledger row without an account".into()))?,
        at: Timestamp(r.try_get("at")?),
        delta: r.try_get("delta")?,
        balance_after: r.try_get("balance_after")?,
        kind: r.try_get("kind")?,
        reference: r.try_get("reference")?,
        memo: r.try_get("memo")?,
    })
}

fn purchase_of(r: &sqlx::any::AnyRow) -> Result<PurchaseRow> {
    Ok(PurchaseRow {
        id: r.try_get("id")?,
        seq: r.try_get("seq")?,
        at: Timestamp(r.try_get("at")?),
        kind: r.try_get("kind")?,
        product_id: r.try_get("product_id")?,
        product_name: r.try_get("product_name")?,
        price: r.try_get("price")?,
        credited: r.try_get("credited")?,
        valid_until: r.try_get::<Option<i64>, _>("valid_until")?.map(Timestamp),
    })
}

const PURCHASE_COLUMNS: &str =
    "id, seq, at, kind, product_id, product_name, price, credited, valid_until";

const LEDGER_COLUMNS: &str = "id, account_id, at, delta, balance_after, kind, reference, memo";

/// Why a credit was not applied inside a transaction (which the caller then rolls back).
enum Refused {
    Duplicate(LedgerRow),
    Insufficient { balance: i64 },
}

/// Records `c` and moves the balance, or refuses. On a refusal the ledger row may have been
/// written: the caller must roll back.
async fn apply(
    conn: &mut AnyConnection,
    account: AccountId,
    c: &Credit<'_>,
    now: Timestamp,
) -> Result<std::result::Result<LedgerRow, Refused>> {
    // The wallet's row first, locked for the rest of the transaction: the changes of one
    // wallet are recorded one after another, each row's balance following the one before.
    sqlx::query(
        "INSERT INTO wallets (account_id, balance, updated_at) VALUES ($1, 0, $2) \
         ON CONFLICT (account_id) DO NOTHING",
    )
    .bind(account.as_i64())
    .bind(now.millis())
    .execute(&mut *conn)
    .await?;
    let before: i64 = sqlx::query_scalar(
        "UPDATE wallets SET updated_at = updated_at WHERE account_id = $1 RETURNING balance",
    )
    .bind(account.as_i64())
    .fetch_one(&mut *conn)
    .await?;
    let balance = before.saturating_add(c.delta);
    // Then the reference: a second delivery of it (waiting for the first's transaction, when
    // of another wallet) finds its row.
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO credit_ledger (account_id, at, delta, balance_after, kind, reference, memo) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (reference) DO NOTHING RETURNING id",
    )
    .bind(account.as_i64())
    .bind(now.millis())
    .bind(c.delta)
    .bind(balance)
    .bind(c.kind)
    .bind(c.reference)
    .bind(c.memo)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(id) = id else {
        let r = sqlx::query(&format!(
            "SELECT {LEDGER_COLUMNS} FROM credit_ledger WHERE reference = $1"
        ))
        .bind(c.reference)
        .fetch_one(&mut *conn)
        .await?;
        return Ok(Err(Refused::Duplicate(ledger_of(&r)?)));
    };
    if balance < 0 {
        return Ok(Err(Refused::Insufficient { balance: before }));
    }
    // The CHECK (balance >= 0) stands behind the test above.
    sqlx::query("UPDATE wallets SET balance = $2, updated_at = $3 WHERE account_id = $1")
        .bind(account.as_i64())
        .bind(balance)
        .bind(now.millis())
        .execute(&mut *conn)
        .await?;
    Ok(Ok(LedgerRow {
        id,
        account,
        at: now,
        delta: c.delta,
        balance_after: balance,
        kind: c.kind.to_owned(),
        reference: c.reference.to_owned(),
        memo: c.memo.to_owned(),
    }))
}

async fn subscription_in(
    conn: &mut AnyConnection,
    account: AccountId,
) -> Result<Option<SubscriptionRow>> {
    sqlx::query(&format!(
        "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE account_id = $1"
    ))
    .bind(account.as_i64())
    .fetch_optional(&mut *conn)
    .await?
    .as_ref()
    .map(subscription_of)
    .transpose()
}

/// Writes the account's plan and the quota and perks it gives (`None`: back to free).
async fn set_plan(
    tx: &mut Transaction<'static, Any>,
    account: AccountId,
    s: Option<&SubscriptionRow>,
) -> Result<()> {
    sqlx::query("DELETE FROM subscriptions WHERE account_id = $1")
        .bind(account.as_i64())
        .execute(&mut **tx)
        .await?;
    if let Some(s) = s {
        sqlx::query(&format!(
            "INSERT INTO subscriptions ({SUBSCRIPTION_COLUMNS}, account_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(&s.plan_id)
        .bind(&s.plan_name)
        .bind(s.quota_bytes)
        .bind(i64::from(s.premium))
        .bind(s.price)
        .bind(s.period_days)
        .bind(s.started_at.millis())
        .bind(s.period_start.millis())
        .bind(s.expires_at.millis())
        .bind(s.renewal_off_at.map(Timestamp::millis))
        .bind(s.reminded_for.map(Timestamp::millis))
        .bind(account.as_i64())
        .execute(&mut **tx)
        .await?;
    }
    sqlx::query("UPDATE cloud_accounts SET plan = $2, plan_quota_bytes = $3 WHERE account_id = $1")
        .bind(account.as_i64())
        .bind(match s {
            Some(s) if s.premium => "premium",
            _ => "free",
        })
        .bind(s.map(|s| s.quota_bytes))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The purchase made before under `p`'s idempotency key, if any: `Ok` when it bought the same
/// product of the same `kind` (a retry), `Err` when the key was used for something else.
async fn earlier_purchase(
    conn: &mut AnyConnection,
    account: AccountId,
    p: &NewPurchase<'_>,
    kind: &str,
) -> Result<Option<std::result::Result<PurchaseRow, ()>>> {
    let Some(key) = p.idempotency_key else {
        return Ok(None);
    };
    let Some(r) = sqlx::query(&format!(
        "SELECT {PURCHASE_COLUMNS} FROM purchases WHERE account_id = $1 AND idempotency_key = $2"
    ))
    .bind(account.as_i64())
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let earlier = purchase_of(&r)?;
    Ok(Some(
        if earlier.kind == kind && earlier.product_id == p.product_id {
            Ok(earlier)
        } else {
            Err(())
        },
    ))
}

#[allow(clippy::too_many_arguments)]
async fn insert_purchase(
    tx: &mut Transaction<'static, Any>,
    account: AccountId,
    id: &str,
    kind: &str,
    product_id: &str,
    product_name: &str,
    price: i64,
    credited: i64,
    valid_until: Option<Timestamp>,
    idempotency_key: Option<&str>,
    now: Timestamp,
) -> Result<PurchaseRow> {
    // The caller holds the account's lock: the next number is this one's.
    let seq: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) + 1 FROM purchases WHERE account_id = $1")
            .bind(account.as_i64())
            .fetch_one(&mut **tx)
            .await?;
    sqlx::query(
        "INSERT INTO purchases (id, account_id, at, kind, product_id, product_name, price, \
         credited, valid_until, idempotency_key, seq) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(id)
    .bind(account.as_i64())
    .bind(now.millis())
    .bind(kind)
    .bind(product_id)
    .bind(product_name)
    .bind(price)
    .bind(credited)
    .bind(valid_until.map(Timestamp::millis))
    .bind(idempotency_key)
    .bind(seq)
    .execute(&mut **tx)
    .await?;
    Ok(PurchaseRow {
        id: id.to_owned(),
        seq,
        at: now,
        kind: kind.to_owned(),
        product_id: product_id.to_owned(),
        product_name: product_name.to_owned(),
        price,
        credited,
        valid_until,
    })
}

impl Store {
    /// Adds or spends credits (an operator's adjustment is recorded in the operator's log in
    /// the same transaction).
    pub async fn credit(
        &self,
        account: AccountId,
        c: &Credit<'_>,
        operator: Option<&OperatorEntry<'_>>,
        now: Timestamp,
    ) -> Result<CreditOutcome> {
        let mut tx = self.writer.begin().await?;
        match apply(&mut tx, account, c, now).await? {
            Ok(row) => {
                if let Some(e) = operator {
                    operator_log::record(&mut tx, e, now).await?;
                }
                tx.commit().await?;
                Ok(CreditOutcome::Applied(row))
            }
            Err(Refused::Duplicate(row)) if row.account == account => {
                Ok(CreditOutcome::Duplicate(row))
            }
            Err(Refused::Duplicate(_)) => Ok(CreditOutcome::ReferenceTaken),
            Err(Refused::Insufficient { balance }) => Ok(CreditOutcome::Insufficient { balance }),
        }
    }

    /// The account's balance (0 before its first credit).
    pub async fn balance(&self, account: AccountId) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT balance FROM wallets WHERE account_id = $1")
                .bind(account.as_i64())
                .fetch_optional(&self.reader)
                .await?
                .unwrap_or(0),
        )
    }

    /// The account's ledger, newest first, older than the row `before` when given.
    pub async fn ledger(
        &self,
        account: AccountId,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<LedgerRow>> {
        sqlx::query(&format!(
            "SELECT {LEDGER_COLUMNS} FROM credit_ledger WHERE account_id = $1 AND id < $2 \
             ORDER BY id DESC LIMIT $3"
        ))
        .bind(account.as_i64())
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(ledger_of)
        .collect()
    }

    /// What the account bought, newest first, before the purchase numbered `before`.
    pub async fn purchases(
        &self,
        account: AccountId,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<PurchaseRow>> {
        sqlx::query(&format!(
            "SELECT {PURCHASE_COLUMNS} FROM purchases WHERE account_id = $1 AND seq < $2 \
             ORDER BY seq DESC LIMIT $3"
        ))
        .bind(account.as_i64())
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(purchase_of)
        .collect()
    }

    pub async fn subscription(&self, account: AccountId) -> Result<Option<SubscriptionRow>> {
        let mut conn = self.reader.acquire().await?;
        subscription_in(&mut conn, account).await
    }

    /// Buys a plan: `decide` sees the account's plan as it is under the account's lock and
    /// says what the purchase does; the refund, the spending, the plan, the quota and the
    /// purchase are one transaction.
    pub async fn buy_plan(
        &self,
        account: AccountId,
        p: &NewPurchase<'_>,
        decide: impl FnOnce(Option<&SubscriptionRow>) -> PlanChange,
        now: Timestamp,
    ) -> Result<BuyOutcome> {
        let mut tx = self.writer.begin().await?;
        crate::cloud::lock_account(&mut tx, account, 0).await?;
        match earlier_purchase(&mut tx, account, p, "plan").await? {
            Some(Ok(earlier)) => return Ok(BuyOutcome::Replayed(earlier)),
            Some(Err(())) => return Ok(BuyOutcome::KeyReused),
            None => {}
        }
        let current = subscription_in(&mut tx, account).await?;
        let change = decide(current.as_ref());
        let mut credited = 0;
        if let Some((refund, memo)) = change.refund.as_ref().filter(|(n, _)| *n > 0) {
            let reference = format!("refund:{}", p.id);
            let c = Credit {
                delta: *refund,
                kind: "refund",
                reference: &reference,
                memo,
            };
            if let Err(Refused::Duplicate(_)) = apply(&mut tx, account, &c, now).await? {
                return Err(StoreError::Conflict);
            }
            credited = *refund;
        }
        let reference = format!("purchase:{}", p.id);
        let c = Credit {
            delta: -change.price,
            kind: "purchase",
            reference: &reference,
            memo: &change.memo,
        };
        let balance = match apply(&mut tx, account, &c, now).await? {
            Ok(row) => row.balance_after,
            Err(Refused::Insufficient { balance }) => {
                return Ok(BuyOutcome::Insufficient {
                    balance: balance - credited,
                    needed: change.price - credited,
                })
            }
            Err(Refused::Duplicate(_)) => return Err(StoreError::Conflict),
        };
        set_plan(&mut tx, account, Some(&change.subscription)).await?;
        let purchase = insert_purchase(
            &mut tx,
            account,
            p.id,
            "plan",
            p.product_id,
            &change.subscription.plan_name,
            change.price,
            credited,
            Some(change.subscription.expires_at),
            p.idempotency_key,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(BuyOutcome::Bought {
            purchase,
            subscription: change.subscription,
            balance,
        })
    }

    /// Turns the plan's renewal on or off; `None` when the account has no plan.
    pub async fn set_renewal(
        &self,
        account: AccountId,
        on: bool,
        now: Timestamp,
    ) -> Result<Option<SubscriptionRow>> {
        let mut tx = self.writer.begin().await?;
        // Under the account's lock, like a purchase or a renewal that rewrites the plan.
        crate::cloud::lock_account(&mut tx, account, 0).await?;
        sqlx::query(
            "UPDATE subscriptions SET renewal_off_at = $2, reminded_for = NULL \
             WHERE account_id = $1",
        )
        .bind(account.as_i64())
        .bind((!on).then_some(now.millis()))
        .execute(&mut *tx)
        .await?;
        let s = subscription_in(&mut tx, account).await?;
        tx.commit().await?;
        Ok(s)
    }

    /// Accounts whose plan expired by `now`.
    pub async fn due_subscriptions(&self, now: Timestamp, limit: i64) -> Result<Vec<AccountId>> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT account_id FROM subscriptions WHERE expires_at <= $1 \
             ORDER BY expires_at LIMIT $2",
        )
        .bind(now.millis())
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        Ok(ids.into_iter().filter_map(AccountId::from_i64).collect())
    }

    /// Renews the account's plan if it is due: `decide` sees the plan under the account's
    /// lock and returns the renewal (`None`: it ends). The spending is recorded under the
    /// period it pays for, so two nodes renewing at once charge once.
    pub async fn renew_subscription(
        &self,
        account: AccountId,
        decide: impl FnOnce(&SubscriptionRow) -> Option<Renewal>,
        now: Timestamp,
    ) -> Result<RenewOutcome> {
        let mut tx = self.writer.begin().await?;
        crate::cloud::lock_account(&mut tx, account, 0).await?;
        let Some(sub) = subscription_in(&mut tx, account).await? else {
            return Ok(RenewOutcome::NotDue);
        };
        if sub.expires_at > now {
            return Ok(RenewOutcome::NotDue);
        }
        let mut short = None;
        if let Some(r) = decide(&sub).filter(|_| sub.renewal_off_at.is_none()) {
            let reference = format!("renewal:{}:{}", account, sub.expires_at.millis());
            let c = Credit {
                delta: -r.price,
                kind: "renewal",
                reference: &reference,
                memo: &r.memo,
            };
            // The new period follows the old one — or, when the server was not running for
            // longer than a period, starts now: one charge, not one per period missed.
            let length = r.period_days.saturating_mul(DAY_MS);
            let start = if sub.expires_at.millis().saturating_add(length) <= now.millis() {
                now
            } else {
                sub.expires_at
            };
            let mut sp = sqlx::Connection::begin(&mut *tx).await?;
            match apply(&mut sp, account, &c, now).await? {
                Ok(row) => {
                    sp.commit().await?;
                    let renewed = SubscriptionRow {
                        plan_name: r.plan_name.clone(),
                        quota_bytes: r.quota_bytes,
                        premium: r.premium,
                        price: r.price,
                        period_days: r.period_days,
                        period_start: start,
                        expires_at: Timestamp(
                            start
                                .millis()
                                .saturating_add(r.period_days.saturating_mul(DAY_MS)),
                        ),
                        reminded_for: None,
                        ..sub.clone()
                    };
                    set_plan(&mut tx, account, Some(&renewed)).await?;
                    insert_purchase(
                        &mut tx,
                        account,
                        &r.purchase_id,
                        "renewal",
                        &sub.plan_id,
                        &r.plan_name,
                        r.price,
                        0,
                        Some(renewed.expires_at),
                        None,
                        now,
                    )
                    .await?;
                    tx.commit().await?;
                    return Ok(RenewOutcome::Renewed {
                        subscription: renewed,
                        balance: row.balance_after,
                    });
                }
                Err(Refused::Insufficient { balance }) => {
                    sp.rollback().await?;
                    short = Some(balance);
                }
                // This period was paid already (its plan row was then moved on, so this
                // cannot be): leave it to the next run rather than end a paid plan.
                Err(Refused::Duplicate(_)) => return Ok(RenewOutcome::NotDue),
            }
        }
        set_plan(&mut tx, account, None).await?;
        tx.commit().await?;
        Ok(RenewOutcome::Ended {
            subscription: sub,
            short,
        })
    }

    /// Claims the plans that expire by `horizon` and whose owner was not told of that expiry
    /// yet (that it renews, or ends); each is returned once.
    pub async fn claim_renewal_reminders(
        &self,
        now: Timestamp,
        horizon: Timestamp,
        limit: i64,
    ) -> Result<Vec<(AccountId, SubscriptionRow)>> {
        let rows = sqlx::query(&format!(
            "UPDATE subscriptions SET reminded_for = expires_at WHERE account_id IN \
             (SELECT account_id FROM subscriptions WHERE expires_at > $1 AND expires_at <= $2 \
              AND (reminded_for IS NULL OR reminded_for <> expires_at) LIMIT $3) \
             AND (reminded_for IS NULL OR reminded_for <> expires_at) \
             RETURNING account_id, {SUBSCRIPTION_COLUMNS}"
        ))
        .bind(now.millis())
        .bind(horizon.millis())
        .bind(limit)
        .fetch_all(&self.writer)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    AccountId::from_i64(r.try_get("account_id")?).ok_or_else(|| {
                        StoreError::Corrupt("a subscription without an account".into())
                    })?,
                    subscription_of(r)?,
                ))
            })
            .collect()
    }
}

/// A theme as published (without its bytes).
#[derive(Debug, Clone)]
pub struct ThemeRow {
    pub id: String,
    pub name: String,
    pub author: String,
    pub description: String,
    pub tags: String,
    pub price: i64,
    pub version: i64,
    pub package_size: i64,
    pub package_sha256: String,
    pub preview_type: Option<String>,
    pub published_at: Timestamp,
    pub updated_at: Timestamp,
    pub withdrawn_at: Option<Timestamp>,
    /// Whether the account asking has it.
    pub owned: bool,
}

/// A theme to publish, or a new version of one.
#[derive(Debug, Clone, Copy)]
pub struct NewTheme<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub author: &'a str,
    pub description: &'a str,
    pub tags: &'a str,
    pub price: i64,
    pub package: &'a [u8],
    pub package_sha256: &'a str,
    pub preview: Option<(&'a [u8], &'a str)>,
}

/// What getting a theme did.
#[derive(Debug)]
pub enum ThemeOutcome {
    Bought {
        purchase: PurchaseRow,
        balance: i64,
    },
    /// The idempotency key was used before for this theme: that purchase.
    Replayed(PurchaseRow),
    /// The account has the theme already (bought once, on every device).
    AlreadyOwned(PurchaseRow),
    KeyReused,
    /// Not offered (unknown or withdrawn).
    Unavailable,
    /// The price is not the one the buyer saw (the operator changed it): this one.
    PriceChanged(i64),
    Insufficient {
        balance: i64,
        needed: i64,
    },
}

const THEME_COLUMNS: &str = "t.id, t.name, t.author, t.description, t.tags, t.price, t.version, \
     t.package_size, t.package_sha256, t.preview_type, t.published_at, t.updated_at, t.withdrawn_at";

/// `owned`: whether the account `$1` has a `theme` purchase of it.
const THEME_OWNED: &str = "EXISTS (SELECT 1 FROM purchases p WHERE p.account_id = $1 \
     AND p.kind = 'theme' AND p.product_id = t.id) AS owned";

fn theme_of(r: &sqlx::any::AnyRow) -> Result<ThemeRow> {
    Ok(ThemeRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        author: r.try_get("author")?,
        description: r.try_get("description")?,
        tags: r.try_get("tags")?,
        price: r.try_get("price")?,
        version: r.try_get("version")?,
        package_size: r.try_get("package_size")?,
        package_sha256: r.try_get("package_sha256")?,
        preview_type: r.try_get("preview_type")?,
        published_at: Timestamp(r.try_get("published_at")?),
        updated_at: Timestamp(r.try_get("updated_at")?),
        withdrawn_at: r.try_get::<Option<i64>, _>("withdrawn_at")?.map(Timestamp),
        // SQLite answers a boolean expression as an integer; PostgreSQL as a boolean.
        owned: match r.try_get::<bool, _>("owned") {
            Ok(b) => b,
            Err(_) => r.try_get::<i64, _>("owned")? != 0,
        },
    })
}

impl Store {
    /// Publishes a theme, or a new version of it (the version goes up when the package
    /// changes; a preview or description not given stays; a withdrawn theme stays withdrawn).
    pub async fn publish_theme(&self, t: &NewTheme<'_>, now: Timestamp) -> Result<i64> {
        let search = format!("{} {} {} {}", t.name, t.author, t.tags, t.description).to_lowercase();
        let (preview, preview_type) = t.preview.map_or((None, None), |(b, m)| (Some(b), Some(m)));
        let version: i64 = sqlx::query_scalar(
            "INSERT INTO themes (id, name, author, description, tags, search, price, version, \
             package, package_size, package_sha256, preview, preview_type, published_at, \
             updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, $9, $10, $11, $12, $13, $13) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, author = excluded.author, \
             description = CASE WHEN excluded.description = '' THEN themes.description \
                 ELSE excluded.description END, \
             tags = excluded.tags, search = excluded.search, price = excluded.price, \
             version = CASE WHEN themes.package_sha256 = excluded.package_sha256 \
                 THEN themes.version ELSE themes.version + 1 END, \
             package = excluded.package, package_size = excluded.package_size, \
             package_sha256 = excluded.package_sha256, \
             preview = COALESCE(excluded.preview, themes.preview), \
             preview_type = COALESCE(excluded.preview_type, themes.preview_type), \
             updated_at = excluded.updated_at \
             RETURNING version",
        )
        .bind(t.id)
        .bind(t.name)
        .bind(t.author)
        .bind(t.description)
        .bind(t.tags)
        .bind(search)
        .bind(t.price)
        .bind(t.package)
        .bind(i64::try_from(t.package.len()).unwrap_or(i64::MAX))
        .bind(t.package_sha256)
        .bind(preview)
        .bind(preview_type)
        .bind(now.millis())
        .fetch_one(&self.writer)
        .await?;
        Ok(version)
    }

    /// Offers a withdrawn theme again; false when there is none.
    pub async fn offer_theme(&self, id: &str) -> Result<bool> {
        Ok(
            sqlx::query("UPDATE themes SET withdrawn_at = NULL WHERE id = $1")
                .bind(id)
                .execute(&self.writer)
                .await?
                .rows_affected()
                > 0,
        )
    }

    /// Stops offering a theme; false when there is none.
    pub async fn withdraw_theme(&self, id: &str, now: Timestamp) -> Result<bool> {
        Ok(
            sqlx::query(
                "UPDATE themes SET withdrawn_at = COALESCE(withdrawn_at, $2) WHERE id = $1",
            )
            .bind(id)
            .bind(now.millis())
            .execute(&self.writer)
            .await?
            .rows_affected()
                > 0,
        )
    }

    /// Themes on offer — and those `account` has, even withdrawn — whose text holds every
    /// word of `words` (lowercase), by name, after `(name, id)` when given. `account` 0 and
    /// `all` list every theme, for the operator.
    pub async fn themes(
        &self,
        account: Option<AccountId>,
        words: &[String],
        after: Option<(&str, &str)>,
        limit: i64,
    ) -> Result<Vec<ThemeRow>> {
        let mut sql = format!(
            "SELECT {THEME_COLUMNS}, {THEME_OWNED} FROM themes t WHERE \
             ($4 = 1 OR t.withdrawn_at IS NULL OR EXISTS (SELECT 1 FROM purchases p \
              WHERE p.account_id = $1 AND p.kind = 'theme' AND p.product_id = t.id)) \
             AND (LOWER(t.name) > $2 OR (LOWER(t.name) = $2 AND t.id > $3))"
        );
        for i in 0..words.len() {
            sql.push_str(&format!(" AND t.search LIKE ${} ESCAPE '\\'", i + 6));
        }
        sql.push_str(" ORDER BY LOWER(t.name), t.id LIMIT $5");
        let (name, id) = after.unwrap_or(("", ""));
        let mut q = sqlx::query(&sql)
            .bind(account.map_or(0, AccountId::as_i64))
            .bind(name)
            .bind(id)
            .bind(i64::from(account.is_none()))
            .bind(limit);
        for w in words {
            let escaped = w
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            q = q.bind(format!("%{escaped}%"));
        }
        q.fetch_all(&self.reader)
            .await?
            .iter()
            .map(theme_of)
            .collect()
    }

    /// A theme, with whether `account` has it (`None`: the operator asking).
    pub async fn theme(&self, account: Option<AccountId>, id: &str) -> Result<Option<ThemeRow>> {
        sqlx::query(&format!(
            "SELECT {THEME_COLUMNS}, {THEME_OWNED} FROM themes t WHERE t.id = $2"
        ))
        .bind(account.map_or(0, AccountId::as_i64))
        .bind(id)
        .fetch_optional(&self.reader)
        .await?
        .as_ref()
        .map(theme_of)
        .transpose()
    }

    /// A theme's package with its SHA-256 (read together: a version published meanwhile is
    /// not paired with the other's hash), or its preview (`preview`, with no hash).
    pub async fn theme_bytes(
        &self,
        id: &str,
        preview: bool,
    ) -> Result<Option<(Vec<u8>, Option<String>)>> {
        let sql = if preview {
            "SELECT preview AS bytes, NULL AS sha FROM themes WHERE id = $1 AND preview IS NOT NULL"
        } else {
            "SELECT package AS bytes, package_sha256 AS sha FROM themes WHERE id = $1"
        };
        let Some(r) = sqlx::query(sql)
            .bind(id)
            .fetch_optional(&self.reader)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some((r.try_get("bytes")?, r.try_get("sha")?)))
    }

    /// Gets a theme for the account: once, for its price (a free one for nothing), in one
    /// transaction under the account's lock.
    pub async fn buy_theme(
        &self,
        account: AccountId,
        p: &NewPurchase<'_>,
        expected_price: Option<i64>,
        now: Timestamp,
    ) -> Result<ThemeOutcome> {
        let mut tx = self.writer.begin().await?;
        crate::cloud::lock_account(&mut tx, account, 0).await?;
        match earlier_purchase(&mut tx, account, p, "theme").await? {
            Some(Ok(earlier)) => return Ok(ThemeOutcome::Replayed(earlier)),
            Some(Err(())) => return Ok(ThemeOutcome::KeyReused),
            None => {}
        }
        let owned = sqlx::query(&format!(
            "SELECT {PURCHASE_COLUMNS} FROM purchases WHERE account_id = $1 AND kind = 'theme' \
             AND product_id = $2"
        ))
        .bind(account.as_i64())
        .bind(p.product_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(r) = owned {
            return Ok(ThemeOutcome::AlreadyOwned(purchase_of(&r)?));
        }
        let theme =
            sqlx::query("SELECT name, price FROM themes WHERE id = $1 AND withdrawn_at IS NULL")
                .bind(p.product_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(theme) = theme else {
            return Ok(ThemeOutcome::Unavailable);
        };
        let name: String = theme.try_get("name")?;
        let price: i64 = theme.try_get("price")?;
        if expected_price.is_some_and(|e| e != price) {
            return Ok(ThemeOutcome::PriceChanged(price));
        }
        let balance = if price > 0 {
            let reference = format!("purchase:{}", p.id);
            let memo = format!("Theme: {name}");
            let c = Credit {
                delta: -price,
                kind: "purchase",
                reference: &reference,
                memo: &memo,
            };
            match apply(&mut tx, account, &c, now).await? {
                Ok(row) => row.balance_after,
                Err(Refused::Insufficient { balance }) => {
                    return Ok(ThemeOutcome::Insufficient {
                        balance,
                        needed: price,
                    })
                }
                Err(Refused::Duplicate(_)) => return Err(StoreError::Conflict),
            }
        } else {
            sqlx::query_scalar("SELECT balance FROM wallets WHERE account_id = $1")
                .bind(account.as_i64())
                .fetch_optional(&mut *tx)
                .await?
                .unwrap_or(0)
        };
        let purchase = insert_purchase(
            &mut tx,
            account,
            p.id,
            "theme",
            p.product_id,
            &name,
            price,
            0,
            None,
            p.idempotency_key,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(ThemeOutcome::Bought { purchase, balance })
    }
}
