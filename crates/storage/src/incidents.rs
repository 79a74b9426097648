//! Incidents in the SQL engines: what the evaluator writes with its batch
//! (incidents and the alerts that joined them), what the notifier reads and
//! records (due notifications, written to the outbox), and what responders
//! read and change from the console (status, assignee, comments, with an
//! activity history). The same statements on SQLite and PostgreSQL.

use serde::Serialize;

use super::sql::{first, rows, Param, Row, Sql, SqlSession};
use super::{Result, StorageError};
use hexwatch_model::alert::{Alert, SampleEvent};
use hexwatch_model::incident::{Incident, IncidentWrite, Notice, NoticeClock, Status};
use hexwatch_model::Severity;

/// A severity's place in the list's order (the `CASE` in [`LIST`]).
pub fn rank(s: Severity) -> i64 {
    match s {
        Severity::Info => 0,
        Severity::Low => 1,
        Severity::Medium => 2,
        Severity::High => 3,
        Severity::Critical => 4,
    }
}

/// An incident as stored, with where it stands.
#[derive(Debug, Clone)]
pub struct StoredIncident {
    pub incident: Incident,
    pub status: Status,
    pub resolution: Option<String>,
    pub assignee: Option<String>,
    pub clock: NoticeClock,
    /// Wall clock, unix ms.
    pub created_at: i64,
    pub updated_at: i64,
}

/// One notification made by the notifier: its outbox rows (one per
/// destination, all with the same body) and the incident's clock after it.
/// Recorded only if the clock is still `before` (nobody made it meanwhile).
#[derive(Debug, Clone)]
pub struct NoticeWrite {
    pub incident_id: String,
    pub notice: Notice,
    /// The notification's id: its outbox rows' `alert_id` and Idempotency-Key.
    pub message_id: String,
    pub destinations: Vec<String>,
    pub body: String,
    pub before: NoticeClock,
    pub after: NoticeClock,
}

/// One entry of an incident's or an alert's activity history.
#[derive(Debug, Clone, Serialize)]
pub struct Activity {
    /// Unix ms.
    pub at: i64,
    pub by: String,
    pub what: String,
    pub detail: Option<String>,
}

/// Filters of the incident list; every one optional.
#[derive(Debug, Clone, Default)]
pub struct IncidentQuery {
    pub status: Option<String>,
    /// At least this severity.
    pub min_severity: Option<Severity>,
    pub assignee: Option<String>,
    /// Part of the group key (an actor's e-mail, an address).
    pub group: Option<String>,
    /// A rule id, or the start of one.
    pub rule: Option<String>,
    /// A project's title or id its records name.
    pub project: Option<String>,
    /// Event time of the latest alert at or after (unix ms).
    pub since_ms: Option<i64>,
    /// Continue after this (severity rank, last_ms, id) cursor.
    pub after: Option<(i64, i64, String)>,
    pub limit: i64,
}

const OF_GROUP: &str = "SELECT incident_id, status, resolution, assignee, incident, notices,
       notified, notify_at, last_notice_at, remind_at, created_at, updated_at
     FROM incidents WHERE group_key = ?1 ORDER BY last_ms DESC LIMIT 1";
const ONE: &str = "SELECT incident_id, status, resolution, assignee, incident, notices,
       notified, notify_at, last_notice_at, remind_at, created_at, updated_at
     FROM incidents WHERE incident_id = ?1";
const DUE: &str = "SELECT incident_id, status, resolution, assignee, incident, notices,
       notified, notify_at, last_notice_at, remind_at, created_at, updated_at
     FROM incidents
     WHERE notify_at <= ?1 OR (remind_at <= ?1 AND status = 'open')
     ORDER BY incident_id LIMIT ?2";
const SAVE: &str = "INSERT INTO incidents (incident_id, group_key, severity, title, status,
       first_ms, last_ms, alert_count, incident, created_at, updated_at, notices, notified,
       notify_at, last_notice_at, remind_at)
     VALUES (?1, ?2, ?3, ?4, 'open', ?5, ?6, ?7, ?8, ?9, ?9, 0, 0, ?10, NULL, NULL)
     ON CONFLICT (incident_id) DO UPDATE SET severity = excluded.severity,
       title = excluded.title, first_ms = excluded.first_ms, last_ms = excluded.last_ms,
       alert_count = excluded.alert_count, incident = excluded.incident,
       updated_at = excluded.updated_at, notify_at = excluded.notify_at";
