//! The Hex.Audit record: validation of one decoded JSON value against
//! Panther's Hex.Audit schema, normalisation (scalars in string fields become text),
//! the idempotency key, and Panther's standard `p_*` fields.
//!
//! This stage is pure: no I/O, so it is unit-tested directly and shared by `serve`
//! and `replay`.

mod check;
mod raw;

use check::check;
use raw::version_span;
use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use hexwatch_model::document::{Node, Obj, RecordObject};

/// A record that passed validation, ready for the journal.
#[derive(Debug, Clone)]
pub struct Record {
    /// Idempotency key: `ks:<keySuffix>`, else `id:<event.id>`, else `sha256:<hash of canonical JSON>`.
    pub key: String,
    /// `event.occurred_at`, the time alert windows are measured on.
    pub event_time: DateTime<Utc>,
    /// The normalised envelope with the `p_*` fields added.
    pub value: Value,
    /// How the input's text relates to `value` (which text the journal stores).
    pub text: Text,
}

/// What the journal can store for a record besides `value` serialised again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text {
    /// Normalising changed nothing and no `p_*` field replaced one the input
    /// had: the input's text plus the `p_*` fields *is* `value`.
    AsSent,
    /// As [`Text::AsSent`], except that `event.version` came as a number, which
    /// normalising made text. Hex sends every record this way, so quoting that
    /// one number in the input's text saves serialising nearly every record.
    VersionQuoted,
    /// Anything else: `value` is serialised.
    Changed,
}

impl Record {
    /// `event.action` (always a string after validation).
    pub fn action(&self) -> &str {
        self.value["event"]["action"].as_str().unwrap_or_default()
    }

    /// The record as JSON text. `raw` is the text it was parsed from: unless
    /// normalising [changed](Text::Changed) it, that text is kept as it came
    /// and the `p_*` fields are appended, which saves serialising the whole
    /// tree again (key order differs, the value is the same).
    pub fn json(&self, raw: Option<&[u8]>) -> String {
        if self.text != Text::Changed {
            if let Some(text) = raw.and_then(|r| self.spliced(r)) {
                return text;
            }
        }
        serde_json::to_string(&self.value).expect("a Value always serialises")
    }

    fn spliced(&self, raw: &[u8]) -> Option<String> {
        let root = self.value.as_object()?;
        let version = match self.text {
            Text::VersionQuoted => Some(self.value["event"].get("version")?.as_str()?),
            _ => None,
        };
        splice(
            std::str::from_utf8(raw).ok()?,
            version.map(|v| (v, None)),
            |name| root.get(name).map(PanthersField::Json),
        )
    }
}

/// A record's text as sent, with `event.version` replaced by the string
/// `version` when given (at the place in `raw` given with it, or found), and
/// the `p_*` fields that `field` has appended.
fn splice<'a>(
    raw: &str,
    version: Option<(&str, Option<std::ops::Range<usize>>)>,
    field: impl Fn(&str) -> Option<PanthersField<'a>>,
) -> Option<String> {
    let lead = raw.len() - raw.trim_ascii_start().len();
    let raw = raw.trim_ascii();
    let inner = raw.strip_prefix('{')?.strip_suffix('}')?;
    if inner.trim_ascii().is_empty() {
        return None;
    }
    let mut out = String::with_capacity(raw.len() + 512);
    out.push('{');
    match version {
        Some((version, at)) => {
            // `inner` starts one byte into `raw`.
            // A place given is taken when the key before it is spelled as
            // such (a key spelled with escapes is serialised instead).
            let given = at
                .and_then(|at| Some(at.start.checked_sub(lead)?..at.end.checked_sub(lead)?))
                .filter(|at| {
                    raw.as_bytes()
                        .get(..at.start)
                        .and_then(|before| before.trim_ascii_end().strip_suffix(b":"))
                        .is_some_and(|key| key.trim_ascii_end().ends_with(b"\"version\""))
                });
            let at = match given {
                Some(at) => at,
                None => version_span(raw.as_bytes())?,
            };
            // The span's ends are at ASCII bytes (a number's), so `get` only
            // fails on a span that is not one.
            out.push_str(raw.get(1..at.start)?);
            push_json_str(&mut out, version);
            out.push_str(raw.get(at.end..raw.len() - 1)?);
        }
        None => out.push_str(inner),
    }
    for name in PANTHER_FIELDS {
        if let Some(v) = field(name) {
            out.push_str(",\"");
            out.push_str(name);
            out.push_str("\":");
            v.push_json(&mut out);
        }
    }
    out.push('}');
    Some(out)
}

