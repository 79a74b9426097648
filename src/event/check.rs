//! The Hex.Audit schema check of a parsed record: which fields must be there,
//! with which types, and what the error says when one is not.

use super::*;

/// The read-only pass: every required field present, every schema field of its type.
pub(super) fn check(value: &Value) -> Result<DateTime<Utc>, SchemaError> {
    let root = match value {
        Value::Object(m) => m,
        other => {
            return Err(err(
                "record",
                format!("expected a JSON object, got {}", kind(other)),
            ))
        }
    };
    check_fields(root, "", ROOT_TEXT, &[])?;
    if let Some(ts) = root.get("timestamp") {
        if !ts.is_null() {
            timestamp(ts, "timestamp")?;
        }
    }
    let event = match root.get("event") {
        Some(Value::Object(e)) => e,
        Some(other) => {
            return Err(err(
                "event",
                format!("expected an object, got {}", kind(other)),
            ))
        }
        None => return Err(err("event", "required field is missing")),
    };
    check_actor(event)?;
    check_action(event)?;
    let event_time = match event.get("occurred_at") {
        Some(v) => timestamp(v, "event.occurred_at")?,
        None => return Err(err("event.occurred_at", "required field is missing")),
    };
    check_fields(event, "event.", EVENT_TEXT, &[])?;
    if let Some(c) = object_field(event, "context", "event.context")? {
        check_fields(c, "event.context.", CONTEXT_TEXT, &[])?;
    }
    if let Some(meta) = object_field(event, "metadata", "event.metadata")? {
        check_fields(meta, "event.metadata.", META_TEXT, META_BOOL)?;
    }
    check_targets(event)?;
    Ok(event_time)
}

type Object = serde_json::Map<String, Value>;

/// `event.actor`: required, with its metadata's fields text.
fn check_actor(event: &Object) -> Result<(), SchemaError> {
    match event.get("actor") {
        Some(Value::Object(actor)) => {
            check_fields(actor, "event.actor.", ACTOR_TEXT, &[])?;
            if let Some(meta) = object_field(actor, "metadata", "event.actor.metadata")? {
                check_fields(meta, "event.actor.metadata.", ACTOR_META_TEXT, &[])?;
            }
            Ok(())
        }
        Some(other) => Err(err(
            "event.actor",
            format!("expected an object, got {}", kind(other)),
        )),
        None => Err(err("event.actor", "required field is missing")),
    }
}

/// `event.action`: a non-empty string.
fn check_action(event: &Object) -> Result<(), SchemaError> {
    match event.get("action") {
        Some(Value::String(a)) if !a.is_empty() => Ok(()),
        Some(Value::String(_)) => Err(err("event.action", "must not be empty")),
        Some(other) => Err(err(
            "event.action",
            format!(
                "expected a string such as \"RUN_PROJECT\", got {}",
                kind(other)
            ),
        )),
        None => Err(err("event.action", "required field is missing")),
    }
}

/// `event.targets`: absent, null, or an array of objects of the target schema.
fn check_targets(event: &Object) -> Result<(), SchemaError> {
    match event.get("targets") {
        None | Some(Value::Null) => {}
        Some(Value::Array(targets)) => {
            for (i, t) in targets.iter().enumerate() {
                let Value::Object(t) = t else {
                    return Err(err(
                        format!("event.targets[{i}]"),
                        format!("expected an object, got {}", kind(t)),
                    ));
                };
                // The target's path is spelled out only for an error.
                let checked = check_fields(t, "", TARGET_TEXT, &[]).and_then(|()| {
                    match object_field(t, "metadata", "metadata")? {
                        Some(meta) => {
                            check_fields(meta, "metadata.", TARGET_META_TEXT, TARGET_META_BOOL)
                        }
                        None => Ok(()),
                    }
                });
                checked.map_err(|e| err(format!("event.targets[{i}].{}", e.path), e.message))?;
            }
        }
        Some(other) => {
            return Err(err(
                "event.targets",
                format!("expected an array, got {}", kind(other)),
            ))
        }
    }
    Ok(())
}

/// Parses an RFC 3339 timestamp field.
pub(super) fn timestamp(v: &Value, path: &str) -> Result<DateTime<Utc>, SchemaError> {
    match v {
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                err(
                    path,
                    format!("expected an RFC 3339 timestamp, got {}", preview(s)),
                )
            }),
        other => Err(err(
            path,
            format!("expected an RFC 3339 timestamp string, got {}", kind(other)),
        )),
    }
}

/// Checks the types of an object's schema fields: string fields may hold any
/// scalar (it becomes text), boolean fields a boolean or "true"/"false".
pub(super) fn check_fields(
    obj: &Map<String, Value>,
    prefix: &str,
    text: &[&str],
    bools: &[&str],
) -> Result<(), SchemaError> {
    for name in text {
        match obj.get(*name) {
            None | Some(Value::String(_) | Value::Null | Value::Number(_) | Value::Bool(_)) => {}
            Some(other) => {
                return Err(err(
                    format!("{prefix}{name}"),
                    format!("expected a string, got {}", kind(other)),
                ))
            }
        }
    }
    for name in bools {
        match obj.get(*name) {
            None | Some(Value::Bool(_) | Value::Null) => {}
            Some(Value::String(s)) if s == "true" || s == "false" => {}
            Some(other) => {
                return Err(err(
                    format!("{prefix}{name}"),
                    format!("expected a boolean, got {}", describe(other)),
                ))
            }
        }
    }
    Ok(())
}

/// An optional object field: `None` when missing or null, an error for other types.
pub(super) fn object_field<'m>(
    obj: &'m Map<String, Value>,
    name: &str,
    path: &str,
) -> Result<Option<&'m Map<String, Value>>, SchemaError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(err(
            path,
            format!("expected an object, got {}", kind(other)),
        )),
    }
}

pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("the string {}", preview(s)),
        other => kind(other).to_string(),
    }
}

/// A value quoted for an error message, cut so a huge string cannot bloat the response.
pub(super) fn preview(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        format!("{s:?}")
    } else {
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{:?}… ({} bytes)", &s[..end], s.len())
    }
}
