//! What is normal for each account, learned from *all* of its activity (not only
//! the actions that alert): when the account was first seen, the networks it
//! works from (the /24 of an IPv4 address, the /48 of an IPv6 one, and the wider
//! /16 or /32 block, so a home address that changes within its provider's block
//! is still home), how many accounts share a network (an office or VPN egress),
//! and which e-mail domains the workspace's own people use.
//!
//! Kept with rule state (keys `bl:*`), on event time, so `replay` and `serve`
//! agree. Rules read it through `baseline(event)`, `is_outsider(email)`, and
//! decide for themselves how a fresh install behaves (see the shipped
//! `Hex.Behaviour.NewIpSensitiveAction`: LOW until an account has a day of history).

use std::net::IpAddr;

use crate::facts::Facts;
use crate::recent::Recent;
use crate::state::{StateStore, StoreError};
use hexwatch_model::document::RecordObject;

/// How long a network stays in an account's baseline after it was last used.
pub const NETWORK_TTL_SECONDS: i64 = 90 * 86_400;
/// How long an account and a domain stay known.
pub const ACCOUNT_TTL_SECONDS: i64 = 400 * 86_400;
/// Entries still in use are written again (renewing their TTL) this often.
const REFRESH_MS: i64 = 86_400 * 1000;
/// A domain used by this many accounts is the workspace's own.
pub const INTERNAL_DOMAIN_ACCOUNTS: i64 = 3;

#[derive(serde::Serialize, serde::Deserialize, Clone, Copy)]
struct Seen {
    /// First seen (event time, ms).
    f: i64,
    /// Last written.
    t: i64,
    /// Distinct accounts (for networks and domains).
    #[serde(default)]
    n: i64,
}

fn get(state: &dyn StateStore, key: &str, now: i64) -> Result<Option<Seen>, StoreError> {
    Ok(state
        .kv_get(key, now)?
        .and_then(|j| serde_json::from_str(&j).ok()))
}

fn put(state: &dyn StateStore, key: &str, s: Seen, ttl: i64, now: i64) -> Result<(), StoreError> {
    let json = serde_json::to_string(&s).expect("plain struct");
    state.kv_set(key, &json, ttl, now)
}

/// Marks `key` seen; returns true when it was not known.
fn touch(
    state: &dyn StateStore,
    recent: &mut Recent,
    key: String,
    ttl: i64,
    now: i64,
) -> Result<bool, StoreError> {
    if recent.fresh(&key, 0, now, REFRESH_MS) {
        return Ok(false);
    }
    let (new, t) = match get(state, &key, now)? {
        Some(s) if now - s.t < REFRESH_MS => (false, s.t),
        Some(s) => {
            put(state, &key, Seen { t: now, ..s }, ttl, now)?;
            (false, now)
        }
        None => {
            put(
                state,
                &key,
                Seen {
                    f: now,
                    t: now,
                    n: 0,
                },
                ttl,
                now,
            )?;
            (true, now)
        }
    };
    recent.wrote(key, 0, t);
    Ok(new)
}

/// Adds one account to a shared counter (network, domain).
fn count(state: &dyn StateStore, key: &str, ttl: i64, now: i64) -> Result<(), StoreError> {
    let s = get(state, key, now)?.unwrap_or(Seen {
        f: now,
        t: now,
        n: 0,
    });
    put(
        state,
        key,
        Seen {
            n: s.n + 1,
            t: now,
            ..s
        },
        ttl,
        now,
    )
}

/// The network an address belongs to, and its wider block.
pub fn networks(ip: &str) -> Option<(String, String)> {
    match ip.trim().parse::<IpAddr>().ok()? {
        IpAddr::V4(a) => {
            // Every record comes here: built by hand, not through `format!`.
            let o = a.octets();
            let mut wide = String::with_capacity(16);
            push_decimal(&mut wide, o[0]);
            wide.push('.');
            push_decimal(&mut wide, o[1]);
            let mut net = wide.clone();
            net.push('.');
            push_decimal(&mut net, o[2]);
            net.push_str(".0/24");
            wide.push_str(".0.0/16");
            Some((net, wide))
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            Some((
                format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2]),
                format!("{:x}:{:x}::/32", s[0], s[1]),
            ))
        }
    }
}

