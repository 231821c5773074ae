//! File throughput, against a reference measured in the same run on the same disk:
//! - upload a 1 GiB file over loopback with tus (one PATCH, sent from the file with `sendfile`)
//!   and download it again, compared with a plain sequential write (then one fsync) and a plain
//!   sequential read of the same size in the same folder;
//! - the server's peak RSS during the upload (`VmHWM` of the `mica serve` process);
//! - a re-upload of the same content (dedup: nothing new is stored);
//! - the last file read over WebDAV (`GET /dav/files/…` with an app password), against the API
//!   download of the same file in the same run, both from the disk.
//!
//! The server is the release `mica` binary as a separate process on its embedded defaults
//! (SQLite + a local blob folder), so its memory is its own.
//!
//! Run: `cargo bench -p mica --bench files`. MICA_BENCH_FILE_MB sets the size (default 1024).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

#[path = "common/mod.rs"]
mod common;

use common::{env_n, vm_hwm_kib, vm_rss_kib};
const MIB: usize = 1 << 20;

fn mb_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// Writes `size` bytes of incompressible data to `path` (and fsyncs): the write reference.
fn write_reference(path: &Path, size: usize, seed: u64) -> Duration {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
    let mut buf = vec![0u8; 4 * MIB];
    let mut f = std::fs::File::create(path).unwrap();
    let start = Instant::now();
    let mut left = size;
    while left > 0 {
        for w in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len());
        f.write_all(&buf[..n]).unwrap();
        left -= n;
    }
    f.sync_all().unwrap();
    start.elapsed()
}

fn read_reference(path: &Path) -> (Duration, u64) {
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 4 * MIB];
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf).unwrap();
        if r == 0 {
            break;
        }
        n += r as u64;
    }
    (start.elapsed(), n)
}

/// Takes the bytes of `path` (a file, or every file under a folder) out of the page cache, so
/// that the next read of them comes from the disk; returns whether it could. Only those bytes:
/// emptying the whole cache (`/proc/sys/vm/drop_caches`, as this benchmark once did) also
/// evicted the server's SQLite WAL, and each commit after that waited for the disk to read back
/// the block it was partly rewriting — every upload after the first round ran a third slower.
fn evict(path: &Path) -> bool {
    if path.is_dir() {
        let Ok(entries) = std::fs::read_dir(path) else {
            return false;
        };
        // Every file, even after one that could not be evicted.
        let mut all = true;
        for e in entries.flatten() {
            all &= evict(&e.path());
        }
        return all;
    }
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    // Only clean pages can be dropped.
    f.sync_all().is_ok() && rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).is_ok()
}

/// CPU time the process has used (user + system), from /proc (clock ticks of 10 ms).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Fields 14 and 15 of stat (utime, stime) are 12 and 13 after the command name.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// One PATCH whose body goes from the file to the socket with `sendfile` (std's `io::copy` from
/// a file to a TCP stream takes that path on Linux), so the load generator costs this machine as
/// little as it can — as a client on another machine would cost it nothing — and the two cores
/// measure the server. Returns the status and the file id.
fn patch_from_file(addr: &str, token: &str, location: &str, path: &Path) -> (u16, Option<String>) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let len = std::fs::metadata(path).unwrap().len();
    write!(
        stream,
        "PATCH {location} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
         tus-resumable: 1.0.0\r\nupload-offset: 0\r\n\
         content-type: application/offset+octet-stream\r\ncontent-length: {len}\r\n\
         connection: close\r\n\r\n"
    )
    .unwrap();
    let mut file = std::fs::File::open(path).unwrap();
    assert_eq!(std::io::copy(&mut file, &mut stream).unwrap(), len);
    // The answer has no body (204).
    let head = read_head(&mut stream);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    (status, header(&head, "mica-file-id").map(str::to_owned))
}

/// An answer's head, read byte by byte so that no byte of a body after it is taken.
fn read_head(stream: &mut std::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).unwrap(),
            1,
            "the server closed early"
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// The value of header `name` in an answer's head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// [`patch_from_file`] off the async runtime (it blocks on the socket).
async fn upload_file(
    addr: &str,
    token: &str,
    location: &str,
    path: &Path,
) -> (u16, Option<String>) {
    let (addr, token, location, path) = (
        addr.to_owned(),
        token.to_owned(),
        location.to_owned(),
        path.to_owned(),
    );
    tokio::task::spawn_blocking(move || patch_from_file(&addr, &token, &location, &path))
        .await
        .unwrap()
}

