//! Names for the things a record mentions.
//!
//! Hex's targets carry their details in `metadata.representation`, a JSON
//! *string*. A `project` representation has ids, dates and roles but no name: the
//! project's title is in the `project_version` target (`title`, with `hexId` the
//! project's id). Many records name a thing only by id (a project shared to the
//! web, a user made admin), so names seen anywhere in the stream — every actor's
//! e-mail, every project's title, every user target's e-mail — are learned and
//! kept with rule state under `name:<id>`. Learning goes through the same state
//! store as the rules' own state, so `replay` and `serve` see the same names.
//!
//! Target types are matched loosely: events carry `data_connection`, Hex's action
//! table writes "data connection"; both are the same kind here.

use crate::facts::Facts;
use crate::recent::{fingerprint, Recent};
use crate::state::{StateStore, StoreError};
use hexwatch_model::document::{self as value, Node, Obj, RecordObject};

/// State key prefix of learned names.
pub const KEY_PREFIX: &str = "name:";
/// Learned names are kept this long after they were last seen (event time).
pub const TTL_SECONDS: i64 = 400 * 86_400;
/// A name already known is written again (to renew its TTL) after this long.
const REFRESH_MS: i64 = 7 * 86_400 * 1000;

/// Whether a target type is the wanted kind: case-insensitive, `_` = space.
pub fn same_kind(actual: &str, wanted: &str) -> bool {
    actual.len() == wanted.len()
        && actual.bytes().zip(wanted.bytes()).all(|(a, w)| {
            let norm = |c: u8| {
                if c == b' ' {
                    b'_'
                } else {
                    c.to_ascii_lowercase()
                }
            };
            norm(a) == norm(w)
        })
}

/// The record's targets.
pub fn targets(ev: &RecordObject) -> impl Iterator<Item = Obj<'_>> {
    let list = match ev.at(&["event", "targets"]) {
        Some(Node::Arr(a)) => Some(a.iter()),
        _ => None,
    };
    list.into_iter().flatten().filter_map(|t| match t {
        Node::Obj(m) => Some(m),
        _ => None,
    })
}

/// The first target of a kind.
pub fn target<'a>(ev: &'a RecordObject, kind: &str) -> Option<Obj<'a>> {
    targets(ev).find(|t| t.str_at(&["type"]).is_some_and(|k| same_kind(k, kind)))
}

/// A target's representation as rules read it: a map, else `()`. Hex sends
/// a JSON string, decoded straight into Rhai values; an object is copied.
pub fn representation(t: Obj<'_>) -> rhai::Dynamic {
    match t.at(&["metadata", "representation"]) {
        Some(Node::Str(s)) => match crate::engine::json_decode(s) {
            d if d.is_map() => d,
            _ => rhai::Dynamic::UNIT,
        },
        Some(n @ Node::Obj(_)) => value::node_to_native(n),
        _ => rhai::Dynamic::UNIT,
    }
}

/// Reads the name-bearing fields of a target's representation (Hex sends a JSON
/// string; an object is taken as it is).
fn with_names<T>(t: Obj<'_>, f: impl FnOnce(&ReprNames) -> Option<T>) -> Option<T> {
    match t.at(&["metadata", "representation"])? {
        Node::Str(s) => f(&serde_json::from_str(s).ok()?),
        n @ Node::Obj(_) => f(&serde_json::from_str(&n.to_json().to_string()).ok()?),
        _ => None,
    }
}

/// The title the record gives a project: the `project_version` target that
/// belongs to it (its `hexId`), else any `project_version` without one.
fn project_title(ev: &RecordObject, project_id: Option<&str>) -> Option<String> {
    let mut any = None;
    for t in targets(ev) {
        if !t
            .str_at(&["type"])
            .is_some_and(|k| same_kind(k, "project_version"))
        {
            continue;
        }
        let found = with_names(t, |r| {
            Some((
                r.title.as_deref().map(str::to_string),
                r.hex_id.as_deref().map(str::to_string),
            ))
        });
        match (project_id, found) {
            (Some(p), Some((title, Some(h)))) if p == h => return title,
            (_, Some((title, None))) => any = any.or(title),
            _ => {}
        }
    }
    any
}

/// What the record itself calls a target, without learned names: a name in its
/// own representation (older shapes), else, for a project, its version's title.
pub fn own_name(ev: &RecordObject, t: Obj<'_>) -> Option<String> {
    if let Some(n) = with_names(t, |r| r.best().map(str::to_string)) {
        return Some(n);
    }
    if t.str_at(&["type"]).is_some_and(|k| same_kind(k, "project")) {
        return project_title(ev, t.str_at(&["id"]));
    }
    None
}

