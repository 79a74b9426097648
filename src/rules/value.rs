//! The record as rules see it: an immutable JSON tree parsed once per record and
//! shared by every rule that evaluates it.
//!
//! Objects and arrays sit behind `Arc`, so handing the record to a rule, or
//! reading `event.event.actor`, copies a pointer, never the tree. Rules read it
//! like a map (`event.event.action`, `event["keySuffix"]`, `event.event.targets[0]`,
//! `for t in event.event.targets`, `"id" in event.event`, missing fields are `()`),
//! but cannot change it, so one rule can never alter what the next one sees.

use std::fmt;
use std::sync::Arc;

use compact_str::CompactString;
use rhai::{Array, Dynamic, Engine, ImmutableString, Map, INT};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON value. Leaves become native Rhai values when read.
#[derive(Clone, Debug)]
pub enum Node {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Inline up to 24 bytes: most of a record's strings cost no allocation
    /// until a rule reads them.
    Str(CompactString),
    Arr(EventArray),
    Obj(EventMap),
}

/// A read-only JSON object (keys sorted for binary search).
#[derive(Clone, Debug)]
pub struct EventMap(Arc<Vec<(CompactString, Node)>>);

/// A read-only JSON array.
#[derive(Clone, Debug)]
pub struct EventArray(Arc<Vec<Node>>);

