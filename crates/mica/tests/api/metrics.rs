//! The operator's metrics (OP-4): what a Prometheus scraping `GET /metrics` sees, and who may
//! scrape.

use reqwest::StatusCode;

use crate::devices::{device_token, link_http, owner, read_until};
use crate::on_both_backends;
use crate::support::{Backend, TestApp};

on_both_backends!(metrics_show_traffic_channels_and_waiting_work);

/// Scrapes `/metrics` as a Prometheus on the same host does.
async fn scrape(app: &TestApp) -> String {
    let resp = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let kind = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    text
}

/// The value of one series (`name{labels}` exactly as written), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

async fn metrics_show_traffic_channels_and_waiting_work(app: &TestApp) {
    let (c, _) = owner(app, "mo@example.com").await;
    // Requests are counted by the route's pattern, never by the path a client sent.
    for _ in 0..3 {
        let e = c
            .raw(
                reqwest::Method::GET,
                "/api/v1/devices/dev_privatename",
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("not_found"));
    }
    for _ in 0..2 {
        app.http.get(app.url("/healthz")).send().await.unwrap();
    }
    let resp = app
        .http
        .get(app.url("/no/such/place"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let text = scrape(app).await;
    assert_eq!(
        sample(
            &text,
            r#"mica_http_requests_total{method="GET",route="/api/v1/devices/{id}",status="404"}"#
        ),
        Some(3.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            r#"mica_http_requests_total{method="GET",route="/healthz",status="200"}"#
        )
        .is_some_and(|n| n >= 2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"mica_http_requests_total{method="GET",route="unmatched",status="404"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        !text.contains("privatename") && !text.contains("no/such"),
        "{text}"
    );
    // Each route's latency is a histogram whose last bucket holds every request.
    assert_eq!(
        sample(
            &text,
            r#"mica_http_request_duration_seconds_bucket{le="+Inf",method="GET",route="/api/v1/devices/{id}"}"#
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(sample(&text, "mica_device_channels"), Some(0.0), "{text}");
    assert!(sample(&text, "mica_http_connections").is_some_and(|n| n >= 1.0));
    assert!(sample(&text, "process_resident_memory_bytes").is_some_and(|n| n > 1e6));
    assert!(
        sample(&text, r#"mica_db_connections{pool="writer",state="busy"}"#).is_some(),
        "{text}"
    );

    // A device's command channel open: counted while it is.
    let (_, device) = link_http(app, &c, 90).await;
    let mut channel = app
        .http
        .get(app.url("/api/v1/device/command-channel"))
        .bearer_auth(device_token(&device))
        .send()
        .await
        .unwrap();
    read_until(&mut channel, "event: hello").await;
    let text = scrape(app).await;
    assert_eq!(sample(&text, "mica_device_channels"), Some(1.0), "{text}");

    // Work waiting for the operator: a recovery request filed and waiting out its week.
    assert_eq!(
        sample(&text, r#"mica_recovery_requests_open{state="waiting"}"#),
        Some(0.0),
        "{text}"
    );
    crate::account_recovery::file_request(app, "mo@example.com", "mo.new@example.net", &[]).await;
    let text = scrape(app).await;
    assert_eq!(
        sample(&text, r#"mica_recovery_requests_open{state="waiting"}"#),
        Some(1.0),
        "{text}"
    );

    // Not for the world: a request a proxy passed on (its peer is loopback, the client is
    // not) finds nothing.
    let resp = app
        .http
        .get(app.url("/metrics"))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

/// With `metrics_token` set, the token is what opens the metrics — from any address, and for
/// a loopback client too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_token_is_required_once_configured() {
    let app = TestApp::start_with(Backend::Sqlite, |cfg| {
        cfg.metrics_token = Some("prometheus-reads-this-7c1f".to_owned().into());
    })
    .await
    .unwrap();
    let get = |token: Option<&'static str>| {
        let mut req = app.http.get(app.url("/metrics"));
        if let Some(t) = token {
            req = req.bearer_auth(t).header("x-forwarded-for", "198.51.100.4");
        }
        req.send()
    };
    assert_eq!(get(None).await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(
        get(Some("not-the-token")).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let resp = get(Some("prometheus-reads-this-7c1f")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    assert!(text.contains("# TYPE mica_http_requests counter"), "{text}");
    assert!(text.contains("mica_build_info{version="), "{text}");
    app.stop().await;
}
