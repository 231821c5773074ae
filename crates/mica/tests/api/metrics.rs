//! The operator's metrics (OP-4): what a Prometheus scraping `GET /metrics` sees, and who may
//! scrape.

use reqwest::StatusCode;

use crate::devices::{device_token, link_http, owner, read_until};
use crate::support::{Backend, TestApp};

const TOKEN: &str = "prometheus-reads-this-7c1f";

async fn with_token(backend: Backend) -> Option<TestApp> {
    let app = TestApp::start_with(backend, |cfg| {
        cfg.metrics_token = Some(TOKEN.to_owned().into());
    })
    .await;
    if app.is_none() {
        eprintln!("MICA_TEST_POSTGRES_URL is not set: PostgreSQL variant skipped");
    }
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_traffic_channels_and_waiting_work_sqlite() {
    let app = with_token(Backend::Sqlite).await.unwrap();
    metrics_show_traffic_channels_and_waiting_work(&app).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_traffic_channels_and_waiting_work_postgres() {
    if let Some(app) = with_token(Backend::Postgres).await {
        metrics_show_traffic_channels_and_waiting_work(&app).await;
        app.stop().await;
    }
}

/// Scrapes `/metrics` as Prometheus does, with the token.
async fn scrape(app: &TestApp) -> String {
    let resp = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
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
    // Requests are counted (each histogram's `_count`) by the route's pattern, never by the
    // path a client sent.
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
            r#"mica_http_request_duration_seconds_count{method="GET",route="/api/v1/devices/{id}",status="404"}"#
        ),
        Some(3.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            r#"mica_http_request_duration_seconds_count{method="GET",route="/healthz",status="200"}"#
        )
        .is_some_and(|n| n >= 2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"mica_http_request_duration_seconds_count{method="GET",route="unmatched",status="404"}"#
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
            r#"mica_http_request_duration_seconds_bucket{le="+Inf",method="GET",route="/api/v1/devices/{id}",status="404"}"#
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(sample(&text, "mica_device_channels"), Some(0.0), "{text}");
    assert!(sample(&text, "mica_http_connections").is_some_and(|n| n >= 1.0));
    // The scrape itself is in flight while it runs; nothing else is.
    assert_eq!(
        sample(&text, "mica_http_requests_in_flight"),
        Some(1.0),
        "{text}"
    );
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
}

/// The token is what opens the metrics — whatever the address — and without one configured
/// they are off: behind a reverse proxy on the same host every client looks local.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_metrics_token_opens_the_metrics() {
    let off = TestApp::start(Backend::Sqlite).await.unwrap();
    let resp = off.http.get(off.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = off
        .http
        .get(off.url("/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    off.stop().await;

    let app = with_token(Backend::Sqlite).await.unwrap();
    let get = |auth: Option<String>| {
        let mut req = app
            .http
            .get(app.url("/metrics"))
            .header("x-forwarded-for", "198.51.100.4");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    assert_eq!(get(None).await.unwrap().status(), StatusCode::NOT_FOUND);
    for wrong in ["Bearer not-the-token", "Basic cHJvbWV0aGV1czp4", "Bearer"] {
        let status = get(Some(wrong.into())).await.unwrap().status();
        assert_eq!(status, StatusCode::NOT_FOUND, "{wrong}");
    }
    // The scheme's name is case-insensitive, as HTTP says.
    let resp = get(Some(format!("bearer {TOKEN}"))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("# TYPE mica_http_request_duration_seconds histogram"),
        "{text}"
    );
    assert!(text.contains("mica_build_info{version="), "{text}");
    app.stop().await;
}
