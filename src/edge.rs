//! The HTTP edge: the accept loop, the cap on open connections, and the per-connection
//! header and idle timeouts. Routing and the request timeout live in `api`; this
//! module sees connections and bytes, never routes.
//!
//! Why our own loop instead of `axum::serve`: axum's loop holds every connection for
//! as long as the client likes. 3,000 clients that each send half a request line
//! would hold 3,000 file descriptors and tasks forever.
//!
//! Each connection is in one of three phases, watched by one timer:
//! - **awaiting a head**: from the connection's accept, or from the first byte after
//!   an idle period, the client has `header_timeout` to send the whole head;
//! - **busy**: a request is being served (its response body included: `/events` is
//!   busy as long as it streams); no timer here, the request timeout is per route;
//! - **idle**: between requests on a keep-alive connection, for at most `idle_timeout`.
//!
//! hyper's own `header_read_timeout` is not used: it starts as soon as a connection is
//! ready for the next request, so it would also close idle keep-alive connections
//! after the (short) header timeout, and the two limits could not differ.
//!
//! Over the connection cap the loop stops accepting until a connection ends: new
//! clients wait in the kernel's listen backlog instead of being refused, so a burst
//! is served late rather than failed, and slow clients free their slots within the
//! header timeout.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

/// The limits of the edge (from `BOILERHOUSE_HTTP_*`).
#[derive(Debug, Clone, Copy)]
pub struct EdgeLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl EdgeLimits {
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            header_timeout: config.header_timeout(),
            idle_timeout: config.http_idle_timeout(),
            max_connections: config.http_max_connections,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes; then stops accepting, asks
/// every connection to finish its current request, and waits for them.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: EdgeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    raise_fd_limit(limits.max_connections);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    // HTTP/1 only, as before (axum is built without HTTP/2). hyper's header timeout is
    // off: the watchdog does that job (see the module doc).
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(None);
    let mut shutdown = pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // never closed; nothing left to serve if it were
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: activity.clone(),
        });
        let service = hyper::service::service_fn({
            let (app, activity) = (app.clone(), activity.clone());
            move |req: axum::http::Request<Incoming>| {
                let busy = Busy::begin(activity.clone());
                let app = app.clone();
                async move {
                    let response = app.oneshot(req.map(Body::new)).await?;
                    Ok::<_, std::convert::Infallible>(
                        response.map(|inner| Tracked { inner, _busy: busy }),
                    )
                }
            }
        });
        let conn = builder.serve_connection(io, service);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            tokio::select! {
                result = watcher.watch(conn) => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                closed = watchdog(&activity, limits) => {
                    tracing::debug!(%peer, reason = closed, "connection closed");
                }
            }
        });
    }
    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "stopped accepting; waiting for open requests"
    );
    graceful.shutdown().await;
    Ok(())
}

/// A failed accept is about one client (it hung up) or about us (out of file
/// descriptors); in the latter case retrying at once would spin.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused
    ) {
        return;
    }
    tracing::warn!(error = %e, "accept failed; retrying in 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Each connection needs a file descriptor: make sure the soft limit allows the cap
/// plus the daemon's own files, up to the hard limit.
fn raise_fd_limit(max_connections: usize) {
    let wanted = (max_connections as u64).saturating_add(1024);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 || lim.rlim_cur >= wanted {
        return;
    }
    let target = wanted.min(lim.rlim_max);
    if target > lim.rlim_cur {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return;
        }
    }
    if target < wanted {
        tracing::warn!(
            limit = target,
            max_connections,
            "the open-file limit is below BOILERHOUSE_HTTP_MAX_CONNECTIONS + 1024; accepts will fail before the cap"
        );
    }
}

/// What a connection is doing, shared by its socket, its service and its watchdog.
struct Activity {
    phase: Mutex<Phase>,
    changed: Notify,
}

#[derive(Clone, Copy)]
enum Phase {
    AwaitingHead { since: Instant },
    Busy { requests: usize },
    Idle { since: Instant },
}

