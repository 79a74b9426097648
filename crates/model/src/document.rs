//! The record as rules see it: an immutable JSON tree parsed once per record and
//! shared by every rule that evaluates it.
//!
//! The whole record is one [`Doc`]: its values in one list of fixed-size slots
//! (in document order, each container followed by its contents) and its strings,
//! unescaped, in one buffer. Parsing a record therefore costs three allocations
//! whatever its size, instead of one per object, array and long string.
//!
//! Rules hold [`RecordObject`] and [`RecordArray`]: a shared pointer to the document
//! and a slot number, so handing the record to a rule, or reading
//! `event.event.actor`, copies a pointer, never the tree. Rules read it like a
//! map (`event.event.action`, `event["keySuffix"]`, `event.event.targets[0]`,
//! `for t in event.event.targets`, `"id" in event.event`, missing fields are
//! `()`), but cannot change it, so one rule can never alter what the next one
//! sees. Rust code reads through the borrowed views [`Node`], [`Obj`] and [`Arr`].

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use rhai::{Array, Dynamic, Engine, ImmutableString, Map, INT};
use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};

mod scan;

pub use scan::plain_run;

/// A parsed record.
#[derive(Debug)]
pub struct Doc {
    slots: Vec<Slot>,
    /// Every string and key of the record, unescaped, one after another.
    text: String,
}

/// A place in [`Doc::text`].
#[derive(Clone, Copy, Debug)]
struct Span {
    start: u32,
    len: u32,
}

/// One value. A container's contents follow it and end before `end`; an
/// object's are key, value, key, value..., each key giving the slot of the
/// next, so a lookup steps from key to key (`Gone` marks a key repeated later
/// in the same object: as in serde_json, the last one wins).
#[derive(Clone, Copy, Debug)]
enum Slot {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Span),
    Key { span: Span, next: u32 },
    Gone { next: u32 },
    Arr { len: u32, end: u32 },
    Obj { len: u32, end: u32 },
}

const _: () = assert!(std::mem::size_of::<Slot>() == 16);

impl Doc {
    fn str(&self, s: Span) -> &str {
        &self.text[s.start as usize..(s.start + s.len) as usize]
    }

    /// The slot after the value at `i` and everything it contains.
    fn after(&self, i: u32) -> u32 {
        match self.slots[i as usize] {
            Slot::Arr { end, .. } | Slot::Obj { end, .. } => end,
            _ => i + 1,
        }
    }

    /// The slot of the value under `key` in the object at `at`.
    fn find(&self, at: u32, key: &str) -> Option<u32> {
        // A record's objects are small: a scan that compares lengths first
        // touches the bytes of one or two keys.
        let end = self.after(at);
        let text = self.text.as_bytes();
        let mut i = at + 1;
        while i < end {
            i = match self.slots[i as usize] {
                Slot::Key { span: k, next } => {
                    if k.len as usize == key.len() && text[span(k)] == *key.as_bytes() {
                        return Some(i + 1);
                    }
                    next
                }
                Slot::Gone { next } => next,
                _ => return None,
            };
        }
        None
    }
}

/// A read-only JSON object, as rules hold it.
#[derive(Clone, Debug)]
pub struct RecordObject {
    doc: Arc<Doc>,
    at: u32,
}

/// A read-only JSON array, as rules hold it.
#[derive(Clone, Debug)]
pub struct RecordArray {
    doc: Arc<Doc>,
    at: u32,
}

/// A value of a record, borrowed.
#[derive(Clone, Copy, Debug)]
pub enum Node<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
    Arr(Arr<'a>),
    Obj(Obj<'a>),
}

/// An object of a record, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct Obj<'a> {
    doc: &'a Arc<Doc>,
    at: u32,
}

/// An array of a record, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct Arr<'a> {
    doc: &'a Arc<Doc>,
    at: u32,
}

