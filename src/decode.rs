//! Turning a request body into JSON values: gzip with a bound on the decoded size,
//! then format detection by content — one JSON object, a JSON array of objects
//! (Hex's "JSON" format) or NDJSON (Hex's "NDJSON" format).
//!
//! Each record keeps its position (array index, NDJSON line) so errors can name it,
//! and a record that is not JSON keeps its raw text for the quarantine.

use std::borrow::Cow;
use std::io::Read;

use flate2::read::MultiGzDecoder;
use serde_json::value::RawValue;
use serde_json::Value;

/// Why a body could not be turned into records at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("decoded body is larger than {limit} bytes (server.max_decoded_bytes)")]
    TooLarge { limit: usize },
    #[error("body is not valid gzip: {0}")]
    BadGzip(String),
    #[error("unsupported Content-Encoding {0:?}: send identity or gzip")]
    UnsupportedEncoding(String),
    #[error("body is empty")]
    Empty,
    #[error("body is not JSON or NDJSON: {0}")]
    NotJson(String),
    #[error("body holds more than {limit} records (server.max_records_per_request): split it into smaller requests")]
    TooManyRecords { limit: usize },
}

/// How the body was laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Object,
    Array,
    Ndjson,
}

/// One record of a body: where it was, and its text, parsed when asked for.
#[derive(Debug)]
pub struct Item<'a> {
    pub index: usize,
    /// 1-based line for NDJSON bodies.
    pub line: Option<usize>,
    /// The record's text.
    pub text: &'a [u8],
    /// Its value, when finding the record took parsing it already.
    pub parsed: Option<Result<Value, Unparsed>>,
}

impl Item<'_> {
    /// The record's JSON value, or why it is not JSON.
    pub fn value(self) -> Result<Value, Unparsed> {
        let text = self.text;
        self.parsed
            .unwrap_or_else(|| parse_strict(text).map_err(|e| unparsed(text, &e)))
    }
}

/// A record that is not valid JSON: its raw text (for the quarantine) and the parser's complaint.
#[derive(Debug)]
pub struct Unparsed {
    pub raw: String,
    pub reason: String,
}

/// Undoes `Content-Encoding`, refusing to produce more than `limit` bytes.
/// Bodies starting with the gzip magic are decompressed even without the header.
pub fn decompress<'a>(
    body: &'a [u8],
    content_encoding: Option<&str>,
    limit: usize,
) -> Result<Cow<'a, [u8]>, BodyError> {
    let gzip_magic = body.starts_with(&[0x1f, 0x8b]);
    let encoding = content_encoding.map(|e| e.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("") | Some("identity") if !gzip_magic => {
            if body.len() > limit {
                Err(BodyError::TooLarge { limit })
            } else {
                Ok(Cow::Borrowed(body))
            }
        }
        None | Some("") | Some("identity") | Some("gzip") | Some("x-gzip") => {
            let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
            // Read one byte past the limit to tell "exactly at the limit" from "over it".
            MultiGzDecoder::new(body)
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| BodyError::BadGzip(e.to_string()))?;
            if out.len() > limit {
                return Err(BodyError::TooLarge { limit });
            }
            Ok(Cow::Owned(out))
        }
        Some(other) => Err(BodyError::UnsupportedEncoding(other.to_string())),
    }
}

/// The records of a body, not parsed yet (but for a whole body that was
/// parsed to find out what it is): each is parsed when its value is asked for,
/// so only one record's JSON tree is alive at a time however large the body.
pub struct Split<'a> {
    pieces: Vec<Item<'a>>,
}

impl<'a> Split<'a> {
    /// Records in the body.
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The records in order (each is parsed when its value is asked for).
    pub fn into_items(self) -> impl Iterator<Item = Item<'a>> + 'a {
        self.pieces.into_iter()
    }
}

/// Splits a decoded body into at most `max_records` records. A UTF-8 byte order
/// mark before the body is skipped. Counting comes before parsing, so a body of a
/// million tiny records is refused without building a million values.
pub fn split(body: &[u8], max_records: usize) -> Result<(BodyFormat, Split<'_>), BodyError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .ok_or(BodyError::Empty)?;
    let (format, pieces) = match body[start] {
        b'[' => (BodyFormat::Array, split_array(body, max_records)?),
        b'{' => split_objects(body, max_records)?,
        _ => {
            return Err(BodyError::NotJson(
                "expected a JSON object, a JSON array or NDJSON lines".into(),
            ))
        }
    };
    Ok((format, Split { pieces }))
}