/// Appends `n` in decimal.
fn push_decimal(s: &mut String, n: u8) {
    if n >= 100 {
        s.push(char::from(b'0' + n / 100));
    }
    if n >= 10 {
        s.push(char::from(b'0' + n / 10 % 10));
    }
    s.push(char::from(b'0' + n % 10));
}

fn actor(ev: &RecordObject) -> Option<(&str, Option<&str>, Option<&str>)> {
    let id = ev.str_at(&["event", "actor", "id"])?;
    Some((
        id,
        ev.str_at(&["event", "actor", "metadata", "email"]),
        ev.str_at(&["event", "context", "location"]),
    ))
}

/// Learns from one record (after the rules have seen it, so they compare the
/// record with what came before).
pub fn learn(
    facts: &Facts,
    state: &dyn StateStore,
    now: i64,
    recent: &mut Recent,
) -> Result<(), StoreError> {
    let Some(id) = facts.actor_id.as_deref() else {
        return Ok(());
    };
    let (email, ip) = (facts.email.as_deref(), facts.ip.as_deref());
    if touch(
        state,
        recent,
        ["bl:actor:", id].concat(),
        ACCOUNT_TTL_SECONDS,
        now,
    )? {
        if let Some(domain) = email.and_then(|e| e.rsplit_once('@')).map(|(_, d)| d) {
            let key = format!("bl:domain:{}", domain.to_ascii_lowercase());
            count(state, &key, ACCOUNT_TTL_SECONDS, now)?;
        }
    }
    if let Some((net, wide)) = ip.and_then(networks) {
        if touch(
            state,
            recent,
            ["bl:net:", id, ":", &net].concat(),
            NETWORK_TTL_SECONDS,
            now,
        )? {
            count(
                state,
                &["bl:netaccounts:", &net].concat(),
                NETWORK_TTL_SECONDS,
                now,
            )?;
        }
        touch(
            state,
            recent,
            ["bl:wide:", id, ":", &wide].concat(),
            NETWORK_TTL_SECONDS,
            now,
        )?;
    }
    Ok(())
}

/// What the baseline knows about this record's account and address, as of
/// before the record: `account_days` (days since the account was first seen, 0
/// for a new one), `network_hours` (hours since it first used this network; `()`
/// when never), `block_known` (it used the wider block before it first used this
/// network),
/// `network_accounts` (accounts seen on this network).
pub fn describe(
    ev: &RecordObject,
    state: &dyn StateStore,
    now: i64,
) -> Result<rhai::Map, StoreError> {
    let mut m = rhai::Map::new();
    let Some((id, _, ip)) = actor(ev) else {
        return Ok(m);
    };
    let days = get(state, &format!("bl:actor:{id}"), now)?
        .map_or(0.0, |s| (now - s.f) as f64 / 86_400_000.0);
    m.insert("account_days".into(), days.into());
    let (mut hours, mut block, mut accounts) = (rhai::Dynamic::UNIT, false, 0);
    if let Some((net, wide)) = ip.and_then(networks) {
        let net_first = get(state, &format!("bl:net:{id}:{net}"), now)?.map(|s| s.f);
        if let Some(f) = net_first {
            hours = ((now - f) as f64 / 3_600_000.0).into();
        }
        // The block counts only if it was in use before this network appeared:
        // an intruder's first minutes must not make their own block "known".
        let block_first = get(state, &format!("bl:wide:{id}:{wide}"), now)?.map(|s| s.f);
        block = match (block_first, net_first) {
            (Some(b), Some(n)) => b < n,
            (Some(_), None) => true,
            (None, _) => false,
        };
        accounts = get(state, &format!("bl:netaccounts:{net}"), now)?.map_or(0, |s| s.n);
        m.insert("network".into(), net.into());
    }
    m.insert("network_hours".into(), hours);
    m.insert("block_known".into(), block.into());
    m.insert("network_accounts".into(), accounts.into());
    Ok(m)
}

