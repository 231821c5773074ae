//! The server's connections and their one deadline: a connection waiting for a request head
//! gets [`Connections::new`]'s timeout to deliver it whole, then it is closed.
//!
//! That covers a client that connects and sends nothing, one that trickles its head a line at
//! a time (slowloris), and a keep-alive connection left idle after its last answer. A request
//! being served has no deadline here (its body has the per-frame timeout of
//! [`crate::app`]), and neither has an upgraded connection (a device's command channel) nor an
//! event stream, whose answer never ends.
//!
//! hyper has a header-read timeout, but only when it runs with a timer, which `axum::serve` does
//! not give it; serving hyper with a timer instead made the device channel's round trip about a
//! third slower (docs/PERFORMANCE.md). So the deadline is kept outside hyper, at no cost on a
//! request's path but two atomic stores:
//!
//! - [`Listener`] wraps every accepted socket in a [`Guarded`] stream that shares a small
//!   [`Conn`] state with the request layer and with the sweeper;
//! - [`HeadDeadline`], the outermost layer of [`crate::app`], marks the connection busy when a
//!   request arrives, and waiting for a head again when its answer's body has been sent (or
//!   streaming for good, on `101 Switching Protocols`);
//! - [`Connections::sweep`], run once a second, closes what waited too long: the stream's next
//!   read fails (its reader is woken for it), and hyper drops the connection.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
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

/// Waiting for a request head: the deadline runs.
const HEAD: u8 = 0;
/// A request is being served.
const BUSY: u8 = 1;
/// Upgraded (a WebSocket): no deadline any more.
const STREAM: u8 = 2;

/// Every open connection, and the deadline for a request head.
pub struct Connections {
    epoch: Instant,
    timeout_ms: u64,
    open: Mutex<Vec<Weak<Conn>>>,
}

impl Connections {
    pub fn new(head_timeout: Duration) -> Arc<Connections> {
        Arc::new(Connections {
            epoch: Instant::now(),
            timeout_ms: u64::try_from(head_timeout.as_millis()).unwrap_or(u64::MAX),
            open: Mutex::new(Vec::new()),
        })
    }

    fn open(&self) -> Arc<Conn> {
        let conn = Arc::new(Conn {
            epoch: self.epoch,
            phase: AtomicU8::new(HEAD),
            since_ms: AtomicU64::new(0),
            reader: AtomicWaker::new(),
            closed: AtomicBool::new(false),
        });
        conn.wait_for_head();
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::downgrade(&conn));
        conn
    }

    /// Closes every connection that has waited longer than the deadline for a request head,
    /// and forgets those that ended. Returns how many it closed.
    pub fn sweep(&self) -> usize {
        let now = ms_since(self.epoch);
        let mut closed = 0;
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|c| match c.upgrade() {
                None => false,
                Some(c) => {
                    if c.phase.load(Ordering::Acquire) == HEAD
                        && now.saturating_sub(c.since_ms.load(Ordering::Acquire)) > self.timeout_ms
                        && !c.closed.swap(true, Ordering::AcqRel)
                    {
                        c.reader.wake();
                        closed += 1;
                    }
                    true
                }
            });
        closed
    }
}

fn ms_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One connection's state, shared by its stream, its requests and the sweeper.
pub struct Conn {
    epoch: Instant,
    phase: AtomicU8,
    /// When it started waiting for a head (ms since the epoch).
    since_ms: AtomicU64,
    /// The task reading the connection, woken when the sweeper closes it.
    reader: AtomicWaker,
    closed: AtomicBool,
}

impl Conn {
    fn wait_for_head(&self) {
        self.since_ms.store(ms_since(self.epoch), Ordering::Release);
        self.phase.store(HEAD, Ordering::Release);
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
    io::Error::new(io::ErrorKind::TimedOut, "no request head in time")
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.conn.closed.load(Ordering::Acquire) {
            return Poll::Ready(Err(timed_out()));
        }
        match Pin::new(&mut this.tcp).poll_read(cx, buf) {
            Poll::Pending => {
                // Registered before the second look, so a close in between still wakes us.
                this.conn.reader.register(cx.waker());
                if this.conn.closed.load(Ordering::Acquire) {
                    return Poll::Ready(Err(timed_out()));
                }
                Poll::Pending
            }
            ready => ready,
        }
    }
}

impl Guarded {
    /// The end of an answer can still be going out to a slow reader after its body was handed
    /// over: while it moves, the connection is not idle.
    fn wrote(&self, written: &Poll<io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(n)) if *n > 0)
            && self.conn.phase.load(Ordering::Acquire) == HEAD
        {
            self.conn.wait_for_head();
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.tcp).poll_write(cx, buf);
        this.wrote(&written);
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        this.wrote(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
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
pub struct HeadDeadline<S>(pub S);

impl<S> tower::Service<Request> for HeadDeadline<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Answer<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let conn = req
            .extensions_mut()
            .remove::<ConnectInfo<Peer>>()
            .map(|ConnectInfo(peer)| {
                req.extensions_mut().insert(ConnectInfo(peer.addr));
                peer.conn.phase.store(BUSY, Ordering::Release);
                peer.conn
            });
        Answer {
            inner: self.0.call(req),
            conn,
        }
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
            conn.phase.store(STREAM, Ordering::Release);
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

/// An answer's body that sets its connection waiting for the next head once it has all been
/// handed to hyper (or dropped: an error, a client gone).
struct Sent {
    body: Body,
    conn: Option<Arc<Conn>>,
}

impl Sent {
    fn done(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.wait_for_head();
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
