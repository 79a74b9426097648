//! What learning wrote to the state store lately, so that the records that teach
//! nothing new (nearly all of them: the same people, places and projects all
//! day) cost a hash lookup instead of store reads.
//!
//! Only a cache of the store: entries say "this key held this value, written at
//! this event time". The evaluator forgets it whenever a batch's state is thrown
//! away, so it never claims a write the store does not hold.

use std::collections::HashMap;

/// Entries kept before the cache starts afresh (bounded memory).
const MAX_ENTRIES: usize = 50_000;

#[derive(Default)]
pub struct Recent {
    written: HashMap<String, (u64, i64)>,
}

impl Recent {
    /// True when `key` was written with `value` less than `refresh_ms` before `now`
    /// (or after it: records arrive a little out of order).
    pub fn fresh(&self, key: &str, value: u64, now: i64, refresh_ms: i64) -> bool {
        self.written
            .get(key)
            .is_some_and(|(v, t)| *v == value && now - *t < refresh_ms)
    }

    /// Notes that `key` holds `value`, written at `t`.
    pub fn wrote(&mut self, key: String, value: u64, t: i64) {
        if self.written.len() >= MAX_ENTRIES {
            self.written.clear();
        }
        self.written.insert(key, (value, t));
    }

    pub fn clear(&mut self) {
        self.written.clear();
    }
}

/// A cheap fingerprint of a value (names change rarely; a collision only delays
/// a rename by one refresh period).
pub fn fingerprint(s: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}