/// A readable stand-in when nothing names a target: its type and short id.
pub fn fallback(t: Obj<'_>) -> String {
    let kind = t.str_at(&["type"]).unwrap_or("target").replace('_', " ");
    match t.str_at(&["id"]) {
        Some(id) => format!("{kind} {}", id.chars().take(8).collect::<String>()),
        None => kind,
    }
}

/// The learned name of an id, if any.
pub fn learned(
    state: &dyn StateStore,
    id: &str,
    now_ms: i64,
) -> Result<Option<String>, StoreError> {
    Ok(state
        .kv_get(&format!("{KEY_PREFIX}{id}"), now_ms)?
        .and_then(|json| serde_json::from_str::<Learned>(&json).ok())
        .map(|l| l.n))
}

/// A target's best name: its own, a learned one, or type and short id.
pub fn target_name(
    ev: &RecordObject,
    t: Obj<'_>,
    state: &dyn StateStore,
    now_ms: i64,
) -> Result<String, StoreError> {
    if let Some(n) = own_name(ev, t) {
        return Ok(n);
    }
    if let Some(id) = t.str_at(&["id"]) {
        if let Some(n) = learned(state, id, now_ms)? {
            return Ok(n);
        }
    }
    Ok(fallback(t))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Learned {
    /// The name.
    n: String,
    /// When it was last written (event time, ms).
    t: i64,
}

/// The name-bearing fields of a representation, read without building the rest.
#[derive(serde::Deserialize)]
struct ReprNames<'a> {
    #[serde(borrow)]
    title: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    email: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, rename = "displayName")]
    display_name: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    label: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, rename = "hexId")]
    hex_id: Option<std::borrow::Cow<'a, str>>,
}

impl ReprNames<'_> {
    fn best(&self) -> Option<&str> {
        [
            &self.title,
            &self.name,
            &self.email,
            &self.display_name,
            &self.label,
        ]
        .into_iter()
        .flatten()
        .map(|c| c.as_ref())
        .find(|s| !s.trim().is_empty())
    }
}

/// The (id, name) pair a target's representation teaches: a project's title
/// (from `project_version`, under the project's id), else any name it has.
fn taught_by(kind: Option<&str>, id: &str, text: &str) -> Option<(String, String)> {
    let repr = serde_json::from_str::<ReprNames>(text).ok()?;
    if kind.is_some_and(|k| same_kind(k, "project_version")) {
        let (Some(hex_id), Some(title)) = (&repr.hex_id, &repr.title) else {
            return None;
        };
        return (!title.trim().is_empty()).then(|| (hex_id.to_string(), title.to_string()));
    }
    repr.best().map(|n| (id.to_string(), n.to_string()))
}

/// Learns the names in a record (the actor's e-mail, user targets' e-mails,
/// project titles from `project_version`, any other target with a name in its
/// representation): writes those that are new or changed, and renews known
/// ones once a week so they outlive their TTL while in use.
///
/// The same representations come back all day (the same projects, run again
/// and again), so what one teaches is remembered by its fingerprint and it is
/// parsed again only when that name is due to be written.
pub fn learn(
    facts: &Facts,
    state: &dyn StateStore,
    now_ms: i64,
    recent: &mut Recent,
) -> Result<(), StoreError> {
    if let (Some(id), Some(email)) = (&facts.actor_id, &facts.email) {
        remember(format!("{KEY_PREFIX}{id}"), email, state, now_ms, recent)?;
    }
    for t in &facts.targets {
        let (Some(id), Some(text)) = (&t.id, t.representation()) else {
            continue;
        };
        let kind = t.kind.as_deref();
        let due = recent.due(
            (kind.unwrap_or_default(), id, text),
            now_ms,
            REFRESH_MS,
            || taught_by(kind, id, text).map(|(id, name)| (format!("{KEY_PREFIX}{id}"), name)),
        );
        if let Some((key, name)) = due {
            remember(key, &name, state, now_ms, recent)?;
        }
    }
    Ok(())
}

