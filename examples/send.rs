//! Streams a recorded Hex audit file to a running hexwatch the way Hex's
//! "Generic HTTPS" log stream does: batches of records, the auth header, Hex's
//! "JSON" (an array per request) or "NDJSON" format.
//!
//!     HEXWATCH_SECRET=demo cargo run --release --example send -- examples/samples/incident.json
//!
//! Options: --url URL (default http://127.0.0.1:8080/ingest/hex), --format json|ndjson
//! (default ndjson), --batch N (default 100), --gzip. The secret comes from
//! HEXWATCH_SECRET, else data/ingest.secret.

use std::io::Write;

fn main() {
    let mut url = "http://127.0.0.1:8080/ingest/hex".to_string();
    let mut format = "ndjson".to_string();
    let mut batch = 100usize;
    let mut gzip = false;
    let mut file = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--url" => url = args.next().expect("--url URL"),
            "--format" => format = args.next().expect("--format json|ndjson"),
            "--batch" => batch = args.next().expect("--batch N").parse().expect("a number"),
            "--gzip" => gzip = true,
            f => file = Some(f.to_string()),
        }
    }
    let file =
        file.expect("usage: send FILE [--url URL] [--format json|ndjson] [--batch N] [--gzip]");
    let secret = std::env::var("HEXWATCH_SECRET")
        .ok()
        .or_else(|| std::fs::read_to_string("data/ingest.secret").ok())
        .map(|s| s.trim().to_string())
        .expect("set HEXWATCH_SECRET (or run from the directory holding data/ingest.secret)");

    let body = std::fs::read(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    let (_, items) =
        hexwatch::decode::split(&body, usize::MAX).unwrap_or_else(|e| panic!("{file}: {e}"));
    let records: Vec<serde_json::Value> =
        items.into_items().filter_map(|i| i.value().ok()).collect();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();
    let (mut accepted, mut duplicates, mut quarantined) = (0, 0, 0);
    for chunk in records.chunks(batch) {
        let (content_type, mut payload) = if format == "json" {
            ("application/json", serde_json::to_vec(chunk).unwrap())
        } else {
            let mut s = Vec::new();
            for r in chunk {
                serde_json::to_writer(&mut s, r).unwrap();
                s.push(b'\n');
            }
            ("application/x-ndjson", s)
        };
        let mut req = client
            .post(&url)
            .header("X-Hexwatch-Token", &secret)
            .header("Content-Type", content_type);
        if gzip {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(&payload).unwrap();
            payload = e.finish().unwrap();
            req = req.header("Content-Encoding", "gzip");
        }
        let (status, reply) = runtime.block_on(async {
            let r = req
                .body(payload)
                .send()
                .await
                .expect("hexwatch is not reachable");
            let status = r.status();
            (
                status,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        });
        println!("{status} {reply}");
        accepted += reply["accepted"].as_u64().unwrap_or(0);
        duplicates += reply["duplicates"].as_u64().unwrap_or(0);
        quarantined += reply["quarantined"].as_u64().unwrap_or(0);
    }
    println!(
        "sent {} records in batches of {batch}: {accepted} accepted, {duplicates} duplicates, {quarantined} quarantined",
        records.len()
    );
}
