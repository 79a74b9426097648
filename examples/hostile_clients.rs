//! Hostile-client check: holds thousands of connections that never finish a
//! request against a running hexwatch (slowloris header trickles, silent
//! connections, HTTP/2 prefaces), while sending valid ingest requests, and reports
//! how long each valid request took. Loopback only; stops by itself.
//!
//!     cargo run --release -- serve &
//!     HEXWATCH_SECRET=... cargo run --release --example hostile_clients -- --slowloris 2000 --idle 1000
//!
//! The process needs about `slowloris + idle + 100` file descriptors
//! (`ulimit -n`); so does the daemon (it raises its own soft limit).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "common/records.rs"]
mod records;

struct Args {
    addr: SocketAddr,
    secret: String,
    slowloris: usize,
    idle: usize,
    requests: usize,
    seconds: u64,
}

fn parse_args() -> Args {
    let mut a = Args {
        addr: "127.0.0.1:8080".parse().unwrap(),
        secret: std::env::var("HEXWATCH_SECRET")
            .ok()
            .or_else(|| std::fs::read_to_string("data/ingest.secret").ok())
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        slowloris: 2000,
        idle: 1000,
        requests: 50,
        seconds: 60,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => a.addr = val().parse().expect("--addr 127.0.0.1:8080"),
            "--secret" => a.secret = val(),
            "--slowloris" => a.slowloris = val().parse().unwrap(),
            "--idle" => a.idle = val().parse().unwrap(),
            "--requests" => a.requests = val().parse().unwrap(),
            "--seconds" => a.seconds = val().parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(a.addr.ip().is_loopback(), "only loopback targets");
    a
}

/// Sends the request line and one header, then one more header every 5 s.
async fn slowloris(addr: SocketAddr, until: Instant) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return;
    };
    if s.write_all(b"POST /ingest/hex HTTP/1.1\r\nHost: x\r\n")
        .await
        .is_err()
    {
        return;
    }
    let mut k = 0;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(5)).await;
        k += 1;
        if s.write_all(format!("X-{k}: a\r\n").as_bytes())
            .await
            .is_err()
        {
            // Closed by the server: open another, as an attacker would.
            return Box::pin(slowloris(addr, until)).await;
        }
    }
}

/// Connects and sends nothing (every third one only the HTTP/2 preface);
/// reconnects when the server closes it.
async fn idle(addr: SocketAddr, until: Instant, h2: bool) {
    while Instant::now() < until {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if h2 {
            let _ = s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        }
        let left = until.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, s.read_to_end(&mut Vec::new())).await;
    }
}

#[tokio::main]
async fn main() {
    let a = parse_args();
    let until = Instant::now() + Duration::from_secs(a.seconds);
    let mut held = Vec::new();
    for _ in 0..a.slowloris {
        held.push(tokio::spawn(slowloris(a.addr, until)));
    }
    for i in 0..a.idle {
        held.push(tokio::spawn(idle(a.addr, until, i % 3 == 0)));
    }
    // Let them all connect first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "holding {} slowloris and {} idle connections; sending {} valid requests",
        a.slowloris, a.idle, a.requests
    );

    let client = reqwest::Client::new();
    let url = format!("http://{}/ingest/hex", a.addr);
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        * 1_000_000;
    let mut took = Vec::new();
    let mut failed = 0;
    for i in 0..a.requests {
        if Instant::now() >= until {
            break;
        }
        let body = records::ndjson_batch(start + i as u64 * 10, 10);
        let t = Instant::now();
        let r = client
            .post(&url)
            .header("X-Hexwatch-Token", &a.secret)
            .body(body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        match r {
            Ok(r) if r.status() == 200 => took.push(ms),
            Ok(r) => {
                failed += 1;
                println!("request {i}: HTTP {} after {ms:.1} ms", r.status());
            }
            Err(e) => {
                failed += 1;
                println!("request {i}: {e} after {ms:.1} ms");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for h in held {
        h.abort();
    }
    took.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        took.get(((took.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "valid requests: {} answered 200, {failed} failed; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        took.len(),
        pct(0.5),
        pct(0.99),
        took.last().copied().unwrap_or(f64::NAN)
    );
}
