//! The sandboxed Rhai engine every rule runs in, with hexwatch's helpers.
//!
//! Sandbox: no module loading (no file access), no `eval`, `print`/`debug` go to
//! the log, and every call is bounded — operations (`rules.max_operations`),
//! call depth, expression depth, and string / array / map sizes. A rule that
//! hits a limit fails for that event only.
//!
//! Helpers: `get(event, "a.b.0.c")` and `get(event, path, default)` read a
//! dotted path of the event without raising on missing parts (`deep_get` does the
//! same for any value); `json_decode(text)` decodes the
//! JSON-in-a-string fields (`()` when it is not JSON); the state helpers
//! `counter_incr`, `set_add`, `kv_get`, `kv_set` go to the [`StateStore`]. The
//! current event time reaches the state helpers through the call's tag.

use std::sync::Arc;

use rhai::module_resolvers::DummyModuleResolver;
use rhai::{Dynamic, Engine, EvalAltResult, NativeCallContext, INT};

use crate::state::StateStore;
use crate::{baseline, names};
use hexwatch_model::document::{self as value, dynamic_to_json, Node, RecordArray, RecordObject};

/// Largest string a rule may build.
pub const MAX_STRING: usize = 1 << 20;
/// Largest array or map a rule may build.
pub const MAX_COLLECTION: usize = 10_000;
/// Deepest function-call nesting (runaway recursion stops here).
pub const MAX_CALL_LEVELS: usize = 32;

/// Builds the engine with its limits and helpers.
pub fn build(max_operations: u64, state: Arc<dyn StateStore>) -> Engine {
    let mut engine = Engine::new();
    engine
        .set_module_resolver(DummyModuleResolver::new())
        .disable_symbol("eval")
        .set_max_operations(max_operations)
        .set_max_call_levels(MAX_CALL_LEVELS)
        .set_max_expr_depths(64, 32)
        .set_max_string_size(MAX_STRING)
        .set_max_array_size(MAX_COLLECTION)
        .set_max_map_size(MAX_COLLECTION)
        .set_max_variables(1000)
        .set_max_functions(1000)
        .set_max_modules(0)
        .set_strict_variables(true);
    value::register(&mut engine);
    engine.on_print(|s| tracing::info!(target: "hexwatch::rule_print", "{s}"));
    engine.on_debug(|s, src, pos| {
        tracing::debug!(target: "hexwatch::rule_print", source = src.unwrap_or(""), %pos, "{s}")
    });

    // `get(event, "a.b")` on event values; `deep_get` on anything (Rhai's own
    // `get(map, key)` keeps its meaning for native maps).
    fn or_default(v: Dynamic, default: Dynamic) -> Dynamic {
        if v.is_unit() {
            default
        } else {
            v
        }
    }
    engine
        .register_fn("get", |m: &mut RecordObject, path: &str| {
            get_path(&Dynamic::from(m.clone()), path)
        })
        .register_fn(
            "get",
            |m: &mut RecordObject, path: &str, default: Dynamic| {
                or_default(get_path(&Dynamic::from(m.clone()), path), default)
            },
        )
        .register_fn("get", |a: &mut RecordArray, path: &str| {
            get_path(&Dynamic::from(a.clone()), path)
        })
        .register_fn("deep_get", |obj: &mut Dynamic, path: &str| {
            get_path(obj, path)
        })
        .register_fn(
            "deep_get",
            |obj: &mut Dynamic, path: &str, default: Dynamic| {
                or_default(get_path(obj, path), default)
            },
        )
        .register_fn("deep_get", |_: (), _: &str| Dynamic::UNIT)
        .register_fn("deep_get", |_: (), _: &str, default: Dynamic| default);
    engine.register_fn("json_decode", |text: &str| json_decode(text));
    engine.register_fn("json_decode", |_: ()| Dynamic::UNIT);

    register_hex_helpers(&mut engine);
    register_learned_helpers(&mut engine, state.clone());
    register_net_helpers(&mut engine);
    engine.register_fn("param", param);

    let s = state.clone();
    engine.register_fn(
        "counter_incr",
        move |ctx: NativeCallContext, key: &str, ttl: INT| -> Result<INT, Box<EvalAltResult>> {
            s.counter_incr(key, ttl, now(&ctx)).map_err(to_rhai)
        },
    );
    let s = state.clone();
    engine.register_fn(
        "set_add",
        move |ctx: NativeCallContext,
              key: &str,
              member: Dynamic,
              ttl: INT|
              -> Result<bool, Box<EvalAltResult>> {
            s.set_add(key, &member.to_string(), ttl, now(&ctx))
                .map_err(to_rhai)
        },
    );
    let s = state.clone();
    engine.register_fn(
        "kv_get",
        move |ctx: NativeCallContext, key: &str| -> Result<Dynamic, Box<EvalAltResult>> {
            match s.kv_get(key, now(&ctx)).map_err(to_rhai)? {
                Some(json) => Ok(json_decode(&json)),
                None => Ok(Dynamic::UNIT),
            }
        },
    );
    let s = state;
    engine.register_fn(
        "kv_set",
        move |ctx: NativeCallContext,
              key: &str,
              value: Dynamic,
              ttl: INT|
              -> Result<(), Box<EvalAltResult>> {
            s.kv_set(key, &dynamic_to_json(&value).to_string(), ttl, now(&ctx))
                .map_err(to_rhai)
        },
    );
    engine
}

