"""`mailpulse logs report` on a log whose every count is known from how it was written."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

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


def report(path: Path, *extra: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "mailpulse", "logs", "report", *extra, str(path)],
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
    hour = {
        h: datetime(datetime.now().year, 11, 28, h).strftime("%Y-%m-%d %H:00") for h in (9, 10, 11)
    }
    assert data["hour"] == {
        hour[9]: {"sent": 7, "bounced": 5},
        hour[10]: {"deferred": 4, "bounced": 3},
        hour[11]: {"sent": 6},
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
