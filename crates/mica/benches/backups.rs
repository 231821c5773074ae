//! Device backups, end to end with the real agent, against references measured in the same run
//! on the same disk:
//! - a full backup of a phone-like folder (`mica agent backup`: hash every file, plan, upload
//!   each part with tus, create), against reading and hashing the folder (what any backup must
//!   do) plus writing the same bytes to a new file and fsyncing it (what storing them costs);
//! - an incremental backup after one setting changed, against reading and hashing the folder:
//!   what a daily backup of an unchanged phone costs beyond reading it;
//! - the server's verification (every chunk read back and hashed), against reading and hashing
//!   the same bytes in this process;
//! - a full restore onto a new device (`mica agent restore`: download, hash, fsync, rename
//!   each part), against copying the folder (read, write, fsync each file).
//!
//! The server is the release `mica` binary as its own process on its embedded defaults (SQLite +
//! a local blob folder); the agents are the same binary.
//!
//! Run: `cargo bench -p mica --bench backups`. MICA_BENCH_BACKUP_MB sets the folder's size
//! (default 512), MICA_BENCH_ROUNDS the rounds (default 3).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "common/mod.rs"]
mod common;

use common::{env_n, PASSWORD};
use mica_client::Client;

const MIB: usize = 1 << 20;

fn noise(buf: &mut [u8], seed: u64) {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
    for w in buf.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
}

