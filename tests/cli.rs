//! The command line: `check`, `test` and `replay` on the shipped rules and on
//! broken input, with their exit codes.

use std::process::Command;

use serde_json::Value;

use crate::support::*;

fn hexwatch() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hexwatch"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c.env("RUST_LOG", "warn");
    c
}

#[test]
fn shipped_rules_pass_their_tests_and_check_is_clean() {
    let out = hexwatch().args(["test", "rules"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let last = stdout.lines().last().unwrap();
    assert!(last.ends_with(" passed, 0 failed"), "{last}");

    let out = hexwatch()
        .args(["check", "-c", "config.toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_reports_broken_rules_with_file_and_line() {
    let (code, stderr) = check_with(
        "let meta = #{\n  id: \"X\",\n  severity: \"SEVERE\",\n};\nfn rule(e) { true }\n",
        "",
    );
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("rule.rhai:3: meta.severity: \"SEVERE\" is not a severity"),
        "{stderr}"
    );
}

#[test]
fn unusable_config_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), "[server]\nlisen = \"x\"\n").unwrap();
    let out = hexwatch()
        .args(["serve", "-c"])
        .arg(dir.path().join("config.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("lisen") && stderr.contains("line 2"),
        "{stderr}"
    );

    let out = hexwatch().args(["replay"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "missing FILE is bad usage");
}

#[test]
fn replay_prints_alerts_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut share = hex_record(1, "SHARE_PROJECT_WITH_PUBLIC");
    share["event"]["actor"]["metadata"]["actorOrgRole"] = "ADMIN".into();
    let records = vec![
        share,
        hex_record(2, "RUN_PROJECT"),
        serde_json::json!({"event": "broken"}),
        // Sent twice, as Hex may: a duplicate, as in `serve`.
        hex_record(2, "RUN_PROJECT"),
    ];
    let file = dir.path().join("stream.ndjson.gz");
    std::fs::write(&file, gzip(ndjson(&records).as_bytes())).unwrap();
    let out = hexwatch()
        .args(["replay", "-c", "config.toml"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("replayed 3 records (1 duplicates, 1 quarantined)"),
        "{stderr}"
    );
    // (On a fresh install the new-network rule is still learning: LOW, left out here.)
    let alerts: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|a| a["id"] != "Hex.Behaviour.NewIpSensitiveAction")
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["id"], "Hex.Project.SharedPublicly");
    assert_eq!(alerts[0]["severity"], "HIGH");
    assert_eq!(alerts[0]["eventCount"], 1);
    assert_eq!(alerts[0]["events"][0]["p_log_type"], "Hex.Audit");
}

/// The daemon runs without transparent huge pages: where they are always on,
/// peak RSS at 50,000 records/s was about 150 MiB instead of 100-105.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn serve_runs_without_transparent_huge_pages() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join("config.toml"),
        format!("[server]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let daemon = BinaryDaemon::spawn(dir.path());
    wait_ready(port).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.0.id())).unwrap();
    assert!(status.contains("THP_enabled:\t0"), "{status}");
}

/// `replay` evaluates every record when a batch's rule-state writes cut its
/// evaluation short: the rest follows in later steps, or once the last batch
/// is read (the evaluation takes one step per batch journaled).
#[test]
fn replay_finishes_batches_cut_short_by_rule_state() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    // 50 entries a record: a 500-record batch stops after 401 (20,000 pending).
    std::fs::write(
        dir.path().join("rules/writes.rhai"),
        "let meta = #{ id: \"T.ManyWrites\", severity: \"LOW\" };\n\
         fn rule(event) { for i in 0..50 { kv_set(event.keySuffix + i, \"x\", 3600); } true }\n",
    )
    .unwrap();
    let path = dir.path().join("config.toml");
    let config = hexwatch::config::Config::parse(
        &path,
        "[rules]\ndir = \"rules\"\n",
        &MapEnv(Default::default()),
    )
    .unwrap();
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/samples/normal_days.ndjson");
    let (_, summary) = hexwatch::replay::run(&config, &[file], &mut Vec::new()).unwrap();
    assert_eq!(summary.records, 1_793);
    assert_eq!(summary.rule_errors, 0);
    assert_eq!(summary.matches, 1_793, "every record evaluated");
}