/// The actor as rules name it (`actor(event)`, `meta.count` by "actor"): the
/// e-mail, else the id, else "unknown actor".
pub fn actor_of(ev: &RecordObject) -> &str {
    ev.str_at(&["event", "actor", "metadata", "email"])
        .or_else(|| ev.str_at(&["event", "actor", "id"]))
        .unwrap_or("unknown actor")
}

/// Shortcuts for the questions most Hex rules ask of a record (those that read
/// learned names and baselines are in [`register_learned_helpers`]).
///
/// - `actor(event)`: the actor's e-mail, else id, else "unknown actor".
/// - `actor_id(event)`, `actor_ip(event)`: `()` when missing.
/// - `is_admin(event)`: the actor's org role is ADMIN.
/// - `succeeded(event)`: `event.metadata.result` is not FAILURE.
/// - `request_args(event)`: `event.metadata.requestArgs` decoded (`#{}` when absent).
/// - `request_flag(event)`: the first true/false value in the request arguments (the
///   new value of a setting toggle), `()` when there is none.
/// - `target_name(event)`, `target_name(event, kind)`: the first target's (of that
///   kind's) name — see [`names`] — never "unknown".
/// - `target_id(event, kind)`, `has_target(event, kind)`, `representation(event, kind)`.
/// - `target_names(event)`: every target's name (array).
/// - `name_of(id)`: the name learned for an id, `()` if none.
/// - `baseline(event)`: what is known of the account and its address (see [`baseline`]).
/// - `is_outsider(email)`: the address's domain is neither in the rule's
///   `internal_domains` parameter nor used by the workspace's own accounts.
fn register_hex_helpers(engine: &mut Engine) {
    // The hot helpers read the event tree directly, without building values.
    engine
        .register_fn("actor", |ev: &mut RecordObject| actor_of(ev).to_string())
        .register_fn("actor_id", |ev: &mut RecordObject| {
            ev.at(&["event", "actor", "id"])
                .map_or(Dynamic::UNIT, |n| n.to_dynamic())
        })
        .register_fn("actor_ip", |ev: &mut RecordObject| {
            ev.at(&["event", "context", "location"])
                .map_or(Dynamic::UNIT, |n| n.to_dynamic())
        })
        .register_fn("is_admin", |ev: &mut RecordObject| {
            ev.str_at(&["event", "actor", "metadata", "actorOrgRole"])
                .is_some_and(|r| r.eq_ignore_ascii_case("ADMIN"))
        })
        .register_fn("succeeded", |ev: &mut RecordObject| {
            ev.str_at(&["event", "metadata", "result"])
                .is_none_or(|r| !r.eq_ignore_ascii_case("FAILURE"))
        })
        .register_fn("request_args", |ev: &mut RecordObject| {
            match ev
                .str_at(&["event", "metadata", "requestArgs"])
                .map(json_decode)
            {
                Some(d) if d.is_map() => d,
                _ => Dynamic::from_map(rhai::Map::new()),
            }
        })
        .register_fn("request_flag", |ev: &mut RecordObject| {
            let Some(Node::Str(args)) = ev.at(&["event", "metadata", "requestArgs"]) else {
                return Dynamic::UNIT;
            };
            match serde_json::from_str::<serde_json::Value>(args) {
                Ok(serde_json::Value::Object(m)) => m
                    .values()
                    .find_map(serde_json::Value::as_bool)
                    .map_or(Dynamic::UNIT, Dynamic::from_bool),
                _ => Dynamic::UNIT,
            }
        })
        .register_fn("target_id", |ev: &mut RecordObject, kind: &str| {
            names::target(ev, kind)
                .and_then(|t| t.at(&["id"]))
                .map_or(Dynamic::UNIT, |n| n.to_dynamic())
        })
        .register_fn("has_target", |ev: &mut RecordObject, kind: &str| {
            names::target(ev, kind).is_some()
        })
        .register_fn("representation", |ev: &mut RecordObject, kind: &str| {
            names::target(ev, kind).map_or(Dynamic::UNIT, names::representation)
        });
}

