//! What rules can do with a record: the Rhai bindings that read it, and the
//! conversions between record values and Rhai's own.

use super::*;

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