impl<'a> Node<'a> {
    fn at(doc: &'a Arc<Doc>, i: u32) -> Node<'a> {
        match doc.slots[i as usize] {
            Slot::Null | Slot::Key { .. } | Slot::Gone { .. } => Node::Null,
            Slot::Bool(b) => Node::Bool(b),
            Slot::Int(n) => Node::Int(n),
            Slot::Float(f) => Node::Float(f),
            Slot::Str(s) => Node::Str(doc.str(s)),
            Slot::Arr { .. } => Node::Arr(Arr { doc, at: i }),
            Slot::Obj { .. } => Node::Obj(Obj { doc, at: i }),
        }
    }

    /// The value as Rhai sees it (cheap: leaves are small, containers are pointers).
    pub fn to_dynamic(&self) -> Dynamic {
        match *self {
            Node::Null => Dynamic::UNIT,
            Node::Bool(b) => Dynamic::from_bool(b),
            Node::Int(i) => Dynamic::from_int(i),
            Node::Float(f) => Dynamic::from_float(f),
            Node::Str(s) => Dynamic::from(ImmutableString::from(s)),
            Node::Arr(a) => Dynamic::from(a.to_owned()),
            Node::Obj(o) => Dynamic::from(o.to_owned()),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match *self {
            Node::Null => serde_json::Value::Null,
            Node::Bool(b) => b.into(),
            Node::Int(i) => i.into(),
            Node::Float(f) => serde_json::Number::from_f64(f)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Node::Str(s) => s.into(),
            Node::Arr(a) => serde_json::Value::Array(a.iter().map(|n| n.to_json()).collect()),
            Node::Obj(o) => serde_json::Value::Object(
                o.entries()
                    .map(|(k, v)| (k.to_string(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

impl<'a> Obj<'a> {
    pub fn to_owned(self) -> RecordObject {
        RecordObject {
            doc: self.doc.clone(),
            at: self.at,
        }
    }

    /// The keys and values, in the order the record gives them.
    pub fn entries(self) -> impl Iterator<Item = (&'a str, Node<'a>)> {
        let doc = self.doc;
        let end = doc.after(self.at);
        let mut i = self.at + 1;
        std::iter::from_fn(move || loop {
            if i >= end {
                return None;
            }
            let value = i + 1;
            match doc.slots[i as usize] {
                Slot::Key { span: k, next } => {
                    i = next;
                    return Some((doc.str(k), Node::at(doc, value)));
                }
                Slot::Gone { next } => i = next,
                _ => return None,
            }
        })
    }

    pub fn get(self, key: &str) -> Option<Node<'a>> {
        let i = self.doc.find(self.at, key)?;
        Some(Node::at(self.doc, i))
    }

    pub fn len(self) -> usize {
        match self.doc.slots[self.at as usize] {
            Slot::Obj { len, .. } => len as usize,
            _ => 0,
        }
    }

    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// Follows object keys, e.g. `["event", "actor", "id"]`.
    pub fn at(self, path: &[impl AsRef<str>]) -> Option<Node<'a>> {
        let (first, rest) = path.split_first()?;
        let mut cur = self.get(first.as_ref())?;
        for key in rest {
            match cur {
                Node::Obj(m) => cur = m.get(key.as_ref())?,
                _ => return None,
            }
        }
        Some(cur)
    }

    /// The string at `path`, if there is one.
    pub fn str_at(self, path: &[&str]) -> Option<&'a str> {
        match self.at(path)? {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl<'a> Arr<'a> {
    pub fn to_owned(self) -> RecordArray {
        RecordArray {
            doc: self.doc.clone(),
            at: self.at,
        }
    }

    pub fn iter(self) -> impl Iterator<Item = Node<'a>> {
        let doc = self.doc;
        let end = doc.after(self.at);
        let mut i = self.at + 1;
        std::iter::from_fn(move || {
            (i < end).then(|| {
                let n = Node::at(doc, i);
                i = doc.after(i);
                n
            })
        })
    }

    pub fn len(self) -> usize {
        match self.doc.slots[self.at as usize] {
            Slot::Arr { len, .. } => len as usize,
            _ => 0,
        }
    }

    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// The element at `index`; a negative one counts from the end.
    pub fn get(self, index: INT) -> Option<Node<'a>> {
        let len = self.len() as INT;
        let i = if index < 0 { len + index } else { index };
        if (0..len).contains(&i) {
            self.iter().nth(i as usize)
        } else {
            None
        }
    }
}

impl RecordObject {
    /// Parses a record (a JSON object).
    pub fn parse(json: &str) -> Result<RecordObject, serde_json::Error> {
        Self::parse_text(json, false).map(|(map, _)| map)
    }

    /// Parses a record, refusing one that repeats a key in an object, as
    /// a strict JSON parse does: JSON parsers disagree on which copy of a repeated
    /// key wins, so a repeated key could hide an action from one reader.
    pub fn parse_strict(json: &str) -> Result<RecordObject, serde_json::Error> {
        Self::parse_text(json, true).map(|(map, _)| map)
    }

    /// Parses like [`RecordObject::parse_strict`], and gives where the text's only
    /// number is when it has exactly one (Hex's records: `event.version`), so
    /// it can be replaced in the text without looking for it again. `None`
    /// when there are none or several, or when serde_json parsed the text.
    pub fn parse_strict_noting_number(
        json: &str,
    ) -> Result<(RecordObject, Option<Range<usize>>), serde_json::Error> {
        Self::parse_text(json, true)
    }

    /// The scanner builds the tree when it can; serde_json builds it (and
    /// explains what is wrong) when it cannot.
    fn parse_text(
        json: &str,
        strict: bool,
    ) -> Result<(RecordObject, Option<Range<usize>>), serde_json::Error> {
        let mut b = Builder::new(json.len(), strict);
        if scan::scan(json, &mut b).is_some() {
            let number = b.sole_number.take().filter(|_| b.numbers == 1);
            if let Some(map) = b.finish() {
                return Ok((map, number));
            }
        }
        Self::parse_with_serde(json, strict).map(|map| (map, None))
    }

    /// The record as serde_json alone parses it.
    fn parse_with_serde(json: &str, strict: bool) -> Result<RecordObject, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(json);
        let map = Self::deserialize_with_capacity(&mut de, json.len(), strict)?;
        de.end()?;
        Ok(map)
    }

    /// Reads a record from any serde source (e.g. a `serde_json::Value`).
    pub fn from_deserializer<'de, D: Deserializer<'de>>(d: D) -> Result<RecordObject, D::Error> {
        Self::deserialize_with_capacity(d, 0, false)
    }

    /// Changes a record that has just been parsed, before anything shares it
    /// (`None` once it has been cloned, or for a part of a record).
    pub fn edit(&mut self) -> Option<Edit<'_>> {
        if self.at != 0 {
            return None;
        }
        Arc::get_mut(&mut self.doc).map(|doc| Edit { doc })
    }

    /// `size` is the text's length when known (see [`Builder::new`]).
    fn deserialize_with_capacity<'de, D: Deserializer<'de>>(
        d: D,
        size: usize,
        strict: bool,
    ) -> Result<RecordObject, D::Error> {
        let mut b = Builder::new(size, strict);
        Seed(&mut b).deserialize(d)?;
        if u32::try_from(b.slots.len().max(b.used)).is_err() {
            return Err(D::Error::custom("record too large"));
        }
        b.finish()
            .ok_or_else(|| D::Error::custom("a record must be a JSON object"))
    }

    pub fn obj(&self) -> Obj<'_> {
        Obj {
            doc: &self.doc,
            at: self.at,
        }
    }

    pub fn to_dynamic(&self) -> Dynamic {
        Dynamic::from(self.clone())
    }

    pub fn get(&self, key: &str) -> Option<Node<'_>> {
        self.obj().get(key)
    }

    pub fn at(&self, path: &[&str]) -> Option<Node<'_>> {
        self.obj().at(path)
    }

    pub fn str_at(&self, path: &[&str]) -> Option<&str> {
        self.obj().str_at(path)
    }

    pub fn len(&self) -> usize {
        self.obj().len()
    }

    pub fn is_empty(&self) -> bool {
        self.obj().is_empty()
    }
}

impl RecordArray {
    pub fn arr(&self) -> Arr<'_> {
        Arr {
            doc: &self.doc,
            at: self.at,
        }
    }

    pub fn get(&self, index: INT) -> Option<Node<'_>> {
        self.arr().get(index)
    }
}

