//! Account deletion: step-up and a code, then every row of the account removed by a durable job
//! that resumes after a crash; other accounts untouched; the identifiers free again.

use std::time::Duration;

use mica_core::AccountId;
use mica_store::{Store, ACCOUNT_DATA, OUTLIVES_ACCOUNTS};

use crate::on_both_backends;
use crate::passkeys::{authenticator, register};
use crate::security::{enable_totp, step_up_by_email};
use crate::support::{six_digits, Backend, TestApp, PASSWORD};
use crate::sync::{note, vcard};

on_both_backends!(deletion_removes_every_row_and_frees_the_identifiers);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_killed_half_way_resumes_sqlite() {
    deletion_killed_half_way_resumes(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_killed_half_way_resumes_postgres() {
    if crate::support::postgres_url().is_none() {
        eprintln!("MICA_TEST_POSTGRES_URL is not set: PostgreSQL variant skipped");
        return;
    }
    deletion_killed_half_way_resumes(Backend::Postgres).await;
}

/// An account with something in every table: two sessions, a wrong password, TOTP with recovery
/// codes, a passkey and a registration left half-way, security events, a pending reset code.
async fn populated_account(app: &TestApp, email: &str) -> (AccountId, mica_client::Client) {
    let t = app.signup_email(email).await;
    app.client.sign_in(email, PASSWORD, None).await.unwrap();
    let _ = app.client.sign_in(email, "Wrong-password-1", None).await;
    let c = app.client.with_token(&t.access_token);
    enable_totp(app, &c, email).await;
    register(app, &c, &mut authenticator(), "Laptop").await;
    c.passkey_registration_begin().await.unwrap();
    // Cloud data: items, a deleted one in the recycle bin, a retried-batch record, a device's
    // chosen categories.
    let r = c
        .push(
            "contacts",
            serde_json::json!([
                {"id": "a", "op": "put", "body": vcard("a", "Ann")},
                {"id": "b", "op": "put", "body": vcard("b", "Bob")}
            ]),
            Some("batch-1"),
        )
        .await
        .unwrap();
    let v = r["results"][0]["version"].as_str().unwrap();
    c.push(
        "contacts",
        serde_json::json!([{"id": "a", "op": "delete", "base_version": v}]),
        None,
    )
    .await
    .unwrap();
    c.push(
        "notes",
        serde_json::json!([{"id": "n", "op": "put", "body": note("n")}]),
        None,
    )
    .await
    .unwrap();
    c.set_device_sync(&["contacts"]).await.unwrap();
    // Files: a photo in the gallery, a file nothing references yet, an unfinished upload.
    let upload = |body: Vec<u8>, len: usize| {
        app.http
            .post(app.url("/api/v1/uploads"))
            .bearer_auth(&t.access_token)
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Length", len.to_string())
            .header("Content-Type", "application/offset+octet-stream")
            .body(body)
            .send()
    };
    let photo = upload(vec![1u8; 5 << 20], 5 << 20).await.unwrap();
    let file = photo.headers()["mica-file-id"].to_str().unwrap().to_owned();
    c.push(
        "gallery",
        serde_json::json!([{"id": "p", "op": "put", "body": {"file_id": file, "name": "p.jpg", "mime_type": "image/jpeg", "size": 5 << 20}}]),
        None,
    )
    .await
    .unwrap();
    upload(vec![2u8; 1000], 1000).await.unwrap();
    upload(vec![3u8; 1000], 2000).await.unwrap();
    // A linked device with Find Device on (so an activation lock): a location it reported, a
    // command sent to it.
    let n = email.bytes().map(u64::from).sum::<u64>();
    let (device_id, device) = crate::devices::link_http(app, &c, n).await;
    let at = time::OffsetDateTime::from_unix_timestamp(app.clock_secs())
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    device
        .raw(
            reqwest::Method::POST,
            "/api/v1/device/locations",
            Some(serde_json::json!({ "locations": [
                { "lat": 38.7, "lon": -9.1, "accuracy": 10.0, "source": "gps", "at": at }
            ] })),
        )
        .await
        .unwrap();
    c.raw(
        reqwest::Method::POST,
        &format!("/api/v1/devices/{device_id}/commands"),
        Some(serde_json::json!({ "kind": "ring" })),
    )
    .await
    .unwrap();
    // A device that asked to be linked by code, which the account declined.
    crate::link_codes::declined_request(app, &c).await;
    // A stranger's request to recover the account, waiting.
    crate::account_recovery::file_request(app, email, &format!("rescue.{email}"), &["x"]).await;
    app.client.forgot_password(email).await.unwrap();
    (t.account_id.parse().unwrap(), c)
}

async fn counts(store: &Store, id: AccountId) -> Vec<(&'static str, i64)> {
    store.account_row_counts(id).await.unwrap()
}

/// Every table of the live schema must be registered for deletion, and none may hold a row of
/// the account — checked by the registry's condition and, independently, by any `account_id`.
async fn assert_nothing_left(store: &Store, id: AccountId) {
    let registered: Vec<&str> = ACCOUNT_DATA.iter().map(|t| t.table).collect();
    for table in store.table_names().await.unwrap() {
        if OUTLIVES_ACCOUNTS.contains(&table.as_str()) {
            continue;
        }
        assert!(
            registered.contains(&table.as_str()),
            "table {table} is not in mica_store::ACCOUNT_DATA: deleting an account would forget it"
        );
        let columns = store.table_columns(&table).await.unwrap();
        let key = if table == "accounts" {
            Some("id")
        } else {
            columns
                .iter()
                .any(|c| c == "account_id")
                .then_some("account_id")
        };
        if let Some(key) = key {
            let n = raw_count(store, &table, key, id).await;
            assert_eq!(n, 0, "{table} still holds rows of {id}");
        }
    }
    for (table, n) in counts(store, id).await {
        assert_eq!(n, 0, "{table} still holds rows of {id}");
    }
}

async fn raw_count(store: &Store, table: &str, key: &str, id: AccountId) -> i64 {
    // Not through the registry's conditions, which would prove nothing: ask the table directly.
    store.count_where(table, key, id.as_i64()).await.unwrap()
}

pub(crate) async fn wait_until_deleted(store: &Store, id: AccountId) {
    for _ in 0..200 {
        if counts(store, id).await.iter().all(|(_, n)| *n == 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "account {id} not deleted within 10 s: {:?}",
        counts(store, id).await
    );
}

pub(crate) async fn confirm_deletion(app: &TestApp, c: &mica_client::Client, email: &str) {
    // Not without a fresh step-up…
    app.advance(Duration::from_secs(11 * 60));
    assert_eq!(
        c.deletion_request("email").await.unwrap_err().code(),
        Some("step_up_required")
    );
    step_up_by_email(app, c, email).await;
    // …and not without the confirmation code.
    let sent = c.deletion_request("email").await.unwrap();
    let mail = app.smtp.nth_with(email, "delete your account", 1).await;
    let code = six_digits(&mail.subject()).unwrap();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    assert_eq!(
        c.deletion_confirm(&sent.challenge_id, wrong)
            .await
            .unwrap_err()
            .code(),
        Some("invalid_code")
    );
    let v = c.deletion_confirm(&sent.challenge_id, &code).await.unwrap();
    assert_eq!(v["status"], "deleting");
}

async fn deletion_removes_every_row_and_frees_the_identifiers(app: &TestApp) {
    let (hal, c) = populated_account(app, "hal@example.com").await;
    let (ivy, _) = populated_account(app, "ivy@example.com").await;
    let store = app.store();
    assert!(
        counts(store, hal)
            .await
            .iter()
            .filter(|(_, n)| *n > 0)
            .count()
            >= 21,
        "{:?}",
        counts(store, hal).await
    );
    let ivy_before = counts(store, ivy).await;
    let cloud = app.server_cloud();
    assert_eq!(
        cloud.stored_bytes(hal).await.unwrap(),
        (4, (5 << 20) + 2000)
    );
    let ivy_stored = cloud.stored_bytes(ivy).await.unwrap();

    confirm_deletion(app, &c, "hal@example.com").await;
    // Signed out everywhere at once.
    assert_eq!(c.me().await.unwrap_err().code(), Some("unauthenticated"));
    assert!(app
        .client
        .sign_in("hal@example.com", PASSWORD, None)
        .await
        .is_err());

    wait_until_deleted(store, hal).await;
    assert_nothing_left(store, hal).await;
    assert_eq!(
        cloud.stored_bytes(hal).await.unwrap(),
        (0, 0),
        "the blob store keeps nothing of the account"
    );
    assert_eq!(
        counts(store, ivy).await,
        ivy_before,
        "another account is untouched"
    );
    assert_eq!(cloud.stored_bytes(ivy).await.unwrap(), ivy_stored);

    // The address is free again.
    app.advance(Duration::from_secs(61));
    let fresh = app.signup_email("hal@example.com").await;
    assert_ne!(fresh.account_id, hal.to_string());
}

async fn deletion_killed_half_way_resumes(backend: Backend) {
    let mut app = TestApp::start_with(backend, |cfg| cfg.run_jobs = false)
        .await
        .unwrap();
    let (jo, c) = populated_account(&app, "jo@example.com").await;
    confirm_deletion(&app, &c, "jo@example.com").await;

    // Nothing runs the job on this node; do its first two steps by hand, then "crash" holding
    // the lease.
    let store = app.store().clone();
    let mut job = store
        .claim_job(mica_core::Clock::now(&app.clock), 120_000)
        .await
        .unwrap()
        .expect("a queued job");
    for _ in 0..2 {
        assert!(!store.account_deletion_step(&job).await.unwrap());
        job.step += 1;
    }
    let partial = counts(&store, jo).await;
    assert_eq!(partial[0], ("verification_codes", 0));
    assert_eq!(partial[1], ("refresh_tokens", 0));
    assert!(
        partial.iter().any(|(t, n)| *t == "sessions" && *n > 0),
        "{partial:?}"
    );

    // A new node starts; once the dead node's lease runs out, it finishes the job.
    app.restart_with(|cfg| cfg.run_jobs = true).await;
    app.advance(Duration::from_secs(121));
    let store = app.store().clone();
    wait_until_deleted(&store, jo).await;
    assert_nothing_left(&store, jo).await;
    assert_eq!(app.server_cloud().stored_bytes(jo).await.unwrap(), (0, 0));
    app.stop().await;
}