const REOPEN: &str = "UPDATE incidents SET status = 'open', resolution = NULL
     WHERE incident_id = ?1";
const JOIN: &str = "INSERT INTO incident_alerts (incident_id, idx, alert_id) VALUES (?1, ?2, ?3)
     ON CONFLICT (alert_id) DO NOTHING";
const ADD_ACTIVITY: &str =
    "INSERT INTO activity (subject, at, by_whom, what, detail) VALUES (?1, ?2, ?3, ?4, ?5)";
const ACTIVITY_OF: &str =
    "SELECT at, by_whom, what, detail FROM activity WHERE subject = ?1 ORDER BY id";
const MEMBERS: &str =
    "SELECT a.alert FROM incident_alerts m JOIN alerts a ON a.alert_id = m.alert_id
     WHERE m.incident_id = ?1 AND m.idx >= ?2 AND a.silence_id IS NULL
     ORDER BY m.idx LIMIT ?3";
const MEMBER_IDS: &str = "SELECT alert_id FROM incident_alerts WHERE incident_id = ?1 ORDER BY idx";
const MOVE_CLOCK: &str = "UPDATE incidents SET notices = ?2, notified = ?3, notify_at = ?4,
       last_notice_at = ?5, remind_at = ?6
     WHERE incident_id = ?1 AND notices = ?7 AND notified = ?8";
const ENQUEUE_NOTICE: &str = "INSERT INTO deliveries
       (alert_id, destination, status, attempts, next_attempt_at, created_at, queued_at,
        updated_at, incident_id, message)
     VALUES (?1, ?2, 'pending', 0, ?3, ?3, ?3, ?3, ?4, ?5)
     ON CONFLICT (alert_id, destination) DO NOTHING";
const NOTIFIED_DESTINATIONS: &str =
    "SELECT DISTINCT destination FROM deliveries WHERE incident_id = ?1 ORDER BY destination";
const SET_STATUS: &str = "UPDATE incidents SET status = ?2, resolution = ?3, updated_at = ?4,
       remind_at = CASE WHEN ?2 = 'open' THEN remind_at ELSE NULL END
     WHERE incident_id = ?1";
const SET_ASSIGNEE: &str =
    "UPDATE incidents SET assignee = ?2, updated_at = ?3 WHERE incident_id = ?1";
const LIST: &str = "SELECT incident_id, status, resolution, assignee, incident, notices,
       notified, notify_at, last_notice_at, remind_at, created_at, updated_at,
       CASE severity WHEN 'CRITICAL' THEN 4 WHEN 'HIGH' THEN 3 WHEN 'MEDIUM' THEN 2
                     WHEN 'LOW' THEN 1 ELSE 0 END AS rank, last_ms
     FROM incidents
     WHERE (CAST(?1 AS TEXT) IS NULL OR status = ?1)
       AND (CAST(?2 AS TEXT) IS NULL OR assignee = ?2)
       AND (CAST(?3 AS TEXT) IS NULL OR group_key LIKE ?3)
       AND (CAST(?4 AS TEXT) IS NULL OR incident LIKE ?4)
       AND (CAST(?11 AS TEXT) IS NULL OR incident LIKE ?11)
       AND (CAST(?5 AS BIGINT) IS NULL OR last_ms >= ?5)
       AND CASE severity WHEN 'CRITICAL' THEN 4 WHEN 'HIGH' THEN 3 WHEN 'MEDIUM' THEN 2
                         WHEN 'LOW' THEN 1 ELSE 0 END >= CAST(?6 AS BIGINT)
       AND (CAST(?7 AS BIGINT) IS NULL
            OR CASE severity WHEN 'CRITICAL' THEN 4 WHEN 'HIGH' THEN 3 WHEN 'MEDIUM' THEN 2
                             WHEN 'LOW' THEN 1 ELSE 0 END < ?7
            OR (CASE severity WHEN 'CRITICAL' THEN 4 WHEN 'HIGH' THEN 3 WHEN 'MEDIUM' THEN 2
                              WHEN 'LOW' THEN 1 ELSE 0 END = ?7
                AND (last_ms < ?8 OR (last_ms = ?8 AND incident_id > ?9))))
     ORDER BY rank DESC, last_ms DESC, incident_id
     LIMIT ?10";

