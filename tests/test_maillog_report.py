"""`mailpulse logs report` on a log whose every count is known from how it was written."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mailpulse.collectors.maillog import Correlator

from mailpulse.report import Report

# (node, hour, domain, status, dsn, reply) -> how many such recipients are written
CASES = [
    ("mx1", 9, "gmail.com", "sent", "2.0.0", "250 2.0.0 OK"),
    ("mx1", 9, "gmail.com", "bounced", "5.1.1", "550 5.1.1 <{rcpt}>: user unknown"),
    ("mx2", 10, "yahoo.com", "deferred", "4.7.0", "421 4.7.0 Too many messages, try again later"),
    ("mx2", 10, "example.org", "bounced", "5.7.1", "554 5.7.1 blocked using zen.spamhaus.org"),
    ("mx2", 11, "outlook.com", "sent", "2.0.0", "250 2.6.0 <{rcpt}> Queued mail for delivery"),
]
COUNTS = [7, 5, 4, 3, 6]


def write_log(path: Path) -> None:
    lines = []
    n = 0
    for (node, hour, domain, status, dsn, reply), count in zip(CASES, COUNTS, strict=True):
        for _ in range(count):
            n += 1
            qid, rcpt = f"{0xB0000 + n:X}", f"user{n}@{domain}"
            text = reply.format(rcpt=rcpt)
            if status != "sent":
                text = f"host mx.{domain}[192.0.2.9] said: {text} (in reply to RCPT TO command)"
            lines.append(
                f"Nov 28 {hour:02d}:15:00 {node} postfix/smtp[9]: {qid}: to=<{rcpt}>, "
                f"relay=mx.{domain}[192.0.2.9]:25, delay=1, delays=0/0/0/1, dsn={dsn}, "
                f"status={status} ({text})"
            )
    lines.append(
        "Nov 28 11:16:00 mx2 postfix/smtpd[5]: NOQUEUE: reject: RCPT from x[192.0.2.1]: "
        "554 5.7.1 <a@b>: Relay access denied; from=<s@x> to=<a@b> proto=ESMTP helo=<x>"
    )
    lines.append("Nov 28 11:16:00 mx2 postfix/smtp[9]: warning: something odd")
    path.write_text("\n".join(lines) + "\n")


# The command with its clock pinned: a classic stamp ("Nov 28 09:15:00") has no year, and the
# one the parser gives it depends on when it reads the line, so the test says when that is.
PINNED_CLOCK = """
import runpy, sys, time
now = float(sys.argv.pop(1))
time.time = lambda: now
sys.argv[0] = "mailpulse"
runpy.run_module("mailpulse", run_name="__main__")
"""
JUNE = (2030, 6, 15, 12)  # Nov 28 would lie five months ahead: the parser takes the year before


def local(y: int, mo: int, d: int, h: int) -> float:
    return time.mktime((y, mo, d, h, 0, 0, 0, 0, -1))


def report(path: Path, *extra: str, clock: tuple[int, int, int, int] = JUNE) -> str:
    argv = [sys.executable, "-c", PINNED_CLOCK, str(local(*clock))]
    return subprocess.run(
        [*argv, "logs", "report", *extra, str(path)],
        capture_output=True,
        check=True,
        text=True,
    ).stdout


def test_report_counts_per_status_reason_group_node_hour_and_top_replies(tmp_path: Path) -> None:
    log = tmp_path / "maillog"
    write_log(log)
    data = json.loads(report(log, "--json"))
    want_status: Counter[str] = Counter()
    for case, count in zip(CASES, COUNTS, strict=True):
        want_status[case[3]] += count
    assert data["status"] == {"sent": 13, "deferred": 4, "bounced": 8, "expired": 0}
    assert data["status"] == {**{"expired": 0}, **want_status}
    assert data["reason"] == {
        "userunknown": {"bounced": 5},
        "speeding": {"deferred": 4},
        "blocked": {"bounced": 3},
    }
    assert data["dsn_class"] == {
        "2.x.x": {"sent": 13},
        "4.x.x": {"deferred": 4},
        "5.x.x": {"bounced": 8},
    }
    assert data["group"] == {
        "gmail": {"sent": 7, "bounced": 5},
        "yahoo": {"deferred": 4},
        "other": {"bounced": 3},
        "microsoft": {"sent": 6},
    }
    assert data["node"] == {
        "mx1": {"sent": 7, "bounced": 5},
        "mx2": {"deferred": 4, "bounced": 3, "sent": 6},
    }
    assert data["hour"] == {
        "2029-11-28 09:00": {"sent": 7, "bounced": 5},
        "2029-11-28 10:00": {"deferred": 4, "bounced": 3},
        "2029-11-28 11:00": {"sent": 6},
    }
    # Equal replies to different recipients are one line of the top list.
    assert data["top_replies"]["bounced"] == [
        {"reply": "550 5.1.1 <...>: user unknown", "count": 5},
        {"reply": "554 5.7.1 blocked using zen.spamhaus.org", "count": 3},
    ]
    assert data["top_replies"]["deferred"] == [
        {"reply": "421 4.7.0 Too many messages, try again later", "count": 4}
    ]
    assert data["rejects"] == {"reject": 1} and data["warnings"]["warning"] == 1
    text = report(log)
    for heading in (
        "Grand totals",
        "Per reason",
        "Per domain group",
        "Per node",
        "Per hour",
        "Top deferred replies",
        "Top bounced replies",
    ):
        assert heading in text
    assert "550 5.1.1 <...>: user unknown" in text


# The documented rule: the reader's year, or the year before when the date would lie more than
# two days ahead of the reader's clock.
@pytest.mark.parametrize(
    ("clock", "year"),
    [
        ((2030, 6, 15, 12), 2029),  # mid-year: Nov 28 is last year's
        ((2030, 11, 26, 8), 2029),  # Nov 28 09:00 is just over two days ahead
        ((2030, 11, 27, 12), 2030),  # within two days ahead: a clock a little behind the log's
        ((2030, 12, 31, 23), 2030),
        ((2031, 1, 2, 12), 2030),  # last year's lines read in January
    ],
)
def test_report_gives_a_yearless_stamp_the_year_the_reading_clock_implies(
    tmp_path: Path, clock: tuple[int, int, int, int], year: int
) -> None:
    log = tmp_path / "maillog"
    write_log(log)
    data = json.loads(report(log, "--json", clock=clock))
    assert sorted(data["hour"]) == [f"{year}-11-28 {h:02d}:00" for h in (9, 10, 11)]
    assert time.localtime(data["first"])[:4] == (year, 11, 28, 9)


def test_counts_spread_over_the_tables_part_way_are_the_same_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A long log: the report's cells are spread over its tables whenever they hold enough of
    # them, here after every one; the tables come out as if counted at once.
    log = tmp_path / "maillog"
    write_log(log)
    lines = log.read_bytes().splitlines()
    # every event in a second of its own, so that each one starts a new cell
    events = [ev for line in lines for ev in Correlator().feed_line(line)]
    for n, ev in enumerate(events):
        ev.time += n
    at_once, part_way = Report(), Report()
    at_once.add_all(events)
    monkeypatch.setattr("mailpulse.report._CELLS_KEPT", 1)
    for ev in events:
        part_way.add(ev)
    assert len(part_way.cells) <= 2
    assert part_way.to_json(Correlator()) == at_once.to_json(Correlator())
    assert sum(at_once.to_json(Correlator())["status"].values()) == sum(COUNTS)
