//! Sign-up by email and phone; the account exists only after its code is confirmed.

use std::time::Duration;

use crate::on_both_backends;
use crate::support::{six_digits, TestApp, PASSWORD};

on_both_backends!(
    signup_by_email_with_code_from_smtp,
    signup_by_phone_with_code_from_sms_webhook,
    phone_numbers_need_country_code_and_valid_plan,
    account_exists_only_after_the_code,
    wrong_codes_die_after_five_tries,
    codes_expire_after_ten_minutes,
    resend_has_a_cooldown_and_replaces_the_code,
    signup_of_a_taken_email_reveals_nothing,
    weak_passwords_are_refused,
    personal_data_is_encrypted_at_rest,
    one_code_verifies_once_under_concurrency,
);

async fn signup_by_email_with_code_from_smtp(app: &TestApp) {
    let started = app
        .client
        .signup_email("Ana.Silva@Example.com", PASSWORD)
        .await
        .unwrap();
    assert_eq!(started.channel, "email");
    assert_eq!(started.sent_to, "a***@example.com");
    let mail = app.smtp.nth_to("ana.silva@example.com", 1).await;
    assert_eq!(mail.from, "no-reply@mica.test");
    let code = six_digits(&mail.subject()).expect("code in the subject");
    assert!(
        mail.body().contains(&code),
        "code in the body too: {}",
        mail.body()
    );

    let tokens = app
        .client
        .signup_verify(&started.signup_id, &code, None)
        .await
        .unwrap();
    assert_eq!(tokens.account_id.len(), 10);
    assert!(tokens.account_id.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(tokens.token_type, "Bearer");
    assert_eq!(tokens.expires_in, 900);

    let me = app
        .client
        .with_token(&tokens.access_token)
        .me()
        .await
        .unwrap();
    assert_eq!(me.account_id, tokens.account_id);
    assert_eq!(me.email.as_deref(), Some("ana.silva@example.com"));
    assert_eq!(me.phone, None);

    // Sign in with the number, the email (any case), and the password.
    for login in [
        tokens.account_id.as_str(),
        "ana.silva@example.com",
        "  ANA.SILVA@example.COM ",
    ] {
        let t = app.client.sign_in(login, PASSWORD, None).await.unwrap();
        assert_eq!(t.account_id, tokens.account_id, "{login}");
    }
}

async fn signup_by_phone_with_code_from_sms_webhook(app: &TestApp) {
    let started = app
        .client
        .signup_phone("+1 (415) 555-2671", PASSWORD)
        .await
        .unwrap();
    assert_eq!(started.channel, "sms");
    let sms = app.sms.nth_to("+14155552671", 1).await;
    let code = six_digits(&sms.text).expect("code in the SMS");
    let tokens = app
        .client
        .signup_verify(&started.signup_id, &code, None)
        .await
        .unwrap();
    let me = app
        .client
        .with_token(&tokens.access_token)
        .me()
        .await
        .unwrap();
    assert_eq!(me.phone.as_deref(), Some("+14155552671"));
    assert_eq!(me.email, None);
    for login in [
        "+14155552671",
        "+1 415-555-2671",
        "0014155552671",
        tokens.account_id.as_str(),
    ] {
        let t = app.client.sign_in(login, PASSWORD, None).await.unwrap();
        assert_eq!(t.account_id, tokens.account_id, "{login}");
    }
    // The national form is ambiguous without a country: refused with a message saying why.
    let err = app
        .client
        .sign_in("415 555 2671", PASSWORD, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("invalid_phone"));
}

async fn phone_numbers_need_country_code_and_valid_plan(app: &TestApp) {
    let err = app
        .client
        .signup_phone("020 7946 0958", PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(422));
    assert_eq!(err.code(), Some("invalid_phone"));
    assert!(err.to_string().contains("country code"), "{err}");

    let err = app
        .client
        .signup_phone("+44 12", PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("invalid_phone"));
    let err = app
        .client
        .signup_phone("+1 555 0100 999", PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("invalid_phone"));
    assert!(err.to_string().contains("not valid"), "{err}");
    assert!(app.sms.all().is_empty(), "no SMS for refused numbers");
}

async fn account_exists_only_after_the_code(app: &TestApp) {
    let started = app
        .client
        .signup_email("bo@example.com", PASSWORD)
        .await
        .unwrap();
    let err = app
        .client
        .sign_in("bo@example.com", PASSWORD, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("invalid_credentials"));
    let code = six_digits(&app.smtp.nth_to("bo@example.com", 1).await.subject()).unwrap();
    app.client
        .signup_verify(&started.signup_id, &code, None)
        .await
        .unwrap();
    app.client
        .sign_in("bo@example.com", PASSWORD, None)
        .await
        .unwrap();
    // The code is single use.
    let err = app
        .client
        .signup_verify(&started.signup_id, &code, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("code_expired"));
}

async fn wrong_codes_die_after_five_tries(app: &TestApp) {
    let started = app
        .client
        .signup_email("cy@example.com", PASSWORD)
        .await
        .unwrap();
    let code = six_digits(&app.smtp.nth_to("cy@example.com", 1).await.subject()).unwrap();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for remaining in (1..=4).rev() {
        let err = app
            .client
            .signup_verify(&started.signup_id, wrong, None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("invalid_code"));
        assert!(
            err.to_string().contains(&format!("{remaining} attempt")),
            "{err}"
        );
    }
    let err = app
        .client
        .signup_verify(&started.signup_id, wrong, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("code_locked"));
    // Even the right code is dead now.
    let err = app
        .client
        .signup_verify(&started.signup_id, &code, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("code_locked"));
    let err = app
        .client
        .sign_in("cy@example.com", PASSWORD, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("invalid_credentials"));
}

async fn codes_expire_after_ten_minutes(app: &TestApp) {
    let started = app
        .client
        .signup_email("di@example.com", PASSWORD)
        .await
        .unwrap();
    let code = six_digits(&app.smtp.nth_to("di@example.com", 1).await.subject()).unwrap();
    app.advance(Duration::from_secs(10 * 60 + 1));
    let err = app
        .client
        .signup_verify(&started.signup_id, &code, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("code_expired"));
    assert_eq!(err.status().map(|s| s.as_u16()), Some(400));
}

async fn resend_has_a_cooldown_and_replaces_the_code(app: &TestApp) {
    let started = app
        .client
        .signup_email("ed@example.com", PASSWORD)
        .await
        .unwrap();
    let first = six_digits(&app.smtp.nth_to("ed@example.com", 1).await.subject()).unwrap();
    let err = app
        .client
        .signup_resend(&started.signup_id)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("resend_too_soon"));
    assert_eq!(err.status().map(|s| s.as_u16()), Some(429));
    let wait = err.retry_after().expect("Retry-After");
    assert!(
        wait <= Duration::from_secs(60) && wait >= Duration::from_secs(59),
        "{wait:?}"
    );
    // A new sign-up to the same address is held to the same cool-down.
    let err = app
        .client
        .signup_email("ed@example.com", PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("resend_too_soon"));

    app.advance(Duration::from_secs(61));
    app.client.signup_resend(&started.signup_id).await.unwrap();
    let second = six_digits(&app.smtp.nth_to("ed@example.com", 2).await.subject()).unwrap();
    if first != second {
        let err = app
            .client
            .signup_verify(&started.signup_id, &first, None)
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some("invalid_code"),
            "the old code stops working"
        );
    }
    app.client
        .signup_verify(&started.signup_id, &second, None)
        .await
        .unwrap();
}

