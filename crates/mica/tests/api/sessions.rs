//! Sign-in, token refresh with rotation and reuse detection, sessions, login records.

use std::time::{Duration, Instant};

use mica_client::Device;

use crate::on_both_backends;
use crate::signup::futures_join_all;
use crate::support::{TestApp, PASSWORD};

on_both_backends!(
    wrong_password_and_unknown_account_look_the_same,
    refresh_rotates_and_reuse_revokes_the_family,
    concurrent_refresh_with_one_token_succeeds_once,
    access_tokens_expire_and_refresh_renews_them,
    sessions_are_listed_and_revoked,
    sign_out_everywhere_ends_every_session,
    login_records_show_successes_and_failures,
    a_sign_in_from_a_new_device_alerts_the_owner,
);

async fn wrong_password_and_unknown_account_look_the_same(app: &TestApp) {
    let t = app.signup_email("kim@example.com").await;
    let wrong = app
        .client
        .sign_in("kim@example.com", "Wrong-password-1", None)
        .await
        .unwrap_err();
    let unknown = app
        .client
        .sign_in("nobody@example.com", "Wrong-password-1", None)
        .await
        .unwrap_err();
    let unknown_id = app
        .client
        .sign_in("1000000001", "Wrong-password-1", None)
        .await
        .unwrap_err();
    assert_eq!(wrong.to_string(), unknown.to_string());
    assert_eq!(wrong.to_string(), unknown_id.to_string());
    assert_eq!(wrong.status().map(|s| s.as_u16()), Some(401));

    // Same cost: a missing account is checked against a dummy argon2id hash. Without it the
    // unknown case would answer in a fraction of the time.
    let time = |login: &'static str| {
        let c = app.client.clone();
        async move {
            let mut v = Vec::new();
            for _ in 0..3 {
                let t0 = Instant::now();
                let _ = c.sign_in(login, "Wrong-password-1", None).await;
                v.push(t0.elapsed());
            }
            v.sort();
            v[1]
        }
    };
    // Three more failures keep the real account under its back-off threshold (five).
    let _ = t;
    let known = time("kim@example.com").await;
    let missing = time("ghost@example.com").await;
    let ratio = known.as_secs_f64() / missing.as_secs_f64();
    assert!(
        (0.5..2.0).contains(&ratio),
        "known {known:?} vs missing {missing:?}"
    );
}

async fn refresh_rotates_and_reuse_revokes_the_family(app: &TestApp) {
    let t0 = app.signup_email("lee@example.com").await;
    let t1 = app.client.refresh(&t0.refresh_token).await.unwrap();
    assert_ne!(t1.refresh_token, t0.refresh_token);
    assert_eq!(t1.session_id, t0.session_id);
    let t2 = app.client.refresh(&t1.refresh_token).await.unwrap();
    app.client.with_token(&t2.access_token).me().await.unwrap();

    // An attacker replays the first (already used) token: the whole family dies.
    let err = app.client.refresh(&t0.refresh_token).await.unwrap_err();
    assert_eq!(err.code(), Some("refresh_token_reused"));
    let err = app.client.refresh(&t2.refresh_token).await.unwrap_err();
    assert_eq!(err.code(), Some("invalid_refresh_token"));
    let err = app
        .client
        .with_token(&t2.access_token)
        .me()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("unauthenticated"));
    // Another session of the same account is untouched.
    let other = app
        .client
        .sign_in("lee@example.com", PASSWORD, None)
        .await
        .unwrap();
    app.client
        .with_token(&other.access_token)
        .me()
        .await
        .unwrap();

    let err = app.client.refresh("mrt_not-a-token").await.unwrap_err();
    assert_eq!(err.code(), Some("invalid_refresh_token"));
}

async fn concurrent_refresh_with_one_token_succeeds_once(app: &TestApp) {
    let t = app.signup_email("max@example.com").await;
    let results = futures_join_all((0..5).map(|_| {
        let (c, r) = (app.client.clone(), t.refresh_token.clone());
        async move { c.refresh(&r).await }
    }))
    .await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
}

async fn access_tokens_expire_and_refresh_renews_them(app: &TestApp) {
    let t = app.signup_email("ned@example.com").await;
    let c = app.client.with_token(&t.access_token);
    c.me().await.unwrap();
    app.advance(Duration::from_secs(15 * 60));
    let err = c.me().await.unwrap_err();
    assert_eq!(err.code(), Some("token_expired"));
    assert_eq!(err.status().map(|s| s.as_u16()), Some(401));
    let t2 = app.client.refresh(&t.refresh_token).await.unwrap();
    app.client.with_token(&t2.access_token).me().await.unwrap();
}

