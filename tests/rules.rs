//! Rules in a running daemon: hot reload (new, edited in place, edited by
//! rename, deleted, broken), sandbox limits, alert windows across restarts —
//! each asserted through real ingest over HTTP.

use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(5);

/// A rule whose title is `title`; tests edit it and wait for the reload.
fn rule(id: &str, action: &str, title: &str) -> String {
    format!(
        "let meta = #{{ id: \"{id}\", severity: \"HIGH\", actions: [\"{action}\"] }};\n\
         fn rule(e) {{ true }}\nfn title(e) {{ \"{title}\" }}\n"
    )
}

#[tokio::test]
async fn new_edited_renamed_and_deleted_rules_take_effect() {
    let mut d = TestDaemon::start("").await;
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };

    // New file.
    let reloaded = d.reloads("ok").await;
    d.write_rule(
        "share.rhai",
        &rule("T.Share", "SHARE_PROJECT_WITH_PUBLIC", "v1"),
    );
    d.wait_for_reload("ok", reloaded).await;
    d.send(&[hex_record(next(), "SHARE_PROJECT_WITH_PUBLIC")])
        .await;
    assert!(wait_until(WAIT, || d.alerts_of("T.Share") == 1).await);
    assert_eq!(d.last_alert("T.Share").unwrap()["title"], "v1");

    // Edited in place: new title (a new dedup string, so a new alert).
    let reloaded = d.reloads("ok").await;
    d.write_rule(
        "share.rhai",
        &rule("T.Share", "SHARE_PROJECT_WITH_PUBLIC", "v2"),
    );
    d.wait_for_reload("ok", reloaded).await;
    d.send(&[hex_record(next(), "SHARE_PROJECT_WITH_PUBLIC")])
        .await;
    assert!(wait_until(WAIT, || d.alerts_of("T.Share") == 2).await);
    assert_eq!(d.last_alert("T.Share").unwrap()["title"], "v2");

    // Edited the way editors save: write a temporary file, rename it over.
    let tmp = d.rules_dir().join(".share.rhai.swp");
    let reloaded = d.reloads("ok").await;
    std::fs::write(&tmp, rule("T.Share", "SHARE_PROJECT_WITH_PUBLIC", "v3")).unwrap();
    std::fs::rename(&tmp, d.rules_dir().join("share.rhai")).unwrap();
    d.wait_for_reload("ok", reloaded).await;
    d.send(&[hex_record(next(), "SHARE_PROJECT_WITH_PUBLIC")])
        .await;
    assert!(wait_until(WAIT, || d.alerts_of("T.Share") == 3).await);
    assert_eq!(d.last_alert("T.Share").unwrap()["title"], "v3");

    // Deleted: no more alerts.
    let reloaded = d.reloads("ok").await;
    std::fs::remove_file(d.rules_dir().join("share.rhai")).unwrap();
    d.wait_for_reload("ok", reloaded).await;
    d.send(&[hex_record(next(), "SHARE_PROJECT_WITH_PUBLIC")])
        .await;
    // A marker rule proves the record was evaluated after the deletion.
    let reloaded = d.reloads("ok").await;
    d.write_rule("marker.rhai", &rule("T.Marker", "RUN_PROJECT", "m"));
    d.wait_for_reload("ok", reloaded).await;
    d.send(&[hex_record(next(), "RUN_PROJECT")]).await;
    assert!(wait_until(WAIT, || d.alerts_of("T.Marker") == 1).await);
    assert_eq!(d.alerts_of("T.Share"), 3);
    d.stop().await;
}

