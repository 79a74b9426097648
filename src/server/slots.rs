//! Connection slots and the requests on them: which connection makes room for
//! a new one, and how requests without a credential are kept from holding
//! slots that clients with one need.
//!
//! A request is *trusted* when its headers carry a credential that checks out
//! (the ingest secret, the console's token or a session: see [`Trust`]); it
//! is told before its body is read. A connection that is idle, or whose
//! requests in progress are all untrusted, may be closed to make room; only
//! trusted work makes a connection unevictable. Untrusted requests also get
//! [`ConnLimits::untrusted_time`](super::ConnLimits) to be answered (body
//! included, the console's login form too) and at most
//! [`UNTRUSTED_PER_ADDRESS`] at once from one address.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::Service;
use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio::time::Instant;
use warp::http::{HeaderMap, Request, StatusCode, Version};
use warp::reply::Response;
use warp::Reply;

/// Connections one address may have open that never carried a credential,
/// at least: a flood from one address makes room among its own connections
/// once it has its share of the slots, so it never churns anyone else's (a
/// valid client's connections count only until their first request with a
/// credential; behind a proxy, everyone shares the proxy's address).
pub const UNPROVEN_PER_ADDRESS_MIN: usize = 16;

/// Requests without a credential one address may have in progress at once;
/// more are answered 429 at once. (Hex sends with its secret: a proxy in
/// front of hexwatch is never limited for the trusted traffic it forwards.)
pub const UNTRUSTED_PER_ADDRESS: usize = 8;

/// Tells requests that carry a valid credential from the rest, by their
/// headers alone.
pub trait Trust: Send + Sync {
    fn trusted(&self, headers: &HeaderMap) -> bool;
}

/// Trusted when any of them says so.
pub struct AnyOf(pub Vec<Arc<dyn Trust>>);

impl Trust for AnyOf {
    fn trusted(&self, headers: &HeaderMap) -> bool {
        self.0.iter().any(|t| t.trusted(headers))
    }
}

/// One open connection, as the slot table sees it.
pub(super) struct Conn {
    pub(super) id: u64,
    peer: IpAddr,
    /// Requests (HTTP/2: streams) being handled right now.
    in_flight: AtomicUsize,
    /// Those of them that carry a credential.
    trusted_in_flight: AtomicUsize,
    /// Whether it ever carried a request with a credential (Hex's keep-alive
    /// connections, between batches).
    proven: AtomicBool,
    /// Whether a request was ever handled (which timeout applies when idle).
    pub(super) served: AtomicBool,
    /// When the connection last became idle, or last started a request.
    idle_at: Mutex<Instant>,
    started_at: Mutex<Instant>,
    /// Fired to close the connection to make room for a new one.
    pub(super) evict: Notify,
}

impl Conn {
    /// When the connection became idle; `None` while a request is in progress.
    pub(super) fn idle_since(&self) -> Option<Instant> {
        (self.in_flight.load(Ordering::Acquire) == 0).then(|| *self.idle_at.lock())
    }

    /// How readily the connection gives up its slot, least first: `None`
    /// while it serves a trusted request; connections that never carried a
    /// credential before those that did (a valid client's keep-alive
    /// connection outlasts a flood of new ones); within each, the one longest
    /// without trusted work (idle since its last request or since it was
    /// opened, or busy with untrusted requests since the last one started),
    /// so a new connection is not the first to go.
    fn evictable(&self) -> Option<(bool, Instant)> {
        let proven = self.proven.load(Ordering::Acquire);
        if let Some(t) = self.idle_since() {
            return Some((proven, t));
        }
        (self.trusted_in_flight.load(Ordering::Acquire) == 0)
            .then(|| (proven, *self.started_at.lock()))
    }
}

/// The open connections.
pub(super) struct Slots {
    max: usize,
    /// Connections per address that never carried a credential, at most
    /// (an eighth of the slots, at least [`UNPROVEN_PER_ADDRESS_MIN`]).
    unproven_per_address: usize,
    pub(super) open: Mutex<(u64, HashMap<u64, Arc<Conn>>)>,
}

impl Slots {
    pub(super) fn new(max: usize) -> Slots {
        Slots {
            max: max.max(1),
            unproven_per_address: (max / 8).max(UNPROVEN_PER_ADDRESS_MIN),
            open: Mutex::new((0, HashMap::new())),
        }
    }

