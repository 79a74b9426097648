//! Pebble, Let's Encrypt's ACME test server (Debian package `pebble`), with its
//! companion `pebble-challtestsrv` as the DNS server that resolves every name
//! to 127.0.0.1. `.ci/run` installs the package; both processes are killed
//! when the value is dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub struct Pebble {
    pub dir: tempfile::TempDir,
    /// The ACME directory URL.
    pub directory: String,
    management: u16,
    children: Vec<Child>,
}

fn spawn(cmd: &mut Command, what: &str, log: &std::path::Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    cmd.stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {what} ({e}): install Debian's `pebble` package (.ci/run does)")
        })
}

impl Pebble {
    /// Starts Pebble validating TLS-ALPN-01 on `tls_port` and issuing
    /// certificates valid for `validity` seconds. Its ports are picked free
    /// just before it binds them, so another test can take one first: then
    /// Pebble exits, and it is started again on other ports.
    pub async fn start(tls_port: u16, validity: u64) -> Pebble {
        let mut logs = String::new();
        for attempt in 1..=3 {
            match Self::try_start(tls_port, validity).await {
                Ok(p) => return p,
                Err(log) => logs.push_str(&format!("\n--- attempt {attempt}:\n{log}")),
            }
        }
        panic!("Pebble did not start:{logs}");
    }

    /// One start; on failure, what Pebble and its DNS server said.
    async fn try_start(tls_port: u16, validity: u64) -> Result<Pebble, String> {
        let dir = tempfile::tempdir().unwrap();
        // Pebble's own HTTPS listener needs a certificate: one for 127.0.0.1.
        let cert = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
        ])
        .unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), cert.key_pair.serialize_pem()).unwrap();
        let (listen, management) = (free_port(), free_port());
        let dns = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            "httpPort": free_port(),
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity,
        }});
        std::fs::write(dir.path().join("pebble.json"), config.to_string()).unwrap();
        let (dns_log, pebble_log) = (dir.path().join("dns.log"), dir.path().join("pebble.log"));
        let dns_server = spawn(
            Command::new("pebble-challtestsrv")
                .args(["-dns01", &format!("127.0.0.1:{dns}")])
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-management", &format!("127.0.0.1:{}", free_port())]),
            "pebble-challtestsrv",
            &dns_log,
        );
        let pebble = spawn(
            Command::new("pebble")
                .arg("-config")
                .arg(dir.path().join("pebble.json"))
                .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0"),
            "pebble",
            &pebble_log,
        );
        let mut p = Pebble {
            directory: format!("https://127.0.0.1:{listen}/dir"),
            dir,
            management,
            children: vec![dns_server, pebble],
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while p.get(&p.directory).await.is_none() {
            let exited = p
                .children
                .iter_mut()
                .any(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited || Instant::now() >= deadline {
                let read =
                    |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
                // Dropping `p` stops whichever child still runs.
                return Err(format!(
                    "pebble: {}\npebble-challtestsrv: {}",
                    read(&pebble_log),
                    read(&dns_log)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(p)
    }

    /// The certificate of Pebble's own listener (trusted for the directory).
    pub fn listener_ca(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// The root that Pebble issues under (made afresh at every start).
    pub async fn issuing_root(&self) -> String {
        self.get(&format!("https://127.0.0.1:{}/roots/0", self.management))
            .await
            .expect("Pebble's root")
    }

    async fn get(&self, url: &str) -> Option<String> {
        let ca = std::fs::read(self.listener_ca()).unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .tls_built_in_root_certs(false)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let r = client.get(url).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.text().await.ok()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
