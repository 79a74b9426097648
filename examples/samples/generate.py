"""Writes sample Hex audit streams, in the shape of Hex's documented event.

    python3 examples/samples/generate.py                    # the shipped samples
    python3 examples/samples/generate.py --seed 7 --days 3 --out /tmp/day.ndjson

- normal_days.ndjson (seed 20240305, 2 days): ordinary days in a mid-sized workspace.
- incident.json: two ordinary days, then at night two accounts are used from one
  new address: dana (an admin) gives herself API access, turns public sharing
  on, shares a project to the web, bulk-downloads CSVs, edits a workspace
  secret, creates and promotes a password user, invites an outsider, changes a
  colleague's e-mail, adds an external file integration, schedules a report to
  an outside address, shortens data retention, fails to repoint a connection,
  deletes projects for good and revokes her API access again; omar's account,
  from the same address, scrapes projects and downloads their data.

Shape (Hex's "Audit logs event reference"): target types are snake_case
(`project`, `project_version`, `cell`, `data_connection`, ...); every
`metadata.representation` is a JSON string; a `project` representation has ids,
dates and roles but no name, the title is on the `project_version` target;
`version` is a number; `context.location` is the IP; `metadata.requestArgs` is a
JSON string. Records come in Hex's stream envelope (source, keySuffix,
timestamp, event).

Workspaces differ by seed: size, domains, admins, remote share, office
egress addresses, analysts who download a lot, scheduled runs, API users.
People work from the office (a shared NAT address), from home (their ISP's
address, which changes now and then within the ISP's block), from phones
(carrier NAT, a new address almost every time) and sometimes while travelling.
"""

import argparse
import json
import os
import random
from datetime import datetime, timedelta, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CHROME = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 Safari/537.36"
EDGE = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 Safari/537.36 Edg/122.0.0.0"
SAFARI_IOS = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.3 Mobile/15E148 Safari/604.1"
API_AGENT = "python-requests/2.31.0"
TITLES = [
    "Revenue forecast", "Customer LTV model", "Weekly KPIs", "Churn drivers", "Marketing attribution",
    "Inventory planning", "Pricing experiments", "Support ticket trends", "Board deck metrics",
    "Cohort retention", "Sales pipeline", "Cloud cost review", "Fraud signals", "Hiring funnel",
    "Payments reconciliation", "Warehouse usage", "Product analytics", "NPS survey", "Ops daily",
    "Finance close", "Growth experiments", "Partner revenue", "Feature adoption", "Trial conversion",
    "Regional sales", "Capacity model", "Data quality checks", "Supply chain", "Ad spend", "Retention deep dive",
]
FIRST = ["ana", "bo", "chen", "dev", "eli", "fay", "gus", "hana", "ivan", "jo", "kim", "lee", "mia", "nils",
         "ola", "pat", "rae", "sam", "tess", "uma", "vik", "wen", "xi", "yara", "zed", "amir", "bea", "cruz",
         "dora", "emil", "finn", "gia", "hugo", "iris", "jon", "kai", "lina", "max", "noor", "otto", "paz",
         "rui", "sara", "teo", "ugo", "vera", "will", "yuki", "zoe", "abel", "cleo", "dina", "ezra", "flor",
         "gabe", "hedy", "ines", "jade", "kurt", "lars"]


def uid(rng):
    return "%08x-%04x-4%03x-%04x-%012x" % (rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(12),
                                            0x8000 | rng.getrandbits(14), rng.getrandbits(48))