/// Parses one JSON value, refusing objects that repeat a key: JSON parsers
/// disagree on which copy wins, so a repeated key could hide an action from one
/// reader and show it to another.
pub fn parse_strict(text: &[u8]) -> Result<Value, serde_json::Error> {
    use serde::Deserialize;
    let mut de = serde_json::Deserializer::from_slice(text);
    let value = strict::StrictValue::deserialize(&mut de)?.0;
    de.end()?;
    Ok(value)
}

/// Whether `text` is one JSON value (checked without building it).
fn is_json(text: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok()
}

/// A record that did not parse, with its text kept for the quarantine.
pub fn unparsed(raw: &[u8], e: &serde_json::Error) -> Unparsed {
    let text = e.to_string();
    Unparsed {
        raw: String::from_utf8_lossy(raw).into_owned(),
        reason: if text.starts_with(strict::DUPLICATE_KEY)
            || text.starts_with(strict::TOO_MANY_KEYS)
        {
            text
        } else {
            format!("not valid JSON: {text}")
        },
    }
}

fn split_array(body: &[u8], max_records: usize) -> Result<Vec<Item<'_>>, BodyError> {
    // Find the elements' boundaries (cheap: nothing is built), so an oversized
    // body is refused early and one bad element (too deep, a repeated key) is
    // quarantined on its own with its index.
    let raws: Vec<&RawValue> =
        serde_json::from_slice(body).map_err(|e| BodyError::NotJson(e.to_string()))?;
    if raws.len() > max_records {
        return Err(BodyError::TooManyRecords { limit: max_records });
    }
    Ok(raws
        .into_iter()
        .enumerate()
        .map(|(index, raw)| Item {
            index,
            line: None,
            text: raw.get().as_bytes(),
            parsed: None,
        })
        .collect())
}

/// A body starting with `{`: NDJSON (one compact object a line, maybe just one line)
/// or a single object pretty-printed over several lines.
fn split_objects(
    body: &[u8],
    max_records: usize,
) -> Result<(BodyFormat, Vec<Item<'_>>), BodyError> {
    let lines = lines(body);
    let whole = || -> Result<Vec<Item<'_>>, serde_json::Error> {
        parse_strict(body).map(|v| {
            vec![Item {
                index: 0,
                line: Some(1),
                text: body,
                parsed: Some(Ok(v)),
            }]
        })
    };
    if lines.len() > max_records {
        // Only one large pretty-printed object may have this many lines.
        return whole()
            .map(|p| (BodyFormat::Object, p))
            .map_err(|_| BodyError::TooManyRecords { limit: max_records });
    }
    let format = if lines.len() == 1 {
        BodyFormat::Object
    } else {
        BodyFormat::Ndjson
    };
    // Hex's NDJSON: the first line is a record. Otherwise the body may be one
    // object pretty-printed over several lines.
    let first_ok = lines.first().is_some_and(|(_, text)| is_json(text));
    if !first_ok {
        match whole() {
            Ok(p) => return Ok((BodyFormat::Object, p)),
            // Not one object either: NDJSON whose bad lines are quarantined —
            // unless no line at all is JSON.
            Err(e) if !lines.iter().any(|(_, text)| is_json(text)) => {
                return Err(BodyError::NotJson(e.to_string()))
            }
            Err(_) => {}
        }
    }
    let pieces = lines
        .into_iter()
        .enumerate()
        .map(|(index, (n, text))| Item {
            index,
            line: Some(n),
            text,
            parsed: None,
        })
        .collect();
    Ok((format, pieces))
}

/// The non-blank lines of a body with their 1-based numbers, `\r` trimmed.
/// Line ends are found with `memchr` (a body of 100 records is 190 KB).
fn lines(body: &[u8]) -> Vec<(usize, &[u8])> {
    let mut start = 0;
    memchr::memchr_iter(b'\n', body)
        .chain([body.len()])
        .enumerate()
        .filter_map(|(n, end)| {
            let line = &body[start..end];
            start = end + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            (!line.iter().all(u8::is_ascii_whitespace)).then_some((n + 1, line))
        })
        .collect()
}

