//! Detection rules in Rhai (SPEC §5): metadata, the sandboxed engine, the
//! read-only event value, loading and hot reload of the rules directory,
//! evaluation of one record against the rule set, and `hexwatch test`.
//!
//! Evaluation is pure apart from the rule state helpers, which go through the
//! [`crate::state::StateStore`] interface.

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
pub mod testing;
pub mod tuning;
pub mod value;
pub mod watch;
