//! Forgot password: codes by email or SMS, identical answers whether or not the account exists,
//! and a reset signs out every session.

use std::time::Duration;

use crate::on_both_backends;
use crate::support::{six_digits, TestApp, PASSWORD};

const NEW_PASSWORD: &str = "Another-long-Secret-42";

on_both_backends!(
    reset_by_email_signs_out_everywhere,
    reset_by_phone_with_sms_code,
    forgot_password_does_not_reveal_accounts,
    reset_codes_are_single_use_and_limited,
    guesses_sent_at_once_cannot_outnumber_a_codes_attempts,
);

async fn reset_by_email_signs_out_everywhere(app: &TestApp) {
    let t = app.signup_email("tia@example.com").await;
    let other = app
        .client
        .sign_in("tia@example.com", PASSWORD, None)
        .await
        .unwrap();

    let r = app.client.forgot_password("TIA@example.com").await.unwrap();
    let mail = app.smtp.nth_to("tia@example.com", 2).await;
    assert!(
        mail.subject().contains("password reset code"),
        "{}",
        mail.subject()
    );
    let code = six_digits(&mail.subject()).unwrap();

    let err = app
        .client
        .reset_password(&r.reset_id, &code, "password1!")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("weak_password"));
    app.client
        .reset_password(&r.reset_id, &code, NEW_PASSWORD)
        .await
        .unwrap();

    // Every session is gone, access and refresh tokens alike.
    for tok in [&t, &other] {
        assert_eq!(
            app.client
                .with_token(&tok.access_token)
                .me()
                .await
                .unwrap_err()
                .code(),
            Some("unauthenticated")
        );
        assert_eq!(
            app.client
                .refresh(&tok.refresh_token)
                .await
                .unwrap_err()
                .code(),
            Some("invalid_refresh_token")
        );
    }
    assert_eq!(
        app.client
            .sign_in("tia@example.com", PASSWORD, None)
            .await
            .unwrap_err()
            .code(),
        Some("invalid_credentials")
    );
    let fresh = app
        .client
        .sign_in("tia@example.com", NEW_PASSWORD, None)
        .await
        .unwrap();
    app.client
        .with_token(&fresh.access_token)
        .me()
        .await
        .unwrap();
    // The owner is told.
    let notice = app.smtp.nth_to("tia@example.com", 3).await;
    assert!(
        notice.subject().contains("was reset"),
        "{}",
        notice.subject()
    );
    // The code cannot be used twice.
    let err = app
        .client
        .reset_password(&r.reset_id, &code, "Third-long-Secret-43")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("code_expired"));
}

async fn reset_by_phone_with_sms_code(app: &TestApp) {
    let started = app
        .client
        .signup_phone("+33 6 12 34 56 78", PASSWORD)
        .await
        .unwrap();
    let code = six_digits(&app.sms.nth_to("+33612345678", 1).await.text).unwrap();
    let t = app
        .client
        .signup_verify(&started.signup_id, &code, None)
        .await
        .unwrap();
    // By account number: the code goes to the only factor, the phone.
    let r = app.client.forgot_password(&t.account_id).await.unwrap();
    let code = six_digits(&app.sms.nth_to("+33612345678", 2).await.text).unwrap();
    app.client
        .reset_password(&r.reset_id, &code, NEW_PASSWORD)
        .await
        .unwrap();
    app.client
        .sign_in("+33612345678", NEW_PASSWORD, None)
        .await
        .unwrap();
}

async fn forgot_password_does_not_reveal_accounts(app: &TestApp) {
    app.signup_email("uma@example.com").await;
    let real = app
        .http
        .post(app.url("/api/v1/password/forgot"))
        .json(&serde_json::json!({"login": "uma@example.com"}))
        .send()
        .await
        .unwrap();
    let fake = app
        .http
        .post(app.url("/api/v1/password/forgot"))
        .json(&serde_json::json!({"login": "ghost@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(real.status(), fake.status());
    assert_eq!(real.status().as_u16(), 202);
    let real: serde_json::Value = real.json().await.unwrap();
    let fake: serde_json::Value = fake.json().await.unwrap();
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&real), keys(&fake));
    assert_eq!(real["message"], fake["message"]);
    assert_eq!(
        real["reset_id"].as_str().unwrap().len(),
        fake["reset_id"].as_str().unwrap().len()
    );
    assert_eq!(real["expires_at"], fake["expires_at"]);

    // Guessing on either behaves the same.
    for r in [&real, &fake] {
        let err = app
            .client
            .reset_password(r["reset_id"].as_str().unwrap(), "123456", NEW_PASSWORD)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("invalid_code"));
        assert!(err.to_string().contains("4 attempt"), "{err}");
    }
    // And the same cool-down applies to both.
    for login in ["uma@example.com", "ghost@example.com"] {
        let err = app.client.forgot_password(login).await.unwrap_err();
        assert_eq!(err.code(), Some("resend_too_soon"), "{login}");
    }
    // Only the real owner got a message.
    app.smtp.nth_to("uma@example.com", 2).await;
    assert_eq!(app.smtp.count_to("ghost@example.com"), 0);
}

async fn reset_codes_are_single_use_and_limited(app: &TestApp) {
    app.signup_email("vic@example.com").await;
    // Five codes an hour to one destination, one a minute.
    for i in 0..5 {
        app.client
            .forgot_password("vic@example.com")
            .await
            .unwrap_or_else(|e| panic!("code {i}: {e}"));
        app.advance(Duration::from_secs(61));
    }
    let err = app
        .client
        .forgot_password("vic@example.com")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("rate_limited"));
    assert!(err.retry_after().is_some());
    app.advance(Duration::from_secs(3600));
    app.client.forgot_password("vic@example.com").await.unwrap();
}

/// Twenty wrong guesses at a reset code, sent at once: each takes one of the code's five
/// attempts before it is compared, so four are told the code is wrong, the rest that it is
/// locked, and the right code afterwards is refused too.
async fn guesses_sent_at_once_cannot_outnumber_a_codes_attempts(app: &TestApp) {
    app.signup_email("wes@example.com").await;
    let r = app.client.forgot_password("wes@example.com").await.unwrap();
    let mail = app.smtp.nth_to("wes@example.com", 2).await;
    let code = six_digits(&mail.subject()).unwrap();
    let right: u32 = code.parse().unwrap();
    let guesses: Vec<String> = (1..=20)
        .map(|i| format!("{:06}", (right + i) % 1_000_000))
        .collect();
    let answers = futures_util::future::join_all(
        guesses
            .iter()
            .map(|g| app.client.reset_password(&r.reset_id, g, NEW_PASSWORD)),
    )
    .await;
    let codes: Vec<String> = answers
        .iter()
        .map(|a| match a {
            Ok(()) => "accepted".to_owned(),
            Err(e) => e.code().unwrap_or("?").to_owned(),
        })
        .collect();
    assert_eq!(
        codes.iter().filter(|c| *c == "invalid_code").count(),
        4,
        "{codes:?}"
    );
    assert!(
        codes
            .iter()
            .all(|c| c == "invalid_code" || c == "code_locked"),
        "{codes:?}"
    );
    let e = app
        .client
        .reset_password(&r.reset_id, &code, NEW_PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("code_locked"));
    app.client
        .sign_in("wes@example.com", PASSWORD, None)
        .await
        .expect("the password is unchanged");
}
