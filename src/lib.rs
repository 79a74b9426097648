//! hexwatch: a self-hosted detection daemon for the Hex audit log stream.
//!
//! This crate is the application: it sits on the workspace's lower layers,
//! `hexwatch_model` (severities, the record document, alerts),
//! `hexwatch_storage` (everything durable: SQLite, PostgreSQL, memory) and
//! `hexwatch_rules` (the Rhai engine, rule loading and evaluation, rule state),
//! none of which imports it. Data flows one way, one module per stage:
//!
//! - [`receiver`] — the HTTP API (warp): auth, bounded bodies, `/healthz`, `/readyz`, `/metrics`.
//! - [`decode`] — gzip and body formats (JSON object, JSON array, NDJSON) into JSON values.
//! - [`event`] — the Hex.Audit schema: validation, normalisation, `p_*` fields.
//! - [`ingest`] — one body into one journal batch (accepted records and quarantine).
//! - [`journal`] — the durable journal with group commits; consumers follow it by cursor.
//! - [`evaluator`] — follows the journal (on shared storage, only the replica holding
//!   the evaluator lease) and hands each batch to [`evaluation`].
//! - [`evaluation`] — a batch of records into its effects: runs the rules on each record,
//!   applies matches to the [`alerts`] windows; the storage commits them in one transaction.
//! - [`alerts`] — dedup and threshold windows (the decision; where windows live is
//!   behind [`alerts::AlertStore`]).
//! - [`incidents`] — created alerts grouped into incidents, silences, and the
//!   notifier that makes each incident's notifications when they fall due.
//! - [`dispatch`] — the delivery outbox, one worker per destination (retries, rate limit),
//!   and how an alert becomes a request: webhook, slack, teams, pagerduty, opsgenie, e-mail.
//!
//! Around them: [`config`] (the config file), [`ingest_secret`] (the ingest secret),
//! [`hot_reload`] (the rules directory watched), [`rule_tests`] (`hexwatch test`),
//! [`stage_thread`] (background threads with a stop flag), [`health`]
//! and [`metrics`] (what operators see), [`server`] (accept loop, TLS, graceful
//! shutdown), [`tls`] (the certificate served), [`console`] (the triage console),
//! [`replay`] (the same evaluation over files) and [`daemon`], the one module
//! that wires the stages together.

/// `hexwatch --version`: the package version and the git revision it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("HEXWATCH_GIT_REVISION"),
    ")"
);

pub mod alerts;
pub mod config;
pub mod console;
pub mod daemon;
pub mod decode;
pub mod dispatch;
pub mod evaluation;
pub mod evaluator;
pub mod event;
pub mod health;
pub mod hot_reload;
pub mod incidents;
pub mod ingest;
pub mod ingest_secret;
pub mod journal;
pub mod logging;
pub mod metrics;
pub mod receiver;
pub mod replay;
pub mod rule_tests;
pub mod server;
pub mod stage_thread;
pub mod tls;
