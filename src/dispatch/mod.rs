//! Durable delivery of alerts. When an alert is created, the evaluator
//! writes one outbox row (`deliveries`) per destination in the same transaction
//! as the alert. Here, one worker per destination (`worker`) claims its due
//! rows (so no other worker or replica sends them meanwhile; a dead replica's
//! claims run out and another takes them over), sends them with bounded
//! concurrency, retries failures with exponential backoff and jitter,
//! and abandons a delivery (status `failed`, logged and counted) once it has been
//! retried for `delivery.retry_hours` (or `max_attempts`, when set); `hexwatch
//! redeliver` queues abandoned deliveries again. Each destination
//! has its own tasks, queue and connection, so one that is slow or down never
//! holds up another — nor ingestion or evaluation, which never wait on delivery.
//! Pending rows survive restarts.

pub mod email;
pub mod formats;
pub mod http;
pub mod ratelimit;
pub mod template;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::alerts::Alert;
use crate::config::{DeliveryConfig, Destination, DestinationKind};
use crate::incidents::message::IncidentMessage;
use crate::metrics::Metrics;
use hexwatch_storage::{Role, Storage};

/// Attempts per delivery in `replay --dispatch` when `delivery.max_attempts` is unset.
const REPLAY_ATTEMPTS: u32 = 12;

/// The delay before attempt `attempts + 1`: `initial * 2^(attempts-1)`,
/// scaled by a random factor in [0.75, 1.25) so retries spread out, and never
/// more than `max_backoff` (the jitter once took it 25% past).
pub fn backoff(config: &DeliveryConfig, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let base = config
        .initial_backoff
        .saturating_mul(1u32 << exp)
        .min(config.max_backoff);
    base.mul_f64(0.75 + rand::random::<f64>() * 0.5)
        .min(config.max_backoff)
}

/// What one delivery attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Accepted (`detail`: the status, e.g. "HTTP 202").
    Delivered { detail: String },
    /// Worth retrying; `retry_after` when the destination said when.
    Transient {
        error: String,
        retry_after: Option<Duration>,
    },
    /// Refused for good: the same request would be refused again.
    Rejected { error: String },
}

/// Why a destination cannot be set up, or an alert cannot be made into a
/// message for it. A delivery that meets one is rejected: the same alert would
/// fail again.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    #[error("tls_ca_file {}: {source}", path.display())]
    CaFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{setting}: {reason}")]
    Setting {
        setting: &'static str,
        reason: String,
    },
    #[error("stored alert is not readable: {0}")]
    StoredAlert(#[from] serde_json::Error),
}

impl DestinationError {
    pub(crate) fn setting(setting: &'static str, reason: impl ToString) -> DestinationError {
        DestinationError::Setting {
            setting,
            reason: reason.to_string(),
        }
    }
}

/// Sends to one destination.
pub enum Sender {
    Http(http::Http),
    Email(email::Email),
}

impl Sender {
    pub fn new(d: &Destination) -> Result<Sender, DestinationError> {
        template::check(d)?;
        let ca = match &d.tls_ca_file {
            Some(path) => Some(
                std::fs::read(path).map_err(|source| DestinationError::CaFile {
                    path: path.clone(),
                    source,
                })?,
            ),
            None => None,
        };
        Ok(match &d.kind {
            DestinationKind::Webhook(w) => {
                Sender::Http(http::Http::new(w.clone(), d.timeout, ca.as_deref())?)
            }
            DestinationKind::Email(e) => {
                Sender::Email(email::Email::new(e, d.timeout, ca.as_deref())?)
            }
        })
    }

    /// One attempt to deliver an incident notification (its stored body).
    pub async fn send_incident(&self, message_id: &str, body: &str) -> Outcome {
        let message = match serde_json::from_str::<IncidentMessage>(body) {
            Ok(m) => m,
            Err(err) => {
                return Outcome::Rejected {
                    error: format!("stored incident notification is not readable: {err}"),
                }
            }
        };
        match self {
            Sender::Http(h) => h.send_incident(message_id, &message).await,
            Sender::Email(e) => e.send(&message.as_alert(message_id)).await,
        }
    }

    /// One attempt to deliver the alert `alert_json` (its stored JSON).
    pub async fn send(&self, alert_id: &str, alert_json: &str) -> Outcome {
        match self {
            Sender::Http(h) => h.send(alert_id, alert_json).await,
            Sender::Email(e) => match serde_json::from_str::<Alert>(alert_json) {
                Ok(alert) => e.send(&alert).await,
                Err(err) => Outcome::Rejected {
                    error: format!("stored alert is not readable: {err}"),
                },
            },
        }
    }
}

/// When a transient failure is retried: when the destination said (capped at
/// `max_backoff`), else after the exponential backoff.
pub fn retry_delay(
    config: &DeliveryConfig,
    attempts: u32,
    retry_after: Option<Duration>,
) -> Duration {
    match retry_after {
        Some(d) => d.min(config.max_backoff),
        None => backoff(config, attempts),
    }
}

/// A `--since` that is neither a time nor a span.
#[derive(Debug, thiserror::Error)]
#[error("--since {0:?}: give an RFC 3339 time (2026-11-28T00:00:00Z) or a span like 30m, 12h, 7d")]
pub struct BadSince(pub String);

