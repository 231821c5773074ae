//! The sync engine over HTTP: two devices of one account syncing every category, conflicts,
//! merging, retried batches, stable paging, the recycle bin, quota, live notifications, other
//! accounts, and bad input.

use std::time::Duration;

use mica_client::Client;
use mica_core::Clock;
use serde_json::{json, Value};

use crate::on_both_backends;
use crate::support::{Backend, TestApp, PASSWORD};

on_both_backends!(
    two_devices_sync_every_category,
    a_contact_conflict_is_returned_not_lost,
    messages_from_two_devices_merge,
    a_retried_batch_is_applied_once,
    paging_is_stable_while_another_device_writes,
    a_restored_note_reaches_the_other_device,
    the_recycle_bin_expires_with_the_plan,
    a_token_older_than_forgotten_deletions_must_resync,
    quota_is_enforced_at_the_boundary_and_under_concurrency,
    a_push_reaches_the_other_device_live,
    other_accounts_data_is_out_of_reach,
    bad_items_are_refused_and_nothing_is_stored,
    the_usage_check_command_proves_usage,
    the_recycle_bin_comes_a_page_at_a_time,
    a_sync_gone_wrong_is_undone_at_once,
    the_owner_is_told_when_storage_runs_out,
);

pub(crate) fn vcard(uid: &str, name: &str) -> String {
    format!(
        "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:{uid}\r\nFN:{name}\r\nN:{name};;;;\r\nTEL;TYPE=cell:+351912345678\r\nEMAIL:{uid}@example.com\r\nEND:VCARD\r\n"
    )
}

fn vevent(uid: &str, summary: &str) -> String {
    format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Mica//Test//EN\r\nBEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:20260301T100000Z\r\nDTEND:20260301T110000Z\r\nSUMMARY:{summary}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
}

pub(crate) fn note(text: &str) -> Value {
    json!({"title": text, "body": format!("{text}\nmore text"), "created_at": "2026-11-01T10:00:00Z", "updated_at": "2026-11-01T10:00:00Z"})
}

fn message(thread: &str, text: &str) -> Value {
    json!({"thread_id": thread, "kind": "sms", "direction": "in", "addresses": ["+351912345678"], "body": text, "sent_at": "2026-11-01T10:00:00Z"})
}

/// A valid item of every category.
fn sample(category: &str, n: u32) -> Value {
    match category {
        "contacts" => json!(vcard(&format!("c{n}"), &format!("Person {n}"))),
        "calendar" => json!(vevent(&format!("e{n}"), &format!("Meeting {n}"))),
        "notes" => note(&format!("Note {n}")),
        "messages" => message("t1", &format!("Hello {n}")),
        "calls" => {
            json!({"number": "+351912345678", "direction": "missed", "started_at": "2026-11-01T10:00:00Z", "duration_secs": n})
        }
        "bookmarks" => {
            json!({"title": format!("Site {n}"), "url": format!("https://example.com/{n}")})
        }
        "browser_history" => {
            json!({"url": format!("https://example.com/{n}"), "title": "Example", "visited_at": "2026-11-01T10:00:00Z"})
        }
        "wifi" => json!({"ssid": format!("home-{n}"), "security": "wpa2", "password": "hunter22"}),
        "settings" => json!({"app": "com.example.clock", "values": {"alarm": "07:00", "n": n}}),
        "gallery" => {
            json!({"name": format!("IMG_{n}.jpg"), "mime_type": "image/jpeg", "size": 1234, "taken_at": "2026-11-01T10:00:00Z", "place": {"latitude": 38.7, "longitude": -9.1}})
        }
        "recordings" => {
            json!({"name": format!("Voice {n}"), "kind": "voice", "mime_type": "audio/ogg", "size": 999, "duration_secs": 12.5, "recorded_at": "2026-11-01T10:00:00Z"})
        }
        other => panic!("no sample for {other}"),
    }
}

const CATEGORIES: [&str; 11] = [
    "contacts",
    "calendar",
    "notes",
    "messages",
    "calls",
    "bookmarks",
    "browser_history",
    "wifi",
    "settings",
    "gallery",
    "recordings",
];

/// Device A (from sign-up) and device B (a second sign-in) of one account.
async fn two_devices(app: &TestApp, email: &str) -> (Client, Client) {
    let a = app.signup_email(email).await;
    let b = app.client.sign_in(email, PASSWORD, None).await.unwrap();
    (
        app.client.with_token(&a.access_token),
        app.client.with_token(&b.access_token),
    )
}

fn put(id: &str, body: Value) -> Value {
    json!({"id": id, "op": "put", "body": body})
}

fn update(id: &str, base: &str, body: Value) -> Value {
    json!({"id": id, "op": "put", "base_version": base, "body": body})
}

fn delete(id: &str, base: &str) -> Value {
    json!({"id": id, "op": "delete", "base_version": base})
}

fn status(results: &Value, i: usize) -> &str {
    results["results"][i]["status"].as_str().unwrap()
}

