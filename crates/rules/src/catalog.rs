//! The rule catalogue: a Markdown table of every rule (id, severity, what it
//! detects, MITRE ATT&CK), rendered from the rules' own metadata. `rules/README.md`
//! holds it between markers, and a test keeps it identical to the rules.

use crate::ruleset::RuleSet;

pub const BEGIN: &str =
    "<!-- rules:begin (generated from the rules' metadata; a test checks it) -->";
pub const END: &str = "<!-- rules:end -->";

/// The table, one row per rule, sorted by id.
pub fn markdown(rules: &RuleSet) -> String {
    let mut rows: Vec<_> = rules.rules().iter().collect();
    rows.sort_by(|a, b| a.meta.id.cmp(&b.meta.id));
    let mut s = String::from(
        "| Rule | Severity | Fires when | Detects | MITRE ATT&CK |\n|---|---|---|---|---|\n",
    );
    for r in rows {
        let m = &r.meta;
        let when = if m.threshold > 1 {
            format!("{} matches in {} min", m.threshold, m.dedup_minutes)
        } else {
            "each match".to_string()
        };
        let mitre = m
            .reports
            .get("MITRE ATT&CK")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let file = r
            .file
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default();
        s.push_str(&format!(
            "| [`{}`]({file}) | {} | {when} | {} | {mitre} |\n",
            m.id,
            m.severity,
            m.description.replace('|', "\\|")
        ));
    }
    s
}

/// Replaces the text between the markers in `doc` with `table`.
pub fn splice(doc: &str, table: &str) -> Option<String> {
    let start = doc.find(BEGIN)? + BEGIN.len();
    let end = doc.find(END)?;
    (start <= end).then(|| format!("{}\n{}{}", &doc[..start], table, &doc[end..]))
}

/// Hex's audit actions and their target types, as Hex lists them.
const ACTIONS_TSV: &str = include_str!("hex-audit-actions.tsv");

/// Every Hex audit action with its target types, in Hex's order.
pub fn hex_actions() -> Vec<(&'static str, Vec<&'static str>)> {
    ACTIONS_TSV
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (action, targets) = l.split_once('\t')?;
            Some((action.trim(), targets.split(',').map(str::trim).collect()))
        })
        .collect()
}

/// The Hex action closest in spelling to `name`, for "did you mean".
pub fn closest_action(name: &str) -> Option<&'static str> {
    hex_actions()
        .into_iter()
        .map(|(a, _)| {
            (
                strsim::normalized_levenshtein(&name.to_ascii_uppercase(), a),
                a,
            )
        })
        .filter(|(score, _)| *score > 0.5)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, a)| a)
}

/// `meta.actions` (and `meta.count` `actions`) entries that are not Hex actions
/// (a rule that waits for them never runs, a count never counts), with the
/// closest real name.
pub fn unknown_actions(rules: &RuleSet) -> Vec<String> {
    let known: std::collections::HashSet<&str> =
        hex_actions().into_iter().map(|(a, _)| a).collect();
    let mut out = Vec::new();
    for r in rules.rules() {
        let counted = r.meta.count.iter().flat_map(|c| c.actions.iter().flatten());
        let listed = r.meta.actions.iter().flatten().map(|a| ("meta.actions", a));
        for (field, a) in listed.chain(counted.map(|a| ("meta.count actions", a))) {
            if !known.contains(a.as_str()) {
                let hint = closest_action(a)
                    .map(|c| format!("; did you mean {c}?"))
                    .unwrap_or_default();
                out.push(format!(
                    "{}: {field}: {a:?} is not a Hex audit action{hint}",
                    r.file.display()
                ));
            }
        }
    }
    out
}
