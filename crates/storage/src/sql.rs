//! The SQL both database engines run, written once.
//!
//! Statements are written in the dialect both SQLite and PostgreSQL accept:
//! numbered `?N` parameters (PostgreSQL's session turns them into `$N` when
//! it prepares them), `CAST(.. AS ..)` rather than `::`, booleans tested bare.
//! Each engine implements [`Sql`] for its connection and [`SqlSession`] for
//! its session; the delivery bookkeeping, the pruning of closed windows and
//! everything the console reads and changes are then the functions here.
//! What differs on purpose stays with the engine: the journal's group commit,
//! the commit of effects (PostgreSQL sends arrays, SQLite rows), claiming
//! deliveries (`FOR UPDATE SKIP LOCKED`) and the evaluator's point reads.

use super::inspect::{
    AlertDetail, AlertQuery, AlertSummary, ConsoleQueries, DeliveryRow, QuarantineRow,
    RuleActivity, Triage,
};
use super::{now_ms, Attempt, AttemptResult, DeliveryStatus, Pruned, Result, WindowsAt};
use hexwatch_model::alert::{SampleEvent, Window, WindowKey};

/// One value bound to a statement.
#[derive(Debug, Clone, Copy)]
pub enum Param<'a> {
    Int(i64),
    Text(&'a str),
    MaybeInt(Option<i64>),
    MaybeText(Option<&'a str>),
}

/// One row of a result, read by column index.
pub trait Row {
    fn int(&self, i: usize) -> Result<i64>;
    fn maybe_int(&self, i: usize) -> Result<Option<i64>>;
    fn text(&self, i: usize) -> Result<String>;
    fn maybe_text(&self, i: usize) -> Result<Option<String>>;
}

/// A connection of either engine, or a transaction on one.
pub trait Sql {
    /// Runs a statement; the rows it changed.
    fn execute(&mut self, sql: &'static str, params: &[Param]) -> Result<usize>;
    /// Runs a query, handing each row to `row` in order.
    fn query(
        &mut self,
        sql: &'static str,
        params: &[Param],
        row: &mut dyn FnMut(&dyn Row) -> Result<()>,
    ) -> Result<()>;
}

/// The rows of a query, each made by `make`.
pub fn rows<T>(
    sql: &mut dyn Sql,
    statement: &'static str,
    params: &[Param],
    mut make: impl FnMut(&dyn Row) -> Result<T>,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    sql.query(statement, params, &mut |r| {
        out.push(make(r)?);
        Ok(())
    })?;
    Ok(out)
}

/// The first row of a query, if any.
pub fn first<T>(
    sql: &mut dyn Sql,
    statement: &'static str,
    params: &[Param],
    make: impl FnMut(&dyn Row) -> Result<T>,
) -> Result<Option<T>> {
    Ok(rows(sql, statement, params, make)?.into_iter().next())
}

/// A session of an engine that runs the shared SQL.
pub trait SqlSession: Send {
    /// Runs `f` on the connection, for reads outside a transaction.
    fn reads<T>(&mut self, f: impl FnOnce(&mut dyn Sql) -> Result<T>) -> Result<T>;
    /// Runs `f` in one write transaction, committed when it returns `Ok`.
    fn writes<T>(&mut self, f: impl FnOnce(&mut dyn Sql) -> Result<T>) -> Result<T>;
}

/// Converts `?N` parameters to PostgreSQL's `$N`. Statements here have no
/// `?` in string literals.
pub fn numbered_for_postgres(sql: &str) -> String {
    sql.replace('?', "$")
}

// The delivery outbox.

const NEXT_DUE: &str = "SELECT next_attempt_at FROM deliveries
     WHERE destination = ?1 AND status = 'pending'
       AND (claimed_until IS NULL OR claimed_until <= ?2)
     ORDER BY next_attempt_at LIMIT 1";
const PENDING: &str =
    "SELECT count(*) FROM deliveries WHERE destination = ?1 AND status = 'pending'";
const DELIVERED: &str = "UPDATE deliveries SET status = 'delivered', attempts = ?2,
            last_error = NULL, claimed_until = NULL, updated_at = ?3, delivered_at = ?3
     WHERE id = ?1";
const FAILED: &str = "UPDATE deliveries SET status = ?2, attempts = ?3, last_error = ?4,
            next_attempt_at = ?5, claimed_until = NULL, updated_at = ?6 WHERE id = ?1";
/// An incident notification's outcome, in its incident's history.
const NOTICE_OUTCOME: &str = "INSERT INTO activity (subject, at, by_whom, what, detail)
     SELECT incident_id, ?2, 'hexwatch', CAST(?3 AS TEXT) || destination, CAST(?4 AS TEXT)
     FROM deliveries WHERE id = ?1 AND incident_id IS NOT NULL";
const UNSENT: &str = "UPDATE deliveries SET claimed_until = NULL WHERE id = ?1";
const RELEASE_CLAIMS: &str =
    "UPDATE deliveries SET claimed_until = NULL WHERE claimed_until IS NOT NULL";
const REQUEUE_FAILED: &str = "UPDATE deliveries SET status = 'pending', attempts = 0,
            next_attempt_at = ?1, queued_at = ?1, updated_at = ?1, claimed_until = NULL
     WHERE status = 'failed'
       AND (CAST(?2 AS TEXT) IS NULL OR destination = ?2)
       AND (CAST(?3 AS BIGINT) IS NULL OR created_at >= ?3)";

/// When the next unclaimed delivery to `destination` is due.
pub fn next_due(sql: &mut dyn Sql, destination: &str) -> Result<Option<i64>> {
    let params = [Param::Text(destination), Param::Int(now_ms())];
    first(sql, NEXT_DUE, &params, |r| r.int(0))
}

/// Deliveries to `destination` waiting.
pub fn pending(sql: &mut dyn Sql, destination: &str) -> Result<i64> {
    Ok(first(sql, PENDING, &[Param::Text(destination)], |r| r.int(0))?.unwrap_or(0))
}

/// Records what became of each attempt.
pub fn record_attempts(sql: &mut dyn Sql, done: &[Attempt]) -> Result<()> {
    let now = now_ms();
    for a in done {
        match &a.result {
            AttemptResult::Delivered => {
                let params = [Param::Int(a.id), Param::Int(a.attempts), Param::Int(now)];
                sql.execute(DELIVERED, &params)?;
                if a.incident_notice {
                    let what = Param::Text("notification delivered to ");
                    let outcome = [
                        Param::Int(a.id),
                        Param::Int(now),
                        what,
                        Param::MaybeText(None),
                    ];
                    sql.execute(NOTICE_OUTCOME, &outcome)?;
                }
            }
            AttemptResult::Failed { error, retry_at } => {
                let (status, next) = DeliveryStatus::after_failure(*retry_at, now);
                let params = [
                    Param::Int(a.id),
                    Param::Text(status.as_str()),
                    Param::Int(a.attempts),
                    Param::Text(error),
                    Param::Int(next),
                    Param::Int(now),
                ];
                sql.execute(FAILED, &params)?;
                if !a.incident_notice {
                    continue;
                }
                let what = Param::Text(match retry_at {
                    Some(_) => "notification will be retried: ",
                    None => "notification failed for good: ",
                });
                let outcome = [Param::Int(a.id), Param::Int(now), what, Param::Text(error)];
                sql.execute(NOTICE_OUTCOME, &outcome)?;
            }
            AttemptResult::Unsent => {
                sql.execute(UNSENT, &[Param::Int(a.id)])?;
            }
        }
    }
    Ok(())
}

/// Frees every claim (a daemon starting: no worker of its own holds one).
pub fn release_claims(sql: &mut dyn Sql) -> Result<usize> {
    sql.execute(RELEASE_CLAIMS, &[])
}

/// Puts failed deliveries back in the queue, of one destination and created
/// since a time when given.
pub fn requeue_failed(
    sql: &mut dyn Sql,
    destination: Option<&str>,
    since_ms: Option<i64>,
) -> Result<usize> {
    let params = [
        Param::Int(now_ms()),
        Param::MaybeText(destination),
        Param::MaybeInt(since_ms),
    ];
    sql.execute(REQUEUE_FAILED, &params)
}

// Alert windows.

const WINDOW_STARTING_BY: &str = "SELECT window_start, window_end, threshold,
       CAST(CASE WHEN created THEN 1 ELSE 0 END AS BIGINT), last_event_ms, alert
     FROM alerts WHERE rule_id = ?1 AND type = ?2 AND dedup = ?3 AND window_start <= ?4
     ORDER BY window_start DESC LIMIT 1";
const NEXT_WINDOW_START: &str = "SELECT window_start FROM alerts
     WHERE rule_id = ?1 AND type = ?2 AND dedup = ?3 AND window_start > ?4
     ORDER BY window_start LIMIT 1";

/// A key's stored windows around `at_ms` (see [`WindowsAt`]); the window
/// comes back without its samples, which stay stored.
pub fn windows_at(sql: &mut dyn Sql, key: &WindowKey, at_ms: i64) -> Result<WindowsAt> {
    let params = [
        Param::Text(&key.rule_id),
        Param::Text(&key.kind),
        Param::Text(&key.dedup),
        Param::Int(at_ms),
    ];
    let window = first(sql, WINDOW_STARTING_BY, &params, |r| {
        Ok(Window {
            key: key.clone(),
            start_ms: r.int(0)?,
            end_ms: r.int(1)?,
            threshold: r.int(2)?,
            created: r.int(3)? != 0,
            last_ms: r.int(4)?,
            alert: serde_json::from_str(&r.text(5)?)?,
            samples_stored: 0,
        }
        .stored())
    })?;
    let next_start = match at_ms {
        i64::MAX => None,
        _ => first(sql, NEXT_WINDOW_START, &params, |r| r.int(0))?,
    };
    Ok(WindowsAt {
        starting_by: window,
        next_start,
    })
}

// Pruning.

/// One chunk of the journal's records received before `?1` and already
/// evaluated: small, so a writer waiting for its turn never waits long.
pub const PRUNE_EVENTS: &str = "DELETE FROM events WHERE seq IN (
         SELECT seq FROM events
         WHERE received_at <= ?1
           AND seq <= coalesce((SELECT min(seq) FROM cursors), 9223372036854775807)
         ORDER BY seq LIMIT 5000)";
/// Rows in one [`PRUNE_EVENTS`] chunk.
pub const PRUNE_CHUNK: usize = 5000;

const PRUNE_QUARANTINE: &str = "DELETE FROM quarantine WHERE received_at <= ?1";
const EVALUATED: &str = "SELECT ms FROM watermarks WHERE name = 'evaluated'";
const PRUNE_DELIVERIES: &str = "DELETE FROM deliveries WHERE status != 'pending' AND alert_id IN
       (SELECT alert_id FROM alerts WHERE updated_at <= ?1 AND window_end < ?2)";
const PRUNE_SAMPLES: &str = "DELETE FROM alert_samples WHERE alert_id IN
       (SELECT alert_id FROM alerts WHERE updated_at <= ?1 AND window_end < ?2
          AND alert_id NOT IN (SELECT alert_id FROM deliveries))";
const PRUNE_ALERTS: &str = "DELETE FROM alerts WHERE updated_at <= ?1 AND window_end < ?2
       AND alert_id NOT IN (SELECT alert_id FROM deliveries)";
/// Incidents whose latest alert is older than the retention (event time)
/// and that nobody changed since `?1`, with their notifications, members
/// and history; silences over since `?1`.
const PRUNE_INCIDENTS: [&str; 5] = [
    "DELETE FROM deliveries WHERE status != 'pending' AND incident_id IN
       (SELECT incident_id FROM incidents WHERE updated_at <= ?1 AND last_ms < ?2)",
    "DELETE FROM incident_alerts WHERE incident_id IN
       (SELECT incident_id FROM incidents WHERE updated_at <= ?1 AND last_ms < ?2
          AND incident_id NOT IN (SELECT incident_id FROM deliveries WHERE incident_id IS NOT NULL))",
    "DELETE FROM activity WHERE subject IN
       (SELECT incident_id FROM incidents WHERE updated_at <= ?1 AND last_ms < ?2
          AND incident_id NOT IN (SELECT incident_id FROM deliveries WHERE incident_id IS NOT NULL))",
    "DELETE FROM incidents WHERE updated_at <= ?1 AND last_ms < ?2
       AND incident_id NOT IN (SELECT incident_id FROM deliveries WHERE incident_id IS NOT NULL)",
    "DELETE FROM silences WHERE ends_at <= ?1 AND CAST(?2 AS BIGINT) IS NOT NULL",
];
const PRUNE_STATE: [&str; 3] = [
    "DELETE FROM state_counters WHERE expires_at < ?1",
    "DELETE FROM state_sets WHERE expires_at < ?1",
    "DELETE FROM state_kv WHERE expires_at < ?1",
];

/// Prunes the quarantine received before `cutoff`, and alert windows and
/// rule state older than `retention_ms`. Windows and state live on event
/// time: they are pruned against the latest evaluated event time, never the
/// wall clock. The journal itself is pruned in chunks by the engine
/// ([`PRUNE_EVENTS`]).
pub fn prune_closed(sql: &mut dyn Sql, cutoff: i64, retention_ms: i64) -> Result<Pruned> {
    let mut pruned = Pruned {
        quarantine: sql.execute(PRUNE_QUARANTINE, &[Param::Int(cutoff)])?,
        ..Pruned::default()
    };
    let Some(evaluated) = first(sql, EVALUATED, &[], |r| r.int(0))? else {
        return Ok(pruned);
    };
    let closed_before = evaluated.saturating_sub(retention_ms);
    let params = [Param::Int(cutoff), Param::Int(closed_before)];
    sql.execute(PRUNE_DELIVERIES, &params)?;
    for statement in PRUNE_INCIDENTS {
        sql.execute(statement, &params)?;
    }
    sql.execute(PRUNE_SAMPLES, &params)?;
    pruned.alerts = sql.execute(PRUNE_ALERTS, &params)?;
    for statement in PRUNE_STATE {
        pruned.state += sql.execute(statement, &[Param::Int(closed_before)])?;
    }
    Ok(pruned)
}

// The console.

const LIST_ALERTS: &str =
    "SELECT alert_id, rule_id, severity, title, created_at, last_event_at, event_count, triage,
            CASE severity WHEN 'CRITICAL' THEN 4 WHEN 'HIGH' THEN 3 WHEN 'MEDIUM' THEN 2
                          WHEN 'LOW' THEN 1 ELSE 0 END AS rank
     FROM alerts
     WHERE created
       AND (CAST(?1 AS TEXT) IS NULL OR severity = ?1)
       AND (CAST(?2 AS TEXT) IS NULL OR rule_id LIKE ?2)
       AND (CAST(?3 AS TEXT) IS NULL OR triage = ?3)
       AND (CAST(?4 AS TEXT) IS NULL OR last_event_at >= ?4)
       AND CASE severity WHEN 'CRITICAL' THEN 4 WHEN 'HIGH' THEN 3 WHEN 'MEDIUM' THEN 2
                         WHEN 'LOW' THEN 1 ELSE 0 END >= CAST(?7 AS BIGINT)
     ORDER BY rank DESC, last_event_at DESC, alert_id
     LIMIT ?5 OFFSET ?6";
const ALERT: &str = "SELECT alert, triage, triage_by, triage_at, triage_note FROM alerts
     WHERE alert_id = ?1 AND created";
/// An alert's stored samples, in order.
pub const SAMPLES: &str = "SELECT record FROM alert_samples WHERE alert_id = ?1 ORDER BY idx";
const DELIVERIES_OF: &str = "SELECT id, destination, status, attempts, last_error, updated_at
     FROM deliveries WHERE alert_id = ?1 ORDER BY destination, id";
const SET_TRIAGE: &str =
    "UPDATE alerts SET triage = ?2, triage_by = ?3, triage_note = ?4, triage_at = ?5
     WHERE alert_id = ?1 AND created";
const RETRY_DELIVERY: &str = "UPDATE deliveries SET status = 'pending', attempts = 0,
            next_attempt_at = ?2, queued_at = ?2, updated_at = ?2, claimed_until = NULL
     WHERE id = ?1 AND status = 'failed'";
const RECENT_QUARANTINE: &str = "SELECT id, received_at, record_index, line, reason,
            substr(raw, 1, 2000), CAST(octet_length(raw) AS BIGINT)
     FROM quarantine ORDER BY id DESC LIMIT ?1";
/// (`substr` takes 32-bit positions on PostgreSQL; the parameters stay 64-bit.)
const QUARANTINE_PART: &str = "SELECT substr(raw, CAST(CAST(?2 AS BIGINT) AS INTEGER),
            CAST(CAST(?3 AS BIGINT) AS INTEGER)) FROM quarantine WHERE id = ?1";