#[tokio::test]
async fn replay_dispatch_delivers_and_without_it_nothing_is_sent() {
    let hook = WebhookReceiver::start(vec![Reply::Status(200)]).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/rules/project_shared_publicly.rhai"
        ),
        dir.path().join("rules/project_shared_publicly.rhai"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "[[destinations]]\nnotify = \"alert\"\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{}\"\n",
            hook.url()
        ),
    )
    .unwrap();
    let file = dir.path().join("s.json");
    std::fs::write(
        &file,
        Value::Array(vec![hex_record(1, "SHARE_PROJECT_WITH_PUBLIC")]).to_string(),
    )
    .unwrap();
    let run = |dispatch: bool| {
        let mut c = hexwatch();
        c.args(["replay", "-c"]).arg(dir.path().join("config.toml"));
        if dispatch {
            c.arg("--dispatch");
        }
        c.arg(&file);
        tokio::task::spawn_blocking(move || c.output().unwrap())
    };
    let out = run(false).await.unwrap();
    assert!(out.status.success());
    assert_eq!(hook.requests().len(), 0);
    let out = run(true).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("dispatched: 1 delivered, 0 failed"),
        "{stderr}"
    );
    assert_eq!(hook.requests().len(), 1);
    let stdout: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    let sent: Value = serde_json::from_slice(&hook.requests()[0].body).unwrap();
    assert_eq!(sent["alertId"], stdout["alertId"]);
}

