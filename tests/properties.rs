//! Property-based tests of body decoding and Hex.Audit validation: any input
//! gets an answer (accepted, quarantined or refused) and never a panic; valid
//! records are accepted and keep every field they came with.

use hexwatch::ingest::{self, BodyLimits, Refused};
use proptest::prelude::*;
use serde_json::{json, Value};

const LIMITS: BodyLimits = BodyLimits {
    max_decoded_bytes: 1 << 20,
    max_records: 1000,
};

/// A Hex.Audit envelope with arbitrary text in its string fields.
fn hex_record() -> impl Strategy<Value = Value> {
    let text = "[ -~]{0,24}";
    (
        "[A-Z0-9]{26}",
        "[A-Z_]{3,30}",
        text,
        text,
        "[a-z_]{1,16}",
        0u32..2_000_000_000,
        prop::collection::vec((text, "[a-z_]{1,12}", text), 0..4),
        prop::option::of(text),
    )
        .prop_map(
            |(key, action, email, ip, extra_key, secs, targets, trace)| {
                let targets: Vec<Value> = targets
                    .into_iter()
                    .map(|(id, kind, title)| {
                        json!({"id": id, "type": kind, "metadata": {"created": false,
                            "representation": json!({"title": title}).to_string()}})
                    })
                    .collect();
                let t = chrono::DateTime::from_timestamp(i64::from(secs), 0).unwrap();
                let mut r = json!({
                    "source": "Hex",
                    "keySuffix": key,
                    "event": {
                        "actor": {"id": "u1", "type": "USER", "metadata": {"email": email}},
                        "action": action,
                        "context": {"location": ip},
                        "targets": targets,
                        "version": 1,
                        "occurred_at": t.to_rfc3339(),
                    }
                });
                r[extra_key] = json!("kept");
                if let Some(trace) = trace {
                    r["event"]["metadata"] = json!({"hexTraceId": trace, "result": "SUCCESS"});
                }
                r
            },
        )
}

/// Every field of `original` is in `stored` with the same value (the stored
/// record adds `p_*` fields; `version` becomes text).
fn contains_all(original: &Value, stored: &Value, path: &str) -> Result<(), String> {
    match (original, stored) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let sub = format!("{path}.{k}");
                let got = b.get(k).ok_or_else(|| format!("{sub} lost"))?;
                contains_all(v, got, &sub)?;
            }
            Ok(())
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .try_for_each(|(i, (x, y))| contains_all(x, y, &format!("{path}[{i}]"))),
        (Value::Number(n), Value::String(s)) if path.ends_with("version") => {
            (n.to_string() == *s).then_some(()).ok_or(path.to_string())
        }
        (a, b) if a == b => Ok(()),
        (a, b) => Err(format!("{path}: {a} became {b}")),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn any_bytes_get_an_answer_and_never_a_panic(body in prop::collection::vec(any::<u8>(), 0..2048), gz in any::<bool>()) {
        let encoding = gz.then_some("gzip");
        match ingest::prepare(&body, encoding, LIMITS, "hex") {
            Ok(p) => prop_assert_eq!(p.batch.entries.len() + p.batch.quarantine.len(), p.records),
            Err(Refused::TooLarge(_)) | Err(Refused::Unreadable(..)) => {}
        }
    }

    #[test]
    fn json_like_text_gets_an_answer(body in r#"[\[\]{}",:0-9a-z \n\t\\]{0,400}"#) {
        if let Ok(p) = ingest::prepare(body.as_bytes(), None, LIMITS, "hex") {
            prop_assert_eq!(p.batch.entries.len() + p.batch.quarantine.len(), p.records);
            prop_assert_eq!(p.errors.len(), p.batch.quarantine.len());
        }
    }

    #[test]
    fn valid_records_are_accepted_and_round_trip(
        records in prop::collection::vec(hex_record(), 1..8),
        layout in 0..3u8,
    ) {
        let body = match layout {
            0 => records.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("\n"),
            1 => Value::Array(records.clone()).to_string(),
            _ => serde_json::to_string_pretty(&records[0]).unwrap(),
        };
        let expected: &[Value] = if layout == 2 { &records[..1] } else { &records };
        let p = ingest::prepare(body.as_bytes(), None, LIMITS, "hex").unwrap();
        prop_assert!(p.batch.quarantine.is_empty(), "{:?}", p.errors);
        prop_assert_eq!(p.batch.entries.len(), expected.len());
        for (original, entry) in expected.iter().zip(&p.batch.entries) {
            let stored: Value = serde_json::from_str(&entry.json).unwrap();
            contains_all(original, &stored, "").map_err(TestCaseError::fail)?;
            prop_assert_eq!(&entry.key, &format!("ks:{}", original["keySuffix"].as_str().unwrap()));
            prop_assert_eq!(stored["p_log_type"].as_str(), Some("Hex.Audit"));
            prop_assert_eq!(entry.action.as_str(), original["event"]["action"].as_str().unwrap());
        }
    }

    #[test]
    fn a_broken_record_is_quarantined_alone(
        records in prop::collection::vec(hex_record(), 2..6),
        bad in 0usize..6,
        cut in 1usize..40,
    ) {
        let bad = bad % records.len();
        let lines: Vec<String> = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let s = r.to_string();
                if i == bad { s[..s.len().saturating_sub(cut).max(1)].to_string() } else { s }
            })
            .collect();
        let p = ingest::prepare(lines.join("\n").as_bytes(), None, LIMITS, "hex").unwrap();
        prop_assert_eq!(p.batch.entries.len(), records.len() - 1);
        prop_assert_eq!(p.batch.quarantine.len(), 1);
        prop_assert_eq!(p.errors[0].line, Some(bad + 1));
        prop_assert_eq!(&p.batch.quarantine[0].raw, &lines[bad]);
    }
}