/// Helpers that read what the stream taught (names, baselines): see
/// [`names`] and [`baseline`].
fn register_learned_helpers(engine: &mut Engine, state: Arc<dyn StateStore>) {
    let s = state.clone();
    engine.register_fn(
        "target_name",
        move |ctx: NativeCallContext,
              ev: &mut RecordObject|
              -> Result<String, Box<EvalAltResult>> {
            match names::targets(ev).next() {
                Some(t) => names::target_name(ev, t, s.as_ref(), now(&ctx)).map_err(to_rhai),
                None => Ok("no target".into()),
            }
        },
    );
    let s = state.clone();
    engine.register_fn(
        "target_name",
        move |ctx: NativeCallContext,
              ev: &mut RecordObject,
              kind: &str|
              -> Result<String, Box<EvalAltResult>> {
            match names::target(ev, kind) {
                Some(t) => names::target_name(ev, t, s.as_ref(), now(&ctx)).map_err(to_rhai),
                None => Ok(format!("no {} target", kind.replace('_', " "))),
            }
        },
    );
    let s = state.clone();
    engine.register_fn(
        "target_names",
        move |ctx: NativeCallContext,
              ev: &mut RecordObject|
              -> Result<rhai::Array, Box<EvalAltResult>> {
            let mut out: Vec<String> = Vec::new();
            for t in names::targets(ev) {
                if t.str_at(&["type"])
                    .is_some_and(|k| names::same_kind(k, "project_version"))
                {
                    continue; // its title already names the project
                }
                let n = names::target_name(ev, t, s.as_ref(), now(&ctx)).map_err(to_rhai)?;
                if !out.contains(&n) {
                    out.push(n);
                }
            }
            Ok(out.into_iter().map(Dynamic::from).collect())
        },
    );
    let s = state.clone();
    engine.register_fn(
        "baseline",
        move |ctx: NativeCallContext,
              ev: &mut RecordObject|
              -> Result<rhai::Map, Box<EvalAltResult>> {
            baseline::describe(ev, s.as_ref(), now(&ctx)).map_err(to_rhai)
        },
    );
    let s = state.clone();
    engine.register_fn(
        "is_outsider",
        move |ctx: NativeCallContext, email: &str| -> Result<bool, Box<EvalAltResult>> {
            let Some((_, domain)) = email.trim().rsplit_once('@') else {
                return Ok(false); // not an address: cannot tell
            };
            let configured = ctx.tag().and_then(|t| {
                t.read_lock::<CallTag>()
                    .and_then(|tag| tag.params.get("internal_domains").cloned())
            });
            if let Some(list) = configured.and_then(|l| l.into_array().ok()) {
                if list
                    .iter()
                    .any(|d| d.to_string().eq_ignore_ascii_case(domain))
                {
                    return Ok(false);
                }
            }
            Ok(!baseline::known_domain(s.as_ref(), domain, now(&ctx)).map_err(to_rhai)?)
        },
    );
    engine.register_fn("is_outsider", |_: ()| false);
    let s = state;
    engine.register_fn(
        "name_of",
        move |ctx: NativeCallContext, id: &str| -> Result<Dynamic, Box<EvalAltResult>> {
            Ok(names::learned(s.as_ref(), id, now(&ctx))
                .map_err(to_rhai)?
                .map_or(Dynamic::UNIT, Dynamic::from))
        },
    );
    engine.register_fn("name_of", |_: ()| Dynamic::UNIT);
}