/// Writes `name` under `key` unless the store holds it, written lately.
fn remember(
    key: String,
    name: &str,
    state: &dyn StateStore,
    now_ms: i64,
    recent: &mut Recent,
) -> Result<(), StoreError> {
    let print = fingerprint(name);
    if recent.fresh(&key, print, now_ms, REFRESH_MS) {
        return Ok(());
    }
    let known = state
        .kv_get(&key, now_ms)?
        .and_then(|json| serde_json::from_str::<Learned>(&json).ok());
    let fresh = known
        .as_ref()
        .is_some_and(|k| k.n == name && now_ms - k.t < REFRESH_MS);
    let written_at = match known {
        Some(k) if fresh => k.t,
        _ => {
            let json = serde_json::to_string(&Learned {
                n: name.to_string(),
                t: now_ms,
            })
            .expect("serialising a string");
            state.kv_set(&key, &json, TTL_SECONDS, now_ms)?;
            now_ms
        }
    };
    recent.wrote(key, print, written_at);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryState;

    fn ev(json: &str) -> RecordObject {
        RecordObject::parse(json).expect("a JSON object")
    }

    #[test]
    fn kinds_match_in_both_spellings() {
        assert!(same_kind("data_connection", "data connection"));
        assert!(same_kind("Project_Version", "project_version"));
        assert!(!same_kind("project", "project_version"));
    }

    #[test]
    fn project_title_comes_from_its_version_then_from_learning() {
        let state = MemoryState::default();
        let run = ev(
            r#"{"event":{"actor":{"id":"u1","metadata":{"email":"ana@acme.example"}},"targets":[
            {"id":"p1","type":"project","metadata":{"representation":"{\"id\":\"p1\",\"publicRole\":null}"}},
            {"id":"v1","type":"project_version","metadata":{"representation":"{\"id\":\"v1\",\"hexId\":\"p1\",\"title\":\"Revenue forecast\"}"}}]}}"#,
        );
        let p = target(&run, "project").unwrap();
        assert_eq!(target_name(&run, p, &state, 0).unwrap(), "Revenue forecast");
        learn(&Facts::from_event(&run), &state, 0, &mut Recent::default()).unwrap();
        state.end_call(true);

        let shared = ev(
            r#"{"event":{"targets":[{"id":"p1","type":"project","metadata":{"representation":"{\"id\":\"p1\"}"}},{"id":"u1","type":"user"},{"id":"zz-123456789","type":"data_connection"}]}}"#,
        );
        let p = target(&shared, "project").unwrap();
        assert_eq!(
            target_name(&shared, p, &state, 5).unwrap(),
            "Revenue forecast"
        );
        let u = target(&shared, "user").unwrap();
        assert_eq!(
            target_name(&shared, u, &state, 5).unwrap(),
            "ana@acme.example"
        );
        let c = target(&shared, "data connection").unwrap();
        assert_eq!(
            target_name(&shared, c, &state, 5).unwrap(),
            "data connection zz-12345"
        );
    }

    #[test]
    fn a_representation_seen_before_still_renews_and_renames() {
        let state = MemoryState::default();
        let mut recent = Recent::default();
        let version = |title: &str| {
            ev(&format!(
                r#"{{"event":{{"targets":[{{"id":"v1","type":"project_version","metadata":{{"representation":"{{\"hexId\":\"p1\",\"title\":\"{title}\"}}"}}}}]}}}}"#
            ))
        };
        let (a, b) = (version("Revenue"), version("Churn"));
        let learn_at = |e: &RecordObject, t: i64, recent: &mut Recent| {
            learn(&Facts::from_event(e), &state, t, recent).unwrap();
            state.end_call(true);
            let json = state.kv_get("name:p1", t).unwrap().unwrap();
            serde_json::from_str::<Learned>(&json)
                .map(|l| (l.n, l.t))
                .unwrap()
        };
        assert_eq!(learn_at(&a, 0, &mut recent), ("Revenue".into(), 0));
        // Seen again within the week: nothing to write.
        assert_eq!(learn_at(&a, 1_000, &mut recent), ("Revenue".into(), 0));
        // A week later the same text renews the name.
        assert_eq!(
            learn_at(&a, REFRESH_MS + 1, &mut recent),
            ("Revenue".into(), REFRESH_MS + 1)
        );
        // Renamed, then back: the text seen before teaches its name again.
        assert_eq!(
            learn_at(&b, REFRESH_MS + 2, &mut recent),
            ("Churn".into(), REFRESH_MS + 2)
        );
        assert_eq!(
            learn_at(&a, REFRESH_MS + 3, &mut recent),
            ("Revenue".into(), REFRESH_MS + 3)
        );
        // After the store's cache is forgotten, the store is asked again.
        recent.clear();
        assert_eq!(
            learn_at(&a, REFRESH_MS + 4, &mut recent),
            ("Revenue".into(), REFRESH_MS + 3)
        );
    }
}
