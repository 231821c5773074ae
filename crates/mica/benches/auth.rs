//! Sign-in and authenticated-request throughput, each against its physical reference measured in
//! the same run on the same machine:
//! - sign-ins per second vs the raw argon2id rate (all cores hashing, same parameters);
//! - `GET /api/v1/me` requests per second (and latency) vs a bare axum route.
//!
//! Run: `cargo bench -p mica --bench auth` (MICA_BENCH_SECS sets each phase's length, default 10).
//! The server runs in this process on its own runtime; the load generator (a keep-alive HTTP/1.1
//! client per connection, like wrk) on another.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::field_reassign_with_default
)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use mica::{Config, Server};
use mica_core::SystemClock;
use mica_identity::Rate;

#[path = "common/mod.rs"]
mod common;

use common::PASSWORD;

fn secs() -> Duration {
    Duration::from_secs(
        std::env::var("MICA_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    )
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// argon2id hashes per second with every core busy, OWASP parameters (what a sign-in verifies).
fn raw_argon2_rate(d: Duration) -> f64 {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..cores())
        .map(|_| {
            let count = count.clone();
            let params = params.clone();
            std::thread::spawn(move || {
                let a = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
                while start.elapsed() < d {
                    let salt = SaltString::generate(&mut OsRng);
                    std::hint::black_box(a.hash_password(PASSWORD.as_bytes(), &salt).unwrap());
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

struct Stats {
    ok: u64,
    errors: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Stats {
    fn empty() -> Self {
        Stats {
            ok: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latencies: Vec::new(),
        }
    }
    fn add(&mut self, o: Stats) {
        self.ok += o.ok;
        self.errors += o.errors;
        self.elapsed += o.elapsed;
        self.latencies.extend(o.latencies);
        self.latencies.sort();
    }
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }
}

/// Drives `conns` keep-alive connections for `d`, each sending `make()` requests back to back.
async fn load(
    addr: SocketAddr,
    conns: usize,
    d: Duration,
    expect: u16,
    make: Arc<dyn Fn() -> Request<Full<Bytes>> + Send + Sync>,
) -> Stats {
    let start = Instant::now();
    let deadline = start + d;
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let make = make.clone();
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                stream.set_nodelay(true).unwrap();
                let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
                tokio::spawn(conn);
                let (mut ok, mut errors, mut lat) = (0u64, 0u64, Vec::new());
                while Instant::now() < deadline {
                    tx.ready().await.unwrap();
                    let t0 = Instant::now();
                    let resp = tx.send_request(make()).await.unwrap();
                    let status = resp.status().as_u16();
                    let _ = resp.into_body().collect().await.unwrap();
                    lat.push(t0.elapsed());
                    if status == expect {
                        ok += 1;
                    } else {
                        errors += 1;
                    }
                }
                (ok, errors, lat)
            })
        })
        .collect();
    let mut s = Stats {
        ok: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for t in tasks {
        let (ok, errors, lat) = t.await.unwrap();
        s.ok += ok;
        s.errors += errors;
        s.latencies.extend(lat);
    }
    s.elapsed = start.elapsed();
    s.latencies.sort();
    s
}

/// A runtime of its own for a server, like a separate process would have.
fn server_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores())
        .enable_all()
        .build()
        .unwrap()
}

fn get(
    path: &'static str,
    auth: Option<String>,
) -> Arc<dyn Fn() -> Request<Full<Bytes>> + Send + Sync> {
    Arc::new(move || {
        let mut r = Request::get(path).header("host", "bench");
        if let Some(a) = &auth {
            r = r.header("authorization", a.as_str());
        }
        r.body(Full::new(Bytes::new())).unwrap()
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks benches to list their tests.
    }
    let d = secs();
    // MICA_BENCH_ONLY=signin or =me runs one half (for profiling).
    let only = std::env::var("MICA_BENCH_ONLY").unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("mica-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "# Mica auth benchmark — {} cores, {}s per measure, 3 alternating rounds",
        cores(),
        d.as_secs()
    );

    // The real server on SQLite, abuse limits raised so the load is not throttled.
    let server_rt = server_runtime();
    let mut cfg = Config::default();
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.data_dir = dir.clone();
    let huge = Rate::new(1_000_000_000, Duration::from_secs(1));
    cfg.identity.signin_per_ip = huge;
    cfg.identity.refresh_per_ip = huge;
    if std::env::var("MICA_BENCH_CHEAP_HASH").is_ok() {
        // Diagnostic: what a sign-in costs besides its hash.
        cfg.identity.hash_cost = mica_identity::HashCost {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
    }
    let server = server_rt
        .block_on(Server::start(&cfg, Arc::new(SystemClock)))
        .unwrap();
    let addr = server.addr;

    // Reference: a bare axum route on a runtime of the same size.
    let bare_rt = server_runtime();
    let bare_addr = bare_rt.block_on(async {
        let app = axum::Router::new().route(
            "/hello",
            axum::routing::get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        a
    });

    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client = mica_client::Client::new(format!("http://{addr}"));
    let tokens = load_rt.block_on(common::sign_up(&client, &dir, "bench@example.com"));

    let mut rows = Vec::new();
    if only.is_empty() || only == "signin" {
        // Sign-ins (eight connections per core: enough that requests waiting on the database
        // never leave a hashing thread idle), alternated with the raw
        // argon2id reference so drift in the machine's load hits both alike.
        let body =
            serde_json::json!({ "login": "bench@example.com", "password": PASSWORD }).to_string();
        let make_signin: Arc<dyn Fn() -> Request<Full<Bytes>> + Send + Sync> =
            Arc::new(move || {
                Request::post("/api/v1/sessions")
                    .header("host", "bench")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body.clone())))
                    .unwrap()
            });
        let mut argon_rates = Vec::new();
        let mut signin = Stats::empty();
        for _ in 0..3 {
            argon_rates.push(raw_argon2_rate(d / 3));
            signin.add(load_rt.block_on(load(addr, 8 * cores(), d / 3, 201, make_signin.clone())));
        }
        let argon = argon_rates.iter().sum::<f64>() / argon_rates.len() as f64;
        let ratio = signin.rate() / argon;
        println!("raw argon2id (m=19MiB,t=2,p=1), {} threads: {argon:.1} hashes/s (rounds {argon_rates:.1?})", cores());
        println!(
            "sign-ins: {:.1}/s ({} errors), p50 {:?}, p99 {:?}: {:.1}% of raw argon2id",
            signin.rate(),
            signin.errors,
            signin.pct(0.5),
            signin.pct(0.99),
            ratio * 100.0
        );
        rows.push(format!(
            "| sign-ins/s vs raw argon2id hashes/s | {:.1} (p99 {:.0} ms) | {argon:.1} | {:.1}% | ≥ 90% |",
            signin.rate(),
            signin.pct(0.99).as_secs_f64() * 1e3,
            ratio * 100.0
        ));
    }
    if only.is_empty() || only == "me" {
        let auth = format!("Bearer {}", tokens.access_token);
        let (mut me, mut bare, mut health) = (Stats::empty(), Stats::empty(), Stats::empty());
        for _ in 0..3 {
            me.add(load_rt.block_on(load(
                addr,
                64,
                d / 3,
                200,
                get("/api/v1/me", Some(auth.clone())),
            )));
            bare.add(load_rt.block_on(load(bare_addr, 64, d / 3, 200, get("/hello", None))));
            // The same stack without a handler's work: what the middleware costs.
            health.add(load_rt.block_on(load(addr, 64, d / 6, 200, get("/healthz", None))));
        }
        let ratio = me.rate() / bare.rate();
        for (name, s) in [
            ("GET /api/v1/me", &me),
            ("bare axum GET", &bare),
            ("GET /healthz (middleware only)", &health),
        ] {
            println!(
                "{name}: {:.0}/s ({} errors), p50 {:?}, p99 {:?}",
                s.rate(),
                s.errors,
                s.pct(0.5),
                s.pct(0.99)
            );
        }
        println!("GET /api/v1/me is {:.1}% of bare axum", ratio * 100.0);
        rows.push(format!(
            "| GET /api/v1/me req/s vs bare axum req/s (p99) | {:.0} ({:.2} ms) | {:.0} ({:.2} ms) | {:.1}% | ≥ 50% |",
            me.rate(),
            me.pct(0.99).as_secs_f64() * 1e3,
            bare.rate(),
            bare.pct(0.99).as_secs_f64() * 1e3,
            ratio * 100.0
        ));
    }
    println!();
    println!("| measure | Mica | reference | ratio | goal |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    server_rt.block_on(server.stop()).unwrap();
    drop(server_rt);
    drop(bare_rt);
    let _ = std::fs::remove_dir_all(&dir);
}
