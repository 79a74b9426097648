//! `count` in a rule's metadata: records counted in Rust before `rule()`.

use rhai::{Dynamic, Map};

use super::{fail, field_path, int, strings, type_name, MetaError};

/// `count`: records of some actions counted per actor (or per value of a
/// field) over a window, in Rust, before `rule()` is called; a record reaches
/// `rule()` only once its count is at `at_least`. A volume rule sees a large
/// share of all records and turns nearly all of them away: here each costs a
/// lookup and a counter, where the same count in `rule()` costs a Rhai call.
#[derive(Debug, Clone)]
pub struct Count {
    /// The actions counted; others reach `rule()` uncounted. `None`: every
    /// action the rule receives.
    pub actions: Option<Vec<String>>,
    pub by: Selector,
    /// Count each value of this once (as `set_add`: a value counts again once
    /// unseen for `seconds`) instead of every record.
    pub distinct: Option<Selector>,
    /// The window: the count starts again this long after its first record.
    pub seconds: i64,
    pub at_least: AtLeast,
}

/// A value of a record that `count` reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    /// `"actor"`: the actor as `actor(event)` names it (e-mail, else id).
    Actor,
    /// `"target:KIND"`: the id of the first target of that kind, as
    /// `target_id(event, KIND)`.
    Target(String),
    /// A dotted path of object keys to a string or integer.
    Field(Vec<String>),
}

/// The count at which records reach `rule()`.
#[derive(Debug, Clone, PartialEq)]
pub enum AtLeast {
    Value(i64),
    /// The rule parameter of this name (a number), so the config can tune it.
    Param(String),
}

impl Count {
    /// Whether records of `action` are counted.
    pub fn counts(&self, action: &str) -> bool {
        self.actions
            .as_ref()
            .is_none_or(|a| a.iter().any(|x| x == action))
    }
}

const COUNT_KEYS: &[&str] = &["actions", "by", "distinct", "seconds", "at_least"];
const COUNT_EXAMPLE: &str =
    "#{ actions: [\"RUN_CELL\"], by: \"actor\", seconds: 600, at_least: 300 }";

/// Reads `count`: one map, or a list of them for actions counted apart (after
/// `actions` and `params`, which it refers to).
pub(super) fn counts(
    map: &Map,
    actions: Option<&[String]>,
    params: &Map,
) -> Result<Vec<Count>, MetaError> {
    let Some(v) = map.get("count") else {
        return Ok(Vec::new());
    };
    let list = match v.as_array_ref() {
        Ok(list) if list.is_empty() => {
            return Err(fail(
                "count",
                "an empty list counts nothing; remove the key",
            ))
        }
        Ok(list) => list.iter().cloned().collect(),
        Err(_) => vec![v.clone()],
    };
    let many = list.len() > 1;
    let mut out: Vec<Count> = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let at = if many {
            format!("[{i}] ")
        } else {
            String::new()
        };
        let c = count(item, actions, params)
            .map_err(|e| fail("count", format!("{at}{}", e.message)))?;
        let overlaps = out.iter().any(|o| match (&o.actions, &c.actions) {
            (Some(a), Some(b)) => a.iter().any(|x| b.contains(x)),
            _ => true,
        });
        if overlaps {
            return Err(fail(
                "count",
                format!(
                    "{at}counts actions an earlier entry counts: give each entry its own `actions`"
                ),
            ));
        }
        out.push(c);
    }
    Ok(out)
}

/// One `count` entry; the message says which of its keys is wrong.
fn count(v: &Dynamic, actions: Option<&[String]>, params: &Map) -> Result<Count, MetaError> {
    let c = v.as_map_ref().map_err(|_| {
        fail(
            "count",
            format!(
                "expected a map such as {COUNT_EXAMPLE}, got {}",
                type_name(v)
            ),
        )
    })?;
    for key in c.keys() {
        if !COUNT_KEYS.contains(&key.as_str()) {
            return Err(fail(
                "count",
                format!("{key}: unknown key; the keys are {}", COUNT_KEYS.join(", ")),
            ));
        }
    }
    let counted = counted_actions(&c, actions)?;
    let by = selector(&c, "by")?.ok_or_else(|| {
        fail("count", "by: required: \"actor\", \"target:KIND\" or a field path such as \"event.context.location\"")
    })?;
    let distinct = selector(&c, "distinct")?;
    if c.get("seconds").is_none() {
        return Err(fail("count", "seconds: required: the window, in seconds"));
    }
    let seconds =
        int(&c, "seconds", 0, 1).map_err(|e| fail("count", format!("seconds: {}", e.message)))?;
    Ok(Count {
        actions: counted,
        by,
        distinct,
        seconds,
        at_least: at_least(&c, params)?,
    })
}

/// `actions` of a count: a non-empty list of actions the rule receives.
fn counted_actions(c: &Map, actions: Option<&[String]>) -> Result<Option<Vec<String>>, MetaError> {
    let counted =
        strings(c, "actions").map_err(|e| fail("count", format!("actions: {}", e.message)))?;
    if let Some(list) = &counted {
        if list.is_empty() {
            return Err(fail(
                "count",
                "actions: an empty list counts nothing; remove the key to count every action",
            ));
        }
        if let Some(a) = list
            .iter()
            .find(|a| actions.is_some_and(|received| !received.contains(a)))
        {
            return Err(fail(
                "count",
                format!("actions: {a:?} is not in meta.actions, so it never reaches the count"),
            ));
        }
    }
    Ok(counted)
}

/// `by` or `distinct` of a count, when given.
fn selector(c: &Map, key: &str) -> Result<Option<Selector>, MetaError> {
    let Some(b) = c.get(key) else {
        return Ok(None);
    };
    let s = b.clone().into_string().map_err(|_| {
        fail(
            "count",
            format!("{key}: expected a string, got {}", type_name(b)),
        )
    })?;
    if s == "actor" {
        return Ok(Some(Selector::Actor));
    }
    if let Some(kind) = s.strip_prefix("target:") {
        if !kind.is_empty() {
            return Ok(Some(Selector::Target(kind.to_string())));
        }
    }
    match field_path(&s).filter(|_| !s.contains(':')) {
        Some(parts) => Ok(Some(Selector::Field(parts))),
        None => Err(fail("count", format!(
            "{key}: {s:?} is not \"actor\", \"target:KIND\" or a field path like \"event.context.location\""
        ))),
    }
}

/// `at_least` of a count: a number, or the name of a numeric rule parameter.
fn at_least(c: &Map, params: &Map) -> Result<AtLeast, MetaError> {
    match c.get("at_least") {
        None => Err(fail(
            "count",
            "at_least: required: a count, or the name of a rule parameter holding it",
        )),
        Some(a) if a.is_int() => {
            Ok(AtLeast::Value(int(c, "at_least", 1, 1).map_err(|e| {
                fail("count", format!("at_least: {}", e.message))
            })?))
        }
        Some(a) if a.is_string() => {
            let name = a.clone().into_string().unwrap_or_default();
            match params.get(name.as_str()) {
                Some(p) if p.is_int() || p.is_float() => Ok(AtLeast::Param(name)),
                Some(p) => Err(fail(
                    "count",
                    format!("at_least: params.{name} is {}, not a number", type_name(p)),
                )),
                None => Err(fail(
                    "count",
                    format!(
                        "at_least: {name:?} is not in meta.params; declare it there with its default"
                    ),
                )),
            }
        }
        Some(a) => Err(fail(
            "count",
            format!(
                "at_least: expected an integer or a parameter's name, got {}",
                type_name(a)
            ),
        )),
    }
}
