//! `hexwatch coverage`: which Hex audit actions the loaded rules watch, which
//! none does, and the ATT&CK techniques they map to — as text, and as an ATT&CK
//! Navigator layer (layer format 4.5) on request.

use std::collections::{BTreeMap, BTreeSet};

use crate::actions::hex_actions;
use crate::ruleset::RuleSet;

/// ATT&CK tactic ids and the short names Navigator layers use.
const TACTICS: [(&str, &str); 14] = [
    ("TA0043", "reconnaissance"),
    ("TA0042", "resource-development"),
    ("TA0001", "initial-access"),
    ("TA0002", "execution"),
    ("TA0003", "persistence"),
    ("TA0004", "privilege-escalation"),
    ("TA0005", "defense-evasion"),
    ("TA0006", "credential-access"),
    ("TA0007", "discovery"),
    ("TA0008", "lateral-movement"),
    ("TA0009", "collection"),
    ("TA0011", "command-and-control"),
    ("TA0010", "exfiltration"),
    ("TA0040", "impact"),
];

/// What the enabled rules cover.
pub struct Coverage {
    /// Every Hex action, in Hex's order, with the rules that wait for it.
    pub actions: Vec<(&'static str, Vec<String>)>,
    /// Rules without `meta.actions`: they read every record (baselines).
    pub every_action: Vec<String>,
    /// (tactic id, technique id) → rules.
    pub techniques: BTreeMap<(String, String), BTreeSet<String>>,
}

impl Coverage {
    pub fn of(rules: &RuleSet) -> Coverage {
        let enabled: Vec<_> = rules.rules().iter().filter(|r| r.meta.enabled).collect();
        let actions = hex_actions()
            .into_iter()
            .map(|(a, _)| {
                let mut ids: Vec<String> = enabled
                    .iter()
                    .filter(|r| {
                        r.meta
                            .actions
                            .as_ref()
                            .is_some_and(|l| l.iter().any(|x| x == a))
                    })
                    .map(|r| r.meta.id.clone())
                    .collect();
                ids.sort();
                (a, ids)
            })
            .collect();
        let mut every_action: Vec<String> = enabled
            .iter()
            .filter(|r| r.meta.actions.is_none())
            .map(|r| r.meta.id.clone())
            .collect();
        every_action.sort();
        let mut techniques: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        for r in &enabled {
            let list = r
                .meta
                .reports
                .get("MITRE ATT&CK")
                .and_then(|v| v.as_array());
            for item in list.into_iter().flatten().filter_map(|v| v.as_str()) {
                let (tactic, technique) = item.split_once(':').unwrap_or(("", item));
                techniques
                    .entry((tactic.to_string(), technique.to_string()))
                    .or_default()
                    .insert(r.meta.id.clone());
            }
        }
        Coverage {
            actions,
            every_action,
            techniques,
        }
    }

    /// Actions no rule waits for.
    pub fn unwatched(&self) -> Vec<&'static str> {
        self.actions
            .iter()
            .filter(|(_, ids)| ids.is_empty())
            .map(|(a, _)| *a)
            .collect()
    }

    /// The report `hexwatch coverage` prints.
    pub fn text(&self) -> String {
        let watched = self.actions.len() - self.unwatched().len();
        let mut s = format!(
            "{watched} of {} Hex audit actions are watched by a rule; {} by none.\n",
            self.actions.len(),
            self.unwatched().len()
        );
        if !self.every_action.is_empty() {
            s.push_str(&format!(
                "Rules that read every action (baselines, correlation): {}\n",
                self.every_action.join(", ")
            ));
        }
        s.push_str("\nWatched actions:\n");
        for (a, ids) in self.actions.iter().filter(|(_, ids)| !ids.is_empty()) {
            s.push_str(&format!("  {a:<44} {}\n", ids.join(", ")));
        }
        s.push_str("\nNot watched by any rule:\n");
        for chunk in self.unwatched().chunks(3) {
            s.push_str(&format!("  {}\n", chunk.join(", ")));
        }
        let tactics: BTreeSet<&str> = self.techniques.keys().map(|(t, _)| t.as_str()).collect();
        let techniques: BTreeSet<&str> = self.techniques.keys().map(|(_, t)| t.as_str()).collect();
        s.push_str(&format!(
            "\nATT&CK: {} techniques in {} tactics\n",
            techniques.len(),
            tactics.len()
        ));
        for ((tactic, technique), ids) in &self.techniques {
            let name = tactic_name(tactic).unwrap_or(tactic);
            s.push_str(&format!(
                "  {technique:<10} {name:<22} {}\n",
                ids.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        s
    }

    /// An ATT&CK Navigator layer (format 4.5): each technique scored by how many
    /// rules detect it, the rule ids in its comment.
    pub fn navigator_layer(&self) -> serde_json::Value {
        let max = self
            .techniques
            .values()
            .map(BTreeSet::len)
            .max()
            .unwrap_or(1);
        let techniques: Vec<serde_json::Value> = self
            .techniques
            .iter()
            .map(|((tactic, technique), ids)| {
                let mut t = serde_json::json!({
                    "techniqueID": technique,
                    "score": ids.len(),
                    "comment": ids.iter().cloned().collect::<Vec<_>>().join(", "),
                    "enabled": true,
                });
                if let Some(name) = tactic_name(tactic) {
                    t["tactic"] = name.into();
                }
                t
            })
            .collect();
        serde_json::json!({
            "name": "hexwatch detections",
            "versions": {"layer": "4.5", "navigator": "4.9.1"},
            "domain": "enterprise-attack",
            "description": "Techniques detected by the hexwatch rules loaded (score: number of rules).",
            "gradient": {"colors": ["#d6e9ff", "#1f6feb"], "minValue": 0, "maxValue": max},
            "techniques": techniques,
        })
    }
}

fn tactic_name(id: &str) -> Option<&'static str> {
    TACTICS.iter().find(|(t, _)| *t == id).map(|(_, n)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine;
    use crate::ruleset::compile;
    use crate::state::MemoryState;
    use std::path::Path;
    use std::sync::Arc;

    #[test]
    fn lists_watched_unwatched_and_techniques() {
        let e = engine::build(10_000, Arc::new(MemoryState::default()));
        let src = r#"let meta = #{ id: "Share", severity: "HIGH", actions: ["SHARE_PROJECT_WITH_PUBLIC"],
            reports: #{ "MITRE ATT&CK": ["TA0010:T1567"] } }; fn rule(e) { true }"#;
        let base = r#"let meta = #{ id: "Base", severity: "LOW" }; fn rule(e) { false }"#;
        let rules = [src, base]
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Arc::new(
                    compile(
                        &e,
                        Path::new(&format!("{i}.rhai")),
                        s,
                        None,
                        &Default::default(),
                    )
                    .unwrap(),
                )
            })
            .collect();
        let c = Coverage::of(&RuleSet::new(rules));
        assert!(!c.unwatched().contains(&"SHARE_PROJECT_WITH_PUBLIC"));
        assert!(c.unwatched().contains(&"RUN_CELL"));
        assert_eq!(c.every_action, ["Base"]);
        let text = c.text();
        assert!(text.contains("1 of "), "{text}");
        assert!(text.contains("T1567      exfiltration"), "{text}");
        let layer = c.navigator_layer();
        assert_eq!(layer["techniques"][0]["techniqueID"], "T1567");
        assert_eq!(layer["techniques"][0]["tactic"], "exfiltration");
        assert_eq!(layer["domain"], "enterprise-attack");
    }
}
