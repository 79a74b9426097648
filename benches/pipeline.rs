//! Criterion benchmarks of the CPU stages.
//!
//! - `ingest/prepare_ndjson_100` (records of about 900 bytes) and
//!   `ingest/prepare_ndjson_100_real_shape` (shaped like Hex's documented event, about
//!   1.6 KB, three targets): an NDJSON body of 100 records through
//!   decode + Hex.Audit validation + serialisation for the journal (ingest minus
//!   HTTP and SQLite).
//! - `evaluate/25_rules_no_prefilter` and `evaluate/25_rules_prefilter`: one
//!   stored record shaped like Hex's documented event (JSON text, as the evaluator
//!   reads it from the journal) against
//!   25 rules, on a realistic mix of Hex actions; the same rules without and with
//!   `meta.actions`.
//! - `evaluate/shipped_pack_normal_day`: the records of `examples/samples/normal_days.ndjson`
//!   against the rules in `rules/` (the whole pack).

use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hexwatch_rules::engine;
use hexwatch_rules::eval::RuleRunner;
use hexwatch_rules::ruleset::{compile, Loader, RuleSet};
use hexwatch_rules::state::MemoryState;

#[path = "../examples/common/records.rs"]
mod records;

/// The allocator the hexwatch binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn ingest_prepare(c: &mut Criterion) {
    let body = records::ndjson_batch(0, 100);
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(100));
    g.bench_function("prepare_ndjson_100", |b| {
        b.iter(|| {
            let p =
                hexwatch::ingest::prepare(body.as_bytes(), None, limits(16 << 20), "hex").unwrap();
            assert_eq!(p.batch.entries.len(), 100);
            p
        })
    });
    // Shaped like Hex's documented event: three targets with JSON-string
    // representations, about 1.6 KB a record.
    let body: String = (0..100).map(|i| real_shaped(i) + "\n").collect();
    g.bench_function("prepare_ndjson_100_real_shape", |b| {
        b.iter(|| {
            let p =
                hexwatch::ingest::prepare(body.as_bytes(), None, limits(16 << 20), "hex").unwrap();
            assert_eq!(p.batch.entries.len(), 100);
            p
        })
    });
    g.finish();
}

/// A record shaped like the event in Hex's audit log reference: snake_case
/// target types, `representation` as a JSON string, the project's title on the
/// `project_version` target, `version` a number.
fn real_shaped(i: u64) -> String {
    let project = serde_json::json!({
        "id": format!("4a0b6c2e-{i:04}-4f3b-9a51-2d7c8e1f0a9b"),
        "createdDate": "2024-02-11T09:14:52.118Z", "lastEditedDate": "2024-03-05T14:02:10.004Z",
        "publicRole": null, "organizationRole": "VIEWER", "ownerId": "9f8e7d6c-0001-4a1b-8c2d-1e2f3a4b5c6d",
        "archivedDate": null, "trashedDate": null
    });
    let version = serde_json::json!({
        "id": format!("7c1d9e3f-{i:04}-4b2a-8d6e-5f4a3b2c1d0e"),
        "title": format!("Revenue forecast {}", i % 97), "version": i % 40, "published": true
    });
    let cell = serde_json::json!({
        "id": format!("c3e2d1f0-{i:04}-4c5b-9e8d-7a6b5c4d3e2f"),
        "cellType": "SQL", "label": "Quarterly bookings by region", "dataConnectionId": "dc-5f6e7d8c"
    });
    serde_json::json!({
        "source": "Hex",
        "keySuffix": format!("01HQZX3V5W1B2C3D4E5F{i:06}"),
        "timestamp": "2024-03-05T14:02:11.512Z",
        "event": {
            "actor": {"id": "9f8e7d6c-0001-4a1b-8c2d-1e2f3a4b5c6d", "type": "USER", "metadata": {
                "email": format!("analyst{}@acme.example", i % 23), "workspace": "Acme Analytics",
                "workspaceId": "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0", "actorOrgRole": "EDITOR"}},
            "action": "RUN_CELL",
            "context": {"location": format!("198.51.100.{}", i % 200),
                "user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_3) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 Safari/537.36"},
            "targets": [
                {"id": project["id"], "type": "project", "metadata": {"created": false, "representation": project.to_string()}},
                {"id": version["id"], "type": "project_version", "metadata": {"created": false, "representation": version.to_string()}},
                {"id": cell["id"], "type": "cell", "metadata": {"created": false, "representation": cell.to_string()}}
            ],
            "version": 1,
            "metadata": {"result": "SUCCESS", "requestArgs": "{\"runType\":\"cell\",\"inputs\":{}}",
                "hexTraceId": format!("{:016x}", i.wrapping_mul(0x2545_F491_4F6C_DD1D)), "source": "WEB"},
            "occurred_at": "2024-03-05T14:02:10.998Z"
        }
    })
    .to_string()
}

