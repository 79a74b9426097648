//! Building a [`Doc`](super::Doc) from serde's walk of a record's JSON (the
//! scanner in [`scan`](super::scan) builds the same slots without serde).

use super::keys::{KeyRefused, KeysSeen, MAX_KEYS};
use super::*;

/// Builds a [`Doc`] from serde's walk of the JSON: each value is appended as
/// it is read; a container's slot is filled in once its contents are known.
pub(super) struct Builder {
    pub(super) slots: Vec<Slot>,
    /// [`Doc::text`] being written, `text[..used]`: bytes with room after
    /// them, so the scanner can copy sixteen at a time and keep only those it
    /// wanted; it becomes a `String` (checked) in [`Builder::finish`].
    pub(super) text: Vec<u8>,
    pub(super) used: usize,
    /// Refuse a repeated key instead of letting the last one win.
    pub(super) strict: bool,
    /// How many numbers the scanner read, and where the first one is.
    pub(super) numbers: u32,
    pub(super) sole_number: Option<Range<usize>>,
}

impl Builder {
    /// `size` is the text's length when known: room for its strings (which
    /// unescaped are never longer than in the text) and the scanner's last
    /// sixteen-byte copy, and about one slot per 16 bytes, so building the
    /// tree rarely reallocates.
    pub(super) fn new(size: usize, strict: bool) -> Builder {
        Builder {
            slots: Vec::with_capacity(size / 16 + 1),
            text: vec![0; size + 16],
            used: 0,
            strict,
            numbers: 0,
            sole_number: None,
        }
    }

    /// The record built, if it is an object that fits the slots' numbers.
    /// (Its text is whole runs of a `str` and characters unescaped, so always
    /// UTF-8: the check only keeps this free of `unsafe`.)
    pub(super) fn finish(mut self) -> Option<RecordObject> {
        let fits = u32::try_from(self.slots.len().max(self.used)).is_ok();
        self.text.truncate(self.used);
        match self.slots.first() {
            Some(Slot::Obj { .. }) if fits => Some(RecordObject {
                doc: Arc::new(Doc {
                    slots: self.slots,
                    text: String::from_utf8(self.text).ok()?,
                }),
                at: 0,
            }),
            _ => None,
        }
    }

    /// Takes in the key just read at slot `key` of the object at `at`: true
    /// when it is new to the object, false when it repeats an earlier one
    /// (which it then hides); refused when it repeats one, or is one too many,
    /// in a strict parse. Small objects compare a key that the filter says
    /// may repeat with the keys before it; large ones look it up by hash, so
    /// reading an object costs time in proportion to its keys.
    pub(super) fn add_key(
        &mut self,
        at: u32,
        key: u32,
        seen: &mut KeysSeen,
    ) -> Result<bool, KeyRefused> {
        let Slot::Key { span: k, .. } = self.slots[key as usize] else {
            return Ok(true);
        };
        seen.count += 1;
        if self.strict && seen.count > MAX_KEYS {
            return Err(KeyRefused::TooMany);
        }
        let new = if seen.indexed() {
            !self.repeat_by_hash(at, key, seen)
        } else {
            !seen.filter_admits(&self.text[span(k)]) || !self.shadow_repeat(at, key)
        };
        match (new, self.strict) {
            (false, true) => Err(KeyRefused::Repeated),
            _ => Ok(new),
        }
    }

    /// [`Builder::shadow_repeat`] through the object's index of key hashes.
    fn repeat_by_hash(&mut self, at: u32, key: u32, seen: &mut KeysSeen) -> bool {
        let hash = seen.hash(self.key_bytes(key));
        if !seen.has_index() {
            let earlier = self.earlier_keys(at, key, seen);
            seen.build_index(earlier);
        }
        let Some(before) = seen.note(hash, key) else {
            return false;
        };
        if self.key_bytes(before) == self.key_bytes(key) {
            if let Slot::Key { next, .. } = self.slots[before as usize] {
                self.slots[before as usize] = Slot::Gone { next };
            }
            return true;
        }
        // Two keys with one hash: compare with every earlier key (rare).
        self.shadow_repeat(at, key)
    }

    /// The (hash, slot) of the keys of the object at `at` before `key`.
    fn earlier_keys(&self, at: u32, key: u32, seen: &KeysSeen) -> Vec<(u64, u32)> {
        let mut keys = Vec::new();
        let mut i = at + 1;
        while i < key {
            i = match self.slots[i as usize] {
                Slot::Key { next, .. } => {
                    keys.push((seen.hash(self.key_bytes(i)), i));
                    next
                }
                Slot::Gone { next } => next,
                _ => break,
            };
        }
        keys
    }

