//! Files over HTTP: tus uploads interrupted and resumed (across a restart too), dedup, quota
//! refusal mid-upload and under concurrency, Range and conditional downloads, purge and garbage
//! collection, other accounts, call recordings played back with ranges, and bad requests.

use std::time::Duration;

use base64::Engine;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha1::Digest;
use tokio::io::AsyncWriteExt;

use crate::on_both_backends;
use crate::support::{Backend, TestApp};

on_both_backends!(
    the_same_content_twice_is_stored_once_and_counted_twice,
    the_quota_stops_an_upload_and_releases_its_bytes,
    twenty_uploads_racing_at_the_quota_never_pass_it,
    bytes_held_for_a_checksum_count_against_the_quota,
    downloads_honour_ranges_and_conditions,
    purge_and_collection_free_the_storage,
    an_upload_expires_when_idle_not_when_old,
    other_accounts_files_are_out_of_reach,
    bad_upload_requests_get_clear_errors,
    the_drive_holds_folders_and_files,
    the_drive_stays_a_tree_whatever_the_batches,
    the_gallery_reads_exif_and_makes_previews,
    an_iphone_photo_keeps_its_time_and_place_without_a_preview,
    the_timeline_comes_newest_first_a_page_at_a_time,
    an_album_is_read_from_its_index_and_follows_its_photos,
    the_gallery_reads_a_videos_container_and_previews_a_frame,
    call_recordings_sync_and_play_back_with_ranges,
    purging_spares_the_chunks_an_upload_in_progress_shares,
);

const MB: usize = 1_000_000;

/// Deterministic bytes that do not compress or repeat.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

pub(crate) struct Tus<'a> {
    pub(crate) app: &'a TestApp,
    pub(crate) token: String,
    pub(crate) account_id: String,
}

impl Tus<'_> {
    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.app
            .http
            .request(method, self.app.url(path))
            .bearer_auth(&self.token)
            .header("Tus-Resumable", "1.0.0")
    }

    /// Creates an upload; returns its path.
    async fn create(&self, len: usize, name: &str) -> String {
        self.create_typed(len, name, "image/jpeg").await
    }

    async fn create_typed(&self, len: usize, name: &str, mime: &str) -> String {
        let r = self
            .req(reqwest::Method::POST, "/api/v1/uploads")
            .header("Upload-Length", len.to_string())
            .header(
                "Upload-Metadata",
                format!("filename {},filetype {}", b64(name), b64(mime)),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
        assert_eq!(r.headers()["tus-resumable"], "1.0.0");
        assert!(r.headers().contains_key("upload-expires"));
        r.headers()["location"].to_str().unwrap().to_owned()
    }

    async fn patch(&self, path: &str, offset: usize, body: Vec<u8>) -> reqwest::Response {
        self.req(reqwest::Method::PATCH, path)
            .header("Upload-Offset", offset.to_string())
            .header("Content-Type", "application/offset+octet-stream")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// The upload's offset, and its file once complete.
    async fn head(&self, path: &str) -> (StatusCode, Option<usize>, Option<String>) {
        let r = self.req(reqwest::Method::HEAD, path).send().await.unwrap();
        let h = r.headers();
        (
            r.status(),
            h.get("upload-offset")
                .map(|v| v.to_str().unwrap().parse().unwrap()),
            h.get("mica-file-id")
                .map(|v| v.to_str().unwrap().to_owned()),
        )
    }

    /// Uploads a whole file through tus; returns the file id.
    pub(crate) async fn upload(
        &self,
        data: &[u8],
        name: &str,
    ) -> Result<String, reqwest::Response> {
        self.upload_typed(data, name, "image/jpeg").await
    }

    pub(crate) async fn upload_typed(
        &self,
        data: &[u8],
        name: &str,
        mime: &str,
    ) -> Result<String, reqwest::Response> {
        let path = self.create_typed(data.len(), name, mime).await;
        let r = self.patch(&path, 0, data.to_vec()).await;
        if r.status() != StatusCode::NO_CONTENT {
            return Err(r);
        }
        assert_eq!(
            r.headers()["upload-offset"],
            data.len().to_string().as_str()
        );
        Ok(r.headers()["mica-file-id"].to_str().unwrap().to_owned())
    }

    async fn download(&self, file: &str, range: Option<&str>) -> reqwest::Response {
        let mut r = self
            .app
            .http
            .get(self.app.url(&format!("/api/v1/files/{file}/content")))
            .bearer_auth(&self.token);
        if let Some(range) = range {
            r = r.header("Range", range);
        }
        r.send().await.unwrap()
    }

    /// What the blob store really holds for the account: (objects, bytes).
    async fn stored(&self) -> (u64, u64) {
        self.app
            .server_cloud()
            .stored_bytes(self.account_id.parse().unwrap())
            .await
            .unwrap()
    }
}

/// An upload whose body stalls is let go, and keeps what arrived, ready to resume. (Real
/// time: this is the server's body timeout, one second here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_body_is_let_go() {
    use tokio::io::AsyncReadExt;
    let app = TestApp::start_with(Backend::Sqlite, |cfg| cfg.client_timeout_secs = 1)
        .await
        .unwrap();
    let (tus, _, _) = signed_in(&app, "sal@example.com").await;
    let path = tus.create(10 * MB, "stalled.bin").await;
    let mut s = open_patch(&app, &tus.token, &path, 0, 10 * MB, "").await;
    s.write_all(&bytes(5 * MB, 41)).await.unwrap();
    // Then nothing more, with the connection left open: the request ends on its own, and the
    // five megabytes are kept.
    let mut first = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut first))
        .await
        .expect("a stalled body ends its request")
        .unwrap();
    wait_for_offset(&tus, &path, 5 * MB).await;
    drop(s);
    app.stop().await;
}

/// A gallery item that stands for `file`.
pub(crate) fn photo(file: &str, name: &str, size: usize) -> Value {
    json!({"file_id": file, "name": name, "mime_type": "image/jpeg", "size": size,
           "taken_at": "2026-08-01T10:00:00Z", "albums": ["Summer"]})
}

async fn signed_in<'a>(app: &'a TestApp, email: &str) -> (Tus<'a>, mica_client::Client, String) {
    let t = app.signup_email(email).await;
    let c = app.client.with_token(&t.access_token);
    (
        Tus {
            app,
            token: t.access_token.clone(),
            account_id: t.account_id.clone(),
        },
        c,
        t.account_id,
    )
}

/// Deletes an item in its current version (a recyclable one goes to the bin).
/// Uploads `data` as the gallery photo `x`, then deletes it to the recycle bin; its file id.
async fn binned_photo(tus: &Tus<'_>, c: &mica_client::Client, data: &[u8]) -> String {
    let file = tus.upload(data, "x.jpg").await.unwrap();
    c.push(
        "gallery",
        json!([{"id": "x", "op": "put", "body": photo(&file, "x.jpg", data.len())}]),
        None,
    )
    .await
    .unwrap();
    delete_item(c, "gallery", "x").await;
    file
}

async fn delete_item(c: &mica_client::Client, category: &str, id: &str) {
    let v = c.item(category, id).await.unwrap()["version"]
        .as_str()
        .unwrap()
        .to_owned();
    c.push(
        category,
        json!([{"id": id, "op": "delete", "base_version": v}]),
        None,
    )
    .await
    .unwrap();
}

fn used(usage: &Value) -> i64 {
    usage["used_bytes"].as_i64().unwrap()
}

/// Opens a raw connection and writes a tus PATCH's head (with `extra`, a header line ending in
/// CRLF, if any): the body is the caller's to send, or not.
async fn open_patch(
    app: &TestApp,
    token: &str,
    path: &str,
    offset: usize,
    total: usize,
    extra: &str,
) -> tokio::net::TcpStream {
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: mica\r\nAuthorization: Bearer {token}\r\nTus-Resumable: 1.0.0\r\n\
         Upload-Offset: {offset}\r\n{extra}Content-Type: application/offset+octet-stream\r\nContent-Length: {total}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

/// Signs in again (a day on, the access token has expired): the uploader and the client.
async fn signed_in_again<'a>(app: &'a TestApp, email: &str) -> (Tus<'a>, mica_client::Client) {
    let t = app
        .client
        .sign_in(email, crate::support::PASSWORD, None)
        .await
        .unwrap();
    let c = app.client.with_token(&t.access_token);
    (
        Tus {
            app,
            token: t.access_token,
            account_id: t.account_id,
        },
        c,
    )
}

/// Sends the start of a PATCH body over a raw connection and hangs up: a dropped connection.
async fn interrupted_patch(
    app: &TestApp,
    token: &str,
    path: &str,
    offset: usize,
    total: usize,
    sent: &[u8],
) {
    let mut s = open_patch(app, token, path, offset, total, "").await;
    s.write_all(sent).await.unwrap();
    s.flush().await.unwrap();
    s.shutdown().await.unwrap();
    drop(s);
}

/// Sends a raw request and returns the response's status code.
/// The status of a request written by hand on a fresh connection.
pub(crate) async fn raw_status(app: &TestApp, request: &str) -> u16 {
    use tokio::io::AsyncReadExt;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 64];
    let n = s.read(&mut buf).await.unwrap();
    let line = String::from_utf8_lossy(&buf[..n]).to_string();
    line.split(' ').nth(1).unwrap().parse().unwrap()
}

