//! Benchmark of alert delivery: how many alerts per second reach one fast
//! webhook. Runs hexwatch in-process (SQLite in a temp directory) with one rule
//! that turns every record into its own alert, streams `--alerts` records
//! (default 40,000) as fast as 8 connections can, and reports the alerts
//! delivered per second from the first receipt to the last (evaluation creating
//! them is part of that), the rate of delivery alone once every alert had been
//! created, and how long the outbox took to drain.
//!
//!     cargo run --release --example alert_throughput -- [--alerts 40000] [--concurrency 4]
//!
//! `--concurrency` is the destination's (deliveries in flight at once).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warp::Filter;

#[path = "common/records.rs"]
mod records;

/// The allocator the hexwatch binary uses (the daemon runs in this process).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Env;
impl hexwatch::config::Env for Env {
    fn var(&self, name: &str) -> Option<String> {
        (name == "HEXWATCH_SECRET").then(|| "bench".to_string())
    }
}

/// First and last receipt, and how many.
#[derive(Default)]
struct Receipts {
    first: Option<Instant>,
    last: Option<Instant>,
    count: u64,
}

#[tokio::main]
async fn main() {
    let (mut alerts, mut concurrency) = (40_000u64, 4usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--alerts" => alerts = args.next().unwrap().parse().unwrap(),
            "--concurrency" => concurrency = args.next().unwrap().parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
    }

    let receipts: Arc<Mutex<Receipts>> = Arc::default();
    let seen = receipts.clone();
    let route = warp::post()
        .and(warp::body::bytes())
        .map(move |_: bytes::Bytes| {
            let now = Instant::now();
            let mut r = seen.lock().unwrap();
            r.first.get_or_insert(now);
            r.last = Some(now);
            r.count += 1;
            "ok"
        });
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", hook.local_addr().unwrap());
    tokio::spawn(warp::serve(route).incoming(hook).run());

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(
        dir.path().join("rules/every.rhai"),
        "let meta = #{ id: \"Bench.Every\", severity: \"HIGH\" };\n\
         fn rule(e) { true }\nfn dedup(e) { e.keySuffix }\n",
    )
    .unwrap();
    let text = format!(
        "[[destinations]]\nnotify = \"alert\"\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{hook_url}\"\nconcurrency = {concurrency}\n"
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, &text).unwrap();
    let config = hexwatch::config::Config::parse(&path, &text, &Env).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ingest/hex", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(hexwatch::daemon::run(config, listener, async move {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let client = reqwest::Client::new();
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let senders: Vec<_> = (0..8)
        .map(|_| {
            let (client, url, next) = (client.clone(), url.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let first = next.fetch_add(100, Ordering::Relaxed);
                    if first >= alerts {
                        return;
                    }
                    let r = client
                        .post(&url)
                        .header("X-Hexwatch-Token", "bench")
                        .body(records::real_ndjson_batch(first, 100.min(alerts - first)))
                        .send()
                        .await
                        .unwrap();
                    assert!(r.status().is_success());
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    let ingested = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    let db = rusqlite::Connection::open(dir.path().join("data/hexwatch.db")).unwrap();
    let mut report = Instant::now();
    // When evaluation had created every alert: (time, alerts delivered by then).
    let mut all_created: Option<(Instant, u64)> = None;
    while receipts.lock().unwrap().count < alerts && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if all_created.is_none() {
            let created: i64 = db
                .query_row("SELECT count(*) FROM alerts WHERE created", [], |r| {
                    r.get(0)
                })
                .unwrap_or(-1);
            if created as u64 == alerts {
                all_created = Some((Instant::now(), receipts.lock().unwrap().count));
            }
        }
        if report.elapsed() >= Duration::from_secs(1) {
            report = Instant::now();
            eprintln!(
                "{:>6.1}s: {} delivered",
                started.elapsed().as_secs_f64(),
                receipts.lock().unwrap().count
            );
        }
    }
    let drained = started.elapsed();
    let r = std::mem::take(&mut *receipts.lock().unwrap());
    let window = match (r.first, r.last) {
        (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
        _ => f64::NAN,
    };
    println!(
        "{} records ingested in {:.2}s ({:.0} records/s)",
        alerts,
        ingested.as_secs_f64(),
        alerts as f64 / ingested.as_secs_f64()
    );
    println!(
        "{} of {} alerts delivered; {:.0} alerts/s from the first receipt to the last; outbox drained {:.2}s after the start",
        r.count,
        alerts,
        r.count as f64 / window,
        drained.as_secs_f64()
    );
    if let (Some((at, delivered)), Some(last)) = (all_created, r.last) {
        println!(
            "delivery alone, once every alert was created: {} alerts in {:.2}s, {:.0} alerts/s",
            r.count - delivered,
            last.duration_since(at).as_secs_f64(),
            (r.count - delivered) as f64 / last.duration_since(at).as_secs_f64()
        );
    }
    let _ = stop.send(());
    let _ = daemon.await;
}