/// One GET of the whole file whose body goes from the socket to `/dev/null` with `splice`
/// (through a pipe; the bytes are never copied into this process), for the same reason as
/// [`patch_from_file`]: the two cores measure the server, not the load generator's copies.
/// Returns the number of body bytes received.
fn get_to_null(addr: &str, path: &str, authorization: &str) -> u64 {
    use rustix::pipe::{splice, SpliceFlags};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\n\
         authorization: {authorization}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let len: u64 = header(&head, "content-length")
        .expect("a content-length")
        .parse()
        .unwrap();
    let (pipe_r, pipe_w) = rustix::pipe::pipe().unwrap();
    let _ = rustix::pipe::fcntl_setpipe_size(&pipe_w, 1 << 20);
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .unwrap();
    let mut got = 0u64;
    while got < len {
        let n = splice(&stream, None, &pipe_w, None, 1 << 20, SpliceFlags::MOVE).unwrap();
        assert!(n > 0, "the server closed after {got} of {len} bytes");
        let mut left = n;
        while left > 0 {
            left -= splice(&pipe_r, None, &null, None, left, SpliceFlags::MOVE).unwrap();
        }
        got += n as u64;
    }
    got
}

/// [`get_to_null`] off the async runtime (it blocks on the socket).
async fn download(addr: &str, token: &str, file: &str) -> u64 {
    get(
        addr,
        &format!("/api/v1/files/{file}/content"),
        &format!("Bearer {token}"),
    )
    .await
}

/// `GET path` to `/dev/null`, off the async runtime.
async fn get(addr: &str, path: &str, authorization: &str) -> u64 {
    let (addr, path, authorization) = (addr.to_owned(), path.to_owned(), authorization.to_owned());
    tokio::task::spawn_blocking(move || get_to_null(&addr, &path, &authorization))
        .await
        .unwrap()
}

