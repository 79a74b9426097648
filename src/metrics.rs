//! Prometheus metrics (`GET /metrics`): one struct that names every metric in one
//! place. Handles are cheap clones of atomics; hot paths keep the handle of their
//! label set instead of looking it up per event.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label pairs, e.g. `[("rule", "Hex.Project.SharedPublicly")]`.
pub type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    pub events_received: Counter,
    pub events_accepted: Counter,
    pub events_duplicate: Counter,
    pub events_quarantined: Counter,
    pub ingest_requests: Family<Labels, Counter>,
    pub ingest_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("hexwatch");
        let events_received = Counter::default();
        let events_accepted = Counter::default();
        let events_duplicate = Counter::default();
        let events_quarantined = Counter::default();
        let ingest_requests = Family::<Labels, Counter>::default();
        // 0.5 ms .. ~4 s
        let ingest_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "events_received",
            "Records received on the ingest endpoint (before validation)",
            events_received.clone(),
        );
        registry.register(
            "events_accepted",
            "Records validated and committed to the journal",
            events_accepted.clone(),
        );
        registry.register(
            "events_duplicate",
            "Records whose idempotency key was already in the journal",
            events_duplicate.clone(),
        );
        registry.register(
            "events_quarantined",
            "Records stored in quarantine because they are not valid Hex.Audit",
            events_quarantined.clone(),
        );
        registry.register(
            "ingest_requests",
            "Ingest requests by HTTP status",
            ingest_requests.clone(),
        );
        registry.register(
            "ingest_latency_seconds",
            "Time from the start of an ingest request to its response (including the durable commit)",
            ingest_latency.clone(),
        );
        Metrics {
            registry,
            events_received,
            events_accepted,
            events_duplicate,
            events_quarantined,
            ingest_requests,
            ingest_latency,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
