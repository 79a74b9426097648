//! PostgreSQL (`storage.url`): several replicas share one database.
//!
//! - Every replica receives and journals. A group commit takes a transaction-level
//!   advisory lock before it allocates sequence numbers, so numbers are handed
//!   out in commit order: a reader that sees record N sees every record below N
//!   that will ever commit, and the evaluator's cursor never passes a record
//!   committed late. (Without the lock, a group that allocated 103 could commit
//!   after another group's 105 was evaluated, and 103 would be skipped.) Each
//!   group is one round trip of arrays, so the lock is held for one commit.
//! - Exactly one replica evaluates: the one holding the evaluator lease, a row
//!   of `leases` with an expiry on the database's clock ([`LEASE_TTL`]). The
//!   holder renews it with every commit of effects and while idle; a holder
//!   that stops making progress (killed, paused, partitioned) loses it when it
//!   runs out, and a standby takes it. Every commit of effects checks both the
//!   lease and the cursor it started from, so a former holder cannot write.
//!   Sessions end transactions left idle for longer than the lease
//!   (`idle_in_transaction_session_timeout`): a paused replica's row locks
//!   and advisory locks are released for the others.
//! - Any replica delivers: due deliveries are claimed with `FOR UPDATE SKIP
//!   LOCKED` for a while (`claimed_until`); a dead replica's claims run out and
//!   another replica sends them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ::postgres::{Client, Statement};

use super::sql::{self, SqlSession};
use super::{
    now_ms, Appended, Attempt, Batch, Due, Effects, Outcome, Pruned, Result, Role, Session,
    StorageError, StoredRecord, WindowsAt,
};
use crate::silences::Silence;
use crate::{NoticeWrite, StoredIncident};
use hexwatch_model::alert::{Alert, WindowKey};

mod binding;
mod effects;

use binding::Pg;

mod embedded {
    refinery::embed_migrations!("src/migrations/postgres");
}

/// Advisory lock keys (one namespace per hexwatch database).
const MIGRATION_LOCK: i64 = 0x6865_7877_0001;
const JOURNAL_LOCK: i64 = 0x6865_7877_0002;

