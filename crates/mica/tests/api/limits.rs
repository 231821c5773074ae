//! Abuse resistance: back-off per account, limits per IP, with 429 and Retry-After.

use std::time::Duration;

use crate::on_both_backends;
use crate::support::{TestApp, PASSWORD};

on_both_backends!(
    wrong_passwords_back_off_the_account,
    sign_in_attempts_are_limited_per_ip,
    sign_ups_are_limited_per_ip,
);

async fn wrong_passwords_back_off_the_account(app: &TestApp) {
    let t = app.signup_email("wes@example.com").await;
    for _ in 0..5 {
        let err = app
            .client
            .sign_in("wes@example.com", "Wrong-password-1", None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("invalid_credentials"));
    }
    // Locked for 30 s: even the right password waits, whichever identifier is used.
    for login in ["wes@example.com", t.account_id.as_str()] {
        let err = app.client.sign_in(login, PASSWORD, None).await.unwrap_err();
        assert_eq!(err.code(), Some("signin_backoff"));
        assert_eq!(err.status().map(|s| s.as_u16()), Some(429));
        assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    }
    app.advance(Duration::from_secs(31));
    // One more failure doubles the wait.
    app.client
        .sign_in("wes@example.com", "Wrong-password-1", None)
        .await
        .unwrap_err();
    let err = app
        .client
        .sign_in("wes@example.com", PASSWORD, None)
        .await
        .unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(60)));
    app.advance(Duration::from_secs(61));
    app.client
        .sign_in("wes@example.com", PASSWORD, None)
        .await
        .unwrap();
    // A success resets the count.
    app.client
        .sign_in("wes@example.com", "Wrong-password-1", None)
        .await
        .unwrap_err();
    app.client
        .sign_in("wes@example.com", PASSWORD, None)
        .await
        .unwrap();

    // An unknown identifier backs off exactly the same way.
    for _ in 0..5 {
        app.client
            .sign_in("nobody@example.com", "Wrong-password-1", None)
            .await
            .unwrap_err();
    }
    let err = app
        .client
        .sign_in("nobody@example.com", PASSWORD, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("signin_backoff"));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
}

async fn sign_in_attempts_are_limited_per_ip(app: &TestApp) {
    // 30 attempts per 5 minutes per address, spread over many identifiers.
    for i in 0..30 {
        let err = app
            .client
            .sign_in(&format!("user{i}@example.com"), "Wrong-password-1", None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("invalid_credentials"), "attempt {i}");
    }
    let err = app
        .client
        .sign_in("user31@example.com", "Wrong-password-1", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("rate_limited"));
    let wait = err.retry_after().unwrap();
    assert!(wait <= Duration::from_secs(10), "{wait:?}");
    app.advance(wait);
    let err = app
        .client
        .sign_in("user31@example.com", "Wrong-password-1", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("invalid_credentials"));
}

async fn sign_ups_are_limited_per_ip(app: &TestApp) {
    for i in 0..10 {
        app.client
            .signup_email(&format!("new{i}@example.com"), PASSWORD)
            .await
            .unwrap_or_else(|e| panic!("{i}: {e}"));
    }
    let err = app
        .client
        .signup_email("new10@example.com", PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("rate_limited"));
    assert_eq!(err.status().map(|s| s.as_u16()), Some(429));
    assert!(err.retry_after().is_some());
}
