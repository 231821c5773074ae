//! The gallery's pages, in a large gallery against a small one in the same run: a page should
//! cost its own entries, whatever the gallery's size.
//! - the timeline's first page (100 entries, newest first);
//! - a page of an album of 10 photos spread across the whole gallery;
//! - a page of an album that holds every photo;
//! - the list of albums (this server only: an older one has none).
//!
//! Both galleries (two accounts of one server) hold photo records without files, a minute
//! apart; every tenth of the gallery one is in the album "Rare". The reference is the small
//! gallery (1,000 photos); the large one holds MICA_BENCH_PHOTOS (default 50,000). Each request
//! is timed from the client, alternating the two galleries, MICA_BENCH_ROUNDS times (default
//! 100); the figures are p50 / p99 and the ratio of the large gallery's p50 to the small one's.
//!
//! Then the same galleries as if written before albums were indexed: the time of the first
//! album request, which indexes the gallery from its bodies, and of the next.
//!
//! The server is the release `mica` binary as its own process on its embedded defaults (SQLite
//! and a local folder); MICA_BENCH_SERVER names another binary (an older build, for a before
//! and after on the same data).
//!
//! Run: `cargo bench -p mica --bench gallery`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

#[path = "common/mod.rs"]
mod common;

use common::env_n;
use serde_json::{json, Value};

const SMALL: usize = 1_000;
const IN_ALBUM: usize = 10;

/// Pushes `n` photo records, every `n / IN_ALBUM`-th in the album "Rare".
async fn fill(client: &mica_client::Client, n: usize) {
    let every = n / IN_ALBUM;
    for first in (0..n).step_by(500) {
        let writes: Vec<Value> = (first..(first + 500).min(n))
            .map(|i| {
                let albums = if i % every == every / 2 {
                    json!(["Rare", "All"])
                } else {
                    json!(["All"])
                };
                let (day, minute) = (i / 1440, i % 1440);
                let at = time::OffsetDateTime::UNIX_EPOCH
                    + time::Duration::days(19_000 + day as i64)
                    + time::Duration::minutes(minute as i64);
                let at = at
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap();
                json!({"id": format!("p{i:07}"), "op": "put", "body": {
                    "name": format!("IMG_{i:07}.jpg"), "mime_type": "image/jpeg", "size": 2_400_000,
                    "taken_at": at, "width": 4032, "height": 3024, "albums": albums}})
            })
            .collect();
        client
            .push("gallery", Value::Array(writes), None)
            .await
            .unwrap();
    }
}

async fn page(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    query: &str,
    expect: usize,
) -> Duration {
    let start = Instant::now();
    let r = http
        .get(format!("{base}/api/v1/gallery?limit=100{query}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let took = start.elapsed();
    assert_eq!(v["entries"].as_array().unwrap().len(), expect, "{query}");
    took
}

fn quantile(v: &mut [Duration], q: f64) -> f64 {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn main() {
    let large = env_n("MICA_BENCH_PHOTOS", 50_000).max(SMALL);
    let rounds = env_n("MICA_BENCH_ROUNDS", 100).max(2);
    let dir = std::env::temp_dir().join(format!("mica-bench-gallery-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let addr = format!("127.0.0.1:{}", common::free_port());
    let data = dir.join("data");
    let server = common::server_binary();
    let mut child = common::server(&addr, &data).spawn().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let base = format!("http://{addr}");
    rt.block_on(async {
        let http = reqwest::Client::new();
        common::wait_ready(&http, &base).await;
        let client = mica_client::Client::new(base.clone());
        let mut tokens = Vec::new();
        for (email, n) in [("small@example.com", SMALL), ("large@example.com", large)] {
            let t = common::sign_up(&client, &data, email).await;
            let start = Instant::now();
            fill(&client.with_token(&t.access_token), n).await;
            println!(
                "filled a gallery of {n} photos in {:.1} s",
                start.elapsed().as_secs_f64()
            );
            tokens.push(t.access_token);
        }
        println!("server: {server}");
        println!("| request | small gallery ({SMALL}) p50 / p99 | large gallery ({large}) p50 / p99 | p50 ratio |");
        println!("|---|---|---|---|");
        for (what, query, expect) in [
            ("timeline, first page of 100", "", 100),
            ("album of 10, one page", "&album=Rare", IN_ALBUM),
            ("album of all, first page of 100", "&album=All", 100),
        ] {
            // A first request of each, untimed (warms the caches and the connection).
            for t in &tokens {
                page(&http, &base, t, query, expect).await;
            }
            let (mut small, mut big) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                small.push(page(&http, &base, &tokens[0], query, expect).await);
                big.push(page(&http, &base, &tokens[1], query, expect).await);
            }
            let (s50, s99) = (quantile(&mut small, 0.5), quantile(&mut small, 0.99));
            let (b50, b99) = (quantile(&mut big, 0.5), quantile(&mut big, 0.99));
            println!(
                "| {what} | {s50:.2} / {s99:.2} ms | {b50:.2} / {b99:.2} ms | {:.2}× |",
                b50 / s50
            );
        }
        if std::env::var_os("MICA_BENCH_SERVER").is_some() {
            return;
        }
        // The list of albums (two: "All" and "Rare"), which counts each album's rows.
        let list = |t: &str| {
            let (http, base, t) = (&http, &base, t.to_owned());
            async move {
                let start = Instant::now();
                let r = http
                    .get(format!("{base}/api/v1/gallery/albums"))
                    .bearer_auth(&t)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let v: Value = r.json().await.unwrap();
                assert_eq!(v.as_array().unwrap().len(), 2);
                start.elapsed()
            }
        };
        let (mut small, mut big) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            small.push(list(&tokens[0]).await);
            big.push(list(&tokens[1]).await);
        }
        let (s50, s99) = (quantile(&mut small, 0.5), quantile(&mut small, 0.99));
        let (b50, b99) = (quantile(&mut big, 0.5), quantile(&mut big, 0.99));
        println!(
            "| list of albums | {s50:.2} / {s99:.2} ms | {b50:.2} / {b99:.2} ms | {:.2}× |",
            b50 / s50
        );
        // A gallery written before albums were indexed (as after migration 19): the first
        // album asked for reads and indexes every photo once; the next is a range again.
        sqlx::any::install_default_drivers();
        let db = sqlx::AnyPool::connect(&format!("sqlite:{}", data.join("mica.db").display()))
            .await
            .unwrap();
        sqlx::raw_sql(
            "DELETE FROM item_albums; INSERT INTO album_backfill (account_id, collection_id) \
             SELECT account_id, id FROM collections WHERE kind = 'gallery'",
        )
        .execute(&db)
        .await
        .unwrap();
        db.close().await;
        for (i, t) in tokens.iter().enumerate() {
            let n = if i == 0 { SMALL } else { large };
            let first = page(&http, &base, t, "&album=Rare", IN_ALBUM).await;
            let next = page(&http, &base, t, "&album=Rare", IN_ALBUM).await;
            println!(
                "gallery of {n} written before albums were indexed: first album page (indexes \
                 it) {:.1} ms, the next {:.2} ms",
                first.as_secs_f64() * 1e3,
                next.as_secs_f64() * 1e3
            );
        }
    });
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