impl IntoIterator for RecordArray {
    type Item = Dynamic;
    type IntoIter = std::vec::IntoIter<Dynamic>;
    fn into_iter(self) -> Self::IntoIter {
        self.arr()
            .iter()
            .map(|n| n.to_dynamic())
            .collect::<Vec<_>>()
            .into_iter()
    }
}

impl fmt::Display for RecordObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", Node::Obj(self.obj()).to_json())
    }
}

impl fmt::Display for RecordArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", Node::Arr(self.arr()).to_json())
    }
}

/// Builds a [`Doc`] from serde's walk of the JSON: each value is appended as
/// it is read; a container's slot is filled in once its contents are known.
struct Builder {
    slots: Vec<Slot>,
    /// [`Doc::text`] being written, `text[..used]`: bytes with room after
    /// them, so the scanner can copy sixteen at a time and keep only those it
    /// wanted; it becomes a `String` (checked) in [`Builder::finish`].
    text: Vec<u8>,
    used: usize,
    /// Refuse a repeated key instead of letting the last one win.
    strict: bool,
    /// How many numbers the scanner read, and where the first one is.
    numbers: u32,
    sole_number: Option<Range<usize>>,
}

impl Builder {
    /// `size` is the text's length when known: room for its strings (which
    /// unescaped are never longer than in the text) and the scanner's last
    /// sixteen-byte copy, and about one slot per 16 bytes, so building the
    /// tree rarely reallocates.
    fn new(size: usize, strict: bool) -> Builder {
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
    fn finish(mut self) -> Option<RecordObject> {
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
    /// (which it then hides), an error when it repeats one in a strict parse.
    /// `seen` is a cheap filter over the object's keys so far (length and end
    /// bytes): only a key that may repeat one is compared with them.
    fn add_key(&mut self, at: u32, key: u32, seen: &mut u64) -> Result<bool, ()> {
        let Slot::Key { span: k, .. } = self.slots[key as usize] else {
            return Ok(true);
        };
        let bytes = &self.text[span(k)];
        let bit = 1u64
            << ((bytes.len() as u64)
                .wrapping_mul(31)
                .wrapping_add(u64::from(*bytes.first().unwrap_or(&0)))
                .wrapping_add(u64::from(*bytes.last().unwrap_or(&0)) << 3)
                & 63);
        let new = *seen & bit == 0 || !self.shadow_repeat(at, key);
        *seen |= bit;
        match (new, self.strict) {
            (false, true) => Err(()),
            _ => Ok(new),
        }
    }

    fn span(&mut self, s: &str) -> Span {
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
    fn room(&mut self, n: usize) {
        let need = self.used + n;
        if need > self.text.len() {
            self.text.resize(need.max(2 * self.text.len()), 0);
        }
    }

    fn push(&mut self, slot: Slot) -> u32 {
        self.slots.push(slot);
        (self.slots.len() - 1) as u32
    }

    /// Points the key at `key`, whose value was just read, to the next slot.
    fn link(&mut self, key: u32) {
        link(&mut self.slots, key);
    }

    /// Marks an earlier key of the object at `at` that `key` (the slot just
    /// read) repeats, so the later one wins; returns whether there was one.
    fn shadow_repeat(&mut self, at: u32, key: u32) -> bool {
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

fn link(slots: &mut [Slot], key: u32) {
    let after = slots.len() as u32;
    if let Slot::Key { next, .. } | Slot::Gone { next } = &mut slots[key as usize] {
        *next = after;
    }
}

fn span(s: Span) -> Range<usize> {
    s.start as usize..(s.start + s.len) as usize
}

/// Reads one value into the builder.
struct Seed<'b>(&'b mut Builder);

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
        let mut seen = 0u64;
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
                Err(()) => return Err(A::Error::custom("repeated key")),
            }
            map.next_value_seed(Seed(b))?;
            b.link(key);
        }
        let end = b.slots.len() as u32;
        b.slots[at as usize] = Slot::Obj { len, end };
        Ok(())
    }
}

