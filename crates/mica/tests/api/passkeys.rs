//! Passkeys driven by a software authenticator (webauthn-authenticator-rs's `SoftPasskey`, which
//! signs with its own P-256 keys exactly as a security key would): registration behind step-up,
//! sign-in, step-up, listing, removal, and replayed or forged assertions refused.

use mica_client::Client;
use mica_identity::webauthn::{CreationChallengeResponse, RequestChallengeResponse, Url};
use serde_json::Value;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_authenticator_rs::WebauthnAuthenticator;

use crate::on_both_backends;
use crate::security::{step_up_by_email, totp_at};
use crate::support::TestApp;

on_both_backends!(
    a_passkey_signs_in_steps_up_and_can_be_removed,
    replayed_or_forged_passkey_answers_are_refused,
);

/// A software authenticator that reports user verification (as a phone with a fingerprint would).
pub(crate) fn authenticator() -> SoftPasskey {
    SoftPasskey::new(true)
}

fn origin(app: &TestApp) -> Url {
    Url::parse(&app.public_url()).unwrap()
}

/// Runs `navigator.credentials.create()` on `key` with the server's options.
fn create(app: &TestApp, key: &mut SoftPasskey, ceremony: &Value) -> Value {
    let options: CreationChallengeResponse =
        serde_json::from_value(ceremony["options"].clone()).unwrap();
    let cred = key.do_registration(origin(app), options).unwrap();
    serde_json::to_value(cred).unwrap()
}

/// Runs `navigator.credentials.get()` on `key` with the server's options.
fn get(app: &TestApp, key: &mut SoftPasskey, ceremony: &Value) -> Value {
    let options: RequestChallengeResponse =
        serde_json::from_value(ceremony["options"].clone()).unwrap();
    let cred = key.do_authentication(origin(app), options).unwrap();
    serde_json::to_value(cred).unwrap()
}

/// Registers a passkey on `key` for a signed-in, stepped-up client.
pub(crate) async fn register(
    app: &TestApp,
    c: &Client,
    key: &mut SoftPasskey,
    name: &str,
) -> Value {
    let ceremony = c.passkey_registration_begin().await.unwrap();
    let cred = create(app, key, &ceremony);
    c.passkey_register(ceremony["challenge_id"].as_str().unwrap(), name, cred)
        .await
        .unwrap()
}

async fn a_passkey_signs_in_steps_up_and_can_be_removed(app: &TestApp) {
    let t = app.signup_email("amy@example.com").await;
    let c = app.client.with_token(&t.access_token);
    let mut key = authenticator();

    // Adding a passkey changes the account: it needs a fresh step-up.
    let err = c.passkey_registration_begin().await.unwrap_err();
    assert_eq!(err.code(), Some("step_up_required"));
    step_up_by_email(app, &c, "amy@example.com").await;
    let added = register(app, &c, &mut key, "Amy's laptop").await;
    assert_eq!(added["name"], "Amy's laptop");
    let list = c.passkeys().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], added["id"]);
    assert!(list[0]["last_used_at"].is_null());

    // Two-step sign-in on: a passkey still signs in on its own (it verified the user).
    let (secret, _) = {
        let e = c.totp_begin().await.unwrap();
        let secret = e["secret"].as_str().unwrap().to_owned();
        let codes = c.totp_confirm(&totp_at(app, &secret, 0)).await.unwrap();
        (secret, codes)
    };
    assert!(!secret.is_empty());

    // Sign in with the passkey, by email and by account number.
    for login in ["amy@example.com".to_owned(), t.account_id.to_string()] {
        let ceremony = app.client.passkey_sign_in_begin(&login).await.unwrap();
        let answer = get(app, &mut key, &ceremony);
        let tokens = app
            .client
            .passkey_sign_in(ceremony["challenge_id"].as_str().unwrap(), answer, None)
            .await
            .unwrap();
        assert_eq!(tokens.account_id, t.account_id);
        let me = app
            .client
            .with_token(&tokens.access_token)
            .me()
            .await
            .unwrap();
        assert_eq!(me.account_id, t.account_id);
    }
    let list = c.passkeys().await.unwrap();
    assert!(list[0]["last_used_at"].is_string(), "{list:?}");

    // A fresh session proves it's the owner with the passkey, then removes it.
    let ceremony = app
        .client
        .passkey_sign_in_begin("amy@example.com")
        .await
        .unwrap();
    let answer = get(app, &mut key, &ceremony);
    let s = app
        .client
        .passkey_sign_in(ceremony["challenge_id"].as_str().unwrap(), answer, None)
        .await
        .unwrap();
    let fresh = app.client.with_token(&s.access_token);
    let id = added["id"].as_str().unwrap();
    let err = fresh.passkey_remove(id).await.unwrap_err();
    assert_eq!(err.code(), Some("step_up_required"));
    let ceremony = fresh.step_up_passkey_begin().await.unwrap();
    let answer = get(app, &mut key, &ceremony);
    fresh
        .step_up_with_passkey(ceremony["challenge_id"].as_str().unwrap(), answer)
        .await
        .unwrap();
    fresh.passkey_remove(id).await.unwrap();
    assert!(c.passkeys().await.unwrap().is_empty());
    let err = fresh.passkey_remove(id).await.unwrap_err();
    assert_eq!(err.code(), Some("not_found"));

    // Gone: it can no longer start a sign-in.
    let err = app
        .client
        .passkey_sign_in_begin("amy@example.com")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("no_passkey"));

    let kinds: Vec<String> = c
        .security_events()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    for k in ["passkey_added", "passkey_sign_in", "passkey_removed"] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing from {kinds:?}");
    }
    assert!(kinds.iter().any(|x| x == "step_up"), "{kinds:?}");
}