    /// A slot for a new connection, closing the connection longest without
    /// trusted work (see [`Conn::evictable`]) when every slot is taken (the
    /// flag says so), or one of the address's own unproven connections when it
    /// has its share open; `None` when every slot has a trusted request in
    /// progress.
    pub(super) fn admit(&self, peer: IpAddr) -> (Option<Arc<Conn>>, bool) {
        let mut guard = self.open.lock();
        let (next, open) = &mut *guard;
        let mut evicted = false;
        // An address at its share of unproven connections makes room among
        // its own; otherwise, at the limit, the most evictable of all goes.
        let own = open
            .values()
            .filter(|c| c.peer == peer && !c.proven.load(Ordering::Acquire))
            .filter_map(|c| c.evictable().map(|rank| (rank, c.id)));
        let (own_count, own_victim) = own.fold((0, None), |(n, min), x| {
            (
                n + 1,
                Some(min.map_or(x, |m: ((bool, Instant), u64)| m.min(x))),
            )
        });
        let victim = if own_count >= self.unproven_per_address {
            own_victim.map(|(_, id)| id)
        } else if open.len() >= self.max {
            let victim = open
                .values()
                .filter_map(|c| c.evictable().map(|rank| (rank, c.id)))
                .min()
                .map(|(_, id)| id);
            if victim.is_none() {
                return (None, false);
            }
            victim
        } else {
            None
        };
        if let Some(c) = victim.and_then(|id| open.remove(&id)) {
            c.evict.notify_one();
            evicted = true;
        }
        *next += 1;
        let now = Instant::now();
        let conn = Arc::new(Conn {
            id: *next,
            peer,
            in_flight: AtomicUsize::new(0),
            trusted_in_flight: AtomicUsize::new(0),
            proven: AtomicBool::new(false),
            served: AtomicBool::new(false),
            idle_at: Mutex::new(now),
            started_at: Mutex::new(now),
            evict: Notify::new(),
        });
        open.insert(conn.id, conn.clone());
        (Some(conn), evicted)
    }

    pub(super) fn release(&self, id: u64) {
        self.open.lock().1.remove(&id);
    }
}

/// Untrusted requests in progress per address.
#[derive(Default)]
pub(super) struct UntrustedPerAddress(Mutex<HashMap<IpAddr, usize>>);

/// One untrusted request counted against its address until dropped.
pub(super) struct UntrustedTurn(Arc<UntrustedPerAddress>, IpAddr);

impl UntrustedPerAddress {
    fn enter(self: &Arc<Self>, peer: IpAddr) -> Option<UntrustedTurn> {
        let mut map = self.0.lock();
        let n = map.entry(peer).or_default();
        if *n >= UNTRUSTED_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(UntrustedTurn(self.clone(), peer))
    }
}

impl Drop for UntrustedTurn {
    fn drop(&mut self) {
        let mut map = self.0 .0.lock();
        if let Some(n) = map.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.1);
            }
        }
    }
}

/// Marks one request in progress until dropped.
pub(super) struct InFlight {
    conn: Arc<Conn>,
    trusted: bool,
    /// `hexwatch_requests_in_progress`.
    gauge: Option<Gauge>,
}

impl InFlight {
    #[cfg(test)]
    pub(super) fn new(conn: &Arc<Conn>, trusted: bool) -> InFlight {
        InFlight::counted(conn, trusted, None)
    }

