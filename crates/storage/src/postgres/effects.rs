//! Writing one evaluated batch's effects in one transaction: the lease and
//! the cursor checked first, then rule state, windows with their samples,
//! outbox rows and the evaluated watermark, each kind as one statement of
//! arrays.

use ::postgres::types::ToSql;
use ::postgres::{Statement, Transaction};

use super::{text, PostgresSession, LEASE_TTL, RENEW_LEASE};
use crate::{now_ms, Effects, Result, StateWrites, StorageError, EVALUATOR};
use hexwatch_model::alert::Window;

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

impl PostgresSession {
    pub(super) fn commit_effects(&mut self, e: &Effects) -> Result<()> {
        let move_cursor = self.stmt(MOVE_CURSOR)?;
        let counters = self.stmt(SAVE_COUNTERS)?;
        let sets = self.stmt(SAVE_SETS)?;
        let values = self.stmt(SAVE_VALUES)?;
        let window = self.stmt(SAVE_WINDOW)?;
        let save_samples = self.stmt(SAVE_SAMPLES)?;
        let enqueue = self.stmt(ENQUEUE)?;
        let evaluated = self.stmt(RAISE_EVALUATED)?;
        let renew = self.stmt(RENEW_LEASE)?;
        let mut tx = self.client.transaction()?;
        let ttl = LEASE_TTL.as_millis() as i64;
        if tx.execute(&renew, &[&self.holder, &ttl])? == 0 {
            return Err(StorageError::LeaseLost);
        }
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
        write_state(&mut tx, [&counters, &sets, &values], &e.state)?;
        let now = now_ms();
        write_windows(&mut tx, [&window, &save_samples], &e.windows, now)?;
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
        {
            let mut pg = super::binding::Pg {
                client: &mut tx,
                statements: &mut self.statements,
            };
            crate::incidents::write(&mut pg, &e.incidents, now)?;
            crate::silences::write_held_back(&mut pg, &e.silenced, now)?;
        }
        if e.evaluated_ms != i64::MIN {
            tx.execute(&evaluated, &[&e.evaluated_ms])?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// Counters, set members and values, each as one upsert of arrays.
fn write_state(
    tx: &mut Transaction,
    [counters, sets, values]: [&Statement; 3],
    state: &StateWrites,
) -> Result<()> {
    let e_state = state;
    if !e_state.counters.is_empty() {
        let (mut k, mut v, mut x) = (Vec::new(), Vec::new(), Vec::new());
        for (key, (value, exp)) in &e_state.counters {
            k.push(text(key));
            v.push(*value);
            x.push(*exp);
        }
        tx.execute(counters, &[&k, &v, &x])?;
    }
    if !e_state.sets.is_empty() {
        let (mut k, mut m, mut x) = (Vec::new(), Vec::new(), Vec::new());
        for ((key, member), exp) in &e_state.sets {
            k.push(text(key));
            m.push(text(member));
            x.push(*exp);
        }
        tx.execute(sets, &[&k, &m, &x])?;
    }
    if !e_state.kv.is_empty() {
        let (mut k, mut v, mut x) = (Vec::new(), Vec::new(), Vec::new());
        for (key, (value, exp)) in &e_state.kv {
            k.push(text(key));
            v.push(text(value));
            x.push(*exp);
        }
        tx.execute(values, &[&k, &v, &x])?;
    }
    Ok(())
}

/// Each window's row, then every new sample in one statement.
fn write_windows(
    tx: &mut Transaction,
    [window, save_samples]: [&Statement; 2],
    windows: &[Window],
    now: i64,
) -> Result<()> {
    let (mut sample_ids, mut sample_idx, mut samples) = (Vec::new(), Vec::new(), Vec::new());
    for w in windows {
        let a = &w.alert;
        let json = crate::alert_row_json(a)?;
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
        tx.execute(window, &params)?;
    }
    if !samples.is_empty() {
        tx.execute(save_samples, &[&sample_ids, &sample_idx, &samples])?;
    }
    Ok(())
}