impl Activity {
    fn new() -> Self {
        Self {
            phase: Mutex::new(Phase::AwaitingHead {
                since: Instant::now(),
            }),
            changed: Notify::new(),
        }
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        // The lock guards a plain value; a panic elsewhere cannot leave it half-written.
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, phase: Phase) {
        *self.phase() = phase;
        self.changed.notify_one();
    }

    /// Bytes arrived: on an idle connection they start the next request's head.
    fn read_some(&self) {
        let mut phase = self.phase();
        if let Phase::Idle { .. } = *phase {
            *phase = Phase::AwaitingHead {
                since: Instant::now(),
            };
            drop(phase);
            self.changed.notify_one();
        }
    }
}

/// Resolves when the connection has overstayed its phase; says which limit it hit.
async fn watchdog(activity: &Activity, limits: EdgeLimits) -> &'static str {
    loop {
        let deadline = match *activity.phase() {
            Phase::AwaitingHead { since } => {
                Some((since + limits.header_timeout, "header timeout"))
            }
            Phase::Idle { since } => Some((since + limits.idle_timeout, "idle timeout")),
            Phase::Busy { .. } => None,
        };
        // A phase change wakes the loop (notify_one keeps a permit, so none is
        // missed); the deadline is then computed again from the new phase.
        match deadline {
            Some((at, reason)) if Instant::now() >= at => return reason,
            Some((at, _)) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = activity.changed.notified() => {}
                }
            }
            None => activity.changed.notified().await,
        }
    }
}

/// One request in progress on a connection: from the service call to the end (or
/// drop) of its response body.
struct Busy(Arc<Activity>);

impl Busy {
    fn begin(activity: Arc<Activity>) -> Self {
        {
            let mut phase = activity.phase();
            *phase = match *phase {
                Phase::Busy { requests } => Phase::Busy {
                    requests: requests + 1,
                },
                _ => Phase::Busy { requests: 1 },
            };
        }
        activity.changed.notify_one();
        Busy(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let next = match *self.0.phase() {
            Phase::Busy { requests } if requests > 1 => Phase::Busy {
                requests: requests - 1,
            },
            _ => Phase::Idle {
                since: Instant::now(),
            },
        };
        self.0.set(next);
    }
}

/// A response body that keeps its connection busy until it is finished or dropped.
struct Tracked {
    inner: Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, telling the connection's [`Activity`] when bytes arrive.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read_some();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(header_ms: u64, idle_ms: u64) -> EdgeLimits {
        EdgeLimits {
            header_timeout: Duration::from_millis(header_ms),
            idle_timeout: Duration::from_millis(idle_ms),
            max_connections: 1,
        }
    }

    async fn bounded(f: impl Future<Output = &'static str>) -> &'static str {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("the watchdog never fired")
    }

    #[tokio::test]
    async fn a_fresh_connection_has_the_header_timeout() {
        let activity = Activity::new();
        assert_eq!(
            bounded(watchdog(&activity, limits(20, 60_000))).await,
            "header timeout"
        );
    }

    #[tokio::test]
    async fn a_busy_connection_never_expires_and_goes_idle_when_its_response_ends() {
        let activity = Arc::new(Activity::new());
        let busy = Busy::begin(activity.clone());
        let second = Busy::begin(activity.clone());
        let dog = watchdog(&activity, limits(10, 10));
        let mut dog = pin!(dog);
        // Far past both limits while busy: nothing fires.
        assert!(tokio::time::timeout(Duration::from_millis(100), &mut dog)
            .await
            .is_err());
        drop(busy);
        assert!(matches!(*activity.phase(), Phase::Busy { requests: 1 }));
        drop(second);
        assert_eq!(bounded(dog).await, "idle timeout");
    }

    #[tokio::test]
    async fn bytes_on_an_idle_connection_start_the_header_timeout() {
        let activity = Arc::new(Activity::new());
        drop(Busy::begin(activity.clone()));
        activity.read_some();
        assert!(matches!(*activity.phase(), Phase::AwaitingHead { .. }));
        assert_eq!(
            bounded(watchdog(&activity, limits(20, 60_000))).await,
            "header timeout"
        );
    }
}
