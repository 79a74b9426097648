//! Load generator: streams NDJSON batches of realistic Hex records to a running
//! hexwatch, the way Hex does (auth header, NDJSON, one batch per request), and
//! reports sustained records/s and MB/s, request latency percentiles, the
//! evaluator's lag at the end and, with `--pid`, the daemon's peak resident
//! memory and its CPU time per record by stage, once the evaluator has caught up.
//!
//!     cargo run --release -- serve &
//!     HEXWATCH_SECRET=... cargo run --release --example loadgen -- --seconds 20 --pid $(pgrep -f 'hexwatch serve')
//!
//! Several `--url`s (replicas behind a load balancer, say) share the connections
//! round robin; several `--pid`s report their memory together.
//!
//! `--rate N` paces the load at N records/s instead of sending as fast as possible.
//! Records are shaped like Hex's documented event (about 1.6 KB, three targets,
//! people working in a few projects each); `--small` sends the older one-target
//! records of about 900 bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/records.rs"]
mod records;

struct Args {
    urls: Vec<String>,
    secret: String,
    concurrency: usize,
    seconds: u64,
    batch: u64,
    rate: Option<u64>,
    pids: Vec<u32>,
    start: u64,
    small: bool,
}

const USAGE: &str = "usage: loadgen [--url URL]... [--secret S] [--concurrency N] [--seconds N]
               [--batch N] [--rate RECORDS_PER_S] [--pid PID]... [--small]
defaults: --url http://127.0.0.1:8080/ingest/hex, the secret from HEXWATCH_SECRET
(else data/ingest.secret), 8 connections, 20 s, batches of 100, unpaced";

fn parse_args() -> Args {
    let mut a = Args {
        urls: Vec::new(),
        secret: std::env::var("HEXWATCH_SECRET")
            .ok()
            .or_else(|| std::fs::read_to_string("data/ingest.secret").ok())
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        concurrency: 8,
        seconds: 20,
        batch: 100,
        rate: None,
        pids: Vec::new(),
        // Distinct keys per run, so a second run against the same database is not all duplicates.
        start: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            * 1_000_000_000,
        small: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => a.urls.push(val()),
            "--secret" => a.secret = val(),
            "--concurrency" => a.concurrency = val().parse().unwrap(),
            "--seconds" => a.seconds = val().parse().unwrap(),
            "--batch" => a.batch = val().parse().unwrap(),
            "--rate" => a.rate = Some(val().parse().unwrap()),
            "--pid" => a.pids.push(val().parse().unwrap()),
            "--small" => a.small = true,
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => {
                eprintln!("unknown flag {other}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    if a.urls.is_empty() {
        a.urls.push("http://127.0.0.1:8080/ingest/hex".into());
    }
    a
}

/// Peak and current resident memory of several processes together, in MiB.
fn total_rss_mib(pids: &[u32]) -> Option<(f64, f64)> {
    pids.iter().try_fold((0.0, 0.0), |(hwm, rss), pid| {
        let (h, r) = rss_mib(*pid)?;
        Some((hwm + h, rss + r))
    })
}

/// Peak and current resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// Adds the CPU seconds each group of a process's threads has used to `by`:
/// the receiving (tokio) threads together, the named stages (`evaluator`,
/// `journal-writer`, ...) by name. Latency on a shared machine swings with its
/// neighbours; CPU per record is the steadier measure of what a change saved.
fn add_cpu_by_thread(pid: u32, by: &mut Vec<(String, f64)>) {
    // /proc reports times in USER_HZ ticks, 100 per second on Linux.
    const TICKS: f64 = 100.0;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        let name = if name.starts_with("tokio") {
            "receivers (tokio)"
        } else {
            name
        };
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let seconds = (ticks(11) + ticks(12)) / TICKS;
        match by.iter_mut().find(|(n, _)| n == name) {
            Some((_, s)) => *s += seconds,
            None => by.push((name.to_string(), seconds)),
        }
    }
}

/// `hexwatch_evaluator_lag_records` from the daemon's `/metrics`.
async fn evaluator_lag(client: &reqwest::Client, ingest_url: &str) -> Option<i64> {
    let mut url = reqwest::Url::parse(ingest_url).ok()?;
    url.set_path("/metrics");
    let text = client.get(url).send().await.ok()?.text().await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("hexwatch_evaluator_lag_records "))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::main]
