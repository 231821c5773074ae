//! Linking a device by code (RFC 8628's device authorization grant): the real agent shows a
//! code, its owner checks and approves it from a signed-in device (after a step-up) or
//! declines it, and the agent links itself; the codes' polling, expiry, single use, guessing
//! limits and the activation lock, over HTTP.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Output, Stdio};
use std::time::{Duration, Instant};

use mica_client::Client;
use reqwest::Method;
use serde_json::{json, Value};

use crate::devices::{
    get, imei, owner, post, refused, send, sign_in, until_online, until_state, Agent,
};
use crate::on_both_backends;
use crate::security::step_up_by_email;
use crate::support::{six_digits, TestApp};

on_both_backends!(
    an_agent_links_by_code_its_owner_approves,
    link_codes_are_single_use_limited_and_honour_the_activation_lock,
);

const LOOKUP: &str = "/api/v1/devices/link-requests/lookup";
const APPROVE: &str = "/api/v1/devices/link-requests/approve";
const DENY: &str = "/api/v1/devices/link-requests/deny";
const REQUEST: &str = "/api/v1/device/link";
const TOKEN: &str = "/api/v1/device/link/token";
const STEP_UP: &str = "confirm a change to your account";

/// `mica agent link --code`, running: the code it shows.
struct Linking {
    child: Child,
    stdout: BufReader<ChildStdout>,
    shown: String,
    code: String,
}

/// Reads one line of a child's output, failing the test after 20 s.
async fn line_of(stdout: BufReader<ChildStdout>) -> (String, BufReader<ChildStdout>) {
    let read = tokio::task::spawn_blocking(move || {
        let mut stdout = stdout;
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        (line, stdout)
    });
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("no line within 20 s")
        .unwrap()
}

