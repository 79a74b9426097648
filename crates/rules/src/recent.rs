//! What learning wrote to the state store lately, so that the records that teach
//! nothing new (nearly all of them: the same people, places and projects all
//! day) cost a hash lookup instead of store reads.
//!
//! Only a cache of the store: entries say "this key held this value, written at
//! this event time". The evaluator forgets it whenever a batch's state is thrown
//! away, so it never claims a write the store does not hold.

use std::collections::HashMap;
use std::sync::LazyLock;

/// Hashing for the caches and fingerprints here: aHash (randomly keyed per
/// process, so record contents cannot be chosen to collide), several times
/// faster than the standard SipHash on the long representation texts.
type Hasher = ahash::RandomState;
static FINGERPRINTS: LazyLock<Hasher> = LazyLock::new(Hasher::new);

/// Entries kept before the cache starts afresh (bounded memory).
const MAX_ENTRIES: usize = 50_000;

/// What a target's representation teaches: the state key and the name under
/// it, with the name's fingerprint; `None` when it names nothing.
type Taught = Option<(String, String, u64)>;

#[derive(Default)]
pub struct Recent {
    written: HashMap<String, (u64, i64), Hasher>,
    /// What representations taught, by fingerprint of (type, id, text). Not a
    /// cache of the store: the same text always teaches the same, so it is
    /// kept when the store's cache is forgotten.
    taught: HashMap<u64, Taught, Hasher>,
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

    /// The name the representation `text` of target `id` of type `kind`
    /// teaches, as (state key, name), unless that key holds it, written
    /// lately. `read` works out what a representation teaches the first time.
    pub fn due(
        &mut self,
        (kind, id, text): (&str, &str, &str),
        now: i64,
        refresh_ms: i64,
        read: impl FnOnce() -> Option<(String, String)>,
    ) -> Option<(String, String)> {
        let print = FINGERPRINTS.hash_one((kind, id, text));
        if self.taught.len() >= MAX_ENTRIES && !self.taught.contains_key(&print) {
            self.taught.clear();
        }
        let taught = self.taught.entry(print).or_insert_with(|| {
            read().map(|(key, name)| {
                let p = fingerprint(&name);
                (key, name, p)
            })
        });
        let (key, name, p) = taught.as_ref()?;
        let fresh = self
            .written
            .get(key)
            .is_some_and(|(v, t)| v == p && now - *t < refresh_ms);
        (!fresh).then(|| (key.clone(), name.clone()))
    }

    pub fn clear(&mut self) {
        self.written.clear();
    }
}

/// A cheap fingerprint of a value (names change rarely; a collision only delays
/// a rename by one refresh period).
pub fn fingerprint(s: &str) -> u64 {
    FINGERPRINTS.hash_one(s)
}
