//! The accept loop of `rebuy serve`: HTTP/1.1 connections with a header-read timeout (which is
//! also the idle timeout of a kept-alive connection), a connection cap, and a shutdown that
//! ends within a grace period however many connections are open.
//!
//! Why not `axum::serve`: it has no header or idle timeout and no connection cap, so a client
//! holding idle sockets can exhaust the process's file descriptors and make it unreachable,
//! and graceful shutdown then waits for those sockets forever.
//!
//! The cap evicts rather than refuses: at [`Limits::max_connections`], a new connection closes
//! the oldest connection that has no request in a handler (an idle keep-alive or a socket that
//! has not finished sending its headers). A slow or idle client thus only ever pushes out its
//! own oldest sockets, while a CRM's webhook, which sends its request at once, is answered. Only
//! when every connection is busy is a new one closed at once.
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Timeouts and the connection cap of the listener (`[server]` keys of the same names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest wait for a request's headers, counted from the connection's start or the end of
    /// the previous response (so it is the idle timeout of a kept-alive connection too).
    pub header_timeout: Duration,
    /// Longest wait between two pieces of a request body.
    pub body_timeout: Duration,
    /// Longest time a webhook, OAuth, health or metrics request may take in all, body
    /// included (408 after it). The dashboard is exempt: its first analysis may take longer.
    pub request_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// How long shutdown waits for requests in flight before closing their connections.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(3),
        }
    }
}

/// One open connection as the cap sees it.
#[derive(Default)]
struct Conn {
    /// Requests of this connection inside a handler now.
    busy: AtomicUsize,
    /// Asks the connection to close once it is idle (evicted by the cap).
    evict: CancellationToken,
}

/// The open connections, oldest first (ids grow).
#[derive(Default)]
struct Registry {
    next: AtomicU64,
    conns: Mutex<BTreeMap<u64, Arc<Conn>>>,
}

/// A connection's place in the registry; leaving it frees the place.
struct Slot {
    id: u64,
    conn: Arc<Conn>,
    registry: Arc<Registry>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl Registry {
    /// A place for a new connection, evicting the oldest idle one at the cap; `None` when
    /// every connection is busy.
    fn admit(self: &Arc<Self>, max: usize) -> Option<Slot> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        // Evicted connections close at once when idle; they no longer count.
        let live = conns.values().filter(|c| !c.evict.is_cancelled()).count();
        if live >= max {
            let victim = conns
                .values()
                .find(|c| !c.evict.is_cancelled() && c.busy.load(Ordering::SeqCst) == 0)?;
            victim.evict.cancel();
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::default());
        conns.insert(id, conn.clone());
        Some(Slot {
            id,
            conn,
            registry: self.clone(),
        })
    }
}

/// Counts a request as in a handler until dropped.
struct Busy(Arc<Conn>);

impl Busy {
    fn enter(conn: &Arc<Conn>) -> Busy {
        conn.busy.fetch_add(1, Ordering::SeqCst);
        Busy(conn.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves `app` on `listener` under `limits` until `shutdown` resolves; then stops accepting,
/// lets requests in flight finish for up to [`Limits::shutdown_grace`], and closes whatever is
/// still open.
pub async fn run(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let http = Arc::new(http);
    let registry = Arc::new(Registry::default());
    let soft = CancellationToken::new();
    let hard = CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: not fatal.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let Some(slot) = registry.admit(limits.max_connections) else {
            tracing::debug!("every connection is busy: a new one is closed");
            metrics::counter!("rebuy_connections_refused").increment(1);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tracker.spawn(connection(
            stream,
            app.clone(),
            slot,
            http.clone(),
            soft.clone(),
            hard.clone(),
        ));
    }
    drop(listener);
    soft.cancel();
    tracker.close();
    if tokio::time::timeout(limits.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = tracker.len(),
            "connections still open after the shutdown grace period are closed"
        );
        hard.cancel();
        tracker.wait().await;
    }
    Ok(())
}

/// Serves one connection until it ends, is evicted and idle, or the server stops.
async fn connection(
    stream: tokio::net::TcpStream,
    app: Router,
    slot: Slot,
    http: Arc<hyper::server::conn::http1::Builder>,
    soft: CancellationToken,
    hard: CancellationToken,
) {
    let me = slot.conn.clone();
    // Handlers see the peer's address as axum's `ConnectInfo` (the login's per-address limit).
    let peer = stream.peer_addr().ok();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        if let Some(p) = peer {
            req.extensions_mut().insert(axum::extract::ConnectInfo(p));
        }
        let busy = Busy::enter(&me);
        let app = app.clone();
        async move {
            let res = app.oneshot(req).await?;
            // Busy until the response body is sent (the closure, and `busy`, live as long
            // as the body), so a download is never taken for an idle connection.
            Ok::<_, std::convert::Infallible>(res.map(|b| {
                axum::body::Body::new(http_body_util::BodyExt::map_frame(b, move |f| {
                    let _ = &busy;
                    f
                }))
            }))
        }
    });
    let conn = http
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let mut closing = false;
    // A connection told to close (evicted, or the server stopping) that is still without a
    // request in a handler after this is dropped: a client in the middle of its headers does
    // not close on a graceful shutdown.
    let evicted_idle = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(evicted_idle);
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            // Graceful: an idle connection closes now, a busy one after its response.
            () = soft.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
                evicted_idle.as_mut().reset(tokio::time::Instant::now() + EVICTED_GRACE);
            }
            () = slot.conn.evict.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
                evicted_idle.as_mut().reset(tokio::time::Instant::now() + EVICTED_GRACE);
            }
            () = &mut evicted_idle => {
                if slot.conn.busy.load(Ordering::SeqCst) == 0 {
                    break;
                }
                evicted_idle.as_mut().reset(tokio::time::Instant::now() + EVICTED_GRACE);
            }
            () = hard.cancelled() => break,
        }
    }
    drop(slot);
}

/// How long a connection told to close may stay open while idle.
const EVICTED_GRACE: Duration = Duration::from_millis(200);
