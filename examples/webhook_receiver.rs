//! A small webhook receiver that prints what hexwatch delivers: incident
//! notifications (the event, the incident's title and the alerts new in it)
//! and alerts (severity, title, rule and event count), the signature check when
//! HEXWATCH_WEBHOOK_SECRET is set, and redeliveries recognised by their
//! Idempotency-Key.
//!
//!     cargo run --release --example webhook_receiver -- [--listen 127.0.0.1:9000]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use warp::Filter;

#[tokio::main]
async fn main() {
    let mut listen: SocketAddr = "127.0.0.1:9000".parse().unwrap();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--listen" {
            listen = args
                .next()
                .expect("--listen ADDR")
                .parse()
                .expect("an address");
        }
    }
    let secret = std::env::var("HEXWATCH_WEBHOOK_SECRET").ok();
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let route = warp::post()
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .map(move |headers: warp::http::HeaderMap, body: bytes::Bytes| {
            let key = headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let signature = match (&secret, headers.get("x-hexwatch-signature")) {
                (Some(s), Some(got)) => {
                    // Compare in constant time, as a receiver should.
                    let want = hexwatch::dispatch::http::signature(s.as_bytes(), &body);
                    if bool::from(subtle::ConstantTimeEq::ct_eq(
                        want.as_bytes(),
                        got.as_bytes(),
                    )) {
                        " (signature ok)"
                    } else {
                        " (BAD SIGNATURE)"
                    }
                }
                (Some(_), None) => " (UNSIGNED)",
                _ => "",
            };
            if !seen.lock().unwrap().insert(key.clone()) {
                println!("duplicate delivery of {key}, ignored");
                return "ok";
            }
            match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(n) if n["version"] == "hexwatch.incident/1" => {
                    let i = &n["incident"];
                    println!(
                        "[{}] incident {}: {}{}",
                        i["severity"].as_str().unwrap_or("?"),
                        n["event"].as_str().unwrap_or("?"),
                        i["title"].as_str().unwrap_or("?"),
                        signature
                    );
                    for a in n["alerts"].as_array().into_iter().flatten() {
                        println!(
                            "    [{}] {}",
                            a["severity"].as_str().unwrap_or("?"),
                            a["title"].as_str().unwrap_or("?")
                        );
                    }
                }
                Ok(a) => println!(
                    "[{}] {}\n    rule {} · {} event(s) · first {} · alert {}{}",
                    a["severity"].as_str().unwrap_or("?"),
                    a["title"].as_str().unwrap_or("?"),
                    a["id"].as_str().unwrap_or("?"),
                    a["eventCount"],
                    a["firstEventAt"].as_str().unwrap_or("?"),
                    a["alertId"].as_str().unwrap_or("?"),
                    signature
                ),
                Err(e) => println!("not an alert ({e}): {}", String::from_utf8_lossy(&body)),
            }
            "ok"
        });
    println!("listening on http://{listen}/ for hexwatch alerts");
    warp::serve(route).run(listen).await;
}
