//! Credits and storage plans (CM-1, CM-2, CM-4), driven the way an owner, the operator and a
//! payment provider do: the wallet fills from the real `mica admin` command and from signed
//! webhooks, never counting a credit twice; a plan bought with credits raises the quota at
//! once, renews from the wallet or ends, and an account over its quota then keeps everything
//! but stores nothing new until it frees space. A device sends the operator a bug report with
//! its log (CM-5), and the operator answers.

use std::time::Duration;

use mica_client::Client;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::devices::{owner, Agent};
use crate::on_both_backends;
use crate::support::browser::Browser;
use crate::support::{TestApp, PASSWORD, WEBHOOK_SECRET};
use crate::sync::note;

on_both_backends!(
    credits_buy_a_plan_once_however_often_it_is_asked,
    a_payment_webhook_credits_each_payment_once,
    a_plan_renews_from_the_wallet_or_ends,
    the_plan_page_buys_and_stops_a_plan_in_a_browser,
    a_device_reports_a_bug_with_its_log_and_the_operator_answers,
    the_theme_store_sells_a_theme_once_for_every_device,
);

const GB: i64 = 1_000_000_000;
const DAY: Duration = Duration::from_secs(86_400);

fn grant(app: &TestApp, login: &str, credits: i64, reason: &str) -> String {
    let (ok, out) = app.admin(&[
        "account",
        "credits",
        login,
        "--add",
        &credits.to_string(),
        "--operator",
        "ops-ann",
        "--reason",
        reason,
    ]);
    assert!(ok, "{out}");
    out
}

async fn balance(c: &Client) -> i64 {
    c.wallet().await.unwrap()["balance"].as_i64().unwrap()
}

async fn quota(c: &Client) -> i64 {
    c.usage().await.unwrap()["quota_bytes"].as_i64().unwrap()
}