def ulid(rng, when):
    ms = int(when.timestamp() * 1000)
    value = (ms << 80) | rng.getrandbits(80)
    return "".join(CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (t.microsecond // 1000)


def js(obj):
    return json.dumps(obj, separators=(",", ":"))


class Project:
    def __init__(self, rng, title, owner, created):
        self.id, self.version_id, self.title, self.owner = uid(rng), uid(rng), title, owner
        self.created = iso(created)
        self.language = rng.choice(["PYTHON", "PYTHON", "SQL", "R"])
        self.cells = [uid(rng) for _ in range(rng.randint(4, 30))]

    def targets(self, rng, with_version=True, cell=None):
        t = [target("project", self.id, id=self.id, createdDate=self.created, updatedDate=self.created,
                    archivedDate=None, creatorId=self.owner.id, canEditorsShare=True,
                    projectLanguage=self.language, hexType="PROJECT", organizationRole=None, publicRole=None)]
        if with_version:
            t.append(target("project_version", self.version_id, id=self.version_id, createdDate=self.created,
                            updatedDate=self.created, title=self.title, description="", hexId=self.id,
                            creatorId=self.owner.id, timezone=None, version="draft", published=True,
                            kernelSize="medium", autoRerun=True, cacheAppState=True))
        if cell is not None:
            cid = self.cells[cell % len(self.cells)]
            t.append(target("cell", cid, id=cid, createdDate=self.created, updatedDate=self.created,
                            hexVersionId=self.version_id, cellType=rng.choice(["SQL", "CODE", "CHART"]),
                            label=None))
        return t


def target(kind, tid, **representation):
    t = {"id": tid, "type": kind, "metadata": {"created": False}}
    if representation:
        t["metadata"]["representation"] = js(representation)
    return t


class User:
    def __init__(self, rng, name, domain, role, kind, ws):
        self.name, self.email, self.role, self.kind = name, "%s@%s" % (name, domain), role, kind
        self.id = uid(rng)
        self.isp = rng.choice(ws.isps)
        self.home = ws.home_address(rng, self.isp)
        self.agent = rng.choice([CHROME, CHROME, EDGE])
        self.remote = rng.random() < ws.remote_share
        self.downloader = rng.random() < 0.2


class Workspace:
    def home_address(self, rng, isp):
        """A home address of its own: colleagues rarely share a household."""
        while True:
            a = "%s.%d.%d" % (isp, rng.randint(0, 255), rng.randint(2, 250))
            if a not in self.homes:
                self.homes.add(a)
                return a

    def __init__(self, rng, size=None, projects=None):
        self.name = rng.choice(["Acme Analytics", "Globex Data", "Initech BI", "Umbrella Insights"])
        self.id = uid(rng)
        base = self.name.split()[0].lower()
        self.domains = [base + ".example"] + ([base + "-labs.example"] if rng.random() < 0.4 else [])
        # Office egress: one or two NAT addresses in the company's block.
        self.offices = ["198.51.100.%d" % rng.randint(2, 40) for _ in range(rng.randint(1, 2))]
        # Home providers: each hands out addresses across its own /16.
        self.isps = ["203.0", "81.2", "89.160", "175.16", "216.160", "24.48"]
        self.remote_share = rng.choice([0.1, 0.3, 0.6])
        self.homes = set()
        size = size or rng.choice([12, 25, 40, 60])
        names = rng.sample(FIRST, size)
        self.users = []
        admins = rng.randint(1, 3)
        for i, n in enumerate(names):
            role = "ADMIN" if i < admins else rng.choice(["EDITOR", "EDITOR", "EDITOR", "MEMBER", "GUEST"] if i > 3 else ["EDITOR"])
            self.users.append(User(rng, n, rng.choice(self.domains), role, "human", self))
        self.service = User(rng, "etl-bot", self.domains[0], "EDITOR", "api", self) if rng.random() < 0.6 else None
        if self.service:
            self.service.home = "34.102.%d.%d" % (rng.randint(0, 255), rng.randint(1, 254))
            self.service.agent = API_AGENT
        start = datetime(2023, 6, 1, tzinfo=timezone.utc)
        editors = [u for u in self.users if u.role in ("ADMIN", "EDITOR")]
        self.projects = [Project(rng, t, rng.choice(editors), start + timedelta(days=rng.randint(0, 200)))
                         for t in rng.sample(TITLES, min(len(TITLES), projects or 8 + size // 2))]
        self.groups = [(uid(rng), g) for g in ["Analysts", "Finance", "Marketing analysts", "Data platform"]]
        self.connections = [(uid(rng), c) for c in ["Snowflake prod", "BigQuery marketing", "Postgres replica"]]
        self.secrets = [(uid(rng), s) for s in ["SNOWFLAKE_PASSWORD", "STRIPE_API_KEY", "SLACK_TOKEN", "DBT_CLOUD_TOKEN"]]
        self.schedules = [(uid(rng), p) for p in rng.sample(self.projects, min(4, len(self.projects)))]


def record(rng, ws, user, action, when, targets=(), args=None, result="SUCCESS", ip=None, agent=None,
           failure=None, source="WEB"):
    meta = {"result": result, "hexTraceId": "%016x" % rng.getrandbits(64), "source": source}
    if args is not None:
        meta["requestArgs"] = js(args)
    if failure:
        meta["failureReason"] = failure
    sent = when + timedelta(milliseconds=rng.randint(200, 4000))
    return {
        "source": "Hex",
        "keySuffix": ulid(rng, sent),
        "timestamp": iso(sent),
        "event": {
            "actor": {"id": user.id, "type": "USER" if user.kind == "human" else "API",
                      "metadata": {"email": user.email, "workspace": ws.name, "workspaceId": ws.id,
                                   "actorOrgRole": user.role}},
            "action": action,
            "context": {"location": ip or user.home, "user_agent": agent or user.agent},
            "targets": list(targets),
            "version": 1,
            "metadata": meta,
            "occurred_at": iso(when),
        },
    }


def user_target(u):
    return target("user", u.id, id=u.id, email=u.email, orgRole=u.role)


def session(rng, ws, u, start, where, out):
    """One working session: open projects, run cells, now and then download,
    export, share, publish or administer."""
    ip, agent = where
    t = start
    phone = agent == SAFARI_IOS

    def add(action, targets=(), **kw):
        nonlocal t
        t += timedelta(seconds=rng.randint(5, 240))
        kw.setdefault("ip", ip)
        kw.setdefault("agent", agent)
        out.append(record(rng, ws, u, action, t, targets, **kw))

    for _ in range(rng.randint(1, 3 if phone else 5)):
        p = rng.choice(ws.projects)
        add("VIEW_PROJECT", p.targets(rng))
        if phone or u.role == "GUEST":
            continue
        for _ in range(rng.randint(0, 25)):
            add("RUN_CELL", p.targets(rng, cell=rng.randrange(100)))
        if rng.random() < 0.3:
            add("RUN_PROJECT", p.targets(rng), result="FAILURE" if rng.random() < 0.05 else "SUCCESS")
        r = rng.random()
        if r < (0.35 if u.downloader else 0.08):
            for _ in range(rng.randint(1, 12 if u.downloader else 3)):
                add("DOWNLOAD_AS_CSV", p.targets(rng, cell=rng.randrange(100)))
        elif r < 0.45:
            add(rng.choice(["MAGIC_EDIT_CELL", "CREATE_THREAD", "MAGIC_DESCRIBE_PROJECT", "MAGIC_RENAME_CELL"]),
                p.targets(rng, cell=rng.randrange(100)))
        elif r < 0.5:
            add("EXPORT_AS_PDF", p.targets(rng))
        if u.role in ("ADMIN", "EDITOR") and rng.random() < 0.25:
            editor_work(rng, ws, u, p, add)
        if u.role == "ADMIN" and rng.random() < 0.3:
            admin_work(rng, ws, u, add)


def editor_work(rng, ws, u, p, add):
    other = rng.choice(ws.users)
    group = rng.choice(ws.groups)
    secret = rng.choice(ws.secrets)
    conn = rng.choice(ws.connections)
    grant = target("project_grant", uid(rng), id=uid(rng), role=rng.choice(["CAN_VIEW", "CAN_EDIT"]))
    choice = rng.choice([
        lambda: add("PUBLISH_PROJECT", p.targets(rng)),
        lambda: add("SHARE_PROJECT_WITH_ORG", p.targets(rng), args={"role": "CAN_VIEW"}),
        lambda: add("GRANT_USERS_PROJECT_ACCESS", p.targets(rng) + [user_target(other), grant], args={"role": "CAN_EDIT"}),
        lambda: add("GRANT_GROUPS_PROJECT_ACCESS", p.targets(rng) + [target("group", group[0], id=group[0], name=group[1]), grant]),
        lambda: add("UPDATE_PROJECT_ACCESS", p.targets(rng) + [user_target(other), grant]),
        lambda: add("IMPORT_WORKSPACE_SECRET", [target("secret", secret[0], id=secret[0], name=secret[1])] + p.targets(rng, with_version=False)),
        lambda: add("CREATE_PROJECT_SECRET", [target("secret", uid(rng), name="API_TOKEN")] + p.targets(rng, with_version=False)),
        lambda: add("IMPORT_DATA_CONNECTION", [target("data_connection", conn[0], id=conn[0], name=conn[1])] + p.targets(rng, with_version=False)),
        lambda: add("CREATE_PROJECT", p.targets(rng)),
        lambda: add("DUPLICATE_PROJECT", p.targets(rng)),
        lambda: add("UPLOAD_FILE_TO_PROJECT", p.targets(rng, with_version=False) + [target("file", uid(rng), name="targets.csv")]),
        lambda: add("DOWNLOAD_FILE_FROM_PROJECT", p.targets(rng, with_version=False) + [target("file", uid(rng), name="export.parquet")]),
        lambda: add("CREATE_SCHEDULED_RUN", p.targets(rng, with_version=False) + [target("scheduled_run", uid(rng), cadence="DAILY")]),
        lambda: add("EDIT_SCHEDULED_RUN", p.targets(rng, with_version=False) + [target("scheduled_run", uid(rng), cadence="HOURLY")]),
        lambda: add("CREATE_SCHEDULED_RUN_NOTIFICATION", [target("scheduled_run", uid(rng)), target("scheduled_run_notification", uid(rng))] + p.targets(rng, with_version=False),
                    args={"recipients": [rng.choice(ws.users).email], "type": "EMAIL"}),
        lambda: add("CREATE_COLLECTION", [target("collection", uid(rng), name="Team dashboards")]),
        lambda: add("ADD_PROJECTS_TO_COLLECTION", [target("collection", uid(rng), name="Team dashboards")] + p.targets(rng, with_version=False)),
        lambda: add("DELETE_PROJECT", p.targets(rng)),
        lambda: add("REQUEST_PROJECT_ROLE", p.targets(rng, with_version=False) + [user_target(u)]),
    ])
    choice()


def admin_work(rng, ws, u, add):
    other = rng.choice(ws.users)
    group = rng.choice(ws.groups)
    conn = rng.choice(ws.connections)
    wst = target("workspace", ws.id, id=ws.id, name=ws.name)
    choice = rng.choice([
        lambda: add("INVITE_USERS", [wst], args={"emails": ["%s.new@%s" % (rng.choice(FIRST), rng.choice(ws.domains))], "orgRole": "EDITOR"}),
        lambda: add("UPDATE_USER_ROLE", [user_target(other)], args={"userId": other.id, "orgRole": rng.choice(["EDITOR", "MEMBER"])}),
        lambda: add("UPDATE_GROUP_MEMBERS", [user_target(other), target("group", group[0], id=group[0], name=group[1])],
                    args={"groupId": group[0], "addUserIds": [other.id]}),
        lambda: add("REFRESH_DATA_CONNECTION_SCHEMA", [target("data_connection", conn[0], id=conn[0], name=conn[1])]),
        lambda: add("UPDATE_DATA_CONNECTION_MAGIC_USAGE", [target("data_connection", conn[0], id=conn[0], name=conn[1])], args={"enabled": True}),
        lambda: add("CREATE_GROUP", [target("group", uid(rng), name="Project %s" % rng.choice(TITLES))]),
        lambda: add("EDIT_USER", [user_target(other)], args={"userId": other.id, "name": other.name.title()}),
        lambda: add("CREATE_PROJECT_DATA_CONNECTION", [target("data_connection", uid(rng), name="Scratch Postgres")] + rng.choice(ws.projects).targets(rng, with_version=False),
                    args={"type": "postgres"}),
    ])
    choice()


def where_for(rng, ws, u, day):
    """Where a session happens: office, home (an address in the ISP's block that
    changes now and then), phone (carrier NAT), or travel (a hotel, rarely)."""
    r = rng.random()
    if r < 0.08:
        return ("100.%d.%d.%d" % (rng.randint(64, 127), rng.randint(0, 255), rng.randint(1, 254)), SAFARI_IOS)
    if r < 0.085:
        return ("%d.%d.%d.%d" % (rng.choice([5, 37, 62, 85, 91, 109]), rng.randint(0, 255), rng.randint(0, 255), rng.randint(1, 254)), u.agent)
    if u.remote or r < 0.35:
        if rng.random() < 0.1:  # the ISP handed out a new address
            u.home = ws.home_address(rng, u.isp)
        return (u.home, u.agent)
    return (rng.choice(ws.offices), u.agent)


def normal_days(rng, days, start=datetime(2024, 3, 4, tzinfo=timezone.utc), ws=None):
    ws = ws or Workspace(rng)
    out = []
    for d in range(days):
        day = start + timedelta(days=d)
        weekend = day.weekday() >= 5
        for u in ws.users:
            if rng.random() < (0.15 if weekend else 0.85):
                for _ in range(rng.randint(1, 3)):
                    begin = day + timedelta(hours=rng.choice([7, 8, 9, 10, 13, 14, 16, 20]), minutes=rng.randint(0, 59))
                    session(rng, ws, u, begin, where_for(rng, ws, u, day), out)
        # Rarer admin work that is legitimate but worth a look the same day (MEDIUM):
        # an engineer gets API access; a project goes to Hex support with a ticket.
        # Bigger workspaces do more of it.
        admins = [u for u in ws.users if u.role == "ADMIN"]
        if rng.random() < len(ws.users) / 600:
            a, eng = rng.choice(admins), rng.choice(ws.users)
            when = day + timedelta(hours=rng.randint(9, 17), minutes=rng.randint(0, 59))
            out.append(record(rng, ws, a, "GRANT_USER_API_ACCESS", when, [user_target(eng)], args={"userId": eng.id},
                              ip=rng.choice(ws.offices) if not a.remote else a.home))
        if rng.random() < len(ws.users) / 800:
            u = rng.choice([u for u in ws.users if u.role in ("ADMIN", "EDITOR")])
            when = day + timedelta(hours=rng.randint(9, 17), minutes=rng.randint(0, 59))
            out.append(record(rng, ws, u, "SHARE_PROJECT_WITH_SUPPORT", when, rng.choice(ws.projects).targets(rng),
                              ip=rng.choice(ws.offices) if not u.remote else u.home))
        # Scheduled runs: Hex runs them for the project owner.
        for sid, p in ws.schedules:
            for h in range(0, 24, rng.choice([1, 6, 24])):
                when = day + timedelta(hours=h, minutes=rng.randint(0, 3))
                out.append(record(rng, ws, p.owner, "RUN_PROJECT", when, p.targets(rng) + [target("scheduled_run", sid, id=sid)],
                                  ip="35.185.%d.%d" % (rng.randint(0, 3), rng.randint(1, 254)), agent="Hex Scheduler", source="SCHEDULED"))
        # The integration account runs projects through the API all day.
        if ws.service:
            for h in range(24):
                p = rng.choice(ws.projects)
                out.append(record(rng, ws, ws.service, "RUN_PROJECT", day + timedelta(hours=h, minutes=rng.randint(0, 59)),
                                  p.targets(rng), source="API"))
    out.sort(key=lambda r: r["event"]["occurred_at"])
    return ws, out


def incident(rng):
    ws, events = normal_days(rng, 2, ws=Workspace(rng, size=14, projects=26))
    dana = next(u for u in ws.users if u.role == "ADMIN")
    dana.name, dana.email = "dana", "dana@" + ws.domains[0]
    omar = next(u for u in ws.users if u.role == "EDITOR")
    # (Renaming after the fact would leave old records with the old e-mail: rename in them too.)
    for r in events:
        a = r["event"]["actor"]
        if a["id"] == dana.id:
            a["metadata"]["email"] = dana.email
    bad_ip = "185.220.101.34"
    agent = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:123.0) Gecko/20100101 Firefox/123.0"
    t = datetime(2024, 3, 6, 2, 13, 0, tzinfo=timezone.utc)

    def step(user, action, minutes, targets=(), **kw):
        kw.setdefault("ip", bad_ip)
        kw.setdefault("agent", agent)
        events.append(record(rng, ws, user, action, t + timedelta(minutes=minutes), targets, **kw))

    wst = target("workspace", ws.id, id=ws.id, name=ws.name)
    shared = ws.projects[1]
    step(dana, "GRANT_USER_API_ACCESS", 0, [target("user", dana.id)], args={"userId": dana.id})
    step(dana, "UPDATE_PUBLIC_SHARING_SETTING", 2, [wst], args={"allowPublicSharing": True})
    # Named only by id: hexwatch knows the title from earlier records.
    step(dana, "SHARE_PROJECT_WITH_PUBLIC", 3, [target("project", shared.id, id=shared.id, publicRole="CAN_VIEW")], args={"projectId": shared.id})
    for i in range(30):
        p = ws.projects[i % len(ws.projects)]
        step(dana, "DOWNLOAD_AS_CSV", 5 + i * 0.3, p.targets(rng, cell=i))
    secret = ws.secrets[0]
    step(dana, "EDIT_WORKSPACE_SECRET", 18, [target("secret", secret[0], id=secret[0], name=secret[1])])
    backup_id = uid(rng)
    step(dana, "CREATE_PASSWORD_USER", 20, [target("user", backup_id, id=backup_id, email="it-backup@protonmail.example")],
         args={"email": "it-backup@protonmail.example"})
    step(dana, "UPDATE_USER_ROLE", 21, [target("user", backup_id)], args={"userId": backup_id, "orgRole": "ADMIN"})
    step(dana, "INVITE_USERS", 22, [wst], args={"emails": ["finance-audit@outlook.example"], "orgRole": "EDITOR"})
    victim = ws.users[-1]
    step(dana, "EDIT_USER", 23, [target("user", victim.id)], args={"userId": victim.id, "email": "recovery@protonmail.example"})
    step(dana, "CREATE_EXTERNAL_FILE_INTEGRATION", 24, [target("external_file_integration", uid(rng), name="Backup bucket", provider="S3")],
         args={"bucket": "s3://exfil-drop-7781"})
    report = ws.projects[2]
    sid = uid(rng)
    step(dana, "CREATE_SCHEDULED_RUN", 25, report.targets(rng, with_version=False) + [target("scheduled_run", sid, id=sid, cadence="HOURLY")])
    step(dana, "CREATE_SCHEDULED_RUN_NOTIFICATION", 26, [target("scheduled_run", sid), target("scheduled_run_notification", uid(rng))] + report.targets(rng, with_version=False),
         args={"recipients": ["drop@protonmail.example"], "type": "EMAIL"})
    step(dana, "SET_DATA_RETENTION_CELL_OUTPUTS", 27, [wst], args={"retentionDays": 1})
    conn = ws.connections[0]
    for i in range(6):
        step(dana, "EDIT_DATA_CONNECTION", 29 + i * 0.5, [target("data_connection", conn[0], id=conn[0], name=conn[1])], result="FAILURE",
             failure="CONNECTION_TEST_FAILED", args={"host": "db.exfil.example"})
    for i in range(12):
        step(dana, "PERMANENTLY_DELETE_PROJECT", 32 + i * 0.4, ws.projects[(i + 3) % len(ws.projects)].targets(rng))
    step(dana, "REVOKE_USER_API_ACCESS", 40, [target("user", dana.id)], args={"userId": dana.id})
    # The second account, from the same address: scraping, then downloads.
    for i, p in enumerate(ws.projects[:25]):
        step(omar, "VIEW_PROJECT", 41 + i * 0.2, p.targets(rng))
        step(omar, "RUN_PROJECT", 41.1 + i * 0.2, p.targets(rng))
    for i in range(8):
        step(omar, "DOWNLOAD_AS_CSV", 47 + i * 0.5, ws.projects[i].targets(rng, cell=i))
    events.sort(key=lambda r: r["event"]["occurred_at"])
    return events


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int)
    ap.add_argument("--days", type=int, default=2)
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.seed is not None:
        _, events = normal_days(random.Random(a.seed), a.days)
        with open(a.out, "w") as f:
            for r in events:
                f.write(js(r) + "\n")
        return
    _, events = normal_days(random.Random(20240305), 2)
    with open(os.path.join(HERE, "normal_days.ndjson"), "w") as f:
        for r in events:
            f.write(js(r) + "\n")
    with open(os.path.join(HERE, "incident.json"), "w") as f:
        f.write("[\n" + ",\n".join(js(r) for r in incident(random.Random(20240306))) + "\n]\n")


if __name__ == "__main__":
    main()
