//! PostgreSQL (`storage.url`): several replicas share one database.
//!
//! - Every replica receives and journals. A group commit takes a transaction-level
//!   advisory lock before it allocates sequence numbers, so numbers are handed
//!   out in commit order: a reader that sees record N sees every record below N
//!   that will ever commit, and the evaluator's cursor never passes a record
//!   committed late. (Without the lock, a group that allocated 103 could commit
//!   after another group's 105 was evaluated, and 103 would be skipped.) Each
//!   group is one round trip of arrays, so the lock is held for one commit.
//! - Exactly one replica evaluates: the one whose evaluator session holds a
//!   session-level advisory lock (released by PostgreSQL when that session ends,
//!   e.g. the replica is killed). Every commit of effects also checks the
//!   cursor it started from, so an evaluator that lost its lease cannot write.
//! - Any replica delivers: due deliveries are claimed with `FOR UPDATE SKIP
//!   LOCKED` for a while (`claimed_until`); a dead replica's claims run out and
//!   another replica sends them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ::postgres::types::ToSql;
use ::postgres::{Client, Statement};

use super::console::{
    AlertDetail, AlertQuery, AlertSummary, DeliveryRow, QuarantineRow, RuleActivity, Triage,
};
use super::{
    now_ms, Appended, Attempt, AttemptResult, Batch, Due, Effects, Outcome, Pruned, Result, Role,
    Session, StorageError, StoredRecord, EVALUATOR,
};
use hexwatch_model::alert::{SampleEvent, Window, WindowKey};

mod embedded {
    refinery::embed_migrations!("src/migrations/postgres");
}

/// Advisory lock keys (one namespace per hexwatch database).
const MIGRATION_LOCK: i64 = 0x6865_7877_0001;
const JOURNAL_LOCK: i64 = 0x6865_7877_0002;
const EVALUATOR_LOCK: i64 = 0x6865_7877_0003;

type Tls = tokio_postgres_rustls::MakeRustlsConnect;

/// The PostgreSQL storage at one URL.
#[derive(Clone)]
pub struct Postgres {
    config: ::postgres::Config,
    tls: Tls,
    display: String,
}

impl Postgres {
    /// Connects once to check the server and migrate the schema (one replica at a
    /// time: the migration holds an advisory lock).
    pub fn open(url: &crate::PostgresUrl) -> Result<Postgres> {
        let mut config: ::postgres::Config = url
            .url
            .parse()
            .map_err(|e| StorageError::Other(format!("storage.url: {e}")))?;
        if let Some(p) = &url.password {
            config.password(p);
        }
        config
            .application_name("hexwatch")
            .connect_timeout(Duration::from_secs(5))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10));
        let tls = tls_connector(url.ca_file.as_deref())?;
        let display = describe(&config);
        let pg = Postgres {
            config,
            tls,
            display,
        };
        let mut client = pg.connect()?;
        client.query_one("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
        let migrated = embedded::migrations::runner().run(&mut client);
        client.query_one("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])?;
        migrated?;
        Ok(pg)
    }

    fn connect(&self) -> Result<Client> {
        Ok(self.config.connect(self.tls.clone())?)
    }

    pub fn session(&self, role: Role) -> Result<PostgresSession> {
        let mut client = self.connect()?;
        if role == Role::Derived {
            // As on SQLite: what the journal can derive again skips the wait
            // for the WAL flush; a lost commit is evaluated or sent again.
            client.batch_execute("SET synchronous_commit = off")?;
        }
        Ok(PostgresSession {
            client: Connection(Some(client)),
            statements: HashMap::new(),
            leased: false,
        })
    }

    /// host:port/database and user, for logs.
    pub fn describe(&self) -> String {
        self.display.clone()
    }
}

