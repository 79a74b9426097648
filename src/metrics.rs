//! Prometheus metrics (`GET /metrics`): one struct that names every metric in one
//! place. Handles are cheap clones of atomics; hot paths keep the handle of their
//! label set instead of looking it up per event.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use hexwatch_rules::ruleset::{CounterRegistry, RuleCounters};

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
    pub rule_evaluations: Family<Labels, Counter>,
    pub rule_matches: Family<Labels, Counter>,
    pub rule_errors: Family<Labels, Counter>,
    pub rule_suppressed: Family<Labels, Counter>,
    pub rules_loaded: Gauge,
    pub rules_broken: Gauge,
    pub rule_reloads: Family<Labels, Counter>,
    pub evaluator_lag: Gauge,
    pub evaluation_stalled: Gauge,
    pub alerts: Family<Labels, Counter>,
    pub alerts_silenced: Family<Labels, Counter>,
    pub incident_notifications: Counter,
    pub deliveries: Family<Labels, Counter>,
    pub delivery_queue_depth: Family<Labels, Gauge>,
    pub connections_open: Gauge,
    pub requests_in_progress: Gauge,
    pub connections_closed: Family<Labels, Counter>,
    pub pruned_rows: Family<Labels, Counter>,
    pub ingest_secret_used: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("hexwatch");
        let metrics = Metrics {
            registry: Registry::default(),
            events_received: Default::default(),
            events_accepted: Default::default(),
            events_duplicate: Default::default(),
            events_quarantined: Default::default(),
            ingest_requests: Default::default(),
            // 0.5 ms .. ~4 s
            ingest_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            rule_evaluations: Default::default(),
            rule_matches: Default::default(),
            rule_errors: Default::default(),
            rule_suppressed: Default::default(),
            rules_loaded: Default::default(),
            rules_broken: Default::default(),
            rule_reloads: Default::default(),
            evaluator_lag: Default::default(),
            evaluation_stalled: Default::default(),
            alerts: Default::default(),
            alerts_silenced: Default::default(),
            incident_notifications: Default::default(),
            deliveries: Default::default(),
            delivery_queue_depth: Default::default(),
            connections_open: Default::default(),
            requests_in_progress: Default::default(),
            connections_closed: Default::default(),
            pruned_rows: Default::default(),
            ingest_secret_used: Default::default(),
        };
        metrics.register_ingest(&mut registry);
        metrics.register_rules(&mut registry);
        metrics.register_effects(&mut registry);
        Metrics {
            registry,
            ..metrics
        }
    }

    /// What arrives: records, requests, connections.
    fn register_ingest(&self, registry: &mut Registry) {
        registry.register(
            "events_received",
            "Records received on the ingest endpoint (before validation)",
            self.events_received.clone(),
        );
        registry.register(
            "events_accepted",
            "Records validated and committed to the journal",
            self.events_accepted.clone(),
        );
        registry.register(
            "events_duplicate",
            "Records whose idempotency key was already in the journal",
            self.events_duplicate.clone(),
        );
        registry.register(
            "events_quarantined",
            "Records stored in quarantine because they are not valid Hex.Audit",
            self.events_quarantined.clone(),
        );
        registry.register(
            "ingest_requests",
            "Ingest requests by HTTP status",
            self.ingest_requests.clone(),
        );
        registry.register("ingest_latency_seconds", "Time from the start of an ingest request to its response (including the durable commit)", self.ingest_latency.clone());
        registry.register(
            "connections_open",
            "Client connections open on the HTTP listener",
            self.connections_open.clone(),
        );
        registry.register(
            "requests_in_progress",
            "HTTP requests (HTTP/2 streams) being handled on the listeners",
            self.requests_in_progress.clone(),
        );
        registry.register("connections_closed", "Client connections closed by the server before the client was done, by reason (refused at the limit, evicted to make room, header or idle timeout)", self.connections_closed.clone());
    }

    /// What the rules do with it.
    fn register_rules(&self, registry: &mut Registry) {
        registry.register(
            "rule_evaluations",
            "Records evaluated by each rule",
            self.rule_evaluations.clone(),
        );
        registry.register(
            "rule_matches",
            "Matches of each rule",
            self.rule_matches.clone(),
        );
        registry.register(
            "rule_errors",
            "Rule errors (exceptions, limits) of each rule",
            self.rule_errors.clone(),
        );
        registry.register("rule_suppressed", "Matches of each rule dropped by a configured suppression (their records stay in the journal)", self.rule_suppressed.clone());
        registry.register(
            "rules_loaded",
            "Rules currently loaded",
            self.rules_loaded.clone(),
        );
        registry.register(
            "rules_broken",
            "Rule files that do not load right now (their previous version, if any, keeps running)",
            self.rules_broken.clone(),
        );
        registry.register(
            "rule_reloads",
            "Rule directory reloads by outcome (ok, error)",
            self.rule_reloads.clone(),
        );
        registry.register(
            "evaluator_lag_records",
            "Records in the journal (any replica's) after the evaluator's committed cursor",
            self.evaluator_lag.clone(),
        );
        registry.register(
            "evaluation_stalled_seconds",
            "How long records have waited in the journal with no replica evaluating them (0 while evaluation moves); alert on it",
            self.evaluation_stalled.clone(),
        );
    }

    /// What comes of it: alerts, deliveries, pruning.
    fn register_effects(&self, registry: &mut Registry) {
        registry.register(
            "alerts",
            "Alerts created, by rule and severity",
            self.alerts.clone(),
        );
        registry.register(
            "alerts_silenced",
            "Alerts a silence held back (recorded, not notified), by rule",
            self.alerts_silenced.clone(),
        );
        registry.register(
            "incident_notifications",
            "Incident notifications queued (opened, updated, reminders)",
            self.incident_notifications.clone(),
        );
        registry.register("deliveries", "Delivery attempts by destination and outcome (delivered; retry: failed, will be retried; abandoned: failed past the retry horizon)", self.deliveries.clone());
        registry.register(
            "delivery_queue_depth",
            "Deliveries waiting to be sent, by destination",
            self.delivery_queue_depth.clone(),
        );
        registry.register(
            "pruned_rows",
            "Rows deleted by retention pruning, by table",
            self.pruned_rows.clone(),
        );
        registry.register(
            "ingest_secret_used",
            "Ingest requests that presented the previous secret during a rotation (secret=\"previous\")",
            self.ingest_secret_used.clone(),
        );
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

impl CounterRegistry for Metrics {
    /// The counters of one rule, registered under its id.
    fn rule_counters(&self, id: &str) -> RuleCounters {
        let labels = vec![("rule", id.to_string())];
        RuleCounters {
            evaluations: self.rule_evaluations.get_or_create(&labels).clone(),
            matches: self.rule_matches.get_or_create(&labels).clone(),
            errors: self.rule_errors.get_or_create(&labels).clone(),
            suppressed: self.rule_suppressed.get_or_create(&labels).clone(),
        }
    }
}