/// `%` and `_` in a filter match themselves (`LIKE .. ESCAPE` differs
/// between the engines, so they are dropped to the nearest safe pattern:
/// each stands for one character).
fn like_escaped(s: &str) -> String {
    s.replace(['%', '_'], "_")
}

fn stored(r: &dyn Row) -> Result<StoredIncident> {
    let status = r.text(1)?;
    Ok(StoredIncident {
        incident: serde_json::from_str(&r.text(4)?)?,
        status: Status::parse(&status).ok_or(StorageError::UnknownStatus(status))?,
        resolution: r.maybe_text(2)?,
        assignee: r.maybe_text(3)?,
        clock: NoticeClock {
            notices: r.int(5)?,
            notified: r.int(6)?,
            notify_at: r.maybe_int(7)?,
            last_notice_at: r.maybe_int(8)?,
            remind_at: r.maybe_int(9)?,
        },
        created_at: r.int(10)?,
        updated_at: r.int(11)?,
    })
}

/// The latest incident of a group, if any.
pub fn of_group(sql: &mut dyn Sql, group_key: &str) -> Result<Option<StoredIncident>> {
    first(sql, OF_GROUP, &[Param::Text(group_key)], stored)
}

/// Writes the incidents a batch changed, in the batch's transaction.
pub fn write(sql: &mut dyn Sql, writes: &[IncidentWrite], now: i64) -> Result<()> {
    for w in writes {
        let i = &w.incident;
        let json = serde_json::to_string(i)?;
        sql.execute(
            SAVE,
            &[
                Param::Text(&i.id),
                Param::Text(&i.group_key),
                Param::Text(i.severity.as_str()),
                Param::Text(&i.title),
                Param::Int(i.first_ms),
                Param::Int(i.last_ms),
                Param::Int(i.alert_count),
                Param::Text(&json),
                Param::Int(now),
                Param::MaybeInt(w.clock.notify_at),
            ],
        )?;
        if w.reopened {
            sql.execute(REOPEN, &[Param::Text(&i.id)])?;
        }
        for (idx, alert_id) in &w.joined {
            sql.execute(
                JOIN,
                &[Param::Text(&i.id), Param::Int(*idx), Param::Text(alert_id)],
            )?;
        }
        let what = match (w.opened, w.reopened) {
            (true, _) => Some("opened"),
            (_, true) => Some("reopened: a new alert joined"),
            _ => None,
        };
        if let Some(what) = what {
            add_activity(sql, &i.id, now, "hexwatch", what, Some(&i.title))?;
        }
    }
    Ok(())
}

/// Adds one entry to a subject's activity history.
pub fn add_activity(
    sql: &mut dyn Sql,
    subject: &str,
    at: i64,
    by: &str,
    what: &str,
    detail: Option<&str>,
) -> Result<()> {
    sql.execute(
        ADD_ACTIVITY,
        &[
            Param::Text(subject),
            Param::Int(at),
            Param::Text(by),
            Param::Text(what),
            Param::MaybeText(detail),
        ],
    )?;
    Ok(())
}

/// Incidents with a notification or reminder due at `now`.
pub fn due(sql: &mut dyn Sql, now: i64, limit: usize) -> Result<Vec<StoredIncident>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    rows(sql, DUE, &[Param::Int(now), Param::Int(limit)], stored)
}

/// Up to `limit` of an incident's alerts from member `from` on, in the order
/// they joined, without their sample records; those a silence held back are
/// left out (they are not notified).
pub fn alerts_of(sql: &mut dyn Sql, id: &str, from: i64, limit: usize) -> Result<Vec<Alert>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let params = [Param::Text(id), Param::Int(from), Param::Int(limit)];
    rows(sql, MEMBERS, &params, |r| {
        super::alert_from_row(&r.text(0)?, Vec::<SampleEvent>::new())
    })
}