fn describe(c: &::postgres::Config) -> String {
    let host = c
        .get_hosts()
        .iter()
        .map(|h| match h {
            ::postgres::config::Host::Tcp(name) => name.clone(),
            ::postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
    let port = c
        .get_ports()
        .first()
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    format!(
        "{}@{host}{port}/{}",
        c.get_user().unwrap_or(""),
        c.get_dbname().unwrap_or("")
    )
}

/// rustls with the public roots, plus `ca_file` when given. TLS is used as the
/// URL's `sslmode` says (`require` for a managed database).
fn tls_connector(ca_file: Option<&std::path::Path>) -> Result<Tls> {
    let config = crate::tls::client_config(ca_file, "storage.ca_file")?;
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// PostgreSQL text cannot hold NUL characters; every other character is kept.
/// (JSON text never has one: serde_json escapes it. Keys, rule state and
/// quarantined input might.)
fn text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// An alert from its row's JSON and its stored samples.
fn read_alert(json: &str, samples: Vec<&str>) -> Result<hexwatch_model::alert::Alert> {
    super::alert_from_row(
        json,
        samples.into_iter().map(SampleEvent::from_json).collect(),
    )
}

/// One connection to PostgreSQL, with its prepared statements.
pub struct PostgresSession {
    client: Connection,
    statements: HashMap<&'static str, Statement>,
    /// Whether this session holds the evaluator lease.
    leased: bool,
}

/// The client, closed off the async threads when dropped: the synchronous
/// client closes by running a runtime of its own, which cannot start on a
/// thread that drives async tasks (a delivery worker that stops, say).
struct Connection(Option<Client>);

impl std::ops::Deref for Connection {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.0.as_ref().expect("open until dropped")
    }
}

impl std::ops::DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut Client {
        self.0.as_mut().expect("open until dropped")
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                std::thread::spawn(move || drop(client));
            }
        }
    }
}

impl PostgresSession {
    /// The prepared statement for `sql` (prepared once per session).
    fn stmt(&mut self, sql: &'static str) -> Result<Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    /// The client itself (`migrate-storage` and tests).
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }
}

const APPEND: &str = "INSERT INTO events (key, received_at, event_time, action, record)
     SELECT k, $2, t, a, r
     FROM unnest($1::text[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY AS u(k, t, a, r, n)
     ORDER BY n
     ON CONFLICT (key) DO NOTHING
     RETURNING seq, key";
const QUARANTINE: &str = "INSERT INTO quarantine (received_at, record_index, line, reason, raw)
     SELECT $1, i, l, r, w FROM unnest($2::int8[], $3::int8[], $4::text[], $5::text[]) AS u(i, l, r, w)";
const READ_AFTER: &str = "SELECT seq, action, event_time, record, received_at FROM events
     WHERE seq > $1 ORDER BY seq LIMIT $2";
const COUNTER: &str = "SELECT value, expires_at FROM state_counters WHERE key = $1";
const SET_MEMBER: &str = "SELECT expires_at FROM state_sets WHERE key = $1 AND member = $2";
const VALUE: &str = "SELECT value, expires_at FROM state_kv WHERE key = $1";
/// An alert row's stored samples, in order (`alert_samples`), as a column.
macro_rules! samples_of {
    ($alert_id:literal) => {
        concat!(
            "(SELECT coalesce(array_agg(s.record ORDER BY s.idx), '{}') FROM alert_samples s
              WHERE s.alert_id = ",
            $alert_id,
            ")"
        )
    };
}
const LATEST_WINDOW: &str =
    "SELECT window_start, window_end, threshold, created, last_event_ms, alert
     FROM alerts WHERE rule_id = $1 AND type = $2 AND dedup = $3
     ORDER BY window_start DESC LIMIT 1";
const MOVE_CURSOR: &str = "UPDATE cursors SET seq = $2 WHERE name = $1 AND seq = $3";
const SAVE_COUNTERS: &str = "INSERT INTO state_counters (key, value, expires_at)
     SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[])
     ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at";
const SAVE_SETS: &str = "INSERT INTO state_sets (key, member, expires_at)
     SELECT * FROM unnest($1::text[], $2::text[], $3::int8[])
     ON CONFLICT (key, member) DO UPDATE SET expires_at = excluded.expires_at";
const SAVE_VALUES: &str = "INSERT INTO state_kv (key, value, expires_at)
     SELECT * FROM unnest($1::text[], $2::text[], $3::int8[])
     ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at";
const SAVE_WINDOW: &str =
    "INSERT INTO alerts (alert_id, rule_id, type, dedup, severity, title, created,
                         threshold, window_start, window_end, last_event_ms, event_count,
                         created_at, first_event_at, last_event_at, updated_at, alert)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
     ON CONFLICT (alert_id) DO UPDATE SET
       created = excluded.created, event_count = excluded.event_count,
       last_event_ms = excluded.last_event_ms, created_at = excluded.created_at,
       last_event_at = excluded.last_event_at, updated_at = excluded.updated_at,
       alert = excluded.alert";
