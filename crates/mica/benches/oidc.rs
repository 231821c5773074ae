//! The OpenID provider's token endpoint, against what it is made of, measured in the same run:
//! - an app's refresh at `POST /oauth/token` (`grant_type=refresh_token`: the refresh token
//!   rotated in the database, a new access token, and a new ID token signed RS256), against
//! - Mica's own app refreshing its session at `POST /api/v1/sessions/refresh` (the same rotation
//!   and access token, no ID token), and
//! - one RS256 signature with a 2048-bit key, in this process (the physical cost an ID token
//!   adds).
//!
//! Requests go one at a time on one keep-alive connection (the latency an app's server sees).
//! The server is the release `mica` binary as its own process on its embedded defaults
//! (SQLite + a local folder); its per-address refresh limit is lifted for the run.
//!
//! Run: `cargo bench -p mica --bench oidc`. MICA_BENCH_REQUESTS sets the requests per round
//! (default 1000), MICA_BENCH_ROUNDS the rounds (default 3).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

#[path = "common/mod.rs"]
mod common;

use common::{env_n, ms, percentile, PASSWORD};
use serde_json::Value;

fn main() {
    common::block_on(run());
}

fn field(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\" value=\""))? + name.len() + 15;
    Some(html[at..].split('"').next()?.replace("&#38;", "&"))
}

async fn run() {
    let requests = env_n("MICA_BENCH_REQUESTS", 1000);
    let rounds = env_n("MICA_BENCH_ROUNDS", 3);
    let dir = std::env::temp_dir().join(format!("mica-bench-oidc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let addr = format!("127.0.0.1:{}", common::free_port());
    let base = format!("http://{addr}");
    let data = dir.join("server");
    let mut server = common::server(&addr, &data)
        .env("MICA_IDENTITY__REFRESH_PER_IP__BURST", "100000000")
        .env("MICA_IDENTITY__REFRESH_PER_IP__PERIOD", "1")
        .spawn()
        .unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    common::wait_ready(&http, &base).await;
    let client = mica_client::Client::new(&base);
    let tokens = common::sign_up(&client, &data, "bench@example.com").await;

    // The app, registered as an operator does.
    let callback = "https://forum.example.com/cb";
    let out = std::process::Command::new(common::server_binary())
        .args([
            "admin",
            "oidc",
            "add-client",
            "--name",
            "Forum",
            "--redirect-uri",
            callback,
        ])
        .env("MICA_DATA_DIR", &data)
        .env("MICA_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let value = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("{text}"))
    };
    let (id, secret) = (value("client_id:"), value("client_secret:"));

    // A person signs in to it once (portal sign-in, consent), with offline access.
    let r = http
        .post(format!("{base}/web/sign-in"))
        .form(&[("login", "bench@example.com"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let q = format!(
        "response_type=code&client_id={id}&redirect_uri={}&scope=openid%20email%20offline_access",
        callback.replace(':', "%3A").replace('/', "%2F")
    );
    let html = http
        .get(format!("{base}/web/authorize?{q}"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let form = html.split("action=\"/web/authorize\"").nth(1).unwrap();
    let mut fields = vec![("decision".to_owned(), "allow".to_owned())];
    for name in [
        "csrf",
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
    ] {
        fields.push((name.to_owned(), field(form, name).unwrap()));
    }
    let r = http
        .post(format!("{base}/web/authorize"))
        .header("cookie", &cookie)
        .form(&fields)
        .send()
        .await
        .unwrap();
    let back = r.headers()["location"].to_str().unwrap().to_owned();
    let code = back
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let t: Value = http
        .post(format!("{base}/oauth/token"))
        .basic_auth(&id, Some(&secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", callback),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut app_refresh = t["refresh_token"].as_str().unwrap().to_owned();
    let mut own_refresh = tokens.refresh_token.clone();

    // The reference: RS256 signatures of an ID token's size, in this process.
    let key = crypto_glue::rsa::new_key(2048).unwrap();
    let der = {
        use crypto_glue::traits::Pkcs8EncodePrivateKey;
        key.to_pkcs8_der().unwrap()
    };
    let ring_key = ring::signature::RsaKeyPair::from_pkcs8(der.as_bytes()).unwrap();
    let signer = crypto_glue::rsa::RS256SigningKey::new(key);
    let message = t["id_token"]
        .as_str()
        .unwrap()
        .rsplit_once('.')
        .unwrap()
        .0
        .to_owned();

    println!("oidc: {requests} requests per round, {rounds} rounds");
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let mut oidc = Vec::with_capacity(requests);
        for _ in 0..requests {
            let t = Instant::now();
            let r = http
                .post(format!("{base}/oauth/token"))
                .basic_auth(&id, Some(&secret))
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", app_refresh.as_str()),
                ])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let v: Value = r.json().await.unwrap();
            assert!(v["id_token"].is_string());
            app_refresh = v["refresh_token"].as_str().unwrap().to_owned();
            oidc.push(t.elapsed());
        }
        oidc.sort();
        let mut own = Vec::with_capacity(requests);
        for _ in 0..requests {
            let t = Instant::now();
            own_refresh = client.refresh(&own_refresh).await.unwrap().refresh_token;
            own.push(t.elapsed());
        }
        own.sort();
        // What the server signs with (ring), and the pure-Rust `rsa` it makes keys with.
        let sign = {
            let rng = ring::rand::SystemRandom::new();
            let mut sig = vec![0u8; ring_key.public().modulus_len()];
            let mut out = Vec::with_capacity(requests);
            for _ in 0..requests {
                let t = Instant::now();
                ring_key
                    .sign(
                        &ring::signature::RSA_PKCS1_SHA256,
                        &rng,
                        message.as_bytes(),
                        &mut sig,
                    )
                    .unwrap();
                out.push(t.elapsed());
            }
            out.sort();
            out
        };
        let rsa_sign = {
            use crypto_glue::traits::RandomizedSigner;
            let mut rng = crypto_glue::rsa::rand::rng();
            let mut out = Vec::with_capacity(100);
            for _ in 0..100 {
                let t = Instant::now();
                let _ = signer
                    .try_sign_with_rng(&mut rng, message.as_bytes())
                    .unwrap();
                out.push(t.elapsed());
            }
            out.sort();
            out
        };
        let (o50, a50, s50) = (
            percentile(&oidc, 0.5),
            percentile(&own, 0.5),
            percentile(&sign, 0.5),
        );
        let ratio = ms(o50) / ms(a50);
        ratios.push(ratio);
        println!(
            "round {round}: app refresh at /oauth/token p50 {:.3} ms p99 {:.3} ms | own refresh p50 {:.3} ms p99 {:.3} ms | RS256 sign p50 {:.3} ms (ring; rsa crate {:.3} ms) | token/own {ratio:.2}, token − own − sign {:.3} ms",
            ms(o50),
            ms(percentile(&oidc, 0.99)),
            ms(a50),
            ms(percentile(&own, 0.99)),
            ms(s50),
            ms(percentile(&rsa_sign, 0.5)),
            ms(o50) - ms(a50) - ms(s50),
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!("median token/own ratio: {:.2}", ratios[ratios.len() / 2]);
    server.kill().ok();
    server.wait().ok();
    std::fs::remove_dir_all(&dir).ok();
}
