//! Realistic Hex audit envelopes for benchmarks and the load generator: a mix of
//! actions weighted like a working analytics team (mostly views and runs), with
//! the real envelope shape (keySuffix ULIDs, JSON-in-a-string fields).

#![allow(dead_code)]

/// (action, weight, target type) — a working day's proportions.
pub const ACTION_MIX: &[(&str, u32, &str)] = &[
    ("VIEW_PROJECT", 300, "project"),
    ("RUN_PROJECT", 200, "project"),
    ("RUN_CELL", 250, "cell"),
    ("PUBLISH_PROJECT", 20, "project"),
    ("CREATE_PROJECT", 15, "project"),
    ("DUPLICATE_PROJECT", 8, "project"),
    ("DOWNLOAD_AS_CSV", 30, "cell"),
    ("EXPORT_AS_PDF", 8, "project"),
    ("UPLOAD_FILE_TO_PROJECT", 5, "file"),
    ("DOWNLOAD_FILE_FROM_PROJECT", 6, "file"),
    ("SHARE_PROJECT_WITH_ORG", 6, "project"),
    ("GRANT_USERS_PROJECT_ACCESS", 10, "project"),
    ("UPDATE_PROJECT_ACCESS", 5, "project"),
    ("CREATE_SCHEDULED_RUN", 3, "scheduled run"),
    ("EDIT_DATA_CONNECTION", 2, "data connection"),
    ("REFRESH_DATA_CONNECTION_SCHEMA", 10, "data connection"),
    ("MAGIC_EDIT_CELL", 40, "magic event"),
    ("CREATE_THREAD", 10, "project"),
    ("DELETE_PROJECT", 3, "project"),
    ("INVITE_USERS", 1, "workspace"),
    ("EDIT_USER", 1, "user"),
    ("UPDATE_GROUP_MEMBERS", 1, "group"),
];

/// The action of the `i`-th record of the mix (deterministic).
pub fn action_for(i: u64) -> (&'static str, &'static str) {
    let total: u32 = ACTION_MIX.iter().map(|a| a.1).sum();
    // A cheap scramble so neighbouring records differ.
    let mut x = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17) % u64::from(total);
    for (a, w, t) in ACTION_MIX {
        if x < u64::from(*w) {
            return (a, t);
        }
        x -= u64::from(*w);
    }
    ("VIEW_PROJECT", "project")
}

/// A 26-character ULID-looking key unique per `i`.
pub fn key_suffix(i: u64) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut s = String::from("01HQZX");
    let mut n = i;
    let mut tail = [b'0'; 20];
    for c in tail.iter_mut().rev() {
        *c = ALPHABET[(n % 32) as usize];
        n /= 32;
    }
    s.push_str(std::str::from_utf8(&tail).unwrap());
    s
}

/// One envelope as compact JSON.
pub fn record(i: u64) -> String {
    let (action, target_type) = action_for(i);
    let user = i % 23;
    let project = i % 97;
    let sec = (i / 10) % 60;
    let min = (i / 600) % 60;
    let ms = i % 1000;
    format!(
        concat!(
            r#"{{"source":"Hex","keySuffix":"{key}","timestamp":"2024-03-05T14:{min:02}:{sec:02}.{ms:03}Z","#,
            r#""event":{{"actor":{{"id":"9f8e7d6c-{user:04}-4a1b-8c2d-1e2f3a4b5c6d","type":"USER","#,
            r#""metadata":{{"email":"analyst{user}@acme.example","workspace":"Acme Analytics","workspaceId":"0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0","actorOrgRole":"EDITOR"}}}},"#,
            r#""action":"{action}","context":{{"location":"198.51.100.{ip}","user_agent":"Mozilla/5.0 (Macintosh; Intel Mac OS X 14_3) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 Safari/537.36"}},"#,
            r#""targets":[{{"id":"proj-{project:05}","type":"{target_type}","metadata":{{"created":false,"representation":"{{\"name\":\"Revenue forecast {project}\",\"status\":\"Published\"}}"}}}}],"#,
            r#""version":"1","metadata":{{"result":"SUCCESS","requestArgs":"{{\"projectId\":\"proj-{project:05}\",\"runType\":\"full\"}}","hexTraceId":"{trace:016x}","source":"WEB"}},"#,
            r#""occurred_at":"2024-03-05T14:{min:02}:{sec:02}.{ms:03}Z"}}}}"#
        ),
        key = key_suffix(i),
        min = min,
        sec = sec,
        ms = ms,
        user = user,
        action = action,
        ip = 10 + user,
        project = project,
        target_type = target_type,
        trace = i.wrapping_mul(0x2545_F491_4F6C_DD1D),
    )
}

/// An NDJSON body of `n` records starting at `first`.
pub fn ndjson_batch(first: u64, n: u64) -> String {
    let mut s = String::with_capacity(n as usize * 1100);
    for i in first..first + n {
        s.push_str(&record(i));
        s.push('\n');
    }
    s
}
