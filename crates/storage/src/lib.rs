//! Where everything durable lives, behind one interface: the journal of accepted
//! records and the quarantine, rule state, alert windows, the evaluator's cursor
//! and the delivery outbox.
//!
//! Two engines carry it (and [`memory`], for `replay`). Embedded SQLite ([`sqlite`], `storage.path`) is the
//! zero-setup default for one daemon. PostgreSQL ([`postgres`], `storage.url`) lets
//! several replicas behind a load balancer share one database: each receives and
//! journals, exactly one evaluates at a time (a lease), and any of them delivers.
//! Both have the same tables and columns (`migrations/`), so an operator's
//! queries work on either.
//!
//! Each stage opens its own [`Session`] (one connection) and calls it from one
//! thread. The evaluator computes a batch's [`Effects`] in memory and writes them
//! with one transactional [`Session::commit`]: state, windows, outbox rows and the
//! cursor land together or not at all, on every engine.

pub mod config;
pub mod incidents;
pub mod inspect;
pub mod memory;
pub mod migrate;
pub mod postgres;
pub mod silences;
pub mod sql;
pub mod sqlite;
pub mod tail;
pub mod tls;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub use config::{PostgresUrl, StorageConfig};
use hexwatch_model::alert::{Alert, SampleEvent, Window, WindowKey};
use hexwatch_model::document::RecordObject;
use hexwatch_model::incident::IncidentWrite;
pub use incidents::{NoticeWrite, StoredIncident};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {}", with_causes(.0))]
    Postgres(#[from] ::postgres::Error),
    #[error("schema migration: {0}")]
    Migration(#[from] refinery::Error),
    #[error("stored alert is not readable: {0}")]
    Json(#[from] serde_json::Error),
    /// Another evaluator moved the cursor: this one no longer holds the lease.
    #[error("the evaluation cursor moved under this evaluator (another replica holds the lease)")]
    LeaseLost,
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsClientError),
    #[error("an incident's stored status {0:?} is none of open, acknowledged, resolved")]
    UnknownStatus(String),
    #[error("a delivery's stored status {0:?} is none of pending, delivered, failed")]
    UnknownDeliveryStatus(String),
    #[error("storage.url: {0}")]
    Url(#[source] ::postgres::Error),
    /// The database file, its directory or a thread around it.
    #[error("{what} {}: {source}", path.display())]
    File {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A running `serve` holds the SQLite database.
    #[error("a running hexwatch serve holds the database {}: stop it first", .0.display())]
    InUse(std::path::PathBuf),
    #[error("the console needs SQLite or PostgreSQL storage")]
    NoConsole,
    /// What `migrate-storage` refuses or cannot read.
    #[error(transparent)]
    MigrateStorage(#[from] crate::migrate::MigrateError),
    /// A row the engine itself wrote is not where it must be.
    #[error("no {what} {id} in the memory storage")]
    Missing { what: &'static str, id: String },
}

impl StorageError {
    /// Whether the same call may succeed later without anyone changing
    /// anything: the database was busy or locked, the connection was lost, the
    /// server is restarting, a transaction lost a serialization race.
    pub fn is_transient(&self) -> bool {
        match self {
            StorageError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            StorageError::Postgres(e) => match e.code() {
                // No SQLSTATE: the connection itself failed (I/O, closed).
                None => true,
                Some(state) => {
                    let code = state.code();
                    // 08: connection exception; 40: transaction rollback;
                    // 53: insufficient resources; 57P: operator intervention.
                    ["08", "40", "53", "57P"]
                        .iter()
                        .any(|c| code.starts_with(c))
                }
            },
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// An error with its causes (the driver keeps the reason a TLS handshake or a
/// connection failed in its source).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// A record ready to be written.
#[derive(Debug)]
pub struct Entry {
    pub key: String,
    pub event_time: String,
    pub action: String,
    /// Shared with the record the journal hands on, so it is never copied.
    pub json: Arc<String>,
    /// `json` as rules read it, when validation built it: handed on to the
    /// evaluator of this process with the record, so it is not parsed again.
    pub tree: Option<RecordObject>,
}

/// A record kept aside with the reason it was not accepted.
#[derive(Debug)]
pub struct Quarantined {
    pub index: Option<usize>,
    pub line: Option<usize>,
    pub reason: String,
    pub raw: String,
}

/// What one request asks the journal to store.
#[derive(Debug, Default)]
pub struct Batch {
    pub entries: Vec<Entry>,
    pub quarantine: Vec<Quarantined>,
}

/// What became of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored with this sequence number.
    Accepted(i64),
    /// Its idempotency key was already stored.
    Duplicate,
}

/// The outcomes of one group commit (per batch, per entry) and the highest
/// sequence number it stored.
pub type Appended = (Vec<Vec<Outcome>>, Option<i64>);

/// A stored record as read back by a consumer.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub seq: i64,
    pub action: String,
    pub event_time: String,
    /// Shared: handing a record from the journal to the evaluator copies a pointer.
    pub json: Arc<String>,
    /// `json` as rules read it, when the process that journaled it built it
    /// (records read from the database are parsed by the evaluator).
    pub tree: Option<RecordObject>,
    /// When the record was received (unix ms).
    pub received_at: i64,
}

impl StoredRecord {
    /// The record's event time (ms). Stored times were validated at ingest; one
    /// that does not parse (a database edited by hand) falls back to when the
    /// record was received, never to 1970, which would expire every rule-state
    /// entry and alert window it touches.
    pub fn event_ms(&self) -> i64 {
        match chrono::DateTime::parse_from_rfc3339(&self.event_time) {
            Ok(t) => t.timestamp_millis(),
            Err(e) => {
                tracing::error!(seq = self.seq, event_time = %self.event_time, error = %e,
                    "stored event time does not parse; using the time it was received");
                self.received_at
            }
        }
    }
}

/// Rule state written by one batch: counters (value, expiry), set members
/// (expiry), values (JSON, expiry); expiries in event-time ms.
#[derive(Debug, Default)]
pub struct StateWrites {
    pub counters: StateMap<String, (i64, i64)>,
    pub sets: StateMap<(String, String), i64>,
    pub kv: StateMap<String, (String, i64)>,
}

/// Maps of rule state hash with aHash: randomly keyed per process (keys hold
/// record contents, so they cannot be chosen to collide), and cheaper than
/// SipHash for the evaluator, which hashes a few keys per rule call.
pub type StateMap<K, V> = HashMap<K, V, ahash::RandomState>;

/// A key's stored alert windows around one time. Windows of a key never
/// overlap, so the one holding a match is the last to start at or before
/// it, if it has not ended; a window opened there must end before the next.
#[derive(Debug, Default)]
pub struct WindowsAt {
    /// The last window to start at or before the time.
    pub starting_by: Option<Window>,
    /// When the first window after the time starts.
    pub next_start: Option<i64>,
}

/// Everything one evaluated batch changes, written by [`Session::commit`] in one
/// transaction.
#[derive(Debug, Default)]
pub struct Effects {
    pub state: StateWrites,
    /// Windows to store (insert or update by alert id), in order.
    pub windows: Vec<Window>,
    /// (alert id, destinations) of every alert the batch created, in order:
    /// its outbox rows for destinations that take alerts one by one (none
    /// when they all take incidents, or a silence holds it back).
    pub deliveries: Vec<(String, Vec<String>)>,
    /// Incidents the batch's alerts opened or joined.
    pub incidents: Vec<IncidentWrite>,
    /// (alert id, silence id) of every alert a silence held back.
    pub silenced: Vec<(String, String)>,
    /// The cursor before the batch: the commit fails with
    /// [`StorageError::LeaseLost`] if it is no longer there.
    pub from_cursor: i64,
    /// The cursor after the batch.
    pub to_cursor: i64,
    /// The latest event time evaluated (unix ms), or `i64::MIN` for none.
    pub evaluated_ms: i64,
}

/// A delivery due now, claimed for this worker, with the alert body to send.
#[derive(Debug, Clone)]
pub struct Due {
    pub id: i64,
    pub alert_id: String,
    pub attempts: i64,
    /// When it was queued (unix ms): the retry horizon counts from here.
    pub queued_at: i64,
    /// The body: the alert's JSON, or an incident notification's.
    pub alert_json: String,
    /// Whether `alert_json` is an incident notification (`hexwatch.incident/1`).
    pub incident_notice: bool,
}

/// An alert as its row in `alerts` keeps it: everything but the sample
/// records, which are rows of `alert_samples`, each written once (a busy
/// window's row is rewritten with every batch that updates it).
fn alert_row_json(alert: &Alert) -> Result<String> {
    let head = Alert {
        events: Vec::new(),
        ..alert.clone()
    };
    Ok(serde_json::to_string(&head)?)
}

/// An alert from its row's JSON and its samples in order. Rows written
/// before the samples moved out still carry them in their JSON; the copies
/// the schema migration made take their place.
fn alert_from_row(json: &str, samples: Vec<SampleEvent>) -> Result<Alert> {
    let mut alert: Alert = serde_json::from_str(json)?;
    alert.events = samples;
    Ok(alert)
}

/// The alert JSON to deliver, from its row's JSON and its samples' texts.
/// A row written by [`alert_row_json`] ends with its empty `events` and then
/// `version` (the last field: a hex digest), so the samples go in there as
/// they are, without parsing and writing out the alert again (that cost a
/// quarter of the delivery rate). Any other row is parsed.
fn delivery_json(row: &str, samples: &[&str]) -> Result<String> {
    const EMPTY: &str = r#""events":[],"version":""#;
    let spliced = row.rfind(EMPTY).and_then(|at| {
        let version = &row[at + EMPTY.len()..];
        let plain = version.strip_suffix("\"}")?;
        (!plain.contains(['"', '\\'])).then_some(at + r#""events":["#.len())
    });
    let Some(at) = spliced else {
        let samples = samples.iter().map(|s| SampleEvent::from_json(s)).collect();
        return Ok(serde_json::to_string(&alert_from_row(row, samples)?)?);
    };
    let mut out =
        String::with_capacity(row.len() + samples.iter().map(|s| s.len() + 1).sum::<usize>());
    out.push_str(&row[..at]);
    for (i, s) in samples.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(s);
    }
    out.push_str(&row[at..]);
    Ok(out)
}

/// What one delivery attempt came to, to be recorded.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub id: i64,
    /// Attempts made so far, this one included.
    pub attempts: i64,
    pub result: AttemptResult,
    /// An incident notification: its outcome goes into the incident's history.
    pub incident_notice: bool,
}

#[derive(Debug, Clone)]
pub enum AttemptResult {
    Delivered,
    /// Pending again at `retry_at`, or failed for good when `None`.
    Failed {
        error: String,
        retry_at: Option<i64>,
    },
    /// Claimed but never sent (the worker stopped): free for the next one.
    Unsent,
}

/// Rows deleted by one pruning pass.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pruned {
    pub events: usize,
    pub quarantine: usize,
    pub alerts: usize,
    pub state: usize,
}

/// Where one delivery of an alert to one destination stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt (or being attempted, while claimed).
    Pending,
    Delivered,
    /// Failed for good: retried only when an operator asks.
    Failed,
}

impl DeliveryStatus {
    /// As the `status` column stores it.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    /// A delivery's status and next attempt after a failed one: pending again
    /// at `retry_at`, or failed for good.
    fn after_failure(retry_at: Option<i64>, now: i64) -> (DeliveryStatus, i64) {
        match retry_at {
            Some(t) => (DeliveryStatus::Pending, t),
            None => (DeliveryStatus::Failed, now),
        }
    }
}

impl std::str::FromStr for DeliveryStatus {
    type Err = StorageError;
    fn from_str(s: &str) -> Result<DeliveryStatus> {
        match s {
            "pending" => Ok(DeliveryStatus::Pending),
            "delivered" => Ok(DeliveryStatus::Delivered),
            "failed" => Ok(DeliveryStatus::Failed),
            other => Err(StorageError::UnknownDeliveryStatus(other.into())),
        }
    }
}

impl std::fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The evaluator's cursor name in the `cursors` table.
pub const EVALUATOR: &str = "evaluator";

/// One connection to the storage, used by one stage.
pub trait Session: Send {
    // The journal.

    /// Stores the batches in one transaction. Idempotency is the journal's own
    /// unique key, decided in the same transaction as the record.
    fn append(&mut self, batches: &[&Batch]) -> Result<Appended>;
    /// The highest sequence number stored, 0 for none.
    fn last_seq(&mut self) -> Result<i64>;
    /// Up to `limit` records with `seq > after`, in order. Every record with a
    /// smaller sequence number than one returned is committed already (or never
    /// will be), so a consumer that moves its cursor past it skips nothing.
    fn read_after(&mut self, after: i64, limit: usize) -> Result<Vec<StoredRecord>>;

    // Evaluation.

    /// Whether this session holds the evaluator lease, taking it if it is free.
    /// On SQLite (one daemon per file) always true.
    fn try_lease(&mut self) -> Result<bool>;
    /// Consumer `name`'s cursor, 0 if it never ran.
    fn cursor(&mut self, name: &str) -> Result<i64>;
    /// Starts the reads of one batch (one snapshot where the engine has them).
    fn begin_read(&mut self) -> Result<()>;
    /// Ends them without writing.
    fn end_read(&mut self);
    fn counter(&mut self, key: &str) -> Result<Option<(i64, i64)>>;
    fn set_member(&mut self, key: &str, member: &str) -> Result<Option<i64>>;
    fn value(&mut self, key: &str) -> Result<Option<(String, i64)>>;
    /// This key's windows around `at_ms`; `i64::MAX` asks for the latest.
    fn windows_at(&mut self, key: &WindowKey, at_ms: i64) -> Result<WindowsAt>;
    /// Writes a batch's effects in one transaction.
    fn commit(&mut self, effects: &Effects) -> Result<()>;

    // Incidents.

    /// The latest incident of a group, if any.
    fn incident_of_group(&mut self, group_key: &str) -> Result<Option<StoredIncident>>;
    /// Incidents with a notification or a reminder due at `now`.
    fn due_incidents(&mut self, now: i64, limit: usize) -> Result<Vec<StoredIncident>>;
    /// Up to `limit` of an incident's alerts from member `from` on, without
    /// samples, leaving out those a silence held back.
    fn incident_alerts(&mut self, id: &str, from: i64, limit: usize) -> Result<Vec<Alert>>;
    /// Records a notification (outbox rows and the incident's clock); false
    /// when the incident's clock moved meanwhile and nothing was written.
    fn record_notice(&mut self, notice: &NoticeWrite) -> Result<bool>;
    /// Silences not yet over at `now` (pending ones included).
    fn live_silences(&mut self, now: i64) -> Result<Vec<silences::Silence>>;

    // The delivery outbox.

    /// Claims up to `limit` due deliveries of `destination` until `claim_until`
    /// (no other worker takes them before then), oldest first.
    fn claim_due(&mut self, destination: &str, limit: usize, claim_until: i64) -> Result<Vec<Due>>;
    /// When the next pending delivery of `destination` that nobody has claimed
    /// may be sent, if any. (Claims that run out are seen at the next poll.)
    fn next_due(&mut self, destination: &str) -> Result<Option<i64>>;
    /// Pending deliveries of `destination` (the queue depth).
    fn pending(&mut self, destination: &str) -> Result<i64>;
    /// Records what attempts came to, all in one transaction; each ends its
    /// delivery's claim.
    fn record_attempts(&mut self, done: &[Attempt]) -> Result<()>;
    /// Ends every claim: for a daemon that is the storage's only user, at start
    /// (claims of a process that stopped mid-send).
    fn release_claims(&mut self) -> Result<usize>;
    /// Puts failed deliveries back in the queue (`hexwatch redeliver`).
    fn requeue_failed(&mut self, destination: Option<&str>, since_ms: Option<i64>)
        -> Result<usize>;

    /// Deletes what is past `retention`: journal rows the evaluator has finished,
    /// quarantine, closed alert windows without pending deliveries, expired rule
    /// state (on event time).
    fn prune(&mut self, retention: Duration) -> Result<Pruned>;

    /// True when the connection is gone for good (a network engine's server
    /// closed it): the stage opens a new session.
    fn is_broken(&self) -> bool {
        false
    }
}

/// What a session is for: SQLite relaxes fsync for sessions that only write
/// what the journal can derive again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Journal,
    Derived,
}

/// The configured storage: opens sessions.
#[derive(Clone)]
pub enum Storage {
    /// `replay`: nothing on disk.
    Memory(memory::Memory),
    Sqlite(sqlite::Sqlite),
    Postgres(Box<postgres::Postgres>),
}

impl Storage {
    /// A session for the console's queries (SQLite and PostgreSQL only).
    pub fn console(&self) -> Result<Box<dyn inspect::ConsoleQueries>> {
        Ok(match self {
            Storage::Memory(_) => return Err(StorageError::NoConsole),
            Storage::Sqlite(s) => Box::new(s.session(Role::Derived)?),
            Storage::Postgres(p) => Box::new(p.session(Role::Derived)?),
        })
    }

    /// Opens the configured storage and brings its schema up to date.
    pub fn open(config: &StorageConfig) -> Result<Storage> {
        Ok(match &config.url {
            Some(url) => Storage::Postgres(Box::new(postgres::Postgres::open(url)?)),
            None => Storage::Sqlite(sqlite::Sqlite::open(&config.path)?),
        })
    }

    pub fn session(&self, role: Role) -> Result<Box<dyn Session>> {
        Ok(match self {
            Storage::Memory(m) => Box::new(m.session()),
            Storage::Sqlite(s) => Box::new(s.session(role)?),
            Storage::Postgres(p) => Box::new(p.session(role)?),
        })
    }

    /// For a daemon on SQLite: the WAL is copied into the database on a thread
    /// of its own ([`sqlite::Sqlite::start_checkpointer`]). Nothing elsewhere.
    pub fn start_checkpointer(&self) -> Result<Option<sqlite::Checkpointer>> {
        match self {
            Storage::Sqlite(s) => s.start_checkpointer().map(Some),
            Storage::Memory(_) | Storage::Postgres(_) => Ok(None),
        }
    }

    /// Whether several replicas may share this storage (the evaluator lease matters).
    pub fn shared(&self) -> bool {
        matches!(self, Storage::Postgres(_))
    }

    /// Where the data is, for logs (never with a password).
    pub fn describe(&self) -> String {
        match self {
            Storage::Memory(_) => "memory".into(),
            Storage::Sqlite(s) => format!("SQLite {}", s.path().display()),
            Storage::Postgres(p) => format!("PostgreSQL {}", p.describe()),
        }
    }

    /// A problem that must stop acknowledging records, if any (`/readyz`): the
    /// SQLite file deleted or replaced under the daemon.
    pub fn problem(&self) -> Option<String> {
        match self {
            Storage::Sqlite(s) => s.file_problem(),
            Storage::Memory(_) | Storage::Postgres(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(context: serde_json::Value, samples: &[&str]) -> Alert {
        let mut a: Alert = serde_json::from_value(serde_json::json!({
            "alertId": "a1", "id": "R", "type": "RULE", "title": "t \"quoted\"",
            "severity": "HIGH", "dedup": "d", "createdAt": "", "firstEventAt": "",
            "lastEventAt": "", "eventCount": 2, "description": "", "runbook": "",
            "reference": "", "tags": [], "reports": {}, "alertContext": context,
            "destinations": ["hook"], "events": [], "version": "3f2a"
        }))
        .unwrap();
        a.events = samples.iter().map(|s| SampleEvent::from_json(s)).collect();
        a
    }

    /// The delivery body put together from the row and the samples' texts is
    /// the alert as a whole serialises, byte for byte, whatever the alert's
    /// context holds; a row from before the samples moved out is parsed.
    #[test]
    fn delivery_json_is_the_whole_alert_as_it_serialises() {
        let samples = [
            r#"{"action":"DOWNLOAD_CSV","n":1}"#,
            r#"{"n":2,"s":"\"events\":[]"}"#,
        ];
        for context in [
            serde_json::json!({}),
            serde_json::json!({"events": [], "version": "x"}),
            serde_json::json!({"note": "\"events\":[],\"version\":\"9\"}"}),
        ] {
            let whole = serde_json::to_string(&alert(context.clone(), &samples)).unwrap();
            let row = alert_row_json(&alert(context.clone(), &samples)).unwrap();
            assert!(!row.contains("DOWNLOAD_CSV"), "{row}");
            assert_eq!(delivery_json(&row, &samples).unwrap(), whole, "{context}");
            assert_eq!(
                delivery_json(&row, &[]).unwrap(),
                serde_json::to_string(&alert(context.clone(), &[])).unwrap()
            );
            // An older row still holding its samples: the stored samples win.
            let old = serde_json::to_string(&alert(context, &[r#"{"old":true}"#])).unwrap();
            assert_eq!(delivery_json(&old, &samples).unwrap(), whole);
        }
    }
}
