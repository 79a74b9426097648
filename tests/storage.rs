//! The storage interface, the same checks on every engine: SQLite in a temp
//! directory, a fresh PostgreSQL database of the test cluster, and memory
//! (what `replay` runs on).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hexwatch_storage::{
    Attempt, AttemptResult, Batch, Effects, Entry, Outcome, Role, Session, Storage, StorageError,
    EVALUATOR,
};

use crate::support::postgres::{cluster, off_runtime};
use crate::support::MapEnv;

/// Opens storage from a `[storage]` section written in `dir`.
fn open(dir: &std::path::Path, storage_section: &str) -> Storage {
    let path = dir.join("config.toml");
    std::fs::write(&path, storage_section).unwrap();
    let config =
        hexwatch::config::Config::parse(&path, storage_section, &MapEnv(Default::default()))
            .unwrap();
    Storage::open(&config.storage).unwrap()
}

/// Every engine, each fresh: (name, storage, its directory).
fn engines() -> Vec<(&'static str, Storage, tempfile::TempDir)> {
    off_runtime(|| {
        let a = tempfile::tempdir().unwrap();
        let sqlite = open(a.path(), "[storage]\npath = \"data/s.db\"\n");
        let b = tempfile::tempdir().unwrap();
        let url = cluster().new_database();
        let pg = open(
            b.path(),
            &format!(
                "[storage]\nurl = \"{url}?sslmode=require\"\nca_file = \"{}\"\n",
                cluster().ca_file.display()
            ),
        );
        let memory = Storage::Memory(hexwatch_storage::memory::Memory::default());
        vec![
            ("sqlite", sqlite, a),
            ("memory", memory, tempfile::tempdir().unwrap()),
            ("postgres", pg, b),
        ]
    })
}

fn entry(key: String) -> Entry {
    Entry {
        key,
        event_time: "2026-11-20T08:00:00Z".into(),
        action: "RUN_PROJECT".into(),
        json: String::from("{}").into(),
        tree: None,
    }
}

/// The hazard of concurrent journal writers: a group that allocated a lower sequence number but
/// commits after a higher one was read would be skipped by a cursor. Four
/// writers (two per "replica") append concurrently while a reader follows the
/// journal by cursor, as the evaluator does; the reader must see every record.
#[test]
fn concurrent_writers_never_let_the_cursor_skip_a_record() {
    for (name, storage, _dir) in engines() {
        const WRITERS: usize = 4;
        const GROUPS: usize = 150;
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (storage, done) = (storage.clone(), done.clone());
            std::thread::spawn(move || {
                let mut s = storage.session(Role::Derived).unwrap();
                let (mut cursor, mut seen) = (0i64, Vec::new());
                loop {
                    let finished = done.load(Ordering::Acquire);
                    let batch = s.read_after(cursor, 97).unwrap();
                    for r in &batch {
                        seen.push(r.seq);
                        cursor = r.seq;
                    }
                    if batch.is_empty() && finished {
                        return seen;
                    }
                }
            })
        };
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let storage = storage.clone();
                std::thread::spawn(move || {
                    let mut s = storage.session(Role::Journal).unwrap();
                    let mut accepted = Vec::new();
                    for g in 0..GROUPS {
                        let batch = Batch {
                            entries: (0..1 + g % 7)
                                .map(|i| entry(format!("w{w}-g{g}-{i}")))
                                .collect(),
                            quarantine: Vec::new(),
                        };
                        let (outcomes, _) = s.append(&[&batch]).unwrap();
                        for o in &outcomes[0] {
                            match o {
                                Outcome::Accepted(seq) => accepted.push(*seq),
                                Outcome::Duplicate => panic!("{name}: no key repeats"),
                            }
                        }
                    }
                    accepted
                })
            })
            .collect();
        let mut accepted: Vec<i64> = writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        done.store(true, Ordering::Release);
        let seen = reader.join().unwrap();
        accepted.sort();
        assert_eq!(
            seen, accepted,
            "{name}: the reader skipped or repeated records"
        );
        assert_eq!(
            seen.len(),
            (0..GROUPS).map(|g| 1 + g % 7).sum::<usize>() * WRITERS
        );
    }
}

