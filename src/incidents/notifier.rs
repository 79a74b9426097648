//! Makes incidents' notifications when they fall due: the first (after
//! `group_wait`, or at once for an urgent alert), an update listing what is
//! new (at most one per `group_interval`), a reminder after
//! `repeat_interval` while the incident stays open and unacknowledged. Each
//! notification is written to the durable outbox, one row per destination,
//! with the incident's clock in one transaction; the delivery workers send
//! it as they send alerts (retries, at least once, same Idempotency-Key).
//!
//! It runs on the evaluator's thread, so only the replica that holds the
//! lease makes notifications, and a notification recorded twice is refused
//! by the clock it was made from.

use super::message::{IncidentMessage, MAX_LISTED};
use crate::config::incidents::IncidentsConfig;
use hexwatch_model::incident::{Notice, NoticeClock, Status};
use hexwatch_storage::{NoticeWrite, Session, StorageError, StoredIncident};

/// Incidents read at a time, and handled per call at most (a burst of
/// incidents is worked through a few hundred at a time, between batches).
const PER_READ: usize = 100;
const PER_CALL: usize = 1000;

pub struct Notifier {
    pub config: IncidentsConfig,
    /// `ui.external_url`: notifications link to the incident's page.
    pub external_url: Option<String>,
}

impl Notifier {
    /// Makes every notification due at `now` (wall clock, unix ms); returns
    /// how many it recorded.
    pub fn run_due(&self, session: &mut dyn Session, now: i64) -> Result<usize, StorageError> {
        let (mut made, mut seen) = (0, 0);
        while seen < PER_CALL {
            let due = session.due_incidents(now, PER_READ)?;
            seen += due.len();
            let mut recorded = 0;
            for stored in &due {
                let notice = self.notice(session, stored, now)?;
                if session.record_notice(&notice)? {
                    recorded += 1;
                }
            }
            made += recorded;
            // Fewer than asked for: that was all. None recorded: what is left
            // moved under another writer, for the next call.
            if due.len() < PER_READ || recorded == 0 {
                break;
            }
        }
        Ok(made)
    }

    /// The notification due for one incident.
    fn notice(
        &self,
        session: &mut dyn Session,
        stored: &StoredIncident,
        now: i64,
    ) -> Result<NoticeWrite, StorageError> {
        let clock = stored.clock;
        let i = &stored.incident;
        let (event, from) = match clock.notify_at {
            Some(t) if t <= now && clock.notices == 0 => (Notice::Opened, 0),
            Some(t) if t <= now => (Notice::Updated, clock.notified),
            _ => (Notice::Reminder, 0),
        };
        let alerts = session.incident_alerts(&i.id, from, MAX_LISTED)?;
        let message = IncidentMessage::new(
            event,
            stored,
            alerts,
            i.alert_count - from,
            self.external_url.as_deref(),
        );
        let number = clock.notices + 1;
        let repeat = self.config.repeat_interval.as_millis() as i64;
        let after = NoticeClock {
            notices: number,
            notified: i.alert_count,
            notify_at: None,
            last_notice_at: Some(now),
            remind_at: (stored.status == Status::Open).then_some(now + repeat),
        };
        Ok(NoticeWrite {
            incident_id: i.id.clone(),
            notice: event,
            message_id: IncidentMessage::message_id(&i.id, number, event),
            destinations: i.destinations.clone(),
            body: serde_json::to_string(&message)?,
            before: clock,
            after,
        })
    }
}
