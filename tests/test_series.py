"""One reading for every output: what `Series.read()` gives, taken in the agent's own process,
is what /metrics shows, series for series and value for value, on a lab node after a campaign
(log, queue and host all feeding). The SNMP snapshot and the RRD writer will read the same call,
so this is the contract that keeps them equal to Prometheus."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lab.campaign import run_campaign
from lab.postfix import Lab, free_port
from mailpulse import catalogue
from mailpulse.agent import Agent
from mailpulse.config import instances_to_watch, parse_config
from mailpulse.state import Histogram
from tests.agent_support import Series, scrape, wait_for

COMMON = {"node": "lab1", "role": "transactional"}


def as_exposition(reading: dict) -> dict[Series, float]:  # type: ignore[type-arg]
    """The reader's values under the names and labels a scrape has, written out here from the
    exposition format's rules (a histogram: cumulative _bucket per le, _sum, _count)."""
    out: dict[Series, float] = {}
    for (name, values), value in reading.items():
        m = catalogue.BY_NAME[name]
        labels = {**COMMON, **dict(zip(m.labels, values, strict=True))}
        if not isinstance(value, Histogram):
            out[(name, frozenset(labels.items()))] = float(value)
            continue
        running = 0
        for bound, count in zip([*m.buckets, float("inf")], value.counts, strict=True):
            running += count
            le = "+Inf" if bound == float("inf") else str(float(bound))
            out[(f"{name}_bucket", frozenset({**labels, "le": le}.items()))] = running
        out[(f"{name}_sum", frozenset(labels.items()))] = value.sum
        out[(f"{name}_count", frozenset(labels.items()))] = running
    return out


def normal_le(samples: dict[Series, float]) -> dict[Series, float]:
    """prometheus-client writes le as Go does ("1.0", "+Inf"); one spelling for comparing."""
    out = {}
    for (name, labels), v in samples.items():
        d = dict(labels)
        if "le" in d and d["le"] != "+Inf":
            d["le"] = str(float(d["le"]))
        out[(name, frozenset(d.items()))] = v
    return out


@pytest.mark.lab
def test_the_series_reader_and_metrics_agree_on_every_series(lab: Lab, tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "node": COMMON["node"],
            "role": COMMON["role"],
            "listen": f"127.0.0.1:{free_port()}",
            "state_dir": str(tmp_path / "state"),
            "postfix": {"config_dirs": [str(lab.etc)]},
            "logs": {"poll_interval": 0.1},
            # One sample each, taken at start: the gauges hold still while they are compared.
            "queue": {"interval": 3600},
            "host": {"interval": 3600},
        }
    )
    instances = instances_to_watch(cfg)
    plan, _ = run_campaign(lab, 40, "series", seed=5)
    agent = Agent(cfg, instances, [lab.maillog])
    agent.start()
    try:
        port = agent.http.address[1]

        def delivered() -> float:
            return sum(
                v
                for (name, _), v in agent.series.read().items()
                if name == "mailpulse_deliveries_total" and isinstance(v, float)
            )

        # Ground truth from outside: every planned recipient ends as one counted delivery.
        wait_for(lambda: delivered() >= len(plan), 120, "the campaign counted")
        for first, what in (
            ("mailpulse_queue_messages", "the first queue sample"),
            ("mailpulse_host_load_average", "the first host sample"),
            ("mailpulse_postfix_profile_drift", "the first profile check"),
        ):
            wait_for(lambda first=first: any(k[0] == first for k in agent.series.read()), 60, what)
        now = time.time()
        agent.series.clock = lambda: now  # ages are computed at read time: one instant for both
        # A line logged in between (a retry, a DSN) may move a counter: take the scrape between
        # two equal readings.
        for _ in range(50):
            before = agent.series.read()
            scraped = normal_le(scrape(port))
            if agent.series.read() == before:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the agent's series never held still for one scrape")
    finally:
        agent.stop()

    expected = as_exposition(before)
    assert scraped == expected
    # Every source fed the one reading: log deliveries and their histograms, the queue, the
    # host and its Postfix processes, the sources' own state.
    names = {name for name, _ in before}
    for name in (
        "mailpulse_deliveries_total",
        "mailpulse_delivery_delay_seconds",
        "mailpulse_log_lines_total",
        "mailpulse_queue_messages",
        "mailpulse_queue_sample_complete",
        "mailpulse_host_load_average",
        "mailpulse_postfix_processes",
        "mailpulse_spool_filesystem_bytes",
        "mailpulse_source_up",
        "mailpulse_agent_info",
    ):
        assert name in names, name
    ups = {labels: v for (name, labels), v in before.items() if name == "mailpulse_source_up"}
    assert ups == {
        ("host", ""): 1.0,
        ("log", str(lab.maillog)): 1.0,
        ("queue", "postfix"): 1.0,
        ("profile", "transactional"): 1.0,
    }
    # The lab is no transactional node (no bounce pipe, its own lifetimes): drift shows.
    assert before[("mailpulse_postfix_profile_drift", ("postfix", "transactional"))] > 0


def test_a_failing_source_leaves_the_others_in_the_reading(tmp_path: Path) -> None:
    from mailpulse.series import Series as Reader
    from mailpulse.series import SourceStatus
    from mailpulse.state import State

    state = State(tmp_path / "state.sqlite")
    state.inc("mailpulse_log_lines_total", (), 7)
    state.commit()

    class Log:
        target = "/var/log/mail.log"
        status = SourceStatus(True, 100.0, 0.5)
        errors = {"unreadable": 2}

    def queues() -> dict:  # type: ignore[type-arg]
        raise PermissionError("spool")  # bad input: the queue source fails at read time

    reading = Reader(state, queues=queues, logs=[Log()], clock=lambda: 160.0).read()
    state.close()
    assert reading[("mailpulse_log_lines_total", ())] == 7
    assert reading[("mailpulse_log_read_errors_total", ("/var/log/mail.log", "unreadable"))] == 2
    assert reading[("mailpulse_source_up", ("log", "/var/log/mail.log"))] == 1.0
    assert reading[("mailpulse_source_sample_age_seconds", ("log", "/var/log/mail.log"))] == 60
    assert not any(name.startswith("mailpulse_queue") for name, _ in reading)
