//! One destination's delivery worker.
//!
//! The worker claims due deliveries from the outbox a batch at a time into a
//! small local queue; `concurrency` senders take from the queue and send, each
//! on its own, so no send waits for the storage. Outcomes are collected and
//! written together, one transaction for all that finished meanwhile. A claim
//! lasts long enough for a queued delivery to be sent (three send timeouts and a
//! margin): until then no other worker or replica takes it; after that, one may
//! (its worker died). At-least-once is kept: a delivery is marked done only
//! after it was sent, and one sent but not yet recorded when the process dies is
//! sent again, with the same `Idempotency-Key`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{ratelimit, retry_delay, Outcome, Sender};
use crate::config::{DeliveryConfig, Destination};
use crate::metrics::Metrics;
use hexwatch_storage::{now_ms, Attempt, AttemptResult, Due, Role, Session, Storage, StorageError};

/// Longest the worker sleeps before looking at its queue again.
const POLL: Duration = Duration::from_secs(1);
/// What a claim adds to the sends it waits for.
const CLAIM_MARGIN: Duration = Duration::from_secs(15);

pub(super) struct DestinationWorker {
    name: String,
    kind: &'static str,
    /// Deliveries started per minute (`max_per_minute`): over it, alerts wait in the outbox.
    rate: Mutex<ratelimit::RateLimit>,
    sender: Sender,
    /// Sends in flight at once; the local queue holds up to twice as many.
    concurrency: usize,
    /// How long a claim lasts.
    claim_for: Duration,
    storage: Storage,
    session: Arc<Mutex<Box<dyn Session>>>,
    delivery: DeliveryConfig,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    /// Claimed, not yet being sent.
    queue: Mutex<VecDeque<Due>>,
    queued: Notify,
    /// Sent (or given up), not yet recorded.
    finished: Mutex<Vec<Attempt>>,
    done: Notify,
    sending: AtomicUsize,
}

impl DestinationWorker {
    pub(super) fn new(
        d: &Destination,
        sender: Sender,
        storage: &Storage,
        delivery: &DeliveryConfig,
        wake: Arc<Notify>,
        metrics: Arc<Metrics>,
    ) -> Result<DestinationWorker, StorageError> {
        Ok(DestinationWorker {
            name: d.name.clone(),
            kind: d.type_name(),
            rate: Mutex::new(ratelimit::RateLimit::per_minute(d.max_per_minute)),
            sender,
            concurrency: d.concurrency.max(1),
            claim_for: d.timeout * 3 + CLAIM_MARGIN,
            storage: storage.clone(),
            session: Arc::new(Mutex::new(storage.session(Role::Derived)?)),
            delivery: delivery.clone(),
            wake,
            metrics,
            queue: Mutex::default(),
            queued: Notify::new(),
            finished: Mutex::default(),
            done: Notify::new(),
            sending: AtomicUsize::new(0),
        })
    }