    /// Also counted in a gauge while it lasts.
    fn counted(conn: &Arc<Conn>, trusted: bool, gauge: Option<Gauge>) -> InFlight {
        if let Some(g) = &gauge {
            g.inc();
        }
        conn.served.store(true, Ordering::Release);
        *conn.started_at.lock() = Instant::now();
        if trusted {
            conn.trusted_in_flight.fetch_add(1, Ordering::AcqRel);
            conn.proven.store(true, Ordering::Release);
        }
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            conn: conn.clone(),
            trusted,
            gauge,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(g) = &self.gauge {
            g.dec();
        }
        *self.conn.idle_at.lock() = Instant::now();
        if self.trusted {
            self.conn.trusted_in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The hyper service: tells trusted requests from the rest, bounds the
/// rest, and counts the requests in progress on its connection.
#[derive(Clone)]
pub(super) struct Tracked<S> {
    pub(super) inner: S,
    pub(super) conn: Arc<Conn>,
    pub(super) trust: Arc<dyn Trust>,
    pub(super) untrusted: Arc<UntrustedPerAddress>,
    pub(super) untrusted_time: Duration,
    pub(super) in_progress: Gauge,
}

/// An answer made here, closing an HTTP/1 connection behind it.
fn refusal(status: StatusCode, message: &str, version: Version) -> Response {
    let body = warp::reply::json(&serde_json::json!({ "error": message }));
    let mut r = warp::reply::with_status(body, status).into_response();
    let h = r.headers_mut();
    h.insert("retry-after", "1".parse().expect("valid"));
    if version < Version::HTTP_2 {
        h.insert("connection", "close".parse().expect("valid"));
    }
    r
}

impl<S, B> Service<Request<B>> for Tracked<S>
where
    S: Service<Request<B>, Response = Response>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn call(&self, req: Request<B>) -> Self::Future {
        let version = req.version();
        let trusted = self.trust.trusted(req.headers());
        let turn = match trusted {
            true => None,
            false => match self.untrusted.enter(self.conn.peer) {
                Some(turn) => Some(turn),
                None => {
                    let r = refusal(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too many requests without credentials from this address",
                        version,
                    );
                    return Box::pin(async move { Ok(r) });
                }
            },
        };
        let busy = InFlight::counted(&self.conn, trusted, Some(self.in_progress.clone()));
        let fut = self.inner.call(req);
        let limit = self.untrusted_time;
        Box::pin(async move {
            let r = match turn {
                None => fut.await,
                Some(_turn) => match tokio::time::timeout(limit, fut).await {
                    Ok(r) => r,
                    Err(_) => Ok(refusal(
                        StatusCode::REQUEST_TIMEOUT,
                        "a request without credentials must be sent within the header timeout",
                        version,
                    )),
                },
            };
            drop(busy);
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn full_slots_evict_the_longest_idle_and_refuse_when_all_are_busy() {
        let slots = Slots::new(2);
        let (a, _) = slots.admit(PEER);
        let (b, _) = slots.admit(PEER);
        let (a, b) = (a.unwrap(), b.unwrap());
        let _busy = InFlight::new(&a, true);
        // b is idle: it makes room.
        let (c, evicted) = slots.admit(PEER);
        assert!(evicted && c.is_some());
        assert!(!slots.open.lock().1.contains_key(&b.id));
        let _busy_c = InFlight::new(c.as_ref().unwrap(), true);
        // Both left are busy: refused.
        assert!(matches!(slots.admit(PEER), (None, false)));
    }

    /// Slow bodies without a token held slots as "busy" and locked out
    /// clients with one: a connection busy only with untrusted requests now
    /// makes room as an idle one does (the longest without trusted work
    /// first), and one serving a trusted request never does.
    #[test]
    fn slow_bodies_lock_out_ingest_without_a_token() {
        let slots = Slots::new(3);
        let conns: Vec<Arc<Conn>> = (0..3).map(|_| slots.admit(PEER).0.unwrap()).collect();
        let _trusted = InFlight::new(&conns[0], true);
        let _untrusted = InFlight::new(&conns[1], false);
        // conns[1]'s untrusted request started after conns[2] was opened:
        // the idle conns[2] goes first.
        let (d, evicted) = slots.admit(PEER);
        assert!(evicted && !slots.open.lock().1.contains_key(&conns[2].id));
        let _d_trusted = InFlight::new(d.as_ref().unwrap(), true);
        // Then the one busy only with an untrusted request.
        let (e, evicted) = slots.admit(PEER);
        assert!(evicted && !slots.open.lock().1.contains_key(&conns[1].id));
        assert!(slots.open.lock().1.contains_key(&conns[0].id));
        // Every slot serving a trusted request: the next is refused.
        let _e_trusted = InFlight::new(e.as_ref().unwrap(), true);
        assert!(matches!(slots.admit(PEER), (None, false)));

        // One address gets its share of connections that carried no
        // credential, then makes room among its own.
        let slots = Slots::new(64);
        let flood: Vec<_> = (0..UNPROVEN_PER_ADDRESS_MIN)
            .map(|_| slots.admit(PEER).0.unwrap())
            .collect();
        let other: IpAddr = "192.0.2.1".parse().unwrap();
        let bystander = slots.admit(other).0.unwrap();
        let _proven = InFlight::new(&flood[0], true);
        let (_, evicted) = slots.admit(PEER);
        assert!(!evicted, "a proven connection counts no more");
        let (_, evicted) = slots.admit(PEER);
        assert!(evicted && !slots.open.lock().1.contains_key(&flood[1].id));
        assert!(slots.open.lock().1.contains_key(&bystander.id));

        let counts = Arc::new(UntrustedPerAddress::default());
        let turns: Vec<_> = (0..UNTRUSTED_PER_ADDRESS)
            .map(|_| counts.enter(PEER).unwrap())
            .collect();
        assert!(counts.enter(PEER).is_none());
        assert!(counts.enter("192.0.2.1".parse().unwrap()).is_some());
        drop(turns);
        assert!(counts.0.lock().is_empty());
    }
}
