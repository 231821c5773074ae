//! Step-up verification before every account change, TOTP two-step sign-in checked against an
//! independent TOTP implementation, recovery codes, and the security log.

use std::time::Duration;

use mica_client::{Client, ClientError};

use crate::on_both_backends;
use crate::support::{six_digits, TestApp, PASSWORD};

const NEW_PASSWORD: &str = "Another-long-Secret-42";

on_both_backends!(
    account_changes_need_a_fresh_step_up,
    totp_turns_on_two_step_sign_in,
    recovery_codes_work_once,
    second_factor_by_email_code,
    security_log_records_who_did_what,
);

/// A TOTP code for `secret` (base32) at the server's current time, computed by `totp-lite`,
/// an implementation independent of the server's.
pub(crate) fn totp_at(app: &TestApp, secret: &str, offset_steps: i64) -> String {
    let key = data_encoding::BASE32_NOPAD
        .decode(secret.as_bytes())
        .expect("base32 secret");
    let now = u64::try_from(app.clock_secs() + offset_steps * 30).unwrap();
    totp_lite::totp_custom::<totp_lite::Sha1>(30, 6, &key, now)
}

/// Steps up with a code mailed to `email` (the `n`-th mail to that address).
pub(crate) async fn step_up_by_email(app: &TestApp, c: &Client, email: &str) {
    const STEP_UP: &str = "confirm a change to your account";
    let before = app.smtp.count_with(email, STEP_UP);
    let sent = c.step_up_send("email").await.unwrap();
    assert_eq!(sent.channel, "email");
    let mail = app.smtp.nth_with(email, STEP_UP, before + 1).await;
    let code = six_digits(&mail.subject()).unwrap();
    c.step_up_with_code(&sent.challenge_id, &code)
        .await
        .unwrap();
}

/// Turns TOTP on for a signed-in client; returns the secret and the recovery codes.
pub(crate) async fn enable_totp(app: &TestApp, c: &Client, email: &str) -> (String, Vec<String>) {
    step_up_by_email(app, c, email).await;
    let e = c.totp_begin().await.unwrap();
    let secret = e["secret"].as_str().unwrap().to_owned();
    assert!(e["otpauth_uri"]
        .as_str()
        .unwrap()
        .starts_with("otpauth://totp/"));
    assert!(e["qr_svg"].as_str().unwrap().contains("<svg"));
    let codes = c.totp_confirm(&totp_at(app, &secret, 0)).await.unwrap();
    (secret, codes)
}

pub(crate) fn challenge(err: ClientError) -> (String, Vec<String>) {
    match err {
        ClientError::TwoStepRequired {
            challenge_id,
            methods,
        } => (challenge_id, methods),
        other => panic!("expected a two-step challenge, got {other}"),
    }
}

