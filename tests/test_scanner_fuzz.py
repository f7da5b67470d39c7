"""The block scanner's reading of recurring values: each field keeps its own type."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_logs_parse_keeps_a_delay_a_number_and_a_reply_code_a_str(tmp_path: Path) -> None:
    # Bad input: none, an ordinary log where Postfix writes a delay of 250 s as "delay=250"
    # and replies begin "250": the scanner once gave the delay as the str "250" (and, the
    # other way round, a reply code 550 as 550.0).
    line = (
        "Nov 28 10:00:0{0} mx1 postfix/smtp[42]: 4A2B3C0{0}ABCD: to=<u{0}@gmail.com>, "
        "relay=g[192.0.2.1]:25, delay={1}, delays=0.1/0/0/1, dsn={2}, status={3} ({4})\n"
    )
    log = tmp_path / "mail.log"
    log.write_text(
        line.format(1, "1.1", "2.0.0", "sent", "250 2.0.0 OK")
        + line.format(2, "1.2", "2.0.0", "sent", "250 2.0.0 OK")
        + line.format(3, "250", "2.0.0", "sent", "250 2.0.0 OK")
        + line.format(4, "550", "4.2.2", "deferred", "452 4.2.2 full")
        + line.format(5, "1", "5.1.1", "bounced", "550 5.1.1 unknown")
        + line.format(6, "2", "1.1", "sent", "250 ok")  # a dsn equal to a delay: it crashed
    )
    r = subprocess.run(
        [sys.executable, "-m", "mailpulse", "logs", "parse", "--json", "--state-dir",
         str(tmp_path), str(log)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    events = list(map(json.loads, r.stdout.splitlines()))
    got = [(e["delay"], e["reply_code"], e["dsn"]) for e in events]
    assert got == [
        (1.1, "250", "2.0.0"),
        (1.2, "250", "2.0.0"),
        (250.0, "250", "2.0.0"),
        (550.0, "452", "4.2.2"),
        (1.0, "550", "5.1.1"),
        (2.0, "250", "1.1"),
    ]
    assert [type(d) for d, _, _ in got] == [float] * 6
