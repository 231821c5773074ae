//! Metrics for the operator (OP-4), in the OpenMetrics text format (which Prometheus reads) at
//! `GET /metrics`: requests by
//! route and status with their latency, requests in flight, and — read at each scrape — open
//! connections, connected device and sync channels, the database's pools, the work waiting
//! (jobs, account recovery requests), and the process's memory and file descriptors.
//!
//! A route is the pattern it matched (`/api/v1/devices/{id}`), never the path a client sent, so
//! no id or name reaches the metrics and their number stays bounded. The endpoint answers only
//! a client holding `metrics_token` as a bearer token; without one configured it is off. (Not
//! "loopback clients only": behind a reverse proxy on the same host every client is loopback,
//! and a proxy need not say it forwarded.)

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use secrecy::ExposeSecret;

use crate::error::ApiError;
use crate::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: &'static str,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms to ~4 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

/// The server's metrics: what requests update as they go, and what a scrape reads.
pub struct Metrics {
    registry: Registry,
    /// One histogram per method, route and status: its `_count` counts the requests.
    requests: Family<RequestLabels, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
    connections: Gauge,
    device_channels: Gauge,
    sync_channels: Gauge,
    db_connections: Family<PoolLabels, Gauge>,
    jobs: Family<KindLabels, Gauge>,
    recovery_requests: Family<StateLabels, Gauge>,
    resident_memory: Gauge,
    open_fds: Gauge,
    /// One scrape at a time: each resets and refills the gauges it reads.
    scraping: tokio::sync::Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            requests: Family::new_with_constructor(latency_histogram),
            in_flight: Gauge::default(),
            connections: Gauge::default(),
            device_channels: Gauge::default(),
            sync_channels: Gauge::default(),
            db_connections: Family::default(),
            jobs: Family::default(),
            recovery_requests: Family::default(),
            resident_memory: Gauge::default(),
            open_fds: Gauge::default(),
            registry: Registry::default(),
            scraping: tokio::sync::Mutex::new(()),
        };
        m.registry.register_with_unit(
            "mica_http_request_duration",
            "HTTP requests answered (`_count`) and the time from a request reaching its route to \
             its answer's head, by method, matched route and status",
            Unit::Seconds,
            m.requests.clone(),
        );
        m.registry.register(
            "mica_http_requests_in_flight",
            "HTTP requests being handled now",
            m.in_flight.clone(),
        );
        m.registry.register(
            "mica_http_connections",
            "Client connections open now (WebSocket channels included)",
            m.connections.clone(),
        );
        m.registry.register(
            "mica_device_channels",
            "Linked devices whose command channel is connected to this node",
            m.device_channels.clone(),
        );
        m.registry.register(
            "mica_sync_channels",
            "Signed-in apps whose sync channel is connected to this node",
            m.sync_channels.clone(),
        );
        m.registry.register(
            "mica_db_connections",
            "Database connections, by pool and whether in use",
            m.db_connections.clone(),
        );
        m.registry.register(
            "mica_jobs_queued",
            "Background jobs waiting or running, by kind",
            m.jobs.clone(),
        );
        m.registry.register(
            "mica_recovery_requests_open",
            "Account recovery requests still open, by state (in_review waits for an operator)",
            m.recovery_requests.clone(),
        );
        m.registry.register_with_unit(
            "process_resident_memory",
            "Resident memory of the process",
            Unit::Bytes,
            m.resident_memory.clone(),
        );
        m.registry.register(
            "process_open_fds",
            "File descriptors the process has open",
            m.open_fds.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        m.registry
            .register("mica_build_info", "The version running", build);
        let started = Gauge::<f64, AtomicU64>::default();
        started.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default(),
        );
        m.registry.register_with_unit(
            "process_start_time",
            "When the process started, since the Unix epoch",
            Unit::Seconds,
            started,
        );
        m
    }

    /// Reads what is measured at scrape time, then writes everything out.
    async fn render(&self, app: &AppState) -> Result<String, ApiError> {
        let _one = self.scraping.lock().await;
        self.connections.set(gauge(app.connections.open_count()));
        self.device_channels.set(gauge(app.devices.connections()));
        self.sync_channels.set(gauge(app.cloud.hub().listeners()));
        for (pool, size, idle) in app.store.pool_stats() {
            let busy = usize::try_from(size)
                .unwrap_or(usize::MAX)
                .saturating_sub(idle);
            self.db_connections
                .get_or_create(&PoolLabels {
                    pool,
                    state: "idle",
                })
                .set(gauge(idle));
            self.db_connections
                .get_or_create(&PoolLabels {
                    pool,
                    state: "busy",
                })
                .set(gauge(busy));
        }
        // Kinds and states that emptied read 0 rather than keep their last count.
        self.jobs.clear();
        for state in mica_store::RECOVERY_OPEN {
            self.recovery_requests
                .get_or_create(&StateLabels {
                    state: (*state).into(),
                })
                .set(0);
        }
        let backlog = app.store.backlog().await.map_err(|e| {
            tracing::warn!(error = %e, "metrics: cannot read the backlog");
            ApiError::internal()
        })?;
        for (what, name, n) in backlog {
            match what.as_str() {
                "job" => self.jobs.get_or_create(&KindLabels { kind: name }).set(n),
                _ => self
                    .recovery_requests
                    .get_or_create(&StateLabels { state: name })
                    .set(n),
            };
        }
        if let Some(rss) = resident_memory() {
            self.resident_memory.set(rss);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(gauge(fds.count()));
        }
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry).map_err(|e| {
            tracing::warn!(error = %e, "metrics: cannot encode");
            ApiError::internal()
        })?;
        Ok(out)
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `VmRSS` of `/proc/self/status`, in bytes (Linux).
fn resident_memory() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb.saturating_mul(1024))
}