/// A phone's backup folder: the apps list, home screen, alarms and 200 small settings files,
/// a wallpaper, and the apps' data (sixteen archives sharing the rest of `mb`).
fn phone(root: &Path, mb: usize, seed: u64) -> u64 {
    let mut total = 0u64;
    let mut write = |name: &str, bytes: &[u8]| {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
        total += bytes.len() as u64;
    };
    write("apps.json", br#"["org.example.notes","org.example.maps"]"#);
    write("home_screen.json", br#"{"pages":[["notes","maps"]]}"#);
    write("alarms.json", br#"[{"at":"07:00"}]"#);
    for i in 0..200 {
        write(
            &format!("settings/s{i:03}.json"),
            format!("{{\"key\":{i},\"value\":{}}}", seed + i).as_bytes(),
        );
    }
    let mut wall = vec![0u8; 3 * MIB];
    noise(&mut wall, seed);
    write("wallpaper.png", &wall);
    let each = (mb.saturating_sub(3) * MIB) / 16;
    let mut buf = vec![0u8; each];
    for i in 0..16 {
        noise(&mut buf, seed * 100 + i);
        write(&format!("app_data/app{i:02}.tar"), &buf);
    }
    total
}

fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Reads and hashes every file of the folder as the agent does (content ids): the least any
/// backup of it costs.
fn hash_reference(root: &Path) -> Duration {
    let start = Instant::now();
    let mut buf = vec![0u8; MIB];
    for p in files_under(root) {
        let mut f = std::fs::File::open(&p).unwrap();
        let mut h = mica_blobs::ContentHasher::new();
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        std::hint::black_box(h.finish());
    }
    start.elapsed()
}

/// Writes `bytes` incompressible bytes to one new file and fsyncs it.
fn write_reference(path: &Path, bytes: u64) -> Duration {
    let mut buf = vec![0u8; 4 * MIB];
    noise(&mut buf, 7);
    let mut f = std::fs::File::create(path).unwrap();
    let start = Instant::now();
    let mut left = bytes as usize;
    while left > 0 {
        let n = left.min(buf.len());
        f.write_all(&buf[..n]).unwrap();
        left -= n;
    }
    f.sync_all().unwrap();
    let d = start.elapsed();
    drop(f);
    std::fs::remove_file(path).unwrap();
    d
}

/// Copies the folder file by file (read, write, fsync each): the restore's reference.
fn copy_reference(from: &Path, to: &Path) -> Duration {
    let start = Instant::now();
    for p in files_under(from) {
        let dest = to.join(p.strip_prefix(from).unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let mut f = std::fs::File::create(&dest).unwrap();
        f.write_all(&bytes).unwrap();
        f.sync_all().unwrap();
    }
    let d = start.elapsed();
    std::fs::remove_dir_all(to).unwrap();
    d
}

fn agent_config(dir: &Path, base: &str, name: &str, serial: &str) -> PathBuf {
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            r#"server = "{base}"
data_dir = "{d}/{name}/data"
state_file = "{d}/{name}/persist.json"

[device]
name = "{name}"
model = "Bench Phone"
serial = "{serial}"
"#,
            d = dir.display()
        ),
    )
    .unwrap();
    cfg
}

fn agent(cfg: &Path, args: &[&str]) -> Duration {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_mica"))
        .arg("agent")
        .args(args)
        .arg(cfg)
        .env("MICA_AGENT_PASSWORD", PASSWORD)
        .env("MICA_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mica agent {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

fn pct(reference: Duration, measured: Duration) -> f64 {
    100.0 * reference.as_secs_f64() / measured.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    common::block_on(run());
}

async fn run() {
    let mb = env_n("MICA_BENCH_BACKUP_MB", 512);
    let rounds = env_n("MICA_BENCH_ROUNDS", 3);
    let dir = std::env::temp_dir().join(format!("mica-bench-backups-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let addr = format!("127.0.0.1:{}", common::free_port());
    let base = format!("http://{addr}");
    let data = dir.join("server");
    let mut server = common::server(&addr, &data)
        .env("MICA_CLOUD__QUOTA_BYTES", (64u64 << 30).to_string())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    common::wait_ready(&http, &base).await;
    let client = Client::new(&base);
    let tokens = common::sign_up(&client, &data, "bench@example.com").await;
    let user = client.with_token(&tokens.access_token);

    let (mut full, mut incremental, mut verify, mut restore) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut auto_checks = Vec::new();
    println!("backups: a folder of {mb} MiB (219 parts), {rounds} rounds");
    for round in 0..rounds as u64 {
        let old = agent_config(&dir, &base, &format!("old{round}"), &format!("OLD{round}"));
        let new = agent_config(&dir, &base, &format!("new{round}"), &format!("NEW{round}"));
        agent(&old, &["link", "--login", "bench@example.com"]);
        agent(&new, &["link", "--login", "bench@example.com"]);
        let folder = dir.join(format!("old{round}/data/backup"));
        let bytes = phone(&folder, mb, round + 1);

        // Full backup, against hashing the folder and writing its bytes once.
        let hashed = hash_reference(&folder);
        let written = write_reference(&dir.join("reference.bin"), bytes);
        let took = agent(&old, &["backup"]);
        let r = pct(hashed + written, took);
        println!(
            "round {round}: full backup {:.2} s ({:.0} MB/s); hash {:.2} s + write {:.2} s → {r:.1} %",
            took.as_secs_f64(),
            bytes as f64 / 1e6 / took.as_secs_f64(),
            hashed.as_secs_f64(),
            written.as_secs_f64()
        );
        full.push(r);

        // One setting changed: the next backup sends it alone.
        std::fs::write(
            folder.join("settings/s007.json"),
            b"{\"key\":7,\"changed\":true}",
        )
        .unwrap();
        let hashed = hash_reference(&folder);
        let took = agent(&old, &["backup"]);
        let start_auto = Instant::now();
        let r = pct(hashed, took);
        println!(
            "round {round}: incremental backup {:.3} s; hash {:.3} s → {r:.1} %",
            took.as_secs_f64(),
            hashed.as_secs_f64()
        );
        incremental.push(r);

        // The server reads the newest backup back.
        // First the check every new backup gets (it reads only what no check read within the
        // period: the changed setting), so that the one measured next is the one asked for,
        // which reads everything.
        let list = user.backups().await.unwrap();
        let id = list[0]["id"].as_str().unwrap().to_owned();
        let before = loop {
            let b = user.backup(&id).await.unwrap();
            if b["state"] == "verified" {
                break b["verified_at"].clone();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let auto = start_auto.elapsed();
        println!(
            "round {round}: the incremental backup's own check was done {:.3} s after it was made",
            auto.as_secs_f64()
        );
        auto_checks.push(auto.as_secs_f64());
        let hashed = hash_reference(&folder);
        let start = Instant::now();
        user.verify_backup(&id).await.unwrap();
        loop {
            let b = user.backup(&id).await.unwrap();
            if b["verified_at"] != before && b["state"] == "verified" {
                break;
            }
            assert_ne!(b["state"], "damaged", "{b}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = start.elapsed();
        let r = pct(hashed, took);
        println!(
            "round {round}: verification {:.2} s ({:.0} MB/s); hash {:.2} s → {r:.1} %",
            took.as_secs_f64(),
            bytes as f64 / 1e6 / took.as_secs_f64(),
            hashed.as_secs_f64()
        );
        verify.push(r);

        // Everything onto the new device, against copying the folder.
        let copied = copy_reference(&folder, &dir.join("copy"));
        let took = agent(&new, &["restore", "--backup", &id]);
        let r = pct(copied, took);
        println!(
            "round {round}: full restore {:.2} s ({:.0} MB/s); copy {:.2} s → {r:.1} %",
            took.as_secs_f64(),
            bytes as f64 / 1e6 / took.as_secs_f64(),
            copied.as_secs_f64()
        );
        restore.push(r);
        for b in user.backups().await.unwrap() {
            user.delete_backup(b["id"].as_str().unwrap()).await.unwrap();
        }
        std::fs::remove_dir_all(dir.join(format!("old{round}"))).unwrap();
        std::fs::remove_dir_all(dir.join(format!("new{round}"))).unwrap();
    }
    println!("medians (reference time / measured time):");
    println!("  full backup vs hash + write:   {:.1} %", median(full));
    println!(
        "  incremental backup vs hash:    {:.1} %",
        median(incremental)
    );
    println!("  verification vs hash:          {:.1} %", median(verify));
    println!("  full restore vs copy:          {:.1} %", median(restore));
    println!(
        "  an incremental backup's own check: {:.3} s after it was made",
        median(auto_checks)
    );
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
