//! The web portal's device page — the page someone whose phone is lost keeps open — against
//! the API calls an app makes to draw the same screen, measured in the same run:
//! - `GET /web/devices/{id}` with the browser's session cookie (the session checked in the
//!   database, the anti-forgery token made, the HTML rendered), against
//! - `GET /api/v1/devices/{id}`, `…/commands` and `…/locations` with an access token (checked
//!   without the database), three requests on one connection.
//!
//! The device has reported 10 places and been sent 10 commands. The server is the release
//! `mica` binary as its own process on its embedded defaults (SQLite + a local folder).
//!
//! Run: `cargo bench -p mica --bench web`. MICA_BENCH_REQUESTS sets the requests per round
//! (default 2000), MICA_BENCH_ROUNDS the rounds (default 3).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

#[path = "common/mod.rs"]
mod common;

use common::{env_n, imei, ms, percentile, PASSWORD};
use serde_json::{json, Value};

fn main() {
    common::block_on(run());
}

async fn run() {
    let requests = env_n("MICA_BENCH_REQUESTS", 2000);
    let rounds = env_n("MICA_BENCH_ROUNDS", 3);
    let dir = std::env::temp_dir().join(format!("mica-bench-web-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let addr = format!("127.0.0.1:{}", common::free_port());
    let base = format!("http://{addr}");
    let data = dir.join("server");
    let mut server = common::server(&addr, &data).spawn().unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    common::wait_ready(&http, &base).await;
    let client = mica_client::Client::new(&base);
    let tokens = common::sign_up(&client, &data, "bench@example.com").await;
    let owner = client.with_token(&tokens.access_token);

    // A linked phone with 10 places and 10 commands.
    let v: Value = owner
        .raw(
            reqwest::Method::POST,
            "/api/v1/devices",
            Some(json!({
                "name": "phone", "model": "Bench", "os_version": "1", "app_version": "1",
                "hardware": { "imeis": [imei(1)], "serial": "W1" }, "find_device": true,
            })),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = v["device"]["id"].as_str().unwrap().to_owned();
    let credential = v["credential"].as_str().unwrap().to_owned();
    let now = time::OffsetDateTime::now_utc();
    let places: Vec<Value> = (0..10)
        .map(|i| {
            let at = (now - time::Duration::minutes(10 - i))
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap();
            json!({"lat": 48.85 + i as f64 * 0.001, "lon": 2.29, "accuracy": 10.0,
                "source": "gps", "battery": 80, "at": at})
        })
        .collect();
    let r = http
        .post(format!("{base}/api/v1/device/locations"))
        .bearer_auth(&credential)
        .json(&json!({ "locations": places }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    for _ in 0..10 {
        owner
            .raw(
                reqwest::Method::POST,
                &format!("/api/v1/devices/{id}/commands"),
                Some(json!({"kind": "locate"})),
            )
            .await
            .unwrap();
    }

    // The browser's session.
    let r = http
        .post(format!("{base}/web/sign-in"))
        .form(&[("login", "bench@example.com"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page_url = format!("{base}/web/devices/{id}");
    let api = [
        format!("{base}/api/v1/devices/{id}"),
        format!("{base}/api/v1/devices/{id}/commands"),
        format!("{base}/api/v1/devices/{id}/locations"),
    ];
    let html = http
        .get(&page_url)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("48.85900, 2.29000"), "{html}");

    println!("web: the device page against its three API calls, {requests} each, {rounds} rounds");
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let mut page_times = Vec::with_capacity(requests);
        let mut api_times = Vec::with_capacity(requests);
        for _ in 0..requests {
            let start = Instant::now();
            let r = http
                .get(&page_url)
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
            page_times.push(start.elapsed());

            let start = Instant::now();
            for url in &api {
                let r = http
                    .get(url)
                    .bearer_auth(&tokens.access_token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
            }
            api_times.push(start.elapsed());
        }
        page_times.sort();
        api_times.sort();
        let total = |v: &[Duration]| v.iter().sum::<Duration>();
        let ratio = total(&page_times).as_secs_f64() / total(&api_times).as_secs_f64();
        println!(
            "round {round}: page p50 {:.2} ms p99 {:.2} ms ({:.0}/s); API ×3 p50 {:.2} ms p99 {:.2} ms → page/API {:.2}",
            ms(percentile(&page_times, 0.5)),
            ms(percentile(&page_times, 0.99)),
            requests as f64 / total(&page_times).as_secs_f64(),
            ms(percentile(&api_times, 0.5)),
            ms(percentile(&api_times, 0.99)),
            ratio
        );
        ratios.push(ratio);
    }
    ratios.sort_by(f64::total_cmp);
    println!("median page/API: {:.2}", ratios[ratios.len() / 2]);
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
