"""The agent on a lab node, scraped by a real Prometheus during campaigns, killed with -9 halfway.

Ground truth is the campaign plan (what the remote MX was told to answer), the domain groups an
operator expects for the lab's domains, and every scrape's counters compared with the last.
"""

from __future__ import annotations

import subprocess
import threading
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from lab.campaign import Planned, run_campaign
from lab.postfix import Lab, free_port
from tests.agent_support import (
    LAB_DOMAIN_GROUPS,
    AgentProcess,
    Prometheus,
    Series,
    scrape,
    wait_for,
    write_agent_config,
)
from tests.conftest import require_programs

COUNTER_SUFFIXES = ("_total", "_bucket", "_count", "_sum")


class MonotonicWatch(threading.Thread):
    """Scrapes the agent as often as it can and remembers every counter that went down."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.last: dict[Series, float] = {}
        self.decreases: list[tuple[Series, float, float]] = []
        self.scrapes = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                samples = scrape(self.port, timeout=2)
            except OSError:  # the agent is down (killed on purpose)
                self.stopped.wait(0.1)
                continue
            self.scrapes += 1
            for series, value in samples.items():
                if not series[0].endswith(COUNTER_SUFFIXES):
                    continue
                before = self.last.get(series)
                if before is not None and value < before:
                    self.decreases.append((series, before, value))
                self.last[series] = value
            self.stopped.wait(0.2)


def expected_totals(plans: list[list[Planned]]) -> Counter[tuple[str, str, str]]:
    want: Counter[tuple[str, str, str]] = Counter()
    for plan in plans:
        for p in plan:
            want[(p.status, p.reason, LAB_DOMAIN_GROUPS[p.domain])] += 1
    return want


def agent_totals(samples: dict[Series, float]) -> Counter[tuple[str, str, str]]:
    got: Counter[tuple[str, str, str]] = Counter()
    for (name, labels), v in samples.items():
        if name == "mailpulse_deliveries_total":
            d = dict(labels)
            got[(d["status"], d["reason"], d["domain_group"])] += int(v)
    return got


def without_dsn_deliveries(c: Counter[tuple[str, str, str]]) -> Counter[tuple[str, str, str]]:
    # The lab delivers each DSN to its own bounce mailbox (domain bounces.lab.test: `other`).
    return Counter({k: v for k, v in c.items() if k[2] != "other"})


@pytest.mark.lab
@pytest.mark.slow
def test_prometheus_sees_the_plan_through_a_kill_9(lab: Lab, tmp_path: Path) -> None:
    require_programs("prometheus", "promtool")
    port = free_port()
    config = write_agent_config(tmp_path / "mailpulse.yaml", [lab], port)
    agent = AgentProcess(config, tmp_path / "state", port, tmp_path / "agent.log").start()
    prom = Prometheus(tmp_path / "prom", [f"127.0.0.1:{port}"])
    watch = MonotonicWatch(port)
    watch.start()
    try:
        first, _ = run_campaign(lab, 200, "first", seed=21)
        want_first = expected_totals([first])
        wait_for(
            lambda: without_dsn_deliveries(agent_totals(scrape(port))) == want_first,
            120,
            "the agent to count the first campaign",
        )

        # The second campaign runs while the agent is killed -9 and started again.
        result: dict[str, list[Planned]] = {}
        campaign = threading.Thread(
            target=lambda: result.update(plan=run_campaign(lab, 200, "second", seed=22)[0])
        )
        campaign.start()
        wait_for(
            lambda: sum(agent_totals(scrape(port)).values()) > sum(want_first.values()) + 40,
            120,
            "the agent to be halfway through the second campaign",
        )
        killed_mid_campaign = campaign.is_alive()
        agent.kill9()
        agent.start()
        campaign.join(600)
        assert "plan" in result, "the second campaign did not finish"
        assert killed_mid_campaign

        want = expected_totals([first, result["plan"]])
        bounced = sum(1 for p in first + result["plan"] if p.status == "bounced")
        wait_for(
            lambda: without_dsn_deliveries(agent_totals(scrape(port))) == want,
            120,
            "the agent to count both campaigns",
        )
        got = agent_totals(scrape(port))
        # The queue as the lab counts its own files, and every source up: one message per
        # recipient, so the deferred queue holds exactly the planned deferrals (a retry moves one
        # to active and back for a moment).
        deferred_files = sum(1 for p in first + result["plan"] if p.status == "deferred")
        wait_for(
            lambda: lab.queue_files("deferred") == deferred_files,
            60,
            f"{deferred_files} messages in the deferred queue",
            lambda: lab.queue_files("deferred"),
        )

        def queue_gauge(samples: dict[Series, float]) -> float:
            return sum(
                v
                for (name, labels), v in samples.items()
                if name == "mailpulse_queue_messages" and ("queue", "deferred") in labels
            )

        wait_for(lambda: queue_gauge(scrape(port)) == deferred_files, 60, "the queue sample")
        # Once every defer log is read, why mail waits is what the remote MX was told to say.
        answered = {"full": "mailboxfull", "grey": "greylisting", "ratelimit": "ratelimit"}
        want_classes = Counter(
            answered[p.kind] for p in first + result["plan"] if p.status == "deferred"
        )

        def deferral_classes(samples: dict[Series, float]) -> Counter[str]:
            out: Counter[str] = Counter()
            for (name, labels), v in samples.items():
                if name == "mailpulse_queue_deferred_recipients" and v:
                    out[dict(labels)["deferral_class"]] += int(v)
            return out

        wait_for(lambda: deferral_classes(scrape(port)) == want_classes, 60, "the deferral classes")
        coverage = [
            v
            for (name, _), v in scrape(port).items()
            if name == "mailpulse_queue_deferral_coverage_ratio"
        ]
        assert coverage == [1.0]
        up = {
            dict(labels)["source"]: v
            for (name, labels), v in scrape(port).items()
            if name == "mailpulse_source_up"
        }
        assert up == {"log": 1.0, "queue": 1.0, "host": 1.0, "profile": 1.0}
        # Everything a busy node exposes, queue matrix included, passes promtool's lint.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        assert "mailpulse_queue_shape_messages{" in text
        assert "mailpulse_message_size_bytes_bucket{" in text
        lint = subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), lint.stderr
        assert got[("sent", "delivered", "other")] == bounced  # one DSN per bounce, not two

        # Prometheus's own view, after a few more scrapes.
        def prometheus_totals() -> Counter[tuple[str, str, str]]:
            rows = prom.query("sum by (status, reason, domain_group) (mailpulse_deliveries_total)")
            out: Counter[tuple[str, str, str]] = Counter()
            for row in rows:
                m = row["metric"]
                assert isinstance(m, dict)
                value = row["value"]
                assert isinstance(value, list)
                out[(m["status"], m["reason"], m["domain_group"])] = int(float(value[1]))
            return out

        wait_for(lambda: without_dsn_deliveries(prometheus_totals()) == want, 60, "Prometheus")
        assert {k for k in want if k[0] == "bounced"} and {k for k in want if k[0] == "deferred"}
        resets = prom.query("sum(resets(mailpulse_deliveries_total[1h]))")
        assert not resets or float(resets[0]["value"][1]) == 0  # type: ignore[index]

        # A clean stop on SIGTERM, and nothing counted again after it.
        assert agent.terminate() == 0
        agent.start()
        assert agent_totals(scrape(port)) == got
    finally:
        watch.stopped.set()
        watch.join(10)
        agent.stop()
        prom.stop()
    assert watch.scrapes >= 3, f"only {watch.scrapes} scrapes: too few to see a counter go down"
    assert not watch.decreases, watch.decreases[:5]
