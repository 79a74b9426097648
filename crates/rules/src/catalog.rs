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
