//! From one request body to a journal batch: decompress, split into records,
//! validate each against Hex.Audit, and prepare what the journal stores —
//! accepted records and quarantined ones with their reasons. Pure CPU work, no I/O;
//! the receiver runs it off the async workers.

use serde::Serialize;

use crate::decode::{self, BodyError, BodyFormat};
use crate::event::{self, ParseContext};
use crate::journal::{Batch, Entry, Quarantined};

/// At most this many per-record errors are echoed in one response (all are quarantined).
pub const MAX_REPORTED_ERRORS: usize = 1000;

/// A per-record error as the HTTP response reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RecordError {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    pub error: String,
}

/// A body turned into a batch, with what the response needs to say about it.
#[derive(Debug)]
pub struct Prepared {
    pub format: BodyFormat,
    pub batch: Batch,
    pub errors: Vec<RecordError>,
    /// Records in the body (accepted + quarantined).
    pub records: usize,
    /// Size of the body after decompression.
    pub decoded_bytes: usize,
}

/// Why a body was refused as a whole.
#[derive(Debug)]
pub enum Refused {
    /// Over `max_decoded_bytes` or `max_records_per_request`: 413, nothing stored.
    TooLarge(BodyError),
    /// Not readable as JSON / NDJSON: 400. The body is kept in quarantine.
    Unreadable(BodyError, Quarantined),
}

/// Decodes, splits and validates a body.
/// Limits on one body.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// After decompression (`server.max_decoded_bytes`).
    pub max_decoded_bytes: usize,
    /// Records in one body (`server.max_records_per_request`).
    pub max_records: usize,
}

pub fn prepare(
    body: &[u8],
    content_encoding: Option<&str>,
    limits: BodyLimits,
    source_label: &str,
) -> Result<Prepared, Refused> {
    let decoded = match decode::decompress(body, content_encoding, limits.max_decoded_bytes) {
        Ok(d) => d,
        Err(e @ BodyError::TooLarge { .. }) => return Err(Refused::TooLarge(e)),
        Err(e) => {
            let q = whole_body(&e, body);
            return Err(Refused::Unreadable(e, q));
        }
    };
    let (format, items) = match decode::split(&decoded, limits.max_records) {
        Ok(x) => x,
        Err(e @ BodyError::TooManyRecords { .. }) => return Err(Refused::TooLarge(e)),
        Err(e) => {
            let q = whole_body(&e, &decoded);
            return Err(Refused::Unreadable(e, q));
        }
    };

    let ctx = ParseContext::new(source_label);
    let records = items.len();
    let mut batch = Batch {
        entries: Vec::with_capacity(records),
        quarantine: Vec::new(),
    };
    let mut errors = Vec::new();
    for item in items.into_items() {
        let (reason, raw) = match item.value {
            Ok(value) => match event::validate(value, &ctx) {
                Ok(record) => {
                    batch.entries.push(entry(record, Some(item.text)));
                    continue;
                }
                Err((e, original)) => (e.to_string(), original.to_string()),
            },
            Err(unparsed) => (unparsed.reason, unparsed.raw),
        };
        if errors.len() < MAX_REPORTED_ERRORS {
            errors.push(RecordError {
                index: item.index,
                line: item.line,
                error: reason.clone(),
            });
        }
        batch.quarantine.push(Quarantined {
            index: Some(item.index),
            line: item.line,
            reason,
            raw,
        });
    }
    Ok(Prepared {
        format,
        batch,
        errors,
        records,
        decoded_bytes: decoded.len(),
    })
}

/// A quarantine row for a body that could not be read at all.
fn whole_body(e: &BodyError, body: &[u8]) -> Quarantined {
    let raw = match std::str::from_utf8(body) {
        Ok(s) => s.to_string(),
        // Binary (e.g. broken gzip): keep it exactly, hex-encoded.
        Err(_) => format!("hex:{}", hex::encode(body)),
    };
    Quarantined {
        index: None,
        line: None,
        reason: e.to_string(),
        raw,
    }
}

/// A valid record as the journal stores it; `raw` is the text it was parsed
/// from, kept as it came when normalising changed nothing.
pub fn entry(record: event::Record, raw: Option<&[u8]>) -> Entry {
    Entry {
        action: record.action().to_string(),
        event_time: record.value["p_event_time"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        json: record.json(raw),
        key: record.key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BodyLimits = BodyLimits {
        max_decoded_bytes: 1 << 20,
        max_records: 1000,
    };

    const GOOD: &str = r#"{"event":{"actor":{"id":"u"},"action":"RUN_PROJECT","occurred_at":"2024-01-01T00:00:00Z"},"keySuffix":"K1"}"#;

    #[test]
    fn mixed_ndjson_batch() {
        let body = format!(
            "{GOOD}\n{{\"event\":{{\"actor\":{{}},\"action\":\"X\",\"occurred_at\":\"yesterday\"}}}}\nnot json\n"
        );
        let p = prepare(body.as_bytes(), None, LIMITS, "hex").unwrap();
        assert_eq!(p.format, BodyFormat::Ndjson);
        assert_eq!(p.records, 3);
        assert_eq!(p.batch.entries.len(), 1);
        assert_eq!(p.batch.entries[0].key, "ks:K1");
        assert_eq!(p.batch.entries[0].action, "RUN_PROJECT");
        assert_eq!(p.batch.quarantine.len(), 2);
        assert_eq!(
            p.errors[0],
            RecordError {
                index: 1,
                line: Some(2),
                error: "event.occurred_at: expected an RFC 3339 timestamp, got \"yesterday\""
                    .into()
            }
        );
        assert_eq!(p.errors[1].line, Some(3));
        assert_eq!(p.batch.quarantine[1].raw, "not json");
        // The quarantined record keeps its original text.
        assert!(p.batch.quarantine[0].raw.contains("yesterday"));
    }

    #[test]
    fn unreadable_body_is_quarantined_whole() {
        match prepare(b"hello", None, LIMITS, "hex") {
            Err(Refused::Unreadable(_, q)) => assert_eq!(q.raw, "hello"),
            other => panic!("{other:?}"),
        }
        match prepare(b"\x1f\x8b\x08garbage\xff", None, LIMITS, "hex") {
            Err(Refused::Unreadable(BodyError::BadGzip(_), q)) => {
                assert!(q.raw.starts_with("hex:1f8b"))
            }
            other => panic!("{other:?}"),
        }
    }
}