/// Appends `s` as a JSON string, escaped as serde_json escapes it. The values
/// appended to records (times, ids, addresses) seldom need any escaping, so
/// they are copied as they are when none is needed.
fn push_json_str(out: &mut String, s: &str) {
    if hexwatch_model::document::plain_run(s.as_bytes()) == s.len() {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(s).expect("a string serialises"));
    }
}

pub use hexwatch_model::document::PANTHER_FIELDS;

/// Why a record does not fit Hex.Audit: the field path and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for SchemaError {}

fn err(path: impl Into<String>, message: impl Into<String>) -> SchemaError {
    SchemaError {
        path: path.into(),
        message: message.into(),
    }
}

/// What stays the same for every record of one request.
pub struct ParseContext<'a> {
    pub source_label: &'a str,
    /// `p_parse_time`, formatted once per batch.
    pub parse_time: String,
}

impl<'a> ParseContext<'a> {
    pub fn new(source_label: &'a str) -> Self {
        ParseContext {
            source_label,
            parse_time: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        }
    }
}

// The schema's string and boolean fields, by the object that holds them.
const ROOT_TEXT: &[&str] = &["source", "keySuffix"];
const EVENT_TEXT: &[&str] = &["version", "id"];
const ACTOR_TEXT: &[&str] = &["id", "type"];
const ACTOR_META_TEXT: &[&str] = &["email", "workspace", "workspaceId", "actorOrgRole"];
const CONTEXT_TEXT: &[&str] = &["location", "user_agent"];
const META_TEXT: &[&str] = &[
    "result",
    "requestArgs",
    "failureReason",
    "hexTraceId",
    "source",
    "projectCreationMethod",
];
const META_BOOL: &[&str] = &["isRefreshingKey"];
const TARGET_TEXT: &[&str] = &["id", "type"];
const TARGET_META_TEXT: &[&str] = &["principal_type", "representation"];
const TARGET_META_BOOL: &[&str] = &["created"];

/// Validates one record and, when it fits, normalises it and adds the `p_*` fields.
/// On error the value is handed back untouched, for the quarantine.
pub fn validate(mut value: Value, ctx: &ParseContext<'_>) -> Result<Record, (SchemaError, Value)> {
    let event_time = match check(&value) {
        Ok(t) => t,
        Err(e) => return Err((e, value)),
    };
    let version_number = value["event"].get("version").is_some_and(Value::is_number);
    let changes = normalize(&mut value);
    let key = idempotency_key(&value);
    let replaced = add_panther_fields(&mut value, event_time, ctx);
    let text = match changes {
        _ if replaced => Text::Changed,
        0 => Text::AsSent,
        1 if version_number => Text::VersionQuoted,
        _ => Text::Changed,
    };
    Ok(Record {
        key,
        event_time,
        value,
        text,
    })
}

/// A record accepted straight from its text by [`accept_as_sent`].
#[derive(Debug)]
pub struct Accepted {
    pub key: String,
    pub action: String,
    /// `p_event_time`.
    pub event_time: String,
    /// The text the journal stores: the input as sent, `event.version`
    /// quoted, the `p_*` fields appended.
    pub json: String,
    /// `json` as rules read it.
    pub tree: RecordObject,
}

