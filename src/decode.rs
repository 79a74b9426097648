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
}

/// How the body was laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Object,
    Array,
    Ndjson,
}

/// One record of a body: where it was, and its value or why it is not JSON.
#[derive(Debug)]
pub struct Item {
    pub index: usize,
    /// 1-based line for NDJSON bodies.
    pub line: Option<usize>,
    pub value: Result<Value, Unparsed>,
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

/// Splits a decoded body into records.
pub fn split(body: &[u8]) -> Result<(BodyFormat, Vec<Item>), BodyError> {
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .ok_or(BodyError::Empty)?;
    match body[start] {
        b'[' => split_array(body).map(|items| (BodyFormat::Array, items)),
        b'{' => split_objects(body),
        _ => Err(BodyError::NotJson(
            "expected a JSON object, a JSON array or NDJSON lines".into(),
        )),
    }
}

fn split_array(body: &[u8]) -> Result<Vec<Item>, BodyError> {
    // Fast path: the whole array parses.
    if let Ok(values) = serde_json::from_slice::<Vec<Value>>(body) {
        return Ok(values
            .into_iter()
            .enumerate()
            .map(|(index, v)| Item {
                index,
                line: None,
                value: Ok(v),
            })
            .collect());
    }
    // Slow path: find the elements' boundaries, then parse each, so one bad element
    // (too deep, say) is quarantined on its own with its index.
    let text = std::str::from_utf8(body).map_err(|e| BodyError::NotJson(e.to_string()))?;
    let raws: Vec<&RawValue> =
        serde_json::from_str(text).map_err(|e| BodyError::NotJson(e.to_string()))?;
    Ok(raws
        .into_iter()
        .enumerate()
        .map(|(index, raw)| Item {
            index,
            line: None,
            value: serde_json::from_str(raw.get()).map_err(|e| Unparsed {
                raw: raw.get().to_string(),
                reason: format!("not valid JSON: {e}"),
            }),
        })
        .collect())
}

/// A body starting with `{`: NDJSON (one compact object a line, maybe just one line)
/// or a single object pretty-printed over several lines.
fn split_objects(body: &[u8]) -> Result<(BodyFormat, Vec<Item>), BodyError> {
    let items = split_lines(body);
    let parsed = items.iter().filter(|i| i.value.is_ok()).count();
    if parsed == items.len() {
        let format = if items.len() == 1 {
            BodyFormat::Object
        } else {
            BodyFormat::Ndjson
        };
        return Ok((format, items));
    }
    // Some line failed: maybe the body is one multi-line object.
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => Ok((
            BodyFormat::Object,
            vec![Item {
                index: 0,
                line: Some(1),
                value: Ok(v),
            }],
        )),
        Err(_) if parsed > 0 => Ok((BodyFormat::Ndjson, items)),
        Err(e) => Err(BodyError::NotJson(e.to_string())),
    }
}

fn split_lines(body: &[u8]) -> Vec<Item> {
    let mut items = Vec::new();
    for (n, line) in body.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let value = serde_json::from_slice::<Value>(line).map_err(|e| Unparsed {
            raw: String::from_utf8_lossy(line).into_owned(),
            reason: format!("not valid JSON: {e}"),
        });
        items.push(Item {
            index: items.len(),
            line: Some(n + 1),
            value,
        });
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let (f, items) = split(br#"{"a":1}"#).unwrap();
        assert_eq!((f, items.len()), (BodyFormat::Object, 1));
        let (f, items) = split(b"{\n  \"a\": 1\n}\n").unwrap();
        assert_eq!((f, items.len()), (BodyFormat::Object, 1));
        let (f, items) = split(b" [{\"a\":1},{\"a\":2}]").unwrap();
        assert_eq!((f, items.len()), (BodyFormat::Array, 2));
        let (f, items) = split(b"{\"a\":1}\r\n\n{\"a\":2}\n").unwrap();
        assert_eq!(f, BodyFormat::Ndjson);
        assert_eq!(items[1].line, Some(3));
    }

    #[test]
    fn bad_ndjson_line_is_kept_with_its_line() {
        let (f, items) = split(b"{\"a\":1}\n{\"a\":\n{\"a\":3}\n").unwrap();
        assert_eq!(f, BodyFormat::Ndjson);
        let bad = items[1].value.as_ref().unwrap_err();
        assert_eq!(items[1].line, Some(2));
        assert_eq!(bad.raw, "{\"a\":");
        assert!(bad.reason.starts_with("not valid JSON"));
        assert!(items[2].value.is_ok());
    }

    #[test]
    fn not_json_at_all() {
        assert!(matches!(split(b"hello"), Err(BodyError::NotJson(_))));
        assert!(matches!(split(b"{nope"), Err(BodyError::NotJson(_))));
        assert!(matches!(split(b"[1,"), Err(BodyError::NotJson(_))));
        assert_eq!(split(b"  \n").unwrap_err(), BodyError::Empty);
    }

    #[test]
    fn too_deep_array_element_is_isolated() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let body = format!("[{{\"a\":1}},{deep}]");
        let (_, items) = split(body.as_bytes()).unwrap();
        assert!(items[0].value.is_ok());
        let bad = items[1].value.as_ref().unwrap_err();
        assert!(bad.reason.contains("recursion limit"), "{}", bad.reason);
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