/// Address helpers: `in_cidr(ip, "10.0.0.0/8")` (or an array of ranges; a bare
/// address is a range of one), `network(ip)` (the /24 of an IPv4 address, the /48
/// of an IPv6 one: "the same place" for baselines), `email_domain(email)`.
fn register_net_helpers(engine: &mut Engine) {
    fn parse_net(range: &str) -> Result<ipnet::IpNet, Box<EvalAltResult>> {
        let range = range.trim();
        range
            .parse::<ipnet::IpNet>()
            .or_else(|_| range.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                format!("in_cidr: {range:?} is not an address range like \"10.0.0.0/8\"").into()
            })
    }
    fn ip_of(ip: &str) -> Option<std::net::IpAddr> {
        ip.trim().parse().ok()
    }
    engine
        .register_fn(
            "in_cidr",
            |ip: &str, range: &str| -> Result<bool, Box<EvalAltResult>> {
                let net = parse_net(range)?;
                Ok(ip_of(ip).is_some_and(|a| net.contains(&a)))
            },
        )
        .register_fn(
            "in_cidr",
            |ip: &str, ranges: rhai::Array| -> Result<bool, Box<EvalAltResult>> {
                let Some(addr) = ip_of(ip) else {
                    return Ok(false);
                };
                for r in ranges {
                    if parse_net(&r.to_string())?.contains(&addr) {
                        return Ok(true);
                    }
                }
                Ok(false)
            },
        )
        .register_fn("in_cidr", |_: (), _: Dynamic| false)
        .register_fn("network", |ip: &str| match ip_of(ip) {
            Some(std::net::IpAddr::V4(a)) => ipnet::Ipv4Net::new(a, 24)
                .map(|n| n.trunc().to_string())
                .unwrap_or_default()
                .into(),
            Some(std::net::IpAddr::V6(a)) => ipnet::Ipv6Net::new(a, 48)
                .map(|n| n.trunc().to_string())
                .unwrap_or_default()
                .into(),
            None => Dynamic::UNIT,
        })
        .register_fn("network", |_: ()| Dynamic::UNIT)
        .register_fn("email_domain", |email: &str| match email.rsplit_once('@') {
            Some((_, d)) if !d.is_empty() => Dynamic::from(d.trim().to_ascii_lowercase()),
            _ => Dynamic::UNIT,
        })
        .register_fn("email_domain", |_: ()| Dynamic::UNIT);
}

/// What every rule call carries to the helpers: the event time (state TTLs run on
/// it) and the calling rule's parameters (`param(name)`).
#[derive(Clone)]
pub struct CallTag {
    pub now_ms: i64,
    pub params: Arc<rhai::Map>,
}

impl CallTag {
    pub fn dynamic(now_ms: i64, params: Arc<rhai::Map>) -> Dynamic {
        Dynamic::from(CallTag { now_ms, params })
    }
}

/// The event time (ms) the evaluator put in the call's tag.
fn now(ctx: &NativeCallContext) -> i64 {
    match ctx.tag() {
        Some(t) => match t.read_lock::<CallTag>() {
            Some(tag) => tag.now_ms,
            None => t.as_int().unwrap_or(0),
        },
        None => 0,
    }
}

/// `param(name)`: the calling rule's parameter (config over `meta.params`).
fn param(ctx: NativeCallContext, name: &str) -> Result<Dynamic, Box<EvalAltResult>> {
    let found = ctx.tag().and_then(|t| {
        t.read_lock::<CallTag>()
            .and_then(|tag| tag.params.get(name).cloned())
    });
    found.ok_or_else(|| {
        format!("param({name:?}): no such parameter; declare it with a default in meta.params")
            .into()
    })
}

fn to_rhai(e: impl std::fmt::Display) -> Box<EvalAltResult> {
    e.to_string().into()
}