/// Changes to a record just parsed (see [`RecordObject::edit`]). The root object
/// is the last container of the document, so fields are appended to it.
pub struct Edit<'a> {
    doc: &'a mut Doc,
}

impl Edit<'_> {
    /// Makes the scalar at `path` the string `s`; false if there is none.
    pub fn set_str(&mut self, path: &[&str], s: &str) -> bool {
        let mut at = 0;
        for key in path {
            match self.doc.slots[at as usize] {
                Slot::Obj { .. } => match self.doc.find(at, key) {
                    Some(i) => at = i,
                    None => return false,
                },
                _ => return false,
            }
        }
        if matches!(
            self.doc.slots[at as usize],
            Slot::Arr { .. } | Slot::Obj { .. }
        ) {
            return false;
        }
        let span = self.span(s);
        self.doc.slots[at as usize] = Slot::Str(span);
        true
    }

    /// Adds `key: "s"` to the root object.
    pub fn push_str(&mut self, key: &str, s: &str) {
        let key = self.push_key(key);
        let span = self.span(s);
        self.doc.slots.push(Slot::Str(span));
        self.close_root(key);
    }

    /// Adds `key: ["s"]` to the root object.
    pub fn push_str_list(&mut self, key: &str, s: &str) {
        let key = self.push_key(key);
        let end = self.doc.slots.len() as u32 + 2;
        self.doc.slots.push(Slot::Arr { len: 1, end });
        let span = self.span(s);
        self.doc.slots.push(Slot::Str(span));
        self.close_root(key);
    }

    fn span(&mut self, s: &str) -> Span {
        let start = self.doc.text.len() as u32;
        self.doc.text.push_str(s);
        Span {
            start,
            len: s.len() as u32,
        }
    }

    fn push_key(&mut self, key: &str) -> u32 {
        let span = self.span(key);
        self.doc.slots.push(Slot::Key { span, next: 0 });
        (self.doc.slots.len() - 1) as u32
    }

    /// Links the key just added and counts it in the root object.
    fn close_root(&mut self, key: u32) {
        link(&mut self.doc.slots, key);
        let end = self.doc.slots.len() as u32;
        if let Slot::Obj { len, .. } = self.doc.slots[0] {
            self.doc.slots[0] = Slot::Obj { len: len + 1, end };
        }
    }
}

