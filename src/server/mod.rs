//! The accept loop: serves the warp routes over plain TCP or over TLS (rustls),
//! keeps hostile or forgetful clients from holding the connection slots, and
//! shuts down gracefully — stop accepting, let requests in flight finish (and
//! their batches commit), then return.
//!
//! Slots: at most `max_connections` connections are open. A connection that has
//! no request in progress — it has not finished sending its first request's
//! headers (`header_timeout`), or sits idle between keep-alive requests or HTTP/2
//! streams (`idle_timeout`) — is closed when its time runs out, and at the limit
//! the connection idle longest is closed at once to make room for a new one. Only
//! when every slot has a request in progress is a new connection refused, at once,
//! with `503` and `Retry-After` (plain TCP; a TLS connection is closed). So idle
//! or slowloris connections can never lock out a client with a request to make,
//! and nothing waits in the kernel's backlog.
//!
//! Requests without a credential come after those with one: see [`slots`].
//!
//! warp 0.4 no longer ships TLS, so connections are driven here with hyper-util
//! and the warp filter is used as a tower service.

mod slots;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use warp::reply::Response;
use warp::Filter;

use crate::metrics::Metrics;
pub use slots::{AnyOf, Trust, UNTRUSTED_PER_ADDRESS};
use slots::{Conn, Slots, Tracked, UntrustedPerAddress};

/// What a connection may use of the server.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub max_connections: usize,
    /// From accepting a connection until its first request's headers are complete
    /// (TLS handshake included).
    pub header_timeout: Duration,
    /// How long a connection with no request in progress may stay open.
    pub idle_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    pub grace: Duration,
    /// How long a request without a credential may take, body and answer
    /// included (the header timeout).
    pub untrusted_time: Duration,
}

impl ConnLimits {
    pub fn from_config(s: &crate::config::ServerConfig) -> ConnLimits {
        ConnLimits {
            max_connections: s.max_connections,
            header_timeout: s.header_timeout,
            idle_timeout: s.idle_timeout,
            grace: s.shutdown_grace,
            untrusted_time: s.header_timeout,
        }
    }
}

/// The most an HTTP/1 connection's read buffer grows to (hyper's default is
/// about 400 KB). It grows to the largest read and stays that size while the
/// connection lives: with Hex's 100-record bodies, 16 busy connections held
/// about 8 MB of buffers. Request heads are bounded by it too.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// The answer to a connection that finds every slot busy with a request.
const BUSY_REPLY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Content-Type: application/json\r\n\
Retry-After: 1\r\n\
Connection: close\r\n\
Content-Length: 75\r\n\r\n\
{\"error\":\"every connection slot is busy with a request; retry in a second\"}";

/// Serves `routes` on `listener` until `shutdown` resolves, then drains for at
/// most `limits.grace`.
pub async fn serve<F>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    routes: F,
    trust: Arc<dyn Trust>,
    limits: ConnLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let service = TowerToHyperService::new(warp::service(routes));
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Slots::new(limits.max_connections));
    let untrusted = Arc::new(UntrustedPerAddress::default());
    let mut shutdown = std::pin::pin!(shutdown);
    let mut accept_failures = FailureLog::default();

    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    let _ = accept_failures.failed(&e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (conn, evicted) = slots.admit(peer.ip());
        if evicted {
            metrics
                .connections_closed
                .get_or_create(&reason("evicted"))
                .inc();
        }
        let Some(conn) = conn else {
            metrics
                .connections_closed
                .get_or_create(&reason("refused"))
                .inc();
            tokio::spawn(refuse(stream, tls.is_some()));
            continue;
        };
        metrics.connections_open.inc();
        let service = Tracked {
            inner: service.clone(),
            conn: conn.clone(),
            trust: trust.clone(),
            untrusted: untrusted.clone(),
            untrusted_time: limits.untrusted_time,
            in_progress: metrics.requests_in_progress.clone(),
        };
        let watcher = graceful.watcher();
        let (tls, limits, slots, metrics) =
            (tls.clone(), limits.clone(), slots.clone(), metrics.clone());
        tokio::spawn(async move {
            // No hyper timer: the watchdog below owns every "no request in
            // progress" limit, for HTTP/1 and HTTP/2 alike.
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().max_buf_size(READ_BUFFER_BYTES);
            let served = async {
                match tls {
                    None => {
                        watcher
                            .watch(builder.serve_connection(TokioIo::new(stream), service))
                            .await
                    }
                    Some(acceptor) => {
                        let tls_stream = match acceptor.accept(stream).await {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return Ok(());
                            }
                        };
                        if crate::tls::is_acme_challenge(tls_stream.get_ref().1.alpn_protocol()) {
                            tracing::debug!(%peer, "answered an ACME TLS-ALPN-01 validation");
                            return Ok(());
                        }
                        watcher
                            .watch(builder.serve_connection(TokioIo::new(tls_stream), service))
                            .await
                    }
                }
            };
            let closed_by_us = tokio::select! {
                result = served => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    None
                }
                _ = conn.evict.notified() => None, // counted where it was decided
                why = watchdog(&conn, &limits) => Some(why),
            };
            if let Some(why) = closed_by_us {
                tracing::debug!(%peer, reason = why, "connection closed");
                metrics.connections_closed.get_or_create(&reason(why)).inc();
            }
            slots.release(conn.id);
            metrics.connections_open.dec();
        });
    }
    drop(listener);
    tracing::info!("stopped accepting; finishing requests in flight");
    if tokio::time::timeout(limits.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open after {}s; closing them",
            limits.grace.as_secs()
        );
    }
}