/// Records a notification: its outbox rows and the incident's new clock, in
/// one transaction; false (nothing written) when the clock moved meanwhile.
pub fn record_notice(sql: &mut dyn Sql, n: &NoticeWrite, now: i64) -> Result<bool> {
    let (b, a) = (&n.before, &n.after);
    let moved = sql.execute(
        MOVE_CLOCK,
        &[
            Param::Text(&n.incident_id),
            Param::Int(a.notices),
            Param::Int(a.notified),
            Param::MaybeInt(a.notify_at),
            Param::MaybeInt(a.last_notice_at),
            Param::MaybeInt(a.remind_at),
            Param::Int(b.notices),
            Param::Int(b.notified),
        ],
    )?;
    if moved == 0 {
        return Ok(false);
    }
    enqueue(sql, n, now)?;
    Ok(true)
}

/// The outbox rows of one notification.
fn enqueue(sql: &mut dyn Sql, n: &NoticeWrite, now: i64) -> Result<()> {
    for d in &n.destinations {
        sql.execute(
            ENQUEUE_NOTICE,
            &[
                Param::Text(&n.message_id),
                Param::Text(d),
                Param::Int(now),
                Param::Text(&n.incident_id),
                Param::Text(&n.body),
            ],
        )?;
    }
    let what = format!("notification {} queued", n.notice.as_str());
    add_activity(
        sql,
        &n.incident_id,
        now,
        "hexwatch",
        &what,
        Some(&n.destinations.join(", ")),
    )
}

/// An incident with its alerts (samples included) and its history.
#[derive(Debug, Clone)]
pub struct IncidentDetail {
    pub stored: StoredIncident,
    pub alerts: Vec<Alert>,
    pub history: Vec<Activity>,
}

/// A responder's change to an incident.
#[derive(Debug, Clone)]
pub enum Change {
    Status {
        status: Status,
        resolution: Option<String>,
        note: Option<String>,
    },
    Assign(Option<String>),
    Comment(String),
}

/// The notification a responder's change makes (acknowledged, resolved).
#[derive(Debug, Clone)]
pub struct ChangeNotice {
    pub notice: Notice,
    pub message_id: String,
    pub body: String,
}

/// What responders read and change: the console's and the API's incidents.
pub trait IncidentQueries: Send {
    /// Incidents by severity, then latest alert, newest first.
    fn list_incidents(&mut self, q: &IncidentQuery) -> Result<Vec<StoredIncident>>;
    fn incident_detail(&mut self, id: &str) -> Result<Option<IncidentDetail>>;
    /// Applies a change by `by` and records it in the history, with the
    /// notification it makes (acknowledged, resolved), if any: `notice` gets
    /// the incident as changed. The notification goes to every destination
    /// the incident was notified at. False when there is no such incident.
    fn change_incident(
        &mut self,
        id: &str,
        by: &str,
        change: &Change,
        notice: &mut dyn FnMut(&StoredIncident) -> Option<ChangeNotice>,
    ) -> Result<bool>;
    /// A subject's (alert's) activity history.
    fn activity(&mut self, subject: &str) -> Result<Vec<Activity>>;
    /// Adds to a subject's history.
    fn record_activity(
        &mut self,
        subject: &str,
        by: &str,
        what: &str,
        detail: Option<&str>,
    ) -> Result<()>;
}

fn detail(sql: &mut dyn Sql, id: &str) -> Result<Option<IncidentDetail>> {
    let Some(stored) = first(sql, ONE, &[Param::Text(id)], stored)? else {
        return Ok(None);
    };
    let ids = rows(sql, MEMBER_IDS, &[Param::Text(id)], |r| r.text(0))?;
    let mut alerts = Vec::with_capacity(ids.len());
    for alert_id in ids {
        let key = [Param::Text(&alert_id)];
        let row = first(
            sql,
            "SELECT alert FROM alerts WHERE alert_id = ?1",
            &key,
            |r| r.text(0),
        )?;
        if let Some(row) = row {
            let samples = rows(sql, super::sql::SAMPLES, &key, |r| {
                Ok(SampleEvent::from_json(&r.text(0)?))
            })?;
            alerts.push(super::alert_from_row(&row, samples)?);
        }
    }
    let history = rows(sql, ACTIVITY_OF, &[Param::Text(id)], activity_row)?;
    Ok(Some(IncidentDetail {
        stored,
        alerts,
        history,
    }))
}

fn activity_row(r: &dyn Row) -> Result<Activity> {
    Ok(Activity {
        at: r.int(0)?,
        by: r.text(1)?,
        what: r.text(2)?,
        detail: r.maybe_text(3)?,
    })
}