fn version(results: &Value, i: usize) -> String {
    results["results"][i]["version"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Pulls everything since `token`, following pages; returns the changes and the last token.
async fn pull_all(c: &Client, collection: &str, token: Option<&str>) -> (Vec<Value>, String) {
    let mut token = token.map(str::to_owned);
    let mut out = Vec::new();
    loop {
        let page = c.pull(collection, token.as_deref(), None).await.unwrap();
        out.extend(
            page.changes
                .iter()
                .map(|c| serde_json::to_value(c).unwrap()),
        );
        token = Some(page.token);
        if !page.more {
            return (out, token.unwrap_or_default());
        }
    }
}

async fn two_devices_sync_every_category(app: &TestApp) {
    let (a, b) = two_devices(app, "ana@example.com").await;
    let mut tokens = Vec::new();
    for (n, cat) in CATEGORIES.iter().enumerate() {
        let n = u32::try_from(n).unwrap();
        // B has synced the empty collection before A writes.
        let (none, token) = pull_all(&b, cat, None).await;
        assert!(none.is_empty());
        let r = a
            .push(
                cat,
                json!([put("x1", sample(cat, n)), put("x2", sample(cat, n + 100))]),
                None,
            )
            .await
            .unwrap();
        assert_eq!(status(&r, 0), "applied", "{cat}: {r}");
        tokens.push(token);
    }
    for (n, (cat, token)) in CATEGORIES.iter().zip(&tokens).enumerate() {
        let n = u32::try_from(n).unwrap();
        let (changes, _) = pull_all(&b, cat, Some(token)).await;
        assert_eq!(changes.len(), 2, "{cat}: {changes:?}");
        let x1 = changes.iter().find(|c| c["id"] == "x1").unwrap();
        // vCard and iCalendar come back byte for byte; JSON as sent.
        assert_eq!(x1["body"], sample(cat, n), "{cat}");
        assert_eq!(x1["deleted"], false);
    }

    // B edits a contact and deletes an event; A's incremental pull gets exactly those.
    let (_, a_contacts) = pull_all(&a, "contacts", None).await;
    let (_, a_calendar) = pull_all(&a, "calendar", None).await;
    let v = b.item("contacts", "x1").await.unwrap()["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let renamed = vcard("c0", "Person Zero");
    let r = b
        .push("contacts", json!([update("x1", &v, json!(renamed))]), None)
        .await
        .unwrap();
    assert_eq!(status(&r, 0), "applied");
    let ev = b.item("calendar", "x2").await.unwrap()["version"]
        .as_str()
        .unwrap()
        .to_owned();
    b.push("calendar", json!([delete("x2", &ev)]), None)
        .await
        .unwrap();
    let (changes, _) = pull_all(&a, "contacts", Some(&a_contacts)).await;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["body"], json!(renamed));
    let (changes, _) = pull_all(&a, "calendar", Some(&a_calendar)).await;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["id"], "x2");
    assert_eq!(changes[0]["deleted"], true);
    assert!(changes[0].get("body").is_none());

    // Usage is counted per category.
    let usage = a.usage().await.unwrap();
    let cats = usage["categories"].as_array().unwrap();
    for cat in CATEGORIES {
        assert!(
            cats.iter()
                .any(|c| c["category"] == cat && c["bytes"].as_i64().unwrap() > 0),
            "{cat} missing from {usage}"
        );
    }
    assert!(app.store().check_usage().await.unwrap().is_empty());
}

async fn a_contact_conflict_is_returned_not_lost(app: &TestApp) {
    let (a, b) = two_devices(app, "bea@example.com").await;
    let r = a
        .push(
            "contacts",
            json!([put("p1", json!(vcard("p1", "Rui")))]),
            None,
        )
        .await
        .unwrap();
    let v1 = version(&r, 0);
    // Both devices edit version 1.
    let from_a = vcard("p1", "Rui Costa");
    let from_b = vcard("p1", "Rui (work)");
    let r = a
        .push("contacts", json!([update("p1", &v1, json!(from_a))]), None)
        .await
        .unwrap();
    assert_eq!(status(&r, 0), "applied");
    let v2 = version(&r, 0);
    let r = b
        .push(
            "contacts",
            json!([
                update("p1", &v1, json!(from_b)),
                put("p2", json!(vcard("p2", "Eva")))
            ]),
            None,
        )
        .await
        .unwrap();
    // B's stale edit is a conflict carrying A's version; the rest of the batch applied.
    assert_eq!(status(&r, 0), "conflict");
    assert_eq!(r["results"][0]["version"], json!(v2));
    assert_eq!(r["results"][0]["current"]["body"], json!(from_a));
    assert_eq!(status(&r, 1), "applied");
    assert_eq!(
        b.item("contacts", "p1").await.unwrap()["body"],
        json!(from_a)
    );
    // B merges and writes on top of what it now knows.
    let merged = vcard("p1", "Rui Costa (work)");
    let r = b
        .push("contacts", json!([update("p1", &v2, json!(merged))]), None)
        .await
        .unwrap();
    assert_eq!(status(&r, 0), "applied");
    // A stale delete is a conflict too, and deletes nothing.
    let r = a
        .push("contacts", json!([delete("p1", &v2)]), None)
        .await
        .unwrap();
    assert_eq!(status(&r, 0), "conflict");
    assert_eq!(
        a.item("contacts", "p1").await.unwrap()["body"],
        json!(merged)
    );
    // Creating an id that exists is a conflict, not an overwrite.
    let r = a
        .push(
            "contacts",
            json!([put("p2", json!(vcard("p2", "Not Eva")))]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status(&r, 0), "conflict");
    assert_eq!(
        r["results"][0]["current"]["body"],
        json!(vcard("p2", "Eva"))
    );
}

async fn messages_from_two_devices_merge(app: &TestApp) {
    let (a, b) = two_devices(app, "cai@example.com").await;
    let r = a
        .push(
            "messages",
            json!([
                put("m1", message("t1", "hi")),
                put("m2", message("t1", "how are you"))
            ]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status(&r, 1), "applied");
    // B saw m1 too (the same SMS on both phones) and has m3.
    let r = b
        .push(
            "messages",
            json!([
                put("m3", message("t1", "fine")),
                put("m1", message("t1", "hi"))
            ]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status(&r, 0), "applied");
    assert_eq!(
        status(&r, 1),
        "applied",
        "append-only records never conflict"
    );
    for c in [&a, &b] {
        let (changes, _) = pull_all(c, "messages", None).await;
        let mut ids: Vec<&str> = changes.iter().map(|c| c["id"].as_str().unwrap()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["m1", "m2", "m3"]);
    }
    let usage = a.usage().await.unwrap();
    let m = usage["categories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["category"] == "messages")
        .unwrap()
        .clone();
    assert_eq!(m["items"], 3);
}

async fn a_retried_batch_is_applied_once(app: &TestApp) {
    let (a, b) = two_devices(app, "dan@example.com").await;
    let (_, token) = pull_all(&b, "notes", None).await;
    let batch = json!([put("n1", note("one")), put("n2", note("two"))]);
    let first = a
        .push("notes", batch.clone(), Some("batch-7f3a"))
        .await
        .unwrap();
    assert_eq!(first["replayed"], false);
    let used = a.usage().await.unwrap()["used_bytes"].clone();
    // The answer was lost; the device sends the same batch again.
    let again = a.push("notes", batch, Some("batch-7f3a")).await.unwrap();
    assert_eq!(again["replayed"], true);
    assert_eq!(again["results"], first["results"]);
    assert_eq!(a.usage().await.unwrap()["used_bytes"], used);
    let (changes, _) = pull_all(&b, "notes", Some(&token)).await;
    assert_eq!(changes.len(), 2, "{changes:?}");
    // The same key for another batch is a client bug, said clearly.
    let err = a
        .push(
            "notes",
            json!([put("n3", note("three"))]),
            Some("batch-7f3a"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("idempotency_key_reused"));
    assert_eq!(err.status().map(|s| s.as_u16()), Some(422));
    assert!(a.item("notes", "n3").await.is_err());
}

async fn paging_is_stable_while_another_device_writes(app: &TestApp) {
    let (a, b) = two_devices(app, "eli@example.com").await;
    let writes: Vec<Value> = (0..300)
        .map(|i| {
            put(
                &format!("c{i:03}"),
                json!(vcard(&format!("c{i}"), &format!("Person {i}"))),
            )
        })
        .collect();
    a.push("contacts", Value::Array(writes), None)
        .await
        .unwrap();

    // A third device of the account, with a session of its own, writes between B's pages — a
    // new contact and an edit of one B may or may not have seen yet, ten times — so every page
    // after the first is read across changes.
    let third = app
        .client
        .sign_in("eli@example.com", PASSWORD, None)
        .await
        .unwrap();
    let third = app.client.with_token(third.access_token);
    let mut seen = std::collections::BTreeMap::<String, (u64, Value)>::new();
    let mut last_version = 0u64;
    let mut token: Option<String> = None;
    let (mut pages, mut rounds) = (0, 0);
    loop {
        let page = b
            .pull("contacts", token.as_deref(), Some(25))
            .await
            .unwrap();
        pages += 1;
        for ch in page.changes {
            let v: u64 = ch.version.parse().unwrap();
            // The feed only moves forward: nothing repeats, nothing is reordered.
            assert!(v > last_version, "version {v} after {last_version}");
            last_version = v;
            seen.insert(ch.id, (v, ch.body.unwrap_or_default()));
        }
        token = Some(page.token);
        if !page.more && rounds == 10 {
            break;
        }
        if rounds < 10 {
            let id = format!("c{:03}", rounds * 29);
            let cur = third.item("contacts", &id).await.unwrap();
            let batch = vec![
                put(
                    &format!("new{rounds}"),
                    json!(vcard(&format!("new{rounds}"), "Newcomer")),
                ),
                update(
                    &id,
                    cur["version"].as_str().unwrap(),
                    json!(vcard(&id, &format!("Edited {rounds}"))),
                ),
            ];
            third
                .push("contacts", Value::Array(batch), None)
                .await
                .unwrap();
            rounds += 1;
        }
    }
    assert!(pages > 12, "{pages} pages");
    // B ends with exactly the server's state: every item, each in its latest version.
    let (truth, _) = pull_all(&a, "contacts", None).await;
    assert_eq!(truth.len(), 310);
    assert_eq!(seen.len(), 310);
    for t in truth {
        let (v, body) = &seen[t["id"].as_str().unwrap()];
        assert_eq!(v.to_string(), t["version"].as_str().unwrap());
        assert_eq!(body, &t["body"]);
    }
}

async fn a_restored_note_reaches_the_other_device(app: &TestApp) {
    let (a, b) = two_devices(app, "fay@example.com").await;
    let r = a
        .push("notes", json!([put("groceries", note("Groceries"))]), None)
        .await
        .unwrap();
    let (_, token) = pull_all(&b, "notes", None).await;
    let r = a
        .push("notes", json!([delete("groceries", &version(&r, 0))]), None)
        .await
        .unwrap();
    assert_eq!(status(&r, 0), "applied");
    let (changes, token) = pull_all(&b, "notes", Some(&token)).await;
    assert_eq!(changes[0]["deleted"], true);
    assert_eq!(
        a.item("notes", "groceries").await.unwrap_err().code(),
        Some("not_found")
    );

    let bin = a.recycle_bin(Some("notes")).await.unwrap();
    assert_eq!(bin.len(), 1);
    assert_eq!(bin[0]["summary"], "Groceries");
    assert_eq!(bin[0]["item_id"], "groceries");
    let restored = a.restore(bin[0]["id"].as_str().unwrap()).await.unwrap();
    assert_eq!(restored["body"], note("Groceries"));
    assert!(a.recycle_bin(None).await.unwrap().is_empty());

    // B's next pull brings it back.
    let (changes, _) = pull_all(&b, "notes", Some(&token)).await;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["id"], "groceries");
    assert_eq!(changes[0]["deleted"], false);
    assert_eq!(changes[0]["body"], note("Groceries"));
    // Restoring twice finds nothing.
    assert_eq!(
        a.restore(bin[0]["id"].as_str().unwrap())
            .await
            .unwrap_err()
            .code(),
        Some("not_found")
    );
    assert!(app.store().check_usage().await.unwrap().is_empty());
}

fn bin_bytes(usage: &Value) -> i64 {
    usage["categories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["category"] == "recycle_bin")
        .map_or(0, |c| c["bytes"].as_i64().unwrap())
}

async fn the_recycle_bin_expires_with_the_plan(app: &TestApp) {
    let (a, _) = two_devices(app, "gil@example.com").await;
    let r = a
        .push("notes", json!([put("old", note("Old note"))]), None)
        .await
        .unwrap();
    a.push("notes", json!([delete("old", &version(&r, 0))]), None)
        .await
        .unwrap();
    let size = i64::try_from(note("Old note").to_string().len()).unwrap();
    assert_eq!(bin_bytes(&a.usage().await.unwrap()), size);
    assert_eq!(
        a.usage().await.unwrap()["used_bytes"],
        size,
        "the bin counts against the quota"
    );

    // Free plan: 30 days. (Access tokens do not last a month: sign in again after each jump.)
    app.advance(Duration::from_secs(29 * 86_400));
    app.server_cloud().maintenance().await.unwrap();
    let a = signed_in(app, "gil@example.com").await;
    assert_eq!(a.recycle_bin(None).await.unwrap().len(), 1);
    app.advance(Duration::from_secs(2 * 86_400));
    let a = signed_in(app, "gil@example.com").await;
    assert!(
        a.recycle_bin(None).await.unwrap().is_empty(),
        "expired entries are not offered"
    );
    let (bin, _, _) = app.server_cloud().maintenance().await.unwrap();
    assert_eq!(bin, 1);
    let usage = a.usage().await.unwrap();
    assert_eq!(bin_bytes(&usage), 0);
    assert_eq!(usage["used_bytes"], 0, "purging frees the space");

    // Premium: 60 days.
    let t = app.signup_email("hal@example.com").await;
    let h = app.client.with_token(&t.access_token);
    app.store()
        .set_cloud_plan(t.account_id.parse().unwrap(), "premium", None)
        .await
        .unwrap();
    let r = h
        .push(
            "contacts",
            json!([put("k", json!(vcard("k", "Kim")))]),
            None,
        )
        .await
        .unwrap();
    h.push("contacts", json!([delete("k", &version(&r, 0))]), None)
        .await
        .unwrap();
    app.advance(Duration::from_secs(45 * 86_400));
    app.server_cloud().maintenance().await.unwrap();
    let h = signed_in(app, "hal@example.com").await;
    assert_eq!(h.recycle_bin(None).await.unwrap().len(), 1);
    app.advance(Duration::from_secs(16 * 86_400));
    app.server_cloud().maintenance().await.unwrap();
    let h = signed_in(app, "hal@example.com").await;
    assert!(h.recycle_bin(None).await.unwrap().is_empty());
    assert_eq!(h.usage().await.unwrap()["used_bytes"], 0);
    assert!(app.store().check_usage().await.unwrap().is_empty());
}

/// The feed remembers deletions for `tombstone_days` (90). A device whose token is older than
/// a forgotten deletion is told to resync (410), never handed a feed without it; a token taken
/// after it keeps working until a later deletion is forgotten in turn.
async fn a_token_older_than_forgotten_deletions_must_resync(app: &TestApp) {
    let (a, b) = two_devices(app, "ivo@example.com").await;
    let r = a
        .push(
            "notes",
            json!([
                put("n1", note("One")),
                put("n2", note("Two")),
                put("n3", note("Three"))
            ]),
            None,
        )
        .await
        .unwrap();
    let (_, before) = pull_all(&b, "notes", None).await;
    a.push("notes", json!([delete("n1", &version(&r, 0))]), None)
        .await
        .unwrap();
    let (changes, after) = pull_all(&b, "notes", Some(&before)).await;
    assert_eq!(ids(&changes), ["n1"]);

    app.advance(Duration::from_secs(91 * 86_400));
    let (_, tombstones, _) = app.server_cloud().maintenance().await.unwrap();
    assert_eq!(tombstones, 1);
    let b = signed_in(app, "ivo@example.com").await;
    let e = b.pull("notes", Some(&before), None).await.unwrap_err();
    assert_eq!(e.status().map(|s| s.as_u16()), Some(410));
    assert_eq!(e.code(), Some("sync_token_expired"), "{e}");
    assert!(b
        .pull("notes", Some(&after), None)
        .await
        .unwrap()
        .changes
        .is_empty());
    let (all, _) = pull_all(&b, "notes", None).await;
    assert_eq!(ids(&all), ["n2", "n3"]);

    // A second purge moves the mark up past the newer token too.
    let a = signed_in(app, "ivo@example.com").await;
    a.push("notes", json!([delete("n2", &version(&r, 1))]), None)
        .await
        .unwrap();
    app.advance(Duration::from_secs(91 * 86_400));
    app.server_cloud().maintenance().await.unwrap();
    let b = signed_in(app, "ivo@example.com").await;
    let e = b.pull("notes", Some(&after), None).await.unwrap_err();
    assert_eq!(e.code(), Some("sync_token_expired"), "{e}");
    let e = b.pull("notes", Some(&before), None).await.unwrap_err();
    assert_eq!(e.code(), Some("sync_token_expired"), "{e}");
}

fn ids(changes: &[Value]) -> Vec<&str> {
    changes.iter().map(|c| c["id"].as_str().unwrap()).collect()
}

async fn signed_in(app: &TestApp, email: &str) -> Client {
    let t = app.client.sign_in(email, PASSWORD, None).await.unwrap();
    app.client.with_token(&t.access_token)
}

async fn quota_is_enforced_at_the_boundary_and_under_concurrency(app: &TestApp) {
    let t = app.signup_email("ivo@example.com").await;
    let a = app.client.with_token(&t.access_token);
    let account = t.account_id.parse().unwrap();
    let first = note("first");
    let second = note("second");
    let size = |v: &Value| i64::try_from(v.to_string().len()).unwrap();
    // Exactly enough for both.
    app.store()
        .set_cloud_plan(account, "free", Some(size(&first) + size(&second)))
        .await
        .unwrap();
    a.push("notes", json!([put("n1", first.clone())]), None)
        .await
        .unwrap();
    a.push("notes", json!([put("n2", second.clone())]), None)
        .await
        .unwrap();
    let usage = a.usage().await.unwrap();
    assert_eq!(usage["used_bytes"], usage["quota_bytes"]);
    // One more byte is refused, whole, with its own code.
    let err = a
        .push("notes", json!([put("n3", json!({"body": "", "created_at": "2026-11-01T10:00:00Z", "updated_at": "2026-11-01T10:00:00Z"}))]), None)
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(507));
    assert_eq!(err.code(), Some("quota_exceeded"));
    assert!(a.item("notes", "n3").await.is_err());
    // Reading and deleting still work; the bin keeps the bytes until it is emptied.
    assert_eq!(a.item("notes", "n1").await.unwrap()["body"], first);
    let v = a.item("notes", "n1").await.unwrap()["version"]
        .as_str()
        .unwrap()
        .to_owned();
    a.push("notes", json!([delete("n1", &v)]), None)
        .await
        .unwrap();
    let bin = a.recycle_bin(None).await.unwrap();
    a.purge(bin[0]["id"].as_str().unwrap()).await.unwrap();
    assert_eq!(a.usage().await.unwrap()["used_bytes"], size(&second));
    // A batch whose first write would fit but not the whole is refused whole: nothing of it
    // is kept.
    let err = a
        .push(
            "notes",
            json!([put("n3", first.clone()), put("n4", note("x"))]),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(507));
    assert!(a.item("notes", "n3").await.is_err());
    assert!(a.item("notes", "n4").await.is_err());
    assert_eq!(a.usage().await.unwrap()["used_bytes"], size(&second));
    a.push("notes", json!([put("n3", first.clone())]), None)
        .await
        .unwrap();
    // Full again; a deleted note still counts in the bin, so restoring it fits.
    let v = a.item("notes", "n3").await.unwrap()["version"]
        .as_str()
        .unwrap()
        .to_owned();
    a.push("notes", json!([delete("n3", &v)]), None)
        .await
        .unwrap();
    let bin = a.recycle_bin(None).await.unwrap();
    a.restore(bin[0]["id"].as_str().unwrap()).await.unwrap();
    assert_eq!(a.item("notes", "n3").await.unwrap()["body"], first);
    let usage = a.usage().await.unwrap();
    assert_eq!(usage["used_bytes"], usage["quota_bytes"]);

    // Twenty writers at once against a small quota: the total never goes past it.
    let t = app.signup_email("jo@example.com").await;
    let j = app.client.with_token(&t.access_token);
    let quota = 20_000;
    app.store()
        .set_cloud_plan(t.account_id.parse().unwrap(), "free", Some(quota))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for w in 0..20 {
        let j = j.clone();
        tasks.push(tokio::spawn(async move {
            let mut stored = 0i64;
            for i in 0..10 {
                let body = json!({"title": format!("w{w} n{i}"), "body": "x".repeat(300), "created_at": "2026-11-01T10:00:00Z", "updated_at": "2026-11-01T10:00:00Z"});
                let len = i64::try_from(body.to_string().len()).unwrap();
                match j.push("notes", json!([put(&format!("w{w}-{i}"), body)]), None).await {
                    Ok(_) => stored += len,
                    Err(e) => assert_eq!(e.code(), Some("quota_exceeded")),
                }
            }
            stored
        }));
    }
    let mut stored = 0;
    for t in tasks {
        stored += t.await.unwrap();
    }
    let usage = j.usage().await.unwrap();
    let used = usage["used_bytes"].as_i64().unwrap();
    assert!(used <= quota, "{used} > {quota}");
    assert!(used > quota - 400, "the quota was filled: {used}");
    assert_eq!(used, stored, "usage is exactly what was accepted");
    assert!(app.store().check_usage().await.unwrap().is_empty());
}

/// A device's live channel (Server-Sent Events), read as a stream of `(event, data)`.
pub(crate) struct Channel {
    resp: reqwest::Response,
    buf: String,
}

impl Channel {
    pub(crate) async fn open(app: &TestApp, token: &str) -> Channel {
        let resp = app
            .http
            .get(app.url("/api/v1/device/channel"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let mut ch = Channel {
            resp,
            buf: String::new(),
        };
        let (event, _) = ch.next(Duration::from_secs(5)).await.expect("ready");
        assert_eq!(event, "ready");
        ch
    }

    /// The next event within `within`, keep-alive comments skipped.
    pub(crate) async fn next(&mut self, within: Duration) -> Option<(String, Value)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if data.is_empty() && event == "message" {
                    continue;
                }
                return Some((event, serde_json::from_str(&data).unwrap_or(Value::Null)));
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk())
                .await
                .ok()?;
            let chunk = chunk.ok()??;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

async fn a_push_reaches_the_other_device_live(app: &TestApp) {
    let a = app.signup_email("kai@example.com").await;
    let b = app
        .client
        .sign_in("kai@example.com", PASSWORD, None)
        .await
        .unwrap();
    let c = app
        .client
        .sign_in("kai@example.com", PASSWORD, None)
        .await
        .unwrap();
    let da = app.client.with_token(&a.access_token);
    // Device C syncs only notes.
    app.client
        .with_token(&c.access_token)
        .set_device_sync(&["notes"])
        .await
        .unwrap();
    let mut chb = Channel::open(app, &b.access_token).await;
    let mut chc = Channel::open(app, &c.access_token).await;

    let sent = std::time::Instant::now();
    let r = da
        .push(
            "contacts",
            json!([put("z", json!(vcard("z", "Zoe")))]),
            None,
        )
        .await
        .unwrap();
    let (event, data) = chb
        .next(Duration::from_secs(1))
        .await
        .expect("B told within a second");
    assert!(sent.elapsed() < Duration::from_secs(1));
    assert_eq!(event, "changed");
    assert_eq!(data["collection"], "contacts");
    assert_eq!(data["version"].to_string(), version(&r, 0));
    // B pulls and has it.
    let (changes, _) = pull_all(&app.client.with_token(&b.access_token), "contacts", None).await;
    assert_eq!(changes[0]["id"], "z");
    // C does not sync contacts: no wake-up for it; a note wakes both.
    da.push("notes", json!([put("n", note("hello"))]), None)
        .await
        .unwrap();
    let (event, data) = chc
        .next(Duration::from_secs(1))
        .await
        .expect("C told about notes");
    assert_eq!(event, "changed");
    assert_eq!(data["category"], "notes", "C was not woken for contacts");
    let (_, data) = chb.next(Duration::from_secs(1)).await.unwrap();
    assert_eq!(data["category"], "notes");
    // Another account's changes wake nobody here.
    let other = app.signup_email("lea@example.com").await;
    app.client
        .with_token(&other.access_token)
        .push("notes", json!([put("n", note("theirs"))]), None)
        .await
        .unwrap();
    assert!(chb.next(Duration::from_millis(300)).await.is_none());
    // B signs out: its channel ends with the session instead of telling a signed-out device
    // (or whoever holds it) what changes; the next change ends it at once.
    app.client
        .with_token(&b.access_token)
        .sign_out()
        .await
        .unwrap();
    da.push("notes", json!([put("m", note("after"))]), None)
        .await
        .unwrap();
    let (event, data) = chb
        .next(Duration::from_secs(10))
        .await
        .expect("the channel ends");
    assert_eq!(event, "ended");
    assert_eq!(data["reason"], "signed_out");
}

async fn other_accounts_data_is_out_of_reach(app: &TestApp) {
    let (a, _) = two_devices(app, "max@example.com").await;
    let r = a
        .push("notes", json!([put("secret", note("Diary"))]), None)
        .await
        .unwrap();
    a.push("notes", json!([delete("secret", &version(&r, 0))]), None)
        .await
        .unwrap();
    a.push("notes", json!([put("kept", note("Kept"))]), None)
        .await
        .unwrap();
    let bin_id = a.recycle_bin(None).await.unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    a.push(
        "contacts",
        json!([put("c", json!(vcard("c", "Ana")))]),
        None,
    )
    .await
    .unwrap();
    let (_, a_token) = pull_all(&a, "notes", None).await;

    let t = app.signup_email("ned@example.com").await;
    let n = app.client.with_token(&t.access_token);
    assert_eq!(
        n.item("notes", "kept").await.unwrap_err().code(),
        Some("not_found")
    );
    assert_eq!(
        n.item("notes", "kept")
            .await
            .unwrap_err()
            .status()
            .map(|s| s.as_u16()),
        Some(404)
    );
    for e in [
        n.restore(&bin_id).await.unwrap_err(),
        n.purge(&bin_id).await.unwrap_err(),
    ] {
        assert_eq!(e.code(), Some("not_found"));
        assert_eq!(e.status().map(|s| s.as_u16()), Some(404));
    }
    let (changes, _) = pull_all(&n, "notes", None).await;
    assert!(changes.is_empty());
    // A's token means nothing in N's collection.
    let err = n.pull("notes", Some(&a_token), None).await.unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(410));
    // Writing the same ids creates N's own items; A's stay as they were.
    n.push("notes", json!([put("kept", note("Mine"))]), None)
        .await
        .unwrap();
    assert_eq!(a.item("notes", "kept").await.unwrap()["body"], note("Kept"));
    assert_eq!(a.recycle_bin(None).await.unwrap().len(), 1);
    // No token, no data.
    assert_eq!(
        app.client
            .pull("notes", None, None)
            .await
            .unwrap_err()
            .code(),
        Some("unauthenticated")
    );
}

async fn bad_items_are_refused_and_nothing_is_stored(app: &TestApp) {
    let t = app.signup_email("ola@example.com").await;
    let a = app.client.with_token(&t.access_token);
    let good = put("ok", json!(vcard("ok", "Fine")));
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "contacts",
            json!([
                good.clone(),
                put("bad", json!("BEGIN:VCARD\r\nVERSION:4.0\r\nFN:x\r\n"))
            ]),
            422,
            "invalid_item",
        ),
        (
            "contacts",
            json!([put("bad", json!("hello"))]),
            422,
            "invalid_item",
        ),
        (
            "contacts",
            json!([put("bad", json!({"name": "x"}))]),
            422,
            "invalid_item",
        ),
        (
            "calendar",
            json!([put(
                "bad",
                json!("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nEND:VCALENDAR\r\n")
            )]),
            422,
            "invalid_item",
        ),
        (
            "notes",
            json!([put("bad", json!({"body": "x"}))]),
            422,
            "invalid_item",
        ),
        (
            "notes",
            json!([put("bad", json!("just text"))]),
            422,
            "invalid_item",
        ),
        (
            "wifi",
            json!([put("bad", json!({"ssid": "x", "security": "none at all"}))]),
            422,
            "invalid_item",
        ),
        (
            "contacts",
            json!([put("../etc", json!(vcard("p", "P")))]),
            422,
            "invalid_input",
        ),
        (
            "contacts",
            json!([put("a/b", json!(vcard("p", "P")))]),
            422,
            "invalid_input",
        ),
        (
            "contacts",
            json!([good.clone(), good.clone()]),
            422,
            "invalid_input",
        ),
        (
            "contacts",
            json!([{"id": "x", "op": "upsert", "body": vcard("x", "X")}]),
            422,
            "invalid_input",
        ),
        (
            "contacts",
            json!([{"id": "x", "op": "delete"}]),
            422,
            "invalid_input",
        ),
        ("contacts", json!([]), 422, "invalid_input"),
        (
            "notes",
            json!([put(
                "big",
                json!({"body": "x".repeat(1_100_000), "created_at": "2026-11-01T10:00:00Z", "updated_at": "2026-11-01T10:00:00Z"})
            )]),
            413,
            "item_too_large",
        ),
        (
            "pets",
            json!([put("rex", json!({"name": "Rex"}))]),
            404,
            "not_found",
        ),
    ];
    for (collection, writes, code, err) in cases {
        let e = a.push(collection, writes.clone(), None).await.unwrap_err();
        assert_eq!(
            e.status().map(|s| s.as_u16()),
            Some(code),
            "{collection} {writes:.200}: {e}"
        );
        assert_eq!(e.code(), Some(err), "{collection}: {e}");
    }
    // A large batch is checked over several cores: the error still names the first bad write,
    // whichever run it fell in, and nothing of the batch is stored.
    let big = |bad: &[(usize, Value)]| {
        let mut writes: Vec<Value> = (0..300)
            .map(|i| {
                let id = format!("big{i}");
                put(&id, json!(vcard(&id, "Big")))
            })
            .collect();
        for (i, w) in bad {
            writes[*i] = w.clone();
        }
        Value::Array(writes)
    };
    let broken = json!("BEGIN:VCARD\r\nVERSION:4.0\r\nFN:x\r\n");
    let e = a
        .push(
            "contacts",
            big(&[
                (290, put("big290", json!("hello"))),
                (250, put("big250", broken.clone())),
            ]),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("invalid_item"), "{e}");
    assert!(e.to_string().contains("write 250"), "{e}");
    let e = a
        .push(
            "contacts",
            big(&[
                (260, put("big260", broken)),
                (100, put("big99", json!(vcard("d", "D")))),
            ]),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("invalid_input"), "{e}");
    assert!(e.to_string().contains("write 100"), "{e}");

    // What a database's text cannot hold (PostgreSQL's takes no NUL), in the fields indexed as
    // text: a UID, the file an item stands for, a collection's name — refused on both engines.
    let nul_uid = [
        (
            "contacts",
            "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:urn:uuid:a\u{0}b\r\nFN:Nul\r\nEND:VCARD\r\n",
        ),
        (
            "calendar",
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\nBEGIN:VEVENT\r\nUID:e\u{0}1\r\n\
             DTSTAMP:20261101T100000Z\r\nDTSTART:20261101T100000Z\r\nSUMMARY:Nul\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
        ),
    ];
    for (collection, text) in nul_uid {
        let e = a
            .push(
                collection,
                json!([put("fine", sample(collection, 1)), put("nul", json!(text))]),
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("invalid_item"), "{collection}: {e}");
        assert!(
            e.to_string().contains("UID holds a control character"),
            "{e}"
        );
    }
    for (collection, body) in [
        (
            "gallery",
            json!({"file_id": "f_\u{0}", "name": "IMG_1.jpg", "mime_type": "image/jpeg", "size": 1}),
        ),
        (
            "recordings",
            json!({"file_id": "\u{0}", "name": "Memo", "kind": "voice", "mime_type": "audio/mp4", "size": 1, "duration_secs": 1.0, "recorded_at": "2026-11-01T10:00:00Z"}),
        ),
        (
            "drive",
            json!({"name": "a.txt", "kind": "file", "file_id": "f_a\u{0}"}),
        ),
    ] {
        let e = a
            .push(collection, json!([put("nul", body)]), None)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("invalid_item"), "{collection}: {e}");
        assert!(
            e.to_string()
                .contains("file_id is not the id of an uploaded file"),
            "{e}"
        );
    }
    let e = a
        .raw(
            reqwest::Method::PUT,
            "/api/v1/collections/work",
            Some(json!({"category": "notes", "name": "Work\u{0}"})),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("invalid_input"), "{e}");
    assert_eq!(e.status().map(|s| s.as_u16()), Some(422));
    assert!(a
        .collections()
        .await
        .unwrap()
        .iter()
        .all(|c| c["id"] != "work"));

    // Nothing of any refused batch was stored, not even its good writes.
    for c in [
        "contacts",
        "calendar",
        "notes",
        "wifi",
        "gallery",
        "recordings",
        "drive",
    ] {
        assert!(pull_all(&a, c, None).await.0.is_empty(), "{c}");
    }
    assert_eq!(a.usage().await.unwrap()["used_bytes"], 0);

    // Tokens: garbage, and one from the future.
    let e = a.pull("contacts", Some("hello"), None).await.unwrap_err();
    assert_eq!(e.status().map(|s| s.as_u16()), Some(400));
    assert_eq!(e.code(), Some("invalid_sync_token"));
    let (_, token) = pull_all(&a, "contacts", None).await;
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = "999999".into();
    let e = a
        .pull("contacts", Some(&parts.join(".")), None)
        .await
        .unwrap_err();
    assert_eq!(e.status().map(|s| s.as_u16()), Some(410));
    assert_eq!(e.code(), Some("sync_token_unknown"));
    assert!(e.to_string().contains("resync"), "{e}");

    // Unknown categories and collections.
    let e = a
        .raw(
            reqwest::Method::PUT,
            "/api/v1/collections/pets",
            Some(json!({"category": "pets", "name": "Pets"})),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("unknown_category"));
    assert_eq!(e.status().map(|s| s.as_u16()), Some(422));
    let e = a
        .raw(
            reqwest::Method::GET,
            "/api/v1/collections/pets/changes",
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.status().map(|s| s.as_u16()), Some(404));
    let e = a.recycle_bin(Some("pets")).await.unwrap_err();
    assert_eq!(e.code(), Some("unknown_category"));
    assert_eq!(e.status().map(|s| s.as_u16()), Some(422));
    let e = a.set_device_sync(&["contacts", "pets"]).await.unwrap_err();
    assert_eq!(e.code(), Some("unknown_category"));
    assert_eq!(e.status().map(|s| s.as_u16()), Some(422));
    // Nothing was left behind by the refusals.
    assert!(a
        .collections()
        .await
        .unwrap()
        .iter()
        .all(|c| c["id"] != "pets"));
    // A second calendar is fine; reusing a category's default id for another is not.
    a.raw(
        reqwest::Method::PUT,
        "/api/v1/collections/work",
        Some(json!({"category": "calendar", "name": "Work"})),
    )
    .await
    .unwrap();
    let e = a
        .raw(
            reqwest::Method::PUT,
            "/api/v1/collections/work",
            Some(json!({"category": "notes", "name": "Work notes"})),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("collection_exists"));
    let r = a
        .push(
            "work",
            json!([put("w1", json!(vevent("w1", "Standup")))]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status(&r, 0), "applied");
    assert!(app.store().check_usage().await.unwrap().is_empty());
    // Behind those checks, the store's own guard: on PostgreSQL such a value is a refusal the
    // domain turns into a 4xx, not a failure of the database (SQLite keeps a NUL as it is).
    let account: mica_core::AccountId = t.account_id.parse().unwrap();
    let stored = app
        .store()
        .ensure_collection(account, "nul", "notes", "a\u{0}b", mica_core::Timestamp(0))
        .await;
    match app.store().backend() {
        mica_store::Backend::Postgres => assert!(
            matches!(stored, Err(mica_store::StoreError::UnstorableText)),
            "{stored:?}"
        ),
        mica_store::Backend::Sqlite => assert!(stored.is_ok(), "{stored:?}"),
    }
}

/// Runs `mica admin check-usage` (the real binary) on the test's database.
fn check_usage_command(app: &TestApp) -> std::process::Output {
    use secrecy::ExposeSecret;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mica"));
    cmd.args(["admin", "check-usage"])
        .env("MICA_DATA_DIR", &app.cfg.data_dir)
        .env("MICA_LOG", "warn");
    if let Some(url) = &app.cfg.database_url {
        cmd.env("MICA_DATABASE_URL", url.expose_secret());
    }
    cmd.output().unwrap()
}

async fn the_usage_check_command_proves_usage(app: &TestApp) {
    let (a, _) = two_devices(app, "pia@example.com").await;
    for cat in CATEGORIES {
        a.push(
            cat,
            json!([put("one", sample(cat, 1)), put("two", sample(cat, 2))]),
            None,
        )
        .await
        .unwrap();
    }
    let r = a.item("notes", "one").await.unwrap();
    a.push(
        "notes",
        json!([delete("one", r["version"].as_str().unwrap())]),
        None,
    )
    .await
    .unwrap();
    let out = check_usage_command(app);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("consistent"), "{stdout}");

    // A record that disagrees with what is stored is found and reported.
    let pool = sqlx::AnyPool::connect(&app.cfg.database_url())
        .await
        .unwrap();
    sqlx::query("UPDATE cloud_usage SET bytes = bytes + 7 WHERE category = 'notes'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE cloud_accounts SET used_bytes = used_bytes - 5")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let out = check_usage_command(app);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(stdout.contains("notes: recorded"), "{stdout}");
    assert!(stdout.contains("total: recorded"), "{stdout}");
}

/// An account's collections are capped (four here): creations past the cap are refused with a
/// clear error, also when they arrive together (PostgreSQL runs them side by side); what exists
/// stays usable, and so do the categories' own collections.
async fn collections_are_capped(backend: Backend) {
    let Some(app) = TestApp::start_with(backend, |cfg| cfg.cloud.max_collections = 4).await else {
        eprintln!("MICA_TEST_POSTGRES_URL is not set: PostgreSQL variant skipped");
        return;
    };
    let t = app.signup_email("cam@example.com").await;
    let c = app.client.with_token(&t.access_token);
    let create = |n: usize| {
        let c = c.clone();
        async move {
            c.raw(
                reqwest::Method::PUT,
                &format!("/api/v1/collections/cal-{n}"),
                Some(json!({ "category": "calendar", "name": format!("Calendar {n}") })),
            )
            .await
        }
    };
    let results = futures_util::future::join_all((0..6).map(create)).await;
    let mut refused = 0;
    for r in results {
        if let Err(e) = r {
            assert_eq!(e.status().map(|s| s.as_u16()), Some(409), "{e:?}");
            assert_eq!(e.code(), Some("too_many_collections"), "{e:?}");
            refused += 1;
        }
    }
    assert_eq!(refused, 2);
    let list = c.collections().await.unwrap();
    let mine: Vec<&str> = list
        .iter()
        .filter_map(|c| c["id"].as_str())
        .filter(|id| id.starts_with("cal-"))
        .collect();
    assert_eq!(mine.len(), 4, "{list:?}");
    // Creating one that exists is still answered (the call is idempotent) …
    let again = create(mine[0].trim_start_matches("cal-").parse().unwrap()).await;
    assert!(again.is_ok(), "{again:?}");
    // … and the categories' own collections still come into being when first used.
    c.push(
        "notes",
        json!([{"id": "n1", "op": "put", "body": note("Still works")}]),
        None,
    )
    .await
    .unwrap();
    let (notes, _) = pull_all(&c, "notes", None).await;
    assert_eq!(notes.len(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_are_capped_on_sqlite() {
    collections_are_capped(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_are_capped_on_postgres() {
    collections_are_capped(Backend::Postgres).await;
}

/// A large recycle bin is listed a page at a time, newest first: every entry once, none
/// skipped, also when entries of later pages are restored or purged between two pages.
async fn the_recycle_bin_comes_a_page_at_a_time(app: &TestApp) {
    let (a, _) = two_devices(app, "pia@example.com").await;
    let puts: Vec<Value> = (0..30)
        .map(|n| put(&format!("n{n:02}"), note(&format!("Note {n}"))))
        .collect();
    let r = a.push("notes", Value::Array(puts), None).await.unwrap();
    // 25 deleted at once (one time, so their order is by id), 5 more a minute later.
    let deletes: Vec<Value> = (0..25)
        .map(|n| delete(&format!("n{n:02}"), &version(&r, n)))
        .collect();
    a.push("notes", Value::Array(deletes), None).await.unwrap();
    app.advance(Duration::from_secs(60));
    let deletes: Vec<Value> = (25..30)
        .map(|n| delete(&format!("n{n:02}"), &version(&r, n)))
        .collect();
    a.push("notes", Value::Array(deletes), None).await.unwrap();

    let first = a
        .recycle_bin_page(Some("notes"), None, Some(10))
        .await
        .unwrap();
    let entries = first["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 10);
    // The newest deletions first.
    let items: Vec<&str> = entries
        .iter()
        .map(|e| e["item_id"].as_str().unwrap())
        .collect();
    assert!(
        items[..5]
            .iter()
            .all(|i| ["n25", "n26", "n27", "n28", "n29"].contains(i)),
        "{items:?}"
    );
    let mut seen: Vec<String> = items.iter().map(|s| (*s).to_owned()).collect();
    // Between two pages, an entry of a later page is purged and another restored.
    let all = a.recycle_bin(Some("notes")).await.unwrap();
    assert_eq!(all.len(), 30);
    let (purged, restored) = (&all[20], &all[25]);
    a.raw(
        reqwest::Method::DELETE,
        &format!("/api/v1/recycle-bin/{}", purged["id"].as_str().unwrap()),
        None,
    )
    .await
    .unwrap();
    a.restore(restored["id"].as_str().unwrap()).await.unwrap();
    let mut cursor = first["next"].as_str().unwrap().to_owned();
    loop {
        let page = a
            .recycle_bin_page(Some("notes"), Some(&cursor), Some(10))
            .await
            .unwrap();
        for e in page["entries"].as_array().unwrap() {
            seen.push(e["item_id"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(n) => cursor = n.to_owned(),
            None => break,
        }
    }
    let gone = [
        purged["item_id"].as_str().unwrap(),
        restored["item_id"].as_str().unwrap(),
    ];
    let expected: Vec<&str> = all
        .iter()
        .map(|e| e["item_id"].as_str().unwrap())
        .filter(|i| !gone.contains(i))
        .collect();
    assert_eq!(seen, expected);

    // A cursor this server did not give, or a page size out of range: a clear 422.
    for (cursor, limit) in [
        (Some("bm90IGEgY3Vyc29y"), None),
        // An undated cursor (the gallery's kind): every bin entry has a time.
        (Some("LX54"), None),
        (Some("%%%"), None),
        (None, Some(0)),
        (None, Some(1001)),
    ] {
        let e = a.recycle_bin_page(None, cursor, limit).await.unwrap_err();
        assert_eq!(e.status().map(|s| s.as_u16()), Some(422), "{e:?}");
        assert_eq!(e.code(), Some("invalid_input"), "{e:?}");
    }
}

/// A device's sync goes wrong and deletes most of the address book: one request puts back
/// everything of the category deleted since just before, and the other device gets it all
/// back; what was deleted earlier, in another category, or whose place is taken again stays
/// in the bin.
async fn a_sync_gone_wrong_is_undone_at_once(app: &TestApp) {
    let (a, b) = two_devices(app, "gil@example.com").await;
    let writes: Vec<Value> = (0..60)
        .map(|i| {
            put(
                &format!("c{i}"),
                json!(vcard(&format!("u{i}"), &format!("Friend {i}"))),
            )
        })
        .collect();
    let r = a.push("contacts", json!(writes), None).await.unwrap();
    let versions: Vec<String> = (0..60).map(|i| version(&r, i)).collect();
    a.push("notes", json!([put("n1", note("Keep"))]), None)
        .await
        .unwrap();
    // Deleted on purpose, a few minutes before.
    a.push("contacts", json!([delete("c0", &versions[0])]), None)
        .await
        .unwrap();
    app.advance(Duration::from_secs(5 * 60));
    let (_, token) = pull_all(&b, "contacts", None).await;

    // The bad sync: 50 contacts and the note gone.
    let before = app.clock.now().to_rfc3339();
    app.advance(Duration::from_secs(60));
    let gone: Vec<Value> = (1..51)
        .map(|i| delete(&format!("c{i}"), &versions[i]))
        .collect();
    a.push("contacts", json!(gone), None).await.unwrap();
    let nv = a.item("notes", "n1").await.unwrap()["version"]
        .as_str()
        .unwrap()
        .to_owned();
    a.push("notes", json!([delete("n1", &nv)]), None)
        .await
        .unwrap();
    // Meanwhile the person re-typed one of them.
    a.push(
        "contacts",
        json!([put("c7", json!(vcard("u7", "Friend 7, again")))]),
        None,
    )
    .await
    .unwrap();
    let (changes, token) = pull_all(&b, "contacts", Some(&token)).await;
    assert_eq!(changes.iter().filter(|c| c["deleted"] == true).count(), 49);

    let raw = |body: Value| {
        let a = a.clone();
        async move {
            a.raw(
                reqwest::Method::POST,
                "/api/v1/recycle-bin/restore",
                Some(body),
            )
            .await
        }
    };
    let done: Value = raw(json!({"category": "contacts", "deleted_since": before}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        done,
        json!({"restored": 49, "kept": 1, "more": false, "next": null})
    );
    let (changes, _) = pull_all(&b, "contacts", Some(&token)).await;
    assert_eq!(changes.len(), 49, "{changes:?}");
    assert!(changes.iter().all(|c| c["deleted"] == false));
    assert_eq!(
        a.item("contacts", "c1").await.unwrap()["body"],
        json!(vcard("u1", "Friend 1"))
    );
    assert_eq!(
        a.item("contacts", "c7").await.unwrap()["body"],
        json!(vcard("u7", "Friend 7, again"))
    );
    // Still in the bin: the one whose id is taken again, the one deleted before, the note.
    let left: Vec<String> = a
        .recycle_bin(None)
        .await
        .unwrap()
        .iter()
        .map(|e| e["item_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(left.len(), 3, "{left:?}");
    for id in ["c7", "c0", "n1"] {
        assert!(left.iter().any(|l| l == id), "{id} in {left:?}");
    }
    assert!(app.server_cloud().check_usage().await.unwrap().is_empty());

    // In the drive: a folder whose name was taken again meanwhile stays in the bin, and what
    // was in it comes back at the top level rather than inside a folder no listing reaches.
    let folder = |id: &str, name: &str, parent: Option<&str>| {
        put(
            id,
            json!({"kind": "folder", "name": name, "parent": parent}),
        )
    };
    let r = a
        .push(
            "drive",
            json!([
                folder("photos", "Photos", None),
                folder("y2026", "2026", Some("photos"))
            ]),
            None,
        )
        .await
        .unwrap();
    app.advance(Duration::from_secs(60));
    let drive_since = app.clock.now().to_rfc3339();
    a.push(
        "drive",
        json!([
            delete("y2026", &version(&r, 1)),
            delete("photos", &version(&r, 0))
        ]),
        None,
    )
    .await
    .unwrap();
    a.push("drive", json!([folder("photos-new", "Photos", None)]), None)
        .await
        .unwrap();
    let done: Value = raw(json!({"category": "drive", "deleted_since": drive_since}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        done,
        json!({"restored": 1, "kept": 1, "more": false, "next": null})
    );
    let y = a.item("drive", "y2026").await.unwrap();
    assert!(y["body"]["parent"].is_null(), "{y}");

    // Bad input: a clear 4xx, nothing restored.
    for (body, status, code) in [
        (json!({"deleted_since": "yesterday"}), 422, "invalid_input"),
        (
            json!({"category": "spells", "deleted_since": before}),
            422,
            "unknown_category",
        ),
        (json!({"since": before}), 422, "invalid_body"),
    ] {
        let e = raw(body.clone()).await.unwrap_err();
        assert_eq!(e.status().map(|s| s.as_u16()), Some(status), "{body}");
        assert_eq!(e.code(), Some(code), "{body}");
    }
    assert_eq!(a.recycle_bin(None).await.unwrap().len(), 4);
}

/// An account nearing its quota: the owner is told at 90 % and again when it is full, once
/// each (however often the maintenance runs), and again after usage fell below 80 % and rose.
async fn the_owner_is_told_when_storage_runs_out(app: &TestApp) {
    let t = app.signup_email("ida@example.com").await;
    let a = app.client.with_token(&t.access_token);
    let account: mica_core::AccountId = t.account_id.parse().unwrap();
    let writes: Vec<Value> = (0..20)
        .map(|i| put(&format!("n{i}"), note(&format!("Note {i}"))))
        .collect();
    a.push("notes", json!(writes), None).await.unwrap();
    let used = a.usage().await.unwrap()["used_bytes"].as_i64().unwrap();
    let cloud = app.server_cloud();
    let quota = |q: i64| async move {
        app.store()
            .set_cloud_plan(account, "free", Some(q))
            .await
            .unwrap();
    };
    const ALMOST: &str = "When it is full, new photos";
    const FULL: &str = "Your storage is full";
    // Below 90 %: nothing to tell.
    quota(used * 2).await;
    assert_eq!(cloud.storage_notices().await.unwrap(), 0);
    // 95 %: told once, with the figures.
    quota(used * 100 / 95).await;
    assert_eq!(cloud.storage_notices().await.unwrap(), 1);
    assert_eq!(cloud.storage_notices().await.unwrap(), 0);
    let mail = app.smtp.nth_with("ida@example.com", ALMOST, 1).await;
    assert_eq!(mail.subject(), "Mica: your storage is almost full");
    assert!(
        mail.body().contains("Your storage is 95% full"),
        "{}",
        mail.body()
    );
    // Full (the plan shrank under it): told again, once.
    quota(used - 1).await;
    assert_eq!(cloud.storage_notices().await.unwrap(), 1);
    assert_eq!(cloud.storage_notices().await.unwrap(), 0);
    let mail = app.smtp.nth_with("ida@example.com", FULL, 1).await;
    assert_eq!(mail.subject(), "Mica: your storage is full");
    // Room again (under 80 %), then nearly full again: news again.
    quota(used * 2).await;
    assert_eq!(cloud.storage_notices().await.unwrap(), 0);
    quota(used * 100 / 91).await;
    assert_eq!(cloud.storage_notices().await.unwrap(), 1);
    app.smtp.nth_with("ida@example.com", ALMOST, 2).await;
    assert_eq!(app.smtp.count_with("ida@example.com", FULL), 1);
}