/// SQLite hands records this process just committed to the evaluator from
/// memory. What it hands over must be exactly what the database holds, in
/// order, even when another process (here: a second handle on the same file)
/// wrote records in between, which only the database has.
#[test]
fn records_handed_over_from_memory_are_the_records_in_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let section = "[storage]\npath = \"data/s.db\"\n";
    let (this, other, fresh) = (
        open(dir.path(), section),
        open(dir.path(), section),
        open(dir.path(), section),
    );
    let batch = |keys: &[&str]| Batch {
        entries: keys
            .iter()
            .map(|k| Entry {
                json: format!("{{\"k\":\"{k}\"}}").into(),
                action: format!("ACTION_{k}"),
                ..entry(k.to_string())
            })
            .collect(),
        quarantine: Vec::new(),
    };
    let mut journal = this.session(Role::Journal).unwrap();
    let mut elsewhere = other.session(Role::Journal).unwrap();
    journal.append(&[&batch(&["a", "b", "c"])]).unwrap();
    elsewhere.append(&[&batch(&["d", "e"])]).unwrap();
    let (outcomes, _) = journal
        .append(&[&batch(&["f", "a"]), &batch(&["g"])])
        .unwrap();
    assert_eq!(outcomes[0][1], Outcome::Duplicate);

    // Read as the evaluator does, in small batches from a cursor.
    let follow = |storage: &Storage| {
        let mut s = storage.session(Role::Derived).unwrap();
        let (mut cursor, mut seen) = (0, Vec::new());
        loop {
            let batch = s.read_after(cursor, 2).unwrap();
            if batch.is_empty() {
                return seen;
            }
            for r in batch {
                cursor = r.seq;
                seen.push((
                    r.seq,
                    r.action,
                    r.event_time,
                    r.json.to_string(),
                    r.received_at,
                ));
            }
        }
    };
    let handed_over = follow(&this);
    let from_disk = follow(&fresh);
    assert_eq!(handed_over.len(), 7);
    assert_eq!(handed_over, from_disk);
    // Taken once: a second reader of this process gets them from the database.
    assert_eq!(follow(&this), from_disk);
}

/// A new SQLite database gets 8 KiB pages (Hex rows of about 2 KB filled a
/// default 4 KiB page alone); one created with another page size keeps it
/// and works as before.
#[test]
fn new_sqlite_databases_use_8_kib_pages_and_old_ones_keep_theirs() {
    let page_size = |path: &std::path::Path| -> i64 {
        rusqlite::Connection::open(path)
            .unwrap()
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let section = "[storage]\npath = \"data/s.db\"\n";
    let storage = open(dir.path(), section);
    assert_eq!(page_size(&dir.path().join("data/s.db")), 8192);
    drop(storage);

    let old = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(old.path().join("data")).unwrap();
    let path = old.path().join("data/s.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.pragma_update(None, "page_size", 4096).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch("CREATE TABLE before_hexwatch (x INTEGER)")
            .unwrap();
    }
    let storage = open(old.path(), section);
    let mut s = storage.session(Role::Journal).unwrap();
    s.append(&[&Batch {
        entries: vec![entry("k1".into())],
        quarantine: Vec::new(),
    }])
    .unwrap();
    assert_eq!(page_size(&path), 4096);
    let mut r = storage.session(Role::Derived).unwrap();
    assert_eq!(r.read_after(0, 10).unwrap().len(), 1);
}

/// SQLite at `dir/data/s.db` with the daemon's checkpointer running, and a
/// journal session (whose connection never checkpoints).
fn checkpointed_sqlite(
    dir: &std::path::Path,
) -> (
    Storage,
    hexwatch_storage::sqlite::Checkpointer,
    Box<dyn Session>,
) {
    let storage = open(dir, "[storage]\npath = \"data/s.db\"\n");
    let checkpointer = storage
        .start_checkpointer()
        .unwrap()
        .expect("SQLite has one");
    let journal = storage.session(Role::Journal).unwrap();
    (storage, checkpointer, journal)
}

/// The `n`th batch of 100 distinct records of 2 KB.
fn padded_batch(n: usize) -> Batch {
    let record = format!("{{\"pad\":\"{}\"}}", "x".repeat(2000));
    let entries = (0..100)
        .map(|i| Entry {
            json: record.clone().into(),
            ..entry(format!("k{n}-{i}"))
        })
        .collect();
    Batch {
        entries,
        quarantine: Vec::new(),
    }
}

/// Under load the WAL checkpoint was a sixth of the evaluator's work; a
/// daemon on SQLite now runs it on a thread of its own. Records the journal
/// writes (whose connection never checkpoints) reach the database file once
/// enough has been written, with no other session writing at all.
#[test]
fn sqlite_checkpoints_run_on_their_own_thread() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, checkpointer, mut journal) = checkpointed_sqlite(dir.path());
    let db = dir.path().join("data/s.db");
    let before = std::fs::metadata(&db).unwrap().len();
    for n in 0..25 {
        journal.append(&[&padded_batch(n)]).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&db).unwrap().len() < before + 4_000_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "2,500 records of 2 KB were not checkpointed into the database file"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    checkpointer.stop();
    let mut reader = storage.session(Role::Derived).unwrap();
    assert_eq!(reader.read_after(0, 5000).unwrap().len(), 2500);
}

