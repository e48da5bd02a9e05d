//! The accept loop: hyper's HTTP/1 server driven directly (as `axum::serve` does it), with the
//! connection hygiene `axum::serve` does not offer (issue 12.5):
//!
//! - a header-read timeout (`http.header_read_timeout_ms`, hyper's
//!   `http1::Builder::header_read_timeout` with tokio's timer): a connection that has not
//!   delivered a whole request head within it is closed. hyper starts this timer whenever the
//!   connection waits for a request head, including between two keep-alive requests, so the
//!   same bound closes slowloris connections and idle keep-alive connections;
//! - a write timeout (`http.write_timeout_ms`, `tokio_io_timeout::TimeoutStream`): a write
//!   to the socket that makes no progress for that long fails and the connection is closed.
//!   Without it a client that pipelines requests and never reads its answers kept its
//!   connection (and a slot of the cap below, and megabytes of socket buffer) for as long as
//!   it liked: hyper's timers only run while a request head is awaited, not while the server
//!   is blocked writing (found by an attack run: 300 such connections held 1.1 GiB of kernel
//!   memory, and 1,024 would have filled the cap);
//! - a cap on open connections (`http.max_connections`): one more is closed at accept, before a
//!   byte is read, and counted in `embedstream_http_connections_refused_total`.
//!
//! Each request carries the peer address (`ConnectInfo<SocketAddr>`) for the rate limiter, as
//! `into_make_service_with_connect_info` did.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use super::ServeConfig;
use crate::metrics::Metrics;

/// Serves `router` on `listener` with the limits of `config` until `shutdown` completes, then
/// lets the requests in flight finish (graceful shutdown) and returns.
///
/// # Errors
/// None today: accept errors are logged and the loop goes on (a full file table passes).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: &ServeConfig,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let header_read_timeout = Duration::from_millis(config.header_read_timeout_ms);
    let write_timeout = Duration::from_millis(config.write_timeout_ms);
    // Connection tasks watch `stop` for the shutdown signal and hold a clone of `open`, so that
    // `open_tx.closed()` completes once the last connection has ended.
    let (stop_tx, stop_rx) = watch::channel(());
    let (open_tx, open_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Per-connection errors (reset before accept) and resource exhaustion (EMFILE)
                // alike: log, breathe, go on.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics.http_connections_refused.inc();
            drop(stream);
            continue;
        };
        let connection = Connection { stream, peer, slot, header_read_timeout, write_timeout };
        tokio::spawn(connection.run(
            router.clone(),
            metrics.clone(),
            stop_rx.clone(),
            open_rx.clone(),
        ));
    }
    drop(listener);
    drop(stop_rx);
    drop(open_rx);
    // Tell every connection to finish its request in flight and close, then wait for them.
    drop(stop_tx);
    open_tx.closed().await;
    Ok(())
}

struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
    header_read_timeout: Duration,
    write_timeout: Duration,
}

impl Connection {
    async fn run(
        self,
        router: Router,
        metrics: Metrics,
        mut stop: watch::Receiver<()>,
        _open: watch::Receiver<()>,
    ) {
        let Self { stream, peer, slot, header_read_timeout, write_timeout } = self;
        metrics.http_connections_open.inc();
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
        let service = router.map_request(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_write_timeout(Some(write_timeout));
        let stream = TokioIo::new(Box::pin(stream));
        let mut connection =
            pin!(builder.serve_connection(stream, TowerToHyperService::new(service)));
        let mut stopping = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, %peer, "connection ended with an error");
                    }
                    break;
                }
                // `changed` fails once the sender is dropped: the shutdown signal.
                _ = stop.changed(), if !stopping => {
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
        metrics.http_connections_open.dec();
        drop(slot);
    }
}