    /// The bytes of the key at slot `key`.
    fn key_bytes(&self, key: u32) -> &[u8] {
        match self.slots[key as usize] {
            Slot::Key { span: k, .. } => &self.text[span(k)],
            _ => &[],
        }
    }

    pub(super) fn span(&mut self, s: &str) -> Span {
        let start = self.used as u32;
        let end = self.used + s.len();
        self.room(s.len());
        self.text[self.used..end].copy_from_slice(s.as_bytes());
        self.used = end;
        Span {
            start,
            len: s.len() as u32,
        }
    }

    /// Makes room for `n` more bytes of text after `used`.
    pub(super) fn room(&mut self, n: usize) {
        let need = self.used + n;
        if need > self.text.len() {
            self.text.resize(need.max(2 * self.text.len()), 0);
        }
    }

    pub(super) fn push(&mut self, slot: Slot) -> u32 {
        self.slots.push(slot);
        (self.slots.len() - 1) as u32
    }

    /// Points the key at `key`, whose value was just read, to the next slot.
    pub(super) fn link(&mut self, key: u32) {
        link(&mut self.slots, key);
    }

    /// Marks an earlier key of the object at `at` that `key` (the slot just
    /// read) repeats, so the later one wins; returns whether there was one.
    pub(super) fn shadow_repeat(&mut self, at: u32, key: u32) -> bool {
        let Slot::Key { span: k, .. } = self.slots[key as usize] else {
            return false;
        };
        let mut i = at + 1;
        while i < key {
            i = match self.slots[i as usize] {
                Slot::Key { span: e, next } => {
                    if e.len == k.len && self.text[span(e)] == self.text[span(k)] {
                        self.slots[i as usize] = Slot::Gone { next };
                        return true;
                    }
                    next
                }
                Slot::Gone { next } => next,
                _ => return false,
            };
        }
        false
    }
}

pub(super) fn link(slots: &mut [Slot], key: u32) {
    let after = slots.len() as u32;
    if let Slot::Key { next, .. } | Slot::Gone { next } = &mut slots[key as usize] {
        *next = after;
    }
}

pub(super) fn span(s: Span) -> Range<usize> {
    s.start as usize..(s.start + s.len) as usize
}

/// Reads one value into the builder.
pub(super) struct Seed<'b>(pub(super) &'b mut Builder);

/// Reads one object key into the builder.
struct KeySeed<'b>(&'b mut Builder);

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E>(self, s: &str) -> Result<(), E> {
        let k = self.0.span(s);
        self.0.push(Slot::Key { span: k, next: 0 });
        Ok(())
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.0.push(Slot::Null);
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        self.0.push(Slot::Null);
        Ok(())
    }
    fn visit_bool<E>(self, b: bool) -> Result<(), E> {
        self.0.push(Slot::Bool(b));
        Ok(())
    }
    fn visit_i64<E>(self, i: i64) -> Result<(), E> {
        self.0.push(Slot::Int(i));
        Ok(())
    }
    fn visit_u64<E>(self, u: u64) -> Result<(), E> {
        self.0
            .push(i64::try_from(u).map_or(Slot::Float(u as f64), Slot::Int));
        Ok(())
    }
    fn visit_f64<E>(self, f: f64) -> Result<(), E> {
        self.0.push(Slot::Float(f));
        Ok(())
    }
    fn visit_str<E>(self, s: &str) -> Result<(), E> {
        let s = self.0.span(s);
        self.0.push(Slot::Str(s));
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let b = self.0;
        let at = b.push(Slot::Null);
        let mut len = 0u32;
        while seq.next_element_seed(Seed(b))?.is_some() {
            len += 1;
        }
        let end = b.slots.len() as u32;
        b.slots[at as usize] = Slot::Arr { len, end };
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let b = self.0;
        let at = b.push(Slot::Null);
        let mut len = 0u32;
        let mut seen = KeysSeen::default();
        loop {
            let key = b.slots.len() as u32;
            if map.next_key_seed(KeySeed(b))?.is_none() {
                break;
            }
            if !matches!(b.slots[key as usize], Slot::Key { .. }) {
                return Err(A::Error::custom("an object key is not a string"));
            }
            match b.add_key(at, key, &mut seen) {
                Ok(true) => len += 1,
                Ok(false) => {}
                Err(KeyRefused::Repeated) => return Err(A::Error::custom("repeated key")),
                Err(KeyRefused::TooMany) => {
                    return Err(A::Error::custom(format_args!(
                        "an object has more than {MAX_KEYS} keys"
                    )))
                }
            }
            map.next_value_seed(Seed(b))?;
            b.link(key);
        }
        let end = b.slots.len() as u32;
        b.slots[at as usize] = Slot::Obj { len, end };
        Ok(())
    }
}
