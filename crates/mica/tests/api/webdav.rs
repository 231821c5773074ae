//! WebDAV over the drive: app passwords (never the main password), the same entries as the API,
//! other accounts out of reach, and Debian's `litmus` compliance suite (basic, copymove, props,
//! locks) against the real server.

use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::files::raw_status;
use crate::on_both_backends;
use crate::security::step_up_by_email;
use crate::support::{Backend, TestApp, PASSWORD};

on_both_backends!(
    webdav_serves_the_drive_with_app_passwords,
    litmus_passes,
    webdav_refuses_what_it_cannot_do_safely,
    webdav_never_deletes_on_the_way_to_failing,
    a_large_file_is_read_whole_and_by_ranges,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_folder_is_copied_and_deleted_whole_sqlite() {
    a_large_folder_is_copied_and_deleted_whole(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_folder_is_copied_and_deleted_whole_postgres() {
    if crate::support::postgres_url().is_none() {
        eprintln!("MICA_TEST_POSTGRES_URL is not set: PostgreSQL variant skipped");
        return;
    }
    a_large_folder_is_copied_and_deleted_whole(Backend::Postgres).await;
}

pub(crate) fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Signs up, steps up and creates an app password; returns (account id, access token, password).
pub(crate) async fn with_app_password(app: &TestApp, email: &str) -> (String, String, String) {
    let t = app.signup_email(email).await;
    let c = app.client.with_token(&t.access_token);
    step_up_by_email(app, &c, email).await;
    let r: Value = app
        .http
        .post(app.url("/api/v1/me/app-passwords"))
        .bearer_auth(&t.access_token)
        .json(&json!({"name": "Laptop (rclone)"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let password = r["password"].as_str().unwrap().to_owned();
    assert_eq!(
        password.len(),
        19,
        "four groups of four letters: {password}"
    );
    (t.account_id, t.access_token, password)
}

async fn webdav_serves_the_drive_with_app_passwords(app: &TestApp) {
    let email = "lea@example.com";
    let t = app.signup_email(email).await;
    let root = app.url(&format!("/dav/files/{}/", t.account_id));
    let propfind = Method::from_bytes(b"PROPFIND").unwrap();
    // Without credentials, or with the main password: a Basic challenge.
    let r = app
        .http
        .request(propfind.clone(), &root)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    let r = app
        .http
        .request(propfind.clone(), &root)
        .header("Authorization", basic(email, PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "the main password never works over Basic"
    );
    // Creating an app password needs a fresh step-up.
    let r = app
        .http
        .post(app.url("/api/v1/me/app-passwords"))
        .bearer_auth(&t.access_token)
        .json(&json!({"name": "Phone"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let c = app.client.with_token(&t.access_token);
    step_up_by_email(app, &c, email).await;
    let created: Value = app
        .http
        .post(app.url("/api/v1/me/app-passwords"))
        .bearer_auth(&t.access_token)
        .json(&json!({"name": "Phone"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let password = created["password"].as_str().unwrap().to_owned();
    let auth = basic(email, &password);

    // A folder and a file through WebDAV...
    let r = app
        .http
        .request(
            Method::from_bytes(b"MKCOL").unwrap(),
            format!("{root}Photos"),
        )
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let body = b"hello from davfs".to_vec();
    let r = app
        .http
        .put(format!("{root}Photos/hello.txt"))
        .header("Authorization", &auth)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // ... are the drive's entries for the API, and back.
    let top: Value = app
        .http
        .get(app.url("/api/v1/drive"))
        .bearer_auth(&t.access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(top[0]["name"], "Photos");
    let inside: Value = app
        .http
        .get(app.url(&format!(
            "/api/v1/drive?parent={}",
            top[0]["id"].as_str().unwrap()
        )))
        .bearer_auth(&t.access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(inside[0]["name"], "hello.txt");
    assert_eq!(inside[0]["size"], body.len());
    let r = app
        .http
        .get(format!("{root}Photos/hello.txt"))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A stored file never runs as a page of this origin (where the web portal lives).
    assert!(r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .starts_with("sandbox"));
    assert_eq!(r.bytes().await.unwrap(), &body[..]);
    let r = app
        .http
        .request(propfind.clone(), format!("{root}Photos/"))
        .header("Authorization", &auth)
        .header("Depth", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 207);
    let xml = r.text().await.unwrap();
    assert!(xml.contains("hello.txt"), "{xml}");
    // A name given in NFD (as macOS sends it) is the NFC entry.
    let r = app
        .http
        .put(format!("{root}Cafe%CC%81.txt"))
        .header("Authorization", &auth)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = app
        .http
        .get(format!("{root}Caf%C3%A9.txt"))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Another account's drive is not there for these credentials.
    let other = app.signup_email("max@example.com").await;
    let r = app
        .http
        .request(
            propfind.clone(),
            app.url(&format!("/dav/files/{}/", other.account_id)),
        )
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Nor can a COPY or a MOVE put anything there, named plainly or through `..`; and a name
    // that climbs out of the drive is refused.
    let theirs = app.url(&format!("/dav/files/{}/", other.account_id));
    for (method, destination) in [
        ("COPY", format!("{theirs}stolen.txt")),
        ("MOVE", format!("{theirs}stolen.txt")),
        (
            "MOVE",
            format!("{root}Photos/../../{}/stolen.txt", other.account_id),
        ),
    ] {
        let r = app
            .http
            .request(
                Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{root}Photos/hello.txt"),
            )
            .header("Authorization", &auth)
            .header("Destination", &destination)
            .send()
            .await
            .unwrap();
        // 502: a destination this drive does not serve (RFC 4918, 9.8.5).
        assert_eq!(
            r.status(),
            StatusCode::BAD_GATEWAY,
            "{method} to {destination}"
        );
    }
    let theirs_now = app
        .client
        .with_token(&other.access_token)
        .pull("drive", None, None)
        .await
        .unwrap();
    assert!(theirs_now.changes.is_empty(), "{:?}", theirs_now.changes);
    let r = app
        .http
        .get(format!("{root}Photos/hello.txt"))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "the source stays after a refused MOVE"
    );
    for path in [
        "Photos/..%2F..%2F..%2Fetc%2Fpasswd",
        "..%2f..%2fetc%2fpasswd",
    ] {
        let r = app
            .http
            .get(format!("{root}{path}"))
            .header("Authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
    }
    // Revoked, the password stops working at once.
    let list: Value = app
        .http
        .get(app.url("/api/v1/me/app-passwords"))
        .bearer_auth(&t.access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["name"], "Phone");
    assert!(list[0]["last_used_at"].is_string());
    assert!(list[0].get("password").is_none());
    let r = app
        .http
        .delete(app.url(&format!(
            "/api/v1/me/app-passwords/{}",
            list[0]["id"].as_str().unwrap()
        )))
        .bearer_auth(&t.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app
        .http
        .request(propfind.clone(), &root)
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // A new main password ends every app password, as it ends every other session: someone
    // who made one with a stolen session loses it when the owner takes the account back. (The
    // step-up above is still fresh.)
    let created: Value = app
        .http
        .post(app.url("/api/v1/me/app-passwords"))
        .bearer_auth(&t.access_token)
        .json(&json!({"name": "Laptop"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let auth = basic(email, created["password"].as_str().unwrap());
    let status = |auth: String| {
        let (http, propfind, root) = (app.http.clone(), propfind.clone(), root.clone());
        async move {
            http.request(propfind, &root)
                .header("Authorization", auth)
                .header("Depth", "0")
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(status(auth.clone()).await.as_u16(), 207);
    c.change_password("Another-long-Secret-42").await.unwrap();
    assert_eq!(status(auth).await, StatusCode::UNAUTHORIZED);
}

/// Debian's litmus WebDAV suite: basic, copymove, props and locks, with no failure.
async fn litmus_passes(app: &TestApp) {
    if std::process::Command::new("litmus")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("MICA_TEST_REQUIRE_LITMUS").is_none(),
            "litmus is required here (apt-get install litmus)"
        );
        eprintln!("litmus is not installed: WebDAV compliance skipped");
        return;
    }
    let (account, _, password) = with_app_password(app, "ned@example.com").await;
    let url = app.url(&format!("/dav/files/{account}/"));
    // litmus writes its `debug.log` where it runs: the test's own folder, not the source tree.
    let cwd = app.cfg.data_dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("litmus")
            .current_dir(cwd)
            .env("TESTS", "basic copymove props locks")
            .arg(&url)
            .arg("ned@example.com")
            .arg(&password)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("{text}");
    let summaries: Vec<&str> = text.lines().filter(|l| l.contains("summary for")).collect();
    for suite in ["basic", "copymove", "props", "locks"] {
        let line = summaries
            .iter()
            .find(|l| l.contains(&format!("`{suite}'")))
            .unwrap_or_else(|| panic!("litmus did not run {suite}:\n{text}"));
        assert!(line.contains(" 0 failed"), "litmus {suite}: {line}\n{text}");
    }
}

/// A folder with more entries than a client's batch (1,000) is copied and deleted whole, over
/// WebDAV and the API; one over the server's bound for a single transaction (`max_tree`, 1,500
/// here) is refused by the API with a clear error and left as it was.
async fn a_large_folder_is_copied_and_deleted_whole(backend: Backend) {
    let app = TestApp::start_with(backend, |cfg| cfg.cloud.max_tree = 1_500)
        .await
        .unwrap();
    let email = "max@example.com";
    let (account, token, password) = with_app_password(&app, email).await;
    let auth = basic(email, &password);
    let root = app.url(&format!("/dav/files/{account}/"));
    let c = app.client.with_token(&token);
    let dav = |method: &[u8], path: &str| {
        app.http
            .request(Method::from_bytes(method).unwrap(), format!("{root}{path}"))
            .header("Authorization", &auth)
    };
    let api = |method: Method, path: &str, body: Option<Value>| {
        let mut r = app
            .http
            .request(method, app.url(&format!("/api/v1/drive{path}")))
            .bearer_auth(&token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        async move {
            let r = r.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (s, big) = api(
        Method::POST,
        "",
        Some(json!({"kind": "folder", "name": "Big"})),
    )
    .await;
    assert_eq!(s, 201, "{big}");
    let big = big["id"].as_str().unwrap().to_owned();
    let fill = |from: usize, to: usize| {
        let writes: Vec<Value> = (from..to)
            .map(|i| json!({"id": format!("sub{i}"), "op": "put", "body": {"kind": "folder", "name": format!("f{i:05}"), "parent": big}}))
            .collect();
        let c = c.clone();
        async move {
            for batch in writes.chunks(1_000) {
                c.push("drive", Value::Array(batch.to_vec()), None)
                    .await
                    .unwrap();
            }
        }
    };
    let listed = |parent: String| {
        let api = &api;
        async move {
            let (s, v) = api(Method::GET, &format!("?parent={parent}"), None).await;
            assert_eq!(s, 200, "{v}");
            v.as_array().unwrap().len()
        }
    };
    fill(0, 1_100).await;
    assert_eq!(listed(big.clone()).await, 1_100);

    // Copied over WebDAV (1,101 entries): all of it arrives.
    let r = dav(b"COPY", "Big")
        .header("Destination", format!("{root}Big%20copy"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let (_, top) = api(Method::GET, "", None).await;
    let copy = top
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "Big copy")
        .unwrap_or_else(|| panic!("no copy in {top}"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(listed(copy.clone()).await, 1_100);
    // Deleted over the API: every entry goes to the bin.
    let (s, v) = api(Method::DELETE, &format!("/{copy}"), None).await;
    assert_eq!((s, &v["deleted"]), (200, &json!(1_101)), "{v}");
    let (_, top) = api(Method::GET, "", None).await;
    assert_eq!(top.as_array().unwrap().len(), 1, "{top}");
    // Copied again (over the API) and deleted over WebDAV, within the bound: the folder goes
    // whole, in one step, as over the API, and all of it can be had back from the bin.
    let (s, v) = api(
        Method::POST,
        &format!("/{big}/copy"),
        Some(json!({"name": "Again"})),
    )
    .await;
    assert!((200..300).contains(&s), "{s} {v}");
    let binned = c.recycle_bin(Some("drive")).await.unwrap().len();
    let r = dav(b"DELETE", "Again").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (_, top) = api(Method::GET, "", None).await;
    assert_eq!(top.as_array().unwrap().len(), 1, "{top}");
    assert_eq!(
        c.recycle_bin(Some("drive")).await.unwrap().len(),
        binned + 1_101
    );
    assert!(app.server_cloud().check_usage().await.unwrap().is_empty());
    // A locked folder is not deleted without its lock's token, and is with it.
    for path in ["Locked", "Locked/inner"] {
        let r = dav(b"MKCOL", path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{path}");
    }
    let r = dav(b"LOCK", "Locked")
        .header("Depth", "infinity")
        .header("Content-Type", "application/xml")
        .body(r#"<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype></D:lockinfo>"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let token = r.headers()["lock-token"].to_str().unwrap().to_owned();
    let r = dav(b"DELETE", "Locked").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::LOCKED);
    let (_, top) = api(Method::GET, "", None).await;
    assert_eq!(top.as_array().unwrap().len(), 2, "{top}");
    let r = dav(b"DELETE", "Locked")
        .header("If", format!("({token})"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (_, top) = api(Method::GET, "", None).await;
    assert_eq!(top.as_array().unwrap().len(), 1, "{top}");

    // Past the bound, the API refuses the whole and leaves the folder as it was.
    fill(1_100, 1_600).await;
    let refused = |(s, v): (u16, Value)| {
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (422, Some("folder_too_large")),
            "{v}"
        );
    };
    refused(
        api(
            Method::POST,
            &format!("/{big}/copy"),
            Some(json!({"name": "Again"})),
        )
        .await,
    );
    refused(api(Method::DELETE, &format!("/{big}"), None).await);
    assert_eq!(listed(big.clone()).await, 1_600);
    let (_, top) = api(Method::GET, "", None).await;
    assert_eq!(top.as_array().unwrap().len(), 1, "{top}");
    // Past the bound, WebDAV's DELETE walks the folder (dav-server removes what is inside
    // first, one entry at a time), so there it has no bound: everything goes to the bin.
    let r = dav(b"DELETE", "Big").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (_, top) = api(Method::GET, "", None).await;
    assert_eq!(top, json!([]));
    assert!(app.server_cloud().check_usage().await.unwrap().is_empty());
    app.stop().await;
}

/// What WebDAV asks of the server that it cannot do safely is refused, and one account cannot
/// get in the way of another: XML nested past any real request's depth (dav-server parses it by
/// recursion), a partial update (which would replace the file with the part), a body past the
/// account's free space (refused before it fills a spool), a lock on another account's paths,
/// and a `Range` whose numbers overflow.
async fn webdav_refuses_what_it_cannot_do_safely(app: &TestApp) {
    let (account, token, password) = with_app_password(app, "ida@example.com").await;
    let auth = basic("ida@example.com", &password);
    let root = app.url(&format!("/dav/files/{account}/"));
    let dav = |method: &str, path: &str| {
        app.http
            .request(
                Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{root}{path}"),
            )
            .header("Authorization", &auth)
    };
    let r = dav("PUT", "notes.txt")
        .body("twelve bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // 20,000 nested elements (60 KB): refused, and the server is still there.
    let deep = format!("<?xml version=\"1.0\"?>{}", "<a>".repeat(20_000));
    let r = dav("PROPFIND", "").body(deep).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "xml_too_deep");
    let r = dav("PROPFIND", "")
        .header("Depth", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 207);
    // A PROPFIND of a whole tree is refused (RFC 4918's propfind-finite-depth), whatever
    // header dav-server's test mode listens for.
    let r = dav("PROPFIND", "")
        .header("Depth", "infinity")
        .header("X-Litmus", "props: 1 (propfind_d0)")
        .send()
        .await
        .unwrap();
    assert_ne!(r.status().as_u16(), 207);
    assert!(r.text().await.unwrap().contains("propfind-finite-depth"));
    let r = dav("PROPPATCH", "notes.txt")
        .body(vec![b'x'; 70_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Nor can such XML wait in a dead property for the next PROPFIND: the sync API refuses it.
    let deep_prop = base64::engine::general_purpose::STANDARD.encode("<a>".repeat(1_000));
    let e = app
        .client
        .with_token(&token)
        .push(
            "drive",
            json!([{"id": "deep", "op": "put", "body": {"kind": "folder", "name": "Deep",
                "props": [{"name": "x", "namespace": "urn:x", "xml": deep_prop}]}}]),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("invalid_item"), "{e}");
    assert!(e.to_string().contains("nests deeper"), "{e}");

    // A partial update is not done, rather than done wrong.
    let r = dav("PUT", "notes.txt")
        .header("Content-Range", "bytes 0-2/12")
        .body("TWE")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_IMPLEMENTED);
    let r = dav("PATCH", "notes.txt")
        .header("Content-Type", "application/x-sabredav-partialupdate")
        .header("X-Update-Range", "append")
        .body("!!!")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_IMPLEMENTED);
    let r = dav("GET", "notes.txt").send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "twelve bytes");

    // A body declared past the free space (macOS's X-Expected-Entity-Length on a chunked
    // PUT) is refused before it arrives; one that is not the length it declared is the
    // client's mistake, not a 500, and stores nothing.
    let put = |name: &str, declared: u64| {
        format!(
            "PUT /dav/files/{account}/{name} HTTP/1.1\r\nHost: mica\r\nAuthorization: {auth}\r\n\
             X-Expected-Entity-Length: {declared}\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\na\r\n0123456789\r\n0\r\n\r\n"
        )
    };
    assert_eq!(raw_status(app, &put("huge.bin", 6_000_000_000)).await, 507);
    assert_eq!(raw_status(app, &put("short.bin", 100)).await, 400);
    for name in ["huge.bin", "short.bin"] {
        let r = dav("GET", name).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{name}");
    }

    // A Range past any file: the whole file.
    let r = dav("GET", "notes.txt")
        .header("Range", "bytes=0-18446744073709551615")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(r.text().await.unwrap(), "twelve bytes");

    // Another account's lock on "/" (depth infinity) is not this account's business.
    let (other, _, other_password) = with_app_password(app, "jo@example.com").await;
    let lock = r#"<?xml version="1.0"?><D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype></D:lockinfo>"#;
    let r = app
        .http
        .request(
            Method::from_bytes(b"LOCK").unwrap(),
            app.url(&format!("/dav/files/{other}/")),
        )
        .header("Authorization", basic("jo@example.com", &other_password))
        .header("Depth", "infinity")
        .body(lock)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = dav("PUT", "notes.txt")
        .body("still mine")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // Its own lock holds for itself, with a timeout it did not ask for.
    let r = dav("LOCK", "")
        .header("Depth", "infinity")
        .body(lock)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.text().await.unwrap();
    assert!(body.contains("Second-3600"), "{body}");
    let r = dav("PUT", "notes.txt").body("locked").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 423);
}

/// Requests that dav-server would carry out by deleting first and failing after (the whole
/// drive emptied by a DELETE of its top; a destination deleted, and the source inside it, by a
/// MOVE that cannot then happen; a file replaced by the part of a body that fitted) are refused
/// before anything changes; a file onto a file is one transaction.
async fn webdav_never_deletes_on_the_way_to_failing(app: &TestApp) {
    let (account, token, password) = with_app_password(app, "kim@example.com").await;
    let c = app.client.with_token(&token);
    let auth = basic("kim@example.com", &password);
    let root = app.url(&format!("/dav/files/{account}/"));
    let dav = |method: &str, path: &str| {
        app.http
            .request(
                Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{root}{path}"),
            )
            .header("Authorization", &auth)
    };
    let get = |path: &'static str| {
        let r = dav("GET", path).send();
        async move {
            let r = r.await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let code = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        (
            status,
            v["error"]["code"].as_str().unwrap_or_default().to_owned(),
        )
    };
    for folder in ["A", "A/B", "A%20B"] {
        let r = dav("MKCOL", folder).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{folder}");
    }
    for (path, body) in [
        ("A/B/x.txt", "inside"),
        ("A%20B/y.txt", "spaced"),
        ("keep.txt", "keep"),
        ("old.txt", "old"),
        ("new.txt", "new"),
        ("other.txt", "other"),
        ("Cafe%CC%81.txt", "café"),
    ] {
        let r = dav("PUT", path).body(body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{path}");
    }
    let everything = |expect: [(&'static str, &'static str); 3]| async move {
        for (path, body) in expect {
            assert_eq!(get(path).await, (200, body.to_owned()), "{path}");
        }
    };

    // DELETE of the top of the drive, however it is spelled: refused, and nothing is gone.
    for url in [root.clone(), root.trim_end_matches('/').to_owned()] {
        let r = app
            .http
            .delete(&url)
            .header("Authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(code(r).await, (403, "drive_top".into()), "{url}");
    }
    everything([
        ("A/B/x.txt", "inside"),
        ("keep.txt", "keep"),
        ("old.txt", "old"),
    ])
    .await;

    // Onto the top of the drive: refused (it once panicked inside dav-server: a 500).
    let top = format!("/dav/files/{account}");
    for destination in [
        format!("{top}/"),
        top.clone(),
        root.clone(),
        format!("{top}/A/.."),
    ] {
        for method in ["MOVE", "COPY"] {
            let r = dav(method, "keep.txt")
                .header("Destination", &destination)
                .send()
                .await
                .unwrap();
            let status = r.status();
            assert!(
                status.is_client_error(),
                "{method} to {destination}: {status}"
            );
        }
    }
    let r = dav("MOVE", "keep.txt")
        .header("Destination", format!("{top}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(code(r).await, (403, "drive_top".into()));
    everything([
        ("A/B/x.txt", "inside"),
        ("keep.txt", "keep"),
        ("old.txt", "old"),
    ])
    .await;

    // Onto a folder that holds the source, into itself, or onto itself spelled in another
    // Unicode form: refused before dav-server deletes the destination (and the source in it).
    for (method, from, to) in [
        ("MOVE", "A/B/x.txt", "A"),
        ("COPY", "A/B/x.txt", "A/B"),
        ("MOVE", "A", "A/B/C"),
        ("COPY", "A", "A/B/A"),
        ("MOVE", "Caf%C3%A9.txt", "Cafe%CC%81.txt"),
        // A Destination with a raw space, as dav-server accepts it.
        ("MOVE", "A%20B/y.txt", "A B"),
    ] {
        let r = dav(method, from)
            .header("Destination", format!("{top}/{to}"))
            .header("Overwrite", "T")
            .send()
            .await
            .unwrap();
        assert_eq!(
            code(r).await,
            (403, "overlapping_paths".into()),
            "{method} {from} → {to}"
        );
    }
    everything([
        ("A/B/x.txt", "inside"),
        ("Caf%C3%A9.txt", "café"),
        ("A%20B/y.txt", "spaced"),
    ])
    .await;
    assert!(c.recycle_bin(Some("drive")).await.unwrap().is_empty());

    // A file moved or copied onto a file: done in one transaction, the replaced one in the bin.
    let r = dav("MOVE", "new.txt")
        .header("Destination", format!("{top}/old.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(get("old.txt").await, (200, "new".into()));
    assert_eq!(get("new.txt").await.0, 404);
    let r = dav("COPY", "keep.txt")
        .header("Destination", format!("{top}/old.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    everything([
        ("A/B/x.txt", "inside"),
        ("keep.txt", "keep"),
        ("old.txt", "keep"),
    ])
    .await;
    let bin = c.recycle_bin(Some("drive")).await.unwrap();
    assert_eq!(bin.len(), 2, "{bin:?}");
    assert!(
        bin.iter()
            .all(|e| e["summary"] == "old.txt" || e["name"] == "old.txt"),
        "{bin:?}"
    );

    // A chunked body longer than it declared: refused, and the file keeps what it held (the
    // declared length's worth used to be stored, and the file's old contents dropped).
    let put = format!(
        "PUT /dav/files/{account}/other.txt HTTP/1.1\r\nHost: mica\r\nAuthorization: {auth}\r\n\
         X-Expected-Entity-Length: 10\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\na\r\n0123456789\r\n5\r\nabcde\r\n0\r\n\r\n"
    );
    assert_eq!(raw_status(app, &put).await, 400);
    assert_eq!(get("other.txt").await, (200, "other".into()));

    // A copy onto a file that does not fit: refused, and the file it would replace stays.
    let used = c.usage().await.unwrap()["used_bytes"].as_i64().unwrap();
    app.store()
        .set_cloud_plan(account.parse().unwrap(), "free", Some(used))
        .await
        .unwrap();
    let r = dav("COPY", "keep.txt")
        .header("Destination", format!("{top}/other.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(code(r).await, (507, "quota_exceeded".into()));
    assert_eq!(get("other.txt").await, (200, "other".into()));
    assert_eq!(c.recycle_bin(Some("drive")).await.unwrap().len(), 2);
}

/// A file of several 4 MiB chunks, read back whole and by ranges that start inside a chunk,
/// cross a chunk's end, come from the end, and come several in one request: every byte is the
/// one written (the reader keeps one read open across dav-server's pieces and reopens it where
/// a range starts).
async fn a_large_file_is_read_whole_and_by_ranges(app: &TestApp) {
    let (account, _, password) = with_app_password(app, "ines@example.com").await;
    let auth = basic("ines@example.com", &password);
    let url = app.url(&format!("/dav/files/{account}/big.bin"));
    // 9 MiB + 7 bytes, no two 4 KiB blocks alike (so a piece put in the wrong place shows).
    let body: Vec<u8> = (0u32..(9 << 20) + 7)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ (i >> 12) as u8)
        .collect();
    let r = app
        .http
        .put(&url)
        .header("Authorization", &auth)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = app
        .http
        .get(&url)
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let whole = r.bytes().await.unwrap();
    assert_eq!(whole.len(), body.len());
    assert!(
        whole == body,
        "the file read whole differs from the one written"
    );
    let chunk = 4 << 20;
    for (range, from, to) in [
        (format!("bytes=100-{}", 100 + 300_000), 100, 300_101),
        (
            format!("bytes={}-{}", chunk - 1000, chunk + 1000),
            chunk - 1000,
            chunk + 1001,
        ),
        ("bytes=-5000".to_owned(), body.len() - 5000, body.len()),
        (
            format!("bytes={}-", 2 * chunk + 3),
            2 * chunk + 3,
            body.len(),
        ),
    ] {
        let r = app
            .http
            .get(&url)
            .header("Authorization", &auth)
            .header("Range", &range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        let got = r.bytes().await.unwrap();
        assert!(got == body[from..to], "{range}: {} bytes", got.len());
    }
    // Two ranges in one request, the second before the first: a multipart answer whose parts
    // are those bytes.
    let r = app
        .http
        .get(&url)
        .header("Authorization", &auth)
        .header("Range", format!("bytes={}-{},10-19", chunk + 5, chunk + 14))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    let kind = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(kind.starts_with("multipart/byteranges"), "{kind}");
    let got = r.bytes().await.unwrap();
    for (from, to) in [(chunk + 5, chunk + 15), (10, 20)] {
        assert!(
            got.windows(10).any(|w| w == &body[from..to]),
            "bytes {from}..{to} are not in the multipart answer"
        );
    }
}