const END_SESSION: &str = "INSERT INTO console_logouts (session, expires_at) VALUES (?1, ?2)
     ON CONFLICT (session) DO NOTHING";
const FORGET_ENDED_SESSIONS: &str = "DELETE FROM console_logouts WHERE expires_at < ?1";
const SESSION_ENDED: &str = "SELECT count(*) FROM console_logouts WHERE session = ?1";
const RULE_ACTIVITY: &str = "SELECT rule_id, count(*), CAST(sum(event_count) AS BIGINT),
            max(created_at)
     FROM alerts WHERE created AND created_at >= ?1 GROUP BY rule_id";
const QUEUE_DEPTH: &str = "SELECT count(*) FROM deliveries WHERE status = 'pending'";

fn alert_summary(r: &dyn Row) -> Result<AlertSummary> {
    Ok(AlertSummary {
        alert_id: r.text(0)?,
        rule_id: r.text(1)?,
        severity: r.text(2)?,
        title: r.text(3)?,
        created_at: r.text(4)?,
        last_event_at: r.text(5)?,
        event_count: r.int(6)?,
        triage: r.text(7)?,
    })
}

fn delivery_row(r: &dyn Row) -> Result<DeliveryRow> {
    Ok(DeliveryRow {
        id: r.int(0)?,
        destination: r.text(1)?,
        status: r.text(2)?.parse()?,
        attempts: r.int(3)?,
        last_error: r.maybe_text(4)?,
        updated_at: r.int(5)?,
    })
}