/// How long the evaluator lease lasts without renewal: the longest a stopped
/// lease holder holds up evaluation (a standby asks every half second).
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// A transaction left idle this long is ended by the server, with its locks.
const IDLE_IN_TRANSACTION: Duration = LEASE_TTL;
/// The database's clock in unix ms (every replica reads the same one).
macro_rules! db_now_ms {
    () => {
        "CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)"
    };
}
/// Takes the lease when it is free, run out, or its holder's session is gone
/// (a replica killed: no need to wait for the expiry), or renews it for its
/// holder.
const TAKE_LEASE: &str = concat!(
    "INSERT INTO leases (name, holder, holder_pid, expires_at)
     VALUES ('evaluator', $1, pg_backend_pid(), ",
    db_now_ms!(),
    " + $2)
     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
       holder_pid = excluded.holder_pid, expires_at = excluded.expires_at
     WHERE leases.holder = excluded.holder OR leases.expires_at < ",
    db_now_ms!(),
    " OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = leases.holder_pid)
     RETURNING holder"
);
/// Renews the lease inside a commit of effects; no row: the lease is gone.
const RENEW_LEASE: &str = concat!(
    "UPDATE leases SET expires_at = ",
    db_now_ms!(),
    " + $2 WHERE name = 'evaluator' AND holder = $1 AND expires_at >= ",
    db_now_ms!()
);

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
        let mut config: ::postgres::Config = url.url.parse().map_err(StorageError::Url)?;
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
        crate::migrate::log_applied(&migrated?);
        Ok(pg)
    }

    fn connect(&self) -> Result<Client> {
        Ok(self.config.connect(self.tls.clone())?)
    }

    pub fn session(&self, role: Role) -> Result<PostgresSession> {
        let mut client = self.connect()?;
        client.batch_execute(&format!(
            "SET idle_in_transaction_session_timeout = {}",
            IDLE_IN_TRANSACTION.as_millis()
        ))?;
        if role == Role::Derived {
            // As on SQLite: what the journal can derive again skips the wait
            // for the WAL flush; a lost commit is evaluated or sent again.
            client.batch_execute("SET synchronous_commit = off")?;
        }
        Ok(PostgresSession {
            client: Connection(Some(client)),
            statements: HashMap::new(),
            holder: lease_holder(),
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

/// A session's name as a lease holder: unique among replicas. (A session
/// that replaces a broken one takes the lease back at once: the broken one's
/// server process is gone.)
fn lease_holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!(
        "{}/{}/{:016x}",
        host.trim(),
        std::process::id(),
        rand::random::<u64>()
    )
}

/// One connection to PostgreSQL, with its prepared statements.
pub struct PostgresSession {
    client: Connection,
    statements: HashMap<&'static str, Statement>,
    /// This session's name in the `leases` table.
    holder: String,
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
    samples_of!("d.alert_id"),
    ", d.message"
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
        let stmt = self.stmt(TAKE_LEASE)?;
        let ttl = LEASE_TTL.as_millis() as i64;
        Ok(self
            .client
            .query_opt(&stmt, &[&self.holder, &ttl])?
            .is_some())
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

    fn windows_at(&mut self, key: &WindowKey, at_ms: i64) -> Result<WindowsAt> {
        sql::SqlSession::reads(self, |sql| sql::windows_at(sql, key, at_ms))
    }

    fn commit(&mut self, e: &Effects) -> Result<()> {
        self.commit_effects(e)
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
                let message: Option<String> = r.get(6);
                let incident_notice = message.is_some();
                let body = match message {
                    Some(m) => m,
                    None => super::delivery_json(
                        r.get::<_, Option<&str>>(4).unwrap_or_default(),
                        &r.get::<_, Vec<&str>>(5),
                    )?,
                };
                Ok(Due {
                    id: r.get(0),
                    alert_id: r.get(1),
                    attempts: r.get(2),
                    queued_at: r.get(3),
                    alert_json: body,
                    incident_notice,
                })
            })
            .collect::<Result<Vec<Due>>>()?;
        out.sort_by_key(|d| d.id);
        Ok(out)
    }

    fn next_due(&mut self, destination: &str) -> Result<Option<i64>> {
        self.reads(|sql| sql::next_due(sql, destination))
    }

    fn incident_of_group(&mut self, group_key: &str) -> Result<Option<StoredIncident>> {
        self.reads(|sql| crate::incidents::of_group(sql, group_key))
    }

    fn due_incidents(&mut self, now: i64, limit: usize) -> Result<Vec<StoredIncident>> {
        self.reads(|sql| crate::incidents::due(sql, now, limit))
    }

    fn incident_alerts(&mut self, id: &str, from: i64, limit: usize) -> Result<Vec<Alert>> {
        self.reads(|sql| crate::incidents::alerts_of(sql, id, from, limit))
    }

    fn record_notice(&mut self, notice: &NoticeWrite) -> Result<bool> {
        let now = now_ms();
        self.writes(|tx| crate::incidents::record_notice(tx, notice, now))
    }

    fn live_silences(&mut self, now: i64) -> Result<Vec<Silence>> {
        self.reads(|sql| crate::silences::live(sql, now))
    }

    fn pending(&mut self, destination: &str) -> Result<i64> {
        self.reads(|sql| sql::pending(sql, destination))
    }

    fn record_attempts(&mut self, done: &[Attempt]) -> Result<()> {
        self.writes(|tx| sql::record_attempts(tx, done))
    }

    fn release_claims(&mut self) -> Result<usize> {
        self.writes(sql::release_claims)
    }

    fn requeue_failed(
        &mut self,
        destination: Option<&str>,
        since_ms: Option<i64>,
    ) -> Result<usize> {
        self.writes(|tx| sql::requeue_failed(tx, destination, since_ms))
    }

    fn prune(&mut self, retention: Duration) -> Result<Pruned> {
        let retention_ms = retention.as_millis() as i64;
        let cutoff = now_ms() - retention_ms;
        let mut events = 0;
        loop {
            let n = self.writes(|tx| tx.execute(sql::PRUNE_EVENTS, &[sql::Param::Int(cutoff)]))?;
            events += n;
            if n < sql::PRUNE_CHUNK {
                break;
            }
        }
        let pruned = self.writes(|tx| sql::prune_closed(tx, cutoff, retention_ms))?;
        Ok(Pruned { events, ..pruned })
    }

    fn is_broken(&self) -> bool {
        self.client.is_closed()
    }
}

impl sql::SqlSession for PostgresSession {
    fn reads<T>(&mut self, f: impl FnOnce(&mut dyn sql::Sql) -> Result<T>) -> Result<T> {
        f(&mut Pg {
            client: &mut *self.client,
            statements: &mut self.statements,
        })
    }

    fn writes<T>(&mut self, f: impl FnOnce(&mut dyn sql::Sql) -> Result<T>) -> Result<T> {
        let mut tx = self.client.transaction()?;
        let out = f(&mut Pg {
            client: &mut tx,
            statements: &mut self.statements,
        })?;
        tx.commit()?;
        Ok(out)
    }
}