impl Node {
    /// Parses JSON text.
    pub fn parse(json: &str) -> Result<Node, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The value as Rhai sees it (cheap: leaves are small, containers are pointers).
    pub fn to_dynamic(&self) -> Dynamic {
        match self {
            Node::Null => Dynamic::UNIT,
            Node::Bool(b) => Dynamic::from_bool(*b),
            Node::Int(i) => Dynamic::from_int(*i),
            Node::Float(f) => Dynamic::from_float(*f),
            Node::Str(s) => Dynamic::from(ImmutableString::from(s.as_str())),
            Node::Arr(a) => Dynamic::from(a.clone()),
            Node::Obj(o) => Dynamic::from(o.clone()),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Node::Null => serde_json::Value::Null,
            Node::Bool(b) => (*b).into(),
            Node::Int(i) => (*i).into(),
            Node::Float(f) => serde_json::Number::from_f64(*f)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Node::Str(s) => s.as_str().into(),
            Node::Arr(a) => serde_json::Value::Array(a.0.iter().map(Node::to_json).collect()),
            Node::Obj(o) => serde_json::Value::Object(
                o.0.iter()
                    .map(|(k, v)| (k.to_string(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

impl EventMap {
    /// A record's map from JSON text (tests).
    #[cfg(test)]
    pub(crate) fn from_json(json: &str) -> EventMap {
        match Node::parse(json).expect("JSON") {
            Node::Obj(m) => m,
            _ => panic!("not a JSON object: {json}"),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        // A record's objects are small: a scan that compares lengths first
        // touches the bytes of one or two keys; large ones are searched.
        if self.0.len() <= 16 {
            return self
                .0
                .iter()
                .find(|(k, _)| k.len() == key.len() && k.as_str() == key)
                .map(|(_, v)| v);
        }
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Follows object keys, e.g. `["event", "actor", "id"]`.
    pub fn at(&self, path: &[&str]) -> Option<&Node> {
        let (first, rest) = path.split_first()?;
        let mut cur = self.get(first)?;
        for key in rest {
            match cur {
                Node::Obj(m) => cur = m.get(key)?,
                _ => return None,
            }
        }
        Some(cur)
    }

    /// The string at `path`, if there is one.
    pub fn str_at(&self, path: &[&str]) -> Option<&str> {
        match self.at(path)? {
            Node::Str(s) => Some(s.as_str()),
            _ => None,
        }
    }
}

impl EventArray {
    pub fn as_slice(&self) -> &[Node] {
        &self.0
    }

    pub fn get(&self, index: INT) -> Option<&Node> {
        let len = self.0.len() as INT;
        let i = if index < 0 { len + index } else { index };
        if (0..len).contains(&i) {
            Some(&self.0[i as usize])
        } else {
            None
        }
    }
}

impl IntoIterator for EventArray {
    type Item = Dynamic;
    type IntoIter = std::vec::IntoIter<Dynamic>;
    fn into_iter(self) -> Self::IntoIter {
        self.0
            .iter()
            .map(Node::to_dynamic)
            .collect::<Vec<_>>()
            .into_iter()
    }
}

impl fmt::Display for EventMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", Node::Obj(self.clone()).to_json())
    }
}

impl fmt::Display for EventArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", Node::Arr(self.clone()).to_json())
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("JSON")
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Node, E> {
                Ok(Node::Bool(b))
            }
            fn visit_i64<E>(self, i: i64) -> Result<Node, E> {
                Ok(Node::Int(i))
            }
            fn visit_u64<E>(self, u: u64) -> Result<Node, E> {
                Ok(i64::try_from(u).map_or(Node::Float(u as f64), Node::Int))
            }
            fn visit_f64<E>(self, f: f64) -> Result<Node, E> {
                Ok(Node::Float(f))
            }
            fn visit_str<E>(self, s: &str) -> Result<Node, E> {
                Ok(Node::Str(CompactString::from(s)))
            }
            fn visit_string<E>(self, s: String) -> Result<Node, E> {
                Ok(Node::Str(CompactString::from(s)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(n) = seq.next_element()? {
                    v.push(n);
                }
                Ok(Node::Arr(EventArray(Arc::new(v))))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut v: Vec<(CompactString, Node)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((k, n)) = map.next_entry::<std::borrow::Cow<'de, str>, Node>()? {
                    v.push((CompactString::from(k.as_ref()), n));
                }
                v.sort_by(|a, b| a.0.cmp(&b.0));
                // JSON with a repeated key: the last one wins, as in serde_json.
                v.dedup_by(|later, earlier| {
                    if later.0 == earlier.0 {
                        std::mem::swap(later, earlier);
                        true
                    } else {
                        false
                    }
                });
                Ok(Node::Obj(EventMap(Arc::new(v))))
            }
        }
        d.deserialize_any(V)
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
    } else if let Some(m) = d.read_lock::<EventMap>() {
        Node::Obj(m.clone()).to_json()
    } else if let Some(a) = d.read_lock::<EventArray>() {
        Node::Arr(a.clone()).to_json()
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
fn node_to_native(n: &Node) -> Dynamic {
    match n {
        Node::Arr(a) => Dynamic::from_array(a.0.iter().map(node_to_native).collect::<Array>()),
        Node::Obj(o) => Dynamic::from_map(
            o.0.iter()
                .map(|(k, v)| (k.as_str().into(), node_to_native(v)))
                .collect::<Map>(),
        ),
        leaf => leaf.to_dynamic(),
    }
}

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
    for name in KNOWN_FIELDS.iter().chain(&crate::event::PANTHER_FIELDS) {
        engine.register_get(name, move |m: &mut EventMap| {
            m.get(name).map_or(Dynamic::UNIT, Node::to_dynamic)
        });
    }
    engine
        .register_type_with_name::<EventMap>("EventMap")
        .register_type_with_name::<EventArray>("EventArray")
        .register_indexer_get(|m: &mut EventMap, key: &str| {
            m.get(key).map_or(Dynamic::UNIT, Node::to_dynamic)
        })
        .register_indexer_get(|a: &mut EventArray, i: INT| {
            a.get(i).map_or(Dynamic::UNIT, Node::to_dynamic)
        })
        .register_iterator::<EventArray>()
        .register_fn("len", |m: &mut EventMap| m.len() as INT)
        .register_fn("len", |a: &mut EventArray| a.0.len() as INT)
        .register_fn("is_empty", |m: &mut EventMap| m.is_empty())
        .register_fn("is_empty", |a: &mut EventArray| a.0.is_empty())
        .register_fn("contains", |m: &mut EventMap, key: &str| {
            m.get(key).is_some()
        })
        .register_fn("contains", |a: &mut EventArray, v: Dynamic| {
            let want = dynamic_to_json(&v);
            a.0.iter().any(|n| n.to_json() == want)
        })
        .register_fn("keys", |m: &mut EventMap| {
            m.0.iter()
                .map(|(k, _)| Dynamic::from(ImmutableString::from(k.as_str())))
                .collect::<Array>()
        })
        .register_fn("to_map", |m: &mut EventMap| {
            node_to_native(&Node::Obj(m.clone()))
        })
        .register_fn("to_array", |a: &mut EventArray| {
            node_to_native(&Node::Arr(a.clone()))
        })
        .register_fn("to_json", |m: &mut EventMap| m.to_string())
        .register_fn("to_json", |a: &mut EventArray| a.to_string())
        .register_fn("to_string", |m: &mut EventMap| m.to_string())
        .register_fn("to_string", |a: &mut EventArray| a.to_string())
        .register_fn("to_debug", |m: &mut EventMap| m.to_string())
        .register_fn("to_debug", |a: &mut EventArray| a.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;
    use rhai::{CallFnOptions, Scope};

    fn run(script: &str, json: &str) -> Result<Dynamic, String> {
        let mut engine = Engine::new();
        register(&mut engine);
        let ast = engine.compile(script).unwrap();
        let event = Node::parse(json).unwrap().to_dynamic();
        engine
            .call_fn_with_options::<Dynamic>(
                CallFnOptions::new().eval_ast(false),
                &mut Scope::new(),
                &ast,
                "f",
                (event,),
            )
            .map_err(|e| e.to_string())
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
        assert!(!err.is_empty());
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
        let n = Node::parse(REC).unwrap();
        assert_eq!(
            n.to_json(),
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
            let m = EventMap::from_json(&json);
            assert_eq!(m.len(), n);
            assert!(
                matches!(m.get("k0"), Some(Node::Str(s)) if s == "last"),
                "{n} keys"
            );
            for i in 1..n {
                assert!(matches!(m.get(&format!("k{i}")), Some(Node::Int(v)) if *v == i as i64));
            }
            assert!(m.get("k").is_none() && m.get("k00").is_none() && m.get("").is_none());
        }
    }
}
