//! Device backups (CL-7), with the real agent binary backing up its folder and another agent
//! restoring it: incremental, kept per device, verified, restored wholly or in part.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mica_client::Client;
use reqwest::Method;
use serde_json::{json, Value};

use crate::devices::{link_http, owner, Agent};
use crate::on_both_backends;
use crate::security::step_up_by_email;
use crate::support::TestApp;

on_both_backends!(
    backups_are_incremental_verified_and_restored_onto_a_new_phone,
    bad_backups_are_refused_and_nothing_is_stored,
);

fn put(root: &Path, name: &str, bytes: &[u8]) {
    let p = root.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

fn noise(n: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn run(agent: &Agent, args: &[&str]) -> String {
    let out = agent.command(args).output().unwrap();
    assert!(
        out.status.success(),
        "mica agent {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(agent: &Agent, args: &[&str]) -> String {
    let out = agent.command(args).output().unwrap();
    assert!(!out.status.success(), "mica agent {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn backups_of(c: &Client) -> Vec<Value> {
    c.backups().await.unwrap()
}

async fn backup_usage(c: &Client) -> i64 {
    let u = c.usage().await.unwrap();
    u["categories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["category"] == "backups")
        .map_or(0, |c| c["bytes"].as_i64().unwrap())
}

async fn until_state(c: &Client, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let b = c.backup(id).await.unwrap();
        if b["state"] == state {
            return b;
        }
        assert!(Instant::now() < deadline, "backup never {state}: {b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn same_tree(a: &Path, b: &Path, names: &[&str]) {
    for n in names {
        assert_eq!(
            std::fs::read(a.join(n)).unwrap(),
            std::fs::read(b.join(n)).unwrap_or_default(),
            "{n}"
        );
    }
}

/// Files the blob store holds, under the data folder.
fn objects(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The chunk holding `bytes` (one chunk's worth) in the server's blob folder: its hash, and
/// the object's path.
fn chunk_object(app: &TestApp, bytes: &[u8]) -> (String, PathBuf) {
    let hash = blake3::hash(bytes).to_hex().to_string();
    let object = objects(&app.cfg.data_dir)
        .into_iter()
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&hash))
        })
        .expect("the chunk's object");
    (hash, object)
}

async fn backups_are_incremental_verified_and_restored_onto_a_new_phone(app: &TestApp) {
    let (ana, _) = owner(app, "ana@example.com").await;
    let old = Agent::new(app, "old-phone", 71, "true");
    assert!(old.link("ana@example.com").status.success());
    let folder = old.data().join("backup");
    let wallpaper = noise(300_000, 1);
    // Two chunks and a bit: a part bigger than one 4 MiB chunk.
    let notes = noise((4 << 20) + 123_457, 2);
    let files: Vec<(&str, Vec<u8>)> = vec![
        (
            "apps.json",
            br#"["org.example.notes","org.example.maps"]"#.to_vec(),
        ),
        (
            "home_screen.json",
            br#"{"pages":[["notes","maps"]]}"#.to_vec(),
        ),
        ("wallpaper.png", wallpaper.clone()),
        (
            "alarms.json",
            br#"[{"at":"07:00","days":"weekdays"}]"#.to_vec(),
        ),
        ("settings/system.json", br#"{"dark":false}"#.to_vec()),
        ("notifications/notes.json", br#"{"allowed":true}"#.to_vec()),
        ("app_data/org.example.notes.tar", notes.clone()),
    ];
    for (n, b) in &files {
        put(&folder, n, b);
    }
    // A name no part can have is left out, and said so; the rest is backed up.
    put(&folder, "My Notes (1).txt", b"left out");
    let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    let total: i64 = files.iter().map(|(_, b)| b.len() as i64).sum();

    // The first backup sends everything.
    let out = old.command(&["backup"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("backed up 7 parts"), "{said}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not backed up: \"My Notes (1).txt\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = backups_of(&ana).await;
    assert_eq!(list.len(), 1);
    let first = list[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(list[0]["device"]["name"], "old-phone");
    assert_eq!(list[0]["device"]["model"], "Test Laptop 14");
    assert_eq!(list[0]["device"]["id"], old.linked_id());
    assert_eq!(list[0]["size"], total);
    assert_eq!(list[0]["added"], total);
    assert_eq!(list[0]["parts"], 7);
    assert_eq!(backup_usage(&ana).await, total);
    // It is read back and checked in the background.
    let checked = until_state(&ana, &first, "verified").await;
    assert!(checked["verified_at"].is_string());
    let kinds: Vec<(String, String)> = checked["part_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(kinds.contains(&("settings/system.json".into(), "settings".into())));
    assert!(kinds.contains(&("app_data/org.example.notes.tar".into(), "app_data".into())));
    assert!(kinds.contains(&("wallpaper.png".into(), "wallpaper".into())));

    // The next backup sends only what changed: one setting.
    let dark = br#"{"dark":true,"font":"large"}"#.to_vec();
    put(&folder, "settings/system.json", &dark);
    app.advance(Duration::from_secs(60));
    run(&old, &["backup"]);
    let list = backups_of(&ana).await;
    assert_eq!(list.len(), 2);
    let second = list[0]["id"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    let total2 = total - 14 + dark.len() as i64;
    assert_eq!(list[0]["size"], total2);
    assert_eq!(list[0]["added"], dark.len() as i64);
    // The unchanged bytes count once, however many backups hold them.
    assert_eq!(backup_usage(&ana).await, total + dark.len() as i64);

    // A new phone, linked to the same account, restores some of it, then all of it: the newest
    // backup of the account, since it has none of its own.
    let new = Agent::new(app, "new-phone", 72, "true");
    assert!(new.link("ana@example.com").status.success());
    let target = new.data().join("backup");
    let said = run(&new, &["restore", "--kind", "settings", "--kind", "alarms"]);
    assert!(said.contains("restored 2 parts"), "{said}");
    assert!(said.contains("old-phone"), "{said}");
    assert_eq!(
        std::fs::read(target.join("settings/system.json")).unwrap(),
        dark
    );
    assert!(target.join("alarms.json").exists());
    assert!(!target.join("wallpaper.png").exists());
    let said = run(&new, &["restore"]);
    assert!(said.contains("restored 7 parts"), "{said}");
    same_tree(&folder, &target, &names);
    assert!(!target.join("My Notes (1).txt").exists());
    // Nothing is left half-written beside the restored files.
    assert!(objects(&target)
        .iter()
        .all(|p| !p.to_string_lossy().ends_with(".restoring")));
    // An earlier backup, one part, somewhere else.
    let elsewhere = new.data().join("elsewhere");
    run(
        &new,
        &[
            "restore",
            "--backup",
            &first,
            "--part",
            "settings",
            "--into",
            elsewhere.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(elsewhere.join("settings/system.json")).unwrap(),
        br#"{"dark":false}"#
    );
    assert!(!elsewhere.join("apps.json").exists());
    let said = fails(&new, &["restore", "--part", "nothing/here.json"]);
    assert!(said.contains("no part"), "{said}");

    // Three backups per device are kept: the fourth removes the first, and what only the first
    // held (the old setting) is freed.
    put(&folder, "alarms.json", br#"[{"at":"06:30"}]"#);
    app.advance(Duration::from_secs(60));
    run(&old, &["backup"]);
    put(&folder, "alarms.json", br#"[{"at":"06:45"}]"#);
    app.advance(Duration::from_secs(60));
    run(&old, &["backup"]);
    let list = backups_of(&ana).await;
    let ids: Vec<&str> = list.iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(list.len(), 3, "{list:?}");
    assert!(!ids.contains(&first.as_str()));
    assert!(ids.contains(&second.as_str()));
    assert_eq!(
        backup_usage(&ana).await,
        total - 14 + dark.len() as i64 + 16 + 16,
        "old alarms (34 bytes) stay in the second backup; the first's system.json went"
    );
    let (ok, out) = app.admin(&["check-usage"]);
    assert!(ok, "{out}");

    // The lost phone is removed; its backups stay, under its name, for the new one.
    step_up_by_email(app, &ana, "ana@example.com").await;
    ana.raw(
        Method::DELETE,
        &format!("/api/v1/devices/{}", old.linked_id()),
        None,
    )
    .await
    .unwrap();
    let list = backups_of(&ana).await;
    assert_eq!(list.len(), 3);
    assert!(list.iter().all(|b| b["device"]["name"] == "old-phone"));
    let listed = run(&new, &["backups"]);
    assert!(listed.contains("old-phone"), "{listed}");

    // Damage on the server's disk is found by the check, and a restore refuses the bad bytes
    // rather than replace a good file with them.
    let newest = list[0]["id"].as_str().unwrap().to_owned();
    let (hash, object) = chunk_object(app, &wallpaper);
    let mut bad = wallpaper.clone();
    bad[1000] ^= 0xff;
    std::fs::write(&object, &bad).unwrap();
    // The operator's check of the blob store: the sizes agree; reading the bytes back does not.
    let (ok, out) = app.admin(&["check-blobs"]);
    assert!(ok, "{out}");
    let (ok, out) = app.admin(&["check-blobs", "--deep"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("chunk {hash}'s bytes have changed")),
        "{out}"
    );
    let asked = ana.verify_backup(&newest).await.unwrap();
    assert_eq!(asked["id"], newest.as_str());
    let damaged = until_state(&ana, &newest, "damaged").await;
    assert!(
        damaged["damage"]
            .as_str()
            .unwrap()
            .contains("wallpaper.png"),
        "{damaged}"
    );
    // The damaged copy is no longer trusted: downloading it says so, and a restore refuses it
    // rather than replace a good file.
    let wall_file = damaged["part_list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "wallpaper.png")
        .unwrap()["file_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let e = ana.file_content(&wall_file, 0).await.unwrap_err();
    assert_eq!(e.code(), Some("file_damaged"), "{e}");
    let (ok, out) = app.admin(&["check-blobs"]);
    assert!(
        !ok && out.contains(&format!("file {wall_file} lost a chunk")),
        "{out}"
    );
    let said = fails(
        &new,
        &["restore", "--part", "wallpaper.png", "--backup", &newest],
    );
    assert!(said.contains("damaged"), "{said}");
    assert!(said.contains("nothing was restored"), "{said}");
    assert_eq!(
        std::fs::read(target.join("wallpaper.png")).unwrap(),
        wallpaper
    );
    // A device that still has the wallpaper backs it up: the plan asks for it again (the
    // damaged copy is not "held"), and storing it mends the old backup too.
    app.advance(Duration::from_secs(60));
    let said = run(&new, &["backup"]);
    assert!(said.contains("backed up 7 parts"), "{said}");
    ana.verify_backup(&newest).await.unwrap();
    until_state(&ana, &newest, "verified").await;
    let mended = new.data().join("mended");
    run(
        &new,
        &[
            "restore",
            "--backup",
            &newest,
            "--part",
            "wallpaper.png",
            "--into",
            mended.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(mended.join("wallpaper.png")).unwrap(),
        wallpaper
    );
    let (ok, out) = app.admin(&["check-blobs", "--deep"]);
    assert!(ok, "{out}");
    // An object nothing refers to is named.
    let stray = object.parent().unwrap().join("stray.x");
    std::fs::write(&stray, b"?").unwrap();
    let (ok, out) = app.admin(&["check-blobs"]);
    assert!(
        !ok && out.contains("stray.x") && out.contains("nothing refers to it"),
        "{out}"
    );
    std::fs::remove_file(&stray).unwrap();

    // Deleting backups frees their bytes.
    let list = backups_of(&ana).await;
    assert_eq!(list.len(), 4);
    for b in &list {
        ana.delete_backup(b["id"].as_str().unwrap()).await.unwrap();
    }
    assert!(backups_of(&ana).await.is_empty());
    assert_eq!(backup_usage(&ana).await, 0);
    let e = ana.backup(&newest).await.unwrap_err();
    assert_eq!(e.code(), Some("not_found"));
    let (ok, out) = app.admin(&["check-usage"]);
    assert!(ok, "{out}");
}

async fn refused(
    c: &Client,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> mica_client::ClientError {
    c.raw(method, path, body).await.unwrap_err()
}

fn part(name: &str, bytes: &[u8]) -> Value {
    let mut h = mica_blobs::ContentHasher::new();
    h.update(bytes);
    json!({ "name": name, "kind": "other", "size": bytes.len(), "content_hash": h.finish() })
}

async fn upload(app: &TestApp, c: &Client, bytes: &[u8]) -> String {
    let v: Value = app
        .http
        .post(app.url("/api/v1/files"))
        .bearer_auth(c.token().unwrap())
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["id"].as_str().unwrap().to_owned()
}

async fn bad_backups_are_refused_and_nothing_is_stored(app: &TestApp) {
    let (ana, _) = owner(app, "ana@example.com").await;
    let good = part("notes.txt", b"hello");
    // A session that is no linked device's cannot make a backup.
    let e = refused(
        &ana,
        Method::POST,
        "/api/v1/backups",
        Some(json!({ "parts": [good] })),
    )
    .await;
    assert_eq!(e.code(), Some("device_not_linked"), "{e}");
    // Linking through the API binds the device to this session.
    link_http(app, &ana, 81).await;

    let hash = good["content_hash"].as_str().unwrap().to_owned();
    for (parts, needle) in [
        (json!([]), "at least one part"),
        (
            json!([{ "name": "../x", "kind": "other", "size": 5, "content_hash": hash }]),
            "not a part name",
        ),
        (
            json!([{ "name": "/etc/passwd", "kind": "other", "size": 5, "content_hash": hash }]),
            "not a part name",
        ),
        (
            json!([{ "name": "a b", "kind": "other", "size": 5, "content_hash": hash }]),
            "not a part name",
        ),
        (
            json!([{ "name": "x".repeat(300), "kind": "other", "size": 5, "content_hash": hash }]),
            "not a part name",
        ),
        (json!([good, good]), "named twice"),
        (
            json!([{ "name": "a", "kind": "other", "size": 5, "content_hash": hash },
                { "name": "a/b", "kind": "other", "size": 5, "content_hash": hash }]),
            "also the folder",
        ),
        (
            json!([{ "name": "a", "kind": "games", "size": 5, "content_hash": hash }]),
            "kind is one of",
        ),
        (
            json!([{ "name": "a", "kind": "other", "size": -1, "content_hash": hash }]),
            "size",
        ),
        (
            json!([{ "name": "a", "kind": "other", "size": 5, "content_hash": "abc" }]),
            "content_hash",
        ),
        (
            json!([{ "name": "a", "kind": "other", "size": 5, "content_hash": hash, "file_id": "../f" }]),
            "no such file",
        ),
        (
            json!([{ "name": "a", "kind": "other", "size": 5, "content_hash": hash, "file_id": "f_nothere" }]),
            "file_id",
        ),
    ] {
        // A plan does not look at files; only the backup takes them.
        let paths: &[&str] = if needle == "file_id" {
            &["/api/v1/backups"]
        } else {
            &["/api/v1/backups/plan", "/api/v1/backups"]
        };
        for path in paths {
            let e = refused(&ana, Method::POST, path, Some(json!({ "parts": parts }))).await;
            assert_eq!(
                e.status().map(|s| s.as_u16()),
                Some(422),
                "{path} {parts}: {e}"
            );
            assert!(e.to_string().contains(needle), "{path} {parts}: {e}");
        }
    }
    let e = refused(
        &ana,
        Method::POST,
        "/api/v1/backups",
        Some(json!({ "parts": [good], "extra": 1 })),
    )
    .await;
    assert_eq!(e.code(), Some("invalid_body"), "{e}");

    // A part whose content nobody uploaded is named, with the plan's advice.
    let plan = ana.plan_backup(&json!([good])).await.unwrap();
    assert_eq!(plan["upload"], json!(["notes.txt"]));
    assert_eq!(plan["upload_bytes"], 5);
    let e = ana.create_backup(&json!([good])).await.unwrap_err();
    assert_eq!(e.code(), Some("backup_parts_missing"), "{e}");
    assert!(e.to_string().contains("notes.txt"), "{e}");
    // A file with other bytes than the part says is refused.
    let other = upload(app, &ana, b"HELLO").await;
    let mut lying = good.clone();
    lying["file_id"] = json!(other);
    let e = ana.create_backup(&json!([lying])).await.unwrap_err();
    assert_eq!(e.code(), Some("invalid_input"), "{e}");
    assert!(ana.backups().await.unwrap().is_empty());
    assert_eq!(backup_usage(&ana).await, 0);

    // Another account sees none of it and cannot use its files.
    let right = upload(app, &ana, b"hello").await;
    let mut fine = good.clone();
    fine["file_id"] = json!(right);
    let made = ana.create_backup(&json!([fine])).await.unwrap();
    let id = made["id"].as_str().unwrap();
    assert_eq!(made["part_list"][0]["file_id"], right.as_str());
    assert_eq!(backup_usage(&ana).await, 5);
    let (bob, _) = owner(app, "bob@example.com").await;
    link_http(app, &bob, 82).await;
    assert!(bob.backups().await.unwrap().is_empty());
    for (m, path) in [
        (Method::GET, format!("/api/v1/backups/{id}")),
        (Method::DELETE, format!("/api/v1/backups/{id}")),
        (Method::POST, format!("/api/v1/backups/{id}/verify")),
        (Method::GET, format!("/api/v1/files/{right}/content")),
    ] {
        let e = refused(&bob, m, &path, None).await;
        assert_eq!(e.code(), Some("not_found"), "{path}: {e}");
    }
    let mut stolen = good.clone();
    stolen["file_id"] = json!(right);
    let e = bob.create_backup(&json!([stolen])).await.unwrap_err();
    assert_eq!(e.code(), Some("invalid_input"), "{e}");
    // Bob's plan does not learn that Ana holds these bytes.
    let plan = bob.plan_backup(&json!([good])).await.unwrap();
    assert_eq!(plan["upload"], json!(["notes.txt"]));
    assert_eq!(ana.backups().await.unwrap().len(), 1);
    let (ok, out) = app.admin(&["check-usage"]);
    assert!(ok, "{out}");

    // A backup's own check skips a file read back intact within the period — but not one
    // that lost a chunk since. Read back once; then its chunk is damaged on disk, and the
    // check Ana asks for (which reads everything) finds and forgets it.
    until_state(&ana, id, "verified").await;
    let (_, object) = chunk_object(app, b"hello");
    std::fs::write(&object, b"jello").unwrap();
    ana.verify_backup(id).await.unwrap();
    until_state(&ana, id, "damaged").await;
    // The plan no longer calls that content held; a backup naming the damaged file itself is
    // checked, not skipped, and found damaged too.
    let plan = ana.plan_backup(&json!([good])).await.unwrap();
    assert_eq!(plan["upload"], json!(["notes.txt"]));
    let again = ana.create_backup(&json!([fine])).await.unwrap();
    let damaged = until_state(&ana, again["id"].as_str().unwrap(), "damaged").await;
    assert!(
        damaged["damage"].as_str().unwrap().contains("notes.txt"),
        "{damaged}"
    );
}
