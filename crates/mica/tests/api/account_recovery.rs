//! Recovery when every factor is lost (ID-18): a request proven from a new address waits a
//! week while the owner is told everywhere and can cancel it, then an operator (the real
//! `mica admin recovery` command) decides, and only then can a new password be set.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::on_both_backends;
use crate::support::{six_digits, TestApp, PASSWORD};

const NEW_PASSWORD: &str = "Found-my-way-back-77";
const WEEK: Duration = Duration::from_secs(7 * 86_400);
const STATEMENT: &str = "My phone was stolen in Porto and the email provider closed my old \
                         address. I opened the account in 2024 and my photos are on it.";

on_both_backends!(
    an_account_whose_every_factor_is_lost_is_recovered_after_review,
    the_owner_stops_a_stranger_s_recovery,
    recovery_requests_do_not_reveal_accounts,
    bad_recovery_requests_are_refused,
    connected_devices_are_told_of_a_recovery_request,
    devices_away_are_told_when_they_connect,
    requests_cannot_flood_an_owner,
);

async fn post(app: &TestApp, path: &str, body: Value) -> (StatusCode, Value) {
    let r = app
        .http
        .post(app.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Files a request for `login`, confirmed from `contact` (an email); returns its id.
pub(crate) async fn file_request(
    app: &TestApp,
    login: &str,
    contact: &str,
    answers: &[&str],
) -> String {
    let before = app.smtp.count_with(contact, "confirms this address");
    let (status, r) = post(
        app,
        "/api/v1/account-recovery",
        json!({ "login": login, "contact": contact, "statement": STATEMENT, "answers": answers }),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{r}");
    let id = r["request_id"].as_str().unwrap().to_owned();
    let mail = app
        .smtp
        .nth_with(contact, "confirms this address", before + 1)
        .await;
    let code = six_digits(&mail.subject()).unwrap();
    let (status, s) = post(
        app,
        "/api/v1/account-recovery/verify",
        json!({ "request_id": id, "code": code }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{s}");
    assert_eq!(s["state"], "waiting");
    id
}

async fn requests_of(c: &mica_client::Client) -> Value {
    c.raw(
        reqwest::Method::GET,
        "/api/v1/security/recovery-requests",
        None,
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap()
}

async fn state_of(app: &TestApp, id: &str) -> Value {
    let (status, s) = post(
        app,
        "/api/v1/account-recovery/status",
        json!({ "request_id": id }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{s}");
    s
}

/// Runs `mica admin recovery …` (the real binary) on the test's database.
fn admin(app: &TestApp, args: &[&str]) -> (bool, String) {
    app.admin(&[&["recovery"], args].concat())
}

/// The waiting period passes and the server's maintenance runs.
async fn wait_out(app: &TestApp) {
    app.advance(WEEK + Duration::from_secs(60));
    app.server_identity().recovery_maintenance().await.unwrap();
}

async fn an_account_whose_every_factor_is_lost_is_recovered_after_review(app: &TestApp) {
    let email = "ana@example.com";
    let t = app.signup_email(email).await;
    let c = app.client.with_token(&t.access_token);
    crate::security::enable_totp(app, &c, email).await;
    app.advance(Duration::from_secs(61));
    crate::security::step_up_by_email(app, &c, email).await;
    c.set_security_questions(&[
        ("Name of your first pet?", "Rex the Dog"),
        ("City where you were born?", "Lisboa"),
        ("Your childhood best friend?", "Maria Santos"),
    ])
    .await
    .unwrap();
    let backup = "ana.backup@example.org";
    let sent = c.recovery_add(json!({ "email": backup })).await.unwrap();
    let code = six_digits(&app.smtp.nth_to(backup, 1).await.subject()).unwrap();
    c.recovery_confirm(&sent.challenge_id, &code).await.unwrap();

    // Phone and mailbox gone: from a new address, with two answers of three right.
    let contact = "ana.again@example.net";
    let id = file_request(
        app,
        email,
        contact,
        &["rex the dog", "Lisbon", "maria santos"],
    )
    .await;

    // The owner is told at once, with a code that cancels it, and sees it when signed in.
    let notice = app
        .smtp
        .nth_with(email, "Someone asked to recover", 1)
        .await;
    assert!(notice.body().contains(&id), "{}", notice.body());
    assert!(notice.body().contains("cancel code"), "{}", notice.body());
    assert!(!notice.body().contains(contact), "the contact is masked");
    let mine = requests_of(&c).await;
    assert_eq!(mine[0]["id"], id.as_str());
    assert_eq!(mine[0]["state"], "waiting");
    let checkup = c.security_checkup().await.unwrap();
    let step = checkup["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "no_recovery_requests")
        .cloned()
        .unwrap();
    assert_eq!(step["done"], false, "{checkup}");

    // Nothing can be finished, nor approved, during the wait.
    let (status, e) = post(
        app,
        "/api/v1/account-recovery/finish",
        json!({ "request_id": id }),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(e["error"]["code"], "recovery_not_approved");
    let (ok, out) = admin(app, &["approve", &id, "--operator", "olga"]);
    assert!(!ok, "approved during the wait: {out}");
    assert!(out.contains("waiting period"), "{out}");

    wait_out(app).await;
    assert_eq!(state_of(app, &id).await["state"], "in_review");
    let (ok, out) = admin(app, &["list"]);
    assert!(
        ok && out.contains(&id) && out.contains("in_review"),
        "{out}"
    );
    let (ok, out) = admin(app, &["show", &id]);
    assert!(ok, "{out}");
    assert!(out.contains("2 right of 3 given (3 questions set"), "{out}");
    assert!(out.contains(contact), "{out}");
    assert!(out.contains("stolen in Porto"), "{out}");
    assert!(out.contains(&t.account_id), "{out}");

    let (ok, out) = admin(
        app,
        &[
            "approve",
            &id,
            "--operator",
            "olga",
            "--note",
            "called her back",
        ],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("approved") && out.contains("called her back"),
        "{out}"
    );
    // The decision is in the operator's log, with the request and the note.
    let (ok, out) = app.admin(&["log", "--account", &t.account_id]);
    assert!(ok, "{out}");
    assert!(
        out.contains("recovery_approved")
            && out.contains(&id)
            && out.contains("by olga: called her back"),
        "{out}"
    );
    app.smtp.nth_with(contact, "was approved", 1).await;
    app.smtp.nth_with(email, "Until", 1).await;
    app.smtp.nth_with(backup, "Until", 1).await;
    let s = state_of(app, &id).await;
    assert_eq!(s["state"], "approved");
    assert_eq!(
        s["reason"],
        Value::Null,
        "the operator's note is not the requester's"
    );

    // The requester asks for a code at the proven address and sets a new password.
    let (status, f) = post(
        app,
        "/api/v1/account-recovery/finish",
        json!({ "request_id": id }),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{f}");
    let mail = app.smtp.nth_with(contact, "finishes your", 1).await;
    let code = six_digits(&mail.subject()).unwrap();
    let complete = |password: &str| json!({ "challenge_id": f["challenge_id"], "code": code, "new_password": password });
    let (status, e) = post(
        app,
        "/api/v1/account-recovery/complete",
        complete("password1!"),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(e["error"]["code"], "weak_password");
    let (status, e) = post(
        app,
        "/api/v1/account-recovery/complete",
        complete(NEW_PASSWORD),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{e}");

    // The new address and password sign in, without the lost authenticator; nothing old does.
    let fresh = app
        .client
        .sign_in(contact, NEW_PASSWORD, None)
        .await
        .unwrap();
    assert_eq!(fresh.account_id, t.account_id);
    let me = app.client.with_token(&fresh.access_token);
    assert_eq!(me.me().await.unwrap().email.as_deref(), Some(contact));
    assert_eq!(me.two_step_status().await.unwrap()["totp"], false);
    assert_eq!(
        app.client
            .sign_in(email, NEW_PASSWORD, None)
            .await
            .unwrap_err()
            .code(),
        Some("invalid_credentials")
    );
    assert_eq!(
        app.client
            .refresh(&t.refresh_token)
            .await
            .unwrap_err()
            .code(),
        Some("invalid_refresh_token")
    );
    // Told at the old addresses as well as the new one; logged. The old addresses no longer
    // reach the account: whoever holds them now cannot reset the password.
    app.smtp.nth_with(email, "was recovered", 1).await;
    app.smtp.nth_with(backup, "was recovered", 1).await;
    app.smtp.nth_with(contact, "was recovered", 1).await;
    assert_eq!(me.recovery().await.unwrap()["recovery_email"], Value::Null);
    let before = app.smtp.count_to(backup);
    app.client.forgot_password(backup).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.smtp.count_to(backup),
        before,
        "no reset code to a removed address"
    );
    let kinds: Vec<String> = me
        .security_events()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    for k in [
        "recovery_requested",
        "recovery_approved",
        "account_recovered",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} not in {kinds:?}");
    }
    // Used up: no second password from the same approval.
    assert_eq!(state_of(app, &id).await["state"], "completed");
    let (status, _) = post(app, "/api/v1/account-recovery/complete", complete(PASSWORD)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = post(
        app,
        "/api/v1/account-recovery/finish",
        json!({ "request_id": id }),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
}

async fn the_owner_stops_a_stranger_s_recovery(app: &TestApp) {
    let email = "bo@example.com";
    let t = app.signup_email(email).await;
    let c = app.client.with_token(&t.access_token);
    let thief = "not.bo@example.org";

    // With the code from the notice, without signing in.
    let id = file_request(app, &t.account_id, thief, &[]).await;
    let notice = app
        .smtp
        .nth_with(email, "Someone asked to recover", 1)
        .await;
    let body = notice.body();
    let cancel = body
        .split("cancel code ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_owned();
    let (status, e) = post(
        app,
        "/api/v1/account-recovery/cancel",
        json!({ "request_id": id, "cancel_code": "wrong-code" }),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(e["error"]["code"], "invalid_input");
    assert_eq!(state_of(app, &id).await["state"], "waiting");
    let (status, _) = post(
        app,
        "/api/v1/account-recovery/cancel",
        json!({ "request_id": id, "cancel_code": cancel }),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let s = state_of(app, &id).await;
    assert_eq!(s["state"], "cancelled");
    app.smtp.nth_with(thief, "was cancelled", 1).await;

    // Signed in; another account cannot see or cancel it.
    app.advance(Duration::from_secs(61));
    let id2 = file_request(app, email, thief, &[]).await;
    let other = app.signup_email("eve@example.com").await;
    let eve = app.client.with_token(&other.access_token);
    let path = format!("/api/v1/security/recovery-requests/{id2}");
    assert_eq!(requests_of(&eve).await, json!([]));
    assert_eq!(
        eve.raw(reqwest::Method::DELETE, &path, None)
            .await
            .unwrap_err()
            .code(),
        Some("not_found")
    );
    c.raw(reqwest::Method::DELETE, &path, None).await.unwrap();
    assert_eq!(state_of(app, &id2).await["state"], "cancelled");
    assert_eq!(
        c.raw(reqwest::Method::DELETE, &path, None)
            .await
            .unwrap_err()
            .code(),
        Some("recovery_closed")
    );

    // A cancelled request never reaches review, and cannot be approved.
    wait_out(app).await;
    assert_eq!(state_of(app, &id2).await["state"], "cancelled");
    let (ok, out) = admin(app, &["approve", &id2, "--operator", "olga"]);
    assert!(!ok, "{out}");
    let (status, _) = post(
        app,
        "/api/v1/account-recovery/finish",
        json!({ "request_id": id2 }),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // The password never changed.
    app.client.sign_in(email, PASSWORD, None).await.unwrap();
}

async fn recovery_requests_do_not_reveal_accounts(app: &TestApp) {
    app.signup_email("cy@example.com").await;
    let real = post(
        app,
        "/api/v1/account-recovery",
        json!({ "login": "cy@example.com", "contact": "a@example.net", "statement": STATEMENT }),
    )
    .await;
    let ghost = post(
        app,
        "/api/v1/account-recovery",
        json!({ "login": "ghost@example.com", "contact": "b@example.net", "statement": STATEMENT }),
    )
    .await;
    assert_eq!(real.0, ghost.0);
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&real.1), keys(&ghost.1));
    assert_eq!(real.1["message"], ghost.1["message"]);

    let id = file_request(app, "ghost@example.com", "c@example.net", &["rex"]).await;
    wait_out(app).await;
    assert_eq!(state_of(app, &id).await["state"], "in_review");
    let (ok, out) = admin(app, &["show", &id]);
    assert!(ok && out.contains("none matches"), "{out}");
    let (ok, out) = admin(app, &["approve", &id, "--operator", "olga"]);
    assert!(!ok, "{out}");
    let (ok, out) = admin(
        app,
        &[
            "deny",
            &id,
            "--operator",
            "olga",
            "--reason",
            "no account matches what was given",
        ],
    );
    assert!(ok, "{out}");
    let mail = app.smtp.nth_with("c@example.net", "not approved", 1).await;
    assert!(mail.body().contains("no account matches what was given"));
    let s = state_of(app, &id).await;
    assert_eq!(s["state"], "denied");
    assert_eq!(s["reason"], "no account matches what was given");
    // Closed requests are forgotten after a year: they hold someone's address and statement.
    app.advance(Duration::from_secs(366 * 86_400));
    app.server_identity().recovery_maintenance().await.unwrap();
    let (status, _) = post(
        app,
        "/api/v1/account-recovery/status",
        json!({ "request_id": id }),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn bad_recovery_requests_are_refused(app: &TestApp) {
    let t = app.signup_email("di@example.com").await;
    let cases = [
        (
            json!({ "login": "not a login", "contact": "x@example.net", "statement": STATEMENT }),
            422,
        ),
        (
            json!({ "login": t.account_id, "contact": "12345678", "statement": STATEMENT }),
            422,
        ),
        (
            json!({ "login": t.account_id, "contact": "x@example.net", "statement": "help" }),
            422,
        ),
        (
            json!({ "login": t.account_id, "contact": "x@example.net", "statement": "a\u{0}b is not a statement" }),
            422,
        ),
        (
            json!({ "login": t.account_id, "contact": "x@example.net", "statement": STATEMENT, "answers": ["a", "b", "c", "d"] }),
            422,
        ),
        (
            json!({ "login": t.account_id, "contact": "x@example.net", "statement": STATEMENT, "admin": true }),
            422,
        ),
        (json!({ "login": t.account_id }), 422),
    ];
    for (body, want) in cases {
        let (status, e) = post(app, "/api/v1/account-recovery", body.clone()).await;
        assert_eq!(status.as_u16(), want, "{body} → {e}");
        assert!(e["error"]["code"].is_string(), "{e}");
    }
    for id in ["ar_unknown", "../../etc/passwd", ""] {
        let (status, e) = post(
            app,
            "/api/v1/account-recovery/status",
            json!({ "request_id": id }),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{id}: {e}");
    }
    // A wrong code files nothing; the owner hears nothing.
    let (_, r) = post(
        app,
        "/api/v1/account-recovery",
        json!({ "login": "di@example.com", "contact": "y@example.net", "statement": STATEMENT }),
    )
    .await;
    let (status, e) = post(
        app,
        "/api/v1/account-recovery/verify",
        json!({ "request_id": r["request_id"], "code": "000000" }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(e["error"]["code"], "invalid_code");
    assert_eq!(
        state_of(app, r["request_id"].as_str().unwrap()).await["state"],
        "unverified"
    );
    assert_eq!(
        app.smtp
            .count_with("di@example.com", "Someone asked to recover"),
        0
    );
    // Never proven, it is forgotten once its code has expired.
    app.advance(Duration::from_secs(3600));
    app.server_identity().recovery_maintenance().await.unwrap();
    let (status, _) = post(
        app,
        "/api/v1/account-recovery/status",
        json!({ "request_id": r["request_id"] }),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Reads a Server-Sent Events response into `seen` until it holds `needle` (10 s at most).
async fn read_until(resp: &mut reqwest::Response, seen: &mut String, needle: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains(needle) {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} on the channel; got {seen}"))
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

async fn sync_channel(app: &TestApp, token: &str) -> reqwest::Response {
    let mut resp = app
        .http
        .get(app.url("/api/v1/device/channel"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    read_until(&mut resp, &mut String::new(), "event: ready").await;
    resp
}

async fn connected_devices_are_told_of_a_recovery_request(app: &TestApp) {
    let email = "fay@example.com";
    let t = app.signup_email(email).await;
    let c = app.client.with_token(&t.access_token);
    // A laptop linked with the agent (its command channel), and an app signed in and
    // listening on its sync channel.
    let mut laptop = crate::devices::Agent::new(app, "laptop", 31, "true");
    laptop.link_and_run(&c, email).await;
    let mut sync = sync_channel(app, &t.access_token).await;
    let other = app.signup_email("gus@example.com").await;
    let mut theirs = sync_channel(app, &other.access_token).await;

    let id = file_request(app, email, "fay.new@example.net", &[]).await;

    let mut seen = String::new();
    read_until(&mut sync, &mut seen, "event: notice").await;
    read_until(&mut sync, &mut seen, "\n\n").await;
    assert!(
        seen.contains("recovery_requested") && seen.contains(&id),
        "{seen}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !laptop.out("notice.log").contains("recovery_requested|") {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent's notice hook never ran:\n{}",
            laptop.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(laptop.log().contains("notice from the account"));
    // Another account's devices hear nothing.
    let more = tokio::time::timeout(Duration::from_millis(500), theirs.chunk()).await;
    assert!(more.is_err(), "another account's channel got {more:?}");
}

/// Opens a device's command channel (Server-Sent Events, read raw) and reads it until its
/// `hello`; then rings the device, and reads until the ring arrives. Stored notices come right
/// after the hello, before any command: what the channel said by then.
async fn notices_at_connect(
    app: &TestApp,
    owner: &mica_client::Client,
    device: &str,
    credential: &str,
) -> String {
    let mut channel = app
        .http
        .get(app.url("/api/v1/device/command-channel"))
        .bearer_auth(credential)
        .send()
        .await
        .unwrap();
    assert_eq!(channel.status(), StatusCode::OK);
    let mut seen = String::new();
    read_until(&mut channel, &mut seen, "event: hello").await;
    crate::devices::send(owner, device, json!({ "kind": "ring" })).await;
    read_until(&mut channel, &mut seen, "event: command").await;
    seen
}

/// The next message of a device's WebSocket that is not a command (re-sent ones come too).
async fn next_answer(ws: &mut crate::devices::Ws) -> Value {
    loop {
        let frame = crate::devices::next_json(ws).await;
        if frame["type"] != "command" {
            return frame;
        }
    }
}

async fn devices_away_are_told_when_they_connect(app: &TestApp) {
    let email = "ida@example.com";
    let t = app.signup_email(email).await;
    let c = app.client.with_token(&t.access_token);
    // Two linked laptops, both off when a request is filed.
    let mut tab = crate::devices::Agent::new(app, "tab", 41, "true");
    let tab_id = tab.link_and_run(&c, email).await;
    tab.kill();
    let desk = crate::devices::Agent::new(app, "desk", 42, "true");
    assert!(desk.link(email).status.success(), "{}", desk.log());
    let desk_id = desk.linked_id();
    let id = file_request(app, email, "ida.new@example.net", &[]).await;
    app.smtp
        .nth_with(email, "Someone asked to recover", 1)
        .await;

    // Turned on, the first laptop shows the notice (its hook runs, once) and says so.
    tab.start();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !tab.log().contains("notice shown; the server knows") {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never showed the notice:\n{}",
            tab.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shown = tab.out("notice.log");
    assert_eq!(
        shown
            .lines()
            .filter(|l| l.starts_with("recovery_requested|"))
            .count(),
        1,
        "{shown}"
    );
    tab.kill();
    // Shown once, it is not sent to that laptop again.
    let again = notices_at_connect(app, &c, &tab_id, &tab.credential()).await;
    assert!(!again.contains("event: notice"), "{again}");

    // The second laptop has not connected: the notice waits for it — without the cancel
    // code, which is kept only as a hash.
    let waiting = notices_at_connect(app, &c, &desk_id, &desk.credential()).await;
    assert!(waiting.contains("event: notice"), "{waiting}");
    assert!(
        waiting.contains("recovery_requested") && waiting.contains(&id),
        "{waiting}"
    );
    let mail = app
        .smtp
        .nth_with(email, "Someone asked to recover", 1)
        .await
        .body();
    let cancel = mail
        .split("cancel code ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_owned();
    assert!(!waiting.contains(&cancel), "{waiting}");
    // Only the account's own notices can be marked shown, and only by a real device.
    let device = app.client.with_token(desk.credential());
    for bogus in ["ntc_nothing", "ntc_%2e%2e", "x"] {
        let e = device
            .raw(
                reqwest::Method::POST,
                &format!("/api/v1/device/notices/{bogus}/seen"),
                Some(json!({})),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("not_found"), "{bogus}");
    }
    let forged = app.client.with_token("mdc_forged");
    let e = forged
        .raw(
            reqwest::Method::POST,
            "/api/v1/device/notices/ntc_nothing/seen",
            Some(json!({})),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("invalid_device_credential"));

    // The owner cancels the request: a device that had not shown it is no longer told.
    app.advance(Duration::from_secs(61));
    c.raw(
        reqwest::Method::DELETE,
        &format!("/api/v1/security/recovery-requests/{id}"),
        None,
    )
    .await
    .unwrap();
    let after = notices_at_connect(app, &c, &desk_id, &desk.credential()).await;
    assert!(!after.contains("event: notice"), "{after}");

    // On a WebSocket the device says it showed a notice on the socket itself.
    use crate::devices::{next_json, open_ws, ws_send, ws_text};

    let mut ws = open_ws(app, &desk.credential()).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "hello");
    app.advance(Duration::from_secs(61));
    let id2 = file_request(app, email, "ida.other@example.net", &[]).await;
    // (The rings above, never acknowledged, come again first.)
    let notice = next_answer(&mut ws).await;
    assert_eq!(notice["type"], "notice", "{notice}");
    assert_eq!(notice["kind"], "recovery_requested");
    assert!(notice["text"].as_str().unwrap().contains(&id2), "{notice}");
    ws_send(
        &mut ws,
        ws_text(json!({ "type": "seen", "id": "ntc_nothing" })),
    )
    .await;
    let reply = next_answer(&mut ws).await;
    assert_eq!(reply["error"]["code"], "not_found", "{reply}");
    ws_send(
        &mut ws,
        ws_text(json!({ "type": "seen", "id": notice["id"] })),
    )
    .await;
    let reply = next_answer(&mut ws).await;
    assert_eq!(reply, json!({ "type": "seen", "id": notice["id"] }));
    drop(ws);
    let after = notices_at_connect(app, &c, &desk_id, &desk.credential()).await;
    assert!(!after.contains("event: notice"), "{after}");
}

async fn requests_cannot_flood_an_owner(app: &TestApp) {
    let email = "hal@example.com";
    app.signup_email(email).await;
    let file = |login: &'static str, n: u32| {
        post(
            app,
            "/api/v1/account-recovery",
            json!({ "login": login, "contact": format!("flood{n}@example.net"), "statement": STATEMENT }),
        )
    };
    // Three filings a day per login, each told to the owner; then 429 — the same for a login
    // that matches no account.
    for login in [email, "nobody@example.com"] {
        for n in 0..3 {
            let contact = format!("{}{n}@example.net", &login[..3]);
            file_request(app, login, &contact, &[]).await;
        }
        let (status, e) = file(login, 9).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{e}");
        assert_eq!(e["error"]["code"], "rate_limited");
    }
    app.smtp
        .nth_with(email, "Someone asked to recover", 3)
        .await;
    // Started together and confirmed later, they are held to the same limit.
    let login = "ivy@example.com";
    app.signup_email(login).await;
    let mut started = Vec::new();
    for n in 0..4 {
        let contact = format!("ivy{n}@example.net");
        let (status, r) = post(
            app,
            "/api/v1/account-recovery",
            json!({ "login": login, "contact": contact, "statement": STATEMENT }),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{r}");
        let code = six_digits(&app.smtp.nth_to(&contact, 1).await.subject()).unwrap();
        started.push((r["request_id"].as_str().unwrap().to_owned(), code));
    }
    let mut filed = 0;
    for (id, code) in &started {
        let (status, _) = post(
            app,
            "/api/v1/account-recovery/verify",
            json!({ "request_id": id, "code": code }),
        )
        .await;
        if status == StatusCode::OK {
            filed += 1;
        } else {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        }
    }
    assert_eq!(filed, 3);
    // A day later, again.
    app.advance(Duration::from_secs(86_400 + 60));
    file_request(app, email, "later@example.net", &[]).await;
    app.smtp
        .nth_with(email, "Someone asked to recover", 4)
        .await;
}