/// A journal that commits without pause (full speed ingest): the checkpointer
/// copies beside it, yet the WAL still starts again from its beginning once it
/// has grown past `WAL_RESTART_FRAMES` (64 MiB), rather than growing with
/// everything written. Seen as the file cut back to 64 MiB while the journal
/// goes on writing. How much is written before the checkpointer's turn comes
/// depends on how fast the disk is against the checkpointer's share of the
/// CPU, so the journal writes until then (a fast disk once wrote 160 MB before
/// it), up to 2,000 batches (about 460 MB).
#[test]
fn the_wal_starts_again_beside_a_journal_that_never_pauses() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, checkpointer, mut journal) = checkpointed_sqlite(dir.path());
    let wal = dir.path().join("data/s.db-wal");
    let (mut longest, mut batches) = (0, 0);
    while batches < 2000 {
        journal.append(&[&padded_batch(batches)]).unwrap();
        batches += 1;
        let len = std::fs::metadata(&wal).unwrap().len();
        if len < longest {
            break;
        }
        longest = len;
    }
    checkpointer.stop();
    assert!(
        batches < 2000,
        "the WAL grew to {longest} bytes over {batches} batches of 200 KB: it never started again"
    );
    let mut reader = storage.session(Role::Derived).unwrap();
    let last = batches as i64 * 100;
    assert_eq!(reader.read_after(last - 10, 100).unwrap().len(), 10);
}