async fn account_changes_need_a_fresh_step_up(app: &TestApp) {
    let t = app.signup_email("amy@example.com").await;
    let other = app
        .client
        .sign_in("amy@example.com", PASSWORD, None)
        .await
        .unwrap();
    let c = app.client.with_token(&t.access_token);

    // Signed in and knowing the password is not enough.
    let err = c.change_password(NEW_PASSWORD).await.unwrap_err();
    assert_eq!(err.code(), Some("step_up_required"));
    assert_eq!(err.status().map(|s| s.as_u16()), Some(403));
    assert_eq!(
        c.totp_begin().await.unwrap_err().code(),
        Some("step_up_required")
    );
    assert_eq!(
        c.totp_disable().await.unwrap_err().code(),
        Some("step_up_required")
    );
    assert_eq!(
        c.recovery_codes_regenerate().await.unwrap_err().code(),
        Some("step_up_required")
    );

    // This account has no phone: a clear refusal, nothing sent.
    let err = c.step_up_send("sms").await.unwrap_err();
    assert_eq!(err.code(), Some("factor_missing"));

    // A wrong code does not step up; the right one does.
    let sent = c.step_up_send("email").await.unwrap();
    assert_eq!(sent.sent_to, "a***@example.com");
    let code = six_digits(&app.smtp.nth_to("amy@example.com", 2).await.subject()).unwrap();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    assert_eq!(
        c.step_up_with_code(&sent.challenge_id, wrong)
            .await
            .unwrap_err()
            .code(),
        Some("invalid_code")
    );
    assert_eq!(
        c.change_password(NEW_PASSWORD).await.unwrap_err().code(),
        Some("step_up_required")
    );
    // Another session of the same account cannot use this session's challenge…
    let c2 = app.client.with_token(&other.access_token);
    assert_eq!(
        c2.step_up_with_code(&sent.challenge_id, &code)
            .await
            .unwrap_err()
            .code(),
        Some("code_expired")
    );
    c.step_up_with_code(&sent.challenge_id, &code)
        .await
        .unwrap();
    // …and the proof belongs to the session that made it.
    assert_eq!(
        c2.change_password(NEW_PASSWORD).await.unwrap_err().code(),
        Some("step_up_required")
    );
    // Codes are single use.
    assert_eq!(
        c.step_up_with_code(&sent.challenge_id, &code)
            .await
            .unwrap_err()
            .code(),
        Some("code_expired")
    );

    // Weak passwords are still refused after step-up.
    assert_eq!(
        c.change_password("password1!").await.unwrap_err().code(),
        Some("weak_password")
    );
    c.change_password(NEW_PASSWORD).await.unwrap();
    // This session stays; the other one is signed out; the new password works.
    c.me().await.unwrap();
    assert_eq!(c2.me().await.unwrap_err().code(), Some("unauthenticated"));
    app.client
        .sign_in("amy@example.com", NEW_PASSWORD, None)
        .await
        .unwrap();
    let notice = app.smtp.nth_to("amy@example.com", 3).await;
    assert!(
        notice.subject().contains("was changed"),
        "{}",
        notice.subject()
    );

    // A step-up lasts ten minutes.
    app.advance(Duration::from_secs(10 * 60 + 1));
    assert_eq!(
        c.change_password("Yet-another-Secret-77")
            .await
            .unwrap_err()
            .code(),
        Some("step_up_required")
    );

    // Another account's challenge is useless here.
    let bob = app.signup_email("bob@example.com").await;
    let cb = app.client.with_token(&bob.access_token);
    let bob_sent = cb.step_up_send("email").await.unwrap();
    let bob_code = six_digits(&app.smtp.nth_to("bob@example.com", 2).await.subject()).unwrap();
    assert_eq!(
        c.step_up_with_code(&bob_sent.challenge_id, &bob_code)
            .await
            .unwrap_err()
            .code(),
        Some("code_expired")
    );
}