async fn credits_buy_a_plan_once_however_often_it_is_asked(app: &TestApp) {
    let email = "paula@example.com";
    let t = app.signup_email(email).await;
    let c = app.client.with_token(&t.access_token);

    // The catalogue, and the free plan.
    let plans = c.plans().await.unwrap();
    let ids: Vec<&str> = plans["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["plus-50-month", "plus-50", "plus-200", "plus-2000"]);
    assert_eq!(plans["current"], Value::Null);
    assert_eq!(plans["free_quota_bytes"], json!(5 * GB));
    assert_eq!(quota(&c).await, 5 * GB);

    // Nothing to spend: refused, and nothing changes.
    let e = c.buy_plan("plus-50", Some("first-try")).await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::PAYMENT_REQUIRED));
    assert_eq!(e.code(), Some("insufficient_credits"));
    assert!(e.to_string().contains("needs 100"), "{e}");
    assert_eq!(quota(&c).await, 5 * GB);
    assert_eq!(
        c.wallet().await.unwrap()["entries"],
        json!([]),
        "a refused purchase leaves no trace in the wallet"
    );
    assert_eq!(c.purchases().await.unwrap()["purchases"], json!([]));

    // The operator grants credits with a reason the owner reads; the log keeps who did it.
    let out = grant(app, email, 150, "Welcome to Mica");
    assert!(out.contains("+150 (balance 150)"), "{out}");
    assert!(out.contains("credits          150"), "{out}");
    let (ok, out) = app.admin(&[
        "account",
        "credits",
        email,
        "--take",
        "1000",
        "--operator",
        "ops-ann",
        "--reason",
        "oops",
    ]);
    assert!(!ok && out.contains("not enough credits"), "{out}");
    let (ok, out) = app.admin(&[
        "account",
        "credits",
        email,
        "--add",
        "0",
        "--operator",
        "ops-ann",
        "--reason",
        "x",
    ]);
    assert!(!ok, "{out}");
    let (ok, out) = app.admin(&["log", "--account", email]);
    assert!(ok && out.contains("credits_adjusted"), "{out}");
    assert!(out.contains("+150 credits: Welcome to Mica"), "{out}");
    let wallet = c.wallet().await.unwrap();
    assert_eq!(wallet["balance"], 150);
    assert_eq!(wallet["entries"][0]["credits"], 150);
    assert_eq!(wallet["entries"][0]["kind"], "grant");
    assert_eq!(
        wallet["entries"][0]["memo"],
        "From the operator: Welcome to Mica"
    );

    // A year of 50 GB: the quota rises at once, with the premium recycle bin.
    let bought = c.buy_plan("plus-50", Some("buy-1")).await.unwrap();
    assert_eq!(bought["replayed"], false);
    assert_eq!(bought["balance"], 50);
    assert_eq!(bought["purchase"]["price"], 100);
    assert_eq!(bought["subscription"]["plan"], "plus-50");
    assert_eq!(bought["subscription"]["auto_renew"], true);
    let until = bought["subscription"]["expires_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let usage = c.usage().await.unwrap();
    assert_eq!(usage["quota_bytes"], json!(50 * GB));
    assert_eq!(usage["plan"], "premium");
    let (ok, out) = app.admin(&["account", "show", email]);
    assert!(ok, "{out}");
    assert!(
        out.contains("of 50000000000 bytes (the plan's quota)"),
        "{out}"
    );
    assert!(
        out.contains("plan             Mica+ 50 GB (50000000000 bytes) until"),
        "{out}"
    );
    assert!(out.contains("credits          50"), "{out}");

    // A retry (a lost answer) is the same purchase: nothing is spent twice.
    let again = c.buy_plan("plus-50", Some("buy-1")).await.unwrap();
    assert_eq!(again["replayed"], true);
    assert_eq!(again["purchase"]["id"], bought["purchase"]["id"]);
    assert_eq!(balance(&c).await, 50);
    let e = c.buy_plan("plus-200", Some("buy-1")).await.unwrap_err();
    assert_eq!(e.code(), Some("idempotency_key_reused"));
    let e = c.buy_plan("plus-9000", None).await.unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(StatusCode::NOT_FOUND), Some("unknown_plan"))
    );
    let e = c.buy_plan("plus-50", Some("two words")).await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::UNPROCESSABLE_ENTITY));
    assert_eq!(
        c.purchases().await.unwrap()["purchases"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Six devices buy the same plan at once with credits for one: one wins, none overdraws.
    grant(app, email, 100, "Top-up by hand");
    let tries: Vec<_> = (0..6)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.buy_plan("plus-50", Some(&format!("race-{i}"))).await })
        })
        .collect();
    let mut won = 0;
    for t in tries {
        match t.await.unwrap() {
            Ok(_) => won += 1,
            Err(e) => assert_eq!(e.code(), Some("insufficient_credits"), "{e:?}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(balance(&c).await, 50);
    let sub = c.plans().await.unwrap()["current"].clone();
    let added = time::OffsetDateTime::parse(
        sub["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
        - time::OffsetDateTime::parse(&until, &time::format_description::well_known::Rfc3339)
            .unwrap();
    assert_eq!(added.whole_days(), 365, "one more year, once");

    // A bigger plan replaces it now and gives back the two unused years (200) — still short
    // of 300 with 50 in the wallet: refused, and the plan stays as it was.
    let e = c.buy_plan("plus-200", Some("up-1")).await.unwrap_err();
    assert_eq!(e.code(), Some("insufficient_credits"));
    assert!(
        e.to_string().contains("needs 100 and the balance is 50"),
        "{e}"
    );
    assert_eq!(c.plans().await.unwrap()["current"], sub);
    assert_eq!(balance(&c).await, 50);
    grant(app, email, 50, "Loyalty");
    let up = c.buy_plan("plus-200", Some("up-2")).await.unwrap();
    assert_eq!(up["purchase"]["credited"], 200);
    assert_eq!(up["balance"], 0);
    assert_eq!(quota(&c).await, 200 * GB);
    let kinds: Vec<String> = c.wallet().await.unwrap()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}{:+}",
                e["kind"].as_str().unwrap(),
                e["credits"].as_i64().unwrap()
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "purchase-300",
            "refund+200",
            "grant+50",
            "purchase-100",
            "grant+100",
            "purchase-100",
            "grant+150"
        ]
    );
    // Each line's balance follows from the one before: the ledger adds up.
    let entries = c.wallet().await.unwrap()["entries"].clone();
    let entries = entries.as_array().unwrap();
    for w in entries.windows(2) {
        assert_eq!(
            w[1]["balance"].as_i64().unwrap() + w[0]["credits"].as_i64().unwrap(),
            w[0]["balance"].as_i64().unwrap()
        );
    }
    let history = c.purchases().await.unwrap();
    let names: Vec<&str> = history["purchases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Mica+ 200 GB", "Mica+ 50 GB", "Mica+ 50 GB"]);

    // Another account sees none of it.
    let other = app.signup_email("otto@example.com").await;
    let o = app.client.with_token(&other.access_token);
    assert_eq!(balance(&o).await, 0);
    assert_eq!(o.purchases().await.unwrap()["purchases"], json!([]));
    assert_eq!(o.plans().await.unwrap()["current"], Value::Null);
    assert_eq!(quota(&o).await, 5 * GB);
}