/// While a reader stays in the WAL (an evaluator far behind) it cannot start
/// again and grows past its usual length; once it can, the file is cut back to
/// 64 MiB rather than keeping that size on disk.
#[test]
fn a_wal_grown_while_a_reader_held_it_is_cut_back() {
    let dir = tempfile::tempdir().unwrap();
    let (_storage, checkpointer, mut journal) = checkpointed_sqlite(dir.path());
    let wal = dir.path().join("data/s.db-wal");
    journal.append(&[&padded_batch(0)]).unwrap();
    let reader = rusqlite::Connection::open(dir.path().join("data/s.db")).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let _: i64 = reader
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    for n in 1..500 {
        journal.append(&[&padded_batch(n)]).unwrap();
    }
    let grown = std::fs::metadata(&wal).unwrap().len();
    assert!(grown > 80 << 20, "the WAL should have grown: {grown} bytes");
    reader.execute_batch("COMMIT").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut n = 500;
    loop {
        journal.append(&[&padded_batch(n)]).unwrap();
        n += 1;
        let len = std::fs::metadata(&wal).unwrap().len();
        if len <= 64 << 20 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the WAL stayed at {len} bytes after the reader left"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    checkpointer.stop();
}

#[test]
fn duplicates_are_decided_by_the_journal_key_in_one_group() {
    for (name, storage, _dir) in engines() {
        off_runtime(|| {
            let mut s = storage.session(Role::Journal).unwrap();
            let a = Batch {
                entries: vec![entry("a".into()), entry("b".into()), entry("a".into())],
                quarantine: vec![hexwatch_storage::Quarantined {
                    index: Some(3),
                    line: Some(4),
                    reason: "bad".into(),
                    // PostgreSQL text cannot hold NUL: kept, with the NUL replaced.
                    raw: "x\0y".into(),
                }],
            };
            let b = Batch {
                entries: vec![entry("b".into()), entry("c\0".into())],
                quarantine: vec![],
            };
            let (outcomes, last) = s.append(&[&a, &b]).unwrap();
            // Sequence numbers rise in order; PostgreSQL may leave gaps (a
            // number drawn for a duplicate is not reused).
            let seqs: Vec<i64> = outcomes
                .iter()
                .flatten()
                .filter_map(|o| match o {
                    Outcome::Accepted(seq) => Some(*seq),
                    Outcome::Duplicate => None,
                })
                .collect();
            let shape: Vec<Vec<bool>> = outcomes
                .iter()
                .map(|b| b.iter().map(|o| *o != Outcome::Duplicate).collect())
                .collect();
            assert_eq!(
                shape,
                vec![vec![true, true, false], vec![false, true]],
                "{name}"
            );
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{name}: {seqs:?}");
            assert_eq!(last, seqs.last().copied());
            let (again, _) = s.append(&[&b]).unwrap();
            assert_eq!(again, vec![vec![Outcome::Duplicate, Outcome::Duplicate]]);
            assert_eq!(Some(s.last_seq().unwrap()), last);
        });
    }
}

#[test]
fn a_commit_from_a_moved_cursor_is_refused() {
    for (name, storage, _dir) in engines() {
        off_runtime(|| {
            let mut one = storage.session(Role::Derived).unwrap();
            let mut two = storage.session(Role::Derived).unwrap();
            let step = |from, to| Effects {
                from_cursor: from,
                to_cursor: to,
                evaluated_ms: i64::MIN,
                ..Default::default()
            };
            assert!(one.try_lease().unwrap(), "{name}");
            one.commit(&step(0, 10)).unwrap();
            // A second evaluator that still believes the cursor is at 0, once
            // the first is gone and it holds the lease.
            drop(one);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !two.try_lease().unwrap() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{name}: lease not released"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            let err = two.commit(&step(0, 7)).unwrap_err();
            assert!(matches!(err, StorageError::LeaseLost), "{name}: {err}");
            assert_eq!(two.cursor(EVALUATOR).unwrap(), 10);
            two.commit(&step(10, 12)).unwrap();
        });
    }
}

#[test]
fn the_evaluator_lease_is_exclusive_and_ends_with_its_session() {
    let (_, storage, _dir) = engines().pop().unwrap();
    off_runtime(|| {
        let mut one = storage.session(Role::Derived).unwrap();
        let mut two = storage.session(Role::Derived).unwrap();
        assert!(one.try_lease().unwrap());
        assert!(!two.try_lease().unwrap());
        assert!(one.try_lease().unwrap(), "held");
        drop(one);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !two.try_lease().unwrap() {
            assert!(std::time::Instant::now() < deadline, "lease not released");
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}

/// Stores one alert with deliveries to `destinations` through a commit.
fn alert_with_deliveries(s: &mut dyn Session, id: &str, destinations: &[&str]) {
    let alert: hexwatch::alerts::Alert = serde_json::from_value(serde_json::json!({
        "alertId": id, "id": "R", "type": "RULE", "title": "t", "severity": "HIGH",
        "dedup": id, "createdAt": "", "firstEventAt": "", "lastEventAt": "", "eventCount": 1,
        "description": "", "runbook": "", "reference": "", "tags": [], "reports": {},
        "alertContext": {}, "destinations": destinations, "events": [], "version": "1"
    }))
    .unwrap();
    let window = hexwatch::alerts::Window {
        key: hexwatch::alerts::WindowKey {
            rule_id: "R".into(),
            kind: "RULE".into(),
            dedup: id.into(),
        },
        start_ms: 0,
        end_ms: 60_000,
        threshold: 1,
        created: true,
        last_ms: 0,
        alert,
        samples_stored: 0,
    };
    let from = s.cursor(EVALUATOR).unwrap();
    assert!(s.try_lease().unwrap());
    s.commit(&Effects {
        windows: vec![window],
        deliveries: vec![(
            id.to_string(),
            destinations.iter().map(|d| d.to_string()).collect(),
        )],
        from_cursor: from,
        to_cursor: from,
        evaluated_ms: i64::MIN,
        ..Default::default()
    })
    .unwrap();
}

#[test]
fn deliveries_are_claimed_once_and_taken_over_when_a_claim_runs_out() {
    for (name, storage, _dir) in engines() {
        off_runtime(|| {
            let mut one = storage.session(Role::Derived).unwrap();
            let mut two = storage.session(Role::Derived).unwrap();
            for i in 0..6 {
                alert_with_deliveries(one.as_mut(), &format!("a{i}"), &["hook"]);
            }
            let far = hexwatch_storage::now_ms() + 60_000;
            let first: BTreeSet<i64> = one
                .claim_due("hook", 4, far)
                .unwrap()
                .iter()
                .map(|d| d.id)
                .collect();
            let second: BTreeSet<i64> = two
                .claim_due("hook", 4, far)
                .unwrap()
                .iter()
                .map(|d| d.id)
                .collect();
            assert_eq!(first.len(), 4, "{name}");
            assert_eq!(second.len(), 2, "{name}: only the unclaimed rest");
            assert!(first.is_disjoint(&second), "{name}");
            assert!(one.claim_due("hook", 10, far).unwrap().is_empty());
            // One claimer dies: its claims run out and the other takes them over.
            let id = *first.first().unwrap();
            one.record_attempts(&[Attempt {
                id,
                incident_notice: false,
                attempts: 1,
                result: AttemptResult::Failed {
                    error: "refused".into(),
                    retry_at: Some(0),
                },
            }])
            .unwrap();
            let again = two.claim_due("hook", 10, far).unwrap();
            assert_eq!(again.iter().map(|d| d.id).collect::<Vec<_>>(), vec![id]);
            assert_eq!(again[0].attempts, 1);
            assert!(again[0].alert_json.contains("\"alertId\":\"a"));
            two.record_attempts(&[Attempt {
                id,
                incident_notice: false,
                attempts: 2,
                result: AttemptResult::Delivered,
            }])
            .unwrap();
            assert_eq!(two.pending("hook").unwrap(), 5);
            let soon = hexwatch_storage::now_ms() + 50;
            let mut three = storage.session(Role::Derived).unwrap();
            three.release_claims().unwrap();
            let short = three.claim_due("hook", 10, soon).unwrap();
            assert_eq!(short.len(), 5, "{name}: released claims are due again");
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(one.claim_due("hook", 10, far).unwrap().len(), 5, "{name}");
        });
    }
}

/// The defect: `next_due` took an aggregate over every pending row (to weigh in
/// claims) on each loop of a delivery worker, so delivery slowed as the outbox
/// grew. It is the next unclaimed row's time, found in index order.
#[test]
fn next_due_is_the_next_unclaimed_delivery() {
    for (name, storage, _dir) in engines() {
        off_runtime(|| {
            let mut s = storage.session(Role::Derived).unwrap();
            assert_eq!(s.next_due("hook").unwrap(), None, "{name}");
            for i in 0..3 {
                alert_with_deliveries(s.as_mut(), &format!("n{i}"), &["hook"]);
            }
            let first = s.next_due("hook").unwrap().expect("due");
            assert!(first <= hexwatch_storage::now_ms(), "{name}");
            // Claiming the two oldest leaves the third as the next one due.
            let far = hexwatch_storage::now_ms() + 60_000;
            let claimed = s.claim_due("hook", 2, far).unwrap();
            assert_eq!(claimed.len(), 2);
            let third = s.claim_due("hook", 3, far).unwrap();
            assert_eq!(third.len(), 1, "{name}");
            assert_eq!(s.next_due("hook").unwrap(), None, "{name}: all claimed");
            s.release_claims().unwrap();
            assert_eq!(s.next_due("hook").unwrap(), Some(first), "{name}");
            assert_eq!(s.next_due("other").unwrap(), None, "{name}");
        });
    }
}

#[test]
fn rule_state_is_pruned_on_event_time_only() {
    for (name, storage, _dir) in engines() {
        off_runtime(|| {
            let mut s = storage.session(Role::Derived).unwrap();
            let day = 86_400_000i64;
            let mut effects = Effects {
                evaluated_ms: 50 * day,
                ..Default::default()
            };
            effects
                .state
                .sets
                .insert(("k".into(), "old".into()), 10 * day);
            effects
                .state
                .sets
                .insert(("k".into(), "live".into()), 100 * day);
            effects.state.counters.insert("c".into(), (3, 100 * day));
            effects.state.kv.insert("v".into(), ("1".into(), 10 * day));
            assert!(s.try_lease().unwrap());
            s.commit(&effects).unwrap();
            // Latest event evaluated: day 50. 'old' expired on day 10, 40 days before.
            let retention = Duration::from_secs(30 * 86_400);
            assert_eq!(s.prune(retention).unwrap().state, 2, "{name}");
            assert_eq!(s.prune(retention).unwrap().state, 0, "{name}");
            assert_eq!(s.set_member("k", "live").unwrap(), Some(100 * day));
            assert_eq!(s.set_member("k", "old").unwrap(), None);
            assert_eq!(s.counter("c").unwrap(), Some((3, 100 * day)));
        });
    }
}

#[tokio::test]
async fn migrate_storage_moves_an_installation_to_postgres_and_it_carries_on() {
    use crate::support::*;
    let hook = WebhookReceiver::start(vec![Reply::Status(200)]).await;
    let rule = r#"let meta = #{ id: "T.Share", severity: "HIGH", actions: ["SHARE_PROJECT_WITH_PUBLIC"] };
fn rule(e) { true }
fn dedup(e) { e.keySuffix }
"#;
    let extra = format!(
        "[[destinations]]\nnotify = \"alert\"\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{}\"\n",
        hook.url()
    );
    let mut d = TestDaemon::start_with_env(&extra, &[], &[("share.rhai", rule)]).await;
    let records: Vec<_> = (0..20)
        .map(|i| {
            hex_record(
                i,
                if i % 4 == 0 {
                    "SHARE_PROJECT_WITH_PUBLIC"
                } else {
                    "RUN_PROJECT"
                },
            )
        })
        .collect();
    d.send(&records).await;
    assert!(wait_until(Duration::from_secs(20), || hook.requests().len() == 5).await);
    d.stop().await;
    // Triage from the console is part of the installation too.
    crate::support::postgres::query(
        &d.dir,
        "UPDATE alerts SET triage = 'resolved', triage_by = 'ana@example.com', triage_at = 5,
                triage_note = 'expected' WHERE alert_id = (SELECT min(alert_id) FROM alerts)",
        &[],
    );

    let url = off_runtime(|| cluster().new_database());
    let migrate = |to: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hexwatch"))
            .args(["migrate-storage", "--from"])
            .arg(d.db_path())
            .args(["--to", &format!("{to}?sslmode=require"), "--ca-file"])
            .arg(&cluster().ca_file)
            .output()
            .unwrap()
    };
    let out = migrate(&url);
    // TLS is checked: the test server's certificate is trusted only when given.
    let untrusted = std::process::Command::new(env!("CARGO_BIN_EXE_hexwatch"))
        .args(["migrate-storage", "--from"])
        .arg(d.db_path())
        .args(["--to", &format!("{url}?sslmode=require")])
        .output()
        .unwrap();
    assert_eq!(untrusted.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("events: 20 rows"), "{stdout}");
    assert!(stdout.contains("alerts: 5 rows"), "{stdout}");
    assert!(stdout.contains("deliveries: 5 rows"), "{stdout}");
    assert!(stdout.contains("alert_samples: 5 rows"), "{stdout}");
    // Never over existing data.
    let again = migrate(&url);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds hexwatch data"));

    // The same directory, now on PostgreSQL: nothing evaluated or sent again,
    // and new records carry on after the copied ones.
    std::fs::write(d.dir.join(".pg-url"), &url).unwrap();
    let d = d.restart().await;
    assert_eq!(d.count("SELECT count(*) FROM events"), 20);
    assert_eq!(d.alerts_of("T.Share"), 5);
    assert_eq!(
        d.strings("SELECT triage_by FROM alerts WHERE triage = 'resolved' AND triage_at = 5"),
        vec!["ana@example.com".to_string()]
    );
    let last = d.last_alert("T.Share").unwrap();
    assert_eq!(last["events"].as_array().unwrap().len(), 1, "{last}");
    assert_eq!(
        d.count("SELECT count(*) FROM deliveries WHERE status = 'delivered'"),
        5
    );
    let more: Vec<_> = (20..28)
        .map(|i| hex_record(i, "SHARE_PROJECT_WITH_PUBLIC"))
        .collect();
    d.send(&more).await;
    assert!(wait_until(Duration::from_secs(20), || hook.requests().len() == 13).await);
    assert_eq!(d.alerts_of("T.Share"), 13);
    assert_eq!(d.count("SELECT count(DISTINCT seq) FROM events"), 28);
    // Every delivery row is settled as delivered, once: nothing is left to send twice.
    assert!(
        wait_until(Duration::from_secs(20), || d.count(
            "SELECT count(*) FROM deliveries WHERE status = 'delivered'"
        ) == 13)
        .await
    );
    assert_eq!(d.count("SELECT count(*) FROM deliveries"), 13);
    assert_eq!(hook.requests().len(), 13, "nothing delivered twice");
}

/// SQL run straight on an engine's database, beside the storage interface.
enum Direct {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl Direct {
    fn exec(&self, sql: &str) {
        match self {
            Direct::Sqlite(p) => rusqlite::Connection::open(p)
                .unwrap()
                .execute_batch(sql)
                .unwrap(),
            Direct::Postgres(url) => off_runtime(|| {
                postgres::Client::connect(url, postgres::NoTls)
                    .unwrap()
                    .batch_execute(sql)
                    .unwrap()
            }),
        }
    }

    fn int(&self, sql: &str) -> i64 {
        match self {
            Direct::Sqlite(p) => rusqlite::Connection::open(p)
                .unwrap()
                .query_row(sql, [], |r| r.get(0))
                .unwrap(),
            Direct::Postgres(url) => off_runtime(|| {
                postgres::Client::connect(url, postgres::NoTls)
                    .unwrap()
                    .query_one(sql, &[])
                    .unwrap()
                    .get(0)
            }),
        }
    }
}

/// Both engines, each fresh, with their configuration section (to open them
/// again) and direct SQL access.
fn engines_with_sql() -> Vec<(&'static str, String, Direct, tempfile::TempDir)> {
    off_runtime(|| {
        let a = tempfile::tempdir().unwrap();
        let sqlite = "[storage]\npath = \"data/s.db\"\n".to_string();
        let url = cluster().new_database();
        let pg = format!(
            "[storage]\nurl = \"{url}?sslmode=require\"\nca_file = \"{}\"\n",
            cluster().ca_file.display()
        );
        let db = a.path().join("data/s.db");
        let b = tempfile::tempdir().unwrap();
        vec![
            ("sqlite", sqlite, Direct::Sqlite(db), a),
            ("postgres", pg, Direct::Postgres(url), b),
        ]
    })
}

fn sample(i: usize) -> hexwatch::alerts::SampleEvent {
    hexwatch::alerts::SampleEvent::from_json(&format!(
        r#"{{"action":"DOWNLOAD_CSV","n":{i},"pad":"{}"}}"#,
        "x".repeat(1500)
    ))
}

/// The window of a burst with `samples` samples, `stored` of them already in
/// storage (so no longer carried).
fn burst_window(samples: usize, stored: usize) -> hexwatch::alerts::Window {
    let mut alert: hexwatch::alerts::Alert = serde_json::from_value(serde_json::json!({
        "alertId": "burst", "id": "R", "type": "RULE", "title": "t", "severity": "HIGH",
        "dedup": "d", "createdAt": "", "firstEventAt": "", "lastEventAt": "",
        "eventCount": samples, "description": "", "runbook": "", "reference": "", "tags": [],
        "reports": {}, "alertContext": {}, "destinations": ["hook"], "events": [], "version": "1"
    }))
    .unwrap();
    alert.events = (stored..samples).map(sample).collect();
    hexwatch::alerts::Window {
        key: hexwatch::alerts::WindowKey {
            rule_id: "R".into(),
            kind: "RULE".into(),
            dedup: "d".into(),
        },
        start_ms: 0,
        end_ms: 600_000,
        threshold: 1,
        created: true,
        last_ms: 0,
        alert,
        samples_stored: stored,
    }
}

/// A busy window's row was rewritten whole, ten sample records included, with
/// every batch that updated it. Samples are now rows of their own, written
/// once; a window read back carries none of them (only their number), the
/// delivery body has them all, in order, and a window that does not know
/// what is stored already writes nothing twice.
#[test]
fn alert_samples_are_stored_once_apart_from_the_window_row() {
    for (name, section, direct, dir) in engines_with_sql() {
        let storage = off_runtime(|| open(dir.path(), &section));
        off_runtime(|| {
            let mut s = storage.session(Role::Derived).unwrap();
            let mut commit = |w: hexwatch::alerts::Window, deliver: bool| {
                let from = s.cursor(EVALUATOR).unwrap();
                assert!(s.try_lease().unwrap());
                s.commit(&Effects {
                    windows: vec![w],
                    deliveries: if deliver {
                        vec![("burst".into(), vec!["hook".into()])]
                    } else {
                        vec![]
                    },
                    from_cursor: from,
                    to_cursor: from,
                    evaluated_ms: i64::MIN,
                    ..Default::default()
                })
                .unwrap();
            };
            commit(burst_window(2, 0), false);
            commit(burst_window(5, 2), false);
            // A window that does not know what is stored: nothing twice, no error.
            commit(burst_window(6, 0), true);
            assert_eq!(
                direct.int("SELECT count(*) FROM alert_samples WHERE alert_id = 'burst'"),
                6,
                "{name}"
            );
            let row = direct
                .int("SELECT CAST(length(alert) AS BIGINT) FROM alerts WHERE alert_id = 'burst'");
            assert!(row < 1000, "{name}: the row holds no samples ({row} bytes)");

            let key = burst_window(0, 0).key;
            let w = s.windows_at(&key, i64::MAX).unwrap().starting_by.unwrap();
            assert!(w.alert.events.is_empty(), "{name}");
            assert_eq!(w.samples_stored, 6, "{name}");
            let due = s.claim_due("hook", 10, hexwatch_storage::now_ms() + 60_000);
            let body: serde_json::Value =
                serde_json::from_str(&due.unwrap()[0].alert_json).unwrap();
            let ns: Vec<i64> = body["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["n"].as_i64().unwrap())
                .collect();
            assert_eq!(
                ns,
                vec![0, 1, 2, 3, 4, 5],
                "{name}: the delivery body, in order"
            );
        });
    }
}

/// A database written before the samples moved out keeps them in each
/// alert's JSON: the schema migration copies them to their rows.
#[test]
fn alert_samples_of_an_older_database_move_to_their_rows() {
    for (name, section, direct, dir) in engines_with_sql() {
        let storage = off_runtime(|| open(dir.path(), &section));
        let old = serde_json::to_string(&burst_window(3, 0).alert).unwrap();
        off_runtime(|| {
            let mut s = storage.session(Role::Derived).unwrap();
            let from = s.cursor(EVALUATOR).unwrap();
            assert!(s.try_lease().unwrap());
            s.commit(&Effects {
                windows: vec![burst_window(3, 0)],
                deliveries: vec![("burst".into(), vec!["hook".into()])],
                from_cursor: from,
                to_cursor: from,
                evaluated_ms: i64::MIN,
                ..Default::default()
            })
            .unwrap();
        });
        drop(storage);
        // The schema as it was before the migration, with the row as it was written.
        direct.exec(&format!(
            "DROP TABLE alert_samples;
             ALTER TABLE alerts DROP COLUMN silence_id;
             DROP INDEX deliveries_incident;
             ALTER TABLE deliveries DROP COLUMN incident_id;
             ALTER TABLE deliveries DROP COLUMN message;
             DELETE FROM refinery_schema_history WHERE version >= 4;
             UPDATE alerts SET alert = '{}' WHERE alert_id = 'burst';",
            old.replace('\'', "''")
        ));
        let storage = off_runtime(|| open(dir.path(), &section));
        off_runtime(|| {
            let mut s = storage.session(Role::Derived).unwrap();
            let due = s.claim_due("hook", 10, hexwatch_storage::now_ms() + 60_000);
            let body: serde_json::Value =
                serde_json::from_str(&due.unwrap()[0].alert_json).unwrap();
            let want = serde_json::to_value(&burst_window(3, 0).alert).unwrap();
            assert_eq!(body["events"], want["events"], "{name}");
            assert_eq!(
                direct.int("SELECT count(*) FROM alert_samples"),
                3,
                "{name}"
            );
        });
    }
}

/// Alert windows absorbed matches from before their start because only the
/// latest window of a key could be read back. Every engine now finds the
/// window starting at or before a time and when the next one starts.
#[test]
fn alert_windows_absorb_no_matches_from_before_their_start_on_every_engine() {
    for (name, storage, _dir) in engines() {
        off_runtime(|| {
            let mut s = storage.session(Role::Derived).unwrap();
            let window = |start: i64| {
                let mut w = burst_window(1, 0);
                w.alert.alert_id = format!("w{start}");
                w.start_ms = start;
                w.end_ms = start + 60;
                w
            };
            let from = s.cursor(EVALUATOR).unwrap();
            assert!(s.try_lease().unwrap());
            s.commit(&Effects {
                windows: vec![window(200), window(0), window(100)],
                from_cursor: from,
                to_cursor: from,
                evaluated_ms: i64::MIN,
                ..Default::default()
            })
            .unwrap();
            let key = window(0).key;
            let at = |s: &mut Box<dyn Session>, t: i64| {
                let w = s.windows_at(&key, t).unwrap();
                (w.starting_by.map(|w| (w.start_ms, w.end_ms)), w.next_start)
            };
            assert_eq!(at(&mut s, -1), (None, Some(0)), "{name}");
            assert_eq!(at(&mut s, 0), (Some((0, 60)), Some(100)), "{name}");
            assert_eq!(at(&mut s, 80), (Some((0, 60)), Some(100)), "{name}");
            assert_eq!(at(&mut s, 150), (Some((100, 160)), Some(200)), "{name}");
            assert_eq!(at(&mut s, i64::MAX), (Some((200, 260)), None), "{name}");
        });
    }
}

/// Incidents through the storage contract, on every engine: a batch's
/// incident and its members land with the batch, the group's latest is
/// found, a due notification is recorded once (a second from the same
/// clock is refused), and the outbox hands its body back as an incident
/// notification.
#[test]
fn incidents_and_their_notifications_on_every_engine() {
    use hexwatch_model::incident::{Incident, IncidentWrite, Names, Notice, NoticeClock};
    use hexwatch_storage::NoticeWrite;
    for (name, storage, _dir) in engines() {
        off_runtime(|| {
            let mut s = storage.session(Role::Derived).unwrap();
            let mut w = burst_window(1, 0);
            w.alert.alert_id = "a-1".into();
            w.created = true;
            let incident = Incident {
                id: "inc-1".into(),
                group_key: "actor:ana@acme.example".into(),
                title: "ana: 1 alert".into(),
                severity: hexwatch_model::Severity::High,
                alert_severity: hexwatch_model::Severity::High,
                escalated: None,
                first_ms: 10,
                last_ms: 10,
                alert_count: 1,
                rules: vec!["R".into()],
                tactics: vec![],
                names: Names::default(),
                worst: vec![],
                destinations: vec!["hook".into()],
            };
            let clock = NoticeClock {
                notify_at: Some(0),
                ..NoticeClock::default()
            };
            let from = s.cursor(EVALUATOR).unwrap();
            assert!(s.try_lease().unwrap());
            s.commit(&Effects {
                windows: vec![w],
                deliveries: vec![("a-1".into(), vec![])],
                incidents: vec![IncidentWrite {
                    incident: incident.clone(),
                    clock,
                    opened: true,
                    reopened: false,
                    joined: vec![(0, "a-1".into())],
                }],
                from_cursor: from,
                to_cursor: from,
                evaluated_ms: i64::MIN,
                ..Default::default()
            })
            .unwrap();
            let latest = s
                .incident_of_group("actor:ana@acme.example")
                .unwrap()
                .unwrap();
            assert_eq!(latest.incident, incident, "{name}");
            assert!(s
                .incident_of_group("actor:bob@acme.example")
                .unwrap()
                .is_none());
            let due = s.due_incidents(hexwatch_storage::now_ms(), 10).unwrap();
            assert_eq!(due.len(), 1, "{name}");
            let members = s.incident_alerts("inc-1", 0, 10).unwrap();
            assert_eq!(members.len(), 1, "{name}");
            assert!(members[0].events.is_empty());
            let notice = NoticeWrite {
                incident_id: "inc-1".into(),
                notice: Notice::Opened,
                message_id: "inc-1.1.opened".into(),
                destinations: vec!["hook".into()],
                body: "{\"version\":\"hexwatch.incident/1\"}".into(),
                before: clock,
                after: NoticeClock {
                    notices: 1,
                    notified: 1,
                    notify_at: None,
                    last_notice_at: Some(5),
                    remind_at: None,
                },
            };
            assert!(s.record_notice(&notice).unwrap(), "{name}");
            assert!(!s.record_notice(&notice).unwrap(), "{name}: made twice");
            assert!(s
                .due_incidents(hexwatch_storage::now_ms(), 10)
                .unwrap()
                .is_empty());
            let claimed = s
                .claim_due("hook", 10, hexwatch_storage::now_ms() + 60_000)
                .unwrap();
            assert_eq!(claimed.len(), 1, "{name}");
            assert!(claimed[0].incident_notice);
            assert_eq!(claimed[0].alert_id, "inc-1.1.opened");
            assert_eq!(claimed[0].alert_json, notice.body);
        });
    }
}
