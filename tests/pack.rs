//! The shipped detection pack on the sample streams: the incident story raises
//! exactly the alerts a responder needs, the normal day only a few low ones.

use std::path::Path;

use hexwatch::config::{Config, Env};

struct NoEnv;
impl Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

fn replay(sample: &str) -> Vec<(String, String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = Config::parse(&root.join("config.toml"), "", &NoEnv).unwrap();
    let files = vec![root.join("examples/samples").join(sample)];
    let mut out = Vec::new();
    let (alerts, summary) = hexwatch::replay::run(&config, &files, &mut out).unwrap();
    assert_eq!(summary.quarantined, 0);
    assert_eq!(summary.rule_errors, 0);
    assert_eq!(
        String::from_utf8(out).unwrap().lines().count(),
        alerts.len(),
        "one JSON line per alert"
    );
    let mut set: Vec<_> = alerts
        .into_iter()
        .map(|a| (a.id, a.dedup, a.severity.to_string()))
        .collect();
    set.sort();
    set
}

fn expected(rows: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = rows
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    v.sort();
    v
}

#[test]
fn incident_raises_the_alerts_a_responder_needs() {
    let got = replay("incident.json");
    let want = expected(&[
        (
            "Hex.AntiForensics.DataRetentionChanged",
            "dana@acme.example changed data retention for cell outputs",
            "HIGH",
        ),
        ("Hex.Behaviour.FailureBurst", "dana@acme.example", "MEDIUM"),
        (
            "Hex.Behaviour.NewIpSensitiveAction",
            "dana@acme.example 185.220.101.34",
            "HIGH",
        ),
        (
            "Hex.Credentials.ApiAccessGranted",
            "dana@acme.example",
            "HIGH",
        ),
        (
            "Hex.Credentials.SecretChanged",
            "dana@acme.example SNOWFLAKE_PASSWORD",
            "HIGH",
        ),
        ("Hex.Data.CsvDownloadBurst", "dana@acme.example", "MEDIUM"),
        (
            "Hex.Destruction.MassProjectDeletion",
            "dana@acme.example PERMANENTLY_DELETE_PROJECT",
            "CRITICAL",
        ),
        (
            "Hex.Destruction.ProjectPermanentlyDeleted",
            "dana@acme.example",
            "LOW",
        ),
        (
            "Hex.Identity.PasswordUserCreated",
            "it-backup@protonmail.example",
            "HIGH",
        ),
        (
            "Hex.Privilege.UserMadeAdmin",
            "dana@acme.example made it-backup@protonmail.example a workspace admin",
            "HIGH",
        ),
        ("Hex.Project.SharedPublicly", "proj-1002", "HIGH"),
        (
            "Hex.Workspace.PublicSharingEnabled",
            "dana@acme.example allowed public sharing of projects for the workspace",
            "HIGH",
        ),
    ]);
    assert_eq!(got, want);
}

#[test]
fn normal_day_is_quiet() {
    let got = replay("normal_day.ndjson");
    let want = expected(&[
        (
            "Hex.Credentials.DataConnectionChanged",
            "bo@acme.example Scratch Postgres",
            "LOW",
        ),
        (
            "Hex.Privilege.GroupMembershipChanged",
            "ana@acme.example Marketing analysts",
            "LOW",
        ),
        (
            "Hex.Schedule.NotificationChanged",
            "bo@acme.example created a scheduled-run notification on \"Weekly KPIs\"",
            "LOW",
        ),
    ]);
    assert_eq!(got, want);
}
