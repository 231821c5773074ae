//! The command channel at scale, against a reference measured in the same run:
//! - 10,000 linked devices hold their command channel open on one server process; the
//!   server's resident memory per connection is the growth of its `VmRSS` from before the
//!   connections to after, divided by their number;
//! - with all of them connected, the time from issuing a ring over the API to the device's
//!   acknowledgement reaching the server (the device reads the command from its WebSocket
//!   channel and acknowledges it there; the time ends when the server's answer — "run it",
//!   after the acknowledgement is committed — reaches the device), p50 and p99, compared
//!   with a Mosquitto QoS 1 round trip on the same machine (a publish to the device's topic; the
//!   subscriber answers on a second topic; the time ends when the answer arrives).
//!
//! The server is the release `mica` binary as its own process on its embedded defaults (SQLite +
//! a local folder); Mosquitto is a private instance on a free port (`mosquitto` must be
//! installed: `scripts/bench-devices.sh` installs it from Debian's packages).
//!
//! Run: `scripts/bench-devices.sh`, or `cargo bench -p mica --bench devices` with `mosquitto` on
//! the PATH. MICA_BENCH_DEVICES sets the number of devices (default 10,000), MICA_BENCH_RINGS the
//! number of round trips of each kind (default 500).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[path = "common/mod.rs"]
mod common;

use common::{env_n, imei, ms, percentile, vm_rss_kib};

/// An IMEI with a valid check digit, different for each `n`.
fn nodelay() -> rumqttc::NetworkOptions {
    let mut n = rumqttc::NetworkOptions::new();
    n.set_tcp_nodelay(true);
    n
}

/// Opens a device's command channel (a WebSocket, as the agent does) and waits for its
/// `hello`; then reads until the end of the run. A watched device acknowledges each command on
/// the socket as soon as it arrives and hands `(index, command id)` to `tx` once the server's
/// answer says it may run it.
async fn open_channel(
    addr: &str,
    credential: &str,
    index: usize,
    tx: Option<mpsc::UnboundedSender<(usize, String, Instant)>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut req = format!("ws://{addr}/api/v1/device/command-channel")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {credential}").parse().unwrap(),
    );
    // The device side keeps small buffers too (the bench holds 10,000 of them).
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, resp) = tokio_tungstenite::client_async_with_config(req, tcp, Some(config))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 101);
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Text(t))) if t.as_str().contains("\"hello\"") => break,
            Some(Ok(_)) => {}
            other => panic!("channel closed before hello: {other:?}"),
        }
    }
    // The connection lives until the runtime ends.
    tokio::spawn(async move {
        let mut seen_at = Instant::now();
        while let Some(Ok(msg)) = ws.next().await {
            let (Some(tx), WsMessage::Text(t)) = (&tx, msg) else {
                continue;
            };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            match v["type"].as_str() {
                Some("command") => {
                    seen_at = Instant::now();
                    let ack = json!({ "type": "ack", "id": v["id"] }).to_string();
                    if ws.send(WsMessage::Text(ack.into())).await.is_err() {
                        return;
                    }
                }
                Some("ack") => {
                    assert!(v["command"].is_object(), "acknowledgement refused: {v}");
                    let _ = tx.send((index, v["id"].as_str().unwrap().to_owned(), seen_at));
                }
                _ => {}
            }
        }
    });
}