/// The methods a label may name; anything else is `other`, so a client cannot grow the
/// metrics by inventing methods.
fn method_label(m: &Method) -> &'static str {
    match m.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        "PROPFIND" => "PROPFIND",
        "PROPPATCH" => "PROPPATCH",
        "MKCOL" => "MKCOL",
        "COPY" => "COPY",
        "MOVE" => "MOVE",
        "LOCK" => "LOCK",
        "UNLOCK" => "UNLOCK",
        _ => "other",
    }
}

/// Counts and times every request by method, the route it matched and its answer's status.
/// Applied with `Router::layer`, so it wraps each route (where the router has put the route's
/// [`MatchedPath`] in the request) and the fallback (`unmatched`). A hand-written service
/// rather than `from_fn`: one boxed future and one small string a request, nothing more.
#[derive(Clone)]
pub(crate) struct Track(pub(crate) std::sync::Arc<Metrics>);

impl<S> tower::Layer<S> for Track {
    type Service = TrackService<S>;

    fn layer(&self, inner: S) -> TrackService<S> {
        TrackService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct TrackService<S> {
    inner: S,
    metrics: std::sync::Arc<Metrics>,
}

impl<S> tower::Service<Request> for TrackService<S>
where
    S: tower::Service<Request, Response = Response> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response, S::Error>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let method = method_label(req.method());
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", MatchedPath::as_str)
            .to_owned();
        let mut pending = Pending {
            metrics: self.metrics.clone(),
            labels: Some((method, route)),
            start: Instant::now(),
        };
        pending.metrics.in_flight.inc();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let res = answer.await?;
            pending.done(res.status().as_u16());
            Ok(res)
        })
    }
}

/// A request being handled: in flight until it is answered or dropped (a client that went
/// away, a connection closed under it: not counted), and counted as a `500` when its handler
/// panics (the panic catcher outside the router answers it so).
struct Pending {
    metrics: std::sync::Arc<Metrics>,
    labels: Option<(&'static str, String)>,
    start: Instant,
}

impl Pending {
    fn done(&mut self, status: u16) {
        if let Some((method, route)) = self.labels.take() {
            self.metrics
                .requests
                .get_or_create(&RequestLabels {
                    method,
                    route,
                    status,
                })
                .observe(self.start.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
        if std::thread::panicking() {
            self.done(500);
        }
    }
}

/// `GET /metrics`: the OpenMetrics text format, for a client with the configured
/// `metrics_token`; anyone else (and everyone, when no token is configured) gets `404`.
pub(crate) async fn scrape(
    State(app): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let allowed = app.metrics_token.as_ref().is_some_and(|token| {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .is_some_and(|(_, given)| {
                // Compared as hashes: the time taken says nothing about the token.
                mica_core::crypto::token_hash(given.trim())
                    == mica_core::crypto::token_hash(token.expose_secret())
            })
    });
    if !allowed {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "nothing is here",
        ));
    }
    let body = app.metrics.render(&app).await?;
    let mut res = body.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_list_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(
            method_label(&Method::from_bytes(b"PROPFIND").unwrap_or(Method::GET)),
            "PROPFIND"
        );
        assert_eq!(
            method_label(&Method::from_bytes(b"BREW").unwrap_or(Method::GET)),
            "other"
        );
    }

    #[test]
    fn the_format_is_prometheus_text() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&RequestLabels {
                method: "GET",
                route: "/healthz".into(),
                status: 200,
            })
            .observe(0.001);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap_or_default();
        assert!(
            out.contains(
                "mica_http_request_duration_seconds_count{method=\"GET\",route=\"/healthz\",status=\"200\"} 1"
            ),
            "{out}"
        );
        assert!(out.contains("# TYPE mica_build_info gauge"), "{out}");
    }
}