fn quarantine_row(r: &dyn Row) -> Result<QuarantineRow> {
    Ok(QuarantineRow {
        id: r.int(0)?,
        received_at: r.int(1)?,
        index: r.maybe_int(2)?,
        line: r.maybe_int(3)?,
        reason: r.text(4)?,
        preview: r.text(5)?,
        size: r.int(6)?,
    })
}

fn rule_activity_row(r: &dyn Row) -> Result<RuleActivity> {
    Ok(RuleActivity {
        rule_id: r.text(0)?,
        alerts: r.int(1)?,
        matches: r.maybe_int(2)?.unwrap_or(0),
        last_fired: r.maybe_text(3)?,
    })
}

fn alert_detail(sql: &mut dyn Sql, alert_id: &str) -> Result<Option<AlertDetail>> {
    let id = [Param::Text(alert_id)];
    let found = first(sql, ALERT, &id, |r| {
        let triage = Triage {
            status: r.text(1)?,
            by: r.maybe_text(2)?,
            at: r.maybe_int(3)?,
            note: r.maybe_text(4)?,
        };
        Ok((r.text(0)?, triage))
    })?;
    let Some((alert, triage)) = found else {
        return Ok(None);
    };
    let samples = rows(sql, SAMPLES, &id, |r| {
        Ok(SampleEvent::from_json(&r.text(0)?))
    })?;
    let alert = super::alert_from_row(&alert, samples)?;
    Ok(Some(AlertDetail {
        alert: serde_json::to_value(alert)?,
        triage,
        deliveries: rows(sql, DELIVERIES_OF, &id, delivery_row)?,
    }))
}

