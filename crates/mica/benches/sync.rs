//! Sync throughput and live-notification delay, each against a reference measured in the same
//! run on the same machine:
//! - push N contacts (vCard 4.0) in batches of 500 from one device, then pull them all on a
//!   second device (pages of 1,000), on SQLite — items/s each way, compared with a raw SQLite
//!   insert of the same rows (rusqlite, same columns and index, transactions of 500, no HTTP, no
//!   parsing, no encryption) and with Radicale (`pip install radicale`) receiving the same contacts over
//!   CardDAV (one PUT per contact, 8 connections) — and Mica receiving the same contacts the
//!   same way over its own CardDAV, into a new address book, with an app password;
//! - the delay from a push to each of 1,000 connected devices' `changed` event (p50, p99).
//!
//! Run: `cargo bench -p mica --bench sync`. MICA_BENCH_CONTACTS sets N (default 100,000),
//! MICA_BENCH_RADICALE how many go to Radicale and to Mica's CardDAV (default 2,000: its rate falls as the address
//! book grows — tens of milliseconds a contact in the thousands — so it is reported with its count), MICA_BENCH_DEVICES the connected devices
//! (default 1,000). Radicale is skipped, with a note, when it is not installed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use mica::{Config, Server};
use mica_core::SystemClock;
use mica_identity::Rate;
use serde_json::{json, Value};

#[path = "common/mod.rs"]
mod common;

use common::env_n;

