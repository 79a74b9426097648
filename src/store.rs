//! Rule state behind one interface: the `counter_incr`, `set_add`, `kv_get` and
//! `kv_set` helpers of SPEC §5.
//!
//! `SqliteState` is the default and shares the evaluator's connection, so state
//! changes commit in the same transaction as the evaluation cursor (a crash
//! re-evaluates a batch with the state it had before it). `MemoryState` serves
//! `hexwatch test` and `replay`. A shared store (Redis) for several replicas
//! implements the same trait.
//!
//! Expiry is measured on *event time* (`p_event_time` of the record being
//! evaluated), so `replay` of a recorded stream gives the same answers as the
//! daemon did live.

use std::collections::HashMap;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

#[derive(Debug, thiserror::Error)]
#[error("rule state: {0}")]
pub struct StoreError(String);

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.to_string())
    }
}

/// Milliseconds after `now_ms` when a TTL runs out; a TTL ≤ 0 never expires.
fn expiry(now_ms: i64, ttl_seconds: i64) -> i64 {
    if ttl_seconds <= 0 {
        i64::MAX
    } else {
        now_ms.saturating_add(ttl_seconds.saturating_mul(1000))
    }
}

/// Persistent state shared by all rules. `now_ms` is the event time.
pub trait StateStore: Send + Sync {
    /// Adds one to a counter and returns the new value; a counter that expired
    /// starts again at 1 with a fresh TTL.
    fn counter_incr(&self, key: &str, ttl_seconds: i64, now_ms: i64) -> Result<i64, StoreError>;
    /// Adds a member; true when it was not there (or had expired). Seeing a member
    /// again renews its TTL.
    fn set_add(
        &self,
        key: &str,
        member: &str,
        ttl_seconds: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// The JSON text stored under `key`, if any and not expired.
    fn kv_get(&self, key: &str, now_ms: i64) -> Result<Option<String>, StoreError>;
    /// Stores JSON text under `key`.
    fn kv_set(
        &self,
        key: &str,
        json: &str,
        ttl_seconds: i64,
        now_ms: i64,
    ) -> Result<(), StoreError>;
}

/// In-memory state for `test` (fresh per case) and `replay`.
#[derive(Default)]
pub struct MemoryState {
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    counters: HashMap<String, (i64, i64)>,
    sets: HashMap<(String, String), i64>,
    kv: HashMap<String, (String, i64)>,
}

impl MemoryState {
    /// Forgets everything (between test cases).
    pub fn clear(&self) {
        *self.inner.lock().unwrap() = MemoryInner::default();
    }
}

impl StateStore for MemoryState {
    fn counter_incr(&self, key: &str, ttl_seconds: i64, now_ms: i64) -> Result<i64, StoreError> {
        let mut m = self.inner.lock().unwrap();
        let e = m
            .counters
            .entry(key.to_string())
            .or_insert((0, expiry(now_ms, ttl_seconds)));
        if e.1 <= now_ms {
            *e = (0, expiry(now_ms, ttl_seconds));
        }
        e.0 += 1;
        Ok(e.0)
    }

    fn set_add(
        &self,
        key: &str,
        member: &str,
        ttl_seconds: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut m = self.inner.lock().unwrap();
        let exp = expiry(now_ms, ttl_seconds);
        let prev = m.sets.insert((key.to_string(), member.to_string()), exp);
        Ok(prev.is_none_or(|p| p <= now_ms))
    }

    fn kv_get(&self, key: &str, now_ms: i64) -> Result<Option<String>, StoreError> {
        let m = self.inner.lock().unwrap();
        Ok(m.kv
            .get(key)
            .filter(|(_, exp)| *exp > now_ms)
            .map(|(v, _)| v.clone()))
    }

    fn kv_set(
        &self,
        key: &str,
        json: &str,
        ttl_seconds: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut m = self.inner.lock().unwrap();
        m.kv.insert(
            key.to_string(),
            (json.to_string(), expiry(now_ms, ttl_seconds)),
        );
        Ok(())
    }
}

/// State in the SQLite database, on a connection the evaluator also uses for its
/// batch transaction.
pub struct SqliteState {
    conn: Mutex<Connection>,
}

impl SqliteState {
    pub fn new(conn: Connection) -> SqliteState {
        SqliteState {
            conn: Mutex::new(conn),
        }
    }

