//! Hex's audit actions (`hex-audit-actions.tsv`, as Hex lists them): what
//! rules may name in `meta.actions`, with "did you mean" for a misspelling.

use crate::meta::RuleMeta;

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
pub fn unknown_actions<'a>(
    rules: impl IntoIterator<Item = (&'a std::path::Path, &'a RuleMeta)>,
) -> Vec<String> {
    let known: std::collections::HashSet<&str> =
        hex_actions().into_iter().map(|(a, _)| a).collect();
    let mut out = Vec::new();
    for (file, meta) in rules {
        let counted = meta.count.iter().flat_map(|c| c.actions.iter().flatten());
        let listed = meta.actions.iter().flatten().map(|a| ("meta.actions", a));
        for (field, a) in listed.chain(counted.map(|a| ("meta.count actions", a))) {
            if !known.contains(a.as_str()) {
                let hint = closest_action(a)
                    .map(|c| format!("; did you mean {c}?"))
                    .unwrap_or_default();
                out.push(format!(
                    "{}: {field}: {a:?} is not a Hex audit action{hint}",
                    file.display()
                ));
            }
        }
    }
    out
}