const SAVE_SAMPLES: &str = "INSERT INTO alert_samples (alert_id, idx, record)
     SELECT * FROM unnest($1::text[], $2::int8[], $3::text[])
     ON CONFLICT (alert_id, idx) DO NOTHING";
const ENQUEUE: &str = "INSERT INTO deliveries
       (alert_id, destination, status, attempts, next_attempt_at, created_at, queued_at, updated_at)
     SELECT a, d, 'pending', 0, $3, $3, $3, $3 FROM unnest($1::text[], $2::text[]) AS u(a, d)
     ON CONFLICT (alert_id, destination) DO NOTHING";
const RAISE_EVALUATED: &str = "INSERT INTO watermarks (name, ms) VALUES ('evaluated', $1)
     ON CONFLICT (name) DO UPDATE SET ms = GREATEST(watermarks.ms, excluded.ms)";
const DELIVERED: &str =
    "UPDATE deliveries SET status = 'delivered', attempts = $2, last_error = NULL,
            claimed_until = NULL, updated_at = $3, delivered_at = $3 WHERE id = $1";
const FAILED: &str = "UPDATE deliveries SET status = $2, attempts = $3, last_error = $4,
            next_attempt_at = $5, claimed_until = NULL, updated_at = $6 WHERE id = $1";
const UNSENT: &str = "UPDATE deliveries SET claimed_until = NULL WHERE id = $1";
const CLAIM: &str = concat!(
    "WITH due AS (
       SELECT id FROM deliveries
       WHERE destination = $1 AND status = 'pending' AND next_attempt_at <= $2
         AND (claimed_until IS NULL OR claimed_until <= $2)
       ORDER BY next_attempt_at, id LIMIT $3
       FOR UPDATE SKIP LOCKED)
     UPDATE deliveries d SET claimed_until = $4 FROM due WHERE d.id = due.id
     RETURNING d.id, d.alert_id, d.attempts, coalesce(d.queued_at, d.created_at),
       (SELECT alert FROM alerts a WHERE a.alert_id = d.alert_id), ",
    samples_of!("d.alert_id")
);