    /// Runs `f` on the shared connection (the evaluator's transactions).
    pub fn with_conn<T>(&self, f: impl FnOnce(&mut Connection) -> T) -> T {
        f(&mut self.conn.lock().unwrap())
    }
}

impl StateStore for SqliteState {
    fn counter_incr(&self, key: &str, ttl_seconds: i64, now_ms: i64) -> Result<i64, StoreError> {
        let conn = self.conn.lock().unwrap();
        let exp = expiry(now_ms, ttl_seconds);
        let v: i64 = conn
            .prepare_cached(
                "INSERT INTO state_counters (key, value, expires_at) VALUES (?1, 1, ?2)
                 ON CONFLICT(key) DO UPDATE SET
                   value = CASE WHEN expires_at <= ?3 THEN 1 ELSE value + 1 END,
                   expires_at = CASE WHEN expires_at <= ?3 THEN ?2 ELSE expires_at END
                 RETURNING value",
            )?
            .query_row(params![key, exp, now_ms], |r| r.get(0))?;
        Ok(v)
    }

    fn set_add(
        &self,
        key: &str,
        member: &str,
        ttl_seconds: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let conn = self.conn.lock().unwrap();
        let prev: Option<i64> = conn
            .prepare_cached("SELECT expires_at FROM state_sets WHERE key = ?1 AND member = ?2")?
            .query_row(params![key, member], |r| r.get(0))
            .optional()?;
        conn.prepare_cached(
            "INSERT INTO state_sets (key, member, expires_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(key, member) DO UPDATE SET expires_at = excluded.expires_at",
        )?
        .execute(params![key, member, expiry(now_ms, ttl_seconds)])?;
        Ok(prev.is_none_or(|p| p <= now_ms))
    }

    fn kv_get(&self, key: &str, now_ms: i64) -> Result<Option<String>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let value = conn
            .prepare_cached("SELECT value FROM state_kv WHERE key = ?1 AND expires_at > ?2")?
            .query_row(params![key, now_ms], |r| r.get(0))
            .optional()?;
        Ok(value)
    }

    fn kv_set(
        &self,
        key: &str,
        json: &str,
        ttl_seconds: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let conn = self.conn.lock().unwrap();
        conn.prepare_cached(
            "INSERT INTO state_kv (key, value, expires_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
        )?
        .execute(params![key, json, expiry(now_ms, ttl_seconds)])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(s: &dyn StateStore) {
        let t = 1_000_000;
        assert_eq!(s.counter_incr("c", 60, t).unwrap(), 1);
        assert_eq!(s.counter_incr("c", 60, t + 1000).unwrap(), 2);
        // Expired after 60 s of event time: starts again.
        assert_eq!(s.counter_incr("c", 60, t + 60_000).unwrap(), 1);

        assert!(s.set_add("ips:u1", "1.2.3.4", 3600, t).unwrap());
        assert!(!s.set_add("ips:u1", "1.2.3.4", 3600, t + 1000).unwrap());
        assert!(s.set_add("ips:u1", "5.6.7.8", 3600, t).unwrap());
        assert!(s
            .set_add("ips:u1", "1.2.3.4", 3600, t + 1000 + 3_600_000)
            .unwrap());

        assert_eq!(s.kv_get("k", t).unwrap(), None);
        s.kv_set("k", "{\"a\":1}", 10, t).unwrap();
        assert_eq!(
            s.kv_get("k", t + 9_999).unwrap().as_deref(),
            Some("{\"a\":1}")
        );
        assert_eq!(s.kv_get("k", t + 10_000).unwrap(), None);
        s.kv_set("forever", "1", 0, t).unwrap();
        assert_eq!(
            s.kv_get("forever", i64::MAX - 1).unwrap().as_deref(),
            Some("1")
        );
    }

    #[test]
    fn memory_state() {
        let s = MemoryState::default();
        exercise(&s);
        s.clear();
        assert_eq!(s.kv_get("forever", 0).unwrap(), None);
    }

    #[test]
    fn sqlite_state_behaves_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::db::open_and_migrate(&dir.path().join("s.db")).unwrap();
        exercise(&SqliteState::new(conn));
    }
}
