//! Packaging and operation: the version a binary reports, what the daemon says
//! at startup, the systemd unit and the container image's recipe.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::*;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn version_names_the_git_revision() {
    let out = Command::new(env!("CARGO_BIN_EXE_hexwatch"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let expected_start = format!("hexwatch {} (", env!("CARGO_PKG_VERSION"));
    assert!(text.starts_with(&expected_start), "{text}");
    let revision = text
        .trim()
        .trim_start_matches(&expected_start)
        .trim_end_matches(')');
    assert!(!revision.is_empty(), "{text}");
    // Built from this checkout: the revision is its HEAD.
    if let Ok(head) = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
    {
        if head.status.success() && std::env::var("HEXWATCH_GIT_REVISION").is_err() {
            assert_eq!(revision, String::from_utf8(head.stdout).unwrap().trim());
        }
    }
}

/// Startup says which config, rules, storage and destinations are in use,
/// and never a destination's URL or a secret.
#[tokio::test]
async fn startup_log_names_what_is_in_use_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[[destinations]]\nnotify = \"alert\"\nname = \"secops\"\ntype = \"slack\"\nurl_env = \"TEST_SLACK_URL\"\n"
        ),
    )
    .unwrap();
    let slack_url = "https://hooks.slack.example/services/T000/B000/very-secret-token";
    let mut child = Command::new(env!("CARGO_BIN_EXE_hexwatch"))
        .args(["serve", "-c"])
        .arg(dir.path().join("config.toml"))
        .env("HEXWATCH_SECRET", SECRET)
        .env("TEST_SLACK_URL", slack_url)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_ready(port).await;
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let line = log
        .lines()
        .find(|l| l.contains("hexwatch listening on"))
        .unwrap_or_else(|| panic!("{log}"));
    for wanted in [
        format!("version=\"{}", env!("CARGO_PKG_VERSION")),
        format!("config={}", dir.path().join("config.toml").display()),
        format!("rules={}", dir.path().join("rules").display()),
        "destinations=secops (slack)".to_string(),
    ] {
        assert!(line.contains(&wanted), "{wanted} not in: {line}");
    }
    assert!(log.contains("storage open"), "{log}");
    assert!(!log.contains("very-secret-token"), "{log}");
    assert!(!log.contains(SECRET), "{log}");
}

/// The unit keeps its hardening, and `systemd-analyze verify` (where systemd
/// is installed, as on the CI machine) finds nothing to say about it.
#[test]
fn systemd_unit_is_hardened_and_verifies() {
    let unit = std::fs::read_to_string(repo("deploy/hexwatch.service")).unwrap();
    for directive in [
        "User=hexwatch",
        "StateDirectory=hexwatch",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "Restart=on-failure",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n",
        "ExecStart=/usr/local/bin/hexwatch serve --config /etc/hexwatch/config.toml",
    ] {
        assert!(unit.contains(directive), "the unit lacks {directive:?}");
    }
    let Ok(status) = Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
    else {
        eprintln!(
            "systemd-analyze is not installed: the unit's directives were checked, not its syntax"
        );
        return;
    };
    assert!(status.success());
    // Verified as installed, with the binary under test in place of /usr/local/bin.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hexwatch.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/hexwatch", env!("CARGO_BIN_EXE_hexwatch")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

/// The image runs as an unprivileged user, checks `/healthz`, keeps data in a
/// volume, and every file its recipe copies exists.
#[test]
fn dockerfile_is_complete() {
    let recipe = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    for wanted in [
        "USER hexwatch",
        "HEALTHCHECK",
        "/healthz",
        "VOLUME [\"/var/lib/hexwatch\"]",
        "AS build",
    ] {
        assert!(recipe.contains(wanted), "the Dockerfile lacks {wanted:?}");
    }
    for line in recipe
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for source in &parts[1..parts.len() - 1] {
            assert!(repo(source).exists(), "{line}: {source} does not exist");
        }
    }
    // The image's config is valid, with the image's paths pointed at the
    // checkout's rules and a scratch data directory.
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(repo("deploy/config.toml"))
        .unwrap()
        .replace("/etc/hexwatch/rules", &repo("rules").display().to_string())
        .replace("/var/lib/hexwatch", &dir.path().display().to_string());
    assert!(config
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .all(|l| !l.contains("/etc/hexwatch") && !l.contains("/var/lib")));
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hexwatch"))
        .args(["check", "-c"])
        .arg(dir.path().join("config.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
