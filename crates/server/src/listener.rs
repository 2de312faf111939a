//! The accept loop: HTTP/1.1 connections with the limits a server facing careless or hostile
//! clients needs, and a graceful drain on SIGTERM or Ctrl-C.
//!
//! - At most `max_connections` connections at once; more wait in the kernel's backlog (each
//!   open connection costs a descriptor, and running out of descriptors stops everything,
//!   `/health` included).
//! - A connection with no request in flight is closed after `idle_timeout` if it sends nothing
//!   (keep-alive, or a client that connects and waits), and after `header_timeout` once it began
//!   a request whose head has not arrived whole (slowloris).
//! - A request body that stalls for `body_timeout` between two pieces fails (a client announcing
//!   100 MB and sending ten bytes).
//! - On shutdown: no new connections, idle ones closed, requests in flight (streams included)
//!   given `drain_timeout` to finish.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower::ServiceExt;

/// Connection limits (see the module's head).
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub drain_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: default_max_connections(),
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Three quarters of the process's descriptor limit (the rest for model files, the database,
/// upstream connections), between 16 and 10,000.
fn default_max_connections() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits").ok().and_then(|limits| {
        limits
            .lines()
            .find(|l| l.starts_with("Max open files"))?
            .split_whitespace()
            .nth(3)?
            .parse::<usize>()
            .ok()
    });
    (soft.unwrap_or(1024) / 4 * 3).clamp(16, 10_000)
}

/// What the watchdog of one connection knows.
struct ConnState {
    in_flight: AtomicUsize,
    /// When the connection last became idle (opened, or its last response ended), and when the
    /// first byte since then arrived.
    idle: Mutex<(Instant, Option<Instant>)>,
}

impl ConnState {
    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    fn request_ended(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            *idle = (Instant::now(), None);
        }
    }

    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.1.get_or_insert_with(Instant::now);
        }
    }

    /// Whether the connection has waited too long for a request (see the module's head).
    fn expired(&self, limits: &ConnectionLimits) -> bool {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return false;
        }
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        match idle.1 {
            Some(first_byte) => first_byte.elapsed() >= limits.header_timeout,
            None => idle.0.elapsed() >= limits.idle_timeout,
        }
    }
}

/// The socket, telling its connection's state when bytes arrive.
struct Watched {
    stream: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.state.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A response body that tells its connection when it is done (sent whole, or dropped).
struct Tracked {
    body: Body,
    state: Arc<ConnState>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.state.request_ended();
    }
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// What ends the server: SIGTERM (`docker stop`, systemd) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then drains (see the module's head).
pub async fn run(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let router = router.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(limits.body_timeout));
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was accepted: wait a
                    // moment rather than spin.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        serve_connection(stream, peer, router.clone(), limits, &graceful, permit);
    }
    drop(listener);
    tracing::info!("shutting down: waiting for requests in flight");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("every request finished"),
        () = tokio::time::sleep(limits.drain_timeout) => {
            tracing::warn!("requests still in flight after {:?}: stopping them", limits.drain_timeout);
        }
    }
    Ok(())
}

fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let state =
        Arc::new(ConnState { in_flight: AtomicUsize::new(0), idle: Mutex::new((Instant::now(), None)) });
    let io = TokioIo::new(Watched { stream, state: state.clone() });
    let service_state = state.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let (router, state) = (router.clone(), service_state.clone());
        state.request_started();
        async move {
            let response =
                router.oneshot(req.map(Body::new)).await.unwrap_or_else(|e: Infallible| match e {});
            Ok::<_, Infallible>(response.map(|body| Tracked { body, state }))
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(io, service);
    let connection = graceful.watch(connection);
    tokio::spawn(async move {
        let watchdog = async {
            let tick = (limits.idle_timeout.min(limits.header_timeout) / 4).max(Duration::from_millis(50));
            loop {
                tokio::time::sleep(tick).await;
                if state.expired(&limits) {
                    return;
                }
            }
        };
        tokio::select! {
            result = connection => {
                if let Err(e) = result {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
            }
            () = watchdog => tracing::debug!(%peer, "connection closed: no request in time"),
        }
        drop(permit);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_expires_idle_or_mid_head_but_never_mid_request() {
        let limits = ConnectionLimits {
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            ..ConnectionLimits::default()
        };
        let state = ConnState { in_flight: AtomicUsize::new(0), idle: Mutex::new((Instant::now(), None)) };
        let ago = |s: u64| Instant::now() - Duration::from_secs(s);
        let set = |idle_since: Instant, first_byte: Option<Instant>| {
            *state.idle.lock().unwrap() = (idle_since, first_byte);
        };
        assert!(!state.expired(&limits), "just opened");
        set(ago(61), None);
        assert!(state.expired(&limits), "silent for longer than idle_timeout");
        set(ago(30), Some(ago(11)));
        assert!(state.expired(&limits), "a head that takes longer than header_timeout");
        set(ago(30), Some(ago(5)));
        assert!(!state.expired(&limits), "a head still within header_timeout");
        state.request_started();
        set(ago(600), Some(ago(600)));
        assert!(!state.expired(&limits), "never while a request is in flight");
        state.request_ended();
        assert!(!state.expired(&limits), "idle again, counted from now");
        state.bytes_read();
        assert!(state.idle.lock().unwrap().1.is_some(), "the next head began");
    }

    #[test]
    fn the_connection_cap_follows_the_descriptor_limit() {
        let cap = default_max_connections();
        assert!((16..=10_000).contains(&cap), "{cap}");
    }
}
