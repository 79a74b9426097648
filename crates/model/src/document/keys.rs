//! The keys of one object being read, so that a repeated key is found in
//! constant time however many keys the object has.

use std::collections::HashMap;
use std::hash::BuildHasher;

/// Keys one object of a record may have. Hex's objects have a few dozen; a
/// record with more is refused (the quarantine keeps it), so no record makes
/// the tree or the rules that walk it expensive.
pub const MAX_KEYS: u32 = 10_000;

/// Objects up to this many keys use only the filter and compare a possible
/// repeat with the keys before it; larger ones index their keys by hash.
const SMALL: u32 = 16;

/// Why a key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyRefused {
    /// It repeats an earlier key of the object (in a strict parse).
    Repeated,
    /// The object has more than [`MAX_KEYS`] keys (in a strict parse).
    TooMany,
}

/// The keys of one object read so far.
#[derive(Default)]
pub(super) struct KeysSeen {
    /// A cheap filter over the keys (length and end bytes).
    pub(super) filter: u64,
    pub(super) count: u32,
    /// Past [`SMALL`] keys: each key's hash, to the slot of the last key
    /// read with that hash.
    index: Option<HashMap<u64, u32>>,
    hasher: std::hash::RandomState,
}

impl KeysSeen {
    /// Whether a key with these bytes may repeat one already seen; notes it.
    pub(super) fn filter_admits(&mut self, bytes: &[u8]) -> bool {
        let bit = 1u64
            << ((bytes.len() as u64)
                .wrapping_mul(31)
                .wrapping_add(u64::from(*bytes.first().unwrap_or(&0)))
                .wrapping_add(u64::from(*bytes.last().unwrap_or(&0)) << 3)
                & 63);
        let maybe = self.filter & bit != 0;
        self.filter |= bit;
        maybe
    }

    /// Whether the object is large enough to index its keys.
    pub(super) fn indexed(&self) -> bool {
        self.count > SMALL
    }

    /// The hash of a key's bytes.
    pub(super) fn hash(&self, bytes: &[u8]) -> u64 {
        self.hasher.hash_one(bytes)
    }

    /// Whether the index is built.
    pub(super) fn has_index(&self) -> bool {
        self.index.is_some()
    }

    /// Builds the index from the (hash, slot) of the keys before.
    pub(super) fn build_index(&mut self, earlier: Vec<(u64, u32)>) {
        self.index = Some(earlier.into_iter().collect());
    }

    /// Notes the key at `slot`; the slot of the last key with its hash.
    pub(super) fn note(&mut self, hash: u64, slot: u32) -> Option<u32> {
        self.index
            .get_or_insert_with(HashMap::new)
            .insert(hash, slot)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Node, RecordObject};
    use super::MAX_KEYS;

    /// An object of `n` keys `k0`, `k1`, …, each with its number as value,
    /// then `extra` (already written as `,"key":value` pairs).
    fn object(n: u32, extra: &str) -> String {
        let keys: Vec<String> = (0..n).map(|i| format!("\"k{i}\":{i}")).collect();
        format!("{{\"inner\":{{{}{extra}}}}}", keys.join(","))
    }

    /// Every object read compared each key the filter could not rule out with
    /// all the keys before it: 400,000 keys took minutes. Large objects now
    /// index their keys; what they find is what a small object's scan finds,
    /// and a strict parse refuses an object with more than `MAX_KEYS` keys.
    #[test]
    fn quadratic_cost_in_keys_per_object() {
        let n = MAX_KEYS - 1;
        let repeated = object(n, &format!(",\"k3\":\"again\",\"k{}\":\"last\"", n - 1));
        // Not strict (the evaluator reading stored text): the last copy wins.
        let tree = RecordObject::parse(&repeated).unwrap();
        let Some(Node::Obj(inner)) = tree.obj().get("inner") else {
            panic!("no inner object")
        };
        assert_eq!(inner.len(), n as usize);
        assert!(matches!(inner.get("k3"), Some(Node::Str("again"))));
        assert!(matches!(inner.get("k0"), Some(Node::Int(0))));
        let last = format!("k{}", n - 1);
        assert!(matches!(inner.get(&last), Some(Node::Str("last"))));
        let mine = Node::Obj(tree.obj()).to_json();
        let serde: serde_json::Value = serde_json::from_str(&repeated).unwrap();
        assert_eq!(mine, serde);

        // Strict (ingest): a repeat anywhere is refused, as is one key too many.
        assert!(RecordObject::parse_strict(&repeated).is_err());
        assert!(RecordObject::parse_strict(&object(MAX_KEYS, "")).is_ok());
        let err = RecordObject::parse_strict(&object(MAX_KEYS + 1, "")).unwrap_err();
        assert!(err.to_string().contains("more than 10000 keys"), "{err}");
        assert!(RecordObject::parse(&object(MAX_KEYS + 1, "")).is_ok());
    }
}
