//! Teams Workflows webhook: an Adaptive Card 1.4 in a `message`, kept under the
//! card size Teams accepts (28 KB).

use serde_json::{json, Value};

use crate::alerts::Alert;
use hexwatch_model::Severity;

use super::{actor_and_ip, context_fields, cut, is_url, marker, CHAT_CONTEXT_FIELDS};

/// Teams' card size limit, with room for the envelope.
pub const TEAMS_MAX_BYTES: usize = 27 * 1024;

/// Teams: an Adaptive Card in a Workflows `message`, under [`TEAMS_MAX_BYTES`].
pub fn teams(a: &Alert) -> Value {
    let (actor, ip) = actor_and_ip(a);
    let build = |value_max: usize, desc_max: usize, context: usize| {
        let mut facts = vec![
            json!({"title": "Rule", "value": a.id}),
            json!({"title": "Actor", "value": cut(&actor, value_max)}),
            json!({"title": "IP", "value": cut(&ip, value_max)}),
            json!({"title": "Events", "value": a.event_count.to_string()}),
            json!({"title": "First event", "value": a.first_event_at}),
            json!({"title": "Last event", "value": a.last_event_at}),
        ];
        for (k, v) in context_fields(a, context) {
            facts.push(json!({"title": k, "value": cut(&v, value_max)}));
        }
        let mut body = vec![
            json!({"type": "TextBlock", "text": cut(&format!("{} {}: {}", marker(a.severity), a.severity, a.title), 300),
                   "weight": "Bolder", "size": "Medium", "wrap": true,
                   "color": if a.severity >= Severity::High { "Attention" } else { "Default" }}),
            json!({"type": "TextBlock", "text": cut(&a.description, desc_max), "wrap": true}),
            json!({"type": "FactSet", "facts": facts}),
        ];
        if !a.runbook.is_empty() && !is_url(&a.runbook) {
            body.push(json!({"type": "TextBlock", "text": cut(&format!("Runbook: {}", a.runbook), desc_max), "wrap": true}));
        }
        let mut actions = Vec::new();
        for (title, url) in [("Runbook", &a.runbook), ("Reference", &a.reference)] {
            if is_url(url) {
                actions.push(json!({"type": "Action.OpenUrl", "title": title, "url": url}));
            }
        }
        json!({"type": "message", "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard", "version": "1.4", "body": body, "actions": actions,
            }
        }]})
    };
    // Shrink until it fits.
    for (value_max, desc_max, context) in [
        (1000, 4000, CHAT_CONTEXT_FIELDS),
        (300, 1500, 4),
        (100, 500, 0),
    ] {
        let card = build(value_max, desc_max, context);
        if card.to_string().len() <= TEAMS_MAX_BYTES {
            return card;
        }
    }
    build(50, 200, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn teams_fits() {
        assert!(teams(&super::super::big_alert()).to_string().len() <= TEAMS_MAX_BYTES);
    }
}
