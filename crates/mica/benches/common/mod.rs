//! What the benchmarks share: settings from the environment, starting the server, a process's
//! memory, and signing an account up through the development outbox.

// Each benchmark uses part of this.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

pub const PASSWORD: &str = "correct-Horse-battery-9";

/// A number from the environment, or `default`.
pub fn env_n(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The process's resident memory now.
pub fn vm_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The process's peak resident memory.
pub fn vm_hwm_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// Signs `email` up on a server without SMTP, reading the code from `<data_dir>/outbox.jsonl`
/// (one sign-up at a time).
pub async fn sign_up(
    client: &mica_client::Client,
    data_dir: &Path,
    email: &str,
) -> mica_client::Tokens {
    let outbox = data_dir.join("outbox.jsonl");
    let sent = std::fs::read_to_string(&outbox)
        .unwrap_or_default()
        .lines()
        .count();
    let s = client.signup_email(email, PASSWORD).await.unwrap();
    // This sign-up's mail: the first line after those already there.
    let code = loop {
        let text = std::fs::read_to_string(&outbox).unwrap_or_default();
        if let Some(line) = text.lines().nth(sent) {
            let v: Value = serde_json::from_str(line).unwrap();
            break v["subject"].as_str().unwrap()[..6].to_owned();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    client
        .signup_verify(&s.signup_id, &code, None)
        .await
        .unwrap()
}

/// Makes an app password for the signed-in account (after a step-up whose code comes from
/// `<data_dir>/outbox.jsonl`): the `Authorization` a WebDAV, CardDAV or CalDAV client sends.
pub async fn app_password(base: &str, token: &str, data_dir: &Path, email: &str) -> String {
    use base64::Engine;
    let client = mica_client::Client::new(base.to_owned()).with_token(token);
    let outbox = data_dir.join("outbox.jsonl");
    let sent = std::fs::read_to_string(&outbox)
        .unwrap_or_default()
        .lines()
        .count();
    let challenge = client.step_up_send("email").await.unwrap();
    let code = loop {
        let text = std::fs::read_to_string(&outbox).unwrap_or_default();
        if let Some(line) = text.lines().nth(sent) {
            let v: Value = serde_json::from_str(line).unwrap();
            break v["subject"].as_str().unwrap()[..6].to_owned();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    client
        .step_up_with_code(&challenge.challenge_id, &code)
        .await
        .unwrap();
    let made: Value = reqwest::Client::new()
        .post(format!("{base}/api/v1/me/app-passwords"))
        .bearer_auth(token)
        .json(&serde_json::json!({"name": "bench"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pair = format!("{email}:{}", made["password"].as_str().unwrap());
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The server binary: the release `mica` built with the benchmark, or the one named by
/// MICA_BENCH_SERVER (an older build, for a before and after on the same benchmark).
pub fn server_binary() -> String {
    std::env::var("MICA_BENCH_SERVER").unwrap_or_else(|_| env!("CARGO_BIN_EXE_mica").into())
}

/// `mica serve` on `addr`, on its embedded defaults in `data`, logging warnings only; the
/// caller adds its own settings and spawns it.
pub fn server(addr: &str, data: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(server_binary());
    c.arg("serve")
        .env("MICA_LISTEN", addr)
        .env("MICA_DATA_DIR", data)
        .env("MICA_LOG", "warn")
        .stdout(std::process::Stdio::null());
    c
}

/// Waits until the server at `base` answers `/healthz` (at most ten seconds).
pub async fn wait_ready(http: &reqwest::Client, base: &str) {
    for _ in 0..200 {
        if http.get(format!("{base}/healthz")).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server at {base} did not start");
}

/// An IMEI with a valid check digit, different for each `n`.
pub fn imei(n: usize) -> String {
    let body = format!("35{n:012}");
    (0..10)
        .map(|d| format!("{body}{d}"))
        .find(|c| mica_devices::hardware::luhn_ok(c))
        .unwrap()
}

/// A duration in milliseconds, for the figures printed.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs a benchmark's client on a runtime of one worker thread (the server is its own
/// process, so the client leaves it the machine's other core).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// The `p` quantile (0…1) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