/// The short way for records in the shape Hex sends: the text is parsed once,
/// into the rules' record tree, checked there, and the tree goes on to the
/// evaluator, instead of building a `serde_json::Value` to check and then
/// parsing the stored text again to evaluate it.
///
/// It takes only records that [`validate`] would accept and keep as sent
/// ([`Text::AsSent`] or [`Text::VersionQuoted`], with an integer version) and
/// that carry a `keySuffix` or an `event.id`. For anything else — a problem to
/// explain, a field to normalise, a `p_*` field to replace, a key to hash — it
/// says `None`, and the caller takes the long way: what is stored, and every
/// error message, is the same either way.
pub fn accept_as_sent(raw: &[u8], ctx: &ParseContext<'_>) -> Option<Accepted> {
    let raw = std::str::from_utf8(raw).ok()?;
    let (mut tree, sole_number) = RecordObject::parse_strict_noting_number(raw).ok()?;
    let root = tree.obj();
    if !root_fits(root) {
        return None;
    }
    let Some(Node::Obj(event)) = root.get("event") else {
        return None;
    };
    let Some(Node::Obj(actor)) = event.get("actor") else {
        return None;
    };
    let action = match event.get("action") {
        Some(Node::Str(a)) if !a.is_empty() => a,
        _ => return None,
    };
    let Some(Node::Str(occurred)) = event.get("occurred_at") else {
        return None;
    };
    let event_time = DateTime::parse_from_rfc3339(occurred)
        .ok()?
        .with_timezone(&Utc);
    // Hex sends `event.version` as a number: it is quoted in place.
    let version = match event.get("version") {
        Some(Node::Int(v)) => Some(v.to_string()),
        None | Some(Node::Null | Node::Str(_)) => None,
        Some(_) => return None,
    };
    if !event_fits(event, actor) {
        return None;
    }
    let key = match (root.get("keySuffix"), event.get("id")) {
        (Some(Node::Str(k)), _) if !k.is_empty() => ["ks:", k].concat(),
        (_, Some(Node::Str(id))) if !id.is_empty() => ["id:", id].concat(),
        _ => return None,
    };
    let listed = |path: &[&str]| event.str_at(path).filter(|s| !s.is_empty());
    let lists = [
        ("p_any_ip_addresses", listed(&["context", "location"])),
        ("p_any_emails", listed(&["actor", "metadata", "email"])),
        ("p_any_trace_ids", listed(&["metadata", "hexTraceId"])),
        ("p_any_actor_ids", listed(&["actor", "id"])),
    ];
    let p_event_time = event_time.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    let row_id = row_id();
    let fields = [
        ("p_log_type", "Hex.Audit"),
        ("p_event_time", p_event_time.as_str()),
        ("p_parse_time", ctx.parse_time.as_str()),
        ("p_row_id", row_id.as_str()),
        ("p_source_label", ctx.source_label),
    ];
    // A record whose only number is the version says where it is.
    let version_at = version.as_deref().map(|v| (v, sole_number));
    let json = splice(raw, version_at, |name| {
        match fields.iter().find(|(n, _)| *n == name) {
            Some((_, v)) => Some(PanthersField::Text(v)),
            None => lists
                .iter()
                .find(|(n, _)| *n == name)
                .and_then(|(_, v)| *v)
                .map(|v| PanthersField::List([v])),
        }
    })?;
    let action = action.to_string();
    let lists = lists.map(|(n, v)| (n, v.map(str::to_string)));
    add_to_tree(&mut tree, version.as_deref(), &fields, &lists)?;
    Some(Accepted {
        key,
        action,
        event_time: p_event_time,
        json,
        tree,
    })
}

/// The same changes in the parsed record as in its text: the version quoted,
/// Panther's fields appended.
fn add_to_tree(
    tree: &mut RecordObject,
    version: Option<&str>,
    fields: &[(&str, &str)],
    lists: &[(&str, Option<String>)],
) -> Option<()> {
    let mut edit = tree.edit()?;
    if let Some(v) = version {
        edit.set_str(&["event", "version"], v);
    }
    for (name, value) in fields {
        edit.push_str(name, value);
    }
    for (name, value) in lists {
        if let Some(v) = value {
            edit.push_str_list(name, v);
        }
    }
    Some(())
}

