//! Body and subject templates (minijinja) for webhook and e-mail destinations,
//! with the alert as `alert`, under the field names of the alert JSON (docs/destinations.md):
//! `{{ alert.title }}`, `{{ alert.severity }}`, `{{ alert.eventCount }}`,
//! `{{ alert.alertContext.ip }}`, `{{ alert.events | tojson }}`.
//!
//! For a JSON content type every value printed is JSON-escaped (without quotes),
//! so `"{{ alert.title }}"` stays valid JSON whatever the title holds; `tojson`
//! output is printed as it is. Rendering is bounded (fuel), and undefined
//! attributes are errors, so a typo is caught by `hexwatch check` rather than
//! sent as an empty field.

use minijinja::value::Serde;
use minijinja::{Environment, UndefinedBehavior, Value};

use crate::alerts::Alert;
use crate::config::{Destination, DestinationKind, HttpFormat};
use crate::dispatch::DestinationError;
use hexwatch_model::Severity;

/// Template instructions one rendering may execute.
const FUEL: u64 = 200_000;

fn environment(json: bool) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    // Errors name what was undefined and where, in release builds too.
    env.set_debug(true);
    if json {
        env.set_formatter(|out, _state, value| {
            if value.is_safe() {
                return out
                    .write_str(value.as_str().unwrap_or_default())
                    .map_err(Into::into);
            }
            let text = match value.as_str() {
                Some(s) => s.to_string(),
                None => value.to_string(),
            };
            let quoted = serde_json::to_string(&text).expect("a string");
            out.write_str(&quoted[1..quoted.len() - 1])
                .map_err(Into::into)
        });
    }
    env
}

/// Whether a content type is JSON (`application/json`, `application/x+json`).
pub fn is_json(content_type: &str) -> bool {
    let base = content_type.split(';').next().unwrap_or("").trim();
    base.eq_ignore_ascii_case("application/json") || base.to_ascii_lowercase().ends_with("+json")
}

/// Why a template did not render.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("the alert cannot be read: {0}")]
    Alert(#[from] serde_json::Error),
    #[error("{}", with_detail(.0))]
    Template(#[from] minijinja::Error),
}

/// minijinja's message, with its detail when the message does not carry it.
fn with_detail(e: &minijinja::Error) -> String {
    let s = e.to_string();
    match e.detail() {
        Some(d) if !s.contains(d) => format!("{s}: {d}"),
        _ => s,
    }
}

/// Renders `source` with the alert.
pub fn render(source: &str, alert: &Alert, json: bool) -> Result<String, RenderError> {
    let env = environment(json);
    // Through serde_json's tree: sample events are kept as raw JSON text,
    // which only serde_json's own serialisers read as JSON.
    let alert = serde_json::to_value(alert)?;
    let ctx = minijinja::context! { alert => Value::from(Serde(&alert)) };
    Ok(env.render_str(source, ctx)?)
}

/// Renders every template of a destination against a sample alert (`hexwatch
/// check`, and at startup): a template that does not render — or a JSON body
/// that is not JSON — is a config error, not a delivery-time surprise.
pub fn check(d: &Destination) -> Result<(), DestinationError> {
    let alert = crate::dispatch::formats::sample_alert(Severity::High);
    let rendered = |setting: &'static str, source: &str, json: bool| {
        render(source, &alert, json).map_err(|e| DestinationError::setting(setting, e))
    };
    match &d.kind {
        DestinationKind::Webhook(w) => {
            if let HttpFormat::Template { body, content_type } = &w.format {
                let json = is_json(content_type);
                let out = rendered("body_template", body, json)?;
                if json {
                    serde_json::from_str::<serde_json::Value>(&out).map_err(|e| {
                        DestinationError::setting(
                            "body_template",
                            format!(
                                "renders text that is not JSON ({e}): {}",
                                crate::dispatch::formats::cut(&out, 200)
                            ),
                        )
                    })?;
                }
            }
        }
        DestinationKind::Email(e) => {
            if let Some(t) = &e.subject_template {
                rendered("subject_template", t, false)?;
            }
            if let Some(t) = &e.body_template {
                rendered("body_template", t, false)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_bodies_escape_values_and_errors_are_caught() {
        let mut a = crate::dispatch::formats::sample_alert(Severity::High);
        a.title = "quote \" and \\ backslash\nnewline".into();
        let out = render(
            r#"{"text": "{{ alert.title }}", "sev": "{{ alert.severity }}", "n": {{ alert.eventCount }}, "ctx": {{ alert.alertContext | tojson }}}"#,
            &a,
            true,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["text"], a.title);
        assert_eq!(v["sev"], "HIGH");
        assert_eq!(v["n"], 1);
        assert_eq!(v["ctx"]["note"], "synthetic");
        assert!(render("{{ alert.titel }}", &a, false).is_err());
        assert!(render("{% if %}", &a, false).is_err());
        assert!(render(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            &a,
            false
        )
        .is_err());
        assert!(
            is_json("application/json; charset=utf-8")
                && is_json("application/vnd.x+json")
                && !is_json("text/plain")
        );
    }
}
