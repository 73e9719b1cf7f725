//! Connections that cannot hold the server hostage. A client must finish sending a request within
//! the client timeout of its first byte, and a connection with nothing to say for that long is
//! closed. Otherwise a few thousand sockets that trickle one header byte at a time (slowloris),
//! or just sit open, would use up the process's file descriptors; the handlers' own time limit
//! only starts once the headers are in.
//!
//! Each connection checks the clock only when it reads or writes, and keeps one timer. The timer
//! is armed once, when the connection first waits for the client, and re-armed only when it
//! fires, every quarter of the timeout at most. hyper's `header_read_timeout` would arm a timer
//! for every request instead, which cost a measurable share of the CPU per event.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// Accepts TCP connections and wraps each in a [`Guarded`] stream.
pub struct GuardedListener {
    inner: TcpListener,
    timeout: Duration,
}

impl GuardedListener {
    pub fn new(inner: TcpListener, timeout: Duration) -> Self {
        GuardedListener { inner, timeout }
    }
}

impl Listener for GuardedListener {
    type Io = Guarded<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = Listener::accept(&mut self.inner).await;
        (Guarded::new(io, self.timeout), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A stream that fails its reads once the client has been too slow (see the module docs).
pub struct Guarded<IO> {
    io: IO,
    timeout: Duration,
    /// The first byte of the request being received, until its answer starts going out.
    request_started: Option<Instant>,
    /// The last byte received or sent.
    last_activity: Instant,
    check: Option<Pin<Box<Sleep>>>,
}

impl<IO> Guarded<IO> {
    pub fn new(io: IO, timeout: Duration) -> Self {
        Guarded {
            io,
            timeout,
            request_started: None,
            last_activity: Instant::now(),
            check: None,
        }
    }

    fn check_period(&self) -> Duration {
        (self.timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(5))
    }

    fn sent(&mut self) {
        self.request_started = None;
        self.last_activity = Instant::now();
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
                let period = this.check_period();
                let check = this
                    .check
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(period)));
                while check.as_mut().poll(cx).is_ready() {
                    let now = Instant::now();
                    let since = this.request_started.unwrap_or(this.last_activity);
                    if now.duration_since(since) >= this.timeout {
                        let what = if this.request_started.is_some() {
                            "the client did not finish its request in time"
                        } else {
                            "the connection was idle too long"
                        };
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)));
                    }
                    check.as_mut().reset(now + period);
                }
                Poll::Pending
            }
            failed => failed,
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
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.sent();
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.sent();
        }
        written
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
    async fn an_idle_connection_is_closed() {
        let (_client, server) = duplex(64);
        let mut guarded = Guarded::new(server, Duration::from_secs(8));
        let started = Instant::now();
        let error = guarded.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() <= Duration::from_secs(11));
    }
}
