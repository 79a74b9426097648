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

mod build;
mod keys;
mod rhai_api;
mod scan;

use build::{link, span, Builder, Seed};
pub use keys::MAX_KEYS;
pub use rhai_api::{dynamic_to_json, node_to_native, register, PANTHER_FIELDS};
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
