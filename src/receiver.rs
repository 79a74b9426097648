//! The HTTP API (docs/configuration.md) as warp filters: `POST <ingest.path>` for Hex's log
//! stream, `/healthz`, `/readyz` and `/metrics`.
//!
//! The ingest handler checks the secret before reading a byte of the body, caps
//! the body while it streams in (a chunked body has no Content-Length to trust),
//! hands the CPU work (gzip, JSON, validation) to the blocking pool, and answers
//! only after the journal has committed the batch.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use serde_json::json;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use crate::health::Health;
use crate::ingest::{self, BodyLimits, Prepared, RecordError, Refused};
use crate::ingest_secret::{IngestSecrets, Presented};
use crate::journal::{Batch, Journal, Outcome};
use crate::metrics::Metrics;

/// When a request is refused before its body was read (401, 413), up to this many
/// bytes of the body are still read and thrown away, for at most
/// [`DRAIN_TIME`], so that a client that sends the whole body before reading
/// the answer sees the answer instead of a broken pipe (and stops, instead of
/// retrying). Larger or slower bodies get the answer and a closed connection.
const DRAIN_BYTES: usize = 8 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(5);
/// A request without the secret is drained for a second at most, and only
/// [`UNAUTHENTICATED_DRAINS`] at a time; beyond that it gets its answer and a
/// closed connection at once. A body trickled to keep a drain going holds
/// nothing for long.
const UNAUTHENTICATED_DRAIN_TIME: Duration = Duration::from_secs(1);
const UNAUTHENTICATED_DRAINS: usize = 32;

/// Bodies that are compressed or larger than this on the wire are "heavy": they
/// may decode to `max_decoded_bytes` and build a batch of the same size again,
/// so only [`HEAVY_AT_ONCE`] of them are prepared at a time, and one that
/// decoded to more than [`HEAVY_DECODED`] keeps its turn until its batch is
/// committed. This bounds the memory hostile or merely huge bodies can take;
/// Hex's ordinary batches are not heavy and never wait for such a turn.
const HEAVY_WIRE: usize = 256 * 1024;
const HEAVY_DECODED: usize = 1 << 20;
pub const HEAVY_AT_ONCE: usize = 1;

