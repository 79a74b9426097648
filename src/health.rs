//! Readiness as `/readyz` reports it: storage open and rules loaded, plus the
//! problems an operator should see (rule files that failed to load), and whether
//! this replica holds the evaluator lease (with PostgreSQL, one replica
//! evaluates while the others stand by; every replica is ready to receive).
//! Every replica also reports whether the cluster evaluates at all: records
//! waiting in the journal that no replica has evaluated for a while.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use arc_swap::ArcSwap;
use serde::Serialize;

#[derive(Default)]
pub struct Health {
    storage_open: AtomicBool,
    rules_loaded: AtomicBool,
    evaluator: AtomicBool,
    lag_records: AtomicI64,
    stalled_seconds: AtomicI64,
    problems: ArcSwap<Vec<String>>,
    rule_errors: ArcSwap<Vec<RuleLoadError>>,
}

/// A rule file that does not load, with the error (for the console, behind
/// its login; `/readyz` names only the file).
#[derive(Debug, Clone, Serialize)]
pub struct RuleLoadError {
    pub file: String,
    pub error: String,
}

/// The `/readyz` body.
#[derive(Debug, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub storage: bool,
    pub rules: bool,
    /// This replica holds the evaluator lease and evaluates the journal.
    pub evaluator: bool,
    /// Whether records are being evaluated, by whichever replica holds the lease.
    pub evaluation: Evaluation,
    pub problems: Vec<String>,
}

/// Evaluation seen from the journal: every replica reports it alike.
#[derive(Debug, Serialize)]
pub struct Evaluation {
    /// Records in the journal after the evaluator's committed cursor.
    pub lag_records: i64,
    /// How long records have waited with the cursor not moving (0 when
    /// nothing waits or it moved within the last check).
    pub stalled_seconds: i64,
}

impl Health {
    pub fn set_storage_open(&self) {
        self.storage_open.store(true, Ordering::Release);
    }

    pub fn set_rules_loaded(&self) {
        self.rules_loaded.store(true, Ordering::Release);
    }

    pub fn set_evaluator(&self, leased: bool) {
        self.evaluator.store(leased, Ordering::Release);
    }

    /// The journal's head against the evaluator's cursor, as last measured.
    pub fn set_evaluation(&self, lag_records: i64, stalled_seconds: i64) {
        self.lag_records.store(lag_records, Ordering::Release);
        self.stalled_seconds
            .store(stalled_seconds, Ordering::Release);
    }

    /// Replaces the list of current problems (e.g. rule files that do not compile).
    pub fn set_problems(&self, problems: Vec<String>) {
        self.problems.store(problems.into());
    }

    /// Replaces the rule files that do not load.
    pub fn set_rule_errors(&self, errors: Vec<RuleLoadError>) {
        self.rule_errors.store(errors.into());
    }

    pub fn rule_errors(&self) -> Vec<RuleLoadError> {
        self.rule_errors.load().as_ref().clone()
    }

    pub fn readiness(&self) -> Readiness {
        let storage = self.storage_open.load(Ordering::Acquire);
        let rules = self.rules_loaded.load(Ordering::Acquire);
        Readiness {
            ready: storage && rules,
            storage,
            rules,
            evaluator: self.evaluator.load(Ordering::Acquire),
            evaluation: Evaluation {
                lag_records: self.lag_records.load(Ordering::Acquire),
                stalled_seconds: self.stalled_seconds.load(Ordering::Acquire),
            },
            problems: self.problems.load().as_ref().clone(),
        }
    }
}
