//! Data export: a zip archive built in the background, opened here with a standard tool
//! (Python's zipfile), downloadable by its owner only, until it expires; deleted with the account.

use std::time::Duration;

use serde_json::Value;

use crate::deletion::{confirm_deletion, wait_until_deleted};
use crate::on_both_backends;
use crate::support::{TestApp, PASSWORD};
use crate::sync::{note, vcard};

const EVENT: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Mica//Test//EN\r\nBEGIN:VEVENT\r\nUID:dentist\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:20261201T090000Z\r\nSUMMARY:Dentist\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";

on_both_backends!(
    export_holds_the_account_data_and_expires,
    a_large_account_is_exported_whole_a_page_at_a_time,
);

fn python(args: &[&str]) -> String {
    let out = std::process::Command::new("python3")
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python3 {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub(crate) fn member(zip: &std::path::Path, name: &str) -> String {
    python(&[
        "-c",
        "import sys, zipfile; sys.stdout.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]).decode())",
        zip.to_str().unwrap(),
        name,
    ])
}

pub(crate) fn member_bytes(zip: &std::path::Path, name: &str) -> Vec<u8> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))",
            zip.to_str().unwrap(),
            name,
        ])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Asks for an archive and waits (10 s at most) until it is the account's one archive, ready;
/// its entry in the list.
pub(crate) async fn export_when_ready(app: &TestApp, token: &str, email: &str) -> Value {
    // The whole account leaves with it: a fresh step-up first (a minute after any code
    // asked for before).
    app.advance(std::time::Duration::from_secs(61));
    crate::security::step_up_by_email(app, &app.client.with_token(token), email).await;
    let resp = app
        .http
        .post(app.url("/api/v1/me/exports"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let asked: Value = resp.json().await.unwrap();
    let mut list = Value::Null;
    for _ in 0..200 {
        list = app
            .http
            .get(app.url("/api/v1/me/exports"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if list.as_array().unwrap().len() == 1 && list[0]["status"] == "ready" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(
        list[0]["id"], asked["id"],
        "export ready within 10 s: {list}"
    );
    list[0].clone()
}

async fn export_holds_the_account_data_and_expires(app: &TestApp) {
    let t = app.signup_email("kai@example.com").await;
    let c = app.client.with_token(&t.access_token);
    c.set_profile(serde_json::json!({"nickname": "Kai", "country": "DE"}))
        .await
        .unwrap();
    let _ = app
        .client
        .sign_in("kai@example.com", "Wrong-password-1", None)
        .await;
    // Cloud data: two contacts (one deleted, so not exported), an event, a note.
    let r = c
        .push(
            "contacts",
            serde_json::json!([
                {"id": "ana", "op": "put", "body": vcard("ana", "Ana Lima")},
                {"id": "bo", "op": "put", "body": vcard("bo", "Bo Berg")},
                {"id": "gone", "op": "put", "body": vcard("gone", "Gone Person")}
            ]),
            None,
        )
        .await
        .unwrap();
    c.push(
        "contacts",
        serde_json::json!([{"id": "gone", "op": "delete", "base_version": r["results"][2]["version"]}]),
        None,
    )
    .await
    .unwrap();
    c.push(
        "calendar",
        serde_json::json!([{"id": "dentist", "op": "put", "body": EVENT}]),
        None,
    )
    .await
    .unwrap();
    c.push(
        "notes",
        serde_json::json!([{"id": "n1", "op": "put", "body": note("Shopping")}]),
        None,
    )
    .await
    .unwrap();
    // Files: a photo in the gallery, and a file in a drive folder. Their originals go in.
    let tus = crate::files::Tus {
        app,
        token: t.access_token.clone(),
        account_id: t.account_id.clone(),
    };
    let photo: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let photo_id = tus.upload(&photo, "beach.jpg").await.unwrap();
    c.push(
        "gallery",
        serde_json::json!([{"id": "p1", "op": "put",
            "body": crate::files::photo(&photo_id, "beach.jpg", photo.len())}]),
        None,
    )
    .await
    .unwrap();
    let plan = b"Trip plan: the coast, then the hills.".to_vec();
    let plan_id = tus
        .upload_typed(&plan, "plan.txt", "text/plain")
        .await
        .unwrap();
    c.push(
        "drive",
        serde_json::json!([
            {"id": "trips", "op": "put", "body": {"kind": "folder", "name": "Trips"}},
            {"id": "plan", "op": "put",
             "body": {"kind": "file", "name": "plan.txt", "parent": "trips", "file_id": plan_id}},
        ]),
        None,
    )
    .await
    .unwrap();
    // A linked device with a location.
    let linked: Value = c
        .raw(
            reqwest::Method::POST,
            "/api/v1/devices",
            Some(serde_json::json!({
                "name": "Kai's phone", "model": "Fairphone 5", "os_version": "14", "app_version": "1",
                "hardware": { "serial": "FP5KAI" }, "find_device": true,
            })),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    app.client
        .with_token(linked["credential"].as_str().unwrap())
        .raw(
            reqwest::Method::POST,
            "/api/v1/device/locations",
            Some(
                serde_json::json!({ "locations": [{ "lat": 52.52, "lon": 13.405, "accuracy": 8.0,
                "source": "gps", "at": time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339).unwrap() }] }),
            ),
        )
        .await
        .unwrap();
    // A backup of that device (its session is the one that linked it).
    let alarms = br#"[{"at":"07:00"}]"#.to_vec();
    let alarms_file = tus.upload(&alarms, "alarms.json").await.unwrap();
    let mut h = mica_blobs::ContentHasher::new();
    h.update(&alarms);
    let alarms_id = h.finish();
    c.create_backup(
        &serde_json::json!([{ "name": "alarms.json", "kind": "alarms",
        "size": alarms.len(), "content_hash": alarms_id, "file_id": alarms_file }]),
    )
    .await
    .unwrap();
    let url = |p: &str| app.url(p);

    // The whole account in one file: not for a session alone (a stolen phone's, say).
    let resp = app
        .http
        .post(url("/api/v1/me/exports"))
        .bearer_auth(&t.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "step_up_required");
    // Built in the background; the owner is told it was asked for.
    let ready = export_when_ready(app, &t.access_token, "kai@example.com").await;
    let notice = app
        .smtp
        .nth_with(
            "kai@example.com",
            "A copy of all the data in your account was requested",
            1,
        )
        .await;
    assert_eq!(notice.subject(), "Mica: a copy of your data was requested");
    let id = ready["id"].as_str().unwrap().to_owned();
    let download = ready["download"].as_str().unwrap().to_owned();

    let resp = app
        .http
        .get(url(&download))
        .bearer_auth(&t.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "application/zip");
    assert!(resp.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains(".zip"));
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, ready["size"].as_u64().unwrap());
    let file = std::env::temp_dir().join(format!("{id}.zip"));
    std::fs::write(&file, &bytes).unwrap();

    // A standard tool opens it and finds the data.
    python(&["-m", "zipfile", "-t", file.to_str().unwrap()]);
    let listing = python(&["-m", "zipfile", "-l", file.to_str().unwrap()]);
    for name in [
        "README.txt",
        "account.json",
        "profile.json",
        "login-records.json",
        "sessions.json",
        "security-events.json",
        "recovery.json",
        "app-passwords.json",
        "apps.json",
    ] {
        assert!(listing.contains(name), "{name} in {listing}");
    }
    let account: Value = serde_json::from_str(&member(&file, "account.json")).unwrap();
    assert_eq!(account["email"], "kai@example.com");
    assert_eq!(account["account_id"], t.account_id.as_str());
    let profile: Value = serde_json::from_str(&member(&file, "profile.json")).unwrap();
    assert_eq!(profile["nickname"], "Kai");
    // Contacts as one vCard file, byte for byte; events as iCalendar; notes as JSON.
    let cards = member(&file, "contacts/contacts.vcf");
    assert_eq!(
        cards,
        format!("{}{}", vcard("ana", "Ana Lima"), vcard("bo", "Bo Berg"))
    );
    assert!(!cards.contains("Gone Person"));
    assert_eq!(member(&file, "calendar/calendar/dentist.ics"), EVENT);
    let notes: Value = serde_json::from_str(&member(&file, "notes/notes.json")).unwrap();
    assert_eq!(notes[0]["item"], note("Shopping"));
    // The originals, byte for byte, named after their items (a drive file under its folder),
    // and each record saying where its original is.
    assert_eq!(
        member_bytes(&file, "files/gallery/gallery/beach.jpg"),
        photo
    );
    assert_eq!(
        member_bytes(&file, "files/drive/drive/Trips/plan.txt"),
        plan
    );
    let gallery: Value = serde_json::from_str(&member(&file, "gallery/gallery.json")).unwrap();
    assert_eq!(gallery[0]["original"], "files/gallery/gallery/beach.jpg");
    let drive: Value = serde_json::from_str(&member(&file, "drive/drive.json")).unwrap();
    assert!(drive
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["original"] == "files/drive/drive/Trips/plan.txt"));
    let devices: Value = serde_json::from_str(&member(&file, "devices/devices.json")).unwrap();
    assert_eq!(devices[0]["device"]["name"], "Kai's phone");
    assert_eq!(devices[0]["device"]["hardware"]["serial"], "FP5KAI");
    assert_eq!(devices[0]["locations"][0]["lat"], 52.52);
    let backups: Value = serde_json::from_str(&member(&file, "backups.json")).unwrap();
    assert_eq!(backups[0]["device"]["name"], "Kai's phone");
    assert_eq!(backups[0]["parts"][0]["name"], "alarms.json");
    let original = backups[0]["parts"][0]["original"].as_str().unwrap();
    assert_eq!(original, format!("backups/parts/{alarms_id}"));
    assert_eq!(member_bytes(&file, original), alarms);
    let logins: Value = serde_json::from_str(&member(&file, "login-records.json")).unwrap();
    assert!(logins
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["outcome"] == "wrong_password"));
    let _ = std::fs::remove_file(&file);

    // Nobody else can fetch it.
    let other = app.signup_email("lou@example.com").await;
    let resp = app
        .http
        .get(url(&download))
        .bearer_auth(&other.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    assert_eq!(
        app.http
            .get(url(&download))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );

    // Asked for again, a new archive replaces the first: one per account.
    let first_archive = app
        .cfg
        .blob_dir()
        .unwrap()
        .join("exports")
        .join(format!("{id}.zip"));
    let second = export_when_ready(app, &t.access_token, "kai@example.com").await;
    assert_ne!(second["id"], id.as_str());
    assert!(!first_archive.exists(), "the first archive is gone");
    let resp = app
        .http
        .get(url(&download))
        .bearer_auth(&t.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let id = second["id"].as_str().unwrap().to_owned();
    let download = second["download"].as_str().unwrap().to_owned();

    // It expires after seven days.
    let archive = app
        .cfg
        .blob_dir()
        .unwrap()
        .join("exports")
        .join(format!("{id}.zip"));
    assert!(archive.exists());
    app.advance(Duration::from_secs(7 * 86_400 + 1));
    let fresh = app
        .client
        .sign_in("kai@example.com", PASSWORD, None)
        .await
        .unwrap();
    let resp = app
        .http
        .get(url(&download))
        .bearer_auth(&fresh.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);

    // Deleting the account deletes its archives' files too.
    let c = app.client.with_token(&fresh.access_token);
    confirm_deletion(app, &c, "kai@example.com").await;
    wait_until_deleted(app.store(), t.account_id.parse().unwrap()).await;
    assert!(
        !archive.exists(),
        "the archive file is gone with the account"
    );
}

/// More contacts, notes and locations than a page holds: the export reads them a page at a
/// time, and every one is in the archive exactly once, in a valid file.
async fn a_large_account_is_exported_whole_a_page_at_a_time(app: &TestApp) {
    let t = app.signup_email("mo@example.com").await;
    let c = app.client.with_token(&t.access_token);
    const CONTACTS: usize = 2_300;
    const NOTES: usize = 1_200;
    const LOCATIONS: usize = 1_050;
    for first in (0..CONTACTS).step_by(500) {
        let writes: Vec<Value> = (first..(first + 500).min(CONTACTS))
            .map(|i| {
                let id = format!("c{i:05}");
                serde_json::json!({"id": id, "op": "put", "body": vcard(&id, &format!("Person {i}"))})
            })
            .collect();
        c.push("contacts", Value::Array(writes), None)
            .await
            .unwrap();
    }
    for first in (0..NOTES).step_by(500) {
        let writes: Vec<Value> = (first..(first + 500).min(NOTES))
            .map(|i| serde_json::json!({"id": format!("n{i}"), "op": "put", "body": note(&format!("Note {i}"))}))
            .collect();
        c.push("notes", Value::Array(writes), None).await.unwrap();
    }
    let linked: Value = c
        .raw(
            reqwest::Method::POST,
            "/api/v1/devices",
            Some(serde_json::json!({
                "name": "Mo's phone", "model": "Pixel 9", "os_version": "15", "app_version": "1",
                "hardware": { "serial": "PX9MO" }, "find_device": true,
            })),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let device = app
        .client
        .with_token(linked["credential"].as_str().unwrap());
    let start = time::OffsetDateTime::now_utc() - time::Duration::hours(2);
    for first in (0..LOCATIONS).step_by(100) {
        // Every tenth report shares its time with the one before: both are kept and exported.
        let reports: Vec<Value> = (first..(first + 100).min(LOCATIONS))
            .map(|i| {
                let at = start + time::Duration::seconds((i - usize::from(i % 10 == 9)) as i64);
                serde_json::json!({ "lat": 10.0 + i as f64 / 10_000.0, "lon": 20.0, "accuracy": 5.0,
                    "source": "gps", "at": at.format(&time::format_description::well_known::Rfc3339).unwrap() })
            })
            .collect();
        let resp = device
            .raw(
                reqwest::Method::POST,
                "/api/v1/device/locations",
                Some(serde_json::json!({ "locations": reports })),
            )
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
    }

    let ready = export_when_ready(app, &t.access_token, "mo@example.com").await;
    let bytes = app
        .http
        .get(app.url(ready["download"].as_str().unwrap()))
        .bearer_auth(&t.access_token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let file = std::env::temp_dir().join(format!("{}.zip", ready["id"].as_str().unwrap()));
    std::fs::write(&file, &bytes).unwrap();
    python(&["-m", "zipfile", "-t", file.to_str().unwrap()]);

    // Every contact once, byte for byte, in the order of their ids.
    let cards = member(&file, "contacts/contacts.vcf");
    let expected: String = (0..CONTACTS)
        .map(|i| vcard(&format!("c{i:05}"), &format!("Person {i}")))
        .collect();
    assert_eq!(cards.len(), expected.len());
    assert!(cards == expected, "the address book is exported whole");
    // Every note once.
    let notes: Value = serde_json::from_str(&member(&file, "notes/notes.json")).unwrap();
    let mut ids: Vec<&str> = notes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), NOTES);
    assert_eq!(notes[0]["item"]["title"], "Note 0");
    // Every location once, oldest first, those sharing a time included.
    let devices: Value = serde_json::from_str(&member(&file, "devices/devices.json")).unwrap();
    assert_eq!(devices.as_array().unwrap().len(), 1);
    assert_eq!(devices[0]["device"]["name"], "Mo's phone");
    let locations = devices[0]["locations"].as_array().unwrap();
    assert_eq!(locations.len(), LOCATIONS);
    let mut lats: Vec<i64> = locations
        .iter()
        .map(|l| (l["lat"].as_f64().unwrap() * 10_000.0).round() as i64 - 100_000)
        .collect();
    let times: Vec<&str> = locations
        .iter()
        .map(|l| l["at"].as_str().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "oldest first");
    lats.sort_unstable();
    assert_eq!(lats, (0..LOCATIONS as i64).collect::<Vec<_>>());
    let _ = std::fs::remove_file(&file);
}
