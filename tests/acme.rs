//! HTTPS without a proxy: `[server.acme]` against Pebble, a real ACME server.
//! A fresh start obtains a certificate with TLS-ALPN-01 on the listening port,
//! ingest works over it, and the renewal (Pebble issues 15-second certificates,
//! renewed after two thirds of their life) is swapped in without a restart and
//! without dropping a connection opened before.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::pebble::Pebble;
use crate::support::*;

const DOMAIN: &str = "hexwatch.test";

/// The DER of the certificate a response came over.
fn served_cert(r: &reqwest::Response) -> Vec<u8> {
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .expect("TLS info")
        .to_vec()
}

#[tokio::test]
async fn acme_obtains_and_renews_the_certificate_from_pebble() {
    let port = free_port();
    let pebble = Pebble::start(port, 15).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "{}[server]\nlisten = \"127.0.0.1:{port}\"\n[server.acme]\ndomains = [\"{DOMAIN}\"]\ncontact = \"secops@{DOMAIN}\"\ndirectory_url = \"{}\"\ndirectory_ca_file = \"{}\"\n",
            crate::support::postgres::storage_toml(dir.path()),
            pebble.directory,
            pebble.listener_ca().display()
        ),
    )
    .unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_hexwatch"))
        .args(["serve", "-c"])
        .arg(dir.path().join("config.toml"))
        .env("HEXWATCH_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _kill = KillOnDrop(&mut daemon);

    let root = pebble.issuing_root().await;
    let client = || {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(root.as_bytes()).unwrap())
            .tls_built_in_root_certs(false)
            .resolve(DOMAIN, ([127, 0, 0, 1], port).into())
            .tls_info(true)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    };
    let url = format!("https://{DOMAIN}:{port}/ingest/hex");
    let send = |c: &reqwest::Client, n: usize| {
        c.post(&url)
            .header(AUTH, SECRET)
            .body(hex_record(n, "RUN_PROJECT").to_string())
            .send()
    };

    // A fresh start: no certificate until Pebble has validated the domain.
    let first = client();
    let deadline = Instant::now() + Duration::from_secs(60);
    let issued = loop {
        match send(&first, 1).await {
            Ok(r) => {
                assert_eq!(r.status(), 200);
                break served_cert(&r);
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "no certificate from Pebble: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    // The account and certificate are cached privately.
    let cache = dir.path().join("data/acme");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(std::fs::read_dir(&cache).unwrap().count() >= 2);

    // Renewal: new connections get a new certificate...
    let deadline = Instant::now() + Duration::from_secs(40);
    let renewed = loop {
        let r = send(&client(), 2).await.expect("HTTPS during renewal");
        assert_eq!(r.status(), 200);
        let cert = served_cert(&r);
        if cert != issued {
            break cert;
        }
        assert!(Instant::now() < deadline, "the certificate was not renewed");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_ne!(renewed, issued);
    // ...while the connection opened under the first one was not dropped.
    let r = send(&first, 3)
        .await
        .expect("the first connection still works");
    assert_eq!(r.status(), 200);
    assert_eq!(served_cert(&r), issued, "served over the same connection");
}

struct KillOnDrop<'a>(&'a mut std::process::Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
