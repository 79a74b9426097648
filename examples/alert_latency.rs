//! Benchmark of the whole path on loopback: HTTP ingest → rules → alert →
//! webhook. Runs hexwatch in-process with one rule that turns every
//! `DOWNLOAD_AS_CSV` record of the realistic mix (about 3%) into its own alert, and
//! a webhook receiver that notes when each alert arrives.
//!
//! Phase 1 paces NDJSON batches of 100 at `--rate` records/s (default 5,000) and
//! reports p50/p99/max of the time from the HTTP 200 that acknowledged a record to
//! the webhook's receipt of its alert. Phase 2 sends as fast as 8 connections can,
//! with alerts flowing, and reports ingest records/s.
//!
//!     cargo run --release --example alert_latency -- [--rate 5000] [--seconds 10] [--slack]
//!
//! `--slack` delivers through a `type = "slack"` destination (Block Kit bodies)
//! instead of the plain webhook, with its rate limit raised out of the way.
//! `--incident` makes the rule CRITICAL and the webhook take incident
//! notifications (each alert its own incident, `group_by = "none"`): the time
//! to the notification of a CRITICAL alert, which goes without `group_wait`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warp::Filter;

#[path = "common/records.rs"]
mod records;

/// The allocator the hexwatch binary uses (the daemon runs in this process).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Env(String);
impl hexwatch::config::Env for Env {
    fn var(&self, name: &str) -> Option<String> {
        match name {
            "HEXWATCH_SECRET" => Some("bench".to_string()),
            "SLACK_BENCH_URL" => Some(self.0.clone()),
            _ => None,
        }
    }
}

type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

async fn receiver(arrivals: Arrivals) -> String {
    let route = warp::post()
        .and(warp::body::bytes())
        .map(move |body: bytes::Bytes| {
            let now = Instant::now();
            let alert: serde_json::Value = serde_json::from_slice(&body).unwrap();
            // An incident notification: each listed alert's title is its key.
            if alert["version"] == "hexwatch.incident/1" {
                let mut arrivals = arrivals.lock().unwrap();
                for a in alert["alerts"].as_array().into_iter().flatten() {
                    if let Some(k) = a["title"].as_str() {
                        arrivals.entry(k.to_string()).or_insert(now);
                    }
                }
                return "ok";
            }
            // The alert JSON, or a Slack message whose text is "[HIGH] <key> (...)".
            let key = alert["events"][0]["keySuffix"]
                .as_str()
                .map(str::to_string)
                .or_else(|| {
                    alert["text"]
                        .as_str()
                        .and_then(|t| t.split_whitespace().nth(1))
                        .map(str::to_string)
                });
            if let Some(k) = key {
                arrivals.lock().unwrap().insert(k, now);
            }
            "ok"
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    format!("http://{addr}/hook")
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let mut rate = 5000u64;
    let mut seconds = 10u64;
    let mut slack = false;
    let mut incident = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--slack" => slack = true,
            "--incident" => incident = true,
            "--rate" => rate = args.next().unwrap().parse().unwrap(),
            "--seconds" => seconds = args.next().unwrap().parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
    }

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(
        dir.path().join("rules/csv.rhai"),
        format!(
            "let meta = #{{ id: \"Bench.Csv\", severity: \"{}\", actions: [\"DOWNLOAD_AS_CSV\"] }};\n\
             fn rule(e) {{ true }}\nfn dedup(e) {{ e.keySuffix }}\nfn title(e) {{ e.keySuffix }}\n",
            if incident { "CRITICAL" } else { "HIGH" }
        ),
    )
    .unwrap();
    let arrivals: Arrivals = Arc::default();
    let hook = receiver(arrivals.clone()).await;
    let text = if incident {
        format!("[incidents]\ngroup_by = \"none\"\n[[destinations]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{hook}\"\nconcurrency = 8\n")
    } else if slack {
        "[[destinations]]\nnotify = \"alert\"\nname = \"slack\"\ntype = \"slack\"\nurl_env = \"SLACK_BENCH_URL\"\nconcurrency = 8\nmax_per_minute = 1000000\n".to_string()
    } else {
        format!("[[destinations]]\nnotify = \"alert\"\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{hook}\"\nconcurrency = 8\n")
    };
    let path = dir.path().join("config.toml");
    std::fs::write(&path, &text).unwrap();
    let config = hexwatch::config::Config::parse(&path, &text, &Env(hook.clone())).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ingest/hex", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(hexwatch::daemon::run(config, listener, async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Phase 1: paced load, latency from acknowledgement to webhook receipt.
    let acks: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let batches = rate * seconds / 100;
    let interval = Duration::from_secs_f64(100.0 / rate as f64);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for b in 0..batches {
        tokio::time::sleep_until((started + interval * b as u32).into()).await;
        let (client, url, acks) = (client.clone(), url.clone(), acks.clone());
        tasks.push(tokio::spawn(async move {
            let first = b * 100;
            let body = records::ndjson_batch(first, 100);
            let r = client
                .post(&url)
                .header("X-Hexwatch-Token", "bench")
                .body(body)
                .send()
                .await
                .unwrap();
            let acked = Instant::now();
            assert!(r.status().is_success());
            let mut acks = acks.lock().unwrap();
            for i in first..first + 100 {
                if records::action_for(i).0 == "DOWNLOAD_AS_CSV" {
                    acks.insert(records::key_suffix(i), acked);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let sent_for = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acks = acks.lock().unwrap().clone();
    let got = arrivals.lock().unwrap().clone();
    let mut lat: Vec<f64> = acks
        .iter()
        .filter_map(|(k, ack)| {
            got.get(k)
                .map(|t| t.saturating_duration_since(*ack).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "phase 1: {} records in {:.1}s ({:.0} records/s), {} alerts expected, {} delivered",
        batches * 100,
        sent_for.as_secs_f64(),
        (batches * 100) as f64 / sent_for.as_secs_f64(),
        acks.len(),
        lat.len()
    );
    println!(
        "HTTP 200 -> webhook receipt: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(&lat, 0.50),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );

    // Phase 2: unpaced ingest with alerts flowing.
    let next = Arc::new(AtomicU64::new(1_000_000_000));
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (client, url, next, done) = (client.clone(), url.clone(), next.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let first = next.fetch_add(100, Ordering::Relaxed);
                let r = client
                    .post(&url)
                    .header("X-Hexwatch-Token", "bench")
                    .body(records::ndjson_batch(first, 100))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
                done.fetch_add(100, Ordering::Relaxed);
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let n = done.load(Ordering::Relaxed);
    let ingest_time = t0.elapsed();
    let expected = acks.len()
        + (1_000_000_000..next.load(Ordering::Relaxed))
            .filter(|i| records::action_for(*i).0 == "DOWNLOAD_AS_CSV")
            .count();
    println!(
        "phase 2: {} records in {:.1}s: {:.0} records/s ingested with alerts flowing ({} of {} alerts delivered by then)",
        n,
        ingest_time.as_secs_f64(),
        n as f64 / ingest_time.as_secs_f64(),
        arrivals.lock().unwrap().len(),
        expected
    );
    // The journal buffers what evaluation and delivery have not caught up with yet.
    let drain = Instant::now();
    while arrivals.lock().unwrap().len() < expected && drain.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "all {} alerts delivered {:.1}s after ingestion stopped ({:.0} alerts/s end to end)",
        arrivals.lock().unwrap().len(),
        drain.elapsed().as_secs_f64(),
        (expected - acks.len()) as f64 / (ingest_time + drain.elapsed()).as_secs_f64()
    );
    let _ = stop.send(());
    daemon.await.unwrap().unwrap();
}
