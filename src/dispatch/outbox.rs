//! The delivery outbox in SQLite: rows are added in the evaluator's transaction
//! when an alert is created, and the dispatcher moves each row to `delivered`,
//! back to `pending` with a later `next_attempt_at`, or to `failed`.

use rusqlite::{params, Connection};

use crate::db;

/// A delivery due now, with the alert body to send.
#[derive(Debug, Clone)]
pub struct Due {
    pub id: i64,
    pub alert_id: String,
    pub attempts: i64,
    /// When it was queued (unix ms): the retry horizon counts from here.
    pub queued_at: i64,
    pub alert_json: String,
}

/// Queues one delivery per destination (inside the caller's transaction).
pub fn enqueue(conn: &Connection, alert_id: &str, destinations: &[String]) -> rusqlite::Result<()> {
    let now = db::now_ms();
    let mut stmt = conn.prepare_cached(
        "INSERT OR IGNORE INTO deliveries
           (alert_id, destination, status, attempts, next_attempt_at, created_at, queued_at, updated_at)
         VALUES (?1, ?2, 'pending', 0, ?3, ?3, ?3, ?3)",
    )?;
    for d in destinations {
        stmt.execute(params![alert_id, d, now])?;
    }
    Ok(())
}

/// Up to `limit` pending deliveries for `destination` that are due, oldest first,
/// skipping those already being sent.
pub fn due(
    conn: &Connection,
    destination: &str,
    limit: usize,
    in_flight: &[i64],
) -> rusqlite::Result<Vec<Due>> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.id, d.alert_id, d.attempts, coalesce(d.queued_at, d.created_at), a.alert
         FROM deliveries d JOIN alerts a ON a.alert_id = d.alert_id
         WHERE d.destination = ?1 AND d.status = 'pending' AND d.next_attempt_at <= ?2
         ORDER BY d.next_attempt_at, d.id
         LIMIT ?3",
    )?;
    let rows = stmt.query_map(
        params![destination, db::now_ms(), (limit + in_flight.len()) as i64],
        |r| {
            Ok(Due {
                id: r.get(0)?,
                alert_id: r.get(1)?,
                attempts: r.get(2)?,
                queued_at: r.get(3)?,
                alert_json: r.get(4)?,
            })
        },
    )?;
    let mut out = Vec::with_capacity(limit);
    for row in rows {
        let row = row?;
        if !in_flight.contains(&row.id) {
            out.push(row);
            if out.len() == limit {
                break;
            }
        }
    }
    Ok(out)
}

/// When the next pending delivery of `destination` is due (unix ms), if any.
pub fn next_due(conn: &Connection, destination: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT min(next_attempt_at) FROM deliveries WHERE destination = ?1 AND status = 'pending'",
    )?
    .query_row([destination], |r| r.get(0))
}

/// Pending deliveries of `destination` (the queue depth).
pub fn pending(conn: &Connection, destination: &str) -> rusqlite::Result<i64> {
    conn.prepare_cached(
        "SELECT count(*) FROM deliveries WHERE destination = ?1 AND status = 'pending'",
    )?
    .query_row([destination], |r| r.get(0))
}

pub fn delivered(conn: &Connection, id: i64, attempts: i64) -> rusqlite::Result<()> {
    let now = db::now_ms();
    conn.prepare_cached(
        "UPDATE deliveries SET status = 'delivered', attempts = ?2, last_error = NULL,
                updated_at = ?3, delivered_at = ?3 WHERE id = ?1",
    )?
    .execute(params![id, attempts, now])?;
    Ok(())
}

/// Records a failed attempt: back to pending at `retry_at`, or `failed` for good
/// when `retry_at` is `None`.
pub fn attempt_failed(
    conn: &Connection,
    id: i64,
    attempts: i64,
    error: &str,
    retry_at: Option<i64>,
) -> rusqlite::Result<()> {
    let now = db::now_ms();
    let (status, next) = match retry_at {
        Some(t) => ("pending", t),
        None => ("failed", now),
    };
    conn.prepare_cached(
        "UPDATE deliveries SET status = ?2, attempts = ?3, last_error = ?4,
                next_attempt_at = ?5, updated_at = ?6 WHERE id = ?1",
    )?
    .execute(params![id, status, attempts, error, next, now])?;
    Ok(())
}

/// Puts failed deliveries back in the queue (`hexwatch redeliver`): of one
/// destination or all, created at or after `since_ms` or all. They are sent
/// again from attempt one, with a fresh retry horizon. Returns how many.
pub fn requeue_failed(
    conn: &Connection,
    destination: Option<&str>,
    since_ms: Option<i64>,
) -> rusqlite::Result<usize> {
    let now = db::now_ms();
    conn.execute(
        "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?1,
                queued_at = ?1, updated_at = ?1
         WHERE status = 'failed'
           AND (?2 IS NULL OR destination = ?2)
           AND (?3 IS NULL OR created_at >= ?3)",
        params![now, destination, since_ms],
    )
}