/// Accept failures logged at most every [`FailureLog::EVERY`], with how many
/// there were: out of file descriptors, they come twenty times a second.
#[derive(Default)]
struct FailureLog {
    last: Option<std::time::Instant>,
    since: u64,
}

impl FailureLog {
    const EVERY: Duration = Duration::from_secs(10);

    /// Counts one failure; true when it was logged.
    fn failed(&mut self, e: &std::io::Error) -> bool {
        self.since += 1;
        if self.last.is_some_and(|t| t.elapsed() < Self::EVERY) {
            return false;
        }
        tracing::warn!(error = %e, failures = self.since, "accept failed");
        (self.last, self.since) = (Some(std::time::Instant::now()), 0);
        true
    }
}

fn reason(why: &str) -> crate::metrics::Labels {
    vec![("reason", why.to_string())]
}

/// Answers a connection that found no free slot, without waiting on it for long.
async fn refuse(mut stream: TcpStream, tls: bool) {
    if !tls {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            stream.write_all(BUSY_REPLY).await?;
            stream.shutdown().await
        })
        .await;
    }
}

/// Resolves when the connection has had no request in progress for longer than
/// it may: `header_timeout` before its first request, `idle_timeout` after.
async fn watchdog(conn: &Conn, limits: &ConnLimits) -> &'static str {
    loop {
        let served = conn.served.load(Ordering::Acquire);
        let limit = if served {
            limits.idle_timeout
        } else {
            limits.header_timeout
        };
        let wait = match conn.idle_since() {
            Some(since) if since.elapsed() >= limit => {
                return if served {
                    "idle_timeout"
                } else {
                    "header_timeout"
                }
            }
            Some(since) => limit - since.elapsed(),
            // Busy: look again later (the request's own timeouts bound it).
            None => limit,
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 38: out of file descriptors, "accept failed" was logged about
    /// twenty times a second.
    #[test]
    fn accept_failures_are_logged_at_most_every_ten_seconds() {
        let mut log = FailureLog::default();
        let e = std::io::Error::from_raw_os_error(24); // EMFILE
        let logged = (0..200).filter(|_| log.failed(&e)).count();
        assert_eq!(logged, 1);
        assert_eq!(log.since, 199);
    }

    #[test]
    fn busy_reply_has_the_right_length() {
        let text = std::str::from_utf8(BUSY_REPLY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }
}
