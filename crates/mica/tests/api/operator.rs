//! What the operator does to an account with the real `mica admin account` command: look it
//! up, suspend it (its sessions end within seconds on the running server, nobody signs in,
//! app passwords stop, devices and activation locks stay), and reinstate it.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::devices::link_http;
use crate::on_both_backends;
use crate::support::{TestApp, PASSWORD};
use crate::webdav::{basic, with_app_password};

on_both_backends!(
    an_operator_suspends_and_reinstates_an_account,
    a_sign_in_half_done_cannot_outlive_a_suspension,
    an_operator_deletes_an_account_for_good,
);

async fn an_operator_suspends_and_reinstates_an_account(app: &TestApp) {
    let email = "sue@example.com";
    let (account, token, app_password) = with_app_password(app, email).await;
    let c = app.client.with_token(&token);
    let signed_in = app.client.sign_in(email, PASSWORD, None).await.unwrap();
    let (device_id, device) = link_http(app, &c, 95).await;
    let dav = app.url(&format!("/dav/files/{account}/"));
    let propfind = Method::from_bytes(b"PROPFIND").unwrap();
    let webdav = || {
        app.http
            .request(propfind.clone(), &dav)
            .header("authorization", basic(&account, &app_password))
            .header("depth", "0")
            .send()
    };
    assert_eq!(webdav().await.unwrap().status().as_u16(), 207);

    // The operator finds the account by any of its identifiers; addresses are masked.
    let (ok, out) = app.admin(&["account", "show", email]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("account          {account}")),
        "{out}"
    );
    assert!(out.contains("state            active"), "{out}");
    assert!(!out.contains(email), "the address is masked: {out}");
    let (ok, out) = app.admin(&["account", "show", "nobody@example.com"]);
    assert!(!ok && out.contains("no account"), "{out}");

    // A suspension needs a reason (the owner is told it) and an operator.
    let (ok, out) = app.admin(&[
        "account",
        "suspend",
        email,
        "--operator",
        "ops-ann",
        "--reason",
        " ",
    ]);
    assert!(!ok && out.contains("reason"), "{out}");
    // One entry per line in the operator's log: a reason cannot start a forged one.
    let (ok, out) = app.admin(&[
        "account",
        "suspend",
        email,
        "--operator",
        "ops-ann",
        "--reason",
        "spam\n2026-12-01T00:00:00Z  account_reinstated",
    ]);
    assert!(!ok && out.contains("on one line"), "{out}");
    let (ok, out) = app.admin(&[
        "account",
        "suspend",
        &account,
        "--operator",
        "ops-ann",
        "--reason",
        "it sent spam through shared links",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("state            suspended"), "{out}");
    assert!(out.contains("sessions         0"), "{out}");
    let mail = app.smtp.nth_with(email, "suspended your account", 1).await;
    assert!(mail.body().contains("it sent spam through shared links"));

    // The running server stops the account's access tokens within seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.me().await {
            Err(e) if e.code() == Some("unauthenticated") => break,
            other => {
                assert!(Instant::now() < deadline, "still signed in: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let e = app
        .client
        .refresh(&signed_in.refresh_token)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("invalid_refresh_token"), "{e:?}");
    // Only the right password learns why; a wrong one is told nothing more.
    let e = app.client.sign_in(email, PASSWORD, None).await.unwrap_err();
    assert_eq!(e.code(), Some("account_suspended"), "{e:?}");
    let e = app
        .client
        .sign_in(email, "Wrong-password-1!", None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("invalid_credentials"), "{e:?}");
    assert_eq!(webdav().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    // The device stays linked, and bound to the account: nobody else can take it.
    device
        .raw(Method::POST, "/api/v1/device/heartbeat", Some(json!({})))
        .await
        .unwrap();
    let thief = app.signup_email("thief@example.com").await;
    let thief = app.client.with_token(&thief.access_token);
    let e = thief
        .raw(
            Method::POST,
            "/api/v1/devices",
            Some(json!({
                "name": "mine now", "model": "Pixel", "os_version": "15", "app_version": "1",
                "hardware": { "imeis": [crate::devices::imei(95)], "serial": "S95" },
                "find_device": true,
            })),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("activation_locked"), "{e:?}");
    // Suspending it again says what is wrong.
    let (ok, out) = app.admin(&[
        "account",
        "suspend",
        email,
        "--operator",
        "ops-ann",
        "--reason",
        "again",
    ]);
    assert!(!ok && out.contains("only an active account"), "{out}");

    // Reinstated: the owner signs in again, everything is where it was, and the security log
    // names who decided what.
    let (ok, out) = app.admin(&["account", "reinstate", email, "--operator", "ops-bo"]);
    assert!(ok && out.contains("state            active"), "{out}");
    app.smtp.nth_with(email, "is active again", 1).await;
    let t = app.client.sign_in(email, PASSWORD, None).await.unwrap();
    let c = app.client.with_token(&t.access_token);
    assert_eq!(
        c.raw(Method::GET, &format!("/api/v1/devices/{device_id}"), None)
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(webdav().await.unwrap().status().as_u16(), 207);
    let log = c
        .raw(Method::GET, "/api/v1/me/security-events", None)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        log.contains("account_suspended") && log.contains("by ops-ann: it sent spam"),
        "{log}"
    );
    assert!(
        log.contains("account_reinstated") && log.contains("by ops-bo"),
        "{log}"
    );
    let (ok, out) = app.admin(&["account", "reinstate", email, "--operator", "ops-bo"]);
    assert!(!ok && out.contains("not suspended"), "{out}");
    // Refused attempts leave no trace in the operator's log; the decisions do, newest first.
    let (ok, out) = app.admin(&["log", "--account", &account]);
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].contains("account_reinstated") && lines[0].contains("by ops-bo"),
        "{out}"
    );
    assert!(
        lines[1].contains("account_suspended") && lines[1].contains("by ops-ann: it sent spam"),
        "{out}"
    );

    // A quota: set, shown, enforced, and back to the default.
    let (ok, out) = app.admin(&["account", "quota", email, "--operator", "ops-cy"]);
    assert!(!ok, "a quota needs --bytes or --default: {out}");
    let (ok, out) = app.admin(&[
        "account",
        "quota",
        email,
        "--bytes=-5",
        "--operator",
        "ops-cy",
    ]);
    assert!(!ok && out.contains("0 bytes or more"), "{out}");
    let huge = (1i64 << 60).to_string();
    let (ok, out) = app.admin(&[
        "account",
        "quota",
        email,
        "--bytes",
        &huge,
        "--operator",
        "ops-cy",
    ]);
    assert!(!ok && out.contains("up to"), "{out}");
    let (ok, out) = app.admin(&[
        "account",
        "quota",
        email,
        "--bytes",
        "100",
        "--operator",
        "ops-cy",
    ]);
    assert!(
        ok && out.contains("storage          0 of 100 bytes"),
        "{out}"
    );
    let big = serde_json::json!([{ "id": "n1", "op": "put",
        "body": crate::sync::note(&"x".repeat(200)) }]);
    let e = c.push("notes", big.clone(), None).await.unwrap_err();
    assert_eq!(e.code(), Some("quota_exceeded"), "{e}");
    let (ok, out) = app.admin(&[
        "account",
        "quota",
        &account,
        "--default",
        "--operator",
        "ops-cy",
    ]);
    assert!(ok && out.contains("(the default quota)"), "{out}");
    c.push("notes", big, None).await.unwrap();
    let (_, out) = app.admin(&["log", "--account", email, "--limit", "2"]);
    assert!(
        out.lines().next().unwrap_or("").contains("quota_set")
            && out.contains("default")
            && out.contains(": 100"),
        "{out}"
    );
}

