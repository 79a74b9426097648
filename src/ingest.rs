//! From one request body to a journal batch: decompress, split into records,
//! validate each against Hex.Audit, and prepare what the journal stores —
//! accepted records and quarantined ones with their reasons. Pure CPU work, no I/O;
//! the receiver runs it off the async workers.

use serde::Serialize;

use crate::decode::{self, BodyError, BodyFormat, Item};
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
        let (index, line) = (item.index, item.line);
        let (reason, raw) = match admit(item, &ctx) {
            Ok(entry) => {
                batch.entries.push(entry);
                continue;
            }
            Err(rejected) => rejected,
        };
        if errors.len() < MAX_REPORTED_ERRORS {
            errors.push(RecordError {
                index,
                line,
                error: reason.clone(),
            });
        }
        batch.quarantine.push(Quarantined {
            index: Some(index),
            line,
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

/// One record of a body made a journal entry: the short way when it is in
/// the shape Hex sends ([`event::accept_as_sent`]), else through its JSON
/// value. If it cannot be: why, and the text the quarantine keeps.
pub fn admit(item: Item<'_>, ctx: &ParseContext<'_>) -> Result<Entry, (String, String)> {
    if item.parsed.is_none() {
        if let Some(a) = event::accept_as_sent(item.text, ctx) {
            return Ok(Entry {
                key: a.key,
                event_time: a.event_time,
                action: a.action,
                json: std::sync::Arc::new(a.json),
                tree: Some(a.tree),
            });
        }
    }
    let text = item.text;
    match item.value() {
        Ok(value) => match event::validate(value, ctx) {
            Ok(record) => Ok(entry(record, Some(text))),
            Err((e, original)) => Err((e.to_string(), original.to_string())),
        },
        Err(unparsed) => Err((unparsed.reason, unparsed.raw)),
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
        json: std::sync::Arc::new(record.json(raw)),
        key: record.key,
        tree: None,
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

    /// Every record the short way takes is stored exactly as the long way
    /// stores it, and its tree is its stored text parsed; what it leaves goes
    /// the long way, with the long way's errors.
    #[test]
    fn short_way_stores_what_the_long_way_would() {
        use hexwatch_model::document::{Node, RecordObject};
        let documented: serde_json::Value =
            serde_json::from_str(include_str!("../tests/fixtures/hex_documented_event.json"))
                .unwrap();
        let hex = documented.to_string();
        let mut texts: Vec<String> = include_str!("../examples/samples/normal_days.ndjson")
            .lines()
            .map(str::to_string)
            .collect();
        texts.push(serde_json::to_string_pretty(&documented).unwrap());
        // (text, whether the short way takes it)
        let variants: Vec<(String, bool)> = vec![
            (hex.clone(), true),
            (hex.replace(r#""version":1"#, r#""version":"1""#), true),
            (hex.replace(r#""version":1"#, r#""version":1.0"#), false),
            (hex.replace(r#""version":1"#, r#""version":true"#), false),
            (hex.replace(r#""keySuffix":""#, r#""keySuffix":7,"x":""#), false),
            // No key to take but a hash of the whole record: the long way.
            (hex.replace(r#""keySuffix":""#, r#""keySuffix":"","x":""#), false),
            (hex.replace(r#""keySuffix":""#, r#""p_row_id":"1","x":""#), false),
            (hex.replace(r#""metadata":{"representation""#, r#""metadata":{"created":"false","representation""#), false),
            (hex.replace(r#""metadata":{"representation""#, r#""metadata":{"created":"no","representation""#), false),
            (hex.replace(r#""metadata":{"representation""#, r#""metadata":{"created":null,"representation""#), true),
            (hex.replace(r#""metadata":{"representation""#, r#""metadata":{"created":false,"representation""#), true),
            (hex.replace(r#""type":"USER""#, r#""type":1"#), false),
            (hex.replace(r#""occurred_at":""#, r#""occurred_at":"x"#), false),
            (hex.replace(r#""timestamp":""#, r#""timestamp":"x"#), false),
            (hex.replace(r#""timestamp":"2024-04-12T15:38:26.000Z""#, r#""timestamp":null"#), true),
            (hex.replace(r#""action":""#, r#""action":"","x":""#), false),
            (hex.replace(r#""source":"Hex""#, r#""source":"Hex","source":"Hex""#), false),
            (hex.replace(r#""targets":["#, r#""targets":[1,"#), false),
            (hex.replace(r#""location":""#, r#""location":"","x":""#), true),
            (hex.replace(r#""event":{"#, r#""event":{"metadata":null,"#), true),
            (hex.replace(r#""event":{"#, r#""event":{"metadata":{"isRefreshingKey":"true","hexTraceId":"t"},"#), false),
            (hex.replace(r#""event":{"#, r#""event":{"metadata":{"isRefreshingKey":true,"hexTraceId":"t"},"#), true),
            (hex.replace(r#""event":{"#, r#""event":{"metadata":{"hexTraceId":7},"#), false),
            (hex.replace(r#""actor":{"#, r#""actor":{"metadata":null,"#), false),
            (hex.replace("\"", "\" ").replace(": \"", ":\"").replace("\" ", "\""), true),
            (r#"{"event":{"id":"e1","actor":{"id":"u"},"action":"X","occurred_at":"2024-01-01T00:00:00Z"}}"#.into(), true),
            (r#"{"event":{"actor":{"id":"u"},"action":"X","occurred_at":"2024-01-01T00:00:00Z"}}"#.into(), false),
            (r#"{"event":{"actor":{"id":"u"},"action":"X","\u0076ersion":4,"id":"e","occurred_at":"2024-01-01T00:00:00Z"}}"#.into(), false),
            ("[1]".into(), false),
            ("{\"a\":\u{ff}}".into(), false),
        ];
        let expected: Vec<bool> = variants.iter().map(|v| v.1).collect();
        texts.extend(variants.iter().map(|v| v.0.clone()));
        let ctx = ParseContext::new("hex");
        let no_row_id = |json: &str| {
            let at = json.find("\"p_row_id\":\"").expect("p_row_id") + 12;
            format!("{}{}", &json[..at], &json[at + 32..])
        };
        let mut taken = Vec::new();
        for text in &texts {
            let short = event::accept_as_sent(text.as_bytes(), &ctx);
            let long = decode::parse_strict(text.as_bytes())
                .map_err(|e| e.to_string())
                .and_then(|v| event::validate(v, &ctx).map_err(|(e, _)| e.to_string()))
                .map(|r| entry(r, Some(text.as_bytes())));
            taken.push(short.is_some());
            let Some(short) = short else { continue };
            let long = long.unwrap_or_else(|e| panic!("{text}: the long way refuses it: {e}"));
            assert_eq!(
                (&short.key, &short.action, &short.event_time),
                (&long.key, &long.action, &long.event_time),
                "{text}"
            );
            assert_eq!(no_row_id(&short.json), no_row_id(&long.json), "{text}");
            let stored: serde_json::Value = serde_json::from_str(&short.json).unwrap();
            assert_eq!(Node::Obj(short.tree.obj()).to_json(), stored, "{text}");
            let reparsed = RecordObject::parse(&short.json).unwrap();
            assert_eq!(
                short
                    .tree
                    .obj()
                    .entries()
                    .map(|(k, _)| k)
                    .collect::<Vec<_>>(),
                reparsed.obj().entries().map(|(k, _)| k).collect::<Vec<_>>()
            );
        }
        let n = texts.len() - variants.len();
        assert!(
            taken[..n].iter().all(|t| *t),
            "every sample record goes the short way"
        );
        assert_eq!(&taken[n..], &expected[..]);
    }
}