async fn replayed_or_forged_passkey_answers_are_refused(app: &TestApp) {
    let t = app.signup_email("bo@example.com").await;
    let c = app.client.with_token(&t.access_token);
    let mut key = authenticator();
    step_up_by_email(app, &c, "bo@example.com").await;

    // A registration answer works once.
    let ceremony = c.passkey_registration_begin().await.unwrap();
    let cred = create(app, &mut key, &ceremony);
    let challenge = ceremony["challenge_id"].as_str().unwrap();
    c.passkey_register(challenge, "Phone", cred.clone())
        .await
        .unwrap();
    let err = c
        .passkey_register(challenge, "Phone again", cred.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("challenge_expired"));
    assert_eq!(err.status().map(|s| s.as_u16()), Some(400));
    // The same credential answering a new registration is refused: it is already registered.
    let ceremony = c.passkey_registration_begin().await.unwrap();
    let err = c
        .passkey_register(ceremony["challenge_id"].as_str().unwrap(), "Copy", cred)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("passkey_rejected"));
    assert_eq!(c.passkeys().await.unwrap().len(), 1);

    let sessions_before = c.sessions().await.unwrap().len();

    // A good sign-in, then its assertion replayed: on the same challenge, and on a new one.
    let ceremony = app
        .client
        .passkey_sign_in_begin("bo@example.com")
        .await
        .unwrap();
    let challenge = ceremony["challenge_id"].as_str().unwrap().to_owned();
    let answer = get(app, &mut key, &ceremony);
    app.client
        .passkey_sign_in(&challenge, answer.clone(), None)
        .await
        .unwrap();
    let err = app
        .client
        .passkey_sign_in(&challenge, answer.clone(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("challenge_expired"));
    assert_eq!(err.status().map(|s| s.as_u16()), Some(400));
    // A challenge id we never gave out — a NUL in it, which PostgreSQL cannot even compare,
    // or just too long — is an expired challenge too, never a 500.
    for bogus in ["pk_\u{0}", &"p".repeat(300)] {
        let err = app
            .client
            .passkey_sign_in(bogus, answer.clone(), None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("challenge_expired"), "{bogus:?}: {err}");
    }
    let fresh = app
        .client
        .passkey_sign_in_begin("bo@example.com")
        .await
        .unwrap();
    let err = app
        .client
        .passkey_sign_in(fresh["challenge_id"].as_str().unwrap(), answer, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("passkey_rejected"));
    assert_eq!(err.status().map(|s| s.as_u16()), Some(400));

    // An answer made for another site (a phishing page) is refused.
    let ceremony = app
        .client
        .passkey_sign_in_begin("bo@example.com")
        .await
        .unwrap();
    let mut lure: RequestChallengeResponse =
        serde_json::from_value(ceremony["options"].clone()).unwrap();
    lure.public_key.rp_id = "mica.example.net".into();
    let phished = serde_json::to_value(
        key.do_authentication(Url::parse("https://mica.example.net").unwrap(), lure)
            .unwrap(),
    )
    .unwrap();
    let err = app
        .client
        .passkey_sign_in(ceremony["challenge_id"].as_str().unwrap(), phished, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("passkey_rejected"));

    // Another account's passkey cannot answer this account's challenge.
    let other = app.signup_email("cy@example.com").await;
    let oc = app.client.with_token(&other.access_token);
    let mut other_key = authenticator();
    step_up_by_email(app, &oc, "cy@example.com").await;
    register(app, &oc, &mut other_key, "Cy's key").await;
    let ceremony = app
        .client
        .passkey_sign_in_begin("bo@example.com")
        .await
        .unwrap();
    let options: RequestChallengeResponse =
        serde_json::from_value(ceremony["options"].clone()).unwrap();
    let mut options = options;
    let cy_ceremony = app
        .client
        .passkey_sign_in_begin("cy@example.com")
        .await
        .unwrap();
    let cy_options: RequestChallengeResponse =
        serde_json::from_value(cy_ceremony["options"].clone()).unwrap();
    options.public_key.allow_credentials = cy_options.public_key.allow_credentials;
    let forged =
        serde_json::to_value(other_key.do_authentication(origin(app), options).unwrap()).unwrap();
    let err = app
        .client
        .passkey_sign_in(ceremony["challenge_id"].as_str().unwrap(), forged, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("passkey_rejected"));

    // Nonsense in place of a credential: a clear 4xx.
    let ceremony = app
        .client
        .passkey_sign_in_begin("bo@example.com")
        .await
        .unwrap();
    let err = app
        .client
        .passkey_sign_in(
            ceremony["challenge_id"].as_str().unwrap(),
            serde_json::json!({"id": "x", "rawId": "!!", "response": {}}),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(422));
    assert_eq!(err.code(), Some("invalid_body"));

    // Unknown accounts have no passkey; nothing above opened a session.
    let err = app
        .client
        .passkey_sign_in_begin("nobody@example.com")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("no_passkey"));
    assert_eq!(c.sessions().await.unwrap().len(), sessions_before + 1);
}
