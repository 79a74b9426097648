"""Writes the sample Hex audit streams in this directory (deterministic).

- normal_day.ndjson: a working day in a small workspace (Hex's NDJSON format).
- incident.json: a compromised admin account (Hex's JSON format, one array):
  a normal day for the account, then at night from a new IP: API access for
  itself, public sharing turned on, a project shared to the web, a burst of
  CSV downloads, a secret edited, a password user created and made admin, data
  retention shortened, failed connection edits, and mass permanent deletion.

Records use the envelope Hex streams: source, keySuffix (ULID), timestamp, and
event with actor, action, context, targets (representation as a JSON string),
version, metadata (requestArgs as a JSON string, hexTraceId) and occurred_at.

    python3 examples/samples/generate.py
"""

import json
import os
import random
from datetime import datetime, timedelta, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
WORKSPACE = ("Acme Analytics", "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0")
BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_3) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 Safari/537.36"


def ulid(rng, when):
    ms = int(when.timestamp() * 1000)
    value = (ms << 80) | rng.getrandbits(80)
    return "".join(CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (t.microsecond // 1000)


class User:
    def __init__(self, name, role, ip, uid):
        self.email = name + "@acme.example"
        self.role = role
        self.ip = ip
        self.id = uid


def target(kind, tid, **representation):
    t = {"id": tid, "type": kind, "metadata": {"created": False}}
    if representation:
        t["metadata"]["representation"] = json.dumps(representation, separators=(",", ":"))
    return t


def record(rng, user, action, when, targets=(), args=None, result="SUCCESS", ip=None,
           agent=BROWSER, failure=None):
    meta = {"result": result, "hexTraceId": "%016x" % rng.getrandbits(64), "source": "WEB"}
    if args is not None:
        meta["requestArgs"] = json.dumps(args, separators=(",", ":"))
    if failure:
        meta["failureReason"] = failure
    sent = when + timedelta(milliseconds=rng.randint(200, 4000))
    return {
        "source": "Hex",
        "keySuffix": ulid(rng, sent),
        "timestamp": iso(sent),
        "event": {
            "actor": {
                "id": user.id,
                "type": "USER",
                "metadata": {
                    "email": user.email,
                    "workspace": WORKSPACE[0],
                    "workspaceId": WORKSPACE[1],
                    "actorOrgRole": user.role,
                },
            },
            "action": action,
            "context": {"location": ip or user.ip, "user_agent": agent},
            "targets": list(targets),
            "version": "1",
            "metadata": meta,
            "occurred_at": iso(when),
        },
    }


PROJECTS = [
    ("proj-1001", "Revenue forecast"), ("proj-1002", "Customer LTV model"),
    ("proj-1003", "Weekly KPIs"), ("proj-1004", "Churn drivers"),
    ("proj-1005", "Marketing attribution"), ("proj-1006", "Inventory planning"),
    ("proj-1007", "Pricing experiments"), ("proj-1008", "Support ticket trends"),
    ("proj-1009", "Board deck metrics"), ("proj-1010", "Cohort retention"),
    ("proj-1011", "Sales pipeline"), ("proj-1012", "Cloud cost review"),
    ("proj-1013", "Fraud signals"), ("proj-1014", "Hiring funnel"),
]


def project(i):
    pid, name = PROJECTS[i % len(PROJECTS)]
    return target("project", pid, name=name, status="Published")


def normal_activity(rng, users, day, count):
    """Views, runs, cells, a few downloads and exports: an ordinary working day."""
    mix = [("VIEW_PROJECT", 30), ("RUN_PROJECT", 20), ("RUN_CELL", 25), ("MAGIC_EDIT_CELL", 5),
           ("DOWNLOAD_AS_CSV", 3), ("EXPORT_AS_PDF", 1), ("PUBLISH_PROJECT", 2),
           ("CREATE_PROJECT", 1), ("DUPLICATE_PROJECT", 1), ("SHARE_PROJECT_WITH_ORG", 1),
           ("GRANT_USERS_PROJECT_ACCESS", 1), ("REFRESH_DATA_CONNECTION_SCHEMA", 1),
           ("CREATE_THREAD", 2)]
    actions = [a for a, w in mix for _ in range(w)]
    out = []
    for _ in range(count):
        u = rng.choice(users)
        when = day + timedelta(hours=8, seconds=rng.randint(0, 11 * 3600))
        action = rng.choice(actions)
        p = project(rng.randrange(len(PROJECTS)))
        targets = [p]
        result = "SUCCESS"
        failure = None
        if action in ("RUN_CELL", "DOWNLOAD_AS_CSV"):
            targets = [target("cell", "cell-%04d" % rng.randrange(10000)), p]
        if action == "GRANT_USERS_PROJECT_ACCESS":
            other = rng.choice(users)
            targets = [p, target("user", other.id, email=other.email), target("project grant", "grant-%d" % rng.randrange(999))]
        if action == "REFRESH_DATA_CONNECTION_SCHEMA":
            targets = [target("data connection", "dc-1", name="Snowflake prod")]
        if action == "RUN_PROJECT" and rng.random() < 0.04:
            result, failure = "FAILURE", "QUERY_ERROR"
        out.append(record(rng, u, action, when, targets, result=result, failure=failure))
    return out


def normal_day(rng):
    users = [User(n, r, ip, "u-%04x" % (i + 11)) for i, (n, r, ip) in enumerate([
        ("ana", "ADMIN", "198.51.100.10"), ("bo", "EDITOR", "198.51.100.11"),
        ("chen", "EDITOR", "198.51.100.12"), ("dev", "EDITOR", "203.0.113.40"),
        ("eli", "EDITOR", "198.51.100.14"), ("fay", "EDITOR", "198.51.100.15"),
        ("gus", "EDITOR", "203.0.113.77"), ("hana", "EDITOR", "198.51.100.17"),
        ("ivan", "EDITOR", "198.51.100.18"), ("jo", "EDITOR", "198.51.100.19"),
        ("kim", "EDITOR", "198.51.100.20"), ("lee", "MEMBER", "198.51.100.21"),
    ])]
    day = datetime(2024, 3, 5, tzinfo=timezone.utc)
    events = normal_activity(rng, users, day, 1500)
    ana, bo = users[0], users[1]
    # The admin's routine work: a new analyst joins a group; a project gets its own
    # connection; a weekly report is mailed to the team.
    events.append(record(rng, ana, "UPDATE_GROUP_MEMBERS", day + timedelta(hours=9, minutes=12),
                         [target("user", "u-0099", email="mia@acme.example"),
                          target("group", "grp-7", name="Marketing analysts")],
                         args={"groupId": "grp-7", "addUserIds": ["u-0099"]}))
    events.append(record(rng, bo, "CREATE_PROJECT_DATA_CONNECTION", day + timedelta(hours=10, minutes=3),
                         [target("data connection", "dc-9", name="Scratch Postgres"), project(6)],
                         args={"type": "postgres"}))
    events.append(record(rng, bo, "CREATE_SCHEDULED_RUN_NOTIFICATION", day + timedelta(hours=15, minutes=40),
                         [target("scheduled run", "sr-3"), target("scheduled run notification", "srn-3"), project(2)],
                         args={"recipients": ["growth-team@acme.example"], "type": "EMAIL"}))
    events.sort(key=lambda r: r["event"]["occurred_at"])
    return events


def incident(rng):
    dana = User("dana", "ADMIN", "198.51.100.23", "u-00d4")
    team = [User(n, "EDITOR", ip, "u-%04x" % (i + 40)) for i, (n, ip) in enumerate([
        ("omar", "198.51.100.30"), ("pia", "198.51.100.31"), ("quinn", "198.51.100.32")])]
    day = datetime(2024, 3, 5, tzinfo=timezone.utc)
    events = normal_activity(rng, [dana] + team, day, 300)
    # Dana's usual sensitive work, from the office: her baseline.
    for m in (10, 25):
        events.append(record(rng, dana, "DOWNLOAD_AS_CSV", day + timedelta(hours=10, minutes=m),
                             [target("cell", "cell-0042"), project(2)]))

    bad_ip = "185.220.101.34"
    agent = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:123.0) Gecko/20100101 Firefox/123.0"
    t = datetime(2024, 3, 6, 2, 13, 0, tzinfo=timezone.utc)

    def step(action, minutes, targets=(), **kw):
        kw.setdefault("ip", bad_ip)
        kw.setdefault("agent", agent)
        events.append(record(rng, dana, action, t + timedelta(minutes=minutes), targets, **kw))

    ws = target("workspace", WORKSPACE[1], name=WORKSPACE[0])
    step("GRANT_USER_API_ACCESS", 0, [target("user", dana.id, email=dana.email)], args={"userId": dana.id})
    step("UPDATE_PUBLIC_SHARING_SETTING", 2, [ws], args={"allowPublicSharing": True})
    step("SHARE_PROJECT_WITH_PUBLIC", 3, [project(1)], args={"projectId": "proj-1002"})
    for i in range(30):
        step("DOWNLOAD_AS_CSV", 5 + i * 0.3, [target("cell", "cell-%04d" % (500 + i)), project(i)])
    secret = target("secret", "sec-3", name="SNOWFLAKE_PASSWORD")
    step("EDIT_WORKSPACE_SECRET", 18, [secret])
    backup = target("user", "u-0bad", email="it-backup@protonmail.example")
    step("CREATE_PASSWORD_USER", 20, [backup], args={"email": "it-backup@protonmail.example"})
    step("UPDATE_USER_ROLE", 21, [backup], args={"userId": "u-0bad", "orgRole": "ADMIN"})
    step("SET_DATA_RETENTION_CELL_OUTPUTS", 27, [ws], args={"retentionDays": 1})
    conn = target("data connection", "dc-1", name="Snowflake prod")
    for i in range(6):
        step("EDIT_DATA_CONNECTION", 29 + i * 0.5, [conn], result="FAILURE",
             failure="CONNECTION_TEST_FAILED", args={"host": "db.exfil.example"})
    for i in range(12):
        step("PERMANENTLY_DELETE_PROJECT", 32 + i * 0.4, [project(i + 2)])
    events.sort(key=lambda r: r["event"]["occurred_at"])
    return events


def main():
    rng = random.Random(20240305)
    with open(os.path.join(HERE, "normal_day.ndjson"), "w") as f:
        for r in normal_day(rng):
            f.write(json.dumps(r, separators=(",", ":")) + "\n")
    with open(os.path.join(HERE, "incident.json"), "w") as f:
        json.dump(incident(rng), f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