fn apply_change(sql: &mut dyn Sql, id: &str, by: &str, change: &Change, now: i64) -> Result<()> {
    match change {
        Change::Status {
            status,
            resolution,
            note,
        } => {
            let params = [
                Param::Text(id),
                Param::Text(status.as_str()),
                Param::MaybeText(resolution.as_deref()),
                Param::Int(now),
            ];
            sql.execute(SET_STATUS, &params)?;
            let what = match resolution {
                Some(r) => format!("{} ({r})", status.as_str()),
                None => status.as_str().to_string(),
            };
            add_activity(sql, id, now, by, &what, note.as_deref())
        }
        Change::Assign(who) => {
            let params = [
                Param::Text(id),
                Param::MaybeText(who.as_deref()),
                Param::Int(now),
            ];
            sql.execute(SET_ASSIGNEE, &params)?;
            let what = match who {
                Some(w) => format!("assigned to {w}"),
                None => "unassigned".to_string(),
            };
            add_activity(sql, id, now, by, &what, None)
        }
        Change::Comment(text) => add_activity(sql, id, now, by, "commented", Some(text)),
    }
}

impl<S: SqlSession> IncidentQueries for S {
    fn list_incidents(&mut self, q: &IncidentQuery) -> Result<Vec<StoredIncident>> {
        let group = q.group.as_ref().map(|g| format!("%{}%", like_escaped(g)));
        let rule = q.rule.as_ref().map(|r| format!("%\"{}%", like_escaped(r)));
        let project = q.project.as_ref().map(|p| format!("%{}%", like_escaped(p)));
        let min_rank = q.min_severity.map(rank).unwrap_or(0);
        let (rank, last, after_id) = match &q.after {
            Some((r, l, i)) => (Some(*r), Some(*l), Some(i.as_str())),
            None => (None, None, None),
        };
        let params = [
            Param::MaybeText(q.status.as_deref()),
            Param::MaybeText(q.assignee.as_deref()),
            Param::MaybeText(group.as_deref()),
            Param::MaybeText(rule.as_deref()),
            Param::MaybeInt(q.since_ms),
            Param::Int(min_rank),
            Param::MaybeInt(rank),
            Param::MaybeInt(last),
            Param::MaybeText(after_id),
            Param::Int(q.limit),
            Param::MaybeText(project.as_deref()),
        ];
        self.reads(|sql| rows(sql, LIST, &params, stored))
    }

    fn incident_detail(&mut self, id: &str) -> Result<Option<IncidentDetail>> {
        self.reads(|sql| detail(sql, id))
    }

    fn change_incident(
        &mut self,
        id: &str,
        by: &str,
        change: &Change,
        notice: &mut dyn FnMut(&StoredIncident) -> Option<ChangeNotice>,
    ) -> Result<bool> {
        let now = super::now_ms();
        self.writes(|sql| {
            if first(sql, ONE, &[Param::Text(id)], stored)?.is_none() {
                return Ok(false);
            }
            apply_change(sql, id, by, change, now)?;
            let Some(changed) = first(sql, ONE, &[Param::Text(id)], stored)? else {
                return Ok(false);
            };
            if let Some(ChangeNotice {
                notice: kind,
                message_id,
                body,
            }) = notice(&changed)
            {
                let destinations = rows(sql, NOTIFIED_DESTINATIONS, &[Param::Text(id)], |r| {
                    r.text(0)
                })?;
                let n = NoticeWrite {
                    incident_id: id.to_string(),
                    notice: kind,
                    message_id,
                    destinations,
                    body,
                    before: changed.clock,
                    after: changed.clock,
                };
                if !n.destinations.is_empty() {
                    enqueue(sql, &n, now)?;
                }
            }
            Ok(true)
        })
    }

    fn activity(&mut self, subject: &str) -> Result<Vec<Activity>> {
        self.reads(|sql| rows(sql, ACTIVITY_OF, &[Param::Text(subject)], activity_row))
    }

    fn record_activity(
        &mut self,
        subject: &str,
        by: &str,
        what: &str,
        detail: Option<&str>,
    ) -> Result<()> {
        let now = super::now_ms();
        self.writes(|sql| add_activity(sql, subject, now, by, what, detail))
    }
}