impl Session for PostgresSession {
    fn append(&mut self, batches: &[&Batch]) -> Result<Appended> {
        let now = now_ms();
        let (append, quarantine) = (self.stmt(APPEND)?, self.stmt(QUARANTINE)?);
        let entries = batches.iter().flat_map(|b| &b.entries);
        let keys: Vec<Cow<str>> = entries.clone().map(|e| text(&e.key)).collect();
        let times: Vec<Cow<str>> = entries.clone().map(|e| text(&e.event_time)).collect();
        let actions: Vec<Cow<str>> = entries.clone().map(|e| text(&e.action)).collect();
        let records: Vec<&str> = entries.map(|e| e.json.as_str()).collect();
        let quarantined = batches.iter().flat_map(|b| &b.quarantine);
        let q_index: Vec<Option<i64>> = quarantined
            .clone()
            .map(|q| q.index.map(|i| i as i64))
            .collect();
        let q_line: Vec<Option<i64>> = quarantined
            .clone()
            .map(|q| q.line.map(|l| l as i64))
            .collect();
        let q_reason: Vec<Cow<str>> = quarantined.clone().map(|q| text(&q.reason)).collect();
        let q_raw: Vec<Cow<str>> = quarantined.map(|q| text(&q.raw)).collect();

        let mut tx = self.client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&JOURNAL_LOCK])?;
        let rows = if keys.is_empty() {
            Vec::new()
        } else {
            tx.query(&append, &[&keys, &now, &times, &actions, &records])?
        };
        if !q_raw.is_empty() {
            tx.execute(&quarantine, &[&now, &q_index, &q_line, &q_reason, &q_raw])?;
        }
        tx.commit()?;

        let mut stored: HashMap<String, i64> = HashMap::with_capacity(rows.len());
        let mut last_seq = None;
        for row in rows {
            let seq: i64 = row.get(0);
            last_seq = last_seq.max(Some(seq));
            stored.insert(row.get(1), seq);
        }
        let mut keys = keys.into_iter();
        let outcomes = batches
            .iter()
            .map(|b| {
                b.entries
                    .iter()
                    .map(|_| {
                        let key = keys.next().expect("one key per entry");
                        // The first of several equal keys is the one stored.
                        match stored.remove(key.as_ref()) {
                            Some(seq) => Outcome::Accepted(seq),
                            None => Outcome::Duplicate,
                        }
                    })
                    .collect()
            })
            .collect();
        Ok((outcomes, last_seq))
    }

    fn last_seq(&mut self) -> Result<i64> {
        Ok(self
            .client
            .query_one("SELECT coalesce(max(seq), 0) FROM events", &[])?
            .get(0))
    }

    fn read_after(&mut self, after: i64, limit: usize) -> Result<Vec<StoredRecord>> {
        let stmt = self.stmt(READ_AFTER)?;
        let rows = self.client.query(&stmt, &[&after, &(limit as i64)])?;
        Ok(rows
            .into_iter()
            .map(|r| StoredRecord {
                seq: r.get(0),
                action: r.get(1),
                event_time: r.get(2),
                json: Arc::new(r.get(3)),
                received_at: r.get(4),
                tree: None,
            })
            .collect())
    }

    fn try_lease(&mut self) -> Result<bool> {
        if !self.leased {
            self.leased = self
                .client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&EVALUATOR_LOCK])?
                .get(0);
        }
        Ok(self.leased && !self.client.is_closed())
    }

    fn cursor(&mut self, name: &str) -> Result<i64> {
        Ok(self
            .client
            .query_opt("SELECT seq FROM cursors WHERE name = $1", &[&name])?
            .map_or(0, |r| r.get(0)))
    }

    // Only the lease holder writes state and windows: plain reads are current.
    fn begin_read(&mut self) -> Result<()> {
        Ok(())
    }

    fn end_read(&mut self) {}

    fn counter(&mut self, key: &str) -> Result<Option<(i64, i64)>> {
        let stmt = self.stmt(COUNTER)?;
        Ok(self
            .client
            .query_opt(&stmt, &[&text(key)])?
            .map(|r| (r.get(0), r.get(1))))
    }

    fn set_member(&mut self, key: &str, member: &str) -> Result<Option<i64>> {
        let stmt = self.stmt(SET_MEMBER)?;
        Ok(self
            .client
            .query_opt(&stmt, &[&text(key), &text(member)])?
            .map(|r| r.get(0)))
    }

    fn value(&mut self, key: &str) -> Result<Option<(String, i64)>> {
        let stmt = self.stmt(VALUE)?;
        Ok(self
            .client
            .query_opt(&stmt, &[&text(key)])?
            .map(|r| (r.get(0), r.get(1))))
    }

    fn latest_window(&mut self, key: &WindowKey) -> Result<Option<Window>> {
        let stmt = self.stmt(LATEST_WINDOW)?;
        let row = self.client.query_opt(
            &stmt,
            &[&text(&key.rule_id), &text(&key.kind), &text(&key.dedup)],
        )?;
        let Some(r) = row else {
            return Ok(None);
        };
        Ok(Some(
            Window {
                key: key.clone(),
                start_ms: r.get(0),
                end_ms: r.get(1),
                threshold: r.get(2),
                created: r.get(3),
                last_ms: r.get(4),
                alert: serde_json::from_str(r.get::<_, &str>(5))?,
                samples_stored: 0,
            }
            .stored(),
        ))
    }

    fn commit(&mut self, e: &Effects) -> Result<()> {
        let move_cursor = self.stmt(MOVE_CURSOR)?;
        let counters = self.stmt(SAVE_COUNTERS)?;
        let sets = self.stmt(SAVE_SETS)?;
        let values = self.stmt(SAVE_VALUES)?;
        let window = self.stmt(SAVE_WINDOW)?;
        let save_samples = self.stmt(SAVE_SAMPLES)?;
        let enqueue = self.stmt(ENQUEUE)?;
        let evaluated = self.stmt(RAISE_EVALUATED)?;
        let mut tx = self.client.transaction()?;
        let moved = tx.execute(&move_cursor, &[&EVALUATOR, &e.to_cursor, &e.from_cursor])?;
        if moved == 0 {
            let exists = tx.query_opt("SELECT seq FROM cursors WHERE name = $1", &[&EVALUATOR])?;
            if exists.is_some() {
                return Err(StorageError::LeaseLost);
            }
            tx.execute(
                "INSERT INTO cursors (name, seq) VALUES ($1, $2)",
                &[&EVALUATOR, &e.to_cursor],
            )?;
        }
        if !e.state.counters.is_empty() {
            let (mut k, mut v, mut x) = (Vec::new(), Vec::new(), Vec::new());
            for (key, (value, exp)) in &e.state.counters {
                k.push(text(key));
                v.push(*value);
                x.push(*exp);
            }
            tx.execute(&counters, &[&k, &v, &x])?;
        }
        if !e.state.sets.is_empty() {
            let (mut k, mut m, mut x) = (Vec::new(), Vec::new(), Vec::new());
            for ((key, member), exp) in &e.state.sets {
                k.push(text(key));
                m.push(text(member));
                x.push(*exp);
            }
            tx.execute(&sets, &[&k, &m, &x])?;
        }
        if !e.state.kv.is_empty() {
            let (mut k, mut v, mut x) = (Vec::new(), Vec::new(), Vec::new());
            for (key, (value, exp)) in &e.state.kv {
                k.push(text(key));
                v.push(text(value));
                x.push(*exp);
            }
            tx.execute(&values, &[&k, &v, &x])?;
        }
        let now = now_ms();
        let (mut sample_ids, mut sample_idx, mut samples) = (Vec::new(), Vec::new(), Vec::new());
        for w in &e.windows {
            let a = &w.alert;
            let json = super::alert_row_json(a)?;
            for (i, s) in a.events.iter().enumerate() {
                sample_ids.push(a.alert_id.as_str());
                sample_idx.push((w.samples_stored + i) as i64);
                samples.push(s.json());
            }
            let params: [&(dyn ToSql + Sync); 17] = [
                &a.alert_id,
                &text(&w.key.rule_id),
                &w.key.kind,
                &text(&w.key.dedup),
                &a.severity.as_str(),
                &text(&a.title),
                &w.created,
                &w.threshold,
                &w.start_ms,
                &w.end_ms,
                &w.last_ms,
                &a.event_count,
                &a.created_at,
                &a.first_event_at,
                &a.last_event_at,
                &now,
                &json,
            ];
            tx.execute(&window, &params)?;
        }
        if !samples.is_empty() {
            tx.execute(&save_samples, &[&sample_ids, &sample_idx, &samples])?;
        }
        if !e.deliveries.is_empty() {
            let (mut ids, mut dests) = (Vec::new(), Vec::new());
            for (alert_id, destinations) in &e.deliveries {
                for d in destinations {
                    ids.push(alert_id.as_str());
                    dests.push(d.as_str());
                }
            }
            tx.execute(&enqueue, &[&ids, &dests, &now])?;
        }
        if e.evaluated_ms != i64::MIN {
            tx.execute(&evaluated, &[&e.evaluated_ms])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn claim_due(&mut self, destination: &str, limit: usize, claim_until: i64) -> Result<Vec<Due>> {
        let stmt = self.stmt(CLAIM)?;
        let rows = self.client.query(
            &stmt,
            &[&destination, &now_ms(), &(limit as i64), &claim_until],
        )?;
        let mut out = rows
            .into_iter()
            .map(|r| {
                Ok(Due {
                    id: r.get(0),
                    alert_id: r.get(1),
                    attempts: r.get(2),
                    queued_at: r.get(3),
                    alert_json: super::delivery_json(r.get(4), &r.get::<_, Vec<&str>>(5))?,
                })
            })
            .collect::<Result<Vec<Due>>>()?;
        out.sort_by_key(|d| d.id);
        Ok(out)
    }

    fn next_due(&mut self, destination: &str) -> Result<Option<i64>> {
        Ok(self
            .client
            .query_opt(
                "SELECT next_attempt_at FROM deliveries
                 WHERE destination = $1 AND status = 'pending'
                   AND (claimed_until IS NULL OR claimed_until <= $2)
                 ORDER BY next_attempt_at LIMIT 1",
                &[&destination, &now_ms()],
            )?
            .map(|r| r.get(0)))
    }

    fn pending(&mut self, destination: &str) -> Result<i64> {
        Ok(self
            .client
            .query_one(
                "SELECT count(*) FROM deliveries WHERE destination = $1 AND status = 'pending'",
                &[&destination],
            )?
            .get(0))
    }

    fn record_attempts(&mut self, done: &[Attempt]) -> Result<()> {
        let now = now_ms();
        let delivered = self.stmt(DELIVERED)?;
        let failed = self.stmt(FAILED)?;
        let unsent = self.stmt(UNSENT)?;
        let mut tx = self.client.transaction()?;
        for a in done {
            match &a.result {
                AttemptResult::Delivered => {
                    tx.execute(&delivered, &[&a.id, &a.attempts, &now])?;
                }
                AttemptResult::Failed { error, retry_at } => {
                    let (status, next) = super::after_failure(*retry_at, now);
                    tx.execute(
                        &failed,
                        &[&a.id, &status, &a.attempts, &text(error), &next, &now],
                    )?;
                }
                AttemptResult::Unsent => {
                    tx.execute(&unsent, &[&a.id])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn release_claims(&mut self) -> Result<usize> {
        Ok(self.client.execute(
            "UPDATE deliveries SET claimed_until = NULL WHERE claimed_until IS NOT NULL",
            &[],
        )? as usize)
    }

    fn requeue_failed(
        &mut self,
        destination: Option<&str>,
        since_ms: Option<i64>,
    ) -> Result<usize> {
        let n = self.client.execute(
            "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $1,
                    queued_at = $1, updated_at = $1, claimed_until = NULL
             WHERE status = 'failed'
               AND ($2::text IS NULL OR destination = $2)
               AND ($3::int8 IS NULL OR created_at >= $3)",
            &[&now_ms(), &destination, &since_ms],
        )?;
        Ok(n as usize)
    }

    fn prune(&mut self, retention: Duration) -> Result<Pruned> {
        let cutoff = now_ms() - retention.as_millis() as i64;
        let mut pruned = Pruned::default();
        loop {
            let n = self.client.execute(
                "DELETE FROM events WHERE seq IN (
                     SELECT seq FROM events
                     WHERE received_at <= $1
                       AND seq <= coalesce((SELECT min(seq) FROM cursors), 9223372036854775807)
                     ORDER BY seq LIMIT 5000)",
                &[&cutoff],
            )? as usize;
            pruned.events += n;
            if n < 5000 {
                break;
            }
        }
        let mut tx = self.client.transaction()?;
        pruned.quarantine =
            tx.execute("DELETE FROM quarantine WHERE received_at <= $1", &[&cutoff])? as usize;
        let evaluated: Option<i64> = tx
            .query_opt("SELECT ms FROM watermarks WHERE name = 'evaluated'", &[])?
            .map(|r| r.get(0));
        if let Some(evaluated) = evaluated {
            let closed_before = evaluated.saturating_sub(retention.as_millis() as i64);
            tx.execute(
                "DELETE FROM deliveries WHERE status != 'pending' AND alert_id IN
                   (SELECT alert_id FROM alerts WHERE updated_at <= $1 AND window_end < $2)",
                &[&cutoff, &closed_before],
            )?;
            tx.execute(
                "DELETE FROM alert_samples WHERE alert_id IN
                   (SELECT alert_id FROM alerts WHERE updated_at <= $1 AND window_end < $2
                      AND alert_id NOT IN (SELECT alert_id FROM deliveries))",
                &[&cutoff, &closed_before],
            )?;
            pruned.alerts = tx.execute(
                "DELETE FROM alerts WHERE updated_at <= $1 AND window_end < $2
                   AND alert_id NOT IN (SELECT alert_id FROM deliveries)",
                &[&cutoff, &closed_before],
            )? as usize;
            for sql in [
                "DELETE FROM state_counters WHERE expires_at < $1",
                "DELETE FROM state_sets WHERE expires_at < $1",
                "DELETE FROM state_kv WHERE expires_at < $1",
            ] {
                pruned.state += tx.execute(sql, &[&closed_before])? as usize;
            }
        }
        tx.commit()?;
        Ok(pruned)
    }

    fn is_broken(&self) -> bool {
        self.client.is_closed()
    }
}

impl super::console::ConsoleQueries for PostgresSession {
    fn list_alerts(&mut self, q: &AlertQuery) -> Result<Vec<AlertSummary>> {
        let rows = self.client.query(
            "SELECT alert_id, rule_id, severity, title, created_at, last_event_at, event_count, triage
             FROM alerts
             WHERE created
               AND ($1::text IS NULL OR severity = $1)
               AND ($2::text IS NULL OR rule_id = $2)
               AND ($3::text IS NULL OR triage = $3)
               AND ($4::text IS NULL OR created_at >= $4)
             ORDER BY created_at DESC, alert_id
             LIMIT $5 OFFSET $6",
            &[&q.severity, &q.rule, &q.triage, &q.since, &q.limit, &q.offset],
        )?;
        Ok(rows
            .iter()
            .map(|r| AlertSummary {
                alert_id: r.get(0),
                rule_id: r.get(1),
                severity: r.get(2),
                title: r.get(3),
                created_at: r.get(4),
                last_event_at: r.get(5),
                event_count: r.get(6),
                triage: r.get(7),
            })
            .collect())
    }

    fn alert_detail(&mut self, alert_id: &str) -> Result<Option<AlertDetail>> {
        let Some(row) = self.client.query_opt(
            concat!(
                "SELECT alert, triage, triage_by, triage_at, triage_note, ",
                samples_of!("alerts.alert_id"),
                " FROM alerts WHERE alert_id = $1 AND created"
            ),
            &[&alert_id],
        )?
        else {
            return Ok(None);
        };
        let alert = read_alert(row.get(0), row.get(5))?;
        let triage = Triage {
            status: row.get(1),
            by: row.get(2),
            at: row.get(3),
            note: row.get(4),
        };
        let deliveries = self
            .client
            .query(
                "SELECT id, destination, status, attempts, last_error, updated_at
                 FROM deliveries WHERE alert_id = $1 ORDER BY destination, id",
                &[&alert_id],
            )?
            .iter()
            .map(|r| DeliveryRow {
                id: r.get(0),
                destination: r.get(1),
                status: r.get(2),
                attempts: r.get(3),
                last_error: r.get(4),
                updated_at: r.get(5),
            })
            .collect();
        Ok(Some(AlertDetail {
            alert: serde_json::to_value(alert)?,
            triage,
            deliveries,
        }))
    }

    fn set_triage(
        &mut self,
        alert_id: &str,
        status: &str,
        by: &str,
        note: &str,
        at_ms: i64,
    ) -> Result<bool> {
        Ok(self.client.execute(
            "UPDATE alerts SET triage = $2, triage_by = $3, triage_note = $4, triage_at = $5
             WHERE alert_id = $1 AND created",
            &[&alert_id, &status, &text(by), &text(note), &at_ms],
        )? == 1)
    }

    fn retry_delivery(&mut self, id: i64) -> Result<bool> {
        Ok(self.client.execute(
            "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $2,
                    queued_at = $2, updated_at = $2, claimed_until = NULL
             WHERE id = $1 AND status = 'failed'",
            &[&id, &now_ms()],
        )? == 1)
    }

    fn recent_quarantine(&mut self, limit: i64) -> Result<Vec<QuarantineRow>> {
        Ok(self
            .client
            .query(
                "SELECT id, received_at, record_index, line, reason, raw FROM quarantine
                 ORDER BY id DESC LIMIT $1",
                &[&limit],
            )?
            .iter()
            .map(|r| QuarantineRow {
                id: r.get(0),
                received_at: r.get(1),
                index: r.get(2),
                line: r.get(3),
                reason: r.get(4),
                raw: r.get(5),
            })
            .collect())
    }

    fn rule_activity(&mut self, since: &str) -> Result<Vec<RuleActivity>> {
        Ok(self
            .client
            .query(
                "SELECT rule_id, count(*), sum(event_count)::int8, max(created_at) FROM alerts
                 WHERE created AND created_at >= $1 GROUP BY rule_id",
                &[&since],
            )?
            .iter()
            .map(|r| RuleActivity {
                rule_id: r.get(0),
                alerts: r.get(1),
                matches: r.get(2),
                last_fired: r.get(3),
            })
            .collect())
    }

    fn queue_depth(&mut self) -> Result<i64> {
        Ok(self
            .client
            .query_one(
                "SELECT count(*) FROM deliveries WHERE status = 'pending'",
                &[],
            )?
            .get(0))
    }
}
