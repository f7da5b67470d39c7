"""The command line as scripts use it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DSN = """From: MAILER-DAEMON@mx.example.net
To: bounce-{n}@bounces.example.com
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

Your message could not be delivered.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; user{n}@example.org
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 <user{n}@example.org>: Recipient address rejected: User unknown

--B--
"""


def closed_after_one_line(argv: list[str]) -> tuple[int, bytes, bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailpulse", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    return proc.wait(timeout=120), first, err


def test_a_reader_that_goes_away_is_not_an_error(tmp_path: Path) -> None:
    """Bad input: stdout closed after one line (`| head -1`) while output is still coming."""
    bounces = tmp_path / "bounces"
    bounces.mkdir()
    for n in range(3000):
        (bounces / f"{n}.eml").write_text(DSN.format(n=n))
    rc, first, err = closed_after_one_line(["bounce", "parse", "--json", str(bounces)])
    assert (rc, err) == (0, b"")
    assert b'"status": "5.1.1"' in first

    line = (
        "Nov 28 17:33:59 node1 postfix/smtp[123]: 4F1A2B3C4D{n:05X}: to=<user{n}@example.com>,"
        " relay=mx.example.com[192.0.2.1]:25, delay=0.2, delays=0/0/0.1/0.1, dsn=2.0.0,"
        " status=sent (250 2.0.0 Ok: queued as ABC)\n"
    )
    log = tmp_path / "maillog"
    log.write_text("".join(line.format(n=n) for n in range(50_000)))
    rc, first, err = closed_after_one_line(["logs", "parse", "--json", str(log)])
    assert (rc, err) == (0, b"")
    assert b'"status": "sent"' in first


def test_logs_commands_refuse_a_wrong_config_naming_key_and_file(tmp_path: Path) -> None:
    """Bad input: a negative max_messages, and a file that is not YAML at all."""
    log = tmp_path / "maillog"
    log.write_text("")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("logs:\n  max_messages: -1\n")
    garbled = tmp_path / "garbled.yaml"
    garbled.write_text("logs: [unclosed\n")
    for cmd in ("parse", "report"):
        for cfg, key in ((wrong, "max_messages"), (garbled, "")):
            r = subprocess.run(
                [sys.executable, "-m", "mailpulse", "logs", cmd, "--config", str(cfg), str(log)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert r.returncode == 2, (cmd, cfg, r.stderr)
            assert str(cfg) in r.stderr and key in r.stderr
            assert "Traceback" not in r.stderr
