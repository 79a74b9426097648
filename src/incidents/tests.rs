use super::*;
use crate::config::Config;
use hexwatch_storage::memory::Memory;
use serde_json::json;

fn config(extra: &str) -> IncidentsConfig {
    let text = format!("[incidents]\n{extra}");
    Config::parse(
        std::path::Path::new("config.toml"),
        &text,
        &crate::config::ProcessEnv,
    )
    .unwrap()
    .incidents
}

fn alert(id: &str, rule: &str, severity: Severity, tactic: &str) -> Alert {
    serde_json::from_value(json!({
        "alertId": id, "id": rule, "type": "RULE", "title": format!("{rule} fired"),
        "severity": severity, "dedup": "", "createdAt": "", "firstEventAt": "",
        "lastEventAt": "", "eventCount": 1, "description": "", "runbook": "",
        "reference": "", "tags": [], "reports": {"MITRE ATT&CK": [format!("{tactic}:T0000")]},
        "alertContext": {}, "destinations": ["hook"], "events": [], "version": "v"
    }))
    .unwrap()
}

fn record(actor: &str, ip: &str) -> Value {
    json!({"event": {"actor": {"id": "u1", "metadata": {"email": actor}},
                     "context": {"location": ip}, "targets": []}})
}

/// Joins each (alert, record, minute) in order; returns the batch's writes.
fn join_all(config: &IncidentsConfig, items: &[(Alert, Value, i64)]) -> Vec<IncidentWrite> {
    let memory = Memory::default();
    let mut session = memory.session();
    let mut batch = IncidentBatch::default();
    for (a, r, minute) in items {
        let j = Joining {
            alert: a,
            rule_group_by: None,
            record: r,
            event_ms: minute * 60_000,
            notify: vec!["hook".into()],
        };
        batch.join(config, &mut session, &j, 1_000).unwrap();
    }
    batch.into_writes()
}

#[test]
fn a_chain_across_tactics_escalates_one_step_and_a_burst_is_capped() {
    let c = config("");
    let ana = record("ana@acme.example", "203.0.113.9");
    let chain = join_all(
        &c,
        &[
            (
                alert("a1", "R1", Severity::Medium, "TA0001"),
                ana.clone(),
                0,
            ),
            (
                alert("a2", "R2", Severity::Medium, "TA0010"),
                ana.clone(),
                5,
            ),
            (alert("a3", "R3", Severity::High, "TA0010"), ana.clone(), 9),
        ],
    );
    assert_eq!(chain.len(), 1);
    let i = &chain[0].incident;
    assert_eq!(
        (i.alert_severity, i.severity),
        (Severity::High, Severity::Critical)
    );
    assert!(i.escalated.as_deref().unwrap().contains("3 rules across 2"));
    assert!(
        i.title
            .starts_with("ana@acme.example: 3 alerts from 3 rules over 9 min"),
        "{}",
        i.title
    );

    // Two rules, one tactic: no chain; CRITICAL alerts make a HIGH incident.
    let burst: Vec<_> = (0..25)
        .map(|n| {
            (
                alert(&format!("b{n}"), "Share", Severity::Critical, "TA0010"),
                ana.clone(),
                n,
            )
        })
        .collect();
    let w = join_all(&c, &burst);
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].incident.severity, Severity::High);
    assert_eq!(w[0].incident.escalated, None);
    assert_eq!(w[0].joined.len(), 25);
}

#[test]
fn incidents_close_after_the_window_and_group_by_what_is_configured() {
    let c = config("window_minutes = 60\n");
    let ana = record("ana@acme.example", "203.0.113.9");
    let bob = record("bob@acme.example", "203.0.113.9");
    let w = join_all(
        &c,
        &[
            (alert("a1", "R1", Severity::Low, "TA0001"), ana.clone(), 0),
            (alert("a2", "R1", Severity::Low, "TA0001"), bob.clone(), 1),
            (alert("a3", "R1", Severity::Low, "TA0001"), ana.clone(), 59),
            // 61 minutes after a3: a new incident for ana.
            (alert("a4", "R1", Severity::Low, "TA0001"), ana.clone(), 120),
        ],
    );
    let keys: Vec<(&str, usize)> = w
        .iter()
        .map(|w| (w.incident.group_key.as_str(), w.joined.len()))
        .collect();
    assert_eq!(
        keys,
        [
            ("actor:ana@acme.example", 2),
            ("actor:bob@acme.example", 1),
            ("actor:ana@acme.example", 1)
        ]
    );
    // Ids are digests of the group and the first alert: the same anywhere.
    assert_eq!(
        w[0].incident.id,
        incident_id("actor:ana@acme.example", "a1")
    );
    assert_ne!(w[0].incident.id, w[2].incident.id);

    let by_ip = config("group_by = \"ip\"\n");
    let w = join_all(
        &by_ip,
        &[
            (alert("a1", "R1", Severity::Low, "TA0001"), ana, 0),
            (alert("a2", "R1", Severity::Low, "TA0001"), bob, 1),
        ],
    );
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].incident.group_key, "ip:203.0.113.9");
    assert_eq!(
        w[0].incident.names.actors,
        ["ana@acme.example", "bob@acme.example"]
    );
}

#[test]
fn the_first_notification_waits_unless_urgent_and_updates_keep_their_interval() {
    let c = config("group_wait_seconds = 30\ngroup_interval_minutes = 5\n");
    let mut clock = NoticeClock::default();
    schedule(&c, &mut clock, false, 1_000);
    assert_eq!(clock.notify_at, Some(31_000));
    schedule(&c, &mut clock, true, 2_000);
    assert_eq!(clock.notify_at, Some(2_000), "an urgent alert goes at once");
    // Sent at 2 s; a new alert at 10 s waits for the interval.
    clock = NoticeClock {
        notices: 1,
        notified: 1,
        notify_at: None,
        last_notice_at: Some(2_000),
        remind_at: Some(1_000_000),
    };
    schedule(&c, &mut clock, true, 10_000);
    assert_eq!(clock.notify_at, Some(302_000));
}
