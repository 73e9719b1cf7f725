//! Connections that cannot hold the server hostage.
//!
//! - A client must finish sending a request within the client timeout of its first byte, and a
//!   connection with nothing to say for that long is closed. Otherwise a few thousand sockets
//!   that trickle one header byte at a time (slowloris), or just sit open, would use up the
//!   process's file descriptors; the handlers' own time limit only starts once the headers are in.
//! - The clock covers *reading* the request, not handling it: once the request is read (its body
//!   ended, see [`mark_request_read`]), a slow commit is the server's business and ends in a 503,
//!   never in a reset connection.
//! - A client that stops reading its answers (say 100 pipelined reads of a large call, then
//!   silence) is cut off when a write has made no progress for the client timeout, so it cannot
//!   hold its socket and megabytes of queued answers forever.
//!
//! Each connection checks the clock only when it reads or writes, and keeps one timer. The timer
//! is armed once, when the connection first waits for the client, and re-armed only when it
//! fires, every quarter of the timeout at most. hyper's `header_read_timeout` would arm a timer
//! for every request instead, which cost a measurable share of the CPU per event.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// Accepts TCP connections, at most `--max-connections` open at once, and wraps each in a
/// [`Guarded`] stream. Past the limit, new connections wait in the kernel's backlog until one
/// closes: each connection may hold a few hundred KiB (a request head being read), so their
/// number is what bounds that memory.
pub struct GuardedListener {
    inner: TcpListener,
    timeout: Duration,
    slots: Arc<tokio::sync::Semaphore>,
}

impl GuardedListener {
    pub fn new(inner: TcpListener, timeout: Duration, max_connections: usize) -> Self {
        GuardedListener {
            inner,
            timeout,
            slots: Arc::new(tokio::sync::Semaphore::new(max_connections.max(1))),
        }
    }
}

/// What a request knows of its connection: the client's address, and a way to say that the
/// request has been read.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    read: Arc<AtomicBool>,
    streaming: Arc<AtomicBool>,
}

impl Peer {
    /// The request has been read whole: until its answer starts going out, the connection's
    /// silence is the server's doing, not the client's.
    pub fn request_read(&self) {
        self.read.store(true, Ordering::Release);
    }

    /// The connection carries a long-lived answer (a live stream) until the guard is dropped:
    /// meanwhile a client that sends nothing is only listening, not idle. (A client that stops
    /// *reading* is still cut off.)
    pub fn streaming(&self) -> Streaming {
        self.streaming.store(true, Ordering::Release);
        Streaming(self.streaming.clone())
    }
}

/// See [`Peer::streaming`].
pub struct Streaming(Arc<AtomicBool>);

impl Drop for Streaming {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Listener for GuardedListener {
    type Io = Guarded<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The semaphore is never closed (an error would only leave the connection uncounted).
        let slot = self.slots.clone().acquire_owned().await.ok();
        let (io, addr) = Listener::accept(&mut self.inner).await;
        let mut guarded = Guarded::new(io, self.timeout);
        guarded._slot = slot;
        let peer = Peer {
            addr,
            read: guarded.read.clone(),
            streaming: guarded.streaming.clone(),
        };
        (guarded, peer)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(Peer {
            addr: self.inner.local_addr()?,
            read: Arc::default(),
            streaming: Arc::default(),
        })
    }
}

impl Connected<IncomingStream<'_, GuardedListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, GuardedListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Middleware: tells the connection when the request has been read, which is when its body
/// ends (at once for a request without one), or when the handler drops it unread.
pub async fn mark_request_read(request: Request, next: Next) -> Response {
    let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<Peer>>().cloned() else {
        return next.run(request).await;
    };
    if request.body().is_end_stream() {
        peer.request_read();
        return next.run(request).await;
    }
    let request = request.map(|body| Body::new(OnEnd::new(body, MarkRead(peer))));
    next.run(request).await
}

struct MarkRead(Peer);

impl Drop for MarkRead {
    fn drop(&mut self) {
        self.0.request_read();
    }
}

/// A body that holds `guard` until it has been read to its end, or dropped.
pub struct OnEnd<G> {
    inner: Body,
    guard: Option<G>,
}

impl<G> OnEnd<G> {
    pub fn new(inner: Body, guard: G) -> Self {
        OnEnd {
            inner,
            guard: Some(guard),
        }
    }
}

impl<G: Send + Unpin + 'static> HttpBody for OnEnd<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A stream that fails its reads once the client has been too slow to send, and its writes once
/// it has been too slow to read (see the module docs).
pub struct Guarded<IO> {
    io: IO,
    timeout: Duration,
    /// The first byte of the request being received, until its answer starts going out.
    request_started: Option<Instant>,
    /// Set by the request's handler side once the request is read; cleared by the answer.
    read: Arc<AtomicBool>,
    /// Set while a live stream is being answered (see [`Peer::streaming`]).
    streaming: Arc<AtomicBool>,
    /// The connection's place among `--max-connections`, freed when it closes.
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The last byte received or sent.
    last_activity: Instant,
    /// Since when a write has waited for the client to read.
    write_blocked: Option<Instant>,
    check: Option<Pin<Box<Sleep>>>,
}

