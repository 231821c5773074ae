//! Metrics for the operator (OP-4), in the OpenMetrics text format (which Prometheus reads) at
//! `GET /metrics`: requests by
//! route and status with their latency, requests in flight, and — read at each scrape — open
//! connections, connected device and sync channels, the database's pools, the work waiting
//! (jobs, account recovery requests), and the process's memory and file descriptors.
//!
//! A route is the pattern it matched (`/api/v1/devices/{id}`), never the path a client sent, so
//! no id or name reaches the metrics and their number stays bounded. Without
//! `metrics_token` the endpoint answers only a client on a loopback address (a Prometheus on
//! the same host); with one, any client holding it as a bearer token.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
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
struct RouteLabels {
    method: &'static str,
    route: String,
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
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
    connections: Gauge,
    device_channels: Gauge,
    sync_channels: Gauge,
    db_connections: Family<PoolLabels, Gauge>,
    jobs: Family<KindLabels, Gauge>,
    recovery_requests: Family<StateLabels, Gauge>,
    resident_memory: Gauge,
    open_fds: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
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
        };
        m.registry.register(
            "mica_http_requests",
            "HTTP requests answered, by method, matched route and status",
            m.requests.clone(),
        );
        m.registry.register_with_unit(
            "mica_http_request_duration",
            "Time from a request's arrival to its answer's head, by method and matched route",
            Unit::Seconds,
            m.latency.clone(),
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
        for state in ["waiting", "in_review", "approved"] {
            self.recovery_requests
                .get_or_create(&StateLabels {
                    state: state.into(),
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

/// The route a request matched, carried on its answer from inside the router to [`track`].
#[derive(Clone)]
pub(crate) struct RouteTag(MatchedPath);

/// Inside the router (a route layer): tags the answer with the route that matched.
pub(crate) async fn tag_route(path: Option<MatchedPath>, req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    if let Some(p) = path {
        res.extensions_mut().insert(RouteTag(p));
    }
    res
}

/// Around the router: counts each request by method, route and status, and times it.
pub(crate) async fn track(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let m = &app.metrics;
    let method = method_label(req.method());
    let start = Instant::now();
    m.in_flight.inc();
    let res = next.run(req).await;
    m.in_flight.dec();
    let route = res
        .extensions()
        .get::<RouteTag>()
        .map_or("unmatched", |t| t.0.as_str())
        .to_owned();
    m.latency
        .get_or_create(&RouteLabels {
            method,
            route: route.clone(),
        })
        .observe(start.elapsed().as_secs_f64());
    m.requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: res.status().as_u16(),
        })
        .inc();
    res
}

/// `GET /metrics`: the OpenMetrics text format. Only a loopback client, or one with the
/// configured `metrics_token`; anyone else gets `404` (nothing here for them).
pub(crate) async fn scrape(
    State(app): State<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    let headers = req.headers();
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>();
    let allowed = match &app.metrics_token {
        Some(token) => headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| {
                // Compared as hashes: the time taken says nothing about the token.
                mica_core::crypto::token_hash(given.trim())
                    == mica_core::crypto::token_hash(token.expose_secret())
            }),
        None => peer.is_some_and(|p| p.0.ip().is_loopback()) && !forwarded(headers),
    };
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

/// Whether a proxy passed the request on (then the loopback peer is the proxy, not the client).
fn forwarded(headers: &axum::http::HeaderMap) -> bool {
    headers.contains_key("x-forwarded-for") || headers.contains_key(header::FORWARDED)
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
            .inc();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap_or_default();
        assert!(
            out.contains(
                "mica_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 1"
            ),
            "{out}"
        );
        assert!(out.contains("# TYPE mica_build_info gauge"), "{out}");
    }
}