impl<S: SqlSession> ConsoleQueries for S {
    fn list_alerts(&mut self, q: &AlertQuery) -> Result<Vec<AlertSummary>> {
        // A rule id or the start of one; `%` and `_` in it stand for themselves
        // as nearly as LIKE allows on both engines (one character each).
        let rule = q
            .rule
            .as_ref()
            .map(|r| format!("{}%", r.replace(['%', '_'], "_")));
        let params = [
            Param::MaybeText(q.severity.as_deref()),
            Param::MaybeText(rule.as_deref()),
            Param::MaybeText(q.triage.as_deref()),
            Param::MaybeText(q.since.as_deref()),
            Param::Int(q.limit),
            Param::Int(q.offset),
            Param::Int(q.min_rank),
        ];
        self.reads(|sql| rows(sql, LIST_ALERTS, &params, alert_summary))
    }

    fn alert_detail(&mut self, alert_id: &str) -> Result<Option<AlertDetail>> {
        self.reads(|sql| alert_detail(sql, alert_id))
    }

    fn set_triage(
        &mut self,
        alert_id: &str,
        status: &str,
        by: &str,
        note: &str,
        at_ms: i64,
    ) -> Result<bool> {
        let params = [
            Param::Text(alert_id),
            Param::Text(status),
            Param::Text(by),
            Param::Text(note),
            Param::Int(at_ms),
        ];
        self.writes(|sql| Ok(sql.execute(SET_TRIAGE, &params)? == 1))
    }

