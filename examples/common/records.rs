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

/// One envelope shaped like Hex's documented event (about 1.6 KB): `project`
/// (no name, as Hex sends it), `project_version` (the title) and, for cell
/// actions, `cell` targets with JSON-string representations; `version` a number.
/// People behave like people: each of 60 users works in a few projects of their
/// own, from one address, and event time moves forward.
///
/// Written straight into the text, byte for byte what [`real_record_by_tree`]
/// builds, so that the load generator leaves the machine to the daemon.
pub fn real_record(i: u64) -> String {
    use std::fmt::Write;
    let (action, target_type) = action_for(i);
    let user = (i / 50) % 60;
    let project = (user * 13 + (i / 400) % 3) % 97;
    let owner = project % 60;
    let t = 1_709_647_200_000 + (i % 1_000_000_000) as i64 * 20;
    let at = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let pid = format!("4a0b6c2e-{project:04}-4f3b-9a51-2d7c8e1f0a9b");
    let vid = format!("7c1d9e3f-{project:04}-4b2a-8d6e-5f4a3b2c1d0e");
    let mut s = String::with_capacity(2048);
    s.push_str(r#"{"event":{"action":""#);
    s.push_str(action);
    let _ = write!(
        s,
        r#"","actor":{{"id":"9f8e7d6c-{user:04}-4a1b-8c2d-1e2f3a4b5c6d","metadata":{{"actorOrgRole":"EDITOR","email":"analyst{user}@acme.example","workspace":"Acme Analytics","workspaceId":"0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"}},"type":"USER"}},"context":{{"location":""#
    );
    if user.is_multiple_of(2) {
        let _ = write!(s, "198.51.100.{}", 10 + user);
    } else {
        let _ = write!(s, "203.0.{user}.{}", 20 + user);
    }
    let _ = write!(
        s,
        concat!(
            r#"","user_agent":"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 Safari/537.36"}},"#,
            r#""metadata":{{"hexTraceId":"{trace:016x}","requestArgs":"{{\"projectId\":\"{pid}\",\"runType\":\"full\"}}","result":"SUCCESS","source":"WEB"}},"#,
            r#""occurred_at":"{occurred}","targets":["#,
            r#"{{"id":"{pid}","metadata":{{"created":false,"representation":"{{\"archivedDate\":null,\"canEditorsShare\":true,\"createdDate\":\"2024-02-11T09:14:52.118Z\",\"creatorId\":\"9f8e7d6c-{owner:04}-4a1b-8c2d-1e2f3a4b5c6d\",\"hexType\":\"PROJECT\",\"id\":\"{pid}\",\"organizationRole\":null,\"projectLanguage\":\"PYTHON\",\"publicRole\":null,\"updatedDate\":\"2024-03-05T14:02:10.004Z\"}}"}},"type":"project"}},"#,
            r#"{{"id":"{vid}","metadata":{{"created":false,"representation":"{{\"createdDate\":\"2024-02-11T09:14:52.118Z\",\"creatorId\":\"9f8e7d6c-{owner:04}-4a1b-8c2d-1e2f3a4b5c6d\",\"description\":\"\",\"hexId\":\"{pid}\",\"id\":\"{vid}\",\"kernelSize\":\"medium\",\"published\":true,\"timezone\":null,\"title\":\"Revenue forecast {project}\",\"updatedDate\":\"2024-03-05T14:02:10.004Z\",\"version\":\"draft\"}}"}},"type":"project_version"}}"#,
        ),
        trace = i.wrapping_mul(0x2545_F491_4F6C_DD1D),
        pid = pid,
        vid = vid,
        owner = owner,
        project = project,
        occurred = at(t),
    );
    if target_type != "project" {
        let tid = format!("c3e2d1f0-{:04}-4c5b-9e8d-7a6b5c4d3e2f", i % 10_000);
        let _ = write!(
            s,
            r#",{{"id":"{tid}","metadata":{{"created":false,"representation":"{{\"cellType\":\"SQL\",\"createdDate\":\"2024-02-11T09:20:00.000Z\",\"hexVersionId\":\"{vid}\",\"id\":\"{tid}\",\"label\":\"Quarterly bookings by region\",\"updatedDate\":\"2024-03-05T14:02:10.004Z\"}}"}},"type":""#
        );
        for c in target_type.chars() {
            s.push(if c == ' ' { '_' } else { c });
        }
        s.push_str("\"}");
    }
    let _ = write!(
        s,
        r#"],"version":1}},"keySuffix":"{}","source":"Hex","timestamp":"{}"}}"#,
        key_suffix(i),
        at(t + 1500)
    );
    s
}

/// [`real_record`] built as a `serde_json` tree (keys sorted, as its maps
/// sort them): the reference the fast writer is checked against. Building
/// the tree cost the load generator about 28 µs a record, 40% of the machine
/// at 25,000 records/s.
///
/// Shaped like Hex's documented event (about 1.6 KB): `project`
/// (no name, as Hex sends it), `project_version` (the title) and, for cell
/// actions, `cell` targets with JSON-string representations; `version` a number.
/// People behave like people: each of 60 users works in a few projects of their
/// own, from one address, and event time moves forward.
pub fn real_record_by_tree(i: u64) -> String {
    let (action, target_type) = action_for(i);
    let user = (i / 50) % 60;
    let project = (user * 13 + (i / 400) % 3) % 97;
    let ip = if user.is_multiple_of(2) {
        format!("198.51.100.{}", 10 + user)
    } else {
        format!("203.0.{user}.{}", 20 + user)
    };
    let at = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    // Event time moves forward 20 ms a record (runs start at large i: keep it in range).
    let t = 1_709_647_200_000 + (i % 1_000_000_000) as i64 * 20;
    let pid = format!("4a0b6c2e-{project:04}-4f3b-9a51-2d7c8e1f0a9b");
    let vid = format!("7c1d9e3f-{project:04}-4b2a-8d6e-5f4a3b2c1d0e");
    let owner = format!("9f8e7d6c-{:04}-4a1b-8c2d-1e2f3a4b5c6d", project % 60);
    let mut targets = vec![
        serde_json::json!({"id": pid, "type": "project", "metadata": {"created": false, "representation": serde_json::json!({
            "id": pid, "createdDate": "2024-02-11T09:14:52.118Z", "updatedDate": "2024-03-05T14:02:10.004Z",
            "archivedDate": null, "creatorId": owner, "canEditorsShare": true, "projectLanguage": "PYTHON",
            "hexType": "PROJECT", "organizationRole": null, "publicRole": null}).to_string()}}),
        serde_json::json!({"id": vid, "type": "project_version", "metadata": {"created": false, "representation": serde_json::json!({
            "id": vid, "createdDate": "2024-02-11T09:14:52.118Z", "updatedDate": "2024-03-05T14:02:10.004Z",
            "title": format!("Revenue forecast {project}"), "description": "", "hexId": pid, "creatorId": owner,
            "timezone": null, "version": "draft", "published": true, "kernelSize": "medium"}).to_string()}}),
    ];
    if target_type != "project" {
        let tid = format!("c3e2d1f0-{:04}-4c5b-9e8d-7a6b5c4d3e2f", i % 10_000);
        let kind = target_type.replace(' ', "_");
        targets.push(serde_json::json!({"id": tid, "type": kind, "metadata": {"created": false, "representation": serde_json::json!({
            "id": tid, "createdDate": "2024-02-11T09:20:00.000Z", "updatedDate": "2024-03-05T14:02:10.004Z",
            "hexVersionId": vid, "cellType": "SQL", "label": "Quarterly bookings by region"}).to_string()}}));
    }
    serde_json::json!({
        "source": "Hex",
        "keySuffix": key_suffix(i),
        "timestamp": at(t + 1500),
        "event": {
            "actor": {"id": format!("9f8e7d6c-{user:04}-4a1b-8c2d-1e2f3a4b5c6d"), "type": "USER", "metadata": {
                "email": format!("analyst{user}@acme.example"), "workspace": "Acme Analytics",
                "workspaceId": "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0", "actorOrgRole": "EDITOR"}},
            "action": action,
            "context": {"location": ip, "user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 Safari/537.36"},
            "targets": targets,
            "version": 1,
            "metadata": {"result": "SUCCESS", "requestArgs": format!("{{\"projectId\":\"{pid}\",\"runType\":\"full\"}}"),
                "hexTraceId": format!("{:016x}", i.wrapping_mul(0x2545_F491_4F6C_DD1D)), "source": "WEB"},
            "occurred_at": at(t),
        }
    })
    .to_string()
}

/// An NDJSON body of `n` real-shaped records starting at `first`.
pub fn real_ndjson_batch(first: u64, n: u64) -> String {
    let mut s = String::with_capacity(n as usize * 1700);
    for i in first..first + n {
        s.push_str(&real_record(i));
        s.push('\n');
    }
    s
}