fn main() {
    let devices = env_n("MICA_BENCH_DEVICES", 10_000);
    let rings = env_n("MICA_BENCH_RINGS", 500);
    let dir = std::env::temp_dir().join(format!("mica-bench-devices-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let addr = format!("127.0.0.1:{}", common::free_port());
    let data = dir.join("data");
    let mut server = common::server(&addr, &data).spawn().unwrap();
    let pid = server.id();
    let mqtt_port = common::free_port();
    // Mosquitto tuned for latency like the server (no Nagle delay on either side).
    let mqtt_conf = dir.join("mosquitto.conf");
    std::fs::write(
        &mqtt_conf,
        format!("listener {mqtt_port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"),
    )
    .unwrap();
    let mut mosquitto = std::process::Command::new("mosquitto")
        .arg("-c")
        .arg(&mqtt_conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("mosquitto is needed for the reference: run scripts/bench-devices.sh");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let base = format!("http://{addr}");
        let http = reqwest::Client::new();
        common::wait_ready(&http, &base).await;
        // The owner.
        let client = mica_client::Client::new(base.clone());
        let t = common::sign_up(&client, &data, "owner@example.com").await;
        let owner = client.with_token(t.access_token);

        // Link the devices (eight at a time).
        let start = Instant::now();
        let linked = Arc::new(Mutex::new(vec![(String::new(), String::new()); devices]));
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (owner, linked, next) = (owner.clone(), linked.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= devices {
                        return;
                    }
                    let v: Value = owner
                        .raw(
                            reqwest::Method::POST,
                            "/api/v1/devices",
                            Some(json!({
                                "name": format!("device {i}"), "model": "Bench", "os_version": "1",
                                "app_version": "1",
                                "hardware": { "imeis": [imei(i)], "serial": format!("B{i}") },
                                "find_device": true,
                            })),
                        )
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    linked.lock().await[i] = (
                        v["device"]["id"].as_str().unwrap().to_owned(),
                        v["credential"].as_str().unwrap().to_owned(),
                    );
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let linked = Arc::try_unwrap(linked).unwrap().into_inner();
        println!("linked {devices} devices in {:.1} s", start.elapsed().as_secs_f64());

        // Memory before and after the connections.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = vm_rss_kib(pid);
        let watched = 100.min(devices);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = Instant::now();
        let half_at = devices / 2;
        let mut half = 0;
        for (chunk_start, chunk) in linked.chunks(64).enumerate().map(|(i, c)| (i * 64, c)) {
            if chunk_start >= half_at && half == 0 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                half = vm_rss_kib(pid);
            }
            futures_util::future::join_all(chunk.iter().enumerate().map(|(j, (_, cred))| {
                let i = chunk_start + j;
                let tx = (i < watched).then(|| tx.clone());
                let addr = addr.clone();
                let cred = cred.clone();
                async move { open_channel(&addr, &cred, i, tx).await }
            }))
            .await;
        }
        println!("opened {devices} command channels in {:.1} s", start.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = vm_rss_kib(pid);
        let per_conn = (after.saturating_sub(before)) as f64 * 1024.0 / devices as f64;
        // The second half alone: what one more connection costs once pools and caches are warm.
        let marginal =
            (after.saturating_sub(half)) as f64 * 1024.0 / (devices - half_at.next_multiple_of(64)) as f64;

        // For scale: what an idle HTTP keep-alive connection costs the same server (one
        // `GET /healthz` answered, the connection left open).
        let plain = 2_000;
        let before_plain = vm_rss_kib(pid);
        let mut idle = Vec::with_capacity(plain);
        for _ in 0..plain {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            idle.push(s);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let per_plain = (vm_rss_kib(pid).saturating_sub(before_plain)) as f64 * 1024.0 / plain as f64;
        println!("an idle keep-alive HTTP connection: {:.1} KB", per_plain / 1000.0);

        // Ring → acknowledgement, with every device connected.
        let mut mica = Vec::with_capacity(rings);
        // Where the time goes: the owner's answer, the command reaching the device, and the
        // device's acknowledgement answered.
        let mut stages: (Vec<Duration>, Vec<Duration>, Vec<Duration>) = Default::default();
        let mut slow = Vec::with_capacity(rings);
        for r in 0..rings {
            let i = r % watched;
            let (id, _) = &linked[i];
            let t0 = Instant::now();
            let c: Value = owner
                .raw(
                    reqwest::Method::POST,
                    &format!("/api/v1/devices/{id}/commands"),
                    Some(json!({ "kind": "ring" })),
                )
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let answered = t0.elapsed();
            let want = c["id"].as_str().unwrap();
            let seen = loop {
                let (who, cmd, seen) = rx.recv().await.unwrap();
                if who == i && cmd == want {
                    break seen;
                }
            };
            let total = t0.elapsed();
            mica.push(total);
            stages.0.push(answered);
            stages.1.push(seen.duration_since(t0));
            stages.2.push(total.saturating_sub(seen.duration_since(t0)));
            slow.push((total, r, answered, seen.duration_since(t0)));
        }
        slow.sort();
        if std::env::var_os("MICA_BENCH_SLOWEST").is_some() {
            for (total, r, answered, seen) in slow.iter().rev().take(10) {
                println!(
                    "  slow round {r}: {:.2} ms (answered {:.2}, at device {:.2})",
                    ms(*total),
                    ms(*answered),
                    ms(*seen)
                );
            }
        }

        // The reference: Mosquitto QoS 1, publish → the subscriber answers on a second topic.
        let mut opts = MqttOptions::new("owner", "127.0.0.1", mqtt_port);
        opts.set_keep_alive(Duration::from_secs(30));
        let (owner_mqtt, mut owner_loop) = AsyncClient::new(opts, 64);
        owner_loop.set_network_options(nodelay());
        let mut opts = MqttOptions::new("device", "127.0.0.1", mqtt_port);
        opts.set_keep_alive(Duration::from_secs(30));
        let (device_mqtt, mut device_loop) = AsyncClient::new(opts, 64);
        device_loop.set_network_options(nodelay());
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let (sub_tx, mut sub_rx) = mpsc::unbounded_channel::<()>();
        let sub_tx2 = sub_tx.clone();
        tokio::spawn(async move {
            loop {
                match owner_loop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = ack_tx.send(p.payload.to_vec());
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = sub_tx.send(());
                    }
                    Ok(_) => {}
                    // The broker stopped (the end of the run).
                    Err(_) => return,
                }
            }
        });
        let answer = device_mqtt.clone();
        tokio::spawn(async move {
            loop {
                match device_loop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        answer
                            .publish("dev/1/ack", QoS::AtLeastOnce, false, p.payload.to_vec())
                            .await
                            .unwrap();
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = sub_tx2.send(());
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        owner_mqtt.subscribe("dev/1/ack", QoS::AtLeastOnce).await.unwrap();
        device_mqtt.subscribe("dev/1/cmd", QoS::AtLeastOnce).await.unwrap();
        sub_rx.recv().await.unwrap();
        sub_rx.recv().await.unwrap();
        let mut mqtt = Vec::with_capacity(rings);
        for r in 0..rings {
            let payload = format!("ring {r}").into_bytes();
            let t0 = Instant::now();
            owner_mqtt
                .publish("dev/1/cmd", QoS::AtLeastOnce, false, payload.clone())
                .await
                .unwrap();
            loop {
                if ack_rx.recv().await.unwrap() == payload {
                    break;
                }
            }
            mqtt.push(t0.elapsed());
        }

        mica.sort();
        mqtt.sort();
        let (m50, m99) = (percentile(&mica, 0.5), percentile(&mica, 0.99));
        let (q50, q99) = (percentile(&mqtt, 0.5), percentile(&mqtt, 0.99));
        println!();
        println!("connected idle devices: {devices}");
        println!(
            "server RSS: {:.1} MiB before, {:.1} MiB after → {:.1} KB per connection (goal < 20 KB)",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            per_conn / 1000.0
        );
        println!(
            "  second half only ({} → {devices} connections): {:.1} KB per connection",
            half_at.next_multiple_of(64),
            marginal / 1000.0
        );
        println!("ring → acknowledgement ({rings} rounds, all devices connected):");
        println!("  Mica       p50 {:.2} ms   p99 {:.2} ms", ms(m50), ms(m99));
        for (name, v) in [
            ("owner's POST answered", &mut stages.0),
            ("command at the device", &mut stages.1),
            ("acknowledgement answered (from the command)", &mut stages.2),
        ] {
            v.sort();
            println!(
                "    {name}: p50 {:.2} ms, p99 {:.2} ms",
                ms(percentile(v, 0.5)),
                ms(percentile(v, 0.99))
            );
        }
        println!("  Mosquitto  p50 {:.2} ms   p99 {:.2} ms   (QoS 1 round trip)", ms(q50), ms(q99));
        println!(
            "  ratio Mica/Mosquitto: p50 {:.2}×, p99 {:.2}× (goal: p99 within 2×)",
            ms(m50) / ms(q50),
            ms(m99) / ms(q99)
        );
    });
    let _ = server.kill();
    let _ = server.wait();
    let _ = mosquitto.kill();
    let _ = mosquitto.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