    fn retry_delivery(&mut self, id: i64) -> Result<bool> {
        let params = [Param::Int(id), Param::Int(now_ms())];
        self.writes(|sql| Ok(sql.execute(RETRY_DELIVERY, &params)? == 1))
    }

    fn recent_quarantine(&mut self, limit: i64) -> Result<Vec<QuarantineRow>> {
        let params = [Param::Int(limit)];
        self.reads(|sql| rows(sql, RECENT_QUARANTINE, &params, quarantine_row))
    }

    fn quarantine_part(&mut self, id: i64, from: i64, chars: i64) -> Result<Option<String>> {
        let params = [Param::Int(id), Param::Int(from), Param::Int(chars)];
        self.reads(|sql| first(sql, QUARANTINE_PART, &params, |r| r.text(0)))
    }

    fn end_session(&mut self, session: &str, expires_at_ms: i64) -> Result<()> {
        let params = [Param::Text(session), Param::Int(expires_at_ms)];
        let now = [Param::Int(now_ms())];
        self.writes(|sql| {
            sql.execute(FORGET_ENDED_SESSIONS, &now)?;
            sql.execute(END_SESSION, &params)?;
            Ok(())
        })
    }

    fn session_ended(&mut self, session: &str) -> Result<bool> {
        let params = [Param::Text(session)];
        self.reads(|sql| Ok(first(sql, SESSION_ENDED, &params, |r| r.int(0))?.unwrap_or(0) > 0))
    }

    fn rule_activity(&mut self, since: &str) -> Result<Vec<RuleActivity>> {
        let params = [Param::Text(since)];
        self.reads(|sql| rows(sql, RULE_ACTIVITY, &params, rule_activity_row))
    }

    fn queue_depth(&mut self) -> Result<i64> {
        self.reads(|sql| Ok(first(sql, QUEUE_DEPTH, &[], |r| r.int(0))?.unwrap_or(0)))
    }
}