/// A two-step sign-in begun before the suspension (its challenge lives ten minutes) does not
/// open a session after it.
async fn a_sign_in_half_done_cannot_outlive_a_suspension(app: &TestApp) {
    use crate::security::{challenge, enable_totp, totp_at};
    let email = "tom@example.com";
    let t = app.signup_email(email).await;
    let c = app.client.with_token(&t.access_token);
    let (secret, _) = enable_totp(app, &c, email).await;
    let (id, _) = challenge(app.client.sign_in(email, PASSWORD, None).await.unwrap_err());
    let (ok, out) = app.admin(&[
        "account",
        "suspend",
        email,
        "--operator",
        "ops-ann",
        "--reason",
        "abuse reports",
    ]);
    assert!(ok, "{out}");
    app.advance(Duration::from_secs(30));
    let e = app
        .client
        .sign_in_second_factor(&id, "totp", &totp_at(app, &secret, 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("account_suspended"), "{e:?}");
}

/// An erasure request (or an account closed for abuse), suspended or not: the owner is told,
/// the running server's job removes everything, the address can sign up again and the device
/// is free.
async fn an_operator_deletes_an_account_for_good(app: &TestApp) {
    let email = "ulla@example.com";
    let t = app.signup_email(email).await;
    let c = app.client.with_token(&t.access_token);
    link_http(app, &c, 96).await;
    let (ok, out) = app.admin(&[
        "account",
        "suspend",
        email,
        "--operator",
        "ops-ann",
        "--reason",
        "asked to be erased",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = app.admin(&["account", "delete", email, "--operator", "ops-ann"]);
    assert!(!ok, "a deletion needs a reason: {out}");
    let (ok, out) = app.admin(&[
        "account",
        "delete",
        email,
        "--operator",
        "ops-ann",
        "--reason",
        "the owner asked us to erase it (ticket 4411)",
    ]);
    assert!(ok && out.contains("state            deleting"), "{out}");
    let mail = app
        .smtp
        .nth_with(email, "is deleting your account", 1)
        .await;
    assert!(mail.body().contains("ticket 4411"));
    let (ok, out) = app.admin(&[
        "account",
        "delete",
        email,
        "--operator",
        "ops-ann",
        "--reason",
        "again",
    ]);
    assert!(!ok && out.contains("already being deleted"), "{out}");
    // The command ran on the machine's own clock; the server's job runner finds the job due.
    app.advance(Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out) = app.admin(&["account", "show", email]);
        if out.contains("no account") {
            break;
        }
        assert!(Instant::now() < deadline, "still there: {out}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The address is free again, and so is the device.
    let again = app.signup_email(email).await;
    assert_ne!(again.account_id, t.account_id);
    let c = app.client.with_token(&again.access_token);
    link_http(app, &c, 96).await;
    // The operator's log outlives the account: it proves the erasure was carried out.
    let (ok, out) = app.admin(&["log", "--account", &t.account_id]);
    assert!(ok, "{out}");
    assert!(
        out.contains("account_deleted")
            && out.contains("by ops-ann: the owner asked us to erase it (ticket 4411)"),
        "{out}"
    );
    let (ok, out) = app.admin(&["log"]);
    assert!(ok && out.contains("account_suspended"), "{out}");
}