/// Puts `file` in the drive as `big.bin` and makes an app password (after a step-up whose
/// code comes from the outbox): the `Authorization` a WebDAV client sends, and the file's path.
async fn on_webdav(
    (http, base, token): (&reqwest::Client, &str, &str),
    data: &Path,
    email: &str,
    account: &str,
    file: &str,
) -> (String, String) {
    let r = http
        .post(format!("{base}/api/v1/drive"))
        .bearer_auth(token)
        .json(&serde_json::json!({"kind": "file", "name": "big.bin", "file_id": file}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    let basic = common::app_password(base, token, data, email).await;
    (basic, format!("/dav/files/{account}/big.bin"))
}

async fn create_upload(http: &reqwest::Client, base: &str, token: &str, len: u64) -> String {
    let r = http
        .post(format!("{base}/api/v1/uploads"))
        .bearer_auth(token)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", len.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);
    r.headers()["location"].to_str().unwrap().to_owned()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mb = env_n("MICA_BENCH_FILE_MB", 1024);
    let rounds = env_n("MICA_BENCH_ROUNDS", 3).max(1);
    let size = mb * MIB;
    let dir = std::env::temp_dir().join(format!("mica-bench-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // The server: the release binary, its own process, on its embedded defaults in `dir`.
    let addr = format!("127.0.0.1:{}", common::free_port());
    let data = dir.join("data");
    let mut child = common::server(&addr, &data)
        .env(
            "MICA_CLOUD__QUOTA_BYTES",
            ((rounds as i64 + 2) * size as i64 + (1 << 30)).to_string(),
        )
        .spawn()
        .unwrap();
    let pid = child.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let base = format!("http://{addr}");
    let bytes = size as u64;
    let mut cold = true;
    let mut rows = Vec::new();
    let (again, first_up, rss_idle, peak, dav) = rt.block_on(async {
        let http = reqwest::Client::new();
        common::wait_ready(&http, &base).await;
        let client = mica_client::Client::new(base.clone());
        let t = common::sign_up(&client, &data, "bench@example.com").await;
        let token = t.access_token;
        let rss_idle = vm_rss_kib(pid);
        let mut peak = 0;
        let mut first_up = Duration::ZERO;
        let mut source = dir.join("source-0.bin");
        let mut last_file = None;
        // Rounds alternate the reference and Mica on new content each time (so no upload is
        // deduplicated), and the ratios are taken per round: the disk is shared and noisy.
        for round in 0..rounds {
            source = dir.join(format!("source-{round}.bin"));
            let wrote = write_reference(&source, size, round as u64);
            let loc = create_upload(&http, &base, &token, bytes).await;
            let cpu0 = cpu_time(pid);
            let start = Instant::now();
            let (status, file) = upload_file(&addr, &token, &loc, &source).await;
            let up = start.elapsed();
            let up_cpu = cpu_time(pid) - cpu0;
            assert_eq!(status, 204);
            if round == 0 {
                first_up = up;
                // VmHWM only grows: read now, it is the peak of the first upload alone.
                peak = vm_hwm_kib(pid);
            }
            let file = file.expect("a file id");
            last_file = Some(file.clone());
            // Reads come from the disk (their bytes evicted from the page cache), for the
            // reference and Mica.
            cold &= evict(&source);
            let (read, n) = read_reference(&source);
            assert_eq!(n, bytes);
            cold &= evict(&data.join("blobs"));
            let cpu0 = cpu_time(pid);
            let start = Instant::now();
            let got = download(&addr, &token, &file).await;
            let down = start.elapsed();
            let down_cpu = cpu_time(pid) - cpu0;
            assert_eq!(got, bytes);
            rows.push((wrote, up, read, down, up_cpu, down_cpu));
        }
        // The last file over WebDAV and over the API, each from the disk, twice in turn.
        let (auth, path) = on_webdav(
            (&http, &base, &token),
            &data,
            "bench@example.com",
            &t.account_id,
            last_file.as_deref().unwrap(),
        )
        .await;
        let mut dav = Vec::new();
        for _ in 0..2 {
            cold &= evict(&data.join("blobs"));
            let start = Instant::now();
            let got = get(&addr, &path, &auth).await;
            let by_dav = start.elapsed();
            assert_eq!(got, bytes);
            cold &= evict(&data.join("blobs"));
            let start = Instant::now();
            let got = download(&addr, &token, last_file.as_deref().unwrap()).await;
            let by_api = start.elapsed();
            assert_eq!(got, bytes);
            dav.push((by_dav, by_api));
        }
        // The same content again: every chunk is already there.
        let loc = create_upload(&http, &base, &token, bytes).await;
        let start = Instant::now();
        let (status, _) = upload_file(&addr, &token, &loc, &source).await;
        let again = start.elapsed();
        assert_eq!(status, 204);
        (again, first_up, rss_idle, (peak, vm_hwm_kib(pid)), dav)
    });
    let (peak, overall) = peak;
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "file size: {mb} MiB, {rounds} rounds, folder {}; reads from {}",
        dir.display(),
        if cold {
            "disk (their pages evicted from the page cache)"
        } else {
            "the page cache (could not evict it)"
        }
    );
    println!("round | plain write+fsync | tus upload | upload/write | plain read | download | download/read | server CPU up / down");
    let (mut up_ratio, mut down_ratio) = (Vec::new(), Vec::new());
    for (i, (wrote, up, read, down, up_cpu, down_cpu)) in rows.iter().enumerate() {
        let ur = wrote.as_secs_f64() / up.as_secs_f64();
        let dr = read.as_secs_f64() / down.as_secs_f64();
        up_ratio.push(ur);
        down_ratio.push(dr);
        println!(
            "{i:>5} | {:>11.0} MB/s | {:>5.0} MB/s | {:>10.1} % | {:>5.0} MB/s | {:>4.0} MB/s | {:>11.1} % | {:.0} % / {:.0} % of a core",
            mb_s(bytes, *wrote),
            mb_s(bytes, *up),
            100.0 * ur,
            mb_s(bytes, *read),
            mb_s(bytes, *down),
            100.0 * dr,
            100.0 * up_cpu.as_secs_f64() / up.as_secs_f64(),
            100.0 * down_cpu.as_secs_f64() / down.as_secs_f64()
        );
    }
    println!(
        "median: upload {:.1} % of plain write, download {:.1} % of plain read",
        100.0 * median(up_ratio),
        100.0 * median(down_ratio)
    );
    println!(
        "re-upload of the same content (dedup): {:.2} s, {:.0} MB/s = {:.1} % of the first upload's time",
        again.as_secs_f64(),
        mb_s(bytes, again),
        100.0 * again.as_secs_f64() / first_up.as_secs_f64()
    );
    for (by_dav, by_api) in &dav {
        println!(
            "WebDAV GET: {:.0} MB/s, API download {:.0} MB/s: WebDAV at {:.1} % of the API",
            mb_s(bytes, *by_dav),
            mb_s(bytes, *by_api),
            100.0 * by_api.as_secs_f64() / by_dav.as_secs_f64()
        );
    }
    println!(
        "server RSS: {:.1} MB idle, peak {:.1} MB during the first upload, {:.1} MB over the whole run (VmHWM)",
        rss_idle as f64 / 1024.0,
        peak as f64 / 1024.0,
        overall as f64 / 1024.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}
