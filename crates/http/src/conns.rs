//! The server's connections and their deadlines, both [`Connections::new`]'s timeout:
//!
//! - a connection with no request in flight gets it to deliver a request head whole — a client
//!   that connects and sends nothing, one that trickles its head a line at a time (slowloris),
//!   a keep-alive connection left idle after its last answer;
//! - a connection whose writes have made no progress for that long is closed too — a client
//!   that asks for an answer and never reads it would otherwise hold its request for ever.
//!
//! A request being served has no head deadline (its body has the per-frame timeout of
//! [`crate::app`]), and neither has an upgraded connection (a device's command channel) nor an
//! event stream, whose answer never ends.
//!
//! hyper has a header-read timeout, but only when it runs with a timer, which `axum::serve` does
//! not give it; serving hyper with a timer instead made the device channel's round trip about a
//! third slower (docs/PERFORMANCE.md). So the deadlines are kept outside hyper, at a cost on a
//! request's path of a few atomic operations, a clock read and one boxed body:
//!
//! - [`Listener`] wraps every accepted socket in a [`Guarded`] stream that shares a small
//!   [`Conn`] state with the request layer and with the sweeper;
//! - [`HeadDeadline`], the outermost layer of [`crate::app`], counts the requests in flight on
//!   the connection: one more when a request arrives, one less when its answer's body has been
//!   handed over (or the request was dropped unanswered); at none, the head deadline starts.
//!   `101 Switching Protocols` ends the head deadline for good;
//! - [`Guarded`] notes when a write first found the socket full, and clears it on progress;
//! - [`Connections::sweep`], run once a second, closes what waited too long: the stream's
//!   reads and writes fail from then on (its task is woken for it), and hyper drops the
//!   connection.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use axum::serve::IncomingStream;
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Every open connection, and the deadline.
pub struct Connections {
    epoch: Instant,
    timeout_ms: u64,
    open: Mutex<Vec<Weak<Conn>>>,
}

impl Connections {
    pub fn new(timeout: Duration) -> Arc<Connections> {
        Arc::new(Connections {
            epoch: Instant::now(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            open: Mutex::new(Vec::new()),
        })
    }

    fn open(&self) -> Arc<Conn> {
        let conn = Arc::new(Conn {
            epoch: self.epoch,
            in_flight: AtomicU32::new(0),
            upgraded: AtomicBool::new(false),
            idle_since: AtomicU64::new(ms_since(self.epoch)),
            stalled_since: AtomicU64::new(0),
            task: AtomicWaker::new(),
            closed: AtomicBool::new(false),
        });
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::downgrade(&conn));
        conn
    }

    /// Connections open now (those that ended are forgotten at the next sweep).
    pub fn open_count(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|c| c.strong_count() > 0)
            .count()
    }

    /// Closes every connection that has waited longer than the deadline for a request head, or
    /// for its writes to move; forgets those that ended. Returns how many it closed.
    pub fn sweep(&self) -> usize {
        let now = ms_since(self.epoch);
        self.close_where(|c| {
            let waited = |since: u64| since != 0 && now.saturating_sub(since) > self.timeout_ms;
            (c.waiting_for_head() && waited(c.idle_since.load(Ordering::Acquire)))
                || waited(c.stalled_since.load(Ordering::Acquire))
        })
    }

    /// Closes every connection waiting for a request head, however long it has waited: the
    /// server is stopping (hyper's graceful shutdown does not end a connection inside its
    /// first head). Requests in flight and upgraded connections go on.
    pub fn close_waiting(&self) -> usize {
        self.close_where(Conn::waiting_for_head)
    }

    fn close_where(&self, close: impl Fn(&Conn) -> bool) -> usize {
        let mut closed = 0;
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.retain(|c| match c.upgrade() {
            None => false,
            Some(c) => {
                if close(&c) && !c.closed.swap(true, Ordering::AcqRel) {
                    c.task.wake();
                    closed += 1;
                }
                true
            }
        });
        // A burst of connections gone: give the memory back.
        if open.capacity() > 1024 && open.len() < open.capacity() / 4 {
            let keep = open.len() * 2;
            open.shrink_to(keep);
        }
        closed
    }
}