/// Everything the HTTP handlers share.
pub struct Receiver {
    pub journal: Journal,
    /// The secrets accepted, swapped whole when the secret file changes.
    pub secrets: Arc<arc_swap::ArcSwap<IngestSecrets>>,
    pub auth_header: String,
    pub ingest_path: String,
    pub source_label: String,
    pub max_body_bytes: usize,
    pub limits: BodyLimits,
    /// How long a request body may take to arrive (a slow sender must not hold a
    /// connection and its buffer forever).
    pub body_timeout: Duration,
    /// Turns for heavy bodies (see [`HEAVY_AT_ONCE`]).
    pub heavy_bodies: Arc<tokio::sync::Semaphore>,
    /// Turns for decoding and validating bodies, one per core: more at once
    /// would only share the same cores, each with a whole batch's parsed
    /// records in memory (at 16 concurrent requests the peak RSS was about 25
    /// MiB higher).
    pub decode_turns: Arc<tokio::sync::Semaphore>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Turns for draining requests without the secret (see
    /// [`UNAUTHENTICATED_DRAINS`]).
    unauthenticated_drains: tokio::sync::Semaphore,
    /// When the use of the previous secret was last logged (unix ms).
    previous_logged_ms: std::sync::atomic::AtomicI64,
}

impl Receiver {
    /// Counts a request that presented the previous secret, and says so in
    /// the log at most once a minute: the rotation is not finished while
    /// senders still use it.
    fn previous_secret_used(&self) {
        self.metrics
            .ingest_secret_used
            .get_or_create(&vec![("secret", "previous".to_string())])
            .inc();
        let now = hexwatch_storage::now_ms();
        let last = self
            .previous_logged_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if now - last >= 60_000
            && self
                .previous_logged_ms
                .compare_exchange(
                    last,
                    now,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
        {
            tracing::info!(
                secret = "previous",
                "a sender still uses the previous ingest secret: move it to the current one before dropping the previous"
            );
        }
    }
}

impl crate::server::Trust for Receiver {
    /// Whether a request carries the ingest secret (its headers alone).
    fn trusted(&self, headers: &HeaderMap) -> bool {
        headers
            .get(self.auth_header.as_str())
            .is_some_and(|v| self.secrets.load().check(v.as_bytes()).is_some())
    }
}

impl Receiver {
    /// The handlers' shared state for a config.
    pub fn from_config(
        config: &crate::config::Config,
        journal: Journal,
        secrets: IngestSecrets,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Receiver {
        Receiver {
            journal,
            secrets: Arc::new(arc_swap::ArcSwap::from_pointee(secrets)),
            auth_header: config.ingest.auth_header.clone(),
            ingest_path: config.ingest.path.clone(),
            source_label: config.ingest.source_label.clone(),
            max_body_bytes: config.server.max_body_bytes,
            limits: BodyLimits {
                max_decoded_bytes: config.server.max_decoded_bytes,
                max_records: config.server.max_records_per_request,
            },
            body_timeout: config.server.body_timeout,
            heavy_bodies: Arc::new(tokio::sync::Semaphore::new(HEAVY_AT_ONCE)),
            decode_turns: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            metrics,
            health,
            unauthenticated_drains: tokio::sync::Semaphore::new(UNAUTHENTICATED_DRAINS),
            previous_logged_ms: std::sync::atomic::AtomicI64::new(0),
        }
    }
}

/// The ingest response body (200 and 422).
#[derive(Debug, Serialize)]
struct IngestReply<'a> {
    accepted: usize,
    duplicates: usize,
    quarantined: usize,
    errors: &'a [RecordError],
}

impl Receiver {
    /// An answered ingest request in the metrics: its status and latency.
    fn count_request(&self, status: StatusCode, start: Instant) {
        self.metrics
            .ingest_requests
            .get_or_create(&vec![("status", status.as_str().to_string())])
            .inc();
        self.metrics
            .ingest_latency
            .observe(start.elapsed().as_secs_f64());
    }

    /// `/readyz`: 503 until storage is open and rules are loaded, or while
    /// the storage has a problem that stops acknowledging.
    fn readiness(&self) -> Response {
        let mut r = self.health.readiness();
        if let Some(problem) = self.journal.storage_problem() {
            r.ready = false;
            r.storage = false;
            r.problems.push(problem);
        }
        let status = if r.ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_reply(status, &r)
    }
}

/// All routes.
pub fn routes(
    rx: Arc<Receiver>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    let state = {
        let rx = rx.clone();
        warp::any().map(move || rx.clone())
    };
    let path = rx.ingest_path.clone();
    let ingest = warp::path::full()
        .and_then(move |p: warp::path::FullPath| {
            let ok = p.as_str() == path;
            async move {
                if ok {
                    Ok(())
                } else {
                    Err(warp::reject::not_found())
                }
            }
        })
        .untuple_one()
        .and(warp::post())
        .and(state.clone())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(|rx: Arc<Receiver>, headers: HeaderMap, body| async move {
            let start = Instant::now();
            let response = handle_ingest(&rx, &headers, body).await;
            rx.count_request(response.status(), start);
            response
        });

    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| json_reply(StatusCode::OK, &json!({"status": "ok"})));
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(state.clone())
        .map(|rx: Arc<Receiver>| rx.readiness());
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(state)
        .map(|rx: Arc<Receiver>| {
            let mut r = Response::new(rx.metrics.render().into());
            r.headers_mut().insert(
                warp::http::header::CONTENT_TYPE,
                warp::http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        });

    ingest
        .or(healthz)
        .unify()
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .recover(|r: Rejection| async move { Ok::<_, Infallible>(rejection_reply(r)) })
        .unify()
}

async fn handle_ingest<S, B>(rx: &Receiver, headers: &HeaderMap, body: S) -> Response
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    let raw = match authorized_body(rx, headers, body).await {
        Ok(raw) => raw,
        Err(refusal) => return refusal,
    };
    let encoding = headers
        .get(warp::http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);