    /// Runs a storage call on this destination's session, off the async
    /// threads; a broken session is replaced for the next call.
    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Session) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let (session, storage) = (self.session.clone(), self.storage.clone());
        tokio::task::spawn_blocking(move || {
            let mut session = session.lock();
            if session.is_broken() {
                *session = storage.session(Role::Derived)?;
            }
            f(session.as_mut())
        })
        .await
        .expect("storage call does not panic")
    }

    pub(super) async fn run(self, stop: CancellationToken) {
        let me = Arc::new(self);
        tracing::info!(destination = %me.name, kind = me.kind, "delivery worker started");
        let senders: Vec<_> = (0..me.concurrency)
            .map(|_| tokio::spawn(me.clone().send_loop(stop.clone())))
            .collect();
        let mut last_depth = std::time::Instant::now() - POLL;
        loop {
            // Register for wake-ups before looking, so a wake between the look
            // and the wait is not lost.
            let woken = me.wake.notified();
            let finished = me.done.notified();
            tokio::pin!(woken, finished);
            woken.as_mut().enable();
            finished.as_mut().enable();

            me.record().await;
            me.refill().await;
            // The queue depth gauge, at most once a second.
            if last_depth.elapsed() >= POLL {
                last_depth = std::time::Instant::now();
                let name = me.name.clone();
                if let Ok(depth) = me.db(move |s| s.pending(&name)).await {
                    me.metrics
                        .delivery_queue_depth
                        .get_or_create(&vec![("destination", me.name.clone())])
                        .set(depth);
                }
            }
            let wait = me.wait().await;
            tokio::select! {
                _ = &mut woken => {}
                _ = &mut finished => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => break,
            }
        }
        // Let sends in flight finish (bounded); what was claimed but not sent is
        // released for the next start, and every outcome is recorded.
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            for s in senders {
                let _ = s.await;
            }
        })
        .await;
        let unsent: Vec<Attempt> = me
            .queue
            .lock()
            .drain(..)
            .map(|d| Attempt {
                id: d.id,
                attempts: d.attempts,
                result: AttemptResult::Unsent,
                incident_notice: d.incident_notice,
            })
            .collect();
        me.finished.lock().extend(unsent);
        me.record().await;
        tracing::info!(destination = %me.name, "delivery worker stopped");
    }

    /// Writes every outcome collected since the last call, in one transaction.
    async fn record(&self) {
        let done = std::mem::take(&mut *self.finished.lock());
        if done.is_empty() {
            return;
        }
        let n = done.len();
        if let Err(e) = self.db(move |s| s.record_attempts(&done)).await {
            tracing::error!(destination = %self.name, error = %e, deliveries = n,
                "cannot record delivery attempts; those sent may be sent again");
        }
    }

    /// Claims more due deliveries when the local queue runs low.
    async fn refill(&self) {
        let queued = self.queue.lock().len();
        if queued > self.concurrency {
            return;
        }
        let want = (2 * self.concurrency - queued).min(self.rate.lock().available());
        if want == 0 {
            return;
        }
        let name = self.name.clone();
        let until = now_ms() + self.claim_for.as_millis() as i64;
        match self.db(move |s| s.claim_due(&name, want, until)).await {
            Ok(rows) if !rows.is_empty() => {
                let mut rate = self.rate.lock();
                let mut queue = self.queue.lock();
                for due in rows {
                    rate.take();
                    queue.push_back(due);
                }
                drop((rate, queue));
                self.queued.notify_waiters();
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(destination = %self.name, error = %e, "cannot read the outbox")
            }
        }
    }

    /// How long to sleep when nothing wakes the worker: with deliveries queued
    /// or in flight, until a send finishes; over the rate, until the next
    /// allowance; otherwise until the next retry is due.
    async fn wait(&self) -> Duration {
        if !self.queue.lock().is_empty() || self.sending.load(Ordering::Acquire) > 0 {
            return POLL;
        }
        if let Some(w) = self.rate.lock().next_in() {
            return w.min(POLL);
        }
        let name = self.name.clone();
        self.db(move |s| s.next_due(&name))
            .await
            .ok()
            .flatten()
            .map(|t| Duration::from_millis((t - now_ms()).max(0) as u64))
            .unwrap_or(POLL)
            .min(POLL)
    }

    /// One sender: takes queued deliveries and sends them, until stopped.
    async fn send_loop(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let queued = self.queued.notified();
            tokio::pin!(queued);
            queued.as_mut().enable();
            let next = self.queue.lock().pop_front();
            let Some(due) = next else {
                tokio::select! {
                    _ = &mut queued => continue,
                    _ = stop.cancelled() => return,
                }
            };
            if stop.is_cancelled() {
                self.queue.lock().push_front(due);
                return;
            }
            self.sending.fetch_add(1, Ordering::AcqRel);
            let attempt = self.attempt(due).await;
            self.finished.lock().push(attempt);
            self.sending.fetch_sub(1, Ordering::AcqRel);
            self.done.notify_one();
        }
    }

    /// One attempt: sends, logs, counts, and says what to record.
    async fn attempt(&self, due: Due) -> Attempt {
        let attempts = due.attempts + 1;
        let started = std::time::Instant::now();
        let sent = if due.incident_notice {
            self.sender
                .send_incident(&due.alert_id, &due.alert_json)
                .await
        } else {
            self.sender.send(&due.alert_id, &due.alert_json).await
        };
        let (result, outcome) = match sent {
            Outcome::Delivered { detail } => {
                tracing::info!(
                    destination = %self.name, alert_id = %due.alert_id, attempts, %detail,
                    ms = started.elapsed().as_millis() as u64, "alert delivered"
                );
                (AttemptResult::Delivered, "delivered")
            }
            Outcome::Rejected { error } => {
                tracing::error!(
                    destination = %self.name, alert_id = %due.alert_id, attempts, %error,
                    "delivery rejected by the destination; not retried (fix the destination, then `hexwatch redeliver --destination {}`)",
                    self.name
                );
                (
                    AttemptResult::Failed {
                        error,
                        retry_at: None,
                    },
                    "rejected",
                )
            }
            Outcome::Transient { error, retry_after } => {
                let queued_for = Duration::from_millis((now_ms() - due.queued_at).max(0) as u64);
                let give_up = self.delivery.gives_up(attempts as u32, queued_for);
                let retry_at = (!give_up).then(|| {
                    now_ms()
                        + retry_delay(&self.delivery, attempts as u32, retry_after).as_millis()
                            as i64
                });
                if give_up {
                    tracing::error!(
                        destination = %self.name, alert_id = %due.alert_id, attempts,
                        hours = queued_for.as_secs() / 3600, %error,
                        "delivery abandoned; once the destination works again, queue it again with `hexwatch redeliver --destination {}`",
                        self.name
                    );
                } else {
                    tracing::warn!(
                        destination = %self.name, alert_id = %due.alert_id, attempts, %error,
                        retry_in_ms = retry_at.unwrap_or_default() - now_ms(),
                        "delivery attempt failed; will retry"
                    );
                }
                let outcome = if give_up { "abandoned" } else { "retry" };
                (AttemptResult::Failed { error, retry_at }, outcome)
            }
        };
        self.metrics
            .deliveries
            .get_or_create(&vec![
                ("destination", self.name.clone()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
        Attempt {
            id: due.id,
            attempts,
            result,
            incident_notice: due.incident_notice,
        }
    }
}
