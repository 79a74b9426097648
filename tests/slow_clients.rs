//! Clients that send slowly, without a credential, against clients with one.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use crate::support::*;

const TOKEN: &str = "console-admin-token-0123456789";

/// A request body that sends a byte every half second, forever.
fn trickle() -> reqwest::Body {
    let chunks = futures_util::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Some((Ok::<_, std::io::Error>(vec![b'x']), ()))
    });
    reqwest::Body::wrap_stream(chunks)
}

/// One slow client, from 127.0.0.2 (the valid clients use 127.0.0.1): the
/// console's login form (HTTP/1), tokenless ingest (HTTP/1) or tokenless
/// ingest on HTTP/2.
async fn slow_client(base: String, ingest: String, i: usize) {
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let builder = reqwest::Client::builder().local_address(ip);
    let (client, url, kind) = match i % 3 {
        0 => (
            builder,
            format!("{base}/ui/login"),
            "application/x-www-form-urlencoded",
        ),
        1 => (builder, ingest, "application/x-ndjson"),
        _ => (
            builder.http2_prior_knowledge(),
            ingest,
            "application/x-ndjson",
        ),
    };
    let client = client.build().unwrap();
    // Answered (503, 429, 408 or 401) or cut: start again, as an attacker
    // would (after a moment, to leave the test machine some CPU).
    loop {
        let _ = client
            .post(&url)
            .header("content-type", kind)
            .body(trickle())
            .send()
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// About 1,100 clients trickling request bodies without a credential (the
/// console's login form had no body timeout; tokenless ingest was drained
/// for up to 5 s; one HTTP/2 stream per connection sat in that drain) held
/// every connection slot as busy, and valid ingest requests were refused.
/// Requests without a credential now give up their slot first, are bounded
/// in time and per address: every valid request is answered.
#[tokio::test]
async fn slow_bodies_lock_out_ingest_without_a_token() {
    let config = "[ui]\nadmin_token_env = \"HEXWATCH_ADMIN_TOKEN\"\n";
    let mut d = TestDaemon::start_with_env(config, &[("HEXWATCH_ADMIN_TOKEN", TOKEN)], &[]).await;
    let base = format!("http://{}", d.addr);
    let hostile: Vec<_> = (0..1100)
        .map(|i| tokio::spawn(slow_client(base.clone(), d.ingest_url(), i)))
        .collect();
    // Every slot taken by them before the valid clients come.
    // (Reading the metrics is itself a request without a credential: it may
    // be cut among the slow clients, and is asked again.)
    let mut open = 0;
    for _ in 0..600 {
        if let Ok(r) = client().get(d.url("/metrics")).send().await {
            let text = r.text().await.unwrap_or_default();
            open = metric_value(&text, "hexwatch_connections_open");
        }
        if open >= 128 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An address gets an eighth of the 1,024 slots for connections that
    // never carried a credential.
    assert!(
        open >= 128,
        "the slow clients never took their share ({open})"
    );

    let mut took = Vec::new();
    let valid = client();
    for batch in 0..50 {
        let started = Instant::now();
        let r = valid
            .post(d.ingest_url())
            .header(AUTH, SECRET)
            .body(ndjson(&[hex_record(batch, "RUN_PROJECT")]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "valid request {batch} was not answered");
        took.push(started.elapsed());
    }
    for h in &hostile {
        h.abort();
    }
    took.sort();
    eprintln!(
        "valid requests beside 1,100 slow clients: p50 {:?}, p99 {:?}",
        took[took.len() / 2],
        took[took.len() * 99 / 100]
    );
    d.stop().await;
    assert_eq!(d.count("SELECT count(*) FROM events"), 50);
}

/// The value of an unlabelled metric in Prometheus text.
fn metric_value(text: &str, name: &str) -> i64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as i64
}
