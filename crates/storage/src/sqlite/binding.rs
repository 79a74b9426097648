//! The shared SQL ([`crate::sql`]) on a SQLite connection.

use rusqlite::Connection;

use crate::{sql, Result};

/// A SQLite connection running the shared SQL.
pub(super) struct Lite<'a>(pub(super) &'a Connection);

impl rusqlite::ToSql for sql::Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            sql::Param::Int(v) => v.to_sql(),
            sql::Param::Text(v) => v.to_sql(),
            sql::Param::MaybeInt(v) => v.to_sql(),
            sql::Param::MaybeText(v) => v.to_sql(),
        }
    }
}

impl sql::Row for rusqlite::Row<'_> {
    fn int(&self, i: usize) -> Result<i64> {
        Ok(self.get(i)?)
    }
    fn maybe_int(&self, i: usize) -> Result<Option<i64>> {
        Ok(self.get(i)?)
    }
    fn text(&self, i: usize) -> Result<String> {
        Ok(self.get(i)?)
    }
    fn maybe_text(&self, i: usize) -> Result<Option<String>> {
        Ok(self.get(i)?)
    }
}

impl sql::Sql for Lite<'_> {
    fn execute(&mut self, statement: &'static str, params: &[sql::Param]) -> Result<usize> {
        let mut stmt = self.0.prepare_cached(statement)?;
        Ok(stmt.execute(rusqlite::params_from_iter(params))?)
    }

    fn query(
        &mut self,
        statement: &'static str,
        params: &[sql::Param],
        each: &mut dyn FnMut(&dyn sql::Row) -> Result<()>,
    ) -> Result<()> {
        let mut stmt = self.0.prepare_cached(statement)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        while let Some(row) = rows.next()? {
            each(row)?;
        }
        Ok(())
    }
}