/// Whether the workspace's own accounts use this e-mail domain.
pub fn known_domain(state: &dyn StateStore, domain: &str, now: i64) -> Result<bool, StoreError> {
    let key = format!("bl:domain:{}", domain.to_ascii_lowercase());
    Ok(get(state, &key, now)?.is_some_and(|s| s.n >= INTERNAL_DOMAIN_ACCOUNTS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryState;

    fn ev(id: &str, email: &str, ip: &str) -> RecordObject {
        let json = serde_json::json!({"event": {"actor": {"id": id, "metadata": {"email": email}}, "context": {"location": ip}}});
        RecordObject::parse(&json.to_string()).expect("a JSON object")
    }

    #[test]
    fn learns_accounts_networks_blocks_and_domains() {
        let s = MemoryState::default();
        let h = 3_600_000;
        let first = ev("u1", "ana@acme.example", "203.0.113.7");
        let d = describe(&first, &s, 0).unwrap();
        assert!(d["network_hours"].is_unit());
        learn(&Facts::from_event(&first), &s, 0, &mut Recent::default()).unwrap();
        // Two hours later, the same /24: known for two hours; a new address in the
        // provider's /16: not the network, but the block.
        let d = describe(&ev("u1", "ana@acme.example", "203.0.113.99"), &s, 2 * h).unwrap();
        assert_eq!(d["network_hours"].as_float().unwrap(), 2.0);
        let d = describe(&ev("u1", "ana@acme.example", "203.0.200.1"), &s, 2 * h).unwrap();
        assert!(d["network_hours"].is_unit());
        assert!(d["block_known"].as_bool().unwrap());
        // An intruder's own block is not "known" from their first minutes.
        let intruder = ev("u1", "ana@acme.example", "185.220.101.34");
        learn(
            &Facts::from_event(&intruder),
            &s,
            3 * h,
            &mut Recent::default(),
        )
        .unwrap();
        let di = describe(&intruder, &s, 3 * h + 60_000).unwrap();
        assert!(!di["block_known"].as_bool().unwrap());
        assert_eq!(d["network_accounts"].as_int().unwrap(), 0);
        assert!(!known_domain(&s, "acme.example", 0).unwrap());
        for u in ["u2", "u3"] {
            let colleague = ev(u, &format!("{u}@ACME.example"), "203.0.113.8");
            learn(
                &Facts::from_event(&colleague),
                &s,
                h,
                &mut Recent::default(),
            )
            .unwrap();
        }
        assert!(known_domain(&s, "acme.example", h).unwrap());
        let d = describe(&first, &s, 48 * h).unwrap();
        assert_eq!(d["network_accounts"].as_int().unwrap(), 3);
        assert_eq!(d["account_days"].as_float().unwrap(), 2.0);
    }

    #[test]
    fn networks_are_the_slash_24_and_slash_16_or_48_and_32() {
        for a in [0u8, 7, 9, 10, 42, 99, 100, 199, 255] {
            for b in [0u8, 10, 255] {
                let ip = format!("{a}.{b}.{a}.{b}");
                let want = (format!("{a}.{b}.{a}.0/24"), format!("{a}.{b}.0.0/16"));
                assert_eq!(networks(&ip), Some(want), "{ip}");
            }
        }
        assert_eq!(
            networks(" 2001:db8:a:b::1 "),
            Some(("2001:db8:a::/48".into(), "2001:db8::/32".into()))
        );
        assert_eq!(networks("not an address"), None);
    }
}