async fn main() {
    let args = Arc::new(parse_args());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .unwrap();
    let next = Arc::new(AtomicU64::new(args.start));
    let sent = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();

    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let (args, client, next, sent, bytes, failed) = (
            args.clone(),
            client.clone(),
            next.clone(),
            sent.clone(),
            bytes.clone(),
            failed.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            // Pacing: each worker sends its share of the rate.
            let interval = args.rate.map(|r| {
                Duration::from_secs_f64(args.batch as f64 * args.concurrency as f64 / r as f64)
            });
            let mut due = Instant::now()
                + interval.map_or(Duration::ZERO, |i| {
                    i.mul_f64(w as f64 / args.concurrency as f64)
                });
            while Instant::now() < deadline {
                if let Some(i) = interval {
                    tokio::time::sleep_until(due.into()).await;
                    due += i;
                }
                let first = next.fetch_add(args.batch, Ordering::Relaxed);
                let body = if args.small {
                    records::ndjson_batch(first, args.batch)
                } else {
                    records::real_ndjson_batch(first, args.batch)
                };
                let size = body.len() as u64;
                let t = Instant::now();
                let resp = client
                    .post(&args.urls[w % args.urls.len()])
                    .header("X-Hexwatch-Token", &args.secret)
                    .header("Content-Type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        latencies.push(t.elapsed());
                        sent.fetch_add(args.batch, Ordering::Relaxed);
                        bytes.fetch_add(size, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("HTTP {status}: {text}");
                        }
                    }
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("request failed: {e}");
                        }
                    }
                }
            }
            latencies
        }));
    }

    let mut peak_rss = 0.0f64;
    if !args.pids.is_empty() {
        let sent = sent.clone();
        let mut last = 0;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = sent.load(Ordering::Relaxed);
            if let Some((_, rss)) = total_rss_mib(&args.pids) {
                peak_rss = peak_rss.max(rss);
                eprintln!("{:>8} records/s   rss {rss:.1} MiB", now - last);
            }
            last = now;
        }
    }

    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let total = sent.load(Ordering::Relaxed);
    println!(
        "records: {total}  requests: {}  failed: {}  elapsed: {elapsed:.1}s",
        latencies.len(),
        failed.load(Ordering::Relaxed)
    );
    println!(
        "throughput: {:.0} records/s, {:.1} MB/s of request bodies",
        total as f64 / elapsed,
        bytes.load(Ordering::Relaxed) as f64 / elapsed / 1e6
    );
    println!(
        "request latency ms: p50 {:.1}  p99 {:.1}  max {:.1}",
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    for url in &args.urls {
        if let Some(lag) = evaluator_lag(&client, url).await {
            println!("evaluator lag at the end ({url}): {lag} records");
        }
    }
    if !args.pids.is_empty() {
        if let Some((hwm, rss)) = total_rss_mib(&args.pids) {
            println!("daemon memory: peak (VmHWM) {hwm:.1} MiB, sampled max {peak_rss:.1} MiB, now {rss:.1} MiB");
        }
        // CPU per record counts evaluation too: wait (up to a minute) until
        // every evaluator has caught up.
        let waited = Instant::now();
        for url in &args.urls {
            while waited.elapsed() < Duration::from_secs(60)
                && evaluator_lag(&client, url).await.is_some_and(|lag| lag > 0)
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let mut by: Vec<(String, f64)> = Vec::new();
        for pid in &args.pids {
            add_cpu_by_thread(*pid, &mut by);
        }
        by.sort_by(|a, b| b.1.total_cmp(&a.1));
        let per_record = |s: f64| s / total.max(1) as f64 * 1e6;
        let all: f64 = by.iter().map(|(_, s)| s).sum();
        let parts: Vec<String> = by
            .iter()
            .filter(|(_, s)| per_record(*s) >= 0.1)
            .map(|(n, s)| format!("{n} {:.1}", per_record(*s)))
            .collect();
        println!(
            "daemon CPU per record: {:.1} us ({}), evaluator caught up {:.1} s after the load",
            per_record(all),
            parts.join(", "),
            waited.elapsed().as_secs_f64()
        );
    }
}