/// `rules/README.md` lists every shipped rule; regenerate with `HEXWATCH_BLESS=1 cargo test`.
#[test]
fn rule_catalogue_matches_the_rules() {
    use hexwatch_rules::catalog;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let engine = hexwatch_rules::engine::build(
        100_000,
        std::sync::Arc::new(hexwatch_rules::state::MemoryState::default()),
    );
    let mut loader = hexwatch_rules::ruleset::Loader::new(engine, &root.join("rules"), None, None);
    let scan = loader.scan().unwrap();
    assert!(scan.errors.is_empty(), "{:?}", scan.errors);
    assert!(scan.rules.len() >= 20);
    let doc_path = root.join("rules/README.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap();
    let table = catalog::markdown(&scan.rules);
    let fresh = catalog::splice(&doc, &table).expect("rules/README.md has the catalogue markers");
    if fresh != doc {
        if std::env::var_os("HEXWATCH_BLESS").is_some() {
            std::fs::write(&doc_path, fresh).unwrap();
        } else {
            panic!("rules/README.md is out of date with the rules; run HEXWATCH_BLESS=1 cargo test\nexpected table:\n{table}");
        }
    }
}

/// Runs `hexwatch check` on a directory with one rule file and a config.
fn check_with(rule: &str, config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/rule.rhai"), rule).unwrap();
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let out = hexwatch()
        .args(["check", "-c"])
        .arg(dir.path().join("config.toml"))
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_names_the_line_of_bad_tuning_and_warns_about_unknown_actions() {
    let typo = "let meta = #{ id: \"T.Typo\", severity: \"LOW\", actions: [\"SHARE_PROJECT_WITH_PUBLICK\"] };\nfn rule(e) { true }\n";
    let (code, stderr) = check_with(
        typo,
        "[rules]\ndir = \"rules\"\n\n[[suppressions]]\nrule = \"T.Typo\"\nip = \"10.0.0.0/40\"\nreason = \"lab\"\n",
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("line 4: suppressions[0]: ip \"10.0.0.0/40\""),
        "{stderr}"
    );

    let (code, stderr) = check_with(
        typo,
        "[rules]\ndir = \"rules\"\n[rules.overrides.\"T.Nope\"]\nenabled = false\n",
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("\"SHARE_PROJECT_WITH_PUBLICK\" is not a Hex audit action; did you mean SHARE_PROJECT_WITH_PUBLIC?"), "{stderr}");
    assert!(
        stderr.contains("config line 3: rules.overrides.\"T.Nope\": no loaded rule has this id"),
        "{stderr}"
    );

    // A count's actions are checked too: a typo there would count nothing.
    let (code, stderr) = check_with(
        "let meta = #{ id: \"T.Count\", severity: \"LOW\", count: #{ actions: [\"RUN_CEL\"], by: \"actor\", seconds: 60, at_least: 2 } };\nfn rule(e) { true }\n",
        "[rules]\ndir = \"rules\"\n",
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(
            "meta.count actions: \"RUN_CEL\" is not a Hex audit action; did you mean RUN_CELL?"
        ),
        "{stderr}"
    );
}

/// `hexwatch test` used a fixed operation limit whatever `rules.max_operations`
/// said, so a rule could pass its tests and then fail in the daemon.
#[test]
fn test_uses_the_configured_max_operations() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(
        dir.path().join("rules/busy.rhai"),
        "let meta = #{ id: \"T.Busy\", severity: \"LOW\" };\nfn rule(e) { let n = 0; for i in 0..2000 { n += i; } n > 0 }\n",
    )
    .unwrap();
    let log = serde_json::json!({"event": {"actor": {"id": "u1"}, "action": "RUN_CELL", "occurred_at": "2024-03-05T14:00:00Z"}});
    std::fs::write(
        dir.path().join("rules/busy.tests.json"),
        serde_json::json!([{"name": "busy", "expect": true, "log": log}]).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tight.toml"),
        "[rules]\ndir = \"rules\"\nmax_operations = 500\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = hexwatch()
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(&["test"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = run(&["test", "-c", "tight.toml"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("Too many operations"), "{out}");
}

/// An alert as replay prints it, without what differs from run to run (the
/// wall-clock `createdAt`, each record's `p_row_id` and `p_parse_time`).
fn stable(line: &str) -> Value {
    let mut a: Value = serde_json::from_str(line).unwrap();
    a.as_object_mut().unwrap().remove("createdAt");
    for e in a["events"].as_array_mut().unwrap() {
        let e = e.as_object_mut().unwrap();
        e.remove("p_row_id");
        e.remove("p_parse_time");
    }
    a
}

/// Replay's results do not change as it gets faster: on both sample streams
/// the shipped pack gives the alerts recorded in `tests/fixtures/replay/`
/// (written by the build before replay was split over two threads), in the
/// same order.
#[test]
fn replay_gives_the_recorded_alerts_on_the_sample_streams() {
    for (input, expected) in [
        ("incident.json", "incident.alerts.jsonl"),
        ("normal_days.ndjson", "normal_days.alerts.jsonl"),
    ] {
        let out = hexwatch()
            .args(["replay", "-c", "config.toml"])
            .arg(format!("examples/samples/{input}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(stable)
            .collect();
        let path = format!("tests/fixtures/replay/{expected}");
        let want: Vec<Value> =
            std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(&path))
                .unwrap()
                .lines()
                .map(stable)
                .collect();
        assert!(!want.is_empty());
        assert_eq!(got.len(), want.len(), "{input}: alerts");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "{input}: alert {i} differs from {path}");
        }
    }
}

/// `test`, `replay`, `coverage`, `check` and `redeliver` refused to run
/// unless every destination's secret and the console's token were exported,
/// which rule authors do not have. They run without them now; `check` warns
/// about each variable, and with `--strict` fails; only what sends
/// (`replay --dispatch`, `serve`, `notify-test`) needs them.
#[test]
fn offline_commands_must_not_need_production_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/rules");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[rules]\ndir = {rules:?}\n[storage]\npath = \"data/h.db\"\n\
             [ui]\nadmin_token_env = \"HW_TEST_UNSET_TOKEN\"\n\
             [[destinations]]\nnotify = \"alert\"\nname = \"slack\"\ntype = \"slack\"\nurl_env = \"HW_TEST_UNSET_SLACK\"\n\
             [[destinations]]\nnotify = \"alert\"\nname = \"hook\"\ntype = \"webhook\"\nurl = \"https://siem.example/in\"\n\
             headers = {{ Authorization = \"Bearer ${{HW_TEST_UNSET_KEY}}\" }}\n"
        ),
    )
    .unwrap();
    let records = dir.path().join("records.ndjson");
    std::fs::write(
        &records,
        ndjson(&[hex_record(1, "SHARE_PROJECT_WITH_PUBLIC")]),
    )
    .unwrap();
    // The database `redeliver` works on, as a daemon left it.
    let storage = hexwatch::config::Config::parse(
        &config,
        "[storage]\npath = \"data/h.db\"\n",
        &MapEnv(Default::default()),
    )
    .unwrap()
    .storage;
    hexwatch_storage::Storage::open(&storage).unwrap();
    let run = |args: &[&str]| {
        let out = hexwatch()
            .args(args)
            .arg("-c")
            .arg(&config)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = run(&["check"]);
    assert_eq!(code, Some(0), "{text}");
    for var in [
        "HW_TEST_UNSET_TOKEN",
        "HW_TEST_UNSET_SLACK",
        "HW_TEST_UNSET_KEY",
    ] {
        assert!(text.contains("warning: ") && text.contains(var), "{text}");
    }
    let (code, text) = run(&["check", "--strict"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("error: ") && text.contains("HW_TEST_UNSET_SLACK"),
        "{text}"
    );
    for args in [&["test"][..], &["coverage"], &["redeliver"]] {
        let (code, text) = run(args);
        assert_eq!(code, Some(0), "{args:?}: {text}");
    }
    let records = records.to_str().unwrap();
    let (code, text) = run(&["replay", records]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = run(&["replay", "--dispatch", records]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("HW_TEST_UNSET"), "{text}");
}

/// JSON logs held JSON inside JSON strings (an alert's destinations, the
/// pruning counts, the stopped evaluator's cursor, all under "fields"), and
/// every start logged refinery's migration checks at INFO. Each field is now
/// a top-level JSON value of its own, and libraries log warnings only.
#[tokio::test]
async fn json_logs_have_flat_typed_fields_and_no_library_info() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(
        dir.path().join("rules/each.rhai"),
        "let meta = #{ id: \"T.Each\", severity: \"HIGH\" };\nfn rule(e) { true }\n",
    )
    .unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[[destinations]]\nnotify = \"alert\"\nname = \"hook\"\n\
             type = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("log.ndjson");
    let mut child = Command::new(env!("CARGO_BIN_EXE_hexwatch"))
        .args(["serve", "-c"])
        .arg(dir.path().join("config.toml"))
        .env("HEXWATCH_SECRET", SECRET)
        .env("HEXWATCH_LOG_FORMAT", "json")
        .env_remove("RUST_LOG")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_ready(port).await;
    let r = client()
        .post(format!("http://127.0.0.1:{port}/ingest/hex"))
        .header(AUTH, SECRET)
        .body(hex_record(1, "RUN_PROJECT").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let alert_logged = || std::fs::read_to_string(&log).unwrap().contains("\"alert\"");
    assert!(wait_until(std::time::Duration::from_secs(10), alert_logged).await);
    // SIGTERM, and the stop logged.
    Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    child.wait().unwrap();

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let alert = lines
        .iter()
        .find(|l| l["message"] == "alert")
        .expect("the alert line");
    assert_eq!(alert["destinations"], "hook", "{alert}");
    assert_eq!(alert["rule"], "T.Each");
    let stopped = lines
        .iter()
        .find(|l| l["message"] == "evaluator stopped")
        .expect("the stop line");
    assert_eq!(stopped["cursor"], 1, "{stopped}");
    for line in &lines {
        assert!(line.get("fields").is_none(), "fields nested: {line}");
        let target = line["target"].as_str().unwrap_or("");
        assert!(
            target.starts_with("hexwatch") || line["level"] != "INFO",
            "a library's INFO line: {line}"
        );
        for (key, value) in line.as_object().unwrap() {
            if let Some(s) = value.as_str() {
                let nested =
                    serde_json::from_str::<Value>(s).is_ok_and(|v| v.is_object() || v.is_array());
                assert!(!nested, "{key} holds JSON in a string: {line}");
            }
        }
    }
}