async fn sessions_are_listed_and_revoked(app: &TestApp) {
    let first = app.signup_email("ola@example.com").await;
    let phone = Device {
        model: Some("Pixel 8".into()),
        os_version: Some("Android 15".into()),
        client: Some("mica-android 1.0".into()),
    };
    let second = app
        .client
        .sign_in("ola@example.com", PASSWORD, Some(phone))
        .await
        .unwrap();
    let c1 = app.client.with_token(&first.access_token);
    let c2 = app.client.with_token(&second.access_token);

    let list = c1.sessions().await.unwrap();
    assert_eq!(list.len(), 2);
    let mine = list
        .iter()
        .find(|s| s.current)
        .expect("current session flagged");
    assert_eq!(mine.id, first.session_id);
    let other = list.iter().find(|s| !s.current).unwrap();
    assert_eq!(other.id, second.session_id);
    assert_eq!(other.device_model.as_deref(), Some("Pixel 8"));
    assert_eq!(other.os_version.as_deref(), Some("Android 15"));
    assert_eq!(other.ip, "127.0.0.1");
    assert!(other.user_agent.starts_with("mica-client/"));

    c1.revoke_session(&second.session_id).await.unwrap();
    assert_eq!(c2.me().await.unwrap_err().code(), Some("unauthenticated"));
    assert_eq!(
        app.client
            .refresh(&second.refresh_token)
            .await
            .unwrap_err()
            .code(),
        Some("invalid_refresh_token")
    );
    assert_eq!(c1.sessions().await.unwrap().len(), 1);

    // Another account cannot touch this account's sessions.
    let stranger = app.signup_email("pia@example.com").await;
    let err = app
        .client
        .with_token(&stranger.access_token)
        .revoke_session(&first.session_id)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("not_found"));
    c1.me().await.unwrap();

    // Signing out ends the current session.
    c1.sign_out().await.unwrap();
    assert_eq!(c1.me().await.unwrap_err().code(), Some("unauthenticated"));
}

async fn sign_out_everywhere_ends_every_session(app: &TestApp) {
    let a = app.signup_email("quinn@example.com").await;
    let b = app
        .client
        .sign_in("quinn@example.com", PASSWORD, None)
        .await
        .unwrap();
    let c = app
        .client
        .sign_in(&a.account_id, PASSWORD, None)
        .await
        .unwrap();
    let n = app
        .client
        .with_token(&b.access_token)
        .sign_out_everywhere()
        .await
        .unwrap();
    assert_eq!(n, 3);
    for t in [&a, &b, &c] {
        assert_eq!(
            app.client
                .with_token(&t.access_token)
                .me()
                .await
                .unwrap_err()
                .code(),
            Some("unauthenticated")
        );
        assert!(app.client.refresh(&t.refresh_token).await.is_err());
    }
    // Signing in again works.
    let d = app
        .client
        .sign_in("quinn@example.com", PASSWORD, None)
        .await
        .unwrap();
    app.client.with_token(&d.access_token).me().await.unwrap();
}

async fn login_records_show_successes_and_failures(app: &TestApp) {
    let t = app.signup_email("rui@example.com").await;
    let _ = app
        .client
        .sign_in("rui@example.com", "Not-the-password-1", None)
        .await;
    let laptop = Device {
        model: Some("ThinkPad X1".into()),
        os_version: Some("Debian 13".into()),
        client: None,
    };
    app.client
        .sign_in(&t.account_id, PASSWORD, Some(laptop))
        .await
        .unwrap();
    let records = app
        .client
        .with_token(&t.access_token)
        .login_records(None)
        .await
        .unwrap();
    assert_eq!(records.len(), 3, "{records:?}");
    let outcomes: Vec<&str> = records.iter().map(|r| r.outcome.as_str()).collect();
    assert_eq!(outcomes.iter().filter(|o| **o == "success").count(), 2);
    assert!(outcomes.contains(&"wrong_password"));
    assert!(records
        .iter()
        .all(|r| r.ip == "127.0.0.1" && r.user_agent.starts_with("mica-client/")));
    assert!(records
        .iter()
        .any(|r| r.device_model.as_deref() == Some("ThinkPad X1")
            && r.os_version.as_deref() == Some("Debian 13")));
    // Records read the user agent for the person: client, system, kind of device.
    let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
    let resp = app
        .http
        .post(app.url("/api/v1/sessions"))
        .header("user-agent", chrome)
        .json(&serde_json::json!({"login": "rui@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let raw: serde_json::Value = app
        .http
        .get(app.url("/api/v1/me/logins"))
        .bearer_auth(&t.access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let browser = raw
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["user_agent"] == chrome)
        .expect("the browser sign-in");
    assert_eq!(browser["agent"]["client"], "Chrome 120.0.0.0");
    assert_eq!(browser["agent"]["os"], "Windows 10");
    assert_eq!(browser["agent"]["category"], "pc");
    // Another account sees only its own.
    let other = app.signup_email("sam@example.com").await;
    let theirs = app
        .client
        .with_token(&other.access_token)
        .login_records(Some(10))
        .await
        .unwrap();
    assert_eq!(theirs.len(), 1);
}

async fn a_sign_in_from_a_new_device_alerts_the_owner(app: &TestApp) {
    app.signup_email("val@example.com").await;
    // Same client as the sign-up: a known device, no alert.
    app.client
        .sign_in("val@example.com", PASSWORD, None)
        .await
        .unwrap();
    let tablet = Device {
        model: Some("Galaxy Tab S9".into()),
        os_version: Some("Android 14".into()),
        client: None,
    };
    app.client
        .sign_in("val@example.com", PASSWORD, Some(tablet.clone()))
        .await
        .unwrap();
    let alert = app.smtp.nth_to("val@example.com", 2).await;
    assert_eq!(alert.subject(), "New sign-in to your Mica account");
    let body = alert.body();
    assert!(
        body.contains("Galaxy Tab S9 (Android 14)") && body.contains("127.0.0.1"),
        "{body}"
    );
    // The same tablet again: known now, no second alert.
    app.client
        .sign_in("val@example.com", PASSWORD, Some(tablet))
        .await
        .unwrap();
    // A message sent after it proves the queue is drained: it must be the third.
    app.client.forgot_password("val@example.com").await.unwrap();
    let next = app.smtp.nth_to("val@example.com", 3).await;
    assert!(
        next.subject().contains("password reset code"),
        "{}",
        next.subject()
    );
    assert_eq!(
        app.smtp.count_to("val@example.com"),
        3,
        "{:?}",
        app.smtp.all()
    );
}