/// 25 detections of the kind the pack has: an action, a result check, and
/// for some a look at the actor or the request.
const ACTIONS: [&str; 25] = [
    "SHARE_PROJECT_WITH_PUBLIC",
    "UPDATE_PUBLIC_SHARING_SETTING",
    "UPDATE_ALLOW_EMBEDDING",
    "UPDATE_PROJECT_PUBLIC_DUPLICATION_ALLOWED",
    "UPDATE_ALLOW_CSV_DOWNLOADS",
    "UPDATE_ALLOW_FILE_UPLOADS",
    "UPDATE_USER_ROLE",
    "INVITE_USER_AS_ADMIN",
    "GRANT_ADMIN_PROJECT_ACCESS",
    "SET_DIRECTORY_SYNC_ADMIN_GROUP",
    "UPDATE_GROUP_MEMBERS",
    "UPDATE_SSO_CONFIGURATION",
    "ADD_WORKSPACE_DOMAIN",
    "CREATE_PASSWORD_USER",
    "GRANT_USER_API_ACCESS",
    "UPDATE_API_TOKEN_EXPIRATION_POLICY",
    "EDIT_WORKSPACE_SECRET",
    "CREATE_MAGIC_API_KEY",
    "PERMANENTLY_DELETE_PROJECT",
    "SET_DATA_RETENTION_CELL_OUTPUTS",
    "DELETE_DATA_CONNECTION",
    "DOWNLOAD_AS_CSV",
    "EXPORT_AS_PDF",
    "COPY_PROJECT_FROM_EXTERNAL_WORKSPACE",
    "DOWNLOAD_FILE_FROM_EXTERNAL_FILE_INTEGRATION",
];

fn rule_source(i: usize, action: &str, prefilter: bool) -> String {
    let actions = if prefilter {
        format!("actions: [\"{action}\"], ")
    } else {
        String::new()
    };
    let extra = match i % 3 {
        0 => "",
        1 => " && !is_admin(event)",
        _ => " && event.event.actor?.metadata?.email != ()",
    };
    format!(
        "let meta = #{{ id: \"Bench.{i}\", severity: \"HIGH\", {actions}}};\n\
         fn rule(event) {{ event.event.action == \"{action}\" && succeeded(event){extra} }}\n\
         fn title(event) {{ `${{actor(event)}} did {action} on ${{target_name(event)}}` }}\n"
    )
}

fn rule_set(prefilter: bool) -> RuleSet {
    let engine = engine::build(100_000, Arc::new(MemoryState::default()));
    RuleSet::new(
        ACTIONS
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let src = rule_source(i, a, prefilter);
                Arc::new(
                    compile(
                        &engine,
                        Path::new("bench.rhai"),
                        &src,
                        None,
                        &Default::default(),
                    )
                    .unwrap(),
                )
            })
            .collect(),
    )
}

/// Stored records as the evaluator reads them: (action, JSON text, event time).
fn stored_records(n: u64) -> Vec<(String, String, i64)> {
    let body = records::real_ndjson_batch(0, n);
    let p = hexwatch::ingest::prepare(body.as_bytes(), None, limits(1 << 30), "hex").unwrap();
    p.batch
        .entries
        .into_iter()
        .map(|e| (e.action, e.json.to_string(), 1_709_647_200_000))
        .collect()
}

/// The normal-day sample as stored records.
fn normal_day() -> Vec<(String, String, i64)> {
    let body = std::fs::read("examples/samples/normal_days.ndjson").unwrap();
    let p = hexwatch::ingest::prepare(&body, None, limits(1 << 30), "hex").unwrap();
    p.batch
        .entries
        .into_iter()
        .map(|e| {
            let t = chrono::DateTime::parse_from_rfc3339(&e.event_time)
                .unwrap()
                .timestamp_millis();
            (e.action, e.json.to_string(), t)
        })
        .collect()
}

fn evaluate(c: &mut Criterion) {
    let recs = stored_records(1000);
    let mut g = c.benchmark_group("evaluate");
    g.throughput(Throughput::Elements(recs.len() as u64));
    let shipped = {
        let engine = engine::build(100_000, Arc::new(MemoryState::default()));
        let mut loader = Loader::new(engine, Path::new("rules"), None, None);
        loader.scan().unwrap().rules
    };
    let day = normal_day();
    for (name, set, recs) in [
        ("25_rules_no_prefilter", rule_set(false), &recs),
        ("25_rules_prefilter", rule_set(true), &recs),
        ("shipped_pack_normal_day", shipped, &day),
    ] {
        g.throughput(Throughput::Elements(recs.len() as u64));
        let state = Arc::new(MemoryState::default());
        let mut runner = RuleRunner::new(engine::build(100_000, state.clone()), state);
        let mut out = Vec::new();
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                for (action, json, t) in recs.iter() {
                    runner.evaluate_json(&set, action, json, None, *t, &mut out);
                }
                out.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, ingest_prepare, evaluate);
criterion_main!(benches);

fn limits(max_decoded_bytes: usize) -> hexwatch::ingest::BodyLimits {
    hexwatch::ingest::BodyLimits {
        max_decoded_bytes,
        max_records: usize::MAX,
    }
}
