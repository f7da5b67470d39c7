"""The real snmpd with the shipped snippet, over the agent of a lab node after a campaign:
every OID a Cacti template reads (and every extend line) answers what /metrics shows.

Expected values come from the /metrics exposition: the series of the item's metric whose
labels match its row and conditions, summed, as the snmpd snippet's comments and the Cacti
templates name them. The OIDs come from the shipped template files themselves.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest

from lab.campaign import run_campaign
from lab.postfix import free_port
from tests.agent_support import AgentProcess, Series, scrape, wait_for, write_agent_config
from tests.conftest import REPO, require_programs

TEMPLATES = REPO / "cacti_templates"
SNIPPET = TEMPLATES / "snmpd.conf.d" / "mailpulse.conf"
OID_LINE = re.compile(r"^#\s+(\.[\d.]+)\s+(\.[\d.]+)\s+(\w+) (\S.*?)$", re.M)


def template_oids() -> set[str]:
    """Every OID any shipped Cacti template polls."""
    oids = set()
    for f in TEMPLATES.glob("cacti_*.xml"):
        oids.update(re.findall(r"<value>(\.1\.3\.6\.1\.4\.1\.[\d.]+)</value>", f.read_text()))
    return oids


def expected(samples: dict[Series, float]) -> dict[tuple[str, str], int]:
    """(graph, legend) -> the value /metrics shows for it, as the graph defines it."""
    from mailpulse.exporters.graphs import available

    from mailpulse import catalogue

    out = {}
    for g in available():
        for item in g.items:
            label = catalogue.SNMP_TABLES[item.table].label if item.table else None
            total = 0.0
            for (name, labels), v in samples.items():
                d = dict(labels)
                if name != item.metric or (label and d.get(label) != item.row):
                    continue
                if all(d.get(k) == want for k, want in item.where):
                    total += v
            out[(g.name, item.legend)] = round(total * g.scale)
    return out


@pytest.mark.lab
@pytest.mark.slow
def test_snmpd_answers_every_template_oid_with_the_metrics_value(make_lab, tmp_path: Path) -> None:
    require_programs("snmpd")
    easysnmp = pytest.importorskip("easysnmp", reason="the SNMP client of the tests")
    from lab.snmpd import COMMUNITY, Snmpd

    lab = make_lab()
    port = free_port()
    state = tmp_path / "state"
    config = write_agent_config(
        tmp_path / "agent.yaml", [lab], port, "snmp:\n  snapshot_interval: 1\n  stale_after: 30\n"
    )
    agent = AgentProcess(config, state, port, tmp_path / "agent.log").start()
    snmpd = Snmpd(tmp_path / "snmpd", state)
    try:
        plan, _ = run_campaign(lab, 120, "snmp", seed=5)
        bounced = sum(1 for p in plan if p.status == "bounced")
        wait_for(
            lambda: (
                sum(
                    v
                    for (n, labels), v in scrape(port).items()
                    if n == "mailpulse_deliveries_total" and ("status", "bounced") in labels
                )
                >= bounced
            ),
            120,
            "the campaign's bounces on /metrics",
        )
        snmpd.start()
        session = easysnmp.Session(
            hostname=f"127.0.0.1:{snmpd.port}", community=COMMUNITY, version=2, timeout=5,
            retries=1, use_numeric=True,
        )  # fmt: skip
        listed = OID_LINE.findall(SNIPPET.read_text())
        assert {oid for oid, _, _, _ in listed} == template_oids()
        assert len(listed) >= 40

        def snmp_values() -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
            direct, extend = {}, {}
            for oid, ext, graph, legend in listed:
                v = session.get(oid)
                assert v.snmp_type in ("COUNTER64", "GAUGE"), (oid, v.snmp_type, v.value)
                direct[(graph, legend)] = int(v.value)
                e = session.get(ext)
                extend[(graph, legend)] = int(e.value)
            return direct, extend

        # /metrics before and after the SNMP reads, with a snapshot written in between: while
        # the two agree (the host's load may move), SNMP must say the same.
        for _ in range(20):
            before = expected(scrape(port))
            t0 = time.time()
            wait_for(
                lambda t0=t0: json.loads((state / "snapshot.json").read_text())["written"] > t0,
                30,
                "a new snapshot",
            )
            time.sleep(1.5)  # past snmpd's own answer cache of pass_persist
            direct, extend = snmp_values()
            if expected(scrape(port)) == before and direct == before:
                break
        assert direct == before
        assert before[("deliveries", "bounced")] >= bounced > 0
        # extend lines are cached by snmpd for a minute: they come from a snapshot at most
        # that old; the counters in them never exceed what /metrics shows now.
        counters = {k for k in before if k[0] in ("deliveries", "bounce_reasons")}
        assert all(0 <= extend[k] <= before[k] for k in counters)
        # A walk of the whole subtree through snmpd (getnext all the way) finds every OID of
        # the snapshot, in order, each once, with the snapshot's age first.
        walked = session.walk(".1.3.6.1.4.1.32473.25")
        snap = json.loads((state / "snapshot.json").read_text())
        names = [f"{w.oid}.{w.oid_index}" if w.oid_index else w.oid for w in walked]
        assert names[0] == ".1.3.6.1.4.1.32473.25.1.1.0"
        assert len(names) == len(set(names)) == len(snap["oids"]) + 1
        # The same snapshots feed the agent's RRD archives and the day graphs it serves.
        assert (state / "rrd" / "deliveries.rrd").exists()
        wait_for(lambda: (state / "graphs" / "deliveries-day.png").exists(), 30, "a graph")
        base = f"http://127.0.0.1:{port}"
        landing = urllib.request.urlopen(base + "/", timeout=10).read().decode()
        assert '<img src="/graphs/deliveries-day.png"' in landing
        with urllib.request.urlopen(base + "/graphs/deliveries-day.png", timeout=10) as r:
            assert r.read().startswith(b"\x89PNG")
    finally:
        snmpd.stop()
        agent.stop()
