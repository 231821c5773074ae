//! Recovery factors: a recovery email verified by its own code, through which "forgot password"
//! reaches a person whose phone is gone; security questions stored only as hashes.

use serde_json::json;

use crate::on_both_backends;
use crate::support::{six_digits, TestApp, PASSWORD};

on_both_backends!(
    recovery_email_rescues_a_phone_account,
    security_questions_are_hashed_and_weak,
    email_and_phone_change_with_step_up_and_codes,
);

/// Signs up by phone and steps up by SMS; returns the signed-in client.
async fn phone_account(app: &TestApp, phone: &str, e164: &str) -> mica_client::Client {
    let started = app.client.signup_phone(phone, PASSWORD).await.unwrap();
    let code = six_digits(&app.sms.nth_to(e164, 1).await.text).unwrap();
    let t = app
        .client
        .signup_verify(&started.signup_id, &code, None)
        .await
        .unwrap();
    let c = app.client.with_token(&t.access_token);
    let sent = c.step_up_send("sms").await.unwrap();
    let code = six_digits(&app.sms.nth_to(e164, 2).await.text).unwrap();
    c.step_up_with_code(&sent.challenge_id, &code)
        .await
        .unwrap();
    c
}

async fn recovery_email_rescues_a_phone_account(app: &TestApp) {
    let c = phone_account(app, "+351 912 345 678", "+351912345678").await;
    let before = c.security_checkup().await.unwrap()["score"]
        .as_u64()
        .unwrap();

    let sent = c
        .recovery_add(json!({"email": "Backup.Me@Example.com"}))
        .await
        .unwrap();
    assert_eq!(sent.sent_to, "b***@example.com");
    let mail = app.smtp.nth_to("backup.me@example.com", 1).await;
    let code = six_digits(&mail.subject()).unwrap();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    assert_eq!(
        c.recovery_confirm(&sent.challenge_id, wrong)
            .await
            .unwrap_err()
            .code(),
        Some("invalid_code")
    );
    assert_eq!(
        c.recovery().await.unwrap()["recovery_email"],
        serde_json::Value::Null,
        "not before the code"
    );
    c.recovery_confirm(&sent.challenge_id, &code).await.unwrap();
    assert_eq!(
        c.recovery().await.unwrap()["recovery_email"],
        "b***@example.com"
    );
    assert_eq!(
        c.security_checkup().await.unwrap()["score"]
            .as_u64()
            .unwrap(),
        before + 10
    );
    // The account has no email: the notice of the change goes to its phone.
    let notice = app
        .sms
        .nth_with(
            "+351912345678",
            "A recovery email or phone number was added",
            1,
        )
        .await;
    assert!(
        notice.text.contains("If this was not you"),
        "{}",
        notice.text
    );
    // But news of an erase goes to the recovery email, never by SMS: the account's number may
    // well be in the lost phone itself.
    let (device, _) = crate::devices::link_http(app, &c, 61).await;
    crate::devices::send(&c, &device, json!({ "kind": "erase" })).await;
    let mail = app
        .smtp
        .nth_with(
            "backup.me@example.com",
            "An erase was sent to the device",
            1,
        )
        .await;
    assert_eq!(mail.subject(), "Mica: a device will be erased");
    assert!(!app.sms.all().iter().any(|m| m.text.contains("erase")));

    // The phone is lost: "forgot password" with the recovery email reaches the person there.
    let r = app
        .client
        .forgot_password("backup.me@example.com")
        .await
        .unwrap();
    let mail = app
        .smtp
        .nth_with("backup.me@example.com", "password reset code", 1)
        .await;
    let code = six_digits(&mail.subject()).unwrap();
    app.client
        .reset_password(&r.reset_id, &code, "Another-long-Secret-42")
        .await
        .unwrap();
    // The reset is told at every address the account knows: the recovery email it went
    // through, and the phone — where the owner would see a reset they did not make.
    app.smtp
        .nth_with("backup.me@example.com", "was just reset", 1)
        .await;
    app.sms.nth_with("+351912345678", "was just reset", 1).await;
    app.client
        .sign_in("+351912345678", "Another-long-Secret-42", None)
        .await
        .unwrap();

    // The account's own number cannot be its recovery address.
    let c2 = phone_account_again(app).await;
    let err = c2
        .recovery_add(json!({"phone": "+351 912 345 678"}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("invalid_input"));
}

async fn phone_account_again(app: &TestApp) -> mica_client::Client {
    let t = app
        .client
        .sign_in("+351912345678", "Another-long-Secret-42", None)
        .await
        .unwrap();
    let c = app.client.with_token(&t.access_token);
    app.advance(std::time::Duration::from_secs(61));
    let sent = c.step_up_send("sms").await.unwrap();
    let code = six_digits(
        &app.sms
            .nth_with("+351912345678", "confirm a change", 2)
            .await
            .text,
    )
    .unwrap();
    c.step_up_with_code(&sent.challenge_id, &code)
        .await
        .unwrap();
    c
}

async fn security_questions_are_hashed_and_weak(app: &TestApp) {
    let t = app.signup_email("sue@example.com").await;
    let c = app.client.with_token(&t.access_token);
    let qa = [
        ("Name of your first pet?", "Rex the Dog"),
        ("City where you were born?", "Lisboa"),
        ("Your childhood best friend?", "Maria Santos"),
    ];
    assert_eq!(
        c.set_security_questions(&qa).await.unwrap_err().code(),
        Some("step_up_required")
    );
    crate::security::step_up_by_email(app, &c, "sue@example.com").await;
    let err = c.set_security_questions(&qa[..2]).await.unwrap_err();
    assert_eq!(err.code(), Some("invalid_input"));
    c.set_security_questions(&qa).await.unwrap();
    let o = c.recovery().await.unwrap();
    assert_eq!(o["security_questions"][0], "Name of your first pet?");
    assert!(!o.to_string().contains("Rex"), "answers are never shown");
    let dump = app.dump().await;
    for (_, a) in qa {
        assert!(
            !dump.to_lowercase().contains(&a.to_lowercase()),
            "{a} stored in clear"
        );
    }
}

async fn email_and_phone_change_with_step_up_and_codes(app: &TestApp) {
    let t = app.signup_email("old@example.com").await;
    app.signup_email("taken@example.com").await;
    let c = app.client.with_token(&t.access_token);
    assert_eq!(
        c.identifier_change(json!({"phone": "+49 151 23456789"}))
            .await
            .unwrap_err()
            .code(),
        Some("step_up_required")
    );
    crate::security::step_up_by_email(app, &c, "old@example.com").await;

    // Add a phone: the code goes to it.
    let sent = c
        .identifier_change(json!({"phone": "+49 151 23456789"}))
        .await
        .unwrap();
    assert_eq!(sent.channel, "sms");
    let code = six_digits(&app.sms.nth_to("+4915123456789", 1).await.text).unwrap();
    c.identifier_confirm(&sent.challenge_id, &code)
        .await
        .unwrap();
    assert_eq!(
        c.me().await.unwrap().phone.as_deref(),
        Some("+4915123456789")
    );
    app.client
        .sign_in("+4915123456789", PASSWORD, None)
        .await
        .unwrap();

    // An address another account uses is refused before any code is sent.
    let err = c
        .identifier_change(json!({"email": "taken@example.com"}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("identifier_taken"));
    assert_eq!(app.smtp.count_to("taken@example.com"), 1);

    // Change the email: the new address confirms, the old one is told.
    app.advance(std::time::Duration::from_secs(61));
    let sent = c
        .identifier_change(json!({"email": "new@example.com"}))
        .await
        .unwrap();
    let code = six_digits(&app.smtp.nth_to("new@example.com", 1).await.subject()).unwrap();
    c.identifier_confirm(&sent.challenge_id, &code)
        .await
        .unwrap();
    assert_eq!(
        c.me().await.unwrap().email.as_deref(),
        Some("new@example.com")
    );
    let notice = app
        .smtp
        .nth_with("old@example.com", "was changed to", 1)
        .await;
    assert!(
        notice.body().contains("n***@example.com"),
        "{}",
        notice.body()
    );
    assert!(app
        .client
        .sign_in("old@example.com", PASSWORD, None)
        .await
        .is_err());
    app.client
        .sign_in("new@example.com", PASSWORD, None)
        .await
        .unwrap();
    // The old address is free for someone else now.
    app.advance(std::time::Duration::from_secs(61));
    app.signup_email("old@example.com").await;
}
