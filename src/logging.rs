//! The text log: every field's value with its control characters escaped.
//! Records carry text from outside (a project title, an e-mail, a
//! destination's error page); a newline or a terminal escape in one of them,
//! written raw, would forge log lines or rewrite the operator's terminal.

use std::fmt::Write as _;

use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::{debug_fn, Writer};
use tracing_subscriber::fmt::FormatFields;

/// `s` with every control character written as an escape (`\n`, `\r`, `\t`,
/// `\u{1b}`), everything else as it is.
pub fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// The text log's field formatter: `name=value` pairs (the message bare),
/// each value escaped.
pub fn escaped_fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    debug_fn(
        |w: &mut Writer<'_>, field: &tracing::field::Field, value: &dyn std::fmt::Debug| {
            let text = format!("{value:?}");
            let text = escape_controls(&text);
            if field.name() == "message" {
                write!(w, "{text}")
            } else {
                write!(w, "{field}={text}")
            }
        },
    )
    .delimited(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Issue 38, defect 11: newlines and escape bytes in record fields were
    /// written raw into the text log, forging lines at column 0.
    #[test]
    fn log_forging_control_characters_in_fields_are_escaped() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(escaped_fields())
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let forged = "Q3 plan\n2026-12-07T00:00:00Z ERROR hexwatch: FORGED-LINE\u{1b}[2J";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(title = %forged, actor = "a@example.com", "alert {}", "one\r\ntwo");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(
            text.contains(
                r"title=Q3 plan\n2026-12-07T00:00:00Z ERROR hexwatch: FORGED-LINE\u{1b}[2J"
            ),
            "{text}"
        );
        assert!(text.contains(r"alert one\r\ntwo"), "{text}");
        assert!(
            text.contains(r#"actor="a@example.com""#) || text.contains("actor=a@example.com"),
            "{text}"
        );
    }
}
