"""The shipped alert rules, Alertmanager routing and Grafana dashboard, checked by the real tools,
and end to end: a real Prometheus scraping agents on a lab node with the rules loaded, a real
Alertmanager routing to a webhook receiver in this test, the remote MX taken down and back.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import smtplib
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab.postfix import free_port, wait_until
from mailpulse.catalogue import BY_NAME, COMMON_LABELS, HISTOGRAM
from tests.agent_support import AgentProcess, wait_for
from tests.conftest import REPO, require_programs

ALERTS = REPO / "alerts"
RULE_FILES = sorted((ALERTS / "rules").glob("*.rules.yml"))
TEST_FILES = sorted((ALERTS / "tests").glob("*.test.yml"))
AM_EXAMPLE = ALERTS / "alertmanager.example.yml"
PROM_EXAMPLE = ALERTS / "prometheus.example.yml"
DASHBOARD = ALERTS / "grafana" / "mailpulse.dashboard.json"
RUNBOOKS = REPO / "docs" / "runbooks"

# Labels Prometheus itself puts on every scraped series.
SCRAPE_LABELS = ("job", "instance")

# A metric name that is not part of a recorded name (level:metric:operations).
METRIC = re.compile(r"(?<![:\w])(mailpulse_[a-z0-9_]+)(?![:\w])")
SELECTOR = re.compile(r"(?<![:\w])(mailpulse_[a-z0-9_]+)\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")


def load_groups(path: Path) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(path.read_text())["groups"]
    return groups


def alerting_rules() -> list[dict[str, Any]]:
    return [r for f in RULE_FILES for g in load_groups(f) for r in g["rules"] if "alert" in r]


def every_expr() -> list[str]:
    return [r["expr"] for f in RULE_FILES for g in load_groups(f) for r in g["rules"]]


def family(name: str) -> str:
    """The catalogue name of an exposed series (a histogram's _bucket, _sum, _count)."""
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and base in BY_NAME and BY_NAME[base].type == HISTOGRAM:
            return base
    return name


def known(name: str) -> bool:
    return family(name) in BY_NAME


def known_labels(name: str) -> set[str]:
    own = BY_NAME[family(name)].labels
    le = ("le",) if name.endswith("_bucket") else ()
    return {*own, *le, *COMMON_LABELS, *SCRAPE_LABELS}


def assert_known(exprs: list[str]) -> None:
    """Every metric named is in the catalogue, and every label a selector matches
    on is one that metric has."""
    named = {m for e in exprs for m in METRIC.findall(e)}
    assert named, "no metric found: the pattern is wrong"
    assert {m for m in named if not known(m)} == set()
    for e in exprs:
        for name, matchers in SELECTOR.findall(e):
            used = set(MATCHER_LABEL.findall(matchers))
            assert used <= known_labels(name), (name, used - known_labels(name))


def run(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=cwd)


# -- the rules ----------------------------------------------------------------------------------


def test_promtool_checks_every_rule_file() -> None:
    require_programs("promtool")
    r = run("promtool", "check", "rules", *map(str, RULE_FILES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(RULE_FILES) == 2


def test_promtool_unit_tests_pass() -> None:
    require_programs("promtool")
    r = run("promtool", "test", "rules", *map(str, TEST_FILES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("SUCCESS") == len(TEST_FILES)


def test_every_alert_has_a_unit_test_that_fires_and_one_that_stays_quiet() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for f in TEST_FILES:
        for case in yaml.safe_load(f.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {r["alert"] for r in alerting_rules()}
    assert names - fires == set(), "alerts no test sees firing"
    assert names - quiet == set(), "alerts no test sees staying quiet"
    assert len(names) >= 19


def test_every_alert_says_severity_summary_description_and_its_runbook() -> None:
    for rule in alerting_rules():
        name = rule["alert"]
        severity = rule["labels"]["severity"]
        # Either fixed or chosen by role; whatever it renders to is page or ticket.
        assert set(re.findall(r"\b(page|ticket)\b", severity)) <= {"page", "ticket"}, name
        assert severity in ("page", "ticket") or "transactional" in severity, name
        notes = rule["annotations"]
        assert notes["summary"] and "{{" in notes["description"], name
        assert notes["runbook_url"] == f"docs/runbooks/{name}.md", name
        text = (REPO / notes["runbook_url"]).read_text()
        assert text.startswith(f"# {name}\n"), name
        for section in ("## What it means", "## What to check", "## What to do"):
            assert section in text, (name, section)


def test_every_runbook_belongs_to_an_alert() -> None:
    names = {r["alert"] for r in alerting_rules()}
    assert {p.stem for p in RUNBOOKS.glob("*.md")} == names


def test_every_metric_a_rule_names_is_in_the_catalogue() -> None:
    assert_known(every_expr())


def test_every_recorded_series_a_rule_reads_is_recorded() -> None:
    recorded = {
        r["record"] for f in RULE_FILES for g in load_groups(f) for r in g["rules"] if "record" in r
    }
    read = {m for e in every_expr() for m in re.findall(r"\b[a-z_]*:[a-z0-9_:]+", e)}
    assert read and read <= recorded
    # Every threshold exists for both roles.
    for f in RULE_FILES:
        for g in load_groups(f):
            roles: dict[str, set[str]] = {}
            for r in g["rules"]:
                if r.get("record", "").startswith("mailpulse:threshold:"):
                    roles.setdefault(r["record"], set()).add(r["labels"]["role"])
            assert all(v == {"transactional", "bulk"} for v in roles.values()), roles


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


# -- routing, views, packaging ------------------------------------------------------------------


def routes_to(*labels: str) -> str:
    r = run("amtool", "config", "routes", "test", f"--config.file={AM_EXAMPLE}", *labels)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_alertmanager_example_passes_amtool_and_routes_by_role_and_severity() -> None:
    require_programs("amtool")
    r = run("amtool", "check-config", str(AM_EXAMPLE))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (
        routes_to("alertname=MailpulseDeferredQueueDeep", "role=transactional", "severity=page")
        == "pager"
    )
    assert (
        routes_to("alertname=MailpulseDeferredQueueDeep", "role=bulk", "severity=ticket")
        == "tickets"
    )
    assert routes_to("alertname=MailpulseSpoolSpaceLow", "role=bulk", "severity=page") == "pager"
    assert (
        routes_to("alertname=MailpulseForgedBounces", "role=transactional", "severity=ticket")
        == "tickets"
    )


def test_alertmanager_example_pages_transactional_at_once_and_groups_bulk() -> None:
    route = yaml.safe_load(AM_EXAMPLE.read_text())["route"]
    pager = next(r for r in route["routes"] if 'role="transactional"' in r["matchers"])
    bulk = next(r for r in route["routes"] if r["matchers"] == ['role="bulk"'])
    assert pager["group_wait"] == "0s" and "node" in pager["group_by"]
    assert bulk["group_by"] == ["alertname"]  # one notification across the bulk fleet
    inhibit = yaml.safe_load(AM_EXAMPLE.read_text())["inhibit_rules"][0]
    assert inhibit["source_matchers"] == ['alertname="MailpulseAgentDown"']
    assert inhibit["equal"] == ["node"]


def test_prometheus_example_passes_promtool_and_keeps_the_agents_labels() -> None:
    require_programs("promtool")
    r = run("promtool", "check", "config", str(PROM_EXAMPLE))
    assert r.returncode == 0, r.stdout + r.stderr
    job = yaml.safe_load(PROM_EXAMPLE.read_text())["scrape_configs"][0]
    assert job["job_name"] == "mailpulse" and job["honor_labels"] is True
    assert all({"node", "role"} <= set(sc["labels"]) for sc in job["static_configs"])


def test_grafana_dashboard_has_a_datasource_input_and_node_role_variables() -> None:
    board = json.loads(DASHBOARD.read_text())
    inputs = board["__inputs"]
    assert [(i["name"], i["type"], i["pluginId"]) for i in inputs] == [
        ("DS_PROMETHEUS", "datasource", "prometheus")
    ]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert {"node", "role"} <= set(variables)
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len(panels) >= 10
    for p in panels:
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        for t in p["targets"]:
            assert "$node" in t["expr"] and "$role" in t["expr"], (p["title"], t["expr"])
    assert_known(dashboard_exprs())


def test_the_rules_ship_in_the_wheel(tmp_path: Path) -> None:
    # Built from a copy: setuptools leaves build/ beside the sources it builds.
    source = tmp_path / "src"
    skip = shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "*.so")
    shutil.copytree(REPO, source, ignore=skip)
    r = run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)
    )
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("mailpulse-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in (*RULE_FILES, *TEST_FILES, AM_EXAMPLE, PROM_EXAMPLE, DASHBOARD):
        assert f"mailpulse/{f.relative_to(REPO)}" in names, f


# -- end to end ---------------------------------------------------------------------------------


class Webhook:
    """Alertmanager's webhook receiver: keeps every notification it is sent."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's hook name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append({"path": self.path, **json.loads(body)})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, alertname: str) -> list[tuple[str, str, dict[str, str]]]:
        """(receiver, status, labels) of every notified alert of that name, in order."""
        return [
            (n["receiver"], a["status"], a["labels"])
            for n in list(self.received)
            for a in n["alerts"]
            if a["labels"]["alertname"] == alertname
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def short_rules(where: Path) -> list[Path]:
    """The shipped rules with the test's short intervals: every `for` one second, and a
    deferred queue of more than two messages too deep for either role."""
    out = []
    for f in RULE_FILES:
        doc = yaml.safe_load(f.read_text())
        for g in doc["groups"]:
            for r in g["rules"]:
                if "alert" in r:
                    r["for"] = "1s"
                if r.get("record") == "mailpulse:threshold:deferred_queue_messages":
                    r["expr"] = "vector(2)"
        path = where / f.name
        path.write_text(yaml.safe_dump(doc))
        out.append(path)
    return out


def short_alertmanager(where: Path, webhook: Webhook) -> Path:
    """The example config as shipped, with its receivers pointed at the test's webhook and
    its waits cut to a second."""
    doc = yaml.safe_load(AM_EXAMPLE.read_text())
    for route in (doc["route"], *doc["route"]["routes"]):
        route.update(group_wait="1s", group_interval="1s")
    for receiver in doc["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = f"{webhook.url}/{receiver['name']}"
    path = where / "alertmanager.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


@contextlib.contextmanager
def started(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def api(port: int, path: str) -> Any:
    """The data of a Prometheus HTTP API answer, which must be a success."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/{path}", timeout=10) as r:
        answer = json.loads(r.read())
    assert answer["status"] == "success", answer
    return answer["data"]


def submit(lab: Any, recipients: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", lab.smtp_port, timeout=60) as s:
        for i, rcpt in enumerate(recipients):
            msg = f"Subject: confirm your address {i}\r\n\r\nhello\r\n"
            s.sendmail(f"bounce-{100 + i}@{lab.bounce_domain}", [rcpt], msg)


def test_a_dead_agent_silences_the_other_alerts_of_its_node_only(tmp_path: Path) -> None:
    """The example's inhibition in a real Alertmanager, given alerts as Prometheus sends them."""
    require_programs("prometheus-alertmanager")
    webhook = Webhook()
    port = free_port()
    argv = [
        "prometheus-alertmanager",
        f"--config.file={short_alertmanager(tmp_path, webhook)}",
        f"--storage.path={tmp_path / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    url = f"http://127.0.0.1:{port}/api/v2/alerts"

    def alert(name: str, node: str, **labels: str) -> dict[str, Any]:
        return {"labels": {"alertname": name, "node": node, "role": "bulk", **labels}}

    sent = [
        alert("MailpulseAgentDown", "bulk1", job="mailpulse"),
        alert("MailpulseDeferredQueueDeep", "bulk1", queue="deferred"),
        alert("MailpulseDeferredQueueDeep", "bulk2", queue="deferred"),
        alert("MailpulseHighLoad", "bulk1"),
    ]

    def states() -> dict[tuple[str, str], str]:
        with urllib.request.urlopen(url, timeout=5) as r:
            return {
                (a["labels"]["alertname"], a["labels"]["node"]): a["status"]["state"]
                for a in json.loads(r.read())
            }

    try:
        with started(argv, tmp_path / "alertmanager.log"):
            wait_for(lambda: states() == {}, 60, "Alertmanager to answer")
            post = urllib.request.Request(
                url, json.dumps(sent).encode(), {"Content-Type": "application/json"}
            )
            urllib.request.urlopen(post, timeout=5).close()
            expected = {
                ("MailpulseAgentDown", "bulk1"): "active",
                ("MailpulseDeferredQueueDeep", "bulk1"): "suppressed",
                ("MailpulseHighLoad", "bulk1"): "suppressed",
                ("MailpulseDeferredQueueDeep", "bulk2"): "active",
            }
            wait_for(lambda: states() == expected, 30, "the inhibition", states)
    finally:
        webhook.close()


@pytest.mark.lab
@pytest.mark.slow
def test_remote_mx_down_pages_transactional_tickets_bulk_and_resolves(
    lab: Any, tmp_path: Path
) -> None:
    require_programs("prometheus", "prometheus-alertmanager")

    webhook = Webhook()
    am_port, prom_port = free_port(), free_port()
    # Two agents watch the one lab Postfix, one as the transactional node, one as a bulk node:
    # the same deferred queue must reach the pager from one and the tickets from the other.
    agents: dict[str, AgentProcess] = {}
    targets = []
    for node, role in (("tx1", "transactional"), ("bulk1", "bulk")):
        port = free_port()
        config = tmp_path / f"{node}.yml"
        config.write_text(
            f"node: {node}\nrole: {role}\nlisten: 127.0.0.1:{port}\n"
            f"postfix:\n  config_dirs: [{lab.etc}]\n"
            "logs:\n  poll_interval: 0.2\nqueue:\n  interval: 1\nhost:\n  interval: 1\n"
        )
        agents[node] = AgentProcess(
            config, tmp_path / f"state-{node}", port, tmp_path / f"{node}.log"
        )
        targets.append({"targets": [f"127.0.0.1:{port}"], "labels": {"node": node, "role": role}})
    prom_config = tmp_path / "prometheus.yml"
    prom_config.write_text(
        yaml.safe_dump(
            {
                "global": {
                    "scrape_interval": "1s",
                    "scrape_timeout": "1s",
                    "evaluation_interval": "1s",
                },
                "rule_files": [str(p) for p in short_rules(tmp_path)],
                "alerting": {
                    "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
                },
                "scrape_configs": [
                    {"job_name": "mailpulse", "honor_labels": True, "static_configs": targets}
                ],
            }
        )
    )
    am_argv = [
        "prometheus-alertmanager",
        f"--config.file={short_alertmanager(tmp_path, webhook)}",
        f"--storage.path={tmp_path / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{am_port}",
        "--cluster.listen-address=",
    ]
    prom_argv = [
        "prometheus",
        f"--config.file={prom_config}",
        f"--storage.tsdb.path={tmp_path / 'prom-data'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
    ]
    deferred = "MailpulseDeferredQueueDeep"

    def seen() -> object:
        return webhook.alerts(deferred) or (tmp_path / "prometheus.log").read_text()[-2000:]

    def notified(receiver: str, status: str, node: str) -> bool:
        return any(
            (rcv, st, labels["node"]) == (receiver, status, node)
            for rcv, st, labels in webhook.alerts(deferred)
        )

    try:
        for agent in agents.values():
            agent.start()
        with (
            started(am_argv, tmp_path / "alertmanager.log"),
            started(prom_argv, tmp_path / "prometheus.log"),
        ):
            lab.mx_down()
            submit(lab, [f"ok-u{i}@gmail.com" for i in range(3)] + ["ok-u9@yahoo.com"])
            wait_until(lambda: lab.queue_files("deferred") == 4, 60, "4 messages deferred")
            for receiver, node in (("pager", "tx1"), ("tickets", "bulk1")):
                wait_for(partial(notified, receiver, "firing", node), 90, f"{node} firing", seen)
            firing = {labels["node"]: (rcv, labels) for rcv, st, labels in webhook.alerts(deferred)}
            assert firing["tx1"][0] == "pager" and firing["tx1"][1]["severity"] == "page"
            assert firing["bulk1"][0] == "tickets" and firing["bulk1"][1]["severity"] == "ticket"
            assert (
                firing["tx1"][1]["queue"] == "deferred"
                and firing["tx1"][1]["instance"] == lab.instance
            )

            # The real Prometheus evaluated every shipped rule without an error, and every
            # dashboard query parses and finds the agents' series where the lab has them.
            groups = api(prom_port, "rules")["groups"]
            assert sum(len(g["rules"]) for g in groups) == sum(
                len(g["rules"]) for f in RULE_FILES for g in load_groups(f)
            )
            broken = [
                (r["name"], r["lastError"])
                for g in groups
                for r in g["rules"]
                if r["health"] != "ok"
            ]
            assert broken == []
            for expr in dashboard_exprs():
                query = expr.replace("$node", ".*").replace("$role", ".*")
                result = api(prom_port, "query?" + urllib.parse.urlencode({"query": query}))
                if "mailpulse_queue_messages" in expr or "mailpulse_host_load_average" in expr:
                    assert {s["metric"]["node"] for s in result["result"]} == {"tx1", "bulk1"}, expr

            lab.mx_up()
            lab.flush()
            wait_until(lambda: lab.queue_files("deferred") == 0, 120, "the deferred mail delivered")
            for receiver, node in (("pager", "tx1"), ("tickets", "bulk1")):
                wait_for(
                    partial(notified, receiver, "resolved", node), 90, f"{node} resolved", seen
                )

            # The transactional agent dies: `up` carries the node and role of the scrape
            # config, so its death pages.
            agents["tx1"].kill9()

            def agent_down() -> list[tuple[str, str, dict[str, str]]]:
                return webhook.alerts("MailpulseAgentDown")

            wait_for(lambda: bool(agent_down()), 90, "the agent-down page", agent_down)
            seen_down = {(r, st, x["node"], x["role"], x["severity"]) for r, st, x in agent_down()}
            assert seen_down == {("pager", "firing", "tx1", "transactional", "page")}
    finally:
        for agent in agents.values():
            agent.stop()
        webhook.close()