/// Waits (on the server's progress, not on a timer) until the upload reaches `offset`.
async fn wait_for_offset(tus: &Tus<'_>, path: &str, offset: usize) {
    for _ in 0..600 {
        if tus.head(path).await.1 == Some(offset) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the upload never reached offset {offset}: {:?}",
        tus.head(path).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_upload_resumes_after_a_dropped_connection_and_a_restart_sqlite() {
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    resumes(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_upload_resumes_after_a_dropped_connection_and_a_restart_postgres() {
    let Some(app) = TestApp::start(Backend::Postgres).await else {
        eprintln!("MICA_TEST_POSTGRES_URL is not set: PostgreSQL variant skipped");
        return;
    };
    resumes(app).await;
}

async fn resumes(mut app: TestApp) {
    let t = app.signup_email("ana@example.com").await;
    let token = t.access_token.clone();
    let data = bytes(200 * MB, 1);
    let source = blake3::hash(&data);
    let path = {
        let tus = Tus {
            app: &app,
            token: token.clone(),
            account_id: t.account_id.clone(),
        };
        tus.create(data.len(), "holiday.mp4").await
    };

    // 1. The connection drops 50 MB (and a few bytes) in: what arrived is kept.
    let first = 50 * MB + 1234;
    interrupted_patch(&app, &token, &path, 0, data.len(), &data[..first]).await;
    {
        let tus = Tus {
            app: &app,
            token: token.clone(),
            account_id: t.account_id.clone(),
        };
        wait_for_offset(&tus, &path, first).await;
        // A client resuming from a stale offset is told where the upload is.
        let r = tus.patch(&path, 0, data[..10].to_vec()).await;
        assert_eq!(r.status(), StatusCode::CONFLICT);
        // 2. The next 60 MB arrive whole.
        let r = tus
            .patch(&path, first, data[first..first + 60 * MB].to_vec())
            .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            r.headers()["upload-offset"],
            (first + 60 * MB).to_string().as_str()
        );
    }

    // 3. The server restarts (as after a crash): the upload is where it was.
    app.restart_with(|_| {}).await;
    let tus = Tus {
        app: &app,
        token: token.clone(),
        account_id: t.account_id.clone(),
    };
    let at = first + 60 * MB;
    let (status, offset, file) = tus.head(&path).await;
    assert_eq!((status, offset, file), (StatusCode::OK, Some(at), None));

    // 4. The rest, with a checksum of the request's bytes (tus checksum extension).
    let rest = data[at..].to_vec();
    let digest = base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(&rest));
    let r = tus
        .req(reqwest::Method::PATCH, &path)
        .header("Upload-Offset", at.to_string())
        .header("Content-Type", "application/offset+octet-stream")
        .header("Upload-Checksum", format!("sha1 {digest}"))
        .body(rest)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let file = r.headers()["mica-file-id"].to_str().unwrap().to_owned();

    // The file is the source, byte for byte.
    let r = tus.download(&file, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert_eq!(
        r.headers()["content-length"],
        data.len().to_string().as_str()
    );
    let mut hasher = blake3::Hasher::new();
    let mut n = 0;
    let mut r = r;
    while let Some(chunk) = r.chunk().await.unwrap() {
        hasher.update(&chunk);
        n += chunk.len();
    }
    assert_eq!(n, data.len());
    assert_eq!(
        hasher.finalize(),
        source,
        "the stored file's BLAKE3 differs from the source"
    );
    // Its bytes are counted (pending: no item references it yet), and the count is exact.
    let usage = app.client.with_token(&token).usage().await.unwrap();
    assert_eq!(used(&usage), i64::try_from(data.len()).unwrap());
    assert!(app.server_cloud().check_usage().await.unwrap().is_empty());
    // No leftovers: storage holds the file's chunks and nothing else (tails are gone).
    let (objects, stored) = tus.stored().await;
    assert_eq!(stored, data.len() as u64);
    assert_eq!(objects, data.len().div_ceil(4 << 20) as u64);
    app.stop().await;
}

async fn the_same_content_twice_is_stored_once_and_counted_twice(app: &TestApp) {
    let (tus, c, _) = signed_in(app, "bo@example.com").await;
    let data = bytes(9 * MB, 2);
    let f1 = tus.upload(&data, "a.jpg").await.unwrap();
    let f2 = tus.upload(&data, "copy of a.jpg").await.unwrap();
    assert_ne!(f1, f2);
    // Storage holds the bytes once: three chunks of 4 MiB, 4 MiB and the rest.
    assert_eq!(tus.stored().await, (3, data.len() as u64));
    // Each file is the person's, twice in their usage, whether pending or in the gallery.
    let usage = c.usage().await.unwrap();
    assert_eq!(used(&usage), 2 * i64::try_from(data.len()).unwrap());
    let r = c
        .push(
            "gallery",
            json!([{"id": "p1", "op": "put", "body": photo(&f1, "a.jpg", data.len())},
                   {"id": "p2", "op": "put", "body": photo(&f2, "copy of a.jpg", data.len())}]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(r["results"][0]["status"], "applied");
    let usage = c.usage().await.unwrap();
    let bodies: i64 = ["p1", "p2"]
        .iter()
        .zip([&f1, &f2])
        .map(|(_, f)| {
            let name = if *f == f1 { "a.jpg" } else { "copy of a.jpg" };
            i64::try_from(photo(f, name, data.len()).to_string().len()).unwrap()
        })
        .sum();
    assert_eq!(
        used(&usage),
        2 * i64::try_from(data.len()).unwrap() + bodies
    );
    let gallery = usage["categories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["category"] == "gallery")
        .cloned()
        .unwrap();
    assert_eq!(gallery["items"], 2);
    assert!(app.server_cloud().check_usage().await.unwrap().is_empty());
    // A second device finds the photos and fetches the bytes.
    let pulled = c.pull("gallery", None, None).await.unwrap();
    let body = pulled.changes[0].body.clone().unwrap_or_default();
    let file = body["file_id"].as_str().unwrap();
    let got = tus.download(file, None).await.bytes().await.unwrap();
    assert_eq!(blake3::hash(&got), blake3::hash(&data));
    // The same through a single-request upload: no new storage either.
    let r = app
        .http
        .post(app.url("/api/v1/files"))
        .bearer_auth(&tus.token)
        .header("Content-Type", "image/jpeg")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let f3: Value = r.json().await.unwrap();
    assert_eq!(f3["size"], data.len());
    assert_eq!(f3["pending"], true);
    assert_eq!(tus.stored().await, (3, data.len() as u64));
}

async fn the_quota_stops_an_upload_and_releases_its_bytes(app: &TestApp) {
    let (tus, c, account) = signed_in(app, "cy@example.com").await;
    app.store()
        .set_cloud_plan(account.parse().unwrap(), "free", Some(20 * MB as i64))
        .await
        .unwrap();
    // A file that could never fit is refused when the upload is created.
    let r = tus
        .req(reqwest::Method::POST, "/api/v1/uploads")
        .header("Upload-Length", (21 * MB).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 507);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "quota_exceeded"
    );
    // Two uploads that each fit, but not together.
    let a = bytes(6 * MB, 3);
    let b = bytes(16 * MB, 4);
    let pa = tus.create(a.len(), "a").await;
    let pb = tus.create(b.len(), "b").await;
    let r = tus.patch(&pa, 0, a.clone()).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // B's first 8 MiB fit: two chunks stored, and counted while the upload is in progress.
    let part = 8 << 20;
    let r = tus.patch(&pb, 0, b[..part].to_vec()).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(tus.head(&pb).await.1, Some(part));
    assert_eq!(used(&c.usage().await.unwrap()), (a.len() + part) as i64);
    assert_eq!(tus.stored().await.1, (a.len() + part) as u64);
    // The rest stops within B's last chunk: 6 MB + 12 MiB fit, 6 MB + 16 MB do not.
    let r = tus.patch(&pb, part, b[part..].to_vec()).await;
    assert_eq!(r.status().as_u16(), 507);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "quota_exceeded"
    );
    // Every byte B had stored is released: the upload is gone, usage and storage hold A alone.
    assert_eq!(tus.head(&pb).await.0, StatusCode::NOT_FOUND);
    assert_eq!(used(&c.usage().await.unwrap()), a.len() as i64);
    assert_eq!(tus.stored().await.1, a.len() as u64);
    assert!(app.server_cloud().check_usage().await.unwrap().is_empty());
    // Reads still work at the limit.
    let file = tus.head(&pa).await.2.unwrap();
    assert_eq!(
        tus.download(&file, Some("bytes=0-9"))
            .await
            .bytes()
            .await
            .unwrap(),
        &a[..10]
    );
}

/// Twenty uploads of `size` bytes each by a new account whose quota is `quota`, all created
/// first and then sent at once; checks that usage never passes the quota, that it equals what
/// is stored (the stopped uploads' bytes released) and that every upload either finished or was
/// refused for space. Returns how many finished.
async fn race_at_the_quota(app: &TestApp, email: &str, quota: usize, size: usize) -> usize {
    let (tus, c, account) = signed_in(app, email).await;
    app.store()
        .set_cloud_plan(account.parse().unwrap(), "free", Some(quota as i64))
        .await
        .unwrap();
    let mut paths = Vec::new();
    for i in 0..20 {
        paths.push(tus.create(size, &format!("f{i}")).await);
    }
    let mut tasks = Vec::new();
    for (i, path) in paths.into_iter().enumerate() {
        let http = app.http.clone();
        let url = app.url(&path);
        let token = tus.token.clone();
        tasks.push(tokio::spawn(async move {
            let r = http
                .patch(url)
                .bearer_auth(token)
                .header("Tus-Resumable", "1.0.0")
                .header("Upload-Offset", "0")
                .header("Content-Type", "application/offset+octet-stream")
                .body(bytes(size, 100 + i as u64))
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }));
    }
    let mut done = 0;
    for t in tasks {
        match t.await.unwrap() {
            204 => done += 1,
            507 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    let usage = c.usage().await.unwrap();
    assert!(used(&usage) <= quota as i64, "{usage}");
    assert_eq!(used(&usage), (done * size) as i64);
    assert!(app.server_cloud().check_usage().await.unwrap().is_empty());
    assert_eq!(tus.stored().await.1, (done * size) as u64);
    done
}

async fn twenty_uploads_racing_at_the_quota_never_pass_it(app: &TestApp) {
    // 3 MB each (one chunk): each fits alone, six at most fit together.
    let done = race_at_the_quota(app, "di@example.com", 20 * MB, 3 * MB).await;
    assert_eq!(done, 6, "6 × 3 MB fit in 20 MB, a seventh does not");
    // 9 MB each (three chunks, charged one by one as they arrive): whichever stop, the account
    // never holds more than its quota, and what the stopped ones had stored is released.
    let done = race_at_the_quota(app, "di2@example.com", 30 * MB, 9 * MB).await;
    assert!(done <= 3, "{done} × 9 MB in 30 MB");
}

/// A request with `Upload-Checksum` keeps its chunks aside until the whole body's digest is
/// known; those bytes are in the blob store already, so they count against the quota while
/// held: two such requests at once cannot hold more than the account has free.
async fn bytes_held_for_a_checksum_count_against_the_quota(app: &TestApp) {
    use tokio::io::AsyncReadExt;
    let (tus, c, account) = signed_in(app, "hal@example.com").await;
    app.store()
        .set_cloud_plan(account.parse().unwrap(), "free", Some(6 * MB as i64))
        .await
        .unwrap();
    // Each fits alone (5 MB: one 4 MiB chunk and a tail); two do not fit together.
    let size = 5 * MB;
    let (a, b) = (tus.create(size, "a").await, tus.create(size, "b").await);
    let wrong = b64(&"x".repeat(20));
    let checksum = format!("Upload-Checksum: sha1 {wrong}\r\n");
    let open = |path: String| {
        let (token, checksum) = (tus.token.clone(), checksum.clone());
        async move { open_patch(app, &token, &path, 0, size, &checksum).await }
    };
    let first_part = bytes(9 * MB / 2, 31);
    // The first request's first chunk is written (and held) before the second begins.
    let mut sa = open(a.clone()).await;
    sa.write_all(&first_part).await.unwrap();
    for _ in 0..600 {
        if tus.stored().await.0 >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        tus.stored().await.0 >= 1,
        "the first chunk was never written"
    );
    // The second is refused for space as soon as its first chunk would be held.
    let mut sb = open(b.clone()).await;
    let _ = sb.write_all(&first_part).await;
    let mut answer = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(30), sb.read(&mut answer))
        .await
        .expect("the second request is answered before its body ends")
        .unwrap();
    let line = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(line.starts_with("HTTP/1.1 507"), "{line}");
    // The first ends with its wrong digest: nothing of it is kept.
    sa.write_all(&bytes(size - first_part.len(), 32))
        .await
        .unwrap();
    let n = sa.read(&mut answer).await.unwrap();
    let line = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(line.starts_with("HTTP/1.1 460"), "{line}");
    app.server_cloud().maintenance().await.unwrap();
    assert_eq!(used(&c.usage().await.unwrap()), 0);
    assert_eq!(tus.stored().await, (0, 0));
    assert!(app.server_cloud().check_usage().await.unwrap().is_empty());
}

async fn downloads_honour_ranges_and_conditions(app: &TestApp) {
    let (tus, _, _) = signed_in(app, "ed@example.com").await;
    let data = bytes(10 * MB, 5);
    let file = tus.upload(&data, "talk.m4a").await.unwrap();
    let full = tus.download(&file, None).await;
    assert_eq!(full.headers()["accept-ranges"], "bytes");
    let etag = full.headers()["etag"].to_str().unwrap().to_owned();
    // Across the boundary between the first two chunks.
    let edge = 4 << 20;
    let r = tus
        .download(&file, Some(&format!("bytes={}-{}", edge - 500, edge + 499)))
        .await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes {}-{}/{}", edge - 500, edge + 499, data.len()).as_str()
    );
    assert_eq!(r.bytes().await.unwrap(), &data[edge - 500..edge + 500]);
    // The last 100 bytes, and from an offset to the end.
    let r = tus.download(&file, Some("bytes=-100")).await;
    assert_eq!(r.bytes().await.unwrap(), &data[data.len() - 100..]);
    let r = tus.download(&file, Some("bytes=9999000-")).await;
    assert_eq!(r.bytes().await.unwrap(), &data[9_999_000..]);
    // Outside the file.
    let r = tus
        .download(&file, Some(&format!("bytes={}-", data.len())))
        .await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{}", data.len()).as_str()
    );
    // Conditional requests.
    let r = app
        .http
        .get(app.url(&format!("/api/v1/files/{file}/content")))
        .bearer_auth(&tus.token)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let r = app
        .http
        .get(app.url(&format!("/api/v1/files/{file}/content")))
        .bearer_auth(&tus.token)
        .header("If-Range", "\"another-version\"")
        .header("Range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "a stale If-Range gets the whole file"
    );
    let r = app
        .http
        .get(app.url(&format!("/api/v1/files/{file}/content")))
        .bearer_auth(&tus.token)
        .header("If-Match", "\"another-version\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    // The description.
    let info: Value = app
        .http
        .get(app.url(&format!("/api/v1/files/{file}")))
        .bearer_auth(&tus.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["size"], data.len());
    assert_eq!(
        format!("\"{}\"", info["content_hash"].as_str().unwrap()),
        etag
    );
}

async fn purge_and_collection_free_the_storage(app: &TestApp) {
    let (tus, c, _) = signed_in(app, "fa@example.com").await;
    let data = bytes(5 * MB, 6);
    let file = binned_photo(&tus, &c, &data).await;
    // In the recycle bin the photo still counts and its bytes stay.
    assert!(used(&c.usage().await.unwrap()) > data.len() as i64);
    assert_eq!(tus.stored().await.1, data.len() as u64);
    let bin = c.recycle_bin(None).await.unwrap();
    // Restored, it is whole again; deleted and purged, its bytes go.
    c.restore(bin[0]["id"].as_str().unwrap()).await.unwrap();
    assert_eq!(
        tus.download(&file, None).await.bytes().await.unwrap().len(),
        data.len()
    );
    delete_item(&c, "gallery", "x").await;
    let bin = c.recycle_bin(None).await.unwrap();
    c.purge(bin[0]["id"].as_str().unwrap()).await.unwrap();
    assert_eq!(used(&c.usage().await.unwrap()), 0);
    assert_eq!(tus.stored().await, (0, 0));
    assert_eq!(
        tus.download(&file, None).await.status(),
        StatusCode::NOT_FOUND
    );

    // A file no item ever references, and an upload abandoned half-way, expire.
    let orphan = tus.upload(&bytes(MB, 7), "orphan").await.unwrap();
    let half = tus.create(6 * MB, "half").await;
    let r = tus.patch(&half, 0, bytes(5 * MB, 8)).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(used(&c.usage().await.unwrap()), 6 * MB as i64);
    assert_eq!(tus.stored().await.1, 6 * MB as u64);
    app.advance(Duration::from_secs(25 * 3600));
    app.server_cloud().maintenance().await.unwrap();
    // (A day later the access token has expired: sign in again.)
    let (tus, c) = signed_in_again(app, "fa@example.com").await;
    assert_eq!(used(&c.usage().await.unwrap()), 0);
    assert_eq!(tus.stored().await, (0, 0));
    assert_eq!(tus.head(&half).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        tus.download(&orphan, None).await.status(),
        StatusCode::NOT_FOUND
    );
    assert!(app.server_cloud().check_usage().await.unwrap().is_empty());
}

/// An upload is dropped after a day *idle*: one that is still moving after a day is kept, and
/// the `Upload-Expires` each answer gives moves with it.
async fn an_upload_expires_when_idle_not_when_old(app: &TestApp) {
    let email = "oda@example.com";
    let (mut tus, _, _) = signed_in(app, email).await;
    let data = bytes(3 * MB, 21);
    let path = tus.create(data.len(), "slow.bin").await;
    let mut expires = Vec::new();
    for (i, part) in data.chunks(MB).enumerate() {
        if i > 0 {
            // Twenty hours between parts: forty from the upload's start to its last byte.
            app.advance(Duration::from_secs(20 * 3600));
            app.server_cloud().maintenance().await.unwrap();
            tus = signed_in_again(app, email).await.0;
            assert_eq!(tus.head(&path).await.1, Some(i * MB), "part {i}");
        }
        let r = tus.patch(&path, i * MB, part.to_vec()).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "part {i}");
        if i < 2 {
            expires.push(r.headers()["upload-expires"].to_str().unwrap().to_owned());
        }
    }
    assert_ne!(expires[0], expires[1], "each part moves the expiry on");
    let (status, offset, file) = tus.head(&path).await;
    assert_eq!((status, offset), (StatusCode::OK, Some(data.len())));
    let got = tus
        .download(&file.unwrap(), None)
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(blake3::hash(&got), blake3::hash(&data));
}

async fn other_accounts_files_are_out_of_reach(app: &TestApp) {
    let (owner, _, _) = signed_in(app, "gil@example.com").await;
    let (other, oc, _) = signed_in(app, "hal@example.com").await;
    let data = bytes(MB, 9);
    let file = owner.upload(&data, "mine").await.unwrap();
    let path = owner.create(MB, "unfinished").await;
    // Another account cannot see, continue, end or download them: 404, as for nothing there.
    assert_eq!(other.head(&path).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        other.patch(&path, 0, vec![1; 10]).await.status(),
        StatusCode::NOT_FOUND
    );
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let r = other.req(method.clone(), &path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method}");
    }
    assert_eq!(
        other.download(&file, None).await.status(),
        StatusCode::NOT_FOUND
    );
    let r = app
        .http
        .get(app.url(&format!("/api/v1/files/{file}")))
        .bearer_auth(&other.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Nor make the file theirs by naming it in an item.
    let err = oc
        .push(
            "gallery",
            json!([{"id": "p", "op": "put", "body": photo(&file, "stolen", MB)}]),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("unknown_file"));
    assert_eq!(
        oc.pull("gallery", None, None).await.unwrap().changes.len(),
        0
    );
    // The owner's upload is untouched.
    assert_eq!(owner.head(&path).await.1, Some(0));
}

async fn bad_upload_requests_get_clear_errors(app: &TestApp) {
    let (tus, c, _) = signed_in(app, "ida@example.com").await;
    // Discovery.
    let r = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/api/v1/uploads"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["tus-version"], "1.0.0");
    let ext = r.headers()["tus-extension"].to_str().unwrap().to_owned();
    for e in [
        "creation",
        "creation-with-upload",
        "termination",
        "checksum",
        "expiration",
    ] {
        assert!(ext.split(',').any(|x| x == e), "{e} missing from {ext}");
    }
    let code = |v: Value| v["error"]["code"].as_str().unwrap().to_owned();
    // No protocol version.
    let r = app
        .http
        .post(app.url("/api/v1/uploads"))
        .bearer_auth(&tus.token)
        .header("Upload-Length", "10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(r.headers()["tus-version"], "1.0.0");
    // Bad lengths and metadata.
    for (len, meta) in [
        ("-1", ""),
        ("ten", ""),
        ("", ""),
        ("10", "filename !!notbase64"),
        ("10", "a YQ==,a YQ=="),
    ] {
        let mut req = tus
            .req(reqwest::Method::POST, "/api/v1/uploads")
            .header("Upload-Metadata", meta);
        if !len.is_empty() {
            req = req.header("Upload-Length", len);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16() / 100, 4, "{len:?} {meta:?}");
        assert!(!code(r.json().await.unwrap()).is_empty());
    }
    let r = tus
        .req(reqwest::Method::POST, "/api/v1/uploads")
        .header("Upload-Length", (1i64 << 40).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(code(r.json().await.unwrap()), "upload_too_large");
    // A creation-with-upload whose first bytes would be refused creates nothing: the refusal
    // has no Location to resume at.
    let uploads = || async {
        tus.app
            .store()
            .count_where(
                "uploads",
                "account_id",
                tus.account_id.parse::<i64>().unwrap(),
            )
            .await
            .unwrap()
    };
    let before = uploads().await;
    for (checksum, body, status, err) in [
        (None, 20, 413, "past_upload_length"),
        (Some("md4 AAAA"), 5, 400, "unsupported_checksum"),
    ] {
        let mut req = tus
            .req(reqwest::Method::POST, "/api/v1/uploads")
            .header("Upload-Length", "10")
            .header("Content-Type", "application/offset+octet-stream");
        if let Some(c) = checksum {
            req = req.header("Upload-Checksum", c);
        }
        let r = req.body(vec![1u8; body]).send().await.unwrap();
        assert_eq!(r.status().as_u16(), status);
        assert!(r.headers().get("location").is_none());
        assert_eq!(code(r.json().await.unwrap()), err);
    }
    assert_eq!(uploads().await, before);

    let path = tus.create(100, "x").await;
    // Wrong content type, wrong offset, too many bytes.
    let r = tus
        .req(reqwest::Method::PATCH, &path)
        .header("Upload-Offset", "0")
        .header("Content-Type", "application/octet-stream")
        .body(vec![0u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        tus.patch(&path, 5, vec![0u8; 10]).await.status(),
        StatusCode::CONFLICT
    );
    let r = tus.patch(&path, 0, vec![0u8; 101]).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(code(r.json().await.unwrap()), "past_upload_length");
    // A checksum that does not match keeps nothing; an unknown algorithm is refused.
    let r = tus
        .req(reqwest::Method::PATCH, &path)
        .header("Upload-Offset", "0")
        .header("Content-Type", "application/offset+octet-stream")
        .header(
            "Upload-Checksum",
            format!(
                "sha1 {}",
                base64::engine::general_purpose::STANDARD.encode([0u8; 20])
            ),
        )
        .body(vec![7u8; 40])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 460);
    assert_eq!(code(r.json().await.unwrap()), "checksum_mismatch");
    assert_eq!(tus.head(&path).await.1, Some(0));
    // So is one that is not text: refused, not skipped (the bytes would go unchecked).
    for bad in [
        reqwest::header::HeaderValue::from_static("md4 AAAA"),
        reqwest::header::HeaderValue::from_bytes(b"sha1 \xff\xfe").unwrap(),
    ] {
        let r = tus
            .req(reqwest::Method::PATCH, &path)
            .header("Upload-Offset", "0")
            .header("Content-Type", "application/offset+octet-stream")
            .header("Upload-Checksum", bad)
            .body(vec![7u8; 40])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(code(r.json().await.unwrap()), "unsupported_checksum");
        assert_eq!(tus.head(&path).await.1, Some(0));
    }
    // A matching checksum is accepted.
    let body = vec![7u8; 40];
    let digest = base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(&body));
    let r = tus
        .req(reqwest::Method::PATCH, &path)
        .header("Upload-Offset", "0")
        .header("Content-Type", "application/offset+octet-stream")
        .header("Upload-Checksum", format!("sha1 {digest}"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(tus.head(&path).await.1, Some(40));
    // Termination releases it.
    let r = tus
        .req(reqwest::Method::DELETE, &path)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(tus.head(&path).await.0, StatusCode::NOT_FOUND);
    assert_eq!(used(&c.usage().await.unwrap()), 0);
    // Items naming files that do not exist, and unknown files.
    let err = c
        .push("recordings", json!([{"id": "r", "op": "put", "body": {"file_id": "f_nothing", "name": "call", "kind": "call", "mime_type": "audio/mp4", "size": 1, "duration_secs": 1.0, "recorded_at": "2026-11-01T10:00:00Z", "number": "+351912345678"}}]), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("unknown_file"));
    assert_eq!(
        tus.download("f_nothing", None).await.status(),
        StatusCode::NOT_FOUND
    );
    // An id with path characters, escaped so that the client sends them as they are and the
    // server's router hands them to the handler as one id.
    for id in ["..%2F..%2Fetc%2Fpasswd", "%2E%2E", "a%5Cb", "%C3%A9t%C3%A9"] {
        let r = tus.download(id, None).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{id}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{id}");
    }
    // A control character in an address is refused before anything looks it up (PostgreSQL
    // cannot compare text that holds a NUL), and so is a path that is not text once decoded —
    // WebDAV's too, before it asks for credentials.
    let account = tus.account_id.clone();
    for path in [
        "/api/v1/files/x%00y/content",
        "/api/v1/uploads/x%0Ay",
        "/api/v1/drive?parent=%00",
        "/api/v1/collections/notes/items/a%7Fb",
        "/api/v1/files/%FF/content",
        "/api/v1/devices/%C3%28",
        &format!("/dav/files/{account}/%FF"),
    ] {
        let r = tus
            .app
            .http
            .get(tus.app.url(path))
            .bearer_auth(&tus.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_address", "{path}");
    }
    // A single-request upload without a length, and one cut short.
    let status = raw_status(
        app,
        &format!("POST /api/v1/files HTTP/1.1\r\nHost: mica\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\na\r\n0123456789\r\n0\r\n\r\n", tus.token),
    )
    .await;
    assert_eq!(status, 411);
    assert!(app.server_cloud().check_usage().await.unwrap().is_empty());
    assert_eq!(tus.stored().await, (0, 0));
}

async fn drive(
    tus: &Tus<'_>,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = tus
        .app
        .http
        .request(method, tus.app.url(&format!("/api/v1/drive{path}")))
        .bearer_auth(&tus.token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The id of the recycle-bin entry named `name`.
fn bin_entry(bin: &[Value], name: &str) -> String {
    bin.iter()
        .find(|e| e["name"] == name || e["summary"] == name)
        .unwrap_or_else(|| panic!("no {name} in {bin:?}"))["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Every write of a pushed batch was applied.
fn all_applied(done: &Value) {
    assert!(
        done["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "applied"),
        "{done}"
    );
}

async fn the_drive_holds_folders_and_files(app: &TestApp) {
    use reqwest::Method;
    let (tus, c, _) = signed_in(app, "jan@example.com").await;
    let data = bytes(6 * MB, 10);
    let file = tus.upload(&data, "report.pdf").await.unwrap();
    let (s, docs) = drive(
        &tus,
        Method::POST,
        "",
        Some(json!({"kind": "folder", "name": "Documents"})),
    )
    .await;
    assert_eq!(s, 201, "{docs}");
    let docs_id = docs["id"].as_str().unwrap().to_owned();
    let (s, report) = drive(
        &tus,
        Method::POST,
        "",
        Some(json!({"kind": "file", "name": "report.pdf", "parent": docs_id, "file_id": file, "modified_at": "2026-10-31T16:20:00Z"})),
    )
    .await;
    assert_eq!(s, 201, "{report}");
    assert_eq!(report["size"], data.len());
    // Shown with its times: the one its file system had, and when the server last changed it.
    assert_eq!(report["modified_at"], "2026-10-31T16:20:00Z");
    let created_at = report["changed_at"].as_str().unwrap().to_owned();
    let report_id = report["id"].as_str().unwrap().to_owned();
    // Listings: the top level holds the folder, the folder the file.
    let (_, top) = drive(&tus, Method::GET, "", None).await;
    assert_eq!(top.as_array().unwrap().len(), 1);
    assert_eq!(top[0]["name"], "Documents");
    assert_eq!(top[0]["kind"], "folder");
    let (_, inside) = drive(&tus, Method::GET, &format!("?parent={docs_id}"), None).await;
    assert_eq!(inside[0]["name"], "report.pdf");
    assert_eq!(inside[0]["file_id"], file.as_str());
    // Names: one per folder; kept in NFC; separators, dot names, control characters and
    // overlong names refused, and nothing stored.
    let (s, e) = drive(
        &tus,
        Method::POST,
        "",
        Some(json!({"kind": "file", "name": "report.pdf", "parent": docs_id, "file_id": file})),
    )
    .await;
    assert_eq!((s, e["error"]["code"].as_str()), (409, Some("name_taken")));
    let (s, cafe) = drive(
        &tus,
        Method::POST,
        "",
        Some(json!({"kind": "folder", "name": "Cafe\u{301}"})),
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(cafe["name"], "Caf\u{e9}");
    let (s, _) = drive(
        &tus,
        Method::POST,
        "",
        Some(json!({"kind": "folder", "name": "Caf\u{e9}"})),
    )
    .await;
    assert_eq!(
        s, 409,
        "the composed and decomposed forms are the same name"
    );
    for bad in [
        "..",
        ".",
        "",
        "a/b",
        "..\\..\\etc",
        "x\u{0}y",
        "tab\there",
        " lead",
        &"n".repeat(256),
    ] {
        let (s, e) = drive(
            &tus,
            Method::POST,
            "",
            Some(json!({"kind": "folder", "name": bad})),
        )
        .await;
        assert_eq!(s, 422, "{bad:?}: {e}");
        assert_eq!(e["error"]["code"], "invalid_item", "{bad:?}");
    }
    let (s, _) = drive(
        &tus,
        Method::POST,
        "",
        Some(json!({"kind": "folder", "name": "x", "parent": "../../etc"})),
    )
    .await;
    assert_eq!(s, 422);
    let (s, _) = drive(
        &tus,
        Method::POST,
        "",
        Some(json!({"kind": "folder", "name": "x", "parent": "d_nothere"})),
    )
    .await;
    assert_eq!(s, 422);
    let (s, _) = drive(
        &tus,
        Method::POST,
        "",
        Some(json!({"kind": "folder", "name": "x", "parent": report_id})),
    )
    .await;
    assert_eq!(s, 422, "a file is not a folder");
    let (_, top) = drive(&tus, Method::GET, "", None).await;
    assert_eq!(top.as_array().unwrap().len(), 2);
    // Rename and move; a folder cannot go inside itself.
    app.advance(Duration::from_secs(300));
    let (s, moved) = drive(
        &tus,
        Method::PATCH,
        &format!("/{report_id}"),
        Some(json!({"name": "final.pdf", "parent": null})),
    )
    .await;
    assert_eq!(s, 200, "{moved}");
    assert_eq!(moved["name"], "final.pdf");
    assert_eq!(moved["parent"], Value::Null);
    let rfc3339 = |v: &Value| {
        time::OffsetDateTime::parse(
            v.as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    assert_eq!(
        rfc3339(&moved["changed_at"]) - rfc3339(&json!(created_at)),
        time::Duration::minutes(5),
        "renamed five minutes later"
    );
    assert_eq!(moved["modified_at"], "2026-10-31T16:20:00Z");
    let (s, sub) = drive(
        &tus,
        Method::POST,
        "",
        Some(json!({"kind": "folder", "name": "2026", "parent": docs_id})),
    )
    .await;
    assert_eq!(s, 201);
    let (s, _) = drive(
        &tus,
        Method::PATCH,
        &format!("/{docs_id}"),
        Some(json!({"parent": sub["id"]})),
    )
    .await;
    assert_eq!(s, 422, "a folder cannot go inside itself");
    let (s, _) = drive(
        &tus,
        Method::PATCH,
        &format!("/{report_id}"),
        Some(json!({"name": "x.pdf", "base_version": "1"})),
    )
    .await;
    assert_eq!(s, 409, "a stale version is refused");
    let (_, back) = drive(
        &tus,
        Method::PATCH,
        &format!("/{report_id}"),
        Some(json!({"parent": docs_id})),
    )
    .await;
    assert_eq!(back["parent"], docs_id.as_str());
    // Copy a folder: its file counts twice in usage, once in storage.
    let before = used(&c.usage().await.unwrap());
    let (s, copy) = drive(
        &tus,
        Method::POST,
        &format!("/{docs_id}/copy"),
        Some(json!({"name": "Documents (copy)"})),
    )
    .await;
    assert_eq!(s, 201, "{copy}");
    let (_, copied) = drive(
        &tus,
        Method::GET,
        &format!("?parent={}", copy["id"].as_str().unwrap()),
        None,
    )
    .await;
    let names: Vec<&str> = copied
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["2026", "final.pdf"]);
    assert!(used(&c.usage().await.unwrap()) > before + data.len() as i64);
    assert_eq!(tus.stored().await.1, data.len() as u64);
    // Another device syncs the drive like any collection.
    let pulled = c.pull("drive", None, None).await.unwrap();
    assert_eq!(pulled.changes.len(), 7);
    // Delete a folder: it and everything in it go to the recycle bin, and come back.
    let (s, d) = drive(&tus, Method::DELETE, &format!("/{docs_id}"), None).await;
    assert_eq!((s, d["deleted"].as_u64()), (200, Some(3)));
    assert_eq!(
        drive(&tus, Method::GET, &format!("/{report_id}"), None)
            .await
            .0,
        404
    );
    let bin = c.recycle_bin(None).await.unwrap();
    assert_eq!(bin.len(), 3);
    // Restoring the folder brings back what was deleted with it.
    let folder = bin
        .iter()
        .find(|e| e["item_id"] == docs_id.as_str())
        .unwrap();
    c.restore(folder["id"].as_str().unwrap()).await.unwrap();
    assert!(c.recycle_bin(None).await.unwrap().is_empty());
    let (_, inside) = drive(&tus, Method::GET, &format!("?parent={docs_id}"), None).await;
    assert_eq!(inside.as_array().unwrap().len(), 2);
    assert_eq!(
        drive(&tus, Method::GET, &format!("/{report_id}"), None)
            .await
            .0,
        200
    );
    // But not what had been deleted from it before: that stays in the bin.
    let folder = |name: &str, parent: Option<&str>| json!({"kind": "folder", "name": name, "parent": parent});
    let (_, trip) = drive(&tus, Method::POST, "", Some(folder("Trip", None))).await;
    let trip_id = trip["id"].as_str().unwrap().to_owned();
    let (_, day1) = drive(
        &tus,
        Method::POST,
        "",
        Some(folder("Day 1", Some(&trip_id))),
    )
    .await;
    let day1_id = day1["id"].as_str().unwrap().to_owned();
    drive(
        &tus,
        Method::POST,
        "",
        Some(folder("Morning", Some(&day1_id))),
    )
    .await;
    let (_, day2) = drive(
        &tus,
        Method::POST,
        "",
        Some(folder("Day 2", Some(&trip_id))),
    )
    .await;
    drive(
        &tus,
        Method::DELETE,
        &format!("/{}", day2["id"].as_str().unwrap()),
        None,
    )
    .await;
    app.advance(Duration::from_secs(5));
    let (s, d) = drive(&tus, Method::DELETE, &format!("/{trip_id}"), None).await;
    assert_eq!((s, d["deleted"].as_u64()), (200, Some(3)));
    let bin = c.recycle_bin(Some("drive")).await.unwrap();
    let trip_bin = bin
        .iter()
        .find(|e| e["item_id"] == trip_id.as_str())
        .unwrap();
    c.restore(trip_bin["id"].as_str().unwrap()).await.unwrap();
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, in_trip) = drive(&tus, Method::GET, &format!("?parent={trip_id}"), None).await;
    assert_eq!(names(&in_trip), ["Day 1"]);
    let (_, in_day1) = drive(&tus, Method::GET, &format!("?parent={day1_id}"), None).await;
    assert_eq!(names(&in_day1), ["Morning"]);
    let bin = c.recycle_bin(Some("drive")).await.unwrap();
    assert_eq!(bin.len(), 1, "{bin:?}");
    assert_eq!(bin[0]["summary"], "Day 2");
    // An entry restored into a folder that is gone for good comes back at the top level,
    // where a listing reaches it.
    let (_, tmp) = drive(
        &tus,
        Method::POST,
        "",
        Some(json!({"kind": "folder", "name": "Tmp"})),
    )
    .await;
    let tmp_id = tmp["id"].as_str().unwrap().to_owned();
    let (s, _) = drive(
        &tus,
        Method::POST,
        "",
        Some(json!({"kind": "folder", "name": "Inner", "parent": tmp_id})),
    )
    .await;
    assert_eq!(s, 201);
    drive(&tus, Method::DELETE, &format!("/{tmp_id}"), None).await;
    let bin = c.recycle_bin(Some("drive")).await.unwrap();
    let entry = |name: &str| bin_entry(&bin, name);
    c.purge(&entry("Tmp")).await.unwrap();
    c.restore(&entry("Inner")).await.unwrap();
    let (_, top) = drive(&tus, Method::GET, "", None).await;
    assert!(
        top.as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "Inner" && e["parent"].is_null()),
        "{top}"
    );
    // The bin gives an entry back its old place even when a later entry reusing an id has
    // taken the folder above it: a folder X whose old parent came back inside X itself
    // returns at the top level, not into a loop no listing reaches.
    let put = |id: &str, name: &str, parent: Option<&str>, base: Option<&str>| {
        json!({"id": id, "op": "put", "base_version": base,
               "body": {"kind": "folder", "name": name, "parent": parent}})
    };
    let done = c
        .push(
            "drive",
            json!([
                put("loop-x", "X", None, None),
                put("loop-y", "Old Y", Some("loop-x"), None)
            ]),
            None,
        )
        .await
        .unwrap();
    all_applied(&done);
    let (s, _) = drive(&tus, Method::DELETE, "/loop-y", None).await;
    assert_eq!(s, 200);
    app.advance(Duration::from_secs(5));
    let x_version = c.item("drive", "loop-x").await.unwrap()["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = c
        .push(
            "drive",
            json!([
                put("loop-y", "New Y", None, None),
                put("loop-x", "X", Some("loop-y"), Some(&x_version))
            ]),
            None,
        )
        .await
        .unwrap();
    all_applied(&done);
    let (s, _) = drive(&tus, Method::DELETE, "/loop-y", None).await;
    assert_eq!(s, 200);
    let bin = c.recycle_bin(Some("drive")).await.unwrap();
    let entry = |name: &str| bin_entry(&bin, name);
    c.restore(&entry("Old Y")).await.unwrap();
    c.restore(&entry("X")).await.unwrap();
    let (_, x) = drive(&tus, Method::GET, "/loop-x", None).await;
    assert!(x["parent"].is_null(), "{x}");
    let (_, inside) = drive(&tus, Method::GET, "?parent=loop-x", None).await;
    assert_eq!(inside[0]["name"], "Old Y", "{inside}");
    // A second drive collection (sync only) gets the same care, in itself.
    c.raw(
        Method::PUT,
        "/api/v1/collections/drive-2",
        Some(json!({"category": "drive", "name": "Second drive"})),
    )
    .await
    .unwrap();
    let done = c
        .push(
            "drive-2",
            json!([
                put("z", "Z", None, None),
                put("z-in", "Inside Z", Some("z"), None)
            ]),
            None,
        )
        .await
        .unwrap();
    let versions: Vec<String> = done["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["version"].as_str().unwrap().to_owned())
        .collect();
    c.push(
        "drive-2",
        json!([{"id": "z-in", "op": "delete", "base_version": versions[1]},
               {"id": "z", "op": "delete", "base_version": versions[0]}]),
        None,
    )
    .await
    .unwrap();
    let bin = c.recycle_bin(Some("drive")).await.unwrap();
    let entry = |name: &str| bin_entry(&bin, name);
    c.purge(&entry("Z")).await.unwrap();
    c.restore(&entry("Inside Z")).await.unwrap();
    let back = c.item("drive-2", "z-in").await.unwrap();
    assert!(back["body"]["parent"].is_null(), "{back}");
    assert_eq!(
        tus.download(&file, Some("bytes=0-3"))
            .await
            .bytes()
            .await
            .unwrap(),
        &data[..4]
    );
    assert!(app.server_cloud().check_usage().await.unwrap().is_empty());
    // Another account sees none of it.
    let (other, _, _) = signed_in(app, "kit@example.com").await;
    assert_eq!(
        drive(&other, Method::GET, &format!("/{docs_id}"), None)
            .await
            .0,
        404
    );
    assert_eq!(
        drive(&other, Method::GET, &format!("?parent={docs_id}"), None)
            .await
            .0,
        404
    );
    assert_eq!(
        drive(&other, Method::DELETE, &format!("/{docs_id}"), None)
            .await
            .0,
        404
    );
    // Nor rename, move or copy them, nor put their own entries in the owner's folder or name
    // the owner's file in one of theirs: every id of another account is as good as unknown.
    assert_eq!(
        drive(
            &other,
            Method::PATCH,
            &format!("/{report_id}"),
            Some(json!({"name": "mine.pdf", "parent": null}))
        )
        .await
        .0,
        404
    );
    assert_eq!(
        drive(
            &other,
            Method::POST,
            &format!("/{docs_id}/copy"),
            Some(json!({"name": "Stolen"}))
        )
        .await
        .0,
        404
    );
    let (s, e) = drive(
        &other,
        Method::POST,
        "",
        Some(json!({"kind": "folder", "name": "planted", "parent": docs_id})),
    )
    .await;
    assert_eq!(s, 422, "{e}");
    let (s, e) = drive(
        &other,
        Method::POST,
        "",
        Some(json!({"kind": "file", "name": "report.pdf", "file_id": file})),
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (422, Some("unknown_file"))
    );
    let (_, theirs) = drive(&other, Method::GET, "", None).await;
    assert_eq!(theirs, json!([]));
    let (_, inside) = drive(&tus, Method::GET, &format!("?parent={docs_id}"), None).await;
    let names: Vec<&str> = inside
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["2026", "final.pdf"],
        "the owner's folder is as it was"
    );
    assert_eq!(other.stored().await, (0, 0));
}

/// The drive's tree is checked where the batch is applied, after the account's lock: a
/// device's batch through the sync API, two moves racing, or a folder deleted while something in
/// it changes can never leave an entry outside every listing, inside itself, or half deleted.
async fn the_drive_stays_a_tree_whatever_the_batches(app: &TestApp) {
    use reqwest::Method;
    let (tus, c, _) = signed_in(app, "ines@example.com").await;
    let folder = |name: String, parent: Option<String>| {
        let tus = &tus;
        async move {
            let (s, f) = drive(
                tus,
                Method::POST,
                "",
                Some(json!({"kind": "folder", "name": name, "parent": parent})),
            )
            .await;
            assert_eq!(s, 201, "{f}");
            (f["id"].as_str().unwrap().to_owned(), f["version"].clone())
        }
    };
    let status = |r: Result<Value, mica_client::ClientError>| match r {
        Ok(v) => (
            200,
            v["results"][0]["status"].as_str().unwrap_or("").to_owned(),
        ),
        Err(e) => (
            e.status().map_or(0, |s| s.as_u16()),
            e.code().unwrap_or("").to_owned(),
        ),
    };
    let exists = |id: String| {
        let tus = &tus;
        async move { drive(tus, Method::GET, &format!("/{id}"), None).await.0 == 200 }
    };

    // A device deleting a folder that still holds an entry is refused, and nothing changes.
    let (trips, trips_v) = folder("Trips".into(), None).await;
    let (year, year_v) = folder("2026".into(), Some(trips.clone())).await;
    let r = c
        .push(
            "drive",
            json!([{"id": trips, "op": "delete", "base_version": trips_v}]),
            None,
        )
        .await;
    assert_eq!(status(r), (409, "folder_not_empty".to_owned()));
    assert!(exists(trips.clone()).await && exists(year.clone()).await);
    // Nor may a batch put an entry into the folder it deletes: that too would leave it holding
    // something.
    let r = c
        .push(
            "drive",
            json!([
                {"id": year, "op": "delete", "base_version": year_v},
                {"id": "d_late", "op": "put", "body": {"kind": "folder", "name": "late", "parent": year}},
            ]),
            None,
        )
        .await;
    assert_eq!(status(r), (409, "folder_not_empty".to_owned()));
    assert!(exists(year.clone()).await && !exists("d_late".into()).await);
    // Deleted with what it holds in one batch, the folder goes, and both wait in the bin.
    let r = c
        .push(
            "drive",
            json!([
                {"id": trips, "op": "delete", "base_version": trips_v},
                {"id": year, "op": "delete", "base_version": year_v},
            ]),
            None,
        )
        .await;
    assert_eq!(status(r), (200, "applied".to_owned()));
    assert!(!exists(trips.clone()).await && !exists(year.clone()).await);
    assert_eq!(c.recycle_bin(Some("drive")).await.unwrap().len(), 2);

    // A batch can put a new entry under the name of one it deletes: deletes go first.
    let (old, old_v) = folder("notes".into(), None).await;
    let r = c
        .push(
            "drive",
            json!([
                {"id": old, "op": "delete", "base_version": old_v},
                {"id": "d_new_notes", "op": "put", "body": {"kind": "folder", "name": "notes"}},
            ]),
            None,
        )
        .await;
    assert_eq!(status(r), (200, "applied".to_owned()));
    let (_, top) = drive(&tus, Method::GET, "", None).await;
    assert_eq!(top[0]["id"], "d_new_notes", "{top}");
    assert_eq!(top.as_array().unwrap().len(), 1);

    for round in 0..8 {
        // Two moves racing, each of one folder into the other: one wins, the other would
        // close a loop and is refused.
        let (a, _) = folder(format!("A{round}"), None).await;
        let (b, _) = folder(format!("B{round}"), None).await;
        let (to_a, to_b) = (format!("/{a}"), format!("/{b}"));
        let (ra, rb) = tokio::join!(
            drive(&tus, Method::PATCH, &to_a, Some(json!({"parent": b}))),
            drive(&tus, Method::PATCH, &to_b, Some(json!({"parent": a}))),
        );
        let mut got = [ra.0, rb.0];
        got.sort_unstable();
        assert_eq!(got, [200, 422], "round {round}: {ra:?} {rb:?}");
        // A folder deleted while an entry in it is renamed goes whole or stays whole.
        let (p, _) = folder(format!("P{round}"), None).await;
        let mut kids = Vec::new();
        for k in 0..5 {
            kids.push(folder(format!("k{k}"), Some(p.clone())).await.0);
        }
        let (folder_at, kid_at) = (format!("/{p}"), format!("/{}", kids[2]));
        let (del, _) = tokio::join!(
            drive(&tus, Method::DELETE, &folder_at, None),
            drive(
                &tus,
                Method::PATCH,
                &kid_at,
                Some(json!({"name": "renamed"}))
            ),
        );
        let gone = match del.0 {
            200 => true,
            409 => false,
            s => panic!("round {round}: deleting the folder answered {s}: {}", del.1),
        };
        assert_eq!(exists(p.clone()).await, !gone, "round {round}");
        for k in &kids {
            assert_eq!(exists(k.clone()).await, !gone, "round {round}: {k}");
        }
    }
    assert!(app.server_cloud().check_usage().await.unwrap().is_empty());
}

/// A PNG that declares `w` × `h` pixels in a few dozen bytes: a decompression bomb's header.
fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);
        c.extend_from_slice(&crc.finalize().to_be_bytes());
        c
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    // Its pixel data is an empty zlib stream: the refusal comes from the declared size alone,
    // before a decoder starts (a real bomb's data would inflate to w × h × 3 bytes).
    png.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    png.extend(chunk(b"IEND", &[]));
    png
}

/// One page of the timeline.
async fn gallery_page(tus: &Tus<'_>, q: &str, limit: usize, cursor: Option<&str>) -> (u16, Value) {
    let mut query = vec![("limit", limit.to_string())];
    if let Some(c) = cursor {
        query.push(("cursor", c.to_owned()));
    }
    let r = tus
        .app
        .http
        .get(tus.app.url(&format!("/api/v1/gallery{q}")))
        .query(&query)
        .bearer_auth(&tus.token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// The timeline's pages from `cursor` on, `limit` entries a page, following `next`.
async fn gallery_pages(
    tus: &Tus<'_>,
    q: &str,
    limit: usize,
    mut cursor: Option<String>,
) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    loop {
        let (status, page) = gallery_page(tus, q, limit, cursor.as_deref()).await;
        assert_eq!(status, 200, "{page}");
        let entries = page["entries"].as_array().unwrap().clone();
        assert!(entries.len() <= limit);
        pages.push(entries);
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return pages,
        }
        assert!(pages.len() < 1000, "the pages never end");
    }
}

/// The whole timeline, read two entries a page: every test that reads it pages through it.
async fn gallery(tus: &Tus<'_>, q: &str) -> Vec<Value> {
    gallery_pages(tus, q, 2, None).await.concat()
}

/// The ids of timeline entries.
fn ids(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn the_timeline_comes_newest_first_a_page_at_a_time(app: &TestApp) {
    let (tus, c, _) = signed_in(app, "uma@example.com").await;
    // Seven photos: five with the time their device recorded (two at the same moment), two
    // without any; some in an album. No file: the order is the items' own.
    let dated = [
        ("p1", "2026-03-01T09:00:00Z", true),
        ("p2", "2026-05-01T09:00:00+02:00", false),
        ("p3", "2026-05-01T07:00:00Z", true),
        ("p4", "2025-12-31T23:59:59Z", false),
        ("p5", "2026-06-01T00:00:00Z", true),
    ];
    let mut writes: Vec<Value> = dated
        .iter()
        .map(|(id, t, trip)| {
            let albums = if *trip { json!(["Trip"]) } else { json!([]) };
            json!({"id": id, "op": "put", "body": {"name": format!("{id}.jpg"), "mime_type": "image/jpeg", "size": 1, "taken_at": t, "albums": albums}})
        })
        .collect();
    for id in ["u2", "u1"] {
        writes.push(json!({"id": id, "op": "put", "body": {"name": format!("{id}.jpg"), "mime_type": "image/jpeg", "size": 1}}));
    }
    c.push("gallery", Value::Array(writes), None).await.unwrap();
    // Newest first; the same moment in id order; undated last, in id order.
    let order = ["p5", "p2", "p3", "p1", "p4", "u1", "u2"];
    let pages: Vec<Vec<String>> = gallery_pages(&tus, "", 3, None)
        .await
        .iter()
        .map(|p| ids(p))
        .collect();
    assert_eq!(pages.concat(), order);
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [3, 3, 1],
        "{pages:?}"
    );
    // A photo added meanwhile, older than the pages read, appears where it belongs; nothing is
    // repeated or skipped by a reader that goes on from its cursor.
    let (_, first) = gallery_page(&tus, "", 2, None).await;
    c.push("gallery", json!([{"id": "p0", "op": "put", "body": {"name": "p0.jpg", "mime_type": "image/jpeg", "size": 1, "taken_at": "2026-01-01T00:00:00Z"}}]), None)
        .await
        .unwrap();
    let mut seen = ids(first["entries"].as_array().unwrap());
    let next = first["next"].as_str().map(str::to_owned);
    seen.extend(ids(&gallery_pages(&tus, "", 2, next).await.concat()));
    assert_eq!(seen, ["p5", "p2", "p3", "p1", "p0", "p4", "u1", "u2"]);
    // An album, a page of one at a time.
    let trip = ids(&gallery_pages(&tus, "?album=Trip", 1, None).await.concat());
    assert_eq!(trip, ["p5", "p3", "p1"]);
    // A deleted photo leaves the timeline.
    let v = c.item("gallery", "p2").await.unwrap()["version"]
        .as_str()
        .unwrap()
        .to_owned();
    c.push(
        "gallery",
        json!([{"id": "p2", "op": "delete", "base_version": v}]),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        ids(&gallery(&tus, "").await),
        ["p5", "p3", "p1", "p0", "p4", "u1", "u2"]
    );
    // Restored from the recycle bin, it comes back to its place (the bin keeps the body, and
    // the time is indexed from it again).
    let bin = c.recycle_bin(Some("gallery")).await.unwrap();
    c.restore(bin[0]["id"].as_str().unwrap()).await.unwrap();
    assert_eq!(
        ids(&gallery(&tus, "").await),
        ["p5", "p2", "p3", "p1", "p0", "p4", "u1", "u2"]
    );
    // Bad paging requests are refused with a reason.
    for (limit, cursor) in [
        (0, None),
        (501, None),
        (2, Some("yesterday")),
        // base64url of "x~p1": a cursor's shape, with a time that is not one.
        (2, Some("eH5wMQ")),
    ] {
        let (status, e) = gallery_page(&tus, "", limit, cursor).await;
        assert_eq!(status, 422, "{limit} {cursor:?}: {e}");
        assert!(e["error"]["message"].as_str().is_some(), "{e}");
    }
    // Another account's timeline is its own.
    let (other, _, _) = signed_in(app, "vera@example.com").await;
    assert!(gallery(&other, "").await.is_empty());
}

/// The gallery's albums as (name, photos, newest photo's id).
async fn albums(tus: &Tus<'_>) -> Vec<(String, u64, String)> {
    let r = tus
        .app
        .http
        .get(tus.app.url("/api/v1/gallery/albums"))
        .bearer_auth(&tus.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_owned(),
                a["photos"].as_u64().unwrap(),
                a["cover"]["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn owned((name, photos, cover): (&str, u64, &str)) -> (String, u64, String) {
    (name.to_owned(), photos, cover.to_owned())
}

/// An album's page is read from the album's index, not by opening the whole gallery: the
/// index follows every write (a photo moved to another album, deleted, restored), names stay
/// sealed (another account's album of the same name is its own), bad album lists are refused,
/// and a gallery written before albums were indexed is indexed on the first album asked for.
async fn an_album_is_read_from_its_index_and_follows_its_photos(app: &TestApp) {
    let (tus, c, _) = signed_in(app, "ana@example.com").await;
    // 600 photos a minute apart, newest last; every hundredth (from the 7th) in "Trip", one of
    // them twice over, and one in "Trip" and "Home".
    let photo = |i: usize, albums: Value| {
        json!({"id": format!("p{i:03}"), "op": "put", "body": {"name": format!("IMG_{i:04}.jpg"),
            "mime_type": "image/jpeg", "size": 1,
            "taken_at": format!("2026-07-01T{:02}:{:02}:00Z", i / 60, i % 60), "albums": albums}})
    };
    let writes: Vec<Value> = (0..600)
        .map(|i| match i {
            107 => photo(i, json!(["Trip", "Trip"])),
            307 => photo(i, json!(["Trip", "Home"])),
            i if i % 100 == 7 => photo(i, json!(["Trip"])),
            i => photo(i, json!([])),
        })
        .collect();
    for batch in writes.chunks(300) {
        c.push("gallery", Value::Array(batch.to_vec()), None)
            .await
            .unwrap();
    }
    let album = |name: &'static str| {
        let tus = &tus;
        async move {
            ids(&gallery_pages(tus, &format!("?album={name}"), 2, None)
                .await
                .concat())
        }
    };
    assert_eq!(
        album("Trip").await,
        ["p507", "p407", "p307", "p207", "p107", "p007"]
    );
    assert_eq!(album("Home").await, ["p307"]);
    assert!(album("Nowhere").await.is_empty());
    // The list of albums: by name, each with its size and its newest photo.
    assert_eq!(
        albums(&tus).await,
        [("Home", 1, "p307"), ("Trip", 6, "p507")].map(owned)
    );
    // Moved out of "Trip" into "Home" by an edit.
    let v = c.item("gallery", "p207").await.unwrap()["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut moved = photo(207, json!(["Home"]));
    moved["base_version"] = json!(v);
    c.push("gallery", json!([moved]), None).await.unwrap();
    assert_eq!(
        album("Trip").await,
        ["p507", "p407", "p307", "p107", "p007"]
    );
    assert_eq!(album("Home").await, ["p307", "p207"]);
    assert_eq!(
        albums(&tus).await,
        [("Home", 2, "p307"), ("Trip", 5, "p507")].map(owned)
    );
    // Deleted: out of its album; restored from the bin: back in it.
    let v = c.item("gallery", "p407").await.unwrap()["version"]
        .as_str()
        .unwrap()
        .to_owned();
    c.push(
        "gallery",
        json!([{"id": "p407", "op": "delete", "base_version": v}]),
        None,
    )
    .await
    .unwrap();
    assert_eq!(album("Trip").await, ["p507", "p307", "p107", "p007"]);
    assert_eq!(
        albums(&tus).await,
        [("Home", 2, "p307"), ("Trip", 4, "p507")].map(owned)
    );
    let bin = c.recycle_bin(Some("gallery")).await.unwrap();
    c.restore(bin[0]["id"].as_str().unwrap()).await.unwrap();
    assert_eq!(
        album("Trip").await,
        ["p507", "p407", "p307", "p107", "p007"]
    );

    // An album whose last photo goes is no longer listed.
    c.push(
        "gallery",
        json!([photo(600, json!(["gone", "Trip"]))]),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        albums(&tus).await,
        [
            ("gone", 1, "p600"),
            ("Home", 2, "p307"),
            ("Trip", 6, "p600")
        ]
        .map(owned)
    );
    delete_item(&c, "gallery", "p600").await;
    assert_eq!(
        albums(&tus).await,
        [("Home", 2, "p307"), ("Trip", 5, "p507")].map(owned)
    );

    // Another account's "Trip" is its own.
    let (other, oc, _) = signed_in(app, "ben@example.com").await;
    assert!(ids(&gallery(&other, "?album=Trip").await).is_empty());
    assert!(albums(&other).await.is_empty());
    oc.push("gallery", json!([photo(1, json!(["Trip"]))]), None)
        .await
        .unwrap();
    assert_eq!(ids(&gallery(&other, "?album=Trip").await), ["p001"]);
    assert_eq!(albums(&other).await, [("Trip", 1, "p001")].map(owned));
    assert_eq!(
        album("Trip").await,
        ["p507", "p407", "p307", "p107", "p007"]
    );

    // Album lists that are not ones: refused with a reason, nothing stored.
    let too_many: Vec<String> = (0..101).map(|i| format!("A{i}")).collect();
    for bad in [
        json!(too_many),
        json!([""]),
        json!(["  "]),
        json!(["x".repeat(201)]),
        json!("Trip"),
        json!([7]),
    ] {
        let r = app
            .http
            .post(app.url("/api/v1/collections/gallery/batch"))
            .bearer_auth(&tus.token)
            .json(&json!({"writes": [photo(999, bad.clone())]}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let e: Value = r.json().await.unwrap();
        assert_eq!(
            (status, &e["error"]["code"]),
            (422, &json!("invalid_item")),
            "{bad}: {e}"
        );
        assert!(e["error"]["message"].as_str().is_some(), "{e}");
    }
    assert!(c.item("gallery", "p999").await.is_err(), "nothing stored");

    // A gallery written before albums were indexed: its albums are only in the sealed bodies
    // until one is asked for, then indexed once, and the answer is the same.
    let pool = sqlx::AnyPool::connect(&app.cfg.database_url())
        .await
        .unwrap();
    for table in ["item_albums", "albums"] {
        sqlx::query(&format!("DELETE FROM {table}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    sqlx::query("INSERT INTO album_backfill (account_id, collection_id) SELECT account_id, id FROM collections WHERE kind = 'gallery'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(album("Home").await, ["p307", "p207"]);
    let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM album_backfill")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(pending, 1, "only the gallery asked about is indexed");
    assert_eq!(
        album("Trip").await,
        ["p507", "p407", "p307", "p107", "p007"]
    );
    assert_eq!(ids(&gallery(&other, "?album=Trip").await), ["p001"]);
    assert_eq!(albums(&other).await, [("Trip", 1, "p001")].map(owned));
    assert_eq!(
        albums(&tus).await,
        [("Home", 2, "p307"), ("Trip", 5, "p507")].map(owned)
    );
    let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM album_backfill")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(pending, 0);
    pool.close().await;
}

/// Runs the media worker until the file's preview is decided (ready or refused): within a
/// minute of real time, since ffmpeg on a machine busy with the other tests can take seconds.
async fn previews_settle(tus: &Tus<'_>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        tus.app.server_cloud().run_media().await.unwrap();
        if gallery(tus, "")
            .await
            .iter()
            .all(|e| e["preview"] != "pending")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("previews never settled: {:?}", gallery(tus, "").await);
}

/// Both media fixtures hold the same moment and place: 17:32:05 UTC on 14 July 2026, in Lisbon.
fn taken_in_lisbon(entry: &Value) {
    assert_eq!(entry["taken_at"], "2026-07-14T17:32:05Z", "{entry}");
    let (lat, lon) = (
        entry["place"]["latitude"].as_f64().unwrap(),
        entry["place"]["longitude"].as_f64().unwrap(),
    );
    assert!(
        (lat - 38.7139).abs() < 1e-4 && (lon + 9.1334).abs() < 1e-4,
        "{lat}, {lon}"
    );
}

/// Whether ffmpeg runs here; CI requires it (`MICA_TEST_REQUIRE_FFMPEG`).
fn ffmpeg_here() -> bool {
    let here = std::process::Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        here || std::env::var_os("MICA_TEST_REQUIRE_FFMPEG").is_none(),
        "ffmpeg is required here (apt-get install ffmpeg)"
    );
    here
}

async fn the_gallery_reads_a_videos_container_and_previews_a_frame(app: &TestApp) {
    let (tus, c, _) = signed_in(app, "val@example.com").await;
    let clip = include_bytes!("../fixtures/clip.mov").to_vec();
    let f_clip = tus
        .upload_typed(&clip, "IMG_0003.MOV", "video/quicktime")
        .await
        .unwrap();
    // Cut in half, a phone's recording loses its `moov` (written last): nothing to read.
    let cut = clip[..clip.len() / 2].to_vec();
    let f_cut = tus
        .upload_typed(&cut, "cut.mov", "video/quicktime")
        .await
        .unwrap();
    // The device says nothing of time, place or size: the container does.
    c.push("gallery", json!([
        {"id": "v1", "op": "put", "body": {"file_id": f_clip, "name": "IMG_0003.MOV", "mime_type": "video/quicktime", "size": clip.len()}},
        {"id": "v2", "op": "put", "body": {"file_id": f_cut, "name": "cut.mov", "mime_type": "video/quicktime", "size": cut.len(), "taken_at": "2020-01-01T00:00:00Z"}}
    ]), None)
    .await
    .unwrap();
    previews_settle(&tus).await;

    let timeline = gallery(&tus, "").await;
    let ids: Vec<&str> = timeline.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["v1", "v2"], "newest first: {timeline:?}");
    let v1 = &timeline[0];
    taken_in_lisbon(v1);
    assert_eq!(
        (v1["width"].as_u64(), v1["height"].as_u64()),
        (Some(320), Some(240))
    );
    let preview = |size: &'static str| {
        app.http
            .get(app.url(&format!("/api/v1/files/{f_clip}/preview?size={size}")))
            .bearer_auth(&tus.token)
            .send()
    };
    if ffmpeg_here() {
        // Two previews from one frame, JPEG, within their sizes.
        assert_eq!(v1["preview"], "ready", "{v1}");
        for (size, side) in [("small", 256), ("large", 320)] {
            let r = preview(size).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{size}");
            assert_eq!(r.headers()["content-type"], "image/jpeg");
            let img = image::load_from_memory(&r.bytes().await.unwrap()).unwrap();
            assert_eq!((img.width(), img.height()), (side, side * 3 / 4), "{size}");
        }
    } else {
        assert_eq!(v1["preview"], "unsupported", "{v1}");
        assert!(v1["preview_error"].as_str().unwrap().contains("ffmpeg"));
        let r = preview("small").await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    // The damaged one is refused with a reason, and nothing else suffers.
    assert_eq!(timeline[1]["preview"], "failed");
    assert!(
        timeline[1]["preview_error"]
            .as_str()
            .unwrap()
            .contains("damaged"),
        "{}",
        timeline[1]
    );
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    // The original is kept byte for byte, and plays back with a range.
    let r = tus.download(&f_clip, Some("bytes=0-11")).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["content-type"], "video/quicktime");
    assert_eq!(&r.bytes().await.unwrap()[..], &clip[..12]);
    let original = tus.download(&f_clip, None).await.bytes().await.unwrap();
    assert_eq!(blake3::hash(&original), blake3::hash(&clip));
}

/// An iPhone's HEIC: this server makes no preview of it (its image library reads JPEG, PNG and
/// WebP), but the photo still takes its place on the timeline and the map from its EXIF.
async fn an_iphone_photo_keeps_its_time_and_place_without_a_preview(app: &TestApp) {
    let (tus, c, _) = signed_in(app, "ivy@example.com").await;
    let photo = include_bytes!("../fixtures/photo.heic").to_vec();
    let f = tus.upload(&photo, "IMG_4032.HEIC").await.unwrap();
    c.push("gallery", json!([{"id": "h1", "op": "put", "body": {"file_id": f, "name": "IMG_4032.HEIC", "mime_type": "image/heic", "size": photo.len(), "albums": ["Lisbon"]}}]), None)
        .await
        .unwrap();
    previews_settle(&tus).await;
    let timeline = gallery(&tus, "").await;
    assert_eq!(ids(&timeline), ["h1"]);
    let h1 = &timeline[0];
    taken_in_lisbon(h1);
    assert_eq!(h1["preview"], "failed");
    assert!(
        h1["preview_error"]
            .as_str()
            .unwrap()
            .contains("JPEG, PNG or WebP"),
        "{h1}"
    );
    // Dated, so it is in its album at its time, and the original is there byte for byte.
    assert_eq!(ids(&gallery(&tus, "?album=Lisbon").await), ["h1"]);
    let original = tus.download(&f, None).await.bytes().await.unwrap();
    assert_eq!(original.as_ref(), photo.as_slice());
}

async fn the_gallery_reads_exif_and_makes_previews(app: &TestApp) {
    let (tus, c, _) = signed_in(app, "liv@example.com").await;
    let photo = include_bytes!("../fixtures/photo.jpg").to_vec();
    let f_photo = tus.upload(&photo, "IMG_0001.jpg").await.unwrap();
    // The device says nothing of time or place: the photo's EXIF does.
    c.push("gallery", json!([{"id": "g1", "op": "put", "body": {"file_id": f_photo, "name": "IMG_0001.jpg", "mime_type": "image/jpeg", "size": photo.len(), "albums": ["Summer"]}}]), None)
        .await
        .unwrap();
    // A later photo whose device recorded its time, in an album.
    let later = photo.clone();
    let f_later = tus.upload(&later, "IMG_0002.jpg").await.unwrap();
    c.push("gallery", json!([{"id": "g2", "op": "put", "body": {"file_id": f_later, "name": "IMG_0002.jpg", "mime_type": "image/jpeg", "size": later.len(), "taken_at": "2026-08-01T10:00:00Z", "albums": ["Summer"]}}]), None)
        .await
        .unwrap();
    // A truncated JPEG and a decompression bomb.
    let truncated = photo[..photo.len() / 2].to_vec();
    let f_trunc = tus.upload(&truncated, "broken.jpg").await.unwrap();
    let bomb = png_bomb(50_000, 50_000);
    let f_bomb = tus.upload(&bomb, "bomb.png").await.unwrap();
    c.push("gallery", json!([
        {"id": "g3", "op": "put", "body": {"file_id": f_trunc, "name": "broken.jpg", "mime_type": "image/jpeg", "size": truncated.len(), "taken_at": "2020-01-01T00:00:00Z", "albums": ["Summer"]}},
        {"id": "g4", "op": "put", "body": {"file_id": f_bomb, "name": "bomb.png", "mime_type": "image/png", "size": bomb.len(), "taken_at": "2019-01-01T00:00:00Z"}}
    ]), None)
    .await
    .unwrap();
    previews_settle(&tus).await;

    let timeline = gallery(&tus, "").await;
    assert_eq!(
        ids(&timeline),
        ["g2", "g1", "g3", "g4"],
        "newest first: {timeline:?}"
    );
    let g1 = &timeline[1];
    // 18:32:05 at +01:00, from DateTimeOriginal and OffsetTimeOriginal.
    taken_in_lisbon(g1);
    assert_eq!(
        (g1["width"].as_u64(), g1["height"].as_u64()),
        (Some(720), Some(477))
    );
    assert_eq!(g1["preview"], "ready");
    // The device's own time wins over EXIF.
    assert_eq!(timeline[0]["taken_at"], "2026-08-01T10:00:00Z");
    // The damaged and the hostile file are refused with a reason, and nothing else suffers.
    assert_eq!(timeline[2]["preview"], "failed");
    assert!(
        timeline[2]["preview_error"]
            .as_str()
            .unwrap()
            .contains("truncated"),
        "{}",
        timeline[2]
    );
    assert_eq!(timeline[3]["preview"], "failed");
    assert!(
        timeline[3]["preview_error"]
            .as_str()
            .unwrap()
            .contains("megapixels"),
        "{}",
        timeline[3]
    );
    let r = app
        .http
        .get(app.url(&format!("/api/v1/files/{f_bomb}/preview")))
        .bearer_auth(&tus.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "no_preview"
    );
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    // Two previews of the photo, JPEG, within their sizes; the original is kept byte for byte.
    for (size, side) in [("small", 256), ("large", 720)] {
        let r = app
            .http
            .get(app.url(&format!("/api/v1/files/{f_photo}/preview?size={size}")))
            .bearer_auth(&tus.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{size}");
        assert_eq!(r.headers()["content-type"], "image/jpeg");
        let img = image::load_from_memory(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(img.width().max(img.height()), side, "{size}");
    }
    let original = tus.download(&f_photo, None).await.bytes().await.unwrap();
    assert_eq!(blake3::hash(&original), blake3::hash(&photo));
    // An album is in the timeline's order, the photo whose time came from its file included
    // (undated until the media worker read it, then at its place in the album too).
    let summer = gallery(&tus, "?album=Summer").await;
    assert_eq!(ids(&summer), ["g2", "g1", "g3"], "{summer:?}");
    // A second entry for the same, already read file, with no time of its own, takes the
    // file's time at once; one deleted and restored from the bin goes back to that time.
    c.push("gallery", json!([{"id": "g5", "op": "put", "body": {"file_id": f_photo, "name": "copy.jpg", "mime_type": "image/jpeg", "size": photo.len()}}]), None)
        .await
        .unwrap();
    let order = ["g2", "g1", "g5", "g3", "g4"];
    assert_eq!(ids(&gallery(&tus, "").await), order);
    delete_item(&c, "gallery", "g1").await;
    assert_eq!(ids(&gallery(&tus, "").await), ["g2", "g5", "g3", "g4"]);
    let bin = c.recycle_bin(Some("gallery")).await.unwrap();
    c.restore(bin[0]["id"].as_str().unwrap()).await.unwrap();
    let timeline = gallery(&tus, "").await;
    assert_eq!(ids(&timeline), order);
    taken_in_lisbon(&timeline[1]);
    // Restored, it is back in its album at the file's time.
    assert_eq!(
        ids(&gallery(&tus, "?album=Summer").await),
        ["g2", "g1", "g3"]
    );
    // The copy goes for good (what follows counts the objects g1 alone keeps).
    delete_item(&c, "gallery", "g5").await;
    let bin = c.recycle_bin(Some("gallery")).await.unwrap();
    assert_eq!(bin.len(), 1);
    c.purge(bin[0]["id"].as_str().unwrap()).await.unwrap();
    // Another account sees none of it.
    let (other, _, _) = signed_in(app, "mo@example.com").await;
    assert!(gallery(&other, "").await.is_empty());
    let r = app
        .http
        .get(app.url(&format!("/api/v1/files/{f_photo}/preview")))
        .bearer_auth(&other.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // The previews were written under an intent that recording them cleared: a day later the
    // collector keeps them. A second worker finishing the same photo late (its lease ran out)
    // records nothing over them.
    let account: mica_core::AccountId = tus.account_id.parse().unwrap();
    let late = mica_store::MediaDone {
        status: "done".into(),
        thumb_small: Some("thumbs/late/small.jpg".into()),
        ..mica_store::MediaDone::default()
    };
    assert!(!app
        .store()
        .finish_media(
            account,
            &f_photo,
            &late,
            mica_core::Timestamp(app.clock_secs() * 1000)
        )
        .await
        .unwrap());
    let stored = tus.stored().await;
    app.advance(Duration::from_secs(25 * 3600));
    app.server_cloud().maintenance().await.unwrap();
    let (tus, c) = signed_in_again(app, "liv@example.com").await;
    assert_eq!(tus.stored().await, stored);
    let small = app
        .http
        .get(app.url(&format!("/api/v1/files/{f_photo}/preview?size=small")))
        .bearer_auth(&tus.token)
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), StatusCode::OK);
    // Purged, a photo's previews go with its bytes.
    let v = c.item("gallery", "g1").await.unwrap()["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = tus.stored().await.0;
    c.push(
        "gallery",
        json!([{"id": "g1", "op": "delete", "base_version": v}]),
        None,
    )
    .await
    .unwrap();
    let bin = c.recycle_bin(None).await.unwrap();
    c.purge(bin[0]["id"].as_str().unwrap()).await.unwrap();
    // The same bytes are still g2's file, so only g1's two previews go.
    assert_eq!(tus.stored().await.0, before - 2);
}

/// An existing tus client, tuspy (`pip install tuspy`), uploads in 3 MB requests with SHA-1
/// checksums, stops after the first, and a new uploader resumes from the server's offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tuspy_uploads_and_resumes() {
    let have = std::process::Command::new("python3")
        .args(["-c", "import tusclient"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var_os("MICA_TEST_REQUIRE_TUSPY").is_none(),
            "tuspy is required here (pip install tuspy)"
        );
        eprintln!("tuspy is not installed: tus client compatibility skipped");
        return;
    }
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    let (tus, _, _) = signed_in(&app, "tus@example.com").await;
    let data = bytes(10 * MB, 11);
    let path = std::env::temp_dir().join(format!("mica-tuspy-{}.bin", std::process::id()));
    std::fs::write(&path, &data).unwrap();
    let script = r#"
import sys
from tusclient import client
endpoint, token, path = sys.argv[1:4]
c = client.TusClient(endpoint, headers={"Authorization": "Bearer " + token})
first = c.uploader(path, chunk_size=3_000_000, upload_checksum=True,
                   metadata={"filename": "report.pdf", "filetype": "application/pdf"})
first.upload_chunk()                      # then the app is closed
again = c.uploader(path, url=first.url, chunk_size=3_000_000, upload_checksum=True)
assert again.offset == 3_000_000, again.offset
again.upload()
print(first.url)
"#;
    let endpoint = app.url("/api/v1/uploads");
    let token = tus.token.clone();
    let file_arg = path.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", script, &endpoint, &token, &file_arg])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "tuspy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let upload = url.trim_start_matches(&app.base);
    let (status, offset, file) = tus.head(upload).await;
    assert_eq!((status, offset), (StatusCode::OK, Some(data.len())));
    let file = file.unwrap();
    let got = tus.download(&file, None).await;
    assert_eq!(got.headers()["content-type"], "application/pdf");
    assert_eq!(
        blake3::hash(&got.bytes().await.unwrap()),
        blake3::hash(&data)
    );
    app.stop().await;
}

async fn call_recordings_sync_and_play_back_with_ranges(app: &TestApp) {
    let (tus, c, _) = signed_in(app, "rui@example.com").await;
    // The phone uploads the recording with its bytes in the creation request (tus
    // creation-with-upload), its type declared.
    let audio = bytes(300_000, 21);
    let r = tus
        .req(reqwest::Method::POST, "/api/v1/uploads")
        .header("Upload-Length", audio.len().to_string())
        .header(
            "Upload-Metadata",
            format!("filename {},filetype {}", b64("call.m4a"), b64("audio/mp4")),
        )
        .header("Content-Type", "application/offset+octet-stream")
        .body(audio.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        r.headers()["upload-offset"],
        audio.len().to_string().as_str()
    );
    let file = r.headers()["mica-file-id"].to_str().unwrap().to_owned();
    let recording = json!({
        "file_id": file, "name": "Call with Rui", "kind": "call", "direction": "incoming",
        "number": "+351912345678", "mime_type": "audio/mp4", "size": audio.len(),
        "duration_secs": 42.5, "recorded_at": "2026-11-20T18:04:00Z",
    });
    c.push(
        "recordings",
        json!([{ "id": "call-1", "op": "put", "body": recording }]),
        None,
    )
    .await
    .unwrap();

    // Another device of the account gets it with its number, direction and time.
    let other = app
        .client
        .sign_in("rui@example.com", crate::support::PASSWORD, None)
        .await
        .unwrap();
    let other = app.client.with_token(other.access_token);
    let page = other.pull("recordings", None, None).await.unwrap();
    assert_eq!(page.changes.len(), 1);
    assert_eq!(page.changes[0].id, "call-1");
    assert_eq!(page.changes[0].body, Some(recording.clone()));

    // Playback seeks: a range in the middle, the last bytes, with the declared type.
    let r = tus.download(&file, Some("bytes=1000-1999")).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["content-type"], "audio/mp4");
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 1000-1999/{}", audio.len()).as_str()
    );
    assert_eq!(r.bytes().await.unwrap(), &audio[1000..2000]);
    let r = tus.download(&file, Some("bytes=-500")).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap(), &audio[audio.len() - 500..]);

    // Deleted, it waits in the recycle bin under recordings, its bytes still counted.
    let version = page.changes[0].version.clone();
    c.push(
        "recordings",
        json!([{ "id": "call-1", "op": "delete", "base_version": version }]),
        None,
    )
    .await
    .unwrap();
    let bin = c.recycle_bin(Some("recordings")).await.unwrap();
    assert_eq!(bin.len(), 1);
    assert_eq!(bin[0]["item_id"], "call-1");
    assert_eq!(bin[0]["summary"], "Call with Rui");
    assert!(used(&c.usage().await.unwrap()) >= audio.len() as i64);
}

async fn purging_spares_the_chunks_an_upload_in_progress_shares(app: &TestApp) {
    let (tus, c, _) = signed_in(app, "gu@example.com").await;
    // A photo of two chunks, deleted to the bin.
    let data = bytes(6 * MB, 31);
    let file = binned_photo(&tus, &c, &data).await;
    // Another device uploads the same photo again; its first chunk (already stored) is in.
    let again = tus.create(data.len(), "x-again.jpg").await;
    let first = 4 << 20;
    let r = tus.patch(&again, 0, data[..first].to_vec()).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // The bin is emptied meanwhile: the old photo's chunks are unreferenced by it, but the one
    // the upload shares must stay.
    let bin = c.recycle_bin(None).await.unwrap();
    c.purge(bin[0]["id"].as_str().unwrap()).await.unwrap();
    app.server_cloud().maintenance().await.unwrap();
    assert_eq!(
        tus.download(&file, None).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(tus.stored().await.1, first as u64);
    // The upload finishes, and the file is the photo, byte for byte.
    let r = tus.patch(&again, first, data[first..].to_vec()).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let copy = r.headers()["mica-file-id"].to_str().unwrap().to_owned();
    assert_eq!(
        tus.download(&copy, None).await.bytes().await.unwrap(),
        &data[..]
    );
    assert_eq!(tus.stored().await.1, data.len() as u64);
    assert_eq!(used(&c.usage().await.unwrap()), data.len() as i64);
    assert!(app.server_cloud().check_usage().await.unwrap().is_empty());
}