    let heavy = encoding.is_some() || raw.len() > HEAVY_WIRE;
    let mut turn = if heavy {
        let turn = rx.heavy_bodies.clone().acquire_owned().await;
        Some(turn.expect("never closed"))
    } else {
        None
    };
    let limits = rx.limits;
    let label = rx.source_label.clone();
    let decode_turn = rx.decode_turns.clone().acquire_owned().await;
    let prepared =
        off_thread(move || ingest::prepare(&raw, encoding.as_deref(), limits, &label)).await;
    drop(decode_turn);
    let Some(prepared) = prepared else {
        return error_reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the body could not be prepared: an internal error, logged by hexwatch; nothing was stored".into(),
        );
    };
    if prepared
        .as_ref()
        .map_or(true, |p| p.decoded_bytes <= HEAVY_DECODED)
    {
        turn = None;
    }

    match prepared {
        Ok(p) => {
            let reply = commit_prepared(rx, p).await;
            drop(turn);
            reply
        }
        Err(Refused::TooLarge(e)) => error_reply(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
        Err(Refused::Unreadable(e, quarantined)) => {
            // Keep what was sent even though it cannot be read.
            let batch = Batch {
                entries: Vec::new(),
                quarantine: vec![quarantined],
            };
            if let Err(err) = rx.journal.commit(batch).await {
                return error_reply(StatusCode::SERVICE_UNAVAILABLE, err.to_string());
            }
            rx.metrics.events_quarantined.inc();
            error_reply(StatusCode::BAD_REQUEST, e.to_string())
        }
    }
}

/// The body of an ingest request from a client that presented the secret,
/// read within the size and time limits; otherwise the reply refusing it
/// (after draining what the client declared, so it reads the reply).
async fn authorized_body<S, B>(
    rx: &Receiver,
    headers: &HeaderMap,
    body: S,
) -> Result<BytesMut, Response>
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    let declared = headers
        .get(warp::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let presented = headers
        .get(rx.auth_header.as_str())
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let used = rx.secrets.load().check(presented);
    if used == Some(Presented::Previous) {
        rx.previous_secret_used();
    }
    if used.is_none() {
        if let Ok(_turn) = rx.unauthenticated_drains.try_acquire() {
            drain(body, headers, declared, UNAUTHENTICATED_DRAIN_TIME).await;
        }
        return Err(error_reply(
            StatusCode::UNAUTHORIZED,
            format!("missing or wrong {} header", rx.auth_header),
        ));
    }
    let too_large = || {
        error_reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body is larger than {} bytes (server.max_body_bytes)",
                rx.max_body_bytes
            ),
        )
    };
    if declared.is_some_and(|n| n > rx.max_body_bytes as u64) {
        drain(body, headers, declared, DRAIN_TIME).await;
        return Err(too_large());
    }
    let mut body = std::pin::pin!(body);
    let read = tokio::time::timeout(
        rx.body_timeout,
        read_capped(body.as_mut(), rx.max_body_bytes, declared),
    )
    .await;
    let raw = match read {
        Ok(Ok(Some(b))) => b,
        Ok(Ok(None)) => {
            drain(body, headers, None, DRAIN_TIME).await;
            return Err(too_large());
        }
        Ok(Err(e)) => {
            return Err(error_reply(
                StatusCode::BAD_REQUEST,
                format!("could not read the request body: {e}"),
            ))
        }
        Err(_) => {
            return Err(error_reply(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body took longer than {}s to arrive (server.body_timeout_seconds)",
                    rx.body_timeout.as_secs()
                ),
            ))
        }
    };
    Ok(raw)
}

