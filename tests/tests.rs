//! Integration tests: each starts the real daemon in-process on 127.0.0.1:0 with
//! its own temporary directory and talks to it over real HTTP.

mod support;

mod acme;
mod backup;
mod browser;
mod browser_incidents;
mod cli;
mod console;
mod console_guards;
mod crash;
mod delivery;
mod deploy;
mod destinations;
mod hardening;
mod incidents;
mod ingest;
mod pack;
mod properties;
mod replicas;
mod rules;
mod slow_clients;
mod storage;

/// The whole suite again, every daemon on PostgreSQL: this test binary runs
/// itself with `HEXWATCH_TEST_BACKEND=postgres`. Tests about SQLite's own
/// files (`sqlite_` in their names), and those that run both engines or their
/// own PostgreSQL replicas anyway (`storage::`, `replicas::`), are left out there.
#[test]
fn postgres_runs_the_whole_suite() {
    if support::backend() == support::Backend::Postgres {
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--skip",
            "postgres_runs_the_whole_suite",
            "--skip",
            "sqlite_",
            "--skip",
            "storage::",
            "--skip",
            "replicas::",
            "--test-threads",
            "2",
        ])
        .env("HEXWATCH_TEST_BACKEND", "postgres")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("test result"))
        .unwrap_or("no summary");
    eprintln!("on PostgreSQL: {summary}");
    // Each failure by name, then its own output, as the first run shows them.
    let failed: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("test ")?.strip_suffix(" ... FAILED"))
        .collect();
    assert!(
        out.status.success(),
        "{} test(s) failed on PostgreSQL:\n  {}\n\n{stdout}\n{}",
        failed.len(),
        failed.join("\n  "),
        String::from_utf8_lossy(&out.stderr)
    );
}