/// The root of a record kept as sent: no Panther field of its own, its text
/// fields text, its `timestamp` absent, null or RFC 3339.
fn root_fits(root: Obj<'_>) -> bool {
    let panthers = |(k, _): &(&str, Node<'_>)| k.starts_with("p_") && PANTHER_FIELDS.contains(k);
    if root.entries().any(|e| panthers(&e)) || !all_text(root, ROOT_TEXT) {
        return false;
    }
    match root.get("timestamp") {
        None | Some(Node::Null) => true,
        Some(Node::Str(ts)) => DateTime::parse_from_rfc3339(ts).is_ok(),
        Some(_) => false,
    }
}

/// The schema's text and boolean fields of `event`, its actor and targets.
fn event_fits(event: Obj<'_>, actor: Obj<'_>) -> bool {
    all_text(event, &["id"])
        && all_text(actor, ACTOR_TEXT)
        && text_object(actor.get("metadata"), ACTOR_META_TEXT, &[])
        && text_object(event.get("context"), CONTEXT_TEXT, &[])
        && text_object(event.get("metadata"), META_TEXT, META_BOOL)
        && match event.get("targets") {
            None | Some(Node::Null) => true,
            Some(Node::Arr(targets)) => targets.iter().all(|t| match t {
                Node::Obj(t) => {
                    all_text(t, TARGET_TEXT)
                        && text_object(t.get("metadata"), TARGET_META_TEXT, TARGET_META_BOOL)
                }
                _ => false,
            }),
            Some(_) => false,
        }
}

/// A fresh `p_row_id`: 128 random bits as 32 hex digits (made for every record).
fn row_id() -> String {
    let mut digits = [0u8; 32];
    hex::encode_to_slice(rand::random::<u128>().to_be_bytes(), &mut digits)
        .expect("two digits a byte");
    std::str::from_utf8(&digits).expect("hex digits").to_owned()
}

/// A `p_*` field's value as [`accept_as_sent`] appends it.
enum PanthersField<'a> {
    Text(&'a str),
    List([&'a str; 1]),
    /// A value of a normalised record (the long way).
    Json(&'a Value),
}

impl PanthersField<'_> {
    fn push_json(&self, out: &mut String) {
        match self {
            PanthersField::Text(s) => push_json_str(out, s),
            PanthersField::List([s]) => {
                out.push('[');
                push_json_str(out, s);
                out.push(']');
            }
            PanthersField::Json(v) => {
                out.push_str(&serde_json::to_string(v).expect("a Value always serialises"))
            }
        }
    }
}

/// Every one of `names` in `obj` is missing, null or text (nothing to normalise).
/// One pass over the object: only a value that is not text is looked up.
fn all_text(obj: Obj<'_>, names: &[&str]) -> bool {
    obj.entries()
        .all(|(k, v)| matches!(v, Node::Null | Node::Str(_)) || !names.contains(&k))
}

/// A missing or null field, or an object whose `text` fields are text and
/// whose `bools` fields are booleans (nothing to normalise).
fn text_object(v: Option<Node<'_>>, text: &[&str], bools: &[&str]) -> bool {
    match v {
        None | Some(Node::Null) => true,
        Some(Node::Obj(o)) => o.entries().all(|(k, v)| match v {
            Node::Null => true,
            Node::Str(_) => !bools.contains(&k),
            Node::Bool(_) => !text.contains(&k),
            _ => !text.contains(&k) && !bools.contains(&k),
        }),
        Some(_) => false,
    }
}

/// The writing pass, after `check`: numbers and booleans in string fields become
/// text, "true"/"false" in boolean fields become booleans. Says how many
/// fields changed.
fn normalize(value: &mut Value) -> usize {
    fn fix(obj: Option<&mut Value>, text: &[&str], bools: &[&str]) -> usize {
        let Some(Value::Object(obj)) = obj else {
            return 0;
        };
        let mut changed = 0;
        for name in text {
            if let Some(v) = obj.get_mut(*name) {
                match v {
                    Value::Number(n) => *v = Value::String(n.to_string()),
                    Value::Bool(b) => *v = Value::String(b.to_string()),
                    _ => continue,
                }
                changed += 1;
            }
        }
        for name in bools {
            if let Some(v) = obj.get_mut(*name) {
                if let Value::String(s) = v {
                    *v = Value::Bool(s == "true");
                    changed += 1;
                }
            }
        }
        changed
    }
    let mut changed = fix(Some(value), ROOT_TEXT, &[]);
    let Some(event) = value.get_mut("event") else {
        return changed;
    };
    changed += fix(Some(event), EVENT_TEXT, &[]);
    changed += fix(event.get_mut("context"), CONTEXT_TEXT, &[]);
    changed += fix(event.get_mut("metadata"), META_TEXT, META_BOOL);
    if let Some(actor) = event.get_mut("actor") {
        changed += fix(Some(actor), ACTOR_TEXT, &[]);
        changed += fix(actor.get_mut("metadata"), ACTOR_META_TEXT, &[]);
    }
    if let Some(Value::Array(targets)) = event.get_mut("targets") {
        for t in targets {
            changed += fix(Some(t), TARGET_TEXT, &[]);
            changed += fix(t.get_mut("metadata"), TARGET_META_TEXT, TARGET_META_BOOL);
        }
    }
    changed
}

/// `keySuffix`, else `event.id`, else a SHA-256 of the canonical JSON (serde_json's
/// map is ordered, so serialising the normalised value is canonical).
fn idempotency_key(value: &Value) -> String {
    if let Some(k) = value.get("keySuffix").and_then(Value::as_str) {
        if !k.is_empty() {
            return format!("ks:{k}");
        }
    }
    if let Some(id) = value["event"].get("id").and_then(Value::as_str) {
        if !id.is_empty() {
            return format!("id:{id}");
        }
    }
    let canonical = serde_json::to_vec(value).expect("a Value always serialises");
    format!("sha256:{}", hex::encode(Sha256::digest(&canonical)))
}

/// Adds the `p_*` fields; says whether one replaced a field the input had.
fn add_panther_fields(
    value: &mut Value,
    event_time: DateTime<Utc>,
    ctx: &ParseContext<'_>,
) -> bool {
    let event = &value["event"];
    let at = |path: &[&str]| path.iter().try_fold(event, |v, k| v.get(k));
    let ip = string_list(at(&["context", "location"]));
    let email = string_list(at(&["actor", "metadata", "email"]));
    let trace = string_list(at(&["metadata", "hexTraceId"]));
    let actor = string_list(at(&["actor", "id"]));

    let root = value.as_object_mut().expect("validated as an object");
    let replaced = PANTHER_FIELDS.iter().any(|f| root.contains_key(*f));
    root.insert("p_log_type".into(), Value::from("Hex.Audit"));
    root.insert(
        "p_event_time".into(),
        Value::from(event_time.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
    );
    root.insert("p_parse_time".into(), Value::from(ctx.parse_time.as_str()));
    root.insert("p_row_id".into(), Value::from(row_id()));
    root.insert("p_source_label".into(), Value::from(ctx.source_label));
    for (name, list) in [
        ("p_any_ip_addresses", ip),
        ("p_any_emails", email),
        ("p_any_trace_ids", trace),
        ("p_any_actor_ids", actor),
    ] {
        if let Some(list) = list {
            root.insert(name.into(), list);
        }
    }
    replaced
}

fn string_list(v: Option<&Value>) -> Option<Value> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => {
            Some(Value::Array(vec![Value::from(s.as_str())]))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::raw::value_span;
    use super::*;
    use serde_json::json;

    fn ctx() -> ParseContext<'static> {
        ParseContext::new("hex")
    }

    fn sample() -> Value {
        json!({
            "source": "Hex",
            "keySuffix": "01HQZX3V5W1B2C3D4E5F6G7H8J",
            "timestamp": "2024-03-05T18:05:25.001Z",
            "event": {
                "actor": {"id": "u-1", "type": "USER",
                          "metadata": {"email": "ana@example.com", "workspace": "Acme", "workspaceId": "w-1", "actorOrgRole": "ADMIN"}},
                "action": "SHARE_PROJECT_WITH_PUBLIC",
                "context": {"location": "203.0.113.7", "user_agent": "Mozilla/5.0"},
                "targets": [{"id": "p-1", "type": "project", "metadata": {"created": false, "representation": "{\"name\":\"Q3\"}"}}],
                "version": "1",
                "metadata": {"result": "SUCCESS", "hexTraceId": "t-9", "isRefreshingKey": false},
                "occurred_at": "2024-03-05T19:05:23.123+01:00"
            }
        })
    }

    fn failing(mutate: impl FnOnce(&mut Value)) -> String {
        let mut v = sample();
        mutate(&mut v);
        validate(v, &ctx()).unwrap_err().0.to_string()
    }

    #[test]
    fn valid_record_gets_panther_fields() {
        let r = validate(sample(), &ctx()).unwrap();
        assert_eq!(r.key, "ks:01HQZX3V5W1B2C3D4E5F6G7H8J");
        assert_eq!(r.action(), "SHARE_PROJECT_WITH_PUBLIC");
        let v = &r.value;
        assert_eq!(v["p_log_type"], "Hex.Audit");
        assert_eq!(v["p_event_time"], "2024-03-05T18:05:23.123Z");
        assert_eq!(v["p_source_label"], "hex");
        assert_eq!(v["p_any_ip_addresses"], json!(["203.0.113.7"]));
        assert_eq!(v["p_any_emails"], json!(["ana@example.com"]));
        assert_eq!(v["p_any_trace_ids"], json!(["t-9"]));
        assert_eq!(v["p_any_actor_ids"], json!(["u-1"]));
        assert_eq!(v["p_row_id"].as_str().unwrap().len(), 32);
        assert!(v["p_parse_time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn missing_action() {
        let e = failing(|v| {
            v["event"].as_object_mut().unwrap().remove("action");
        });
        assert_eq!(e, "event.action: required field is missing");
    }

    #[test]
    fn non_string_action() {
        let e = failing(|v| v["event"]["action"] = json!(42));
        assert_eq!(
            e,
            "event.action: expected a string such as \"RUN_PROJECT\", got a number"
        );
        let e = failing(|v| v["event"]["action"] = json!({"a": 1}));
        assert!(e.ends_with("got an object"), "{e}");
    }

    #[test]
    fn bad_timestamp() {
        let e = failing(|v| v["event"]["occurred_at"] = json!("yesterday"));
        assert_eq!(
            e,
            "event.occurred_at: expected an RFC 3339 timestamp, got \"yesterday\""
        );
        let e = failing(|v| v["event"]["occurred_at"] = json!(1709661923));
        assert_eq!(
            e,
            "event.occurred_at: expected an RFC 3339 timestamp string, got a number"
        );
        let e = failing(|v| v["timestamp"] = json!("2024-13-01T00:00:00Z"));
        assert!(e.starts_with("timestamp: expected an RFC 3339"), "{e}");
    }

    #[test]
    fn missing_required_objects() {
        assert_eq!(
            failing(|v| {
                v.as_object_mut().unwrap().remove("event");
            }),
            "event: required field is missing"
        );
        assert_eq!(
            failing(|v| v["event"]["actor"] = json!("u-1")),
            "event.actor: expected an object, got a string"
        );
        assert_eq!(
            failing(|v| {
                v["event"].as_object_mut().unwrap().remove("occurred_at");
            }),
            "event.occurred_at: required field is missing"
        );
        let e = validate(json!([1, 2]), &ctx()).unwrap_err().0.to_string();
        assert_eq!(e, "record: expected a JSON object, got an array");
    }

    #[test]
    fn numeric_version_and_scalars_become_text() {
        let mut v = sample();
        v["event"]["version"] = json!(1);
        v["event"]["actor"]["id"] = json!(1234);
        v["event"]["metadata"]["isRefreshingKey"] = json!("true");
        let r = validate(v, &ctx()).unwrap();
        assert_eq!(r.value["event"]["version"], "1");
        assert_eq!(r.value["event"]["actor"]["id"], "1234");
        assert_eq!(r.value["p_any_actor_ids"], json!(["1234"]));
        assert_eq!(r.value["event"]["metadata"]["isRefreshingKey"], true);
    }

    #[test]
    fn rejected_value_is_handed_back_untouched() {
        let mut v = sample();
        v["event"]["version"] = json!(1);
        v["event"]["occurred_at"] = json!("soon");
        let (_, back) = validate(v.clone(), &ctx()).unwrap_err();
        assert_eq!(back, v);
    }

    #[test]
    fn wrong_nested_types_name_the_path() {
        assert_eq!(
            failing(|v| v["event"]["targets"][0]["id"] = json!(["x"])),
            "event.targets[0].id: expected a string, got an array"
        );
        assert_eq!(
            failing(|v| v["event"]["targets"][0]["metadata"]["created"] = json!("yes")),
            "event.targets[0].metadata.created: expected a boolean, got the string \"yes\""
        );
        assert_eq!(
            failing(|v| v["event"]["targets"] = json!({"id": 1})),
            "event.targets: expected an array, got an object"
        );
        assert_eq!(
            failing(|v| v["event"]["context"] = json!("1.2.3.4")),
            "event.context: expected an object, got a string"
        );
    }

    #[test]
    fn unknown_fields_are_kept() {
        let mut v = sample();
        v["event"]["newField"] = json!({"deep": [1, 2]});
        v["extra"] = json!(true);
        let r = validate(v, &ctx()).unwrap();
        assert_eq!(r.value["event"]["newField"]["deep"][1], 2);
        assert_eq!(r.value["extra"], true);
    }

    #[test]
    fn huge_strings_are_previewed_not_echoed() {
        let huge = "x".repeat(1_000_000);
        let e = failing(|v| v["event"]["occurred_at"] = json!(huge));
        assert!(e.len() < 200, "{}", e.len());
        assert!(e.contains("(1000000 bytes)"));
        // A huge value in a free-form field is kept as is.
        let mut v = sample();
        v["event"]["metadata"]["requestArgs"] = json!("y".repeat(2_000_000));
        let r = validate(v, &ctx()).unwrap();
        assert_eq!(
            r.value["event"]["metadata"]["requestArgs"]
                .as_str()
                .unwrap()
                .len(),
            2_000_000
        );
    }

    #[test]
    fn deep_nesting_in_unknown_fields_is_kept() {
        let mut deep = json!(1);
        for _ in 0..100 {
            deep = json!({ "a": deep });
        }
        let mut v = sample();
        v["event"]["extra"] = deep;
        assert!(validate(v, &ctx()).is_ok());
    }

    #[test]
    fn idempotency_key_fallbacks() {
        let mut v = sample();
        v.as_object_mut().unwrap().remove("keySuffix");
        v["event"]["id"] = json!(77);
        assert_eq!(validate(v.clone(), &ctx()).unwrap().key, "id:77");
        v["event"].as_object_mut().unwrap().remove("id");
        let a = validate(v.clone(), &ctx()).unwrap().key;
        let b = validate(v, &ctx()).unwrap().key;
        assert!(a.starts_with("sha256:") && a.len() == 7 + 64);
        assert_eq!(a, b, "the hash ignores the p_ fields");
    }

    /// The text stored for a record is the record: kept as it came when nothing
    /// was normalised (plus the `p_*` fields), serialised again otherwise.
    #[test]
    fn stored_text_is_the_validated_value() {
        let as_sent = |v: &Value| serde_json::to_string_pretty(v).unwrap();
        let raw = as_sent(&sample());
        let r = validate(serde_json::from_str(&raw).unwrap(), &ctx()).unwrap();
        assert_eq!(r.text, Text::AsSent);
        let text = r.json(Some(raw.as_bytes()));
        assert!(text.starts_with(raw.trim_end().strip_suffix('}').unwrap()));
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), r.value);

        // A number in a string field became text: the stored text says so.
        let mut v = sample();
        v["event"]["version"] = json!(3);
        let raw = as_sent(&v);
        let r = validate(v, &ctx()).unwrap();
        assert_eq!(r.text, Text::VersionQuoted);
        let text = r.json(Some(raw.as_bytes()));
        assert!(
            text.contains("\"version\": \"3\""),
            "patched as sent: {text}"
        );
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), r.value);

        // An input carrying its own p_ field must not store it twice.
        let mut v = sample();
        v["p_row_id"] = json!("from the sender");
        let raw = as_sent(&v);
        let r = validate(v, &ctx()).unwrap();
        assert_eq!(r.text, Text::Changed);
        let text = r.json(Some(raw.as_bytes()));
        assert_eq!(text.matches("p_row_id").count(), 1);
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), r.value);
    }

    /// Hex sends `event.version` as a number: the stored text is the text as
    /// sent with that one number quoted, found by a scan that must not be
    /// fooled by other `version`s, strings, escapes or spacing.
    #[test]
    fn numeric_version_is_quoted_in_the_text_as_sent() {
        let cases = [
            // Hex's shape: version after the targets, representation strings with braces.
            r#"{"source":"Hex","keySuffix":"K1","event":{"actor":{"id":"u"},"action":"RUN_PROJECT","targets":[{"id":"p","type":"project","metadata":{"representation":"{\"version\":2,\"x\":\"}]\\\"\"}"}}],"version":1,"occurred_at":"2024-01-01T00:00:00Z"}}"#,
            // A root `version` and a nested one come first; spacing and new lines.
            "{ \"version\" : 7 ,\n \"event\" : {\n \"metadata\" : {\"version\": 9, \"a\": [1, {\"b\": \"]\"}]},\n \"version\" :\t12.50 , \"actor\":{\"id\":\"u\"},\"action\":\"X\",\"occurred_at\":\"2024-01-01T00:00:00Z\"}\n}\n",
            // Version first, a negative exponent.
            r#"{"event":{"version":-1e-3,"actor":{"id":"u"},"action":"X","occurred_at":"2024-01-01T00:00:00Z"}}"#,
            // The key spelled with an escape: not found, serialised instead.
            r#"{"event":{"actor":{"id":"u"},"action":"X","\u0076ersion":4,"occurred_at":"2024-01-01T00:00:00Z"}}"#,
            // ... also when another object has a `version` written plainly.
            r#"{"event":{"targets":[{"id":"t","type":"x","metadata":{"version":4}}],"actor":{"id":"u"},"action":"X","\u0076ersion":4,"occurred_at":"2024-01-01T00:00:00Z"}}"#,
        ];
        for raw in cases {
            let r = validate(crate::decode::parse_strict(raw.as_bytes()).unwrap(), &ctx()).unwrap();
            assert_eq!(r.text, Text::VersionQuoted, "{raw}");
            let text = r.json(Some(raw.as_bytes()));
            assert_eq!(
                serde_json::from_str::<Value>(&text).unwrap(),
                r.value,
                "{raw} -> {text}"
            );
        }
        let as_sent = value_span(cases[0].as_bytes(), &["event", "version"]).unwrap();
        assert_eq!(&cases[0][as_sent], "1");
        let spaced = value_span(cases[1].as_bytes(), &["event", "version"]).unwrap();
        assert_eq!(&cases[1][spaced], "12.50");
        assert_eq!(value_span(cases[3].as_bytes(), &["event", "version"]), None);
        // The one `version` key of Hex's shape is found without walking the text.
        assert_eq!(&cases[0][version_span(cases[0].as_bytes()).unwrap()], "1");
        assert_eq!(
            &cases[1][version_span(cases[1].as_bytes()).unwrap()],
            "12.50"
        );

        // Another field normalised as well: serialised.
        let raw = r#"{"keySuffix":5,"event":{"version":1,"actor":{"id":"u"},"action":"X","occurred_at":"2024-01-01T00:00:00Z"}}"#;
        let r = validate(crate::decode::parse_strict(raw.as_bytes()).unwrap(), &ctx()).unwrap();
        assert_eq!(r.text, Text::Changed);
        let text = r.json(Some(raw.as_bytes()));
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), r.value);
    }
}
