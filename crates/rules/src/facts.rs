//! The few fields of a record that learning needs (the actor, its address, the
//! targets and their representations), read either from a parsed record or
//! straight from the stored JSON. Records no rule wants are only read this way:
//! borrowing the fields, skipping the rest, much cheaper than a full parse.

use std::borrow::Cow;

use serde::Deserialize;

use hexwatch_model::document::{Node, RecordObject};

/// What learning reads from one record.
#[derive(Debug, Default)]
pub struct Facts<'a> {
    pub actor_id: Option<Cow<'a, str>>,
    pub email: Option<Cow<'a, str>>,
    pub ip: Option<Cow<'a, str>>,
    pub targets: Vec<TargetFacts<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct TargetFacts<'a> {
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub metadata: Option<TargetMeta<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct TargetMeta<'a> {
    #[serde(borrow, default)]
    pub representation: Option<Cow<'a, str>>,
}

impl TargetFacts<'_> {
    pub fn representation(&self) -> Option<&str> {
        self.metadata.as_ref()?.representation.as_deref()
    }
}

#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    event: Event<'a>,
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow, default)]
    actor: Option<Actor<'a>>,
    #[serde(borrow, default)]
    context: Option<Context<'a>>,
    #[serde(borrow, default)]
    targets: Option<Vec<TargetFacts<'a>>>,
}

#[derive(Deserialize)]
struct Actor<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    metadata: Option<ActorMeta<'a>>,
}

#[derive(Deserialize)]
struct ActorMeta<'a> {
    #[serde(borrow, default)]
    email: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Context<'a> {
    #[serde(borrow, default)]
    location: Option<Cow<'a, str>>,
}

impl<'a> Facts<'a> {
    /// From a stored record (validated JSON text); `None` if it does not read.
    pub fn from_json(json: &'a str) -> Option<Facts<'a>> {
        let r: Record<'a> = serde_json::from_str(json).ok()?;
        let (actor_id, email) = match r.event.actor {
            Some(a) => (a.id, a.metadata.and_then(|m| m.email)),
            None => (None, None),
        };
        Some(Facts {
            actor_id,
            email,
            ip: r.event.context.and_then(|c| c.location),
            targets: r.event.targets.unwrap_or_default(),
        })
    }

    /// From a parsed record: one pass over the event and each target.
    pub fn from_event(ev: &'a RecordObject) -> Facts<'a> {
        let text = |n: Option<Node<'a>>| match n {
            Some(Node::Str(s)) => Some(Cow::Borrowed(s)),
            _ => None,
        };
        let mut facts = Facts::default();
        let Some(Node::Obj(event)) = ev.get("event") else {
            return facts;
        };
        for (key, value) in event.entries() {
            match (key, value) {
                ("actor", Node::Obj(actor)) => {
                    facts.actor_id = text(actor.get("id"));
                    facts.email = text(actor.at(&["metadata", "email"]));
                }
                ("context", Node::Obj(context)) => facts.ip = text(context.get("location")),
                ("targets", Node::Arr(targets)) => {
                    facts.targets = targets
                        .iter()
                        .filter_map(|t| match t {
                            Node::Obj(t) => Some(t),
                            _ => None,
                        })
                        .map(|t| {
                            let mut target = TargetFacts {
                                metadata: Some(TargetMeta::default()),
                                ..TargetFacts::default()
                            };
                            for (key, value) in t.entries() {
                                match key {
                                    "id" => target.id = text(Some(value)),
                                    "type" => target.kind = text(Some(value)),
                                    "metadata" => {
                                        if let Node::Obj(m) = value {
                                            target.metadata = Some(TargetMeta {
                                                representation: text(m.get("representation")),
                                            });
                                        }
                                    }
                                    _ => {}
                                }
                            }
                            target
                        })
                        .collect();
                }
                _ => {}
            }
        }
        facts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_readings_agree() {
        let json = r#"{"event":{"actor":{"id":"u1","metadata":{"email":"a\u0040x.example"}},"context":{"location":"1.2.3.4"},
            "targets":[{"id":"p1","type":"project","metadata":{"representation":"{\"id\":\"p1\"}"}},{"id":"c1"}],"action":"RUN_CELL"},"p_any_emails":["a@x.example"]}"#;
        let a = Facts::from_json(json).unwrap();
        let m = RecordObject::parse(json).unwrap();
        let b = Facts::from_event(&m);
        for f in [&a, &b] {
            assert_eq!(f.email.as_deref(), Some("a@x.example"));
            assert_eq!(
                (f.actor_id.as_deref(), f.ip.as_deref()),
                (Some("u1"), Some("1.2.3.4"))
            );
            assert_eq!(f.targets.len(), 2);
            assert_eq!(f.targets[0].representation(), Some("{\"id\":\"p1\"}"));
            assert_eq!(f.targets[1].representation(), None);
        }
    }
}