/// Posts an event to the webhook, signed at `t` (Unix seconds) with `secret`.
async fn deliver(app: &TestApp, body: &Value, t: i64, secret: &str) -> reqwest::Response {
    let body = serde_json::to_vec(body).unwrap();
    app.http
        .post(app.url("/api/v1/commerce/webhook"))
        .header("content-type", "application/json")
        .header(
            "mica-signature",
            mica_commerce::webhook::sign(secret, t, &body),
        )
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn error_code(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    (status, v["error"]["code"].as_str().unwrap_or("").to_owned())
}

async fn a_payment_webhook_credits_each_payment_once(app: &TestApp) {
    let t = app.signup_email("wanda@example.com").await;
    let c = app.client.with_token(&t.access_token);
    let account = t.account_id.clone();
    let now = app.clock_secs();
    let paid = |id: &str, credits: i64| {
        json!({"id": id, "type": "credits.paid",
               "data": {"account": account, "credits": credits, "memo": "500 credits, 4.99 EUR"}})
    };

    let r = deliver(app, &paid("evt_1", 500), now, WEBHOOK_SECRET).await;
    assert_eq!(r.status(), StatusCode::OK);
    let receipt: Value = r.json().await.unwrap();
    assert_eq!(
        receipt,
        json!({"event": "evt_1", "applied": true, "duplicate": false})
    );
    let wallet = c.wallet().await.unwrap();
    assert_eq!(wallet["balance"], 500);
    assert_eq!(wallet["entries"][0]["kind"], "top_up");
    assert_eq!(wallet["entries"][0]["memo"], "500 credits, 4.99 EUR");

    // The provider delivers again (it did not see the answer): acknowledged, not counted.
    let r = deliver(app, &paid("evt_1", 500), now + 30, WEBHOOK_SECRET).await;
    let receipt: Value = r.json().await.unwrap();
    assert_eq!(receipt["duplicate"], true);
    assert_eq!(balance(&c).await, 500);

    // Five deliveries of one event at once: counted once.
    let body = paid("evt_2", 70);
    let all: Vec<_> = (0..5)
        .map(|_| deliver(app, &body, now, WEBHOOK_SECRET))
        .collect();
    for r in futures_util::future::join_all(all).await {
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert_eq!(balance(&c).await, 570);
    assert_eq!(
        c.wallet().await.unwrap()["entries"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Forged, replayed later, or about something else: refused with a reason, nothing counted.
    let r = deliver(app, &paid("evt_3", 1000), now, "not-the-secret").await;
    assert_eq!(error_code(r).await, (401, "bad_signature".into()));
    let r = deliver(app, &paid("evt_3", 1000), now - 301, WEBHOOK_SECRET).await;
    assert_eq!(error_code(r).await, (401, "bad_signature".into()));
    let r = app
        .http
        .post(app.url("/api/v1/commerce/webhook"))
        .body(serde_json::to_vec(&paid("evt_3", 1000)).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (401, "bad_signature".into()));
    // A valid signature over a changed body.
    let body = serde_json::to_vec(&paid("evt_3", 1000)).unwrap();
    let sig = mica_commerce::webhook::sign(WEBHOOK_SECRET, now, &body);
    let tampered = serde_json::to_vec(&paid("evt_3", 100_000)).unwrap();
    let r = app
        .http
        .post(app.url("/api/v1/commerce/webhook"))
        .header("mica-signature", sig)
        .body(tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (401, "bad_signature".into()));
    // The same event id with another amount is not a second payment.
    let r = deliver(app, &paid("evt_1", 900), now, WEBHOOK_SECRET).await;
    assert_eq!(error_code(r).await, (409, "event_reused".into()));
    let r = deliver(
        app,
        &json!({"id": "evt_4", "type": "credits.paid", "data": {"account": "1000000001", "credits": 5}}),
        now,
        WEBHOOK_SECRET,
    )
    .await;
    assert_eq!(error_code(r).await, (422, "unknown_account".into()));
    for bad in [
        json!({"id": "evt_5", "type": "credits.paid", "data": {"account": t.account_id, "credits": -5}}),
        json!({"id": "evt_5", "type": "credits.paid", "data": {"account": "me", "credits": 5}}),
        json!({"type": "credits.paid"}),
        json!([1, 2]),
    ] {
        let r = deliver(app, &bad, now, WEBHOOK_SECRET).await;
        assert_eq!(error_code(r).await, (422, "invalid_input".into()), "{bad}");
    }
    // Events of other kinds are acknowledged and change nothing.
    let r = deliver(
        app,
        &json!({"id": "evt_6", "type": "charge.refunded", "data": {"account": t.account_id}}),
        now,
        WEBHOOK_SECRET,
    )
    .await;
    let receipt: Value = r.json().await.unwrap();
    assert_eq!(receipt["applied"], false);
    assert_eq!(balance(&c).await, 570);
}

async fn a_plan_renews_from_the_wallet_or_ends(app: &TestApp) {
    let email = "renata@example.com";
    app.signup_email(email).await;
    let commerce = app.server_commerce();
    let sign_in = || async {
        let t = app.client.sign_in(email, PASSWORD, None).await.unwrap();
        app.client.with_token(t.access_token)
    };
    // The operator's quota is small; the plan's is larger and wins while it lasts.
    let (ok, out) = app.admin(&[
        "account",
        "quota",
        email,
        "--bytes",
        "3000",
        "--operator",
        "ops-ann",
    ]);
    assert!(ok, "{out}");
    grant(app, email, 15, "Trial");
    let c = sign_in().await;
    assert_eq!(quota(&c).await, 3000);
    let bought = c.buy_plan("plus-50-month", None).await.unwrap();
    assert_eq!(bought["balance"], 5);
    assert_eq!(quota(&c).await, 50 * GB);
    let big = json!({"title": "Novel", "body": "x".repeat(6000), "created_at": "2026-11-01T10:00:00Z", "updated_at": "2026-11-01T10:00:00Z"});
    let r = c
        .push(
            "notes",
            json!([{"id": "novel", "op": "put", "body": big}]),
            None,
        )
        .await
        .unwrap();
    let novel_version = r["results"][0]["version"].as_str().unwrap().to_owned();

    // A week before the end, the owner is told: the credits are short of the renewal.
    assert_eq!(commerce.maintenance().await.unwrap().reminded, 0);
    app.advance(DAY * 24);
    let done = commerce.maintenance().await.unwrap();
    assert_eq!((done.reminded, done.renewed, done.ended), (1, 0, 0));
    let mail = app
        .smtp
        .nth_with(email, "unless it can renew", 1)
        .await
        .body();
    assert!(
        mail.contains("takes 10 credits and your balance is 5"),
        "{mail}"
    );
    // Told once.
    assert_eq!(commerce.maintenance().await.unwrap().reminded, 0);

    // Credits arrive; at the end of the month the plan renews from them.
    grant(app, email, 10, "Top-up by hand");
    app.advance(DAY * 7);
    let done = commerce.maintenance().await.unwrap();
    assert_eq!((done.renewed, done.ended), (1, 0));
    // A second run (another node) charges nothing more.
    assert_eq!(commerce.maintenance().await.unwrap().renewed, 0);
    let mail = app
        .smtp
        .nth_with(email, "was renewed until", 1)
        .await
        .body();
    assert!(
        mail.contains("for 10 credits. Your balance is 5 credits"),
        "{mail}"
    );
    let c = sign_in().await;
    assert_eq!(balance(&c).await, 5);
    let history = c.purchases().await.unwrap();
    assert_eq!(history["purchases"][0]["kind"], "renewal");
    assert_eq!(history["purchases"][0]["price"], 10);
    assert_eq!(quota(&c).await, 50 * GB);

    // The owner turns renewal off: at the end of the period it ends, and the account is
    // back on its operator's 3000 bytes, holding 6000+.
    let sub = c.set_auto_renew(false).await.unwrap();
    assert_eq!(sub["auto_renew"], false);
    app.advance(DAY * 31);
    let done = commerce.maintenance().await.unwrap();
    assert_eq!((done.reminded, done.renewed, done.ended), (0, 0, 1));
    let mail = app
        .smtp
        .nth_with(email, "You turned its renewal off", 1)
        .await
        .body();
    assert!(mail.contains("You turned its renewal off"), "{mail}");
    let c = sign_in().await;
    let usage = c.usage().await.unwrap();
    assert_eq!(usage["quota_bytes"], 3000);
    assert_eq!(usage["plan"], "free");
    assert_eq!(c.plans().await.unwrap()["current"], Value::Null);
    assert_eq!(balance(&c).await, 5, "an ended plan costs nothing");

    // Over quota: everything is kept and readable, nothing new is stored…
    assert_eq!(
        c.item("notes", "novel").await.unwrap()["version"],
        json!(novel_version)
    );
    let e = c
        .push(
            "notes",
            json!([{"id": "more", "op": "put", "body": note("More")}]),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("quota_exceeded"));
    assert_eq!(e.status(), Some(StatusCode::INSUFFICIENT_STORAGE));
    // …until space is freed: deleted, then emptied from the recycle bin.
    c.push(
        "notes",
        json!([{"id": "novel", "op": "delete", "base_version": novel_version}]),
        None,
    )
    .await
    .unwrap();
    let bin = c.recycle_bin(Some("notes")).await.unwrap();
    c.purge(bin[0]["id"].as_str().unwrap()).await.unwrap();
    c.push(
        "notes",
        json!([{"id": "more", "op": "put", "body": note("More")}]),
        None,
    )
    .await
    .unwrap();
}

async fn the_plan_page_buys_and_stops_a_plan_in_a_browser(app: &TestApp) {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let email = "bea@example.com";
    app.signup_email(email).await;
    browser.goto(&app.url("/web/plan")).await;
    browser.fill("#login", email).await;
    browser.fill("#password", PASSWORD).await;
    browser.click("#sign-in").await;
    let page = browser.until_text("Plan and credits").await;
    assert!(page.contains("Free plan: 5.0 GB"), "{page}");
    assert!(page.contains("Balance: 0 credits"), "{page}");

    // Without credits, choosing a plan says why it cannot be bought.
    browser.click("#buy-plus-50").await;
    let page = browser.until_text("Not enough credits").await;
    assert!(page.contains("needs 100 and the balance is 0"), "{page}");

    grant(app, email, 120, "Welcome to Mica");
    browser.goto(&app.url("/web/plan")).await;
    let page = browser.until_text("Balance: 120 credits").await;
    assert!(
        page.contains("From the operator: Welcome to Mica"),
        "{page}"
    );
    browser.click("#buy-plus-50").await;
    let page = browser.until_text("your new storage is ready").await;
    assert!(page.contains("Mica+ 50 GB, 50.0 GB, paid until"), "{page}");
    assert!(page.contains("It renews then for 100 credits"), "{page}");
    assert!(page.contains("Balance: 20 credits"), "{page}");
    assert!(page.contains("of 50.0 GB used"), "{page}");
    browser.screenshot("plan").await;

    browser.click("#renew-off").await;
    let page = browser.until_text("will not renew").await;
    assert!(page.contains("It ends then."), "{page}");
    let t = app.client.sign_in(email, PASSWORD, None).await.unwrap();
    let c = app.client.with_token(t.access_token);
    assert_eq!(c.plans().await.unwrap()["current"]["auto_renew"], false);
    assert_eq!(balance(&c).await, 20);

    // The theme store: a free theme, got and downloaded from the page.
    let (zip, _, preview) = theme_files("sand");
    publish(
        app,
        &[
            "--id",
            "sand",
            "--name",
            "Sand",
            "--author",
            "Mica",
            "--tags",
            "warm",
            "--package",
            zip.to_str().unwrap(),
            "--preview",
            preview.to_str().unwrap(),
        ],
    );
    browser.click("nav a[href='/web/themes']").await;
    let page = browser.until_text("Get, free").await;
    assert!(page.contains("Sand") && page.contains("by Mica"), "{page}");
    browser.click("#get-sand").await;
    let page = browser.until_text("It is yours").await;
    assert!(page.contains("Download"), "{page}");
    assert_eq!(
        c.purchases().await.unwrap()["purchases"][0]["product"],
        "sand"
    );

    // Feedback from the browser; a refused one keeps what was typed; the answer shows there.
    browser.click("nav a[href='/web/feedback']").await;
    browser.until_text("Tell us").await;
    browser.fill("#subject", "Dark mode for the portal").await;
    browser
        .fill("#description", "The pages are too bright at night.")
        .await;
    browser.click("#send").await;
    browser.until_text("Sent. The answer comes by mail").await;
    let page = browser.until_text("Dark mode for the portal").await;
    assert!(page.contains("open"), "{page}");
    let mine = c.feedback().await.unwrap();
    assert_eq!(mine[0]["app"], "Mica web");
    let id = mine[0]["id"].as_str().unwrap().to_owned();
    let (ok, out) = app.admin(&[
        "feedback",
        "reply",
        &id,
        "--operator",
        "ops-ann",
        "--message",
        "It is on our list for the spring.",
        "--close",
    ]);
    assert!(ok, "{out}");
    browser.goto(&app.url("/web/feedback")).await;
    let page = browser
        .until_text("It is on our list for the spring.")
        .await;
    assert!(page.contains("closed"), "{page}");
    browser.quit().await;
}

async fn a_device_reports_a_bug_with_its_log_and_the_operator_answers(app: &TestApp) {
    let email = "felix@example.com";
    let (c, account) = owner(app, email).await;
    let mut laptop = Agent::new(app, "felix-laptop", 71, "true");
    laptop.link_and_run(&c, email).await;
    laptop.kill();
    // The agent's own log, as it wrote it, goes with the report.
    let log = laptop.root_path().join("agent.log");
    let log_bytes = std::fs::read(&log).unwrap();
    assert!(!log_bytes.is_empty());
    let out = laptop
        .command(&[
            "feedback",
            "--subject",
            "Sync stops after sleep",
            "--message",
            "After the laptop wakes up, notes stop syncing.\nSteps: close the lid, open it.",
            "--app",
            "Mica agent 0.1",
            "--attach",
            log.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("sent report fbk_"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The sender sees it, with the device the server knows it came from.
    let mine = c.feedback().await.unwrap();
    assert_eq!(mine.as_array().unwrap().len(), 1);
    let report = &mine[0];
    let id = report["id"].as_str().unwrap().to_owned();
    assert_eq!(report["kind"], "bug");
    assert_eq!(report["state"], "open");
    assert_eq!(report["app"], "Mica agent 0.1");
    assert_eq!(report["device"]["name"], "felix-laptop");
    assert_eq!(report["device"]["model"], "Test Laptop 14");
    assert_eq!(report["device"]["os_version"], "Debian 13");
    assert_eq!(report["attachments"][0]["name"], "agent.log");
    assert_eq!(report["attachments"][0]["media_type"], "text/plain");
    assert_eq!(report["attachments"][0]["size"], json!(log_bytes.len()));
    if app.backend == crate::support::Backend::Sqlite {
        let dump = app.dump().await;
        assert!(
            !dump.contains("notes stop syncing")
                && !dump.contains("Sync stops after sleep")
                && !dump.contains("agent.log"),
            "the report and its attachments' names are sealed at rest"
        );
    }

    // The operator reads it, saves the log, answers and closes it; the owner is told.
    let (ok, out) = app.admin(&["feedback", "list"]);
    assert!(
        ok && out.contains(&id) && out.contains("Sync stops after sleep"),
        "{out}"
    );
    let (ok, out) = app.admin(&["feedback", "show", &id]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("account          {account}")),
        "{out}"
    );
    assert!(
        out.contains("felix-laptop (Test Laptop 14, Debian 13"),
        "{out}"
    );
    assert!(
        out.contains("attachment 1     agent.log (text/plain"),
        "{out}"
    );
    assert!(out.contains("Steps: close the lid, open it."), "{out}");
    let saved = laptop.root_path().join("saved.log");
    let (ok, out) = app.admin(&[
        "feedback",
        "attachment",
        &id,
        "1",
        "--out",
        saved.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert_eq!(std::fs::read(&saved).unwrap(), log_bytes);
    // Never over a file that exists.
    let (ok, out) = app.admin(&[
        "feedback",
        "attachment",
        &id,
        "1",
        "--out",
        saved.to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("cannot create"), "{out}");
    let (ok, out) = app.admin(&["feedback", "attachment", &id, "2", "--out", "/tmp/x"]);
    assert!(!ok && out.contains("not found"), "{out}");
    let (ok, out) = app.admin(&[
        "feedback",
        "reply",
        &id,
        "--operator",
        "ops-ann",
        "--message",
        "Thank you: this is fixed in version 0.2.",
        "--close",
    ]);
    assert!(ok && out.contains("state            closed"), "{out}");
    let mail = app.smtp.nth_with(email, "fixed in version 0.2", 1).await;
    assert!(
        mail.body().contains("Sync stops after sleep"),
        "{}",
        mail.body()
    );
    let mine = c.feedback().await.unwrap();
    assert_eq!(mine[0]["state"], "closed");
    assert_eq!(mine[0]["reply"], "Thank you: this is fixed in version 0.2.");
    let (ok, out) = app.admin(&["feedback", "list"]);
    assert!(ok && out.contains("no open reports"), "{out}");
    let (ok, out) = app.admin(&["log", "--account", email]);
    assert!(ok && out.contains("feedback_answered_closed"), "{out}");
    assert!(
        !out.contains("Sync stops after sleep"),
        "the operator's log outlives the account: it keeps none of what the person wrote: {out}"
    );
    // The device reads the answer too.
    let out = laptop.command(&["reports"]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains(&id) && said.contains("closed"),
        "{said}"
    );
    assert!(
        said.contains("answer: Thank you: this is fixed in version 0.2."),
        "{said}"
    );
    let (ok, out) = app.admin(&["feedback", "show", "fbk_nothing"]);
    assert!(!ok && out.contains("not found"), "{out}");

    // Bad reports are refused, saying why, and nothing is stored.
    let report = |attachments: Value| json!({"kind": "bug", "subject": "It broke", "description": "It broke.", "attachments": attachments});
    let b64 = |n: usize| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(vec![b'x'; n])
    };
    let file =
        |name: &str, n: usize| json!({"name": name, "media_type": "text/plain", "content": b64(n)});
    for (body, status, code) in [
        (
            json!({"kind": "rant", "subject": "x", "description": "y"}),
            422,
            "invalid_input",
        ),
        (
            json!({"kind": "bug", "subject": " ", "description": "y"}),
            422,
            "invalid_input",
        ),
        (
            json!({"kind": "bug", "subject": "a\u{7}b", "description": "y"}),
            422,
            "invalid_input",
        ),
        (
            report(Value::Array(vec![file("a.log", 10); 6])),
            422,
            "invalid_input",
        ),
        (report(json!([file("../a.log", 10)])), 422, "invalid_input"),
        (
            report(json!([{"name": "a.log", "media_type": "text/plain", "content": "%%%"}])),
            422,
            "invalid_input",
        ),
        (
            report(json!([{"name": "a.log", "media_type": "text", "content": "eA=="}])),
            422,
            "invalid_input",
        ),
        (
            report(json!([file("big.log", (2 << 20) + 1)])),
            413,
            "payload_too_large",
        ),
        (
            report(json!([
                file("a.log", 1_500_000),
                file("b.log", 1_500_000),
                file("c.log", 1_500_000)
            ])),
            413,
            "payload_too_large",
        ),
    ] {
        let e = c.send_feedback(&body).await.unwrap_err();
        assert_eq!(
            (e.status().map(|s| s.as_u16()), e.code()),
            (Some(status), Some(code)),
            "{e:?}"
        );
    }
    assert_eq!(c.feedback().await.unwrap().as_array().unwrap().len(), 1);

    // From a browser or an app that is not a linked device: no device, and a daily limit.
    let other = app.signup_email("gina@example.com").await;
    let g = app.client.with_token(&other.access_token);
    assert_eq!(
        g.feedback().await.unwrap(),
        json!([]),
        "one's own reports only"
    );
    let r = g
        .send_feedback(&json!({"kind": "idea", "subject": "Dark mode", "description": "Please."}))
        .await
        .unwrap();
    assert!(r.get("device").is_none(), "{r}");
    for _ in 1..20 {
        g.send_feedback(&json!({"kind": "idea", "subject": "More", "description": "Yes."}))
            .await
            .unwrap();
    }
    let e = g
        .send_feedback(&json!({"kind": "idea", "subject": "More", "description": "Yes."}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("rate_limited"));

    // The owner's data export holds the report, its answer and its log, and the wallet.
    grant(app, email, 12, "Sorry for the trouble");
    let ready = crate::export::export_when_ready(app, c.token().unwrap(), email).await;
    let resp = app
        .http
        .get(app.url(ready["download"].as_str().unwrap()))
        .bearer_auth(c.token().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let zip = laptop.root_path().join("export.zip");
    std::fs::write(&zip, resp.bytes().await.unwrap()).unwrap();
    let reports: Value =
        serde_json::from_str(&crate::export::member(&zip, "commerce/feedback.json")).unwrap();
    assert_eq!(reports[0]["subject"], "Sync stops after sleep");
    assert_eq!(
        reports[0]["reply"],
        "Thank you: this is fixed in version 0.2."
    );
    assert_eq!(
        crate::export::member_bytes(&zip, &format!("commerce/feedback/{id}/1-agent.log")),
        log_bytes
    );
    let wallet: Value =
        serde_json::from_str(&crate::export::member(&zip, "commerce/wallet.json")).unwrap();
    assert_eq!(wallet["balance"], 12);
    assert_eq!(
        wallet["entries"][0]["memo"],
        "From the operator: Sorry for the trouble"
    );
    app.advance(DAY + Duration::from_secs(1));
    let t = app
        .client
        .sign_in("gina@example.com", PASSWORD, None)
        .await
        .unwrap();
    app.client
        .with_token(&t.access_token)
        .send_feedback(&json!({"kind": "idea", "subject": "Next day", "description": "Yes."}))
        .await
        .unwrap();
}

/// A theme package (a zip's signature, then bytes) and a PNG preview, in a folder of their own.
fn theme_files(tag: &str) -> (std::path::PathBuf, Vec<u8>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("mica-themes-{tag}-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut package = b"PK\x03\x04".to_vec();
    package.extend_from_slice(tag.as_bytes());
    package.extend((0..50_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    let path = dir.join(format!("{tag}.zip"));
    std::fs::write(&path, &package).unwrap();
    let mut png = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(8, 8, image::Rgb([20, 40, 90]))
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    let preview = dir.join("preview.png");
    std::fs::write(&preview, png.into_inner()).unwrap();
    (path, package, preview)
}

fn publish(app: &TestApp, args: &[&str]) -> String {
    let mut all = vec!["theme", "publish"];
    all.extend_from_slice(args);
    let (ok, out) = app.admin(&all);
    assert!(ok, "{out}");
    out
}

async fn the_theme_store_sells_a_theme_once_for_every_device(app: &TestApp) {
    let (aurora_zip, aurora_bytes, preview) = theme_files("aurora");
    let (paper_zip, paper_bytes, _) = theme_files("paper");
    let out = publish(
        app,
        &[
            "--id",
            "aurora",
            "--name",
            "Aurora",
            "--author",
            "Nordlys Studio",
            "--description",
            "Dark blues and greens, like the northern lights.",
            "--tags",
            "dark,Northern",
            "--price",
            "30",
            "--package",
            aurora_zip.to_str().unwrap(),
            "--preview",
            preview.to_str().unwrap(),
        ],
    );
    assert!(
        out.contains("published aurora") && out.contains("v1"),
        "{out}"
    );
    publish(
        app,
        &[
            "--id",
            "paper",
            "--name",
            "Paper",
            "--author",
            "Mica",
            "--tags",
            "light",
            "--package",
            paper_zip.to_str().unwrap(),
        ],
    );
    // The operator's mistakes are refused, saying why.
    let (ok, out) = app.admin(&[
        "theme",
        "publish",
        "--id",
        "Bad Id",
        "--name",
        "x",
        "--author",
        "y",
        "--package",
        paper_zip.to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("lowercase"), "{out}");
    let (ok, out) = app.admin(&[
        "theme",
        "publish",
        "--id",
        "notzip",
        "--name",
        "x",
        "--author",
        "y",
        "--package",
        preview.to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("zip"), "{out}");

    let email = "theo@example.com";
    let t = app.signup_email(email).await;
    let phone = app.client.with_token(&t.access_token);
    let list = phone.themes(None).await.unwrap();
    let names: Vec<&str> = list["themes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Aurora", "Paper"]);
    let aurora = &list["themes"][0];
    assert_eq!(aurora["price"], 30);
    assert_eq!(aurora["owned"], false);
    assert_eq!(aurora["preview"], true);
    assert_eq!(aurora["tags"], json!(["dark", "northern"]));
    assert_eq!(aurora["size"], json!(aurora_bytes.len()));
    let found = |v: Value| -> Vec<String> {
        v["themes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        found(phone.themes(Some("NORTHERN")).await.unwrap()),
        ["aurora"]
    );
    assert_eq!(
        found(phone.themes(Some("light paper")).await.unwrap()),
        ["paper"]
    );
    assert_eq!(
        found(phone.themes(Some("mica lights")).await.unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(
        found(phone.themes(Some("%")).await.unwrap()),
        Vec::<String>::new()
    );

    // A priced theme downloads only once the account has it; a free one for anyone.
    let e = phone.theme_package("aurora").await.unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(StatusCode::FORBIDDEN), Some("theme_not_owned"))
    );
    assert_eq!(phone.theme_package("paper").await.unwrap(), paper_bytes);
    let e = phone.buy_theme("aurora", Some("t-1")).await.unwrap_err();
    assert_eq!(e.code(), Some("insufficient_credits"));
    grant(app, email, 50, "Welcome");
    let bought = phone.buy_theme("aurora", Some("t-1")).await.unwrap();
    assert_eq!(bought["balance"], 20);
    assert_eq!(bought["purchase"]["name"], "Aurora");
    let again = phone.buy_theme("aurora", Some("t-1")).await.unwrap();
    assert_eq!(again["replayed"], true);
    let e = phone.buy_theme("aurora", Some("t-2")).await.unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(StatusCode::CONFLICT), Some("already_owned"))
    );
    assert_eq!(balance(&phone).await, 20, "bought once");
    phone.buy_theme("paper", None).await.unwrap();
    assert_eq!(balance(&phone).await, 20, "a free theme costs nothing");
    let history = phone.purchases().await.unwrap();
    let kinds: Vec<(String, i64)> = history["purchases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["product"].as_str().unwrap().to_owned(),
                p["price"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(kinds, [("paper".to_owned(), 0), ("aurora".to_owned(), 30)]);

    // Every device of the account has it: the laptop signs in and downloads the same bytes.
    let t2 = app.client.sign_in(email, PASSWORD, None).await.unwrap();
    let laptop = app.client.with_token(&t2.access_token);
    let list = laptop.themes(None).await.unwrap();
    assert!(list["themes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["owned"] == true));
    assert_eq!(laptop.theme_package("aurora").await.unwrap(), aurora_bytes);
    let sha = list["themes"][0]["sha256"].as_str().unwrap().to_owned();
    let r = app
        .http
        .get(app.url("/api/v1/themes/aurora/package"))
        .bearer_auth(&t2.access_token)
        .header("if-none-match", format!("\"{sha}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_MODIFIED,
        "the device has this version"
    );
    let r = app
        .http
        .get(app.url("/api/v1/themes/aurora/preview"))
        .bearer_auth(&t2.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "image/png");

    // Another account has bought nothing.
    let other = app.signup_email("olga@example.com").await;
    let o = app.client.with_token(&other.access_token);
    let e = o.theme_package("aurora").await.unwrap_err();
    assert_eq!(e.code(), Some("theme_not_owned"));

    // Withdrawn: no longer offered, still downloaded by those who have it.
    let (ok, out) = app.admin(&["theme", "withdraw", "aurora"]);
    assert!(ok, "{out}");
    assert_eq!(found(o.themes(None).await.unwrap()), ["paper"]);
    assert_eq!(
        o.buy_theme("aurora", None).await.unwrap_err().code(),
        Some("not_found")
    );
    let mine = laptop.themes(None).await.unwrap();
    assert_eq!(mine["themes"][0]["withdrawn"], true);
    assert_eq!(laptop.theme_package("aurora").await.unwrap(), aurora_bytes);
    let (ok, out) = app.admin(&["theme", "list"]);
    assert!(ok && out.contains("(withdrawn)"), "{out}");

    // A new version reaches those who have it.
    let (v2_zip, v2_bytes, _) = theme_files("aurora2");
    let out = publish(
        app,
        &[
            "--id",
            "aurora",
            "--name",
            "Aurora",
            "--author",
            "Nordlys Studio",
            "--tags",
            "dark,northern",
            "--price",
            "30",
            "--package",
            v2_zip.to_str().unwrap(),
        ],
    );
    assert!(out.contains("v2"), "{out}");
    assert_eq!(phone.theme_package("aurora").await.unwrap(), v2_bytes);
    let mine = phone.themes(Some("aurora")).await.unwrap();
    assert_eq!(
        mine["themes"][0]["preview"], true,
        "a new version keeps its preview"
    );
    assert_eq!(
        mine["themes"][0]["description"], "Dark blues and greens, like the northern lights.",
        "and its description"
    );
    assert_eq!(
        found(o.themes(None).await.unwrap()),
        ["paper"],
        "a new version of a withdrawn theme stays withdrawn"
    );
    let (ok, out) = app.admin(&["theme", "offer", "aurora"]);
    assert!(ok, "{out}");

    // Ids need not be names; the store lists by name, whatever the case.
    let (zip, _, _) = theme_files("ocean");
    publish(
        app,
        &[
            "--id",
            "ocean-dark",
            "--name",
            "ocean Dark",
            "--author",
            "Mica",
            "--price",
            "5",
            "--package",
            zip.to_str().unwrap(),
        ],
    );
    let names: Vec<String> = o.themes(None).await.unwrap()["themes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["Aurora", "ocean Dark", "Paper"]);

    // A price changed between the page and the purchase: nothing is bought.
    grant(app, "olga@example.com", 10, "Welcome");
    let r = app
        .http
        .post(app.url("/api/v1/themes/ocean-dark/purchase?price=0"))
        .bearer_auth(&other.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (409, "price_changed".into()));
    assert_eq!(balance(&o).await, 10);
    let r = app
        .http
        .post(app.url("/api/v1/themes/ocean-dark/purchase?price=5"))
        .bearer_auth(&other.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(balance(&o).await, 5);
}