async fn signup_of_a_taken_email_reveals_nothing(app: &TestApp) {
    app.signup_email("fay@example.com").await;
    app.advance(Duration::from_secs(61));
    let fresh = app
        .client
        .signup_email("gus@example.com", PASSWORD)
        .await
        .unwrap();
    let taken = app
        .client
        .signup_email("fay@example.com", PASSWORD)
        .await
        .unwrap();
    // Same shape and wording; only the masked address differs.
    assert_eq!(fresh.channel, taken.channel);
    assert_eq!(fresh.signup_id.len(), taken.signup_id.len());
    assert_eq!(taken.sent_to, "f***@example.com");
    // The owner is told, and receives no code.
    let mail = app.smtp.nth_to("fay@example.com", 2).await;
    assert!(
        mail.subject().contains("already have"),
        "{}",
        mail.subject()
    );
    assert_eq!(six_digits(&mail.subject()), None);
    let err = app
        .client
        .signup_verify(&taken.signup_id, "123456", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("invalid_code"));
}

async fn weak_passwords_are_refused(app: &TestApp) {
    for (pw, why) in [
        ("Sh0rt!", "8 characters"),
        ("onlyletters-and-symbols", "digits"),
        ("NoSymbols12345678", "symbol"),
        ("Password1!", "guess"),
        ("qwerty123!", "guess"),
    ] {
        let err = app
            .client
            .signup_email("hal@example.com", pw)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("weak_password"), "{pw}");
        assert_eq!(err.status().map(|s| s.as_u16()), Some(422));
        assert!(err.to_string().contains(why), "{pw}: {err}");
    }
    // A password built from the address itself is weak too.
    let err = app
        .client
        .signup_email("hal.jordan@example.com", "hal.jordan@example.com1")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("weak_password"));
    assert_eq!(app.smtp.count_to("hal@example.com"), 0, "nothing sent");
}

async fn personal_data_is_encrypted_at_rest(app: &TestApp) {
    app.signup_email("ivy.secret@example.com").await;
    let started = app
        .client
        .signup_phone("+44 20 7946 0958", PASSWORD)
        .await
        .unwrap();
    let code = six_digits(&app.sms.nth_to("+442079460958", 1).await.text).unwrap();
    app.client
        .signup_verify(&started.signup_id, &code, None)
        .await
        .unwrap();
    let dump = app.dump().await;
    assert!(
        dump.contains("argon2id"),
        "the dump is real: it shows the password hashes"
    );
    for needle in ["ivy.secret", "example.com", "2079460958", PASSWORD, &code] {
        assert!(!dump.contains(needle), "{needle} appears in the database");
    }
}

async fn one_code_verifies_once_under_concurrency(app: &TestApp) {
    let started = app
        .client
        .signup_email("jo@example.com", PASSWORD)
        .await
        .unwrap();
    let code = six_digits(&app.smtp.nth_to("jo@example.com", 1).await.subject()).unwrap();
    let tries = (0..6).map(|_| {
        let (c, id, code) = (app.client.clone(), started.signup_id.clone(), code.clone());
        async move { c.signup_verify(&id, &code, None).await }
    });
    let results = futures_join_all(tries).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "exactly one verification wins: {results:?}");
    // The others find it used — or, when more right guesses are in flight at once than the
    // code has attempts (each guess takes one before it is compared), locked.
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(r.code(), Some("code_expired" | "code_locked")),
            "{r}"
        );
    }
}

/// Runs futures concurrently on the runtime and collects their outputs in order.
pub async fn futures_join_all<F, T>(futs: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}