/// Runs CPU-bound work on the blocking pool. A panic there (a parser meeting
/// a body nobody foresaw) ends that request alone, answered 500 and counted
/// under `hexwatch_ingest_requests{status="500"}`, instead of taking the
/// connection's task down with it.
async fn off_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => Some(done),
        Err(e) => {
            tracing::error!(error = %e, "preparing an ingest body failed; answered 500");
            None
        }
    }
}

/// Reads what is left of a refused request's body and throws it away, within
/// [`DRAIN_BYTES`] and `time` (see [`DRAIN_TIME`]). A client that waits for
/// `100 Continue` has sent nothing yet and gets the answer at once.
async fn drain<S, B>(body: S, headers: &HeaderMap, declared: Option<u64>, time: Duration)
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    let expects_continue = headers
        .get(warp::http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue || declared.is_some_and(|n| n > DRAIN_BYTES as u64) {
        return;
    }
    let mut body = std::pin::pin!(body);
    let _ = tokio::time::timeout(time, async {
        let mut seen = 0usize;
        while let Some(Ok(chunk)) = body.next().await {
            seen += chunk.remaining();
            if seen > DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
}

async fn commit_prepared(rx: &Receiver, p: Prepared) -> Response {
    let quarantined = p.batch.quarantine.len();
    rx.metrics.events_received.inc_by(p.records as u64);
    let outcomes = match rx.journal.commit(p.batch).await {
        Ok(o) => o,
        Err(e) => {
            return error_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{e}; nothing was stored, send the batch again"),
            )
        }
    };
    let duplicates = outcomes
        .iter()
        .filter(|o| **o == Outcome::Duplicate)
        .count();
    let accepted = outcomes.len() - duplicates;
    rx.metrics.events_accepted.inc_by(accepted as u64);
    rx.metrics.events_duplicate.inc_by(duplicates as u64);
    rx.metrics.events_quarantined.inc_by(quarantined as u64);
    if quarantined > 0 {
        tracing::warn!(
            quarantined,
            first_error = %p.errors.first().map(|e| e.error.as_str()).unwrap_or(""),
            "records quarantined"
        );
    }
    let status = if accepted + duplicates == 0 && quarantined > 0 {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    json_reply(
        status,
        &IngestReply {
            accepted,
            duplicates,
            quarantined,
            errors: &p.errors,
        },
    )
}

/// Collects a body, giving up (`Ok(None)`) as soon as it passes `limit` bytes.
async fn read_capped<S, B>(
    mut body: std::pin::Pin<&mut S>,
    limit: usize,
    declared: Option<u64>,
) -> Result<Option<BytesMut>, warp::Error>
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    let mut buf = BytesMut::with_capacity(declared.map_or(16 * 1024, |n| n as usize));
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk?;
        if buf.len() + chunk.remaining() > limit {
            return Ok(None);
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            buf.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(Some(buf))
}

fn json_reply<T: Serialize>(status: StatusCode, body: &T) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

fn error_reply(status: StatusCode, message: String) -> Response {
    json_reply(status, &json!({ "error": message }))
}

/// The answer to a path no route serves.
pub fn not_found() -> Response {
    error_reply(StatusCode::NOT_FOUND, "no such endpoint".into())
}

fn rejection_reply(r: Rejection) -> Response {
    if r.is_not_found() {
        error_reply(StatusCode::NOT_FOUND, "no such endpoint".into())
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        error_reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into())
    } else {
        error_reply(StatusCode::BAD_REQUEST, format!("{r:?}"))
    }
}

#[cfg(test)]
mod tests {
    /// Defect: a panic while preparing an untrusted body was re-raised on the
    /// request's task (`spawn_blocking(..).await.expect(..)`) instead of
    /// answering 500; `handle_ingest` answers 500 when this gives `None`.
    #[tokio::test]
    async fn a_panicking_body_preparation_answers_500_not_a_panic() {
        assert_eq!(super::off_thread(|| 7).await, Some(7));
        let panicked = super::off_thread(|| -> u8 { panic!("a parser bug") }).await;
        assert_eq!(panicked, None);
    }
}