/// Converts any value a rule returns (native maps, arrays, event parts) to JSON.
pub fn dynamic_to_json(d: &Dynamic) -> serde_json::Value {
    if d.is_unit() {
        serde_json::Value::Null
    } else if let Ok(b) = d.as_bool() {
        b.into()
    } else if let Ok(i) = d.as_int() {
        i.into()
    } else if let Ok(f) = d.as_float() {
        serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, serde_json::Value::Number)
    } else if let Ok(s) = d.as_immutable_string_ref() {
        s.as_str().into()
    } else if let Some(m) = d.read_lock::<RecordObject>() {
        Node::Obj(m.obj()).to_json()
    } else if let Some(a) = d.read_lock::<RecordArray>() {
        Node::Arr(a.arr()).to_json()
    } else if let Ok(m) = d.as_map_ref() {
        serde_json::Value::Object(
            m.iter()
                .map(|(k, v)| (k.to_string(), dynamic_to_json(v)))
                .collect(),
        )
    } else if let Ok(a) = d.as_array_ref() {
        serde_json::Value::Array(a.iter().map(dynamic_to_json).collect())
    } else {
        d.to_string().into()
    }
}

/// Converts an event part into native Rhai values (for rules that want a mutable copy).
pub fn node_to_native(n: Node<'_>) -> Dynamic {
    match n {
        Node::Arr(a) => Dynamic::from_array(a.iter().map(node_to_native).collect::<Array>()),
        Node::Obj(o) => Dynamic::from_map(
            o.entries()
                .map(|(k, v)| (k.into(), node_to_native(v)))
                .collect::<Map>(),
        ),
        leaf => leaf.to_dynamic(),
    }
}

/// The fields Panther adds to a record (`p_*`), in the order ingest appends them
/// to a record kept as sent.
pub const PANTHER_FIELDS: [&str; 9] = [
    "p_log_type",
    "p_event_time",
    "p_parse_time",
    "p_row_id",
    "p_source_label",
    "p_any_ip_addresses",
    "p_any_emails",
    "p_any_trace_ids",
    "p_any_actor_ids",
];

/// Field names of the Hex.Audit record. Each gets a direct property getter, so
/// `event.event.action` does not go through Rhai's slower getter-then-indexer
/// fallback (the `p_*` fields too); any other name still reads through the indexer.
const KNOWN_FIELDS: &[&str] = &[
    "source",
    "keySuffix",
    "timestamp",
    "event",
    "actor",
    "id",
    "type",
    "metadata",
    "email",
    "workspace",
    "workspaceId",
    "actorOrgRole",
    "action",
    "context",
    "location",
    "user_agent",
    "targets",
    "created",
    "principal_type",
    "representation",
    "version",
    "result",
    "requestArgs",
    "failureReason",
    "hexTraceId",
    "isRefreshingKey",
    "projectCreationMethod",
    "occurred_at",
];

