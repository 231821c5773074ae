//! The server's connections: a client gets `client_timeout_secs` to send each request head,
//! and no longer to sit idle between requests; event streams and device channels stay open.
//! (Real time: these are the server's socket deadlines, one second here, checked once a
//! second.)

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::devices::{device_token, link_http, next_json, open_ws, owner, read_until, send};
use crate::support::{Backend, TestApp};

async fn quick_timeouts() -> TestApp {
    TestApp::start_with(Backend::Sqlite, |cfg| cfg.client_timeout_secs = 1)
        .await
        .unwrap()
}

async fn connect(app: &TestApp) -> TcpStream {
    let addr = app.base.trim_start_matches("http://");
    TcpStream::connect(addr).await.unwrap()
}

/// Reads until the server closes the connection (or `within` passes); what it sent, and how
/// long that took.
async fn until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => panic!(
                "still open after {within:?}; it sent {:?}",
                String::from_utf8_lossy(&seen)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return (seen, start.elapsed()),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// A client that opens connections and never finishes a request head (slowloris: a header
/// line now and then) holds nothing for long, and the server goes on answering others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_that_never_ends_is_let_go() {
    let app = quick_timeouts().await;
    // Says nothing at all.
    let mut silent = connect(&app).await;
    // Trickles its head, a line every 200 ms.
    let mut slow = connect(&app).await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: mica\r\n")
        .await
        .unwrap();
    let (mut reader, mut writer) = slow.into_split();
    let trickle = tokio::spawn(async move {
        for n in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer
                .write_all(format!("X-Line-{n}: still coming\r\n").as_bytes())
                .await
                .is_err()
            {
                return n;
            }
        }
        100
    });
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), reader.read(&mut buf)).await {
            Err(_) => panic!("a trickled head held its connection for 10 s"),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let took = start.elapsed();
    assert!(seen.is_empty(), "{:?}", String::from_utf8_lossy(&seen));
    assert!(
        took < Duration::from_secs(4),
        "closed only after {took:?} (deadline 1 s, swept every second)"
    );
    // The client was still sending when it was cut off.
    let lines = trickle.await.unwrap();
    assert!((3..100).contains(&lines), "{lines} lines sent");
    let (seen, _) = until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(seen.is_empty());
    // Others are answered all along.
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    app.stop().await;
}

/// A keep-alive connection left idle after its answer is closed once the deadline passes; an
/// owner's event stream and a device's command channel, which wait for the server, stay open
/// and still deliver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_and_streams_stay_open() {
    let app = quick_timeouts().await;
    let (ana, _) = owner(&app, "ana@example.com").await;
    let (id, device) = link_http(&app, &ana, 60).await;
    let mut feed = app
        .http
        .get(app.url("/api/v1/devices/events"))
        .bearer_auth(device_token(&ana))
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), 200);
    read_until(&mut feed, "event: ready").await;
    let mut ws = open_ws(&app, &device_token(&device)).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "hello");

    let mut idle = connect(&app).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: mica\r\n\r\n")
        .await
        .unwrap();
    let (seen, took) = until_closed(&mut idle, Duration::from_secs(6)).await;
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.starts_with("HTTP/1.1 200 OK"), "{seen}");
    assert!(took >= Duration::from_secs(1), "closed after {took:?}");

    // Both streams have now waited well past the deadline.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ring = send(&ana, &id, json!({ "kind": "ring" })).await;
    let frame = next_json(&mut ws).await;
    assert_eq!(frame["type"], "command", "{frame}");
    assert_eq!(frame["id"], ring["id"], "{frame}");
    let seen = read_until(&mut feed, ring["id"].as_str().unwrap()).await;
    assert!(seen.contains("\"kind\":\"ring\""), "{seen}");
    drop(ws);
    drop(feed);
    app.stop().await;
}

/// A client that asks for answers and never reads them (its answers pile up until the socket
/// is full) is closed once its writes have stood still past the deadline; others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_is_let_go() {
    let app = quick_timeouts().await;
    let one = app
        .http
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .len();
    // Far more than the sockets' buffers hold on either side.
    let asks = (32 << 20) / one + 1;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket
        .connect(app.base.trim_start_matches("http://").parse().unwrap())
        .await
        .unwrap();
    let ask = "GET /api/v1/openapi.json HTTP/1.1\r\nHost: mica\r\n\r\n".repeat(asks);
    s.write_all(ask.as_bytes()).await.unwrap();
    // Nothing read for a while: the server's writes stall, and it gives up.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "still open after reading {got} bytes");
    assert!(
        got < asks * one / 2,
        "{got} of {} bytes came: the answers were not cut short",
        asks * one
    );
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    app.stop().await;
}

/// Stopping the server does not wait on a client inside its first request head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_does_not_wait_for_a_slow_head() {
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    let mut slow = connect(&app).await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: mica\r\n")
        .await
        .unwrap();
    // The server has the connection before it is told to stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    app.stop().await;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        start.elapsed()
    );
    let (seen, _) = until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(seen.is_empty());
}

/// A request body trickled a byte at a time — each byte well within the per-frame timeout —
/// is cut off once it falls behind the minimum rate, instead of holding its request for
/// weeks; the client is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_request_body_is_let_go() {
    let app = quick_timeouts().await;
    let s = connect(&app).await;
    let (mut reader, mut writer) = s.into_split();
    writer
        .write_all(
            b"POST /api/v1/signup HTTP/1.1\r\nHost: mica\r\nContent-Type: application/json\r\n\
              Content-Length: 1000\r\n\r\n{",
        )
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..500 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let start = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), reader.read(&mut buf)).await {
            Err(_) => panic!("a trickled body held its request for 10 s"),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
        }
    }
    trickle.abort();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "cut off only after {took:?}");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    app.stop().await;
}