#[tokio::test]
async fn broken_edit_keeps_the_previous_version_running() {
    let mut d = TestDaemon::start("").await;
    let reloaded = d.reloads("ok").await;
    d.write_rule(
        "share.rhai",
        &rule("T.Share", "SHARE_PROJECT_WITH_PUBLIC", "good"),
    );
    d.wait_for_reload("ok", reloaded).await;
    d.write_rule(
        "share.rhai",
        "let meta = #{ id: \"T.Share\", severity: \"HIGH\" };\nfn rule(e) { e.event.action == }\n",
    );
    let readyz = || async {
        client()
            .get(d.url("/readyz"))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let mut problems = Value::Null;
    for _ in 0..50 {
        problems = readyz().await["problems"].clone();
        if problems.as_array().is_some_and(|p| !p.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = problems.to_string();
    assert!(
        text.contains("rule file share.rhai does not load"),
        "{text}"
    );

    d.send(&[hex_record(1, "SHARE_PROJECT_WITH_PUBLIC")]).await;
    assert!(wait_until(WAIT, || d.alerts_of("T.Share") == 1).await);
    assert_eq!(d.last_alert("T.Share").unwrap()["title"], "good");

    let metrics = d.metrics().await;
    assert!(
        metrics.contains("hexwatch_rule_reloads_total{outcome=\"error\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hexwatch_rule_matches_total{rule=\"T.Share\"} 1"),
        "{metrics}"
    );
    d.stop().await;
}

#[tokio::test]
async fn runaway_rules_become_rule_errors_and_others_still_match() {
    let mut d = TestDaemon::start("").await;
    d.write_rule(
        "loop.rhai",
        "let meta = #{ id: \"T.Loop\", severity: \"LOW\" }; fn rule(e) { loop {} }",
    );
    d.write_rule(
        "recurse.rhai",
        "let meta = #{ id: \"T.Recurse\", severity: \"LOW\" }; fn f(x) { f(x + 1) } fn rule(e) { f(0) }",
    );
    d.write_rule(
        "grow.rhai",
        "let meta = #{ id: \"T.Grow\", severity: \"LOW\" }; fn rule(e) { let s = \"x\"; loop { s += s; } }",
    );
    d.write_rule("fine.rhai", &rule("T.Fine", "RUN_PROJECT", "fine"));
    d.wait_for_rules_loaded(4).await;
    d.send(&[hex_record(1, "RUN_PROJECT"), hex_record(2, "RUN_PROJECT")])
        .await;
    assert!(wait_until(WAIT, || d.alerts_of("T.Fine") == 1).await);
    for id in ["T.Loop", "T.Recurse", "T.Grow"] {
        assert!(wait_until(WAIT, || d.alerts_of(id) == 1).await, "{id}");
        let a = d.last_alert(id).unwrap();
        assert_eq!(a["type"], "RULE_ERROR", "{a}");
        // Deduplicated per rule and error: two records, one alert with two events.
        assert_eq!(a["eventCount"], 2, "{a}");
    }
    d.stop().await;
}

#[tokio::test]
async fn threshold_windows_survive_a_restart() {
    let d = TestDaemon::start("").await;
    let reloaded = d.reloads("ok").await;
    d.write_rule(
        "burst.rhai",
        "let meta = #{ id: \"T.Burst\", severity: \"MEDIUM\", actions: [\"DOWNLOAD_AS_CSV\"], threshold: 5, dedup_minutes: 15 };\n\
         fn rule(e) { true }\nfn dedup(e) { e.event.actor.metadata.email }\n",
    );
    d.wait_for_reload("ok", reloaded).await;
    let at = |i: usize, min: usize| {
        event_at(
            i,
            "DOWNLOAD_AS_CSV",
            "eve@acme.example",
            &format!("2024-03-05T10:{min:02}:00Z"),
        )
    };
    d.send(&[at(1, 0), at(2, 1), at(3, 2)]).await;
    assert!(
        wait_until(WAIT, || d
            .count("SELECT coalesce(max(event_count), 0) FROM alerts")
            == 3)
        .await
    );
    assert_eq!(d.alerts_of("T.Burst"), 0);

    let mut d = d.restart().await;
    d.send(&[at(4, 3)]).await;
    d.send(&[at(5, 4)]).await;
    assert!(wait_until(WAIT, || d.alerts_of("T.Burst") == 1).await);
    d.send(&[at(6, 10)]).await;
    assert!(
        wait_until(WAIT, || d
            .last_alert("T.Burst")
            .is_some_and(|a| a["eventCount"] == 6))
        .await
    );
    assert_eq!(
        d.alerts_of("T.Burst"),
        1,
        "later matches update, never re-create"
    );
    let a = d.last_alert("T.Burst").unwrap();
    assert_eq!(a["firstEventAt"], "2024-03-05T10:00:00.000Z");
    assert_eq!(a["lastEventAt"], "2024-03-05T10:10:00.000Z");
    assert_eq!(a["events"].as_array().unwrap().len(), 6);
    // 15 minutes after the first match: a new window.
    d.send(&[at(7, 16), at(8, 17), at(9, 18), at(10, 19), at(11, 20)])
        .await;
    assert!(wait_until(WAIT, || d.alerts_of("T.Burst") == 2).await);
    d.stop().await;
}

#[tokio::test]
async fn evaluation_resumes_from_the_journal_after_a_restart() {
    // Records accepted while no rule matched are not re-evaluated later; records
    // committed but not yet evaluated when the daemon stops are evaluated on the
    // next start (the cursor is in the same database).
    let d = TestDaemon::start("").await;
    let reloaded = d.reloads("ok").await;
    d.write_rule("run.rhai", &rule("T.Run", "RUN_PROJECT", "run"));
    d.wait_for_reload("ok", reloaded).await;
    d.send(&[hex_record(1, "RUN_PROJECT")]).await;
    assert!(wait_until(WAIT, || d.alerts_of("T.Run") == 1).await);
    let mut d = d.restart().await;
    // A second record after the restart: once it is evaluated, a record
    // evaluated again would have been counted before it.
    d.send(&[hex_record(2, "RUN_PROJECT")]).await;
    assert!(
        wait_until(WAIT, || d.count(
            "SELECT coalesce(max(seq), 0) FROM cursors WHERE name = 'evaluator'"
        ) == 2)
        .await
    );
    assert_eq!(
        d.count("SELECT event_count FROM alerts WHERE rule_id = 'T.Run'"),
        2,
        "nothing re-evaluated after the restart"
    );
    assert_eq!(
        d.count("SELECT coalesce(max(seq), 0) FROM cursors WHERE name = 'evaluator'"),
        d.count("SELECT max(seq) FROM events")
    );
    d.stop().await;
}

#[tokio::test]
async fn slow_rules_never_hold_up_ingestion() {
    // Every record runs a rule to its operation limit: evaluation falls far behind,
    // but ingestion (which needs the database's write lock) must not notice.
    let mut d = TestDaemon::start_with_env(
        "",
        &[],
        &[(
            "slow.rhai",
            "let meta = #{ id: \"T.Slow\", severity: \"LOW\" }; fn rule(e) { let n = 0; loop { n += 1; } }",
        )],
    )
    .await;
    let started = std::time::Instant::now();
    for b in 0..20 {
        let recs: Vec<Value> = (0..100)
            .map(|i| hex_record(b * 100 + i, "RUN_PROJECT"))
            .collect();
        d.send(&recs).await;
    }
    let took = started.elapsed();
    println!("ingested 2000 records in {took:?} while every record hits the operation limit");
    assert!(took < Duration::from_secs(3), "ingestion took {took:?}");
    assert!(d.count("SELECT count(*) FROM events") == 2000);
    assert!(
        d.count("SELECT coalesce(max(seq), 0) FROM cursors") < 2000,
        "evaluation is still behind, as expected"
    );
    d.stop().await;
}

#[tokio::test]
async fn rule_state_survives_a_restart() {
    let rule = r#"let meta = #{ id: "T.Count", severity: "LOW", actions: ["RUN_PROJECT"] };
fn rule(e) { counter_incr(`runs:${actor(e)}`, 0) >= 3 }
fn title(e) { `third run by ${actor(e)}` }
"#;
    let d = TestDaemon::start_with_env("", &[], &[("count.rhai", rule)]).await;
    let rec = |i: usize| event_at(i, "RUN_PROJECT", "kai@acme.example", "2024-03-05T10:00:00Z");
    d.send(&[rec(1), rec(2)]).await;
    assert!(
        wait_until(WAIT, || d
            .count("SELECT coalesce(max(seq), 0) FROM cursors")
            == 2)
        .await
    );
    let mut d = d.restart().await;
    d.send(&[rec(3)]).await;
    assert!(wait_until(WAIT, || d.alerts_of("T.Count") == 1).await);
    d.stop().await;
}

/// Overrides, parameters and suppressions in the config take effect with the
/// next rescan, like rule edits; a broken edit keeps the previous tuning and is
/// reported on `/readyz`.
#[tokio::test]
async fn tuning_in_the_config_reloads_with_the_rules() {
    const SHARE: &str = r#"let meta = #{ id: "T.Share", severity: "HIGH", actions: ["SHARE_PROJECT_WITH_PUBLIC"],
    params: #{ word: "shared" } };
fn rule(e) { true }
fn title(e) { `${actor(e)} ${param("word")}` }
"#;
    let mut d = TestDaemon::start_with_env(
        "[rules.overrides.\"T.Share\"]\nseverity = \"LOW\"\n[rules.params]\nword = \"published\"\n",
        &[],
        &[("share.rhai", SHARE)],
    )
    .await;
    d.send(&[hex_record(1, "SHARE_PROJECT_WITH_PUBLIC")]).await;
    assert!(wait_until(WAIT, || d.alerts_of("T.Share") == 1).await);
    let a = d.last_alert("T.Share").unwrap();
    assert_eq!(
        (a["severity"].as_str(), a["title"].as_str()),
        (Some("LOW"), Some("user1@acme.example published"))
    );

    // New tuning: a suppression for one actor, another severity.
    let config = d.dir.join("config.toml");
    let base = std::fs::read_to_string(&config).unwrap();
    let tuned = base.replace("severity = \"LOW\"", "severity = \"CRITICAL\"")
        + "[[suppressions]]\nrule = \"T.Share\"\nactor = \"USER2@acme.example\"\nreason = \"test account\"\n";
    let reloaded = d.reloads("ok").await;
    std::fs::write(&config, &tuned).unwrap();
    d.wait_for_reload("ok", reloaded).await;
    d.send(&[
        hex_record(2, "SHARE_PROJECT_WITH_PUBLIC"),
        hex_record(3, "SHARE_PROJECT_WITH_PUBLIC"),
    ])
    .await;
    assert!(wait_until(WAIT, || d.alerts_of("T.Share") == 2).await);
    let a = d.last_alert("T.Share").unwrap();
    assert_eq!(
        (a["severity"].as_str(), a["title"].as_str()),
        (Some("CRITICAL"), Some("user3@acme.example published"))
    );
    assert!(d
        .metrics()
        .await
        .contains("hexwatch_rule_suppressed_total{rule=\"T.Share\"} 1"));
    // Suppressed, but kept in the journal.
    assert_eq!(
        d.count("SELECT count(*) FROM events WHERE record LIKE '%user2@acme.example%'"),
        1
    );

    // A broken edit: the previous tuning stays, and /readyz says so. The file
    // is rewritten in place (truncated, then written), so a scan can catch it
    // empty: an empty config is valid TOML with no tuning, and must not be
    // taken for the edit.
    let reloaded = d.reloads("error").await;
    std::fs::write(
        &config,
        tuned.replace(
            "reason = \"test account\"",
            "ip = \"300.1.1.1\"\nreason = \"x\"",
        ),
    )
    .unwrap();
    d.wait_for_reload("error", reloaded).await;
    let ready = d.readyz().await;
    assert!(
        ready["problems"]
            .to_string()
            .contains("config file config.toml does not load"),
        "{ready}"
    );
    d.send(&[hex_record(9, "SHARE_PROJECT_WITH_PUBLIC")]).await; // user2 again
    d.send(&[hex_record(4, "SHARE_PROJECT_WITH_PUBLIC")]).await;
    assert!(wait_until(WAIT, || d.alerts_of("T.Share") == 3).await);
    assert_eq!(
        d.last_alert("T.Share").unwrap()["title"],
        "user4@acme.example published"
    );
    d.stop().await;
}

/// Issue 38, defect 4: one record dated 2999 (accepted: `occurred_at` has no
/// upper bound) moved the evaluated watermark, and the next pruning took
/// every baseline and learned name with it. The watermark now moves at most
/// an hour past a record's receipt; records dated 1970, 2999 and +1 day are
/// still accepted and evaluated.
#[tokio::test]
async fn a_future_dated_record_moves_the_watermark_no_further_than_an_hour_past_receipt() {
    let d = TestDaemon::start("").await;
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let records = [
        event_at(1, "RUN_PROJECT", "a@acme.example", "1970-01-01T00:00:00Z"),
        event_at(2, "RUN_PROJECT", "a@acme.example", "2999-01-01T00:00:00Z"),
        event_at(3, "RUN_PROJECT", "a@acme.example", &tomorrow),
    ];
    let sent = chrono::Utc::now().timestamp_millis();
    d.send(&records).await;
    assert!(
        wait_until(WAIT, || d.count(
            "SELECT coalesce(max(seq), 0) FROM cursors WHERE name = 'evaluator'"
        ) == 3)
        .await,
        "not evaluated"
    );
    let watermark = d.count("SELECT coalesce(max(ms), 0) FROM watermarks WHERE name = 'evaluated'");
    let bound = chrono::Utc::now().timestamp_millis() + 3_600_000;
    assert!(
        watermark >= sent + 3_600_000 - 60_000 && watermark <= bound,
        "watermark {watermark}, receipt about {sent}"
    );
    assert_eq!(d.count("SELECT count(*) FROM events"), 3);
}

/// A window checked only that a match came before its end, so matches that
/// arrived newest first (as late delivery does), or after one dated a day
/// ahead, folded into one alert. Six shares two hours apart are six alerts
/// with 60-minute windows, in the daemon and in `replay` alike.
#[tokio::test]
async fn alert_windows_absorb_no_matches_from_before_their_start() {
    const SHARE_RULE: &str = r#"
let meta = #{ id: "T.Share", severity: "HIGH", dedup_minutes: 60, actions: ["SHARE_PROJECT_WITH_PUBLIC"] };
fn rule(e) { true }
fn dedup(e) { actor(e) }
"#;
    let mut d = TestDaemon::start_with_env("", &[], &[("share.rhai", SHARE_RULE)]).await;
    let at = |hour: i64| {
        let t = chrono::DateTime::parse_from_rfc3339("2026-03-02T00:00:00Z").unwrap()
            + chrono::Duration::hours(hour);
        t.to_rfc3339()
    };
    let mut records = vec![event_at(
        0,
        "SHARE_PROJECT_WITH_PUBLIC",
        "ed@acme.example",
        &at(24),
    )];
    for (n, hour) in [10, 8, 6, 4, 2, 0].into_iter().enumerate() {
        records.push(event_at(
            n + 1,
            "SHARE_PROJECT_WITH_PUBLIC",
            "ed@acme.example",
            &at(hour),
        ));
    }
    d.send(&records).await;
    assert!(
        wait_until(WAIT, || d.count(
            "SELECT coalesce(max(seq), 0) FROM cursors WHERE name = 'evaluator'"
        ) == 7)
        .await,
        "not evaluated"
    );
    d.stop().await;
    let live = d.strings("SELECT first_event_at FROM alerts WHERE created ORDER BY window_start");
    assert_eq!(live.len(), 7, "{live:?}");

    let alerts = d.replay(&records);
    let mut replayed: Vec<String> = alerts.into_iter().map(|a| a.first_event_at).collect();
    replayed.sort();
    assert_eq!(replayed.len(), 7);
    assert!(
        alerts_same_times(&live, &replayed),
        "{live:?} / {replayed:?}"
    );
}

/// Whether two lists of RFC 3339 times name the same instants.
fn alerts_same_times(a: &[String], b: &[String]) -> bool {
    let ms = |v: &[String]| -> Vec<i64> {
        v.iter()
            .map(|t| {
                chrono::DateTime::parse_from_rfc3339(t)
                    .unwrap()
                    .timestamp_millis()
            })
            .collect()
    };
    ms(a) == ms(b)
}
