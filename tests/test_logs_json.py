"""`mailpulse logs parse --json`: each line is what json.dumps writes of the event, byte for byte,
whatever the strings hold."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from mailpulse.collectors.maillog import Correlator

from mailpulse import report
from mailpulse.events import DeliveryEvent

ORDINARY = DeliveryEvent(
    1764633555.0, "mx1", "postfix", "smtp", "3F2A1B4C5D", "u1@example.org", "example.org",
    "mx.example.org[192.0.2.9]:25", "bounced", "5.1.1", "550",
    "host mx.example.org[192.0.2.9] said: 550 5.1.1 <u1@example.org>: no such user",
    "userunknown", "recipient", True, 1.25, (0.01, 0.2, 0.04, 1.0), "", "bounce-7@b.example", 558,
)  # fmt: skip

# Strings json.dumps escapes, each in every string field in turn.
TRICKY = [
    'say "no"',
    "back\\slash",
    "tab\there",
    "nul\x00",
    "bell\x07 and del\x7f",
    "caf\u00e9 \u2603",
    "bytes \ufffd\ufffd that were not UTF-8",
    "lone surrogate \udcff",
    "\\u0022 looks escaped",
    "",
]
STRING_FIELDS = [
    "node", "instance", "program", "queue_id", "recipient", "domain", "relay", "status", "dsn",
    "reply_code", "reply_text", "reason", "scope", "orig_recipient", "sender",
]  # fmt: skip


def expected(ev: DeliveryEvent) -> bytes:
    """The general writer: the event's dict through json.dumps."""
    return (json.dumps(report.event_json(ev)) + "\n").encode("ascii")


def test_an_ordinary_event_is_written_without_json_dumps(monkeypatch: pytest.MonkeyPatch) -> None:
    want = expected(ORDINARY)

    class NoDumps:
        @staticmethod
        def dumps(_obj: object) -> str:
            raise AssertionError("json.dumps called for an ordinary event")

    monkeypatch.setattr(report, "json", NoDumps)
    got = report.event_json_line(ORDINARY)
    assert got == want
    assert json.loads(got)["reply_text"] == ORDINARY.reply_text


@pytest.mark.parametrize("field", STRING_FIELDS)
@pytest.mark.parametrize("text", TRICKY)
def test_tricky_strings_are_written_as_json_dumps_writes_them(field: str, text: str) -> None:
    ev = replace(ORDINARY, **{field: text})  # type: ignore[arg-type]
    got = report.event_json_line(ev)
    assert got == expected(ev)
    assert got.endswith(b"\n") and got.count(b"\n") == 1
    assert json.loads(got)[field] == text


@pytest.mark.parametrize(
    "changes",
    [
        {"delays": None},
        {"size": None},
        {"hard": False},
        {"time": 0.0, "delay": 0.0},
        {"delay": float("inf")},
        {"delay": float("nan")},
        {"delays": (0.0, float("-inf"), 1e-7, 12345678.9)},
        {"time": 1764633555.123456},
        {"extra": {"logged_dsn": "5.0.0"}},
        {"extra": {"last_reason": 'a "quoted"\treason'}},
    ],
)
def test_numbers_absent_values_and_extra_are_written_as_json_dumps_writes_them(
    changes: dict[str, object],
) -> None:
    ev = replace(ORDINARY, **changes)  # type: ignore[arg-type]
    assert report.event_json_line(ev) == expected(ev)


def delivery_line(qid: str, rcpt: bytes, reply: bytes, status: str = "bounced") -> bytes:
    return (
        b"Nov 28 09:15:00 mx1 postfix/smtp[9]: " + qid.encode() + b": to=<" + rcpt + b">, "
        b"relay=mx.example.org[192.0.2.9]:25, delay=1, delays=0/0/0/1, dsn=5.1.1, "
        b"status=" + status.encode() + b" (" + reply + b")"
    )


def test_the_command_writes_each_event_as_the_general_road_gives_it(tmp_path: Path) -> None:
    replies = [
        b"host mx said: 550 5.1.1 user unknown (in reply to RCPT TO command)",
        b'host mx said: 550 5.1.1 "quoted" \\ back\\slash',
        b"host mx said: 550 5.1.1 tab\there",
        b"host mx said: 550 5.1.1 caf\xc3\xa9 and raw \xff\xfe bytes",
        b"host mx said: 550 5.1.1 control \x01\x1b[31m",
        b"host mx said: 550 5.1.1 nul \x00 inside",
    ]
    lines = [
        delivery_line(f"B{n:05X}", b"u%d@example.org" % n, reply) for n, reply in enumerate(replies)
    ]
    lines.append(delivery_line("C00001", b'we"ird\\@example.org', b"250 2.0.0 Ok", "sent"))
    log = tmp_path / "maillog"
    log.write_bytes(b"\n".join(lines) + b"\n")

    general = Correlator()
    events = [ev for line in lines for ev in general.feed_line(line)]
    assert len(events) == len(lines)
    out = subprocess.run(
        [sys.executable, "-m", "mailpulse", "logs", "parse", "--json", str(log)],
        capture_output=True,
        check=True,
    ).stdout
    got = out.splitlines(keepends=True)
    assert len(got) == len(events)
    for line, ev in zip(got, events, strict=True):
        assert line == expected(ev)
        assert json.loads(line) == json.loads(json.dumps(report.event_json(ev)))
    texts = [json.loads(line)["reply_text"] for line in got]
    assert '"quoted" \\ back\\slash' in texts[1]
    assert "\ufffd" in texts[3] and "caf\u00e9" in texts[3]