/// Follows a dotted path through maps (by key) and arrays (by index).
pub fn get_path(obj: &Dynamic, path: &str) -> Dynamic {
    fn step(cur: &Dynamic, part: &str) -> Option<Dynamic> {
        if let Some(m) = cur.read_lock::<RecordObject>() {
            return m.get(part).map(|n| n.to_dynamic());
        }
        if let Some(a) = cur.read_lock::<RecordArray>() {
            return a.get(part.parse().ok()?).map(|n| n.to_dynamic());
        }
        if let Ok(map) = cur.as_map_ref() {
            return map.get(part).cloned();
        }
        if let Ok(arr) = cur.as_array_ref() {
            let i: usize = part.parse().ok()?;
            return arr.get(i).cloned();
        }
        None
    }
    let mut parts = path.split('.');
    let Some(first) = parts.next() else {
        return Dynamic::UNIT;
    };
    let mut cur = match step(obj, first) {
        Some(v) => v,
        None => return Dynamic::UNIT,
    };
    for part in parts {
        cur = match step(&cur, part) {
            Some(v) => v,
            None => return Dynamic::UNIT,
        };
    }
    cur
}

/// Decodes JSON text into Rhai values; `()` when it is not JSON.
///
/// The same texts come back all day (a project's representation each time it
/// is run), and copying the values decoded before costs far less than
/// decoding again, so each thread keeps the last texts it decoded (at most
/// [`DECODED_MAX`] of them, none longer than [`DECODED_MAX_LEN`]). A copy is
/// the rule's own: changing it changes nothing kept.
pub fn json_decode(text: &str) -> Dynamic {
    let decode = |text: &str| serde_json::from_str::<Dynamic>(text).unwrap_or(Dynamic::UNIT);
    if text.len() > DECODED_MAX_LEN {
        return decode(text);
    }
    DECODED.with_borrow_mut(|kept| {
        if let Some(d) = kept.get(text) {
            return d.clone();
        }
        let d = decode(text);
        if kept.len() >= DECODED_MAX {
            kept.clear();
        }
        kept.insert(text.into(), d.clone());
        d
    })
}

/// Texts [`json_decode`] keeps decoded, per thread.
const DECODED_MAX: usize = 1024;
/// The longest text [`json_decode`] keeps.
const DECODED_MAX_LEN: usize = 2048;