async fn totp_turns_on_two_step_sign_in(app: &TestApp) {
    let t = app.signup_email("cai@example.com").await;
    let c = app.client.with_token(&t.access_token);
    step_up_by_email(app, &c, "cai@example.com").await;
    let e = c.totp_begin().await.unwrap();
    let secret = e["secret"].as_str().unwrap().to_owned();
    // A wrong first code does not turn it on.
    let err = c.totp_confirm("000000").await;
    if let Err(err) = err {
        assert_eq!(err.code(), Some("invalid_input"));
    }
    let status = c.two_step_status().await.unwrap();
    if status["totp"] == false {
        let codes = c.totp_confirm(&totp_at(app, &secret, 0)).await.unwrap();
        assert_eq!(codes.len(), 10);
    }
    let status = c.two_step_status().await.unwrap();
    assert_eq!(status["totp"], true);
    assert_eq!(status["recovery_codes_left"], 10);
    // A second authenticator needs the first one removed.
    assert_eq!(
        c.totp_begin().await.unwrap_err().code(),
        Some("two_step_enabled")
    );

    // The password alone no longer signs in.
    let (id, methods) = challenge(
        app.client
            .sign_in("cai@example.com", PASSWORD, None)
            .await
            .unwrap_err(),
    );
    assert!(
        methods.contains(&"totp".to_string()) && methods.contains(&"recovery_code".to_string())
    );
    assert!(methods.contains(&"email".to_string()));
    // The code used to confirm cannot be replayed.
    let used = totp_at(app, &secret, 0);
    let err = app
        .client
        .sign_in_second_factor(&id, "totp", &used)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("invalid_code"));
    assert!(err.to_string().contains("4 attempt"), "{err}");
    // Thirty seconds later the next code works, and works once.
    app.advance(Duration::from_secs(30));
    let next = totp_at(app, &secret, 0);
    let signed = app
        .client
        .sign_in_second_factor(&id, "totp", &next)
        .await
        .unwrap();
    app.client
        .with_token(&signed.access_token)
        .me()
        .await
        .unwrap();
    assert_eq!(
        app.client
            .sign_in_second_factor(&id, "totp", &next)
            .await
            .unwrap_err()
            .code(),
        Some("code_expired")
    );

    // One step of clock drift is tolerated: a code from the previous step, unused so far.
    app.advance(Duration::from_secs(60));
    let (id, _) = challenge(
        app.client
            .sign_in("cai@example.com", PASSWORD, None)
            .await
            .unwrap_err(),
    );
    app.client
        .sign_in_second_factor(&id, "totp", &totp_at(app, &secret, -1))
        .await
        .unwrap();

    // Five wrong codes kill the challenge.
    let (id, _) = challenge(
        app.client
            .sign_in("cai@example.com", PASSWORD, None)
            .await
            .unwrap_err(),
    );
    for _ in 0..4 {
        assert_eq!(
            app.client
                .sign_in_second_factor(&id, "totp", "000001")
                .await
                .unwrap_err()
                .code(),
            Some("invalid_code")
        );
    }
    assert_eq!(
        app.client
            .sign_in_second_factor(&id, "totp", "000001")
            .await
            .unwrap_err()
            .code(),
        Some("code_locked")
    );
    // Those five count against the account, as wrong passwords do: even the right password
    // waits out the back-off before a new challenge.
    assert_eq!(
        app.client
            .sign_in("cai@example.com", PASSWORD, None)
            .await
            .unwrap_err()
            .code(),
        Some("signin_backoff")
    );
    app.advance(Duration::from_secs(30));
    let err = app
        .client
        .sign_in_second_factor(&id, "totp", &totp_at(app, &secret, 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("code_locked"));
    // Nor does asking for a code by email bring the spent attempts back.
    let err = app
        .client
        .sign_in_send_code(&id, "email")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("code_locked"));
    // Nor does a new challenge: one more wrong guess, and the account backs off again (longer).
    let (id, _) = challenge(
        app.client
            .sign_in("cai@example.com", PASSWORD, None)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        app.client
            .sign_in_second_factor(&id, "totp", "000001")
            .await
            .unwrap_err()
            .code(),
        Some("invalid_code")
    );
    assert_eq!(
        app.client
            .sign_in_second_factor(&id, "totp", &totp_at(app, &secret, 0))
            .await
            .unwrap_err()
            .code(),
        Some("signin_backoff"),
        "not even the right code is looked at while backing off"
    );
    app.advance(Duration::from_secs(61));
    app.client
        .sign_in_second_factor(&id, "totp", &totp_at(app, &secret, 0))
        .await
        .unwrap();

    // Turning it off needs a (fresh) step-up, by TOTP here; then the password alone signs in again.
    app.advance(Duration::from_secs(10 * 60));
    assert_eq!(
        c.totp_disable().await.unwrap_err().code(),
        Some("step_up_required")
    );
    c.step_up_with_totp(&totp_at(app, &secret, 0))
        .await
        .unwrap();
    c.totp_disable().await.unwrap();
    app.client
        .sign_in("cai@example.com", PASSWORD, None)
        .await
        .unwrap();
    assert_eq!(c.two_step_status().await.unwrap()["totp"], false);
}