/// A `serde_json::Value` built by a visitor that refuses repeated object keys.
mod strict {
    use std::fmt;

    use hexwatch_model::document::MAX_KEYS;
    use serde::de::{Deserialize, Deserializer, Error, MapAccess, SeqAccess, Visitor};
    use serde_json::{Map, Number, Value};

    pub const DUPLICATE_KEY: &str = "duplicate key";
    pub const TOO_MANY_KEYS: &str = "too many keys";

    pub struct StrictValue(pub Value);

    impl<'de> Deserialize<'de> for StrictValue {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(StrictVisitor).map(StrictValue)
        }
    }

    struct StrictVisitor;

    impl<'de> Visitor<'de> for StrictVisitor {
        type Value = Value;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
            Ok(Value::Number(v.into()))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
            Ok(Value::Number(v.into()))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
            Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
        }
        fn visit_str<E>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(v.to_owned()))
        }
        fn visit_string<E>(self, v: String) -> Result<Value, E> {
            Ok(Value::String(v))
        }
        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
            while let Some(StrictValue(v)) = seq.next_element()? {
                out.push(v);
            }
            Ok(Value::Array(out))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut out = Map::new();
            while let Some(key) = map.next_key::<String>()? {
                if out.len() >= MAX_KEYS as usize {
                    return Err(A::Error::custom(format_args!(
                        "{TOO_MANY_KEYS} in one object: more than {MAX_KEYS} (refused: Hex's records have a few dozen)"
                    )));
                }
                if out.contains_key(&key) {
                    return Err(A::Error::custom(format_args!(
                        "{DUPLICATE_KEY} {key:?} in one object (refused: a repeated key can hide a value)"
                    )));
                }
                let StrictValue(v) = map.next_value()?;
                out.insert(key, v);
            }
            Ok(Value::Object(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines and their numbers are those of splitting at every newline.
    #[test]
    fn lines_are_found_as_splitting_finds_them() {
        for body in [
            &b""[..],
            b"\n",
            b"a",
            b"a\n",
            b"a\r\n\r\n \t\nb\n\nc",
            b"\n\n{}\r\n",
        ] {
            let split: Vec<(usize, &[u8])> = body
                .split(|&b| b == b'\n')
                .enumerate()
                .map(|(n, line)| (n + 1, line.strip_suffix(b"\r").unwrap_or(line)))
                .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
                .collect();
            assert_eq!(lines(body), split, "{:?}", String::from_utf8_lossy(body));
        }
    }

    /// A record's line and value.
    #[derive(Debug)]
    struct Parsed {
        line: Option<usize>,
        value: Result<Value, Unparsed>,
    }

    /// Splits and parses every record.
    fn split(body: &[u8], max: usize) -> Result<(BodyFormat, Vec<Parsed>), BodyError> {
        super::split(body, max).map(|(f, s)| {
            let parsed = s.into_items().map(|i| Parsed {
                line: i.line,
                value: i.value(),
            });
            (f, parsed.collect())
        })
    }
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn formats_are_detected() {
        let (f, items) = split(br#"{"a":1}"#, 100).unwrap();
        assert_eq!((f, items.len()), (BodyFormat::Object, 1));
        let (f, items) = split(b"{\n  \"a\": 1\n}\n", 100).unwrap();
        assert_eq!((f, items.len()), (BodyFormat::Object, 1));
        let (f, items) = split(b" [{\"a\":1},{\"a\":2}]", 100).unwrap();
        assert_eq!((f, items.len()), (BodyFormat::Array, 2));
        let (f, items) = split(b"{\"a\":1}\r\n\n{\"a\":2}\n", 100).unwrap();
        assert_eq!(f, BodyFormat::Ndjson);
        assert_eq!(items[1].line, Some(3));
    }

    #[test]
    fn bad_ndjson_line_is_kept_with_its_line() {
        let (f, items) = split(b"{\"a\":1}\n{\"a\":\n{\"a\":3}\n", 100).unwrap();
        assert_eq!(f, BodyFormat::Ndjson);
        let bad = items[1].value.as_ref().unwrap_err();
        assert_eq!(items[1].line, Some(2));
        assert_eq!(bad.raw, "{\"a\":");
        assert!(bad.reason.starts_with("not valid JSON"));
        assert!(items[2].value.is_ok());
    }

    #[test]
    fn not_json_at_all() {
        assert!(matches!(split(b"hello", 100), Err(BodyError::NotJson(_))));
        assert!(matches!(split(b"{nope", 100), Err(BodyError::NotJson(_))));
        assert!(matches!(split(b"[1,", 100), Err(BodyError::NotJson(_))));
        assert_eq!(split(b"  \n", 100).unwrap_err(), BodyError::Empty);
    }

    #[test]
    fn too_deep_array_element_is_isolated() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let body = format!("[{{\"a\":1}},{deep}]");
        let (_, items) = split(body.as_bytes(), 100).unwrap();
        assert!(items[0].value.is_ok());
        let bad = items[1].value.as_ref().unwrap_err();
        assert!(bad.reason.contains("recursion limit"), "{}", bad.reason);
    }

    #[test]
    fn utf8_bom_is_accepted() {
        let (f, items) = split(b"\xEF\xBB\xBF{\"a\":1}", 100).unwrap();
        assert_eq!((f, items.len()), (BodyFormat::Object, 1));
        let (f, items) = split(b"\xEF\xBB\xBF[{\"a\":1},{\"a\":2}]", 100).unwrap();
        assert_eq!((f, items.len()), (BodyFormat::Array, 2));
    }

    #[test]
    fn duplicate_keys_are_refused_per_record() {
        let body =
            b"{\"a\":1}\n{\"event\":{\"action\":\"RUN_PROJECT\",\"action\":\"DELETE_PROJECT\"}}\n";
        let (_, items) = split(body, 100).unwrap();
        assert!(items[0].value.is_ok());
        let bad = items[1].value.as_ref().unwrap_err();
        assert!(
            bad.reason.starts_with("duplicate key \"action\""),
            "{}",
            bad.reason
        );
        assert!(bad.raw.contains("DELETE_PROJECT"));
        // Alone in a body, and inside an array, the record is quarantined the same way.
        let (_, items) = split(br#"{"k":1,"k":2}"#, 100).unwrap();
        assert!(items[0].value.is_err());
        let (_, items) = split(br#"[{"k":1},{"k":1,"k":2}]"#, 100).unwrap();
        assert!(items[0].value.is_ok() && items[1].value.is_err());
        // Keys repeated in different objects are fine.
        assert!(parse_strict(br#"{"a":{"k":1},"b":{"k":2}}"#).is_ok());
    }

    #[test]
    fn records_per_request_are_capped_before_parsing() {
        let many = "{}\n".repeat(101);
        assert_eq!(
            split(many.as_bytes(), 100).unwrap_err(),
            BodyError::TooManyRecords { limit: 100 }
        );
        let array = format!("[{}{{}}]", "{},".repeat(100));
        assert_eq!(
            split(array.as_bytes(), 100).unwrap_err(),
            BodyError::TooManyRecords { limit: 100 }
        );
        // A pretty-printed object with more lines than the cap is still one record.
        let pretty = format!(
            "{{\n{}\"z\": 0\n}}",
            (0..200)
                .map(|i| format!("\"k{i}\": {i},\n"))
                .collect::<String>()
        );
        let (f, items) = split(pretty.as_bytes(), 100).unwrap();
        assert_eq!((f, items.len()), (BodyFormat::Object, 1));
    }

    #[test]
    fn gzip_is_bounded() {
        let data = vec![b' '; 10_000];
        let gz = gzip(&data);
        assert_eq!(decompress(&gz, Some("gzip"), 10_000).unwrap().len(), 10_000);
        assert_eq!(
            decompress(&gz, Some("gzip"), 9_999).unwrap_err(),
            BodyError::TooLarge { limit: 9_999 }
        );
        // Detected by magic bytes without the header.
        assert_eq!(decompress(&gz, None, 10_000).unwrap().len(), 10_000);
        assert!(matches!(
            decompress(b"\x1f\x8bnot gzip", Some("gzip"), 100),
            Err(BodyError::BadGzip(_))
        ));
        assert!(matches!(
            decompress(b"{}", Some("br"), 100),
            Err(BodyError::UnsupportedEncoding(_))
        ));
    }
}