async fn link_by_code(agent: &Agent) -> Linking {
    let mut child = agent
        .command(&["link", "--code"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (shown, stdout) = line_of(stdout).await;
    let code = shown
        .split_whitespace()
        .find(|w| w.len() == 9 && w.as_bytes()[4] == b'-')
        .unwrap_or_else(|| panic!("no code in {shown:?}"))
        .to_owned();
    Linking {
        child,
        stdout,
        shown,
        code,
    }
}

/// Waits for a child to exit by itself; its whole output.
async fn finished(mut child: Child) -> Output {
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the agent did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.wait_with_output().unwrap()
}

impl Linking {
    /// The agent's exit, and everything it printed after the code.
    async fn finish(self) -> (Output, String) {
        let mut rest = String::new();
        let mut stdout = self.stdout;
        let out = finished(self.child).await;
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        (out, rest)
    }
}

fn masked(account: &str) -> String {
    format!("{}••••••{}", &account[..2], &account[account.len() - 2..])
}

async fn an_agent_links_by_code_its_owner_approves(app: &TestApp) {
    let (ana, ana_id) = owner(app, "ana@example.com").await;
    let mut laptop = Agent::new(
        app,
        "laptop",
        41,
        "echo \"$MICA_COMMAND_ID\" >> {out}/ring.log",
    );

    // The owner checks what is asking before deciding; declined, the agent says so and keeps
    // nothing.
    let linking = link_by_code(&laptop).await;
    assert!(
        linking
            .shown
            .contains(&format!("{}/link", app.public_url())),
        "{}",
        linking.shown
    );
    let seen = post(&ana, LOOKUP, json!({ "user_code": linking.code })).await;
    assert_eq!(seen["name"], "laptop");
    assert_eq!(seen["model"], "Test Laptop 14");
    assert_eq!(seen["os_version"], "Debian 13");
    assert_eq!(seen["find_device"], true);
    assert_eq!(seen["ip"], "127.0.0.1");
    let r = ana
        .raw(
            Method::POST,
            DENY,
            Some(json!({ "user_code": linking.code })),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (out, _) = linking.finish().await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("declined") && err.contains("access_denied"),
        "{err}"
    );
    assert!(!laptop.data().join("device.json").exists());
    assert_eq!(get(&ana, "/api/v1/devices").await, json!([]));

    // Approving takes a step-up; the code may be typed in lower case, without its dash.
    let linking = link_by_code(&laptop).await;
    let typed = linking.code.replace('-', "").to_lowercase();
    let e = refused(
        &ana,
        Method::POST,
        APPROVE,
        Some(json!({ "user_code": typed })),
    )
    .await;
    assert_eq!(e.code(), Some("step_up_required"));
    step_up_by_email(app, &ana, "ana@example.com").await;
    let approved = post(&ana, APPROVE, json!({ "user_code": typed })).await;
    assert_eq!(approved["model"], "Test Laptop 14");
    let code = linking.code.clone();
    let (out, printed) = linking.finish().await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains(&format!("to account {}", masked(&ana_id))),
        "{printed}"
    );
    let id = laptop.linked_id();
    let list = get(&ana, "/api/v1/devices").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["find_device"], true);
    // The code is used up.
    let e = refused(
        &ana,
        Method::POST,
        LOOKUP,
        Some(json!({ "user_code": code })),
    )
    .await;
    assert_eq!(e.status().map(|s| s.as_u16()), Some(404));
    assert_eq!(e.code(), Some("link_code_unknown"));
    // The device has a session of its own; the owner was told of the new sign-in, and the
    // security log has the approval and the link.
    let sessions = get(&ana, "/api/v1/sessions").await;
    assert!(
        sessions
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["device_model"] == "Test Laptop 14" && s["current"] == false),
        "{sessions}"
    );
    let alert = app
        .smtp
        .nth_with("ana@example.com", "Test Laptop 14", 1)
        .await;
    assert!(
        alert.subject().contains("New sign-in"),
        "{}",
        alert.subject()
    );
    let events = get(&ana, "/api/v1/me/security-events").await.to_string();
    assert!(
        events.contains("device_link_approved") && events.contains("device_linked"),
        "{events}"
    );

    // It is a device like any other: it syncs with its session, and a ring reaches it.
    ana.push(
        "notes",
        json!([{ "id": "n1", "op": "put", "body": crate::sync::note("Linked by code") }]),
        None,
    )
    .await
    .unwrap();
    laptop.start();
    until_online(&ana, &id, &laptop).await;
    let ring = send(&ana, &id, json!({ "kind": "ring" })).await;
    let ring_id = ring["id"].as_str().unwrap();
    laptop.until_ringing(ring_id).await;
    assert_eq!(laptop.stop_ring(), "the ring is stopped\n");
    until_state(&ana, &id, ring_id, "done", &laptop).await;
    until_mirrored(&laptop, "Linked by code").await;

    // From the linked laptop, `mica agent approve` links a second device: it shows what asks,
    // and takes the step-up code on its standard input.
    let phone = Agent::new(app, "phone", 42, "true");
    let linking = link_by_code(&phone).await;
    // (A minute after the last step-up code, so a new one may be sent.)
    app.advance(Duration::from_secs(61));
    let before = app.smtp.count_with("ana@example.com", STEP_UP);
    let mut approve = laptop
        .command(&["approve"])
        .arg(&linking.code)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(approve.stdout.take().unwrap());
    let mut shown = String::new();
    while !shown.contains("enter the code sent to") {
        let (line, rest) = line_of(stdout).await;
        if line.is_empty() {
            let out = finished(approve).await;
            panic!(
                "approve stopped early: {shown}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        stdout = rest;
        shown.push_str(&line);
    }
    assert!(
        shown.contains("\"phone\", Test Laptop 14 (Debian 13), asked from 127.0.0.1"),
        "{shown}"
    );
    let mail = app
        .smtp
        .nth_with("ana@example.com", STEP_UP, before + 1)
        .await;
    let step_up = six_digits(&mail.subject()).unwrap();
    let mut stdin = approve.stdin.take().unwrap();
    writeln!(stdin, "{step_up}").unwrap();
    drop(stdin);
    let out = finished(approve).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (out, _) = linking.finish().await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = get(&ana, "/api/v1/devices").await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["laptop", "phone"]);
    // The running laptop agent's session survived the approval's use of it: it still syncs.
    ana.push(
        "notes",
        json!([{ "id": "n2", "op": "put", "body": crate::sync::note("Still in sync") }]),
        None,
    )
    .await
    .unwrap();
    until_mirrored(&laptop, "Still in sync").await;
}