/// Teaches the engine to read event values.
pub fn register(engine: &mut Engine) {
    for name in KNOWN_FIELDS.iter().chain(&PANTHER_FIELDS) {
        engine.register_get(name, move |m: &mut RecordObject| {
            m.get(name).map_or(Dynamic::UNIT, |n| n.to_dynamic())
        });
    }
    engine
        .register_type_with_name::<RecordObject>("EventMap")
        .register_type_with_name::<RecordArray>("EventArray")
        .register_indexer_get(|m: &mut RecordObject, key: &str| {
            m.get(key).map_or(Dynamic::UNIT, |n| n.to_dynamic())
        })
        .register_indexer_get(|a: &mut RecordArray, i: INT| {
            a.get(i).map_or(Dynamic::UNIT, |n| n.to_dynamic())
        })
        .register_iterator::<RecordArray>()
        .register_fn("len", |m: &mut RecordObject| m.len() as INT)
        .register_fn("len", |a: &mut RecordArray| a.arr().len() as INT)
        .register_fn("is_empty", |m: &mut RecordObject| m.is_empty())
        .register_fn("is_empty", |a: &mut RecordArray| a.arr().is_empty())
        .register_fn("contains", |m: &mut RecordObject, key: &str| {
            m.get(key).is_some()
        })
        .register_fn("contains", |a: &mut RecordArray, v: Dynamic| {
            let want = dynamic_to_json(&v);
            a.arr().iter().any(|n| n.to_json() == want)
        })
        .register_fn("keys", |m: &mut RecordObject| {
            m.obj()
                .entries()
                .map(|(k, _)| Dynamic::from(ImmutableString::from(k)))
                .collect::<Array>()
        })
        .register_fn("to_map", |m: &mut RecordObject| {
            node_to_native(Node::Obj(m.obj()))
        })
        .register_fn("to_array", |a: &mut RecordArray| {
            node_to_native(Node::Arr(a.arr()))
        })
        .register_fn("to_json", |m: &mut RecordObject| m.to_string())
        .register_fn("to_json", |a: &mut RecordArray| a.to_string())
        .register_fn("to_string", |m: &mut RecordObject| m.to_string())
        .register_fn("to_string", |a: &mut RecordArray| a.to_string())
        .register_fn("to_debug", |m: &mut RecordObject| m.to_string())
        .register_fn("to_debug", |a: &mut RecordArray| a.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;
    use rhai::{CallFnOptions, Scope};

    fn run(script: &str, json: &str) -> Result<Dynamic, Box<rhai::EvalAltResult>> {
        let mut engine = Engine::new();
        register(&mut engine);
        let ast = engine.compile(script).unwrap();
        let event = RecordObject::parse(json).unwrap().to_dynamic();
        engine.call_fn_with_options::<Dynamic>(
            CallFnOptions::new().eval_ast(false),
            &mut Scope::new(),
            &ast,
            "f",
            (event,),
        )
    }

    const REC: &str =
        r#"{"event":{"action":"RUN","targets":[{"id":"p1"},{"id":"p2"}],"n":3,"ok":true}}"#;

    #[test]
    fn reads_like_a_map() {
        let r = run("fn f(e) { e.event.action }", REC).unwrap();
        assert_eq!(r.into_string().unwrap(), "RUN");
        let r = run(
            "fn f(e) { e.event.targets[1].id + e[\"event\"].targets[-1].id }",
            REC,
        )
        .unwrap();
        assert_eq!(r.into_string().unwrap(), "p2p2");
        let r = run(
            "fn f(e) { let s = \"\"; for t in e.event.targets { s += t.id; } s }",
            REC,
        )
        .unwrap();
        assert_eq!(r.into_string().unwrap(), "p1p2");
        let r = run("fn f(e) { e.event.n + 1 }", REC).unwrap();
        assert_eq!(r.as_int().unwrap(), 4);
        let r = run(
            "fn f(e) { \"action\" in e.event && !(\"nope\" in e.event) && e.event.ok }",
            REC,
        )
        .unwrap();
        assert!(r.as_bool().unwrap());
        let r = run("fn f(e) { e.event.targets.len() }", REC).unwrap();
        assert_eq!(r.as_int().unwrap(), 2);
    }

    #[test]
    fn missing_fields_are_unit_and_elvis_works() {
        assert!(run("fn f(e) { e.nope }", REC).unwrap().is_unit());
        assert!(run("fn f(e) { e.nope?.deeper?.still }", REC)
            .unwrap()
            .is_unit());
        assert!(run("fn f(e) { e.event.targets[9] }", REC)
            .unwrap()
            .is_unit());
        assert!(run("fn f(e) { e.nope == () }", REC)
            .unwrap()
            .as_bool()
            .unwrap());
    }

    #[test]
    fn events_are_read_only() {
        let err = run("fn f(e) { e.event.action = \"X\"; 1 }", REC).unwrap_err();
        assert!(!err.to_string().is_empty());
        // A mutable copy is available when a rule needs one.
        let r = run(
            "fn f(e) { let m = e.event.to_map(); m.action = \"X\"; m.action }",
            REC,
        )
        .unwrap();
        assert_eq!(r.into_string().unwrap(), "X");
    }

    #[test]
    fn json_round_trip() {
        let n = RecordObject::parse(REC).unwrap();
        assert_eq!(
            Node::Obj(n.obj()).to_json(),
            serde_json::from_str::<serde_json::Value>(REC).unwrap()
        );
        let d = run(
            "fn f(e) { #{ actor: e.event.targets[0], n: 1, list: [1, \"a\"] } }",
            REC,
        )
        .unwrap();
        assert_eq!(
            dynamic_to_json(&d),
            serde_json::json!({"actor": {"id": "p1"}, "n": 1, "list": [1, "a"]})
        );
    }

    #[test]
    fn small_and_large_objects_find_every_key_and_the_last_repeat() {
        for n in [1usize, 5, 16, 17, 40] {
            let body: Vec<String> = (0..n).map(|i| format!("\"k{i}\":{i}")).collect();
            let json = format!("{{{},\"k0\":\"last\"}}", body.join(","));
            let m = RecordObject::parse(&json).unwrap();
            assert_eq!(m.len(), n);
            assert!(matches!(m.get("k0"), Some(Node::Str("last"))), "{n} keys");
            for i in 1..n {
                assert!(matches!(m.get(&format!("k{i}")), Some(Node::Int(v)) if v == i as i64));
            }
            assert!(m.get("k").is_none() && m.get("k00").is_none() && m.get("").is_none());
        }
    }

    #[test]
    fn one_document_reads_like_the_json_it_came_from() {
        // Containers nested in arrays and objects, repeated keys whose values
        // are containers, escapes, numbers of every kind, and a wide object.
        let wide: Vec<String> = (0..100)
            .map(|i| format!("\"w{i}\":[{i},{{\"x\":{i}}}]"))
            .collect();
        let json = format!(
            r#"{{"a":[[1,[2]],{{"b":{{"c":"\"q\"\u00e9"}}}},[]],"d":{{"e":[1]}},"d":{{"f":null}},
                "g":-3,"h":1.5e3,"i":-9223372036854775808,"j":false,"k":{{}},{}}}"#,
            wide.join(",")
        );
        let m = RecordObject::parse(&json).unwrap();
        let want: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(Node::Obj(m.obj()).to_json(), want);
        let from_value = RecordObject::from_deserializer(&want).unwrap();
        assert_eq!(Node::Obj(from_value.obj()).to_json(), want);
        assert_eq!(m.len(), want.as_object().unwrap().len());
        assert_eq!(m.obj().entries().count(), m.len());
        assert!(m.at(&["d", "e"]).is_none());
        assert!(matches!(m.at(&["d", "f"]), Some(Node::Null)));
        assert_eq!(m.str_at(&["a", "b", "c"]), None);
        let Some(Node::Arr(a)) = m.get("a") else {
            panic!("a is an array")
        };
        assert_eq!(a.len(), 3);
        assert!(matches!(a.get(-1), Some(Node::Arr(e)) if e.is_empty()));
        assert!(
            matches!(a.get(1), Some(Node::Obj(o)) if o.str_at(&["b", "c"]) == Some("\"q\"\u{e9}"))
        );
        assert!(a.get(3).is_none() && a.get(-4).is_none());
        for i in 0..100 {
            let Some(Node::Arr(w)) = m.get(&format!("w{i}")) else {
                panic!("w{i}")
            };
            assert!(
                matches!(w.get(1), Some(Node::Obj(o)) if matches!(o.get("x"), Some(Node::Int(x)) if x == i))
            );
        }
        let big = RecordObject::parse(r#"{"n":18446744073709551615}"#).unwrap();
        assert!(matches!(big.get("n"), Some(Node::Float(f)) if f == u64::MAX as f64));
        assert!(RecordObject::parse("[1]").is_err() && RecordObject::parse("{} x").is_err());
    }
}
