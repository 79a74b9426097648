//! Detection rules in Rhai: metadata, the sandboxed engine and its helpers,
//! loading and tuning of the rules directory, the evaluation of one record
//! against the rule set, and the rule state the helpers keep.
//!
//! Evaluation does no I/O of its own: rule state goes through the
//! [`state::StateStore`] interface, which the storage (or memory) backs.
//!
//! - [`meta`] — a rule's metadata, checked when it loads.
//! - [`engine`] — the sandboxed Rhai engine and the helpers rules call.
//! - [`names`], [`baseline`], [`facts`], [`recent`] — what the stream teaches:
//!   names of things seen by id, each account's usual networks and age.
//! - [`tuning`] — overrides, parameters and suppressions from the config file.
//! - [`ruleset`] — loading and reloading the rules directory into a [`ruleset::RuleSet`].
//! - [`eval`] — one record against the rule set: its matches.
//! - [`catalog`], [`coverage`] — what the rules watch, for documentation and `coverage`.
//! - [`state`] — rule state as rules see it (counters, sets, values with TTLs on event time).

pub mod actions;
pub mod baseline;
pub mod catalog;
pub mod coverage;
pub mod engine;
pub mod eval;
pub mod facts;
pub mod meta;
pub mod names;
pub mod recent;
pub mod ruleset;
pub mod state;
pub mod tuning;