fn ms_since(epoch: Instant) -> u64 {
    // Never 0, which means "not set" below.
    u64::try_from(epoch.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// One connection's state, shared by its stream, its requests and the sweeper.
pub struct Conn {
    epoch: Instant,
    /// Requests being served (HTTP/2 can have several at once).
    in_flight: AtomicU32,
    /// Switched protocols (a WebSocket): no head deadline any more.
    upgraded: AtomicBool,
    /// Since when no request has been in flight (ms since the epoch).
    idle_since: AtomicU64,
    /// Since when a write has found the socket full with no progress (0: none has).
    stalled_since: AtomicU64,
    /// The task serving the connection, woken when the sweeper closes it.
    task: AtomicWaker,
    closed: AtomicBool,
}

impl Conn {
    fn waiting_for_head(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && !self.upgraded.load(Ordering::Acquire)
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// A request's answer has all been handed over, or the request was dropped: at none left,
    /// the head deadline starts (its time set first, so the sweeper never pairs "none in
    /// flight" with an older time).
    fn request_ended(&self) {
        self.idle_since
            .store(ms_since(self.epoch), Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The server's listener: accepted sockets get `TCP_NODELAY` and a [`Conn`].
pub struct Listener {
    tcp: TcpListener,
    conns: Arc<Connections>,
}

impl Listener {
    pub fn new(tcp: TcpListener, conns: Arc<Connections>) -> Listener {
        Listener { tcp, conns }
    }
}

impl axum::serve::Listener for Listener {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Guarded, SocketAddr) {
        loop {
            match self.tcp.accept().await {
                Ok((tcp, addr)) => {
                    // Every answer and every device-channel frame goes out when written: with
                    // Nagle's algorithm on, a small frame written while the previous one is
                    // unacknowledged waits for the peer's delayed ACK (up to 40 ms on Linux) —
                    // a command reaching an idle device milliseconds late.
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "setting TCP_NODELAY failed");
                    }
                    let conn = self.conns.open();
                    return (Guarded { tcp, conn }, addr);
                }
                // The peer gave up before it was accepted: nothing to do.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) => {}
                // Out of file descriptors and the like: wait, and accept again.
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// An accepted socket whose reads fail once the sweeper closed it.
pub struct Guarded {
    tcp: TcpStream,
    conn: Arc<Conn>,
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the client took too long")
}

impl Guarded {
    /// Polls an IO step, failing it once the sweeper closed the connection; a step left
    /// pending registers the task, so the close wakes it.
    fn guarded<T>(
        &mut self,
        cx: &mut Context<'_>,
        step: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if self.conn.closed.load(Ordering::Acquire) {
            return Poll::Ready(Err(timed_out()));
        }
        match step(Pin::new(&mut self.tcp), cx) {
            Poll::Pending => {
                // Registered before the second look, so a close in between still wakes us.
                self.conn.task.register(cx.waker());
                if self.conn.closed.load(Ordering::Acquire) {
                    return Poll::Ready(Err(timed_out()));
                }
                Poll::Pending
            }
            ready => ready,
        }
    }

    /// Notes whether a write moved: a full socket starts the stall clock, progress stops it;
    /// bytes written with no request in flight (the end of an answer going out to a slow
    /// reader) restart the head deadline too. A flush that finds nothing to send is no sign of
    /// life: hyper flushes after every read.
    fn wrote<T>(
        &self,
        written: Poll<io::Result<T>>,
        bytes: impl Fn(&T) -> usize,
    ) -> Poll<io::Result<T>> {
        let c = &self.conn;
        match &written {
            Poll::Pending => {
                if c.stalled_since.load(Ordering::Relaxed) == 0 {
                    c.stalled_since.store(ms_since(c.epoch), Ordering::Release);
                }
            }
            Poll::Ready(Ok(n)) => {
                if c.stalled_since.load(Ordering::Relaxed) != 0 {
                    c.stalled_since.store(0, Ordering::Release);
                }
                if bytes(n) > 0 && c.in_flight.load(Ordering::Acquire) == 0 {
                    c.idle_since.store(ms_since(c.epoch), Ordering::Release);
                }
            }
            Poll::Ready(Err(_)) => {}
        }
        written
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().guarded(cx, |tcp, cx| tcp.poll_read(cx, buf))
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = this.guarded(cx, |tcp, cx| tcp.poll_write(cx, buf));
        this.wrote(written, |n| *n)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = this.guarded(cx, |tcp, cx| tcp.poll_write_vectored(cx, bufs));
        this.wrote(written, |n| *n)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = this.guarded(cx, |tcp, cx| tcp.poll_flush(cx));
        this.wrote(flushed, |()| 0)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().guarded(cx, |tcp, cx| tcp.poll_shutdown(cx))
    }
}

/// What a request knows of its connection: the peer's address (handlers see it as
/// `ConnectInfo<SocketAddr>`, which [`HeadDeadline`] puts in its place) and its state.
#[derive(Clone)]
pub struct Peer {
    addr: SocketAddr,
    conn: Arc<Conn>,
}

impl Connected<IncomingStream<'_, Listener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Peer {
        Peer {
            addr: *stream.remote_addr(),
            conn: stream.io().conn.clone(),
        }
    }
}

/// The layer that tells a connection's [`Conn`] when it is busy with a request.
#[derive(Clone)]
pub struct HeadDeadline<S> {
    pub inner: S,
    /// How long a request body may take before it must keep to [`MIN_BODY_RATE`].
    pub body_grace: Duration,
}

impl<S> tower::Service<Request> for HeadDeadline<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Answer<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let conn = req
            .extensions_mut()
            .remove::<ConnectInfo<Peer>>()
            .map(|ConnectInfo(peer)| {
                req.extensions_mut().insert(ConnectInfo(peer.addr));
                peer.conn.request_started();
                peer.conn
            });
        let req = if http_body::Body::is_end_stream(req.body()) {
            req
        } else {
            let grace = self.body_grace;
            req.map(|body| {
                Body::new(MinRate {
                    body,
                    started: Instant::now(),
                    received: 0,
                    grace,
                })
            })
        };
        Answer {
            inner: self.inner.call(req),
            conn,
        }
    }
}

/// The rate a request body must keep to, on average, once past its grace (bytes a second:
/// Apache's `mod_reqtimeout` default). Each frame may still wait the per-frame timeout; this
/// ends a body trickled a byte a frame, which that timeout alone would let run for weeks.
pub const MIN_BODY_RATE: u64 = 500;

/// A request body held to [`MIN_BODY_RATE`] after its grace: each byte received buys 2 ms.
struct MinRate {
    body: Body,
    started: Instant,
    received: u64,
    grace: Duration,
}

impl http_body::Body for MinRate {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &frame {
            if let Some(data) = f.data_ref() {
                this.received += data.len() as u64;
            }
            let allowed = this.grace
                + Duration::from_millis(this.received.saturating_mul(1000) / MIN_BODY_RATE);
            if this.started.elapsed() > allowed {
                return Poll::Ready(Some(Err(axum::Error::new(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the request body arrives too slowly",
                )))));
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// [`HeadDeadline`]'s future: the answer, its body watched for its end.
pub struct Answer<F> {
    inner: F,
    conn: Option<Arc<Conn>>,
}

impl<F> std::future::Future for Answer<F>
where
    F: std::future::Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Poll::Ready(Ok(res)) = Pin::new(&mut this.inner).poll(cx) else {
            return Poll::Pending;
        };
        let Some(conn) = this.conn.take() else {
            return Poll::Ready(Ok(res));
        };
        if res.status() == axum::http::StatusCode::SWITCHING_PROTOCOLS {
            conn.upgraded.store(true, Ordering::Release);
            conn.request_ended();
            return Poll::Ready(Ok(res));
        }
        Poll::Ready(Ok(res.map(|body| {
            Body::new(Sent {
                body,
                conn: Some(conn),
            })
        })))
    }
}

/// A request dropped before its answer (an HTTP/2 stream reset, a connection gone) is no
/// longer in flight.
impl<F> Drop for Answer<F> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.request_ended();
        }
    }
}

/// An answer's body that ends its request once it has all been handed to hyper (or dropped:
/// an error, a client gone).
struct Sent {
    body: Body,
    conn: Option<Arc<Conn>>,
}

impl Sent {
    fn done(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.request_ended();
        }
    }
}

impl Drop for Sent {
    fn drop(&mut self) {
        self.done();
    }
}

impl http_body::Body for Sent {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.done();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
