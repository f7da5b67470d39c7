"""The agent in-process on a plain log file that holds lines any local user can put in the mail
log (`logger -t postfix-x/smtp ...`): what they do to /metrics must stay bounded and sane."""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.agent_support import agent_over_log, parse_exposition, wait_for
from tests.conftest import require_programs

LINE = (
    "Nov 28 10:00:01 mx1 {tag}[42]: 4A2B3C{i:04X}CD: to=<u{i}@gmail.com>, "
    "relay=g[192.0.2.1]:25, delay={delay}, delays={delays}, dsn=2.0.0, status=sent (250 2.0.0 OK)\n"
)


@contextmanager
def agent_on(tmp_path: Path, log: Path) -> Iterator[int]:
    require_programs("postconf")
    with agent_over_log(tmp_path, log) as agent:
        yield agent.http.address[1]


def metrics(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return parse_exposition(r.read().decode())


def lines_read(port: int) -> float:
    return sum(v for (n, _), v in metrics(port).items() if n == "mailpulse_log_lines_total")


def test_a_delay_that_is_no_duration_leaves_the_delay_sums_readable(tmp_path: Path) -> None:
    # Bad input: delivery lines whose delay and delays are "nan", "inf", "-inf" and negative
    # (a garbled or forged line), between two ordinary ones with delays 1 and 2. One such
    # line once made the histogram's sum NaN or infinite for good (it is kept in the state).
    log = tmp_path / "mail.log"
    odd = ["nan", "inf", "-inf", "-5", "1e999"]
    text = LINE.format(tag="postfix/smtp", i=0, delay="1", delays="0.25/0/0/0.75")
    for n, v in enumerate(odd, 1):
        text += LINE.format(tag="postfix/smtp", i=n, delay=v, delays=f"{v}/{v}/0/{v}")
    text += LINE.format(tag="postfix/smtp", i=99, delay="2", delays="0.5/0/0/1.5")
    log.write_text(text)
    with agent_on(tmp_path, log) as port:
        wait_for(lambda: lines_read(port) == len(odd) + 2, 30, "the lines")
        got = metrics(port)
    sums = {
        dict(labels)["stage"]: v
        for (n, labels), v in got.items()
        if n == "mailpulse_delivery_delay_seconds_sum"
    }
    assert all(math.isfinite(v) for v in sums.values()), sums
    # what the two ordinary lines say, stage by stage
    assert sums["total"] == 3.0
    assert sums["before_qmgr"] == 0.75


def test_made_up_instance_names_stay_within_a_label_budget(tmp_path: Path) -> None:
    # Bad input: 400 delivery lines, each tagged with another instance name that starts with
    # "postfix" (`logger -t postfix-$RANDOM/smtp`): each once made a new instance label on
    # every delivery and delay series, about 70 series a line, kept in the state for good.
    log = tmp_path / "mail.log"
    log.write_text(
        "".join(
            LINE.format(tag=f"postfix-{i}/smtp", i=i, delay="1", delays="0.25/0/0/0.75")
            for i in range(400)
        )
    )
    with agent_on(tmp_path, log) as port:
        wait_for(lambda: lines_read(port) == 400, 30, "the lines")
        got = metrics(port)
    deliveries = {
        dict(labels)["instance"]: v
        for (n, labels), v in got.items()
        if n == "mailpulse_deliveries_total"
    }
    assert sum(deliveries.values()) == 400  # every one still counted
    assert len(deliveries) <= 65
    assert len({dict(labels).get("instance") for _, labels in got}) <= 66


def test_scrapes_read_series_whose_labels_hold_line_separators_of_unicode() -> None:
    # Bad input: label values holding "\r", "\x85" and "\u2028" (a garbled instance name is
    # written as it came): Prometheus ends a line at "\n" only, and so must the tests' reader,
    # or such a series is missed and totals come out short.
    text = 'm{instance="a\rb"} 1\nm{instance="c\x85d"} 2\nm{instance="e\u2028f"} 3\n'
    got = parse_exposition(text)
    assert got == {
        ("m", frozenset({("instance", v)})): n
        for v, n in (("a\rb", 1.0), ("c\x85d", 2.0), ("e\u2028f", 3.0))
    }
