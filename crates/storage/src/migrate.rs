//! `hexwatch migrate-storage`: copies an installation's SQLite database into an
//! empty PostgreSQL database, table by table, in one PostgreSQL transaction —
//! journal, quarantine, cursor and watermark, rule state, alerts and the
//! delivery outbox — keeping every sequence number and id, so replicas started
//! on the copy carry on exactly where the single daemon stopped.

use std::path::Path;

use ::postgres::types::ToSql;
use rusqlite::types::Value;

use super::postgres::PostgresSession;
use super::{Result, Role};

/// How a column is carried over.
#[derive(Clone, Copy)]
enum Kind {
    Int,
    Text,
    Bool,
}

use Kind::{Bool, Int, Text};

/// Every table, in an order that satisfies the foreign keys, with its columns.
const TABLES: &[(&str, &[(&str, Kind)])] = &[
    (
        "events",
        &[
            ("seq", Int),
            ("key", Text),
            ("received_at", Int),
            ("event_time", Text),
            ("action", Text),
            ("record", Text),
        ],
    ),
    (
        "quarantine",
        &[
            ("id", Int),
            ("received_at", Int),
            ("record_index", Int),
            ("line", Int),
            ("reason", Text),
            ("raw", Text),
        ],
    ),
    ("cursors", &[("name", Text), ("seq", Int)]),
    ("watermarks", &[("name", Text), ("ms", Int)]),
    (
        "state_counters",
        &[("key", Text), ("value", Int), ("expires_at", Int)],
    ),
    (
        "state_sets",
        &[("key", Text), ("member", Text), ("expires_at", Int)],
    ),
    (
        "state_kv",
        &[("key", Text), ("value", Text), ("expires_at", Int)],
    ),
    (
        "alerts",
        &[
            ("alert_id", Text),
            ("rule_id", Text),
            ("type", Text),
            ("dedup", Text),
            ("severity", Text),
            ("title", Text),
            ("created", Bool),
            ("threshold", Int),
            ("window_start", Int),
            ("window_end", Int),
            ("last_event_ms", Int),
            ("event_count", Int),
            ("created_at", Text),
            ("first_event_at", Text),
            ("last_event_at", Text),
            ("updated_at", Int),
            ("alert", Text),
            ("triage", Text),
            ("triage_by", Text),
            ("triage_at", Int),
            ("triage_note", Text),
            ("silence_id", Text),
        ],
    ),
    (
        "alert_samples",
        &[("alert_id", Text), ("idx", Int), ("record", Text)],
    ),
    (
        "deliveries",
        &[
            ("id", Int),
            ("alert_id", Text),
            ("destination", Text),
            ("status", Text),
            ("attempts", Int),
            ("next_attempt_at", Int),
            ("last_error", Text),
            ("created_at", Int),
            ("queued_at", Int),
            ("updated_at", Int),
            ("delivered_at", Int),
            ("incident_id", Text),
            ("message", Text),
        ],
    ),
    (
        "incidents",
        &[
            ("incident_id", Text),
            ("group_key", Text),
            ("severity", Text),
            ("title", Text),
            ("status", Text),
            ("resolution", Text),
            ("assignee", Text),
            ("first_ms", Int),
            ("last_ms", Int),
            ("alert_count", Int),
            ("incident", Text),
            ("created_at", Int),
            ("updated_at", Int),
            ("notices", Int),
            ("notified", Int),
            ("notify_at", Int),
            ("last_notice_at", Int),
            ("remind_at", Int),
        ],
    ),
    (
        "incident_alerts",
        &[("incident_id", Text), ("idx", Int), ("alert_id", Text)],
    ),
    (
        "activity",
        &[
            ("id", Int),
            ("subject", Text),
            ("at", Int),
            ("by_whom", Text),
            ("what", Text),
            ("detail", Text),
        ],
    ),
    (
        "silences",
        &[
            ("silence_id", Text),
            ("matchers", Text),
            ("starts_at", Int),
            ("ends_at", Int),
            ("created_by", Text),
            ("comment", Text),
            ("created_at", Int),
            ("updated_at", Int),
            ("matched", Int),
            ("last_matched_at", Int),
        ],
    ),
];

/// Rows per insert.
const CHUNK: usize = 5000;

/// One column's values of a chunk, as PostgreSQL arrays take them.
enum Column {
    Int(Vec<Option<i64>>),
    Text(Vec<Option<String>>),
    Bool(Vec<Option<bool>>),
}

impl Column {
    fn new(kind: Kind) -> Column {
        match kind {
            Int => Column::Int(Vec::with_capacity(CHUNK)),
            Text => Column::Text(Vec::with_capacity(CHUNK)),
            Bool => Column::Bool(Vec::with_capacity(CHUNK)),
        }
    }