thread_local! {
    static DECODED: std::cell::RefCell<std::collections::HashMap<Box<str>, Dynamic, ahash::RandomState>> =
        std::cell::RefCell::new(std::collections::HashMap::with_hasher(ahash::RandomState::new()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryState;

    fn engine() -> Engine {
        build(10_000, Arc::new(MemoryState::default()))
    }

    /// Compiles `src` and calls its `f(ev)`.
    fn call_f<T: Clone + Send + Sync + 'static>(e: &Engine, src: &str, ev: Dynamic) -> T {
        let ast = e.compile(src).unwrap();
        e.call_fn_with_options(
            rhai::CallFnOptions::new().eval_ast(false),
            &mut rhai::Scope::new(),
            &ast,
            "f",
            (ev,),
        )
        .unwrap()
    }

    #[test]
    fn get_and_json_decode() {
        let e = engine();
        let r: String = e
            .eval(r#"let x = #{a: #{b: [#{c: "deep"}]}}; deep_get(x, "a.b.0.c")"#)
            .unwrap();
        assert_eq!(r, "deep");
        let r: bool = e
            .eval(r#"let x = #{a: 1}; deep_get(x, "a.b.c") == ()"#)
            .unwrap();
        assert!(r);
        let r: INT = e.eval(r#"let x = #{}; deep_get(x, "nope", 7)"#).unwrap();
        assert_eq!(r, 7);
        let r: String = e.eval(r#"json_decode("{\"name\":\"Q3\"}").name"#).unwrap();
        assert_eq!(r, "Q3");
        let r: bool = e.eval(r#"json_decode("not json") == ()"#).unwrap();
        assert!(r);
        // A decoded value is the rule's own copy, also when the text was decoded before.
        let r: String = e
            .eval(r#"let a = json_decode("{\"n\":{\"k\":[1]}}"); a.n.k.push(2); a.n.x = 1;
                let b = json_decode("{\"n\":{\"k\":[1]}}"); `${a.n.k.len()} ${b.n.k.len()} ${b.n.x}`"#)
            .unwrap();
        assert_eq!(r, "2 1 ");
        // The same on event values.
        let ev = RecordObject::parse(r#"{"event":{"targets":[{"id":"p1"}]}}"#)
            .unwrap()
            .to_dynamic();
        let r: String = call_f(
            &e,
            r#"fn f(ev) { get(ev, "event.targets.0.id") + get(ev, "event.nope", "!") }"#,
            ev,
        );
        assert_eq!(r, "p1!");
    }

    #[test]
    fn state_helpers_use_the_event_time_tag() {
        let e = engine();
        let ast = e
            .compile(r#"fn f(k) { let n = counter_incr(k, 60); let fresh = set_add("s", k, 60); kv_set("kv", #{n: n}, 0); [n, fresh, kv_get("kv").n] }"#)
            .unwrap();
        let call = |t: INT| -> rhai::Array {
            e.call_fn_with_options(
                rhai::CallFnOptions::new().eval_ast(false).with_tag(t),
                &mut rhai::Scope::new(),
                &ast,
                "f",
                ("a",),
            )
            .unwrap()
        };
        let r = call(1_000);
        assert_eq!(
            (
                r[0].as_int().unwrap(),
                r[1].as_bool().unwrap(),
                r[2].as_int().unwrap()
            ),
            (1, true, 1)
        );
        let r = call(2_000);
        assert_eq!(
            (r[0].as_int().unwrap(), r[1].as_bool().unwrap()),
            (2, false)
        );
        let r = call(100_000);
        assert_eq!((r[0].as_int().unwrap(), r[1].as_bool().unwrap()), (1, true));
    }

    #[test]
    fn hex_helpers() {
        let e = engine();
        let src = r#"fn f(ev) { [actor(ev), actor_ip(ev), is_admin(ev), succeeded(ev), request_args(ev).role, target_name(ev), target_names(ev).len(), request_flag(ev)] }"#;
        let ev = RecordObject::parse(
            r#"{"event":{"actor":{"id":"u1","metadata":{"email":"a@x","actorOrgRole":"ADMIN"}},
                "context":{"location":"1.2.3.4"},
                "metadata":{"result":"SUCCESS","requestArgs":"{\"role\":\"EDITOR\",\"enabled\":false}"},
                "targets":[{"id":"p1","metadata":{"representation":"{\"name\":\"Q3 plan\"}"}},{"id":"p2"}]}}"#,
        )
        .unwrap()
        .to_dynamic();
        let r: rhai::Array = call_f(&e, src, ev);
        let r: Vec<String> = r.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            r,
            ["a@x", "1.2.3.4", "true", "true", "EDITOR", "Q3 plan", "2", "false"]
        );
    }

    #[test]
    fn representation_is_a_map_whether_sent_as_text_or_as_an_object() {
        let e = engine();
        let src = r#"fn f(ev) { let p = representation(ev, "project"); let c = representation(ev, "cell");
            p.n = 1; [p.title, p.n, p.nested.k[1], c.title, representation(ev, "dashboard"), representation(ev, "x")] }"#;
        let ev = RecordObject::parse(
            r#"{"event":{"targets":[
                {"id":"p1","type":"project","metadata":{"representation":"{\"title\":\"Q3\",\"nested\":{\"k\":[1,2.5]}}"}},
                {"id":"c1","type":"cell","metadata":{"representation":{"title":"as object"}}},
                {"id":"d1","type":"dashboard","metadata":{"representation":"[1]"}}]}}"#,
        )
        .unwrap()
        .to_dynamic();
        let r: rhai::Array = call_f(&e, src, ev);
        let r: Vec<String> = r.iter().map(|d| d.to_string()).collect();
        assert_eq!(r, ["Q3", "1", "2.5", "as object", "", ""]);
    }

    #[test]
    fn sandbox_has_no_modules_or_eval() {
        let e = engine();
        assert!(
            e.compile(r#"import "std" as s; 1"#).is_err()
                || e.eval::<INT>(r#"import "x" as m; 1"#).is_err()
        );
        assert!(e.eval::<INT>(r#"eval("1")"#).is_err());
    }

    #[test]
    fn limits_stop_runaways() {
        let e = engine();
        let err = e.eval::<()>("loop {}").unwrap_err().to_string();
        assert!(err.contains("Too many operations"), "{err}");
        let err = e
            .eval::<INT>("fn f(x) { f(x + 1) } f(0)")
            .unwrap_err()
            .to_string();
        assert!(
            err.to_lowercase().contains("stack") || err.contains("call"),
            "{err}"
        );
        let err = e
            .eval::<()>(r#"let s = "x"; loop { s += s; }"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Length of string") || err.contains("too large"),
            "{err}"
        );
    }
}