fn vcard(i: usize) -> String {
    format!(
        "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:urn:uuid:bench-{i:08}\r\nFN:Person Number {i}\r\nN:Number;Person;;;\r\n\
         TEL;TYPE=cell:+35191{:07}\r\nEMAIL;TYPE=home:person{i}@example.com\r\nORG:Example Lda\r\n\
         ADR;TYPE=home:;;Rua das Flores {};Lisboa;;1200-195;Portugal\r\nEND:VCARD\r\n",
        i % 10_000_000,
        i % 300
    )
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// The raw SQLite reference: the same rows into a table of the same shape, through rusqlite
/// (SQLite's C API with a cached prepared statement, no async driver), in transactions of 500,
/// with the server's settings (WAL, synchronous = NORMAL) — nothing else.
fn raw_sqlite_insert(dir: &std::path::Path, cards: &[String]) -> f64 {
    let conn = rusqlite::Connection::open(dir.join("raw.db")).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
         CREATE TABLE items (account_id BIGINT NOT NULL, collection_id TEXT NOT NULL, id TEXT NOT NULL, \
         seq BIGINT NOT NULL, modified_at BIGINT NOT NULL, deleted_at BIGINT, size BIGINT NOT NULL, \
         body BLOB, summary BLOB, uid TEXT, starts_at BIGINT, ends_at BIGINT, \
         PRIMARY KEY (account_id, collection_id, id)); \
         CREATE INDEX items_feed ON items (account_id, collection_id, seq);",
    )
    .unwrap();
    let mut conn = conn;
    let start = Instant::now();
    for (b, chunk) in cards.chunks(500).enumerate() {
        let tx = conn.transaction().unwrap();
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO items (account_id, collection_id, id, seq, modified_at, deleted_at, size, body, summary, uid, starts_at, ends_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6, ?7, ?8, ?9, NULL, NULL)",
                )
                .unwrap();
            for (i, card) in chunk.iter().enumerate() {
                let n = (b * 500 + i) as i64;
                stmt.execute(rusqlite::params![
                    1_i64,
                    "contacts",
                    format!("c{n:08}"),
                    n + 1,
                    1_i64,
                    card.len() as i64,
                    card.as_bytes(),
                    format!("Person Number {n}").into_bytes(),
                    format!("urn:uuid:bench-{n:08}"),
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    cards.len() as f64 / start.elapsed().as_secs_f64()
}

/// A second reference: the same rows through sqlx's SQLite driver (the server's driver), one
/// prepared statement per row in transactions of 500 — what a naive server loop would reach.
async fn sqlx_sqlite_insert(dir: &std::path::Path, cards: &[String]) -> f64 {
    use sqlx::ConnectOptions;
    use std::str::FromStr;
    let opts = sqlx::sqlite::SqliteConnectOptions::from_str(&format!(
        "sqlite:{}?mode=rwc",
        dir.join("sqlx.db").display()
    ))
    .unwrap()
    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
    .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
    let mut conn = opts.connect().await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE items (account_id BIGINT NOT NULL, collection_id TEXT NOT NULL, id TEXT NOT NULL, \
         seq BIGINT NOT NULL, modified_at BIGINT NOT NULL, deleted_at BIGINT, size BIGINT NOT NULL, \
         body BLOB, summary BLOB, uid TEXT, starts_at BIGINT, ends_at BIGINT, \
         PRIMARY KEY (account_id, collection_id, id)); \
         CREATE INDEX items_feed ON items (account_id, collection_id, seq);",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let start = Instant::now();
    for (b, chunk) in cards.chunks(500).enumerate() {
        let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
        for (i, card) in chunk.iter().enumerate() {
            let n = (b * 500 + i) as i64;
            sqlx::query(
                "INSERT INTO items (account_id, collection_id, id, seq, modified_at, deleted_at, size, body, summary, uid, starts_at, ends_at) \
                 VALUES ($1, $2, $3, $4, $5, NULL, $6, $7, $8, $9, NULL, NULL)",
            )
            .bind(1_i64)
            .bind("contacts")
            .bind(format!("c{n:08}"))
            .bind(n + 1)
            .bind(1_i64)
            .bind(card.len() as i64)
            .bind(card.as_bytes())
            .bind(format!("Person Number {n}").into_bytes())
            .bind(format!("urn:uuid:bench-{n:08}"))
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
    }
    cards.len() as f64 / start.elapsed().as_secs_f64()
}

/// Radicale receiving the contacts over CardDAV; `None` when it is not installed.
async fn radicale_rate(dir: &std::path::Path, cards: &[String]) -> Option<f64> {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = std::process::Command::new("python3")
        .args([
            "-m",
            "radicale",
            "--server-hosts",
            &format!("127.0.0.1:{port}"),
            "--storage-filesystem-folder",
            &dir.join("radicale").display().to_string(),
            "--auth-type",
            "none",
            "--rights-type",
            "authenticated",
            "--logging-level",
            "warning",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..100 {
        if http
            .request(
                reqwest::Method::from_bytes(b"MKCOL").unwrap(),
                format!("{base}/bench/"),
            )
            .send()
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !up {
        let _ = child.kill();
        return None;
    }
    let mkcol = http
        .request(
            reqwest::Method::from_bytes(b"MKCOL").unwrap(),
            format!("{base}/bench/contacts/"),
        )
        .header("content-type", "application/xml")
        .body(
            r#"<?xml version="1.0"?><mkcol xmlns="DAV:" xmlns:CR="urn:ietf:params:xml:ns:carddav"><set><prop><resourcetype><collection/><CR:addressbook/></resourcetype></prop></set></mkcol>"#,
        )
        .send()
        .await
        .unwrap();
    assert!(mkcol.status().is_success(), "{}", mkcol.status());
    let rate = put_rate(&http, &format!("{base}/bench/contacts/"), None, cards).await;
    let _ = child.kill();
    let _ = child.wait();
    Some(rate)
}

/// Contacts per second written to a CardDAV address book at `book`, one `PUT` each, over 8
/// connections (what a client restoring an address book does).
async fn put_rate(
    http: &reqwest::Client,
    book: &str,
    authorization: Option<&str>,
    cards: &[String],
) -> f64 {
    let cards = Arc::new(cards.to_vec());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (http, book, cards, next) =
                (http.clone(), book.to_owned(), cards.clone(), next.clone());
            let authorization = authorization.map(str::to_owned);
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(card) = cards.get(i) else { break };
                    let mut r = http
                        .put(format!("{book}c{i:08}.vcf"))
                        .header("content-type", "text/vcard")
                        .header("if-none-match", "*");
                    if let Some(a) = &authorization {
                        r = r.header("authorization", a);
                    }
                    let r = r.body(card.clone()).send().await.unwrap();
                    assert!(r.status().is_success(), "{book} PUT: {}", r.status());
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    cards.len() as f64 / start.elapsed().as_secs_f64()
}

/// Mica receiving the same contacts over CardDAV, into a new address book, with an app
/// password (Basic), as Radicale receives them.
async fn mica_carddav_rate(
    base: &str,
    tokens: &mica_client::Tokens,
    data_dir: &std::path::Path,
    cards: &[String],
) -> f64 {
    let authorization =
        common::app_password(base, &tokens.access_token, data_dir, "bench@example.com").await;
    let http = reqwest::Client::new();
    let book = format!("{base}/dav/addressbooks/{}/davbench/", tokens.account_id);
    let made = http
        .request(reqwest::Method::from_bytes(b"MKCOL").unwrap(), &book)
        .header("authorization", &authorization)
        .send()
        .await
        .unwrap();
    assert_eq!(made.status().as_u16(), 201, "MKCOL {book}");
    put_rate(&http, &book, Some(&authorization), cards).await
}

async fn sign_up(client: &mica_client::Client, dir: &std::path::Path) -> mica_client::Tokens {
    common::sign_up(client, dir, "bench@example.com").await
}

/// Delay from a push to each connected device's `changed` event, over `rounds` pushes.
async fn notification_delays(
    base: &str,
    token: &str,
    pusher: &mica_client::Client,
    devices: usize,
    rounds: usize,
) -> Vec<Duration> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for _ in 0..devices {
        let (http, tx, ready_tx) = (http.clone(), tx.clone(), ready_tx.clone());
        let url = format!("{base}/api/v1/device/channel");
        let token = token.to_owned();
        tokio::spawn(async move {
            let mut resp = http.get(url).bearer_auth(token).send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 200);
            let mut buf = String::new();
            while let Ok(Some(chunk)) = resp.chunk().await {
                let now = Instant::now();
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    if block.contains("event: ready") {
                        let _ = ready_tx.send(());
                    } else if block.contains("event: changed") {
                        let _ = tx.send(now);
                    }
                }
            }
        });
    }
    for _ in 0..devices {
        ready_rx.recv().await.unwrap();
    }
    let mut delays = Vec::with_capacity(devices * rounds);
    for r in 0..rounds {
        let start = Instant::now();
        pusher
            .push(
                "contacts",
                json!([{"id": format!("live{r}"), "op": "put", "body": vcard(1_000_000 + r)}]),
                None,
            )
            .await
            .unwrap();
        for _ in 0..devices {
            let at = rx.recv().await.unwrap();
            delays.push(at.saturating_duration_since(start));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    delays.sort();
    delays
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = env_n("MICA_BENCH_CONTACTS", 100_000);
    let n_radicale = env_n("MICA_BENCH_RADICALE", 2_000).min(n);
    let devices = env_n("MICA_BENCH_DEVICES", 1_000);
    let dir = std::env::temp_dir().join(format!("mica-bench-sync-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cores = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(2);
    println!("# Mica sync benchmark — {cores} cores, {n} contacts, {devices} devices");

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .unwrap();
    let mut cfg = Config::default();
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.data_dir = dir.join("mica");
    cfg.cloud.quota_bytes = 1 << 40;
    let huge = Rate::new(1_000_000_000, Duration::from_secs(1));
    cfg.identity.signin_per_ip = huge;
    cfg.identity.refresh_per_ip = huge;
    let server = server_rt
        .block_on(Server::start(&cfg, Arc::new(SystemClock)))
        .unwrap();
    let base = format!("http://{}", server.addr);
    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let cards: Vec<String> = (0..n).map(vcard).collect();

    load_rt.block_on(async {
        let client = mica_client::Client::new(base.clone());
        let a = sign_up(&client, &cfg.data_dir).await;
        let b = client
            .sign_in("bench@example.com", common::PASSWORD, None)
            .await
            .unwrap();
        let da = client.with_token(&a.access_token);
        let db = client.with_token(&b.access_token);

        // Push from device A.
        let start = Instant::now();
        for (k, chunk) in cards.chunks(500).enumerate() {
            let writes: Vec<Value> = chunk
                .iter()
                .enumerate()
                .map(|(i, c)| json!({"id": format!("c{:08}", k * 500 + i), "op": "put", "body": c}))
                .collect();
            let r = da
                .push("contacts", Value::Array(writes), Some(&format!("bench-{k}")))
                .await
                .unwrap();
            assert_eq!(r["results"].as_array().unwrap().len(), chunk.len());
        }
        let push = n as f64 / start.elapsed().as_secs_f64();

        // Pull everything on device B.
        let start = Instant::now();
        let mut token: Option<String> = None;
        let mut pulled = 0;
        loop {
            let page = db.pull("contacts", token.as_deref(), Some(1000)).await.unwrap();
            pulled += page.changes.len();
            token = Some(page.token);
            if !page.more {
                break;
            }
        }
        let pull = pulled as f64 / start.elapsed().as_secs_f64();
        assert_eq!(pulled, n);

        let raw = raw_sqlite_insert(&dir, &cards);
        let via_sqlx = sqlx_sqlite_insert(&dir, &cards).await;
        let radicale = if n_radicale == 0 {
            None
        } else {
            radicale_rate(&dir, &cards[..n_radicale]).await
        };
        let carddav = if n_radicale == 0 {
            None
        } else {
            Some(mica_carddav_rate(&base, &a, &cfg.data_dir, &cards[..n_radicale]).await)
        };

        println!("raw SQLite insert (rusqlite, same rows, tx of 500): {raw:.0} items/s");
        println!("SQLite insert through sqlx (the server's driver, row by row): {via_sqlx:.0} items/s");
        println!(
            "push (batches of 500, vCard validated, sealed, change feed, usage): {push:.0} items/s = {:.1}% of raw insert, {:.1}% of sqlx insert",
            push / raw * 100.0,
            push / via_sqlx * 100.0
        );
        println!(
            "pull (pages of 1,000, opened, as JSON): {pull:.0} items/s = {:.1}% of raw insert, {:.1}% of sqlx insert",
            pull / raw * 100.0,
            pull / via_sqlx * 100.0
        );
        match radicale {
            Some(r) => println!(
                "Radicale CardDAV PUT ({n_radicale} contacts, 8 connections): {r:.0} items/s; Mica push is {:.1}× Radicale",
                push / r
            ),
            None => println!("Radicale: skipped (MICA_BENCH_RADICALE=0, or not installed: pip install radicale)"),
        }
        if let Some(m) = carddav {
            println!(
                "Mica CardDAV PUT ({n_radicale} contacts, 8 connections, app password): {m:.0} items/s{}",
                radicale.map_or(String::new(), |r| format!("; {:.1}× Radicale", m / r))
            );
        }

        let delays = notification_delays(&base, &b.access_token, &da, devices, 20).await;
        println!(
            "push → notification, {devices} connected devices × 20 pushes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            pct(&delays, 0.5).as_secs_f64() * 1e3,
            pct(&delays, 0.99).as_secs_f64() * 1e3,
            pct(&delays, 1.0).as_secs_f64() * 1e3,
        );
    });
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