    fn push(&mut self, v: Value) -> Result<()> {
        match (self, v) {
            (Column::Int(c), Value::Integer(i)) => c.push(Some(i)),
            (Column::Int(c), Value::Null) => c.push(None),
            (Column::Text(c), Value::Text(t)) => c.push(Some(t.replace('\0', "\u{FFFD}"))),
            (Column::Text(c), Value::Null) => c.push(None),
            (Column::Bool(c), Value::Integer(i)) => c.push(Some(i != 0)),
            (Column::Bool(c), Value::Null) => c.push(None),
            (_, other) => return Err(MigrateError::UnexpectedValue(format!("{other:?}")).into()),
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn len(&self) -> usize {
        match self {
            Column::Int(c) => c.len(),
            Column::Text(c) => c.len(),
            Column::Bool(c) => c.len(),
        }
    }

    fn param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Column::Int(c) => c,
            Column::Text(c) => c,
            Column::Bool(c) => c,
        }
    }

    fn array_type(&self) -> &'static str {
        match self {
            Column::Int(_) => "int8[]",
            Column::Text(_) => "text[]",
            Column::Bool(_) => "bool[]",
        }
    }
}

/// Refuses a target database that already holds hexwatch data.
fn ensure_empty(tx: &mut ::postgres::Transaction) -> Result<()> {
    for (table, _) in TABLES {
        let n: i64 = tx
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])?
            .get(0);
        if n > 0 {
            return Err(MigrateError::NotEmpty { table, rows: n }.into());
        }
    }
    Ok(())
}

/// Copies one table in row order, [`CHUNK`] rows per statement of arrays;
/// returns the rows copied.
fn copy_table(
    conn: &rusqlite::Connection,
    tx: &mut ::postgres::Transaction,
    table: &str,
    columns: &[(&str, Kind)],
) -> Result<usize> {
    let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
    let mut select = conn.prepare(&format!(
        "SELECT {} FROM {table} ORDER BY rowid",
        names.join(", ")
    ))?;
    let mut rows = select.query([])?;
    let mut chunk: Vec<Column> = columns.iter().map(|(_, k)| Column::new(*k)).collect();
    let mut total = 0;
    let flush = |chunk: &mut Vec<Column>, tx: &mut ::postgres::Transaction| -> Result<()> {
        if chunk[0].is_empty() {
            return Ok(());
        }
        let arrays: Vec<String> = chunk
            .iter()
            .enumerate()
            .map(|(i, c)| format!("${}::{}", i + 1, c.array_type()))
            .collect();
        let sql = format!(
            "INSERT INTO {table} ({}) SELECT * FROM unnest({})",
            names.join(", "),
            arrays.join(", ")
        );
        let params: Vec<&(dyn ToSql + Sync)> = chunk.iter().map(Column::param).collect();
        tx.execute(&sql, &params)?;
        *chunk = columns.iter().map(|(_, k)| Column::new(*k)).collect();
        Ok(())
    };
    while let Some(row) = rows.next()? {
        for (i, column) in chunk.iter_mut().enumerate() {
            column.push(row.get::<_, Value>(i)?)?;
        }
        total += 1;
        if chunk[0].len() == CHUNK {
            flush(&mut chunk, tx)?;
        }
    }
    flush(&mut chunk, tx)?;
    Ok(total)
}

/// New rows continue after the copied ones.
fn continue_sequences(tx: &mut ::postgres::Transaction) -> Result<()> {
    for (table, column) in [
        ("events", "seq"),
        ("quarantine", "id"),
        ("deliveries", "id"),
        ("activity", "id"),
    ] {
        tx.execute(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{table}', '{column}'),
                               coalesce((SELECT max({column}) FROM {table}), 0) + 1, false)"
            ),
            &[],
        )?;
    }
    Ok(())
}

/// What `migrate-storage` refuses, or cannot read.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("no SQLite database at {}", .0.display())]
    NoSource(std::path::PathBuf),
    #[error("the PostgreSQL database already holds hexwatch data ({rows} rows in {table}); migrate into an empty database")]
    NotEmpty { table: &'static str, rows: i64 },
    #[error("unexpected value {0} in the SQLite database")]
    UnexpectedValue(String),
    #[error("--to: expected a postgres:// URL")]
    NotPostgres,
}

/// Copies the SQLite database at `from` into the PostgreSQL storage `to`, which
/// must hold no hexwatch data yet. Returns (table, rows) copied.
pub fn sqlite_to_postgres(
    from: &Path,
    to: &super::postgres::Postgres,
) -> Result<Vec<(&'static str, usize)>> {
    if !from.exists() {
        return Err(MigrateError::NoSource(from.to_path_buf()).into());
    }
    // Opening brings an older file's schema up to date first.
    let source = super::sqlite::Sqlite::open(from)?.session(Role::Derived)?;
    let mut target: PostgresSession = to.session(Role::Journal)?;
    let client = target.client();
    let mut tx = client.transaction()?;
    ensure_empty(&mut tx)?;
    let conn = source.connection();
    let mut copied = Vec::new();
    for (table, columns) in TABLES {
        copied.push((*table, copy_table(conn, &mut tx, table, columns)?));
    }
    continue_sequences(&mut tx)?;
    tx.commit()?;
    Ok(copied)
}

/// Says which schema migrations a start applied (refinery's own log lines,
/// on every start, are left out of the default log level).
pub(crate) fn log_applied(report: &refinery::Report) {
    for m in report.applied_migrations() {
        tracing::info!(version = m.version(), name = m.name(), "schema migrated");
    }
}