/// Parses `--since` of `hexwatch redeliver`: an RFC 3339 time, or a span back
/// from now such as `30m`, `12h` or `7d`. Returns unix ms.
pub fn parse_since(text: &str, now_ms: i64) -> Result<i64, BadSince> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_millis());
    }
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let unit_ms = match unit {
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => 0,
    };
    match number.parse::<i64>() {
        Ok(n) if n >= 0 && unit_ms > 0 => Ok(now_ms.saturating_sub(n.saturating_mul(unit_ms))),
        _ => Err(BadSince(text.to_string())),
    }
}

/// Checks that every destination can be set up (addresses parse, TLS parameters
/// build); returns one message per problem (`hexwatch check`).
pub fn check(destinations: &[Destination]) -> Vec<String> {
    destinations
        .iter()
        .filter_map(|d| {
            Sender::new(d)
                .err()
                .map(|e| format!("destination {}: {e}", d.name))
        })
        .collect()
}

/// Sends alerts straight away, retrying with the same backoff, without the
/// outbox (`hexwatch replay --dispatch`). Returns (delivered, failed).
pub async fn deliver_now(
    destinations: &[Destination],
    delivery: &DeliveryConfig,
    alerts: &[Alert],
) -> anyhow::Result<(usize, usize)> {
    let mut senders = std::collections::HashMap::new();
    for d in destinations {
        let s = Sender::new(d).map_err(|e| anyhow::anyhow!("destination {}: {e}", d.name))?;
        senders.insert(d.name.as_str(), s);
    }
    let (mut delivered, mut failed) = (0, 0);
    for alert in alerts {
        let json = serde_json::to_string(alert)?;
        for name in &alert.destinations {
            let Some(sender) = senders.get(name.as_str()) else {
                continue;
            };
            let mut attempts = 0;
            let queued = std::time::Instant::now();
            loop {
                attempts += 1;
                match sender.send(&alert.alert_id, &json).await {
                    Outcome::Delivered { .. } => {
                        delivered += 1;
                        break;
                    }
                    Outcome::Rejected { error } => {
                        eprintln!("delivery of {} to {name} rejected: {error}", alert.alert_id);
                        failed += 1;
                        break;
                    }
                    // Interactive: without max_attempts, give up after
                    // REPLAY_ATTEMPTS rather than waiting out retry_hours.
                    Outcome::Transient { error, .. }
                        if delivery.gives_up(attempts, queued.elapsed())
                            || attempts >= delivery.max_attempts.unwrap_or(REPLAY_ATTEMPTS) =>
                    {
                        eprintln!("delivery of {} to {name} failed: {error}", alert.alert_id);
                        failed += 1;
                        break;
                    }
                    Outcome::Transient { retry_after, .. } => {
                        tokio::time::sleep(retry_delay(delivery, attempts, retry_after)).await
                    }
                }
            }
        }
    }
    Ok((delivered, failed))
}

/// The running dispatcher.
pub struct Dispatcher {
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Dispatcher {
    /// Starts one task per destination.
    pub fn start(
        storage: &Storage,
        destinations: &[Destination],
        delivery: &DeliveryConfig,
        wake: Arc<Notify>,
        metrics: Arc<Metrics>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Dispatcher> {
        let stop = shutdown.child_token();
        let mut tasks = JoinSet::new();
        if !storage.shared() {
            // This daemon is the storage's only user: claims left by its last
            // run (stopped mid-send) are void.
            storage.session(Role::Derived)?.release_claims()?;
        }
        for d in destinations {
            let sender =
                Sender::new(d).map_err(|e| anyhow::anyhow!("destination {}: {e}", d.name))?;
            let worker = worker::DestinationWorker::new(
                d,
                sender,
                storage,
                delivery,
                wake.clone(),
                metrics.clone(),
            )?;
            tasks.spawn(worker.run(stop.clone()));
        }
        Ok(Dispatcher { stop, tasks })
    }

    /// Stops taking new deliveries, lets sends in flight finish (bounded), returns.
    pub async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_times_and_spans() {
        let now = 10 * 86_400_000;
        assert_eq!(parse_since("2h", now).unwrap(), now - 7_200_000);
        assert_eq!(parse_since("3d", now).unwrap(), now - 3 * 86_400_000);
        assert_eq!(
            parse_since("1970-01-02T00:00:00Z", now).unwrap(),
            86_400_000
        );
        assert!(parse_since("yesterday", now).is_err());
        assert!(parse_since("5", now).is_err());
    }

    #[test]
    fn backoff_doubles_with_jitter_and_never_exceeds_max_backoff() {
        let c = DeliveryConfig {
            max_attempts: Some(10),
            retry_for: Duration::from_secs(3600),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
        };
        for _ in 0..100 {
            let first = backoff(&c, 1);
            assert!(first >= Duration::from_millis(750) && first < Duration::from_millis(1250));
            let third = backoff(&c, 3);
            assert!(third >= Duration::from_secs(3) && third < Duration::from_secs(5));
            let late = backoff(&c, 40);
            assert!(late >= Duration::from_secs(225) && late <= Duration::from_secs(300));
        }
    }
}