impl<IO> Guarded<IO> {
    pub fn new(io: IO, timeout: Duration) -> Self {
        Guarded {
            io,
            timeout,
            request_started: None,
            read: Arc::default(),
            streaming: Arc::default(),
            _slot: None,
            last_activity: Instant::now(),
            write_blocked: None,
            check: None,
        }
    }

    fn check_period(&self) -> Duration {
        (self.timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(5))
    }

    fn sent(&mut self) {
        self.request_started = None;
        self.read.store(false, Ordering::Release);
        self.write_blocked = None;
        self.last_activity = Instant::now();
    }

    /// Whether `since` is a whole timeout ago; otherwise makes sure the timer will wake the
    /// connection to look again.
    fn expired(&mut self, cx: &mut Context<'_>, since: Instant) -> bool {
        let period = self.check_period();
        let check = self
            .check
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(period)));
        while check.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if now.duration_since(since) >= self.timeout {
                return true;
            }
            check.as_mut().reset(now + period);
        }
        false
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let now = Instant::now();
                    this.last_activity = now;
                    this.request_started.get_or_insert(now);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                // A request that is read and being handled, or a stream being listened to: the
                // silence is ours.
                if this.read.load(Ordering::Acquire) || this.streaming.load(Ordering::Acquire) {
                    return Poll::Pending;
                }
                let since = this.request_started.unwrap_or(this.last_activity);
                if this.expired(cx, since) {
                    let what = if this.request_started.is_some() {
                        "the client did not finish its request in time"
                    } else {
                        "the connection was idle too long"
                    };
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)));
                }
                Poll::Pending
            }
            failed => failed,
        }
    }
}

impl<IO: AsyncWrite + Unpin> Guarded<IO> {
    /// Notes what a write did: progress restarts the clocks, a wait for the client to read
    /// becomes an error once it has lasted the client timeout.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Ok(n)) if n > 0 => {
                self.sent();
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                let since = *self.write_blocked.get_or_insert_with(Instant::now);
                if self.expired(cx, since) {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client stopped reading its answers",
                    )));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test(start_paused = true)]
    async fn a_trickling_client_is_cut_off_and_a_steady_one_is_not() {
        let (mut client, server) = duplex(1024);
        let mut guarded = Guarded::new(server, Duration::from_secs(8));
        let mut buf = [0u8; 64];
        // A request trickles in a byte every second: it is cut 8 s after its first byte,
        // although bytes keep coming.
        let trickle = tokio::spawn(async move {
            for _ in 0..30 {
                if client.write_all(b"x").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            client
        });
        let started = Instant::now();
        let error = loop {
            match guarded.read(&mut buf).await {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        let after = started.elapsed();
        assert!(
            after >= Duration::from_secs(8) && after <= Duration::from_secs(11),
            "{after:?}"
        );
        drop(trickle);

        // Requests answered as they come keep the connection alive however long it lives.
        let (mut client, server) = duplex(1024);
        let mut guarded = Guarded::new(server, Duration::from_secs(8));
        for _ in 0..10 {
            client.write_all(b"request").await.unwrap();
            let n = guarded.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"request");
            tokio::time::sleep(Duration::from_secs(5)).await;
            guarded.write_all(b"answer").await.unwrap();
            client.read_exact(&mut buf[..6]).await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_being_handled_is_not_a_slow_client() {
        let (mut client, server) = duplex(1024);
        let mut guarded = Guarded::new(server, Duration::from_secs(2));
        let read = guarded.read.clone();
        let mut buf = [0u8; 64];
        client.write_all(b"request").await.unwrap();
        guarded.read_exact(&mut buf[..7]).await.unwrap();
        read.store(true, Ordering::Release);
        // The handler takes 10 s; the connection waits for it.
        let waited = tokio::time::timeout(Duration::from_secs(10), guarded.read(&mut buf)).await;
        assert!(waited.is_err(), "the read ended: {waited:?}");
        guarded.write_all(b"answer").await.unwrap();
        assert!(!read.load(Ordering::Acquire), "the answer clears the mark");
        // Back to waiting for the client: idle for the timeout closes it.
        let error = guarded.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_cut_off() {
        let (_client, server) = duplex(64);
        let mut guarded = Guarded::new(server, Duration::from_secs(3));
        let started = Instant::now();
        let big = vec![b'x'; 4096];
        let error = guarded.write_all(&big).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        let after = started.elapsed();
        assert!(
            after >= Duration::from_secs(3) && after <= Duration::from_secs(5),
            "{after:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed() {
        let (_client, server) = duplex(64);
        let mut guarded = Guarded::new(server, Duration::from_secs(8));
        let started = Instant::now();
        let error = guarded.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() <= Duration::from_secs(11));
    }
}