async fn recovery_codes_work_once(app: &TestApp) {
    let t = app.signup_email("dee@example.com").await;
    let c = app.client.with_token(&t.access_token);
    let (secret, codes) = enable_totp(app, &c, "dee@example.com").await;
    assert_eq!(codes.len(), 10);
    assert!(codes
        .iter()
        .all(|c| c.len() == 11 && c.as_bytes()[5] == b'-'));

    let (id, _) = challenge(
        app.client
            .sign_in("dee@example.com", PASSWORD, None)
            .await
            .unwrap_err(),
    );
    // Typed sloppily: spaces and capitals are fine.
    let sloppy = format!(" {} ", codes[0].to_uppercase());
    app.client
        .sign_in_second_factor(&id, "recovery_code", &sloppy)
        .await
        .unwrap();
    let (id, _) = challenge(
        app.client
            .sign_in("dee@example.com", PASSWORD, None)
            .await
            .unwrap_err(),
    );
    let err = app
        .client
        .sign_in_second_factor(&id, "recovery_code", &codes[0])
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some("invalid_code"),
        "a recovery code works once"
    );
    assert_eq!(c.two_step_status().await.unwrap()["recovery_codes_left"], 9);

    // Regenerating (after a step-up) retires every old code.
    app.advance(Duration::from_secs(30));
    c.step_up_with_totp(&totp_at(app, &secret, 0))
        .await
        .unwrap();
    let fresh = c.recovery_codes_regenerate().await.unwrap();
    assert_eq!(
        c.two_step_status().await.unwrap()["recovery_codes_left"],
        10
    );
    let err = app
        .client
        .sign_in_second_factor(&id, "recovery_code", &codes[1])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("invalid_code"));
    app.client
        .sign_in_second_factor(&id, "recovery_code", &fresh[0])
        .await
        .unwrap();
}

async fn second_factor_by_email_code(app: &TestApp) {
    let t = app.signup_email("eli@example.com").await;
    let c = app.client.with_token(&t.access_token);
    enable_totp(app, &c, "eli@example.com").await;
    let (id, _) = challenge(
        app.client
            .sign_in("eli@example.com", PASSWORD, None)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        app.client
            .sign_in_send_code(&id, "sms")
            .await
            .unwrap_err()
            .code(),
        Some("factor_missing")
    );
    let sent = app.client.sign_in_send_code(&id, "email").await.unwrap();
    assert_eq!(sent.challenge_id, id);
    let mail = app
        .smtp
        .nth_with("eli@example.com", "finish signing in", 1)
        .await;
    let code = six_digits(&mail.subject()).unwrap();
    let signed = app
        .client
        .sign_in_second_factor(&id, "code", &code)
        .await
        .unwrap();
    app.client
        .with_token(&signed.access_token)
        .me()
        .await
        .unwrap();
    // Exactly one factor at a time.
    let resp = app
        .http
        .post(app.url("/api/v1/sessions/two-step"))
        .json(&serde_json::json!({"challenge_id": id, "totp": "123456", "code": "123456"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 422);
}

async fn security_log_records_who_did_what(app: &TestApp) {
    let t = app.signup_email("fox@example.com").await;
    let c = app.client.with_token(&t.access_token);
    let (_, codes) = enable_totp(app, &c, "fox@example.com").await;
    let (id, _) = challenge(
        app.client
            .sign_in("fox@example.com", PASSWORD, None)
            .await
            .unwrap_err(),
    );
    let signed = app
        .client
        .sign_in_second_factor(&id, "recovery_code", &codes[3])
        .await
        .unwrap();
    app.client
        .with_token(&signed.access_token)
        .sign_out()
        .await
        .unwrap();
    let events = c.security_events().await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    for k in [
        "step_up",
        "two_step_enabled",
        "two_step_sign_in",
        "recovery_code_used",
        "signed_out",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    assert!(events
        .iter()
        .all(|e| e.ip == "127.0.0.1" && e.user_agent.starts_with("mica-client/")));
    let used = events
        .iter()
        .find(|e| e.kind == "recovery_code_used")
        .unwrap();
    assert_eq!(used.detail.as_deref(), Some("9 left"));
    // Only the owner sees them.
    let other = app.signup_email("gil@example.com").await;
    assert!(app
        .client
        .with_token(&other.access_token)
        .security_events()
        .await
        .unwrap()
        .is_empty());
}
