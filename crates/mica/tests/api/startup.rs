//! Start-up on the embedded defaults, configuration errors, and the API reference.

use std::sync::Arc;

use mica::{Config, Server};
use mica_core::SystemClock;
use secrecy::SecretString;

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("mica-startup-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[tokio::test]
async fn embedded_defaults_create_the_data_folder_and_keep_the_key() {
    let dir = temp_dir("defaults");
    let mut cfg = Config::default();
    cfg.data_dir = dir.clone();
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    let server = Server::start(&cfg, Arc::new(SystemClock)).await.unwrap();
    for f in ["mica.db", "secret.key", "blobs"] {
        assert!(dir.join(f).exists(), "{f} created");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("secret.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is readable by its owner only");
    }
    let key = std::fs::read_to_string(dir.join("secret.key")).unwrap();
    // Without SMTP, messages land in the outbox file.
    let c = mica_client::Client::new(format!("http://{}", server.addr));
    c.signup_email("zoe@example.com", crate::support::PASSWORD)
        .await
        .unwrap();
    let outbox = dir.join("outbox.jsonl");
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&outbox).unwrap_or_default();
        if !text.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["channel"], "email");
    assert_eq!(line["to"], "zoe@example.com");
    assert!(crate::support::six_digits(line["subject"].as_str().unwrap()).is_some());
    server.stop().await.unwrap();

    // A restart keeps the same key and data.
    let server = Server::start(&cfg, Arc::new(SystemClock)).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("secret.key")).unwrap(),
        key
    );
    server.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server whose master key cannot open the data already stored refuses to start: a lost key
/// file replaced by a new one, or another server's key.
#[tokio::test]
async fn a_key_that_cannot_open_the_data_refuses_to_start() {
    let dir = temp_dir("wrongkey");
    let mut cfg = Config::default();
    cfg.data_dir = dir.clone();
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    let server = Server::start(&cfg, Arc::new(SystemClock)).await.unwrap();
    let c = mica_client::Client::new(format!("http://{}", server.addr));
    let started = c
        .signup_email("kim@example.com", crate::support::PASSWORD)
        .await
        .unwrap();
    let outbox = dir.join("outbox.jsonl");
    let mut code = None;
    for _ in 0..100 {
        let text = std::fs::read_to_string(&outbox).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            code = crate::support::six_digits(v["subject"].as_str().unwrap());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    c.signup_verify(&started.signup_id, &code.unwrap(), None)
        .await
        .unwrap();
    server.stop().await.unwrap();

    // Another valid key.
    cfg.secret_key = Some(SecretString::from("ab".repeat(32)));
    let err = Server::start(&cfg, Arc::new(SystemClock))
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("does not open"), "{err:#}");
    // The key file lost: a new one is made, and the server still refuses.
    cfg.secret_key = None;
    std::fs::remove_file(dir.join("secret.key")).unwrap();
    let err = Server::start(&cfg, Arc::new(SystemClock))
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("does not open"), "{err:#}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_malformed_key_refuses_to_start() {
    let dir = temp_dir("badkey");
    let mut cfg = Config::default();
    cfg.data_dir = dir.clone();
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.secret_key = Some(SecretString::from("not-a-key"));
    let err = Server::start(&cfg, Arc::new(SystemClock))
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("malformed"), "{err:#}");

    cfg.secret_key = None;
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("secret.key"), "0123").unwrap();
    let err = Server::start(&cfg, Arc::new(SystemClock))
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("malformed"), "{err:#}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn configuration_comes_from_file_and_environment_and_rejects_typos() {
    let dir = temp_dir("config");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("mica.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:9999\"\n[identity]\ncode_ttl_secs = 300\n",
    )
    .unwrap();
    figment::Jail::expect_with(|jail| {
        jail.set_env("MICA_DATA_DIR", "/srv/mica");
        jail.set_env("MICA_IDENTITY__CODE_MAX_ATTEMPTS", "3");
        // Variables of the test suite and the log filter are not configuration keys.
        jail.set_env("MICA_TEST_SOMETHING", "x");
        jail.set_env("MICA_LOG", "debug");
        let cfg = Config::load(Some(&file)).map_err(|e| e.to_string())?;
        assert_eq!(cfg.listen.port(), 9999);
        assert_eq!(cfg.data_dir, std::path::PathBuf::from("/srv/mica"));
        assert_eq!(cfg.identity.code_ttl_secs, 300);
        assert_eq!(cfg.identity.code_max_attempts, 3);
        assert_eq!(cfg.database_url(), "sqlite:/srv/mica/mica.db");
        jail.set_env("MICA_DATABSE_URL", "postgres://typo");
        let err = Config::load(None).expect_err("typo refused");
        assert!(err.to_string().contains("databse_url"), "{err}");
        jail.clear_env();
        // Values that parse but would break the server are refused, naming the key.
        for (var, key) in [
            ("MICA_DEVICES__RESEND_AFTER_MS", "devices.resend_after_ms"),
            (
                "MICA_IDENTITY__ACCESS_TOKEN_TTL_SECS",
                "identity.access_token_ttl_secs",
            ),
            ("MICA_CLIENT_TIMEOUT_SECS", "client_timeout_secs"),
        ] {
            jail.set_env(var, "0");
            let err = Config::load(None).expect_err("zero refused");
            assert!(err.to_string().contains(key), "{err}");
            jail.clear_env();
        }
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_api_reference_and_openapi_document_are_served() {
    let app = crate::support::TestApp::start(crate::support::Backend::Sqlite)
        .await
        .unwrap();
    let doc: serde_json::Value = app
        .http
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for p in [
        "/api/v1/signup",
        "/api/v1/signup/verify",
        "/api/v1/sessions",
        "/api/v1/sessions/refresh",
        "/api/v1/password/forgot",
        "/api/v1/me",
        "/api/v1/me/passkeys",
        "/api/v1/collections/{collection}/changes",
        "/api/v1/collections/{collection}/batch",
        "/api/v1/recycle-bin",
        "/api/v1/device/channel",
    ] {
        assert!(doc["paths"][p].is_object(), "{p} documented");
    }
    assert!(doc["components"]["schemas"]["TokenResponse"].is_object());
    // Every JSON category's schema is published.
    for s in [
        "Note",
        "Message",
        "Call",
        "Bookmark",
        "HistoryEntry",
        "WifiNetwork",
        "AppSettings",
        "GalleryItem",
        "Recording",
    ] {
        assert!(doc["components"]["schemas"][s].is_object(), "schema {s}");
    }
    let page = app.http.get(app.url("/api/docs/")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(
        page.text().await.unwrap().contains("swagger"),
        "interactive reference page"
    );
    app.stop().await;
}

/// README's first command, as a new user runs it: the real binary, no configuration (only the
/// port, since 8080 may be taken here), in an empty folder; then SIGTERM stops it cleanly.
#[test]
fn the_binary_serves_on_embedded_defaults_and_stops_on_sigterm() {
    use std::io::BufRead;
    let dir = temp_dir("binary");
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mica"))
        .arg("serve")
        .current_dir(&dir)
        .env("MICA_LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let url = loop {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the server prints its URL");
        if let Some(rest) = line.strip_prefix("Mica is running at ") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let health: serde_json::Value = rt.block_on(async {
        reqwest::get(format!("{url}/healthz"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(health["status"], "ok");
    for f in ["mica.db", "secret.key", "blobs"] {
        assert!(dir.join("mica-data").join(f).exists(), "./mica-data/{f}");
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "graceful exit on SIGTERM: {exit:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