/// Waits until the agent's mirror of `notes` holds `text`.
async fn until_mirrored(agent: &Agent, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mirror =
            std::fs::read_to_string(agent.data().join("sync/notes.json")).unwrap_or_default();
        if mirror.contains(text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{text:?} never reached the agent's mirror:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn declaration(serial: &str) -> Value {
    json!({
        "name": "TV", "model": "Living Room TV", "os_version": "12", "app_version": "3",
        "hardware": { "imeis": [imei(90)], "serial": serial }, "find_device": true,
    })
}

/// A poll that must be refused: its error.
async fn poll_refused(app: &TestApp, device_code: &str) -> mica_client::ClientError {
    refused(
        &app.client,
        Method::POST,
        TOKEN,
        Some(json!({ "device_code": device_code })),
    )
    .await
}

fn status(e: &mica_client::ClientError) -> u16 {
    e.status().map(|s| s.as_u16()).unwrap_or(0)
}

async fn link_codes_are_single_use_limited_and_honour_the_activation_lock(app: &TestApp) {
    let (ana, ana_id) = owner(app, "ana@example.com").await;
    let (bob, _) = owner(app, "bob@example.com").await;
    let (cy, _) = owner(app, "cy@example.com").await;

    // Bad declarations are refused before anything is kept.
    let mut bad = declaration("TV1");
    bad["name"] = json!("");
    let e = refused(&app.client, Method::POST, REQUEST, Some(bad)).await;
    assert_eq!((status(&e), e.code()), (422, Some("invalid_field")));
    let mut bad = declaration("TV1");
    bad["hardware"]["imeis"] = json!(["12345"]);
    let e = refused(&app.client, Method::POST, REQUEST, Some(bad)).await;
    assert_eq!(status(&e), 422);
    let mut bad = declaration("TV1");
    bad["owner"] = json!("ana");
    let e = refused(&app.client, Method::POST, REQUEST, Some(bad)).await;
    assert!((400..500).contains(&status(&e)), "{e:?}");

    // A request: a secret device code, a short user code, and the page it points to.
    let first = post(&app.client, REQUEST, declaration("TV1")).await;
    let user_code = first["user_code"].as_str().unwrap().to_owned();
    assert!(
        user_code.len() == 9
            && user_code.chars().enumerate().all(|(i, c)| if i == 4 {
                c == '-'
            } else {
                "BCDFGHJKLMNPQRSTVWXZ".contains(c)
            }),
        "{user_code}"
    );
    let device_code = first["device_code"].as_str().unwrap().to_owned();
    assert!(device_code.starts_with("mdl_") && device_code.len() > 40);
    assert_eq!(first["interval"], 1);
    assert_eq!(first["expires_in"], 600);
    assert_eq!(
        first["verification_uri"],
        format!("{}/link", app.public_url())
    );
    let page = app.http.get(app.url("/link")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));
    assert!(page.text().await.unwrap().contains("Link a device"));

    // Polling: pending; too soon (slow down, with the wait); pending again after the interval.
    let e = poll_refused(app, &device_code).await;
    assert_eq!((status(&e), e.code()), (400, Some("authorization_pending")));
    let e = poll_refused(app, &device_code).await;
    assert_eq!((status(&e), e.code()), (429, Some("slow_down")));
    assert_eq!(e.retry_after(), Some(Duration::from_secs(6)));
    app.advance(Duration::from_secs(1));
    let e = poll_refused(app, &device_code).await;
    assert_eq!(e.code(), Some("authorization_pending"));
    for forged in ["mdl_forged", "nonsense", &format!("{device_code}x")] {
        let e = poll_refused(app, forged).await;
        assert_eq!((status(&e), e.code()), (400, Some("expired_token")));
    }

    // Wrong user codes are unknown, and an account may only guess so many.
    for typed in ["BCDF-GHJ", "../../etc", "AEIO-UAEI", "", "BCDF GHJK LM"] {
        let e = refused(
            &bob,
            Method::POST,
            LOOKUP,
            Some(json!({ "user_code": typed })),
        )
        .await;
        assert_eq!((status(&e), e.code()), (404, Some("link_code_unknown")));
    }
    let wrong = if user_code == "BCDF-GHJK" {
        "BCDF-GHJL"
    } else {
        "BCDF-GHJK"
    };
    for _ in 0..5 {
        let e = refused(
            &bob,
            Method::POST,
            LOOKUP,
            Some(json!({ "user_code": wrong })),
        )
        .await;
        assert_eq!(e.code(), Some("link_code_unknown"));
    }
    let e = refused(
        &bob,
        Method::POST,
        LOOKUP,
        Some(json!({ "user_code": user_code })),
    )
    .await;
    assert_eq!((status(&e), e.code()), (429, Some("rate_limited")));
    assert!(e.retry_after().is_some());

    // Approved by ana: one poll takes the device credential and a session of its own.
    step_up_by_email(app, &ana, "ana@example.com").await;
    post(&ana, APPROVE, json!({ "user_code": user_code })).await;
    app.advance(Duration::from_secs(1));
    let linked: Value = app
        .client
        .raw(
            Method::POST,
            TOKEN,
            Some(json!({ "device_code": device_code })),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(linked["device"]["name"], "TV");
    assert_eq!(linked["session"]["account_id"], ana_id.as_str());
    let credential = linked["credential"].as_str().unwrap();
    assert!(credential.starts_with("mdc_"));
    let device = app.client.with_token(credential);
    device
        .raw(
            Method::POST,
            "/api/v1/device/heartbeat",
            Some(json!({ "battery": 80 })),
        )
        .await
        .unwrap();
    let session = app
        .client
        .with_token(linked["session"]["access_token"].as_str().unwrap());
    let theirs = get(&session, "/api/v1/devices").await;
    assert_eq!(theirs[0]["id"], linked["device"]["id"]);
    assert_eq!(theirs[0]["battery"], 80);
    // Used up: a second poll gets nothing.
    app.advance(Duration::from_secs(1));
    let e = poll_refused(app, &device_code).await;
    assert_eq!(e.code(), Some("expired_token"));

    // The TV is reset and asks again. Find Device bound it to ana: bob cannot approve it, ana
    // can, and the new link replaces the old one.
    let again = post(&app.client, REQUEST, declaration("TV1")).await;
    step_up_by_email(app, &cy, "cy@example.com").await;
    let e = refused(
        &cy,
        Method::POST,
        APPROVE,
        Some(json!({ "user_code": again["user_code"] })),
    )
    .await;
    assert_eq!((status(&e), e.code()), (403, Some("activation_locked")));
    assert!(e.to_string().contains(&masked(&ana_id)), "{e}");
    post(&ana, APPROVE, json!({ "user_code": again["user_code"] })).await;
    app.advance(Duration::from_secs(1));
    let relinked: Value = app
        .client
        .raw(
            Method::POST,
            TOKEN,
            Some(json!({ "device_code": again["device_code"] })),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list = get(&ana, "/api/v1/devices").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], relinked["device"]["id"]);
    // The earlier link's credential no longer works.
    let e = refused(
        &device,
        Method::POST,
        "/api/v1/device/heartbeat",
        Some(json!({})),
    )
    .await;
    assert_eq!(status(&e), 401);

    // Declined: the device is told once, then its codes are gone.
    let declined = post(&app.client, REQUEST, declaration("TV2")).await;
    let r = ana
        .raw(
            Method::POST,
            DENY,
            Some(json!({ "user_code": declined["user_code"] })),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let code = declined["device_code"].as_str().unwrap();
    let e = poll_refused(app, code).await;
    assert_eq!((status(&e), e.code()), (403, Some("access_denied")));
    app.advance(Duration::from_secs(1));
    let e = poll_refused(app, code).await;
    assert_eq!(e.code(), Some("expired_token"));

    // An approval stands only while the session that gave it does: one given by a session
    // that then signs out is withdrawn.
    let withdrawn = post(&app.client, REQUEST, declaration("TV4")).await;
    let other = sign_in(app, "ana@example.com").await;
    app.advance(Duration::from_secs(61));
    step_up_by_email(app, &other, "ana@example.com").await;
    post(
        &other,
        APPROVE,
        json!({ "user_code": withdrawn["user_code"] }),
    )
    .await;
    other.sign_out().await.unwrap();
    app.advance(Duration::from_secs(1));
    let e = poll_refused(app, withdrawn["device_code"].as_str().unwrap()).await;
    assert_eq!((status(&e), e.code()), (403, Some("access_denied")));
    assert_eq!(
        get(&ana, "/api/v1/devices").await.as_array().map(Vec::len),
        Some(1)
    );

    // Requests are limited per address: ten an hour (four made so far).
    let mut last = Value::Null;
    for _ in 0..6 {
        last = post(&app.client, REQUEST, declaration("TV3")).await;
    }
    let e = refused(&app.client, Method::POST, REQUEST, Some(declaration("TV3"))).await;
    assert_eq!((status(&e), e.code()), (429, Some("rate_limited")));

    // Expired: nobody can look it up any more, and its poll says so.
    app.advance(Duration::from_secs(601));
    let e = refused(
        &ana,
        Method::POST,
        LOOKUP,
        Some(json!({ "user_code": last["user_code"] })),
    )
    .await;
    assert_eq!(e.code(), Some("link_code_unknown"));
    let e = poll_refused(app, last["device_code"].as_str().unwrap()).await;
    assert_eq!(e.code(), Some("expired_token"));
}

/// The deletion fixture's request: one the account declined and the device never polled.
pub(crate) async fn declined_request(app: &TestApp, c: &Client) {
    let asked = post(&app.client, REQUEST, declaration("TV9")).await;
    let r = c
        .raw(
            Method::POST,
            DENY,
            Some(json!({ "user_code": asked["user_code"] })),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}
