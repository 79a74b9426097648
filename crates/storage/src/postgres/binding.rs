//! The shared SQL ([`crate::sql`]) on a PostgreSQL client or transaction.

use std::borrow::Cow;
use std::collections::HashMap;

use ::postgres::types::ToSql;
use ::postgres::{GenericClient, Statement};

use super::text;
use crate::{sql, Result};

/// A PostgreSQL client or transaction running the shared SQL, with the
/// session's prepared statements.
pub(super) struct Pg<'a, C> {
    pub(super) client: &'a mut C,
    pub(super) statements: &'a mut HashMap<&'static str, Statement>,
}

impl<C: GenericClient> Pg<'_, C> {
    fn prepared(&mut self, statement: &'static str) -> Result<Statement> {
        if let Some(s) = self.statements.get(statement) {
            return Ok(s.clone());
        }
        let s = self
            .client
            .prepare(&sql::numbered_for_postgres(statement))?;
        self.statements.insert(statement, s.clone());
        Ok(s)
    }
}

/// A parameter as the client binds it: text without NUL characters.
enum Value<'a> {
    Int(i64),
    Text(Cow<'a, str>),
    MaybeInt(Option<i64>),
    MaybeText(Option<Cow<'a, str>>),
}

fn values<'a>(params: &[sql::Param<'a>]) -> Vec<Value<'a>> {
    params
        .iter()
        .map(|p| match *p {
            sql::Param::Int(v) => Value::Int(v),
            sql::Param::Text(t) => Value::Text(text(t)),
            sql::Param::MaybeInt(v) => Value::MaybeInt(v),
            sql::Param::MaybeText(t) => Value::MaybeText(t.map(text)),
        })
        .collect()
}

fn refs<'b>(values: &'b [Value]) -> Vec<&'b (dyn ToSql + Sync)> {
    values
        .iter()
        .map(|v| -> &(dyn ToSql + Sync) {
            match v {
                Value::Int(v) => v,
                Value::Text(t) => t,
                Value::MaybeInt(v) => v,
                Value::MaybeText(t) => t,
            }
        })
        .collect()
}

impl<C: GenericClient> sql::Sql for Pg<'_, C> {
    fn execute(&mut self, statement: &'static str, params: &[sql::Param]) -> Result<usize> {
        let prepared = self.prepared(statement)?;
        let values = values(params);
        Ok(self.client.execute(&prepared, &refs(&values))? as usize)
    }

    fn query(
        &mut self,
        statement: &'static str,
        params: &[sql::Param],
        each: &mut dyn FnMut(&dyn sql::Row) -> Result<()>,
    ) -> Result<()> {
        let prepared = self.prepared(statement)?;
        let values = values(params);
        for row in self.client.query(&prepared, &refs(&values))? {
            each(&row)?;
        }
        Ok(())
    }
}

impl sql::Row for ::postgres::Row {
    fn int(&self, i: usize) -> Result<i64> {
        Ok(self.try_get(i)?)
    }
    fn maybe_int(&self, i: usize) -> Result<Option<i64>> {
        Ok(self.try_get(i)?)
    }
    fn text(&self, i: usize) -> Result<String> {
        Ok(self.try_get(i)?)
    }
    fn maybe_text(&self, i: usize) -> Result<Option<String>> {
        Ok(self.try_get(i)?)
    }
}
