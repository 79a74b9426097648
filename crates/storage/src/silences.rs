//! Silences in the SQL engines: made, changed and ended from the console or
//! the API, read by the evaluator, which counts what each held back.

use serde::Serialize;

use super::sql::{rows, Param, Row, Sql, SqlSession};
use super::Result;
use hexwatch_model::incident::Matcher;

/// A silence as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Silence {
    pub id: String,
    pub matchers: Vec<Matcher>,
    /// Unix ms (wall clock).
    pub starts_at: i64,
    pub ends_at: i64,
    pub created_by: String,
    pub comment: String,
    pub created_at: i64,
    /// Alerts it held back, and when it last did.
    pub matched: i64,
    pub last_matched_at: Option<i64>,
}

impl Silence {
    /// `pending`, `active` or `expired` at `now`.
    pub fn state(&self, now: i64) -> &'static str {
        if now >= self.ends_at {
            "expired"
        } else if now < self.starts_at {
            "pending"
        } else {
            "active"
        }
    }

    /// Whether it holds alerts back at `now`.
    pub fn active(&self, now: i64) -> bool {
        self.starts_at <= now && now < self.ends_at
    }
}

const LIVE: &str = "SELECT silence_id, matchers, starts_at, ends_at, created_by, comment,
       created_at, matched, last_matched_at FROM silences WHERE ends_at > ?1 ORDER BY silence_id";
const LIST: &str = "SELECT silence_id, matchers, starts_at, ends_at, created_by, comment,
       created_at, matched, last_matched_at FROM silences
     ORDER BY ends_at DESC, silence_id LIMIT ?1";
const CREATE: &str = "INSERT INTO silences (silence_id, matchers, starts_at, ends_at, created_by,
       comment, created_at, updated_at, matched) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, 0)";
const EDIT: &str = "UPDATE silences SET matchers = ?2, starts_at = ?3, ends_at = ?4, comment = ?5,
       updated_at = ?6 WHERE silence_id = ?1 AND ends_at > ?6";
const EXPIRE: &str =
    "UPDATE silences SET ends_at = ?2, updated_at = ?2 WHERE silence_id = ?1 AND ends_at > ?2";
const HELD_BACK: &str = "UPDATE alerts SET silence_id = ?2 WHERE alert_id = ?1";
const COUNT_MATCH: &str = "UPDATE silences SET matched = matched + 1, last_matched_at = ?2
     WHERE silence_id = ?1";

fn silence(r: &dyn Row) -> Result<Silence> {
    Ok(Silence {
        id: r.text(0)?,
        matchers: serde_json::from_str(&r.text(1)?)?,
        starts_at: r.int(2)?,
        ends_at: r.int(3)?,
        created_by: r.text(4)?,
        comment: r.text(5)?,
        created_at: r.int(6)?,
        matched: r.int(7)?,
        last_matched_at: r.maybe_int(8)?,
    })
}

/// Silences not over at `now`.
pub fn live(sql: &mut dyn Sql, now: i64) -> Result<Vec<Silence>> {
    rows(sql, LIVE, &[Param::Int(now)], silence)
}

/// Marks alerts held back by silences and counts them, in the batch's transaction.
pub fn write_held_back(sql: &mut dyn Sql, silenced: &[(String, String)], now: i64) -> Result<()> {
    for (alert_id, silence_id) in silenced {
        sql.execute(HELD_BACK, &[Param::Text(alert_id), Param::Text(silence_id)])?;
        sql.execute(COUNT_MATCH, &[Param::Text(silence_id), Param::Int(now)])?;
    }
    Ok(())
}

/// What responders do with silences.
pub trait SilenceQueries: Send {
    /// The most recently ending `limit` silences.
    fn list_silences(&mut self, limit: i64) -> Result<Vec<Silence>>;
    fn create_silence(&mut self, s: &Silence) -> Result<()>;
    /// Changes a silence that has not ended; false when there is none such.
    fn edit_silence(&mut self, s: &Silence, now: i64) -> Result<bool>;
    /// Ends a silence at `now`; false when it had ended.
    fn expire_silence(&mut self, id: &str, now: i64) -> Result<bool>;
}

impl<S: SqlSession> SilenceQueries for S {
    fn list_silences(&mut self, limit: i64) -> Result<Vec<Silence>> {
        self.reads(|sql| rows(sql, LIST, &[Param::Int(limit)], silence))
    }

    fn create_silence(&mut self, s: &Silence) -> Result<()> {
        let matchers = serde_json::to_string(&s.matchers)?;
        let params = [
            Param::Text(&s.id),
            Param::Text(&matchers),
            Param::Int(s.starts_at),
            Param::Int(s.ends_at),
            Param::Text(&s.created_by),
            Param::Text(&s.comment),
            Param::Int(s.created_at),
        ];
        self.writes(|sql| sql.execute(CREATE, &params).map(|_| ()))
    }

    fn edit_silence(&mut self, s: &Silence, now: i64) -> Result<bool> {
        let matchers = serde_json::to_string(&s.matchers)?;
        let params = [
            Param::Text(&s.id),
            Param::Text(&matchers),
            Param::Int(s.starts_at),
            Param::Int(s.ends_at),
            Param::Text(&s.comment),
            Param::Int(now),
        ];
        self.writes(|sql| Ok(sql.execute(EDIT, &params)? == 1))
    }

    fn expire_silence(&mut self, id: &str, now: i64) -> Result<bool> {
        let params = [Param::Text(id), Param::Int(now)];
        self.writes(|sql| Ok(sql.execute(EXPIRE, &params)? == 1))
    }
}
