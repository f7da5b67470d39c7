"""The queue-file parser and the spool sampler against qshape, on queue files made here.

The files are written by this test's own record writer (type byte, base-128 length, payload);
qshape reads the same directory, so the expected numbers come from qshape, not from mailpulse.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mailpulse.collectors.background import BackgroundQueueSampler
from mailpulse.collectors.deferral import deferral, deferral_of
from mailpulse.collectors.maillog import Correlator, events_from_lines
from mailpulse.collectors.qfile import (
    DeferEntry,
    QueueFileError,
    parse_defer_log,
    parse_queue_bytes,
    qshape_domain,
)
from mailpulse.collectors.queue import QueueSampler, samplers_for_host
from mailpulse.collectors.showq import parse_showq
from mailpulse.collectors.spoolread import Head

from mailpulse.domains import DEFAULT_GROUPS
from mailpulse.postfix import discover_instances
from tests.conftest import require_programs, require_root

EDGES_S = [e * 60 for e in (5, 10, 20, 40, 80, 160, 320, 640, 1280)]
AGES_MIN = (1, 7, 15, 30, 60, 120, 240, 480, 960, 2000)  # one in the middle of each bucket


def rec(rtype: bytes, payload: bytes) -> bytes:
    n = len(payload)
    out = bytearray(rtype)
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out) + payload


def queue_file(
    arrival: int,
    sender: str,
    rcpts: list[str],
    done: tuple[str, ...] = (),
    extracted: tuple[str, ...] = (),
    appended: tuple[str, ...] = (),
    body_lines: int = 3,
    size_field: bytes | None = None,
    time_field: bytes | None = None,
    pointer_field: bytes = b"%15d" % 0,
) -> bytes:
    """A queue file as cleanup writes one; appended recipients sit behind a pointer record.
    The *_field arguments put other text in the C, T and first p records (bad input)."""
    content = b"".join(rec(b"N", b"line %d of the body" % i) for i in range(body_lines))
    content += rec(b"L", b"x" * 300) + rec(b"N", b"y" * 200)  # a long, continued line
    size = b"%15d %15d %15d %15d %15d %15d" % (len(content), 0, len(rcpts), 0, len(content), 0)
    env = rec(b"C", size_field or size) + rec(b"T", time_field or b"%d 123456" % arrival)
    env += rec(b"A", b"create_time=%d" % arrival) + rec(b"S", sender.encode())
    env += rec(b"A", b"log_client_address=127.0.0.1")
    for r in rcpts:
        env += rec(b"O", r.encode()) + rec(b"R", r.encode())
    for r in done:
        env += rec(b"O", r.encode()) + rec(b"D", r.encode())
    pointer_at = len(env)
    env += rec(b"p", pointer_field)  # placeholder, patched below when recipients are appended
    mesg_at = len(env)
    tail = rec(b"M", b"") + content + rec(b"X", b"")
    tail += b"".join(rec(b"R", r.encode()) for r in extracted) + rec(b"E", b"")
    data = env + tail
    if appended:
        extra = b"".join(rec(b"R", r.encode()) for r in appended) + rec(b"p", b"%15d" % mesg_at)
        data = (
            data[:pointer_at]
            + rec(b"p", b"%15d" % len(data))
            + data[pointer_at + len(rec(b"p", b"%15d" % 0)) :]
            + extra
        )
    return data


def put(spool: Path, queue: str, qid: str, data: bytes, mode: int = 0o700) -> Path:
    d = spool / queue / qid[0]
    d.mkdir(parents=True, exist_ok=True)
    p = d / qid
    p.write_bytes(data)
    os.chmod(p, mode)
    return p


def qshape(*args: str) -> dict[str, list[int]]:
    """qshape's table: domain -> [total, bucket 0, ..., bucket 9]."""
    out = subprocess.run(
        ["qshape", "-w", "200", *args], capture_output=True, text=True, check=True
    ).stdout
    rows = {}
    for line in out.splitlines()[1:]:
        parts = line.split()
        rows[parts[0]] = [int(x) for x in parts[1:]]
    return rows


def mailpulse_rows(snap, queue: str, kind: str, column: int) -> dict[str, list[int]]:  # type: ignore[no-untyped-def]
    rows: dict[str, list[int]] = {}
    for (q, k, domain, bucket), counts in snap.domain_shape.items():
        if q == queue and k == kind:
            row = rows.setdefault(domain, [0] * 11)
            row[0] += counts[column]
            row[bucket + 1] += counts[column]
    total = [sum(col) for col in zip(*rows.values(), strict=True)]
    return {"TOTAL": total, **rows}


def depth(snap) -> dict[str, tuple[int, int, int]]:  # type: ignore[no-untyped-def]
    return {q: (s.messages, s.recipients, s.bytes) for q, s in snap.queues.items()}


def make_spool(spool: Path, now: int) -> Counter[str]:
    """A deferred queue of messages of every age; returns what it holds that qshape ignores."""
    domains = ["gmail.com", "Yahoo.COM", "example.org.", "lab.test", "gmx.de"]
    n = 0
    for i, age in enumerate(AGES_MIN):
        for j in range(i + 3):
            n += 1
            rcpts = [f"u{n}-{k}@{domains[(i + j + k) % len(domains)]}" for k in range(1 + j % 3)]
            kw: dict[str, tuple[str, ...]] = {}
            if j % 4 == 1:
                kw["done"] = (f"gone{n}@gmail.com",)
            if j % 5 == 2:
                kw["extracted"] = (f"bcc{n}@archive.lab.test",)
            if j % 6 == 3:
                kw["appended"] = (f"late{n}@gmx.de", f"late{n}@Gmail.com")
            sender = "" if j % 7 == 6 else f"bounce-{n}@bounces.lab.test"
            data = queue_file(now - age * 60 - 7, sender, rcpts, body_lines=j * 40, **kw)
            put(spool, "deferred", f"{n:05X}A1B2C", data)
    ignored: Counter[str] = Counter()
    good = queue_file(now, "s@x.test", ["r@y.test"])
    put(spool, "deferred", "AAAAA0001", good, mode=0o600)  # still being written
    put(spool, "deferred", "AAAAA0002", good[:-5])
    ignored["truncated"] += 1
    put(spool, "deferred", "AAAAA0003", b"\x01\x02 not a queue file at all")
    ignored["garbage"] += 1
    put(spool, "deferred", "AAAAA0004", b"")
    ignored["truncated"] += 1
    put(spool, "deferred", "tmp.1", good)  # not a queue id
    return ignored


def test_recipient_and_sender_shape_equal_qshape(tmp_path: Path) -> None:
    require_programs("qshape")
    spool = tmp_path / "spool"
    now = int(time.time())
    ignored = make_spool(spool, now)
    sampler = QueueSampler(queue_dir=spool, source="spool")
    snap = sampler.sample()
    assert snap.source == "spool" and snap.complete
    assert snap.errors == dict(ignored)  # bad files: counted, skipped

    expected_rcpt = qshape(str(spool / "deferred"))
    assert expected_rcpt["TOTAL"][0] > 100
    assert mailpulse_rows(snap, "deferred", "recipient", 1) == expected_rcpt
    expected_sender = qshape("-s", str(spool / "deferred"))
    # qshape's quirk: a file whose first record is not C, S or F (the garbage and the empty one)
    # makes its qenv() return undef, which -s counts as a null sender in the oldest bucket.
    for row in ("TOTAL", "MAILER-DAEMON"):
        expected_sender[row][0] -= 2
        expected_sender[row][10] -= 2
    assert mailpulse_rows(snap, "deferred", "sender", 0) == expected_sender

    stats = snap.queues["deferred"]
    assert stats.messages == expected_sender["TOTAL"][0]
    assert stats.recipients == expected_rcpt["TOTAL"][0]
    assert stats.oldest_age_s >= 2000 * 60
    # domain groups: the same counts, summed by group
    by_group: Counter[str] = Counter()
    for (q, kind, group, _b), (_m, r) in snap.shape.items():
        if q == "deferred" and kind == "recipient":
            by_group[group] += r
    assert by_group["gmail"] == sum(v[0] for d, v in expected_rcpt.items() if d == "gmail.com")
    assert sum(by_group.values()) == expected_rcpt["TOTAL"][0]


def test_incremental_reads_only_new_and_changed_files(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    now = int(time.time())
    make_spool(spool, now)
    sampler = QueueSampler(queue_dir=spool, source="spool")
    first = sampler.sample()
    read_first = sampler.files_read
    assert read_first > 60
    again = sampler.sample()
    # nothing new: only the file still being written (mode 0600) is looked at again
    assert sampler.files_read == read_first + 1
    assert depth(again) == depth(first) and again.domain_shape == first.domain_shape

    # Postfix delivers two messages, a new one arrives, one moves to hold.
    files = sorted((spool / "deferred").rglob("*A1B2C"))
    files[0].unlink()
    files[1].unlink()
    put(spool, "deferred", "BBBBB0001", queue_file(now, "s@x.test", ["a@new.test", "b@new.test"]))
    held = files[2]
    (spool / "hold").mkdir(exist_ok=True)
    held.rename(spool / "hold" / held.name)
    third = sampler.sample()
    assert sampler.files_read == read_first + 1 + 3  # the new one, the moved one, the 0600 one
    fresh = QueueSampler(queue_dir=spool, source="spool").sample()
    assert depth(third) == depth(fresh)
    assert third.shape == fresh.shape and third.domain_shape == fresh.domain_shape
    assert third.queues["hold"].messages == 1
    assert third.queues["deferred"].messages == first.queues["deferred"].messages - 2


def test_deadline_and_huge_queue_fallback(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    make_spool(spool, int(time.time()))
    files = sum(1 for p in (spool / "deferred").rglob("*") if p.is_file())
    sampler = QueueSampler(queue_dir=spool, source="spool")
    cut = sampler.sample(deadline_s=0.0)
    # past its deadline before the first file: every file named like a queue id (not tmp.1)
    # is left for later, and nothing is counted
    assert not cut.complete and cut.errors == {"deadline_skipped": files - 1}
    assert cut.queues["deferred"].messages == 0
    full = sampler.sample(deadline_s=None)  # carries on where the cut one stopped
    assert full.complete
    assert depth(full) == depth(QueueSampler(queue_dir=spool, source="spool").sample())

    counting = QueueSampler(queue_dir=spool, source="spool", huge_queue=10)
    huge = counting.sample()
    assert not huge.complete and not huge.shape
    # counted from the directory listing alone: every file named like a queue id (not tmp.1)
    assert huge.queues["deferred"].messages == files - 1
    counting.huge_queue = 1000  # the queue shrank below the limit: read in full again
    assert depth(counting.sample()) == depth(full)


def test_bad_queue_files_raise_clear_errors() -> None:
    now = int(time.time())
    good = queue_file(now, "s@x.test", ["r@y.test"], appended=("late@y.test",))
    env = parse_queue_bytes(good)
    assert env.arrival == now and env.sender == "s@x.test"
    assert env.recipients == ("r@y.test", "late@y.test")
    cases = {
        "truncated": [good[:1], good[:40], good[:-1], b""],
        "garbage": [
            b"\x00\x05hello",  # unknown record type
            rec(b"C", b"not a number") + rec(b"E", b""),  # bad size record
            rec(b"T", b"1 0") + rec(b"E", b""),  # no sender
            b"R\xff\xff\xff\xff\xff\x7f",  # a record length beyond any queue file
        ],
    }
    loop = rec(b"S", b"a@b")
    loop += rec(b"p", b"%15d" % len(loop))  # points at itself
    cases["garbage"].append(loop)
    for kind, inputs in cases.items():
        for data in inputs:
            with pytest.raises(QueueFileError) as e:
                parse_queue_bytes(data)
            assert e.value.kind == kind, data


def test_qshape_domain_rules() -> None:
    assert qshape_domain("User@Gmail.COM") == "gmail.com"
    assert qshape_domain("") == "MAILER-DAEMON"
    assert qshape_domain("a@b@example.org.") == "example.org"
    assert qshape_domain("x@.sub..example.com") == "sub.example.com"
    assert qshape_domain("postmaster") == "postmaster"


def test_defer_log_and_deferral_classes() -> None:
    text = (
        "<a@gmail.com>: delivery temporarily suspended: connect to 127.0.0.10[127.0.0.10]:25:"
        " Connection refused\n"
        "recipient=a@gmail.com\noffset=684\nstatus=4.4.1\naction=delayed\n"
        "reason=delivery temporarily suspended: connect to 127.0.0.10[127.0.0.10]:25:"
        " Connection refused\n\n"
        "recipient=b@gmx.de\nstatus=4.2.2\n"
        "reason=host mx[1.2.3.4] said: 452 4.2.2 <b@gmx.de>: Recipient address rejected:"
        " Mailbox full (in reply to RCPT TO command)\n\n"
        "<old@style.test>: host said: 450 greylisted\n\n"
        "garbage line without a recipient\n\n"
    )
    entries = parse_defer_log(text)
    assert [(e.recipient, e.status) for e in entries] == [
        ("a@gmail.com", "4.4.1"),
        ("b@gmx.de", "4.2.2"),
        ("old@style.test", ""),
    ]
    # The remote answers of lab/behaviours.py, as Postfix keeps them in the defer log.
    examples = {
        "connection": (
            "4.4.1",
            "connect to 127.0.0.10[127.0.0.10]:2526: Connection refused",
        ),
        "mailboxfull": (
            "4.2.2",
            "host 127.0.0.10[127.0.0.10] said: 452 4.2.2 <full-u1@gmail.com>: Recipient address"
            " rejected: Mailbox full (in reply to RCPT TO command)",
        ),
        "greylisting": (
            "4.7.1",
            "host 127.0.0.10[127.0.0.10] said: 450 4.7.1 <grey-u1@gmail.com>: Recipient address"
            " rejected: Greylisted, see https://postgrey.schweikert.ch/help/lab.html",
        ),
        "ratelimit": (
            "4.7.0",
            "host 127.0.0.10[127.0.0.10] said: 421 4.7.0 Too many messages from 127.0.0.1,"
            " try again later (in reply to RCPT TO command)",
        ),
        "blocklisted": (
            "4.7.1",
            "host x said: 451 4.7.1 Client host [127.0.0.1] blocked using zen.spamhaus.org",
        ),
        "dns": ("4.4.3", "Host or domain name not found. Name service error for name=x.test"),
        "tls": ("4.7.5", "TLS is required, but was not offered by host mx.example[192.0.2.1]"),
        "other": ("4.3.0", "host x said: 451 4.3.0 Temporary local problem"),
    }
    assert {k: deferral(*v).deferral_class for k, v in examples.items()} == {k: k for k in examples}
    assert (
        deferral(
            "", "conversation with x timed out while receiving the initial server greeting"
        ).deferral_class
        == "connection"
    )
    # One vocabulary: the reason is the Sisimai name the log gives the same reply on a
    # status=deferred line (greylisting is a policy refusal, a rate limit is speeding).
    reasons = {
        "connection": "networkerror",
        "mailboxfull": "mailboxfull",
        "greylisting": "policyviolation",
        "ratelimit": "speeding",
        "blocklisted": "blocked",
        "dns": "hostunknown",
        "tls": "securityerror",
        "other": "onhold",
    }
    assert {k: deferral(*v).reason for k, v in examples.items()} == reasons
    lines = [
        f"Nov 28 17:33:59 mx1 postfix/smtp[9]: {n:05X}ABCD: to=<{k}-u1@gmail.com>,"
        f" relay=mx.example[192.0.2.1]:25, delay=1, delays=0/0/0/1, dsn={status},"
        f" status=deferred ({text})"
        for n, (k, (status, text)) in enumerate(examples.items())
    ]
    by_line = {ev.recipient.split("-")[0]: ev.reason for ev in events_from_lines(lines)}
    by_block = {
        ev.recipient.split("-")[0]: ev.reason
        for ev in Correlator().feed_block("\n".join(lines).encode() + b"\n")
    }
    assert by_line == by_block == reasons
    # As the sampler reads them: the recipient quoted in the reply changes nothing; showq (no
    # status kept) names the same reasons.
    for k, (status, text) in examples.items():
        quoted = text.replace("-u1@", "-u77@")
        assert deferral_of(DeferEntry(f"{k}-u77@gmail.com", status, quoted)) == deferral(
            status, text
        ), k
        assert deferral_of(DeferEntry(f"{k}-u1@gmail.com", "", text)).reason == reasons[k], k
    # bad input: no reason logged at all (a recipient missing from its defer log), or an
    # empty one
    assert deferral_of(None) == deferral("", "") == ("undefined", "other")


def defer_entry(recipient: str, status: str, reason: str) -> str:
    return (
        f"recipient={recipient}\noffset=100\nstatus={status}\naction=delayed\nreason={reason}\n\n"
    )


def test_reasons_are_read_after_the_queue_files_a_budget_per_sample(tmp_path: Path) -> None:
    spool, now = tmp_path / "spool", int(time.time())
    answers = [  # (status, reason Postfix logged, the class it means)
        ("4.4.1", "connect to 127.0.0.10[127.0.0.10]:25: Connection refused", "connection"),
        (
            "4.2.2",
            "host mx said: 452 4.2.2 Mailbox full (in reply to RCPT TO command)",
            "mailboxfull",
        ),
        ("4.7.1", "host mx said: 450 4.7.1 Greylisted, try again later", "greylisting"),
    ]
    domains = ["gmail.com", "yahoo.com", "lab.test"]
    expected: Counter[tuple[str, str]] = Counter()
    for n in range(50):
        qid = f"{n:05X}D1E2F"
        rcpts = [f"u{n}-{k}@{domains[(n + k) % 3]}" for k in range(1 + n % 2)]
        put(spool, "deferred", qid, queue_file(now - 600, "s@bounces.lab.test", rcpts))
        logged = rcpts[:1] if n % 10 == 3 else rcpts  # the second recipient has no reason
        text = ""
        for k, r in enumerate(logged):
            status, reason, klass = answers[(n + k) % 3]
            text += defer_entry(r, status, reason)
        for r in rcpts:
            klass = answers[(n + rcpts.index(r)) % 3][2] if r in logged else "other"
            if n in (7, 17):  # bad input: a defer log missing, one that is garbage
                klass = "other"
            expected[(DEFAULT_GROUPS.group(r.split("@")[1]), klass)] += 1
        if n == 7:
            continue
        if n == 17:
            text = "\x00\x01 not a defer log\n"
        d = spool / "defer" / qid[0]
        d.mkdir(parents=True, exist_ok=True)
        (d / qid).write_text(text)
    recipients = sum(expected.values())

    sampler = QueueSampler(queue_dir=spool, source="spool", defer_logs_per_sample=20)
    first = sampler.sample()  # the queue files only, as qshape reads them
    assert first.queues["deferred"].messages == 50 and first.deferral_coverage == 0.0
    assert {c for _g, c in first.deferral_classes} == {"pending"}
    assert sum(first.deferral_classes.values()) == recipients
    coverages = [first.deferral_coverage]
    for _ in range(3):
        snap = sampler.sample()
        coverages.append(snap.deferral_coverage)
        assert sum(snap.deferral_classes.values()) == recipients
    assert coverages == [0.0, 0.4, 0.8, 1.0]
    assert snap.deferral_classes == dict(expected)
    assert not snap.errors

    # A one-off view (`mailpulse queue`) reads every reason in its first and only pass.
    at_once = QueueSampler(queue_dir=spool, source="spool", reasons_in_first_sample=True).sample()
    assert at_once.deferral_coverage == 1.0
    assert at_once.deferral_classes == dict(expected)
    assert at_once.shape == snap.shape and at_once.queues == snap.queues

    # A retry: the queue file is rewritten (new ctime) with a new defer log; its reasons are
    # pending again until the next reading, then say the new answer.
    qid = f"{0:05X}D1E2F"
    time.sleep(0.01)
    put(spool, "deferred", qid, queue_file(now - 600, "s@bounces.lab.test", ["u0-0@gmail.com"]))
    (spool / "defer" / qid[0] / qid).write_text(defer_entry("u0-0@gmail.com", *answers[1][:2]))
    sampler.revalidate_every = 1  # every known file re-checked by ctime in this sample
    again = sampler.sample()
    assert again.deferral_coverage == 1.0
    expected[("gmail", "connection")] -= 1
    expected[("gmail", "mailboxfull")] += 1
    assert again.deferral_classes == {k: n for k, n in expected.items() if n}

    # A sampler that has seen its queue empty reads the reasons of new mail at once.
    quiet = tmp_path / "quiet"
    (quiet / "deferred").mkdir(parents=True)
    watcher = QueueSampler(queue_dir=quiet, source="spool")
    assert watcher.sample().deferral_coverage == 1.0
    put(quiet, "deferred", qid, queue_file(now - 600, "s@bounces.lab.test", ["u0-0@gmail.com"]))
    (quiet / "defer" / qid[0]).mkdir(parents=True)
    (quiet / "defer" / qid[0] / qid).write_text(defer_entry("u0-0@gmail.com", *answers[2][:2]))
    arrived = watcher.sample()
    assert arrived.deferral_coverage == 1.0
    assert arrived.deferral_classes == {("gmail", "greylisting"): 1}


def showq_stream(*messages: list[tuple[str, str]]) -> bytes:
    out = b"protocol\0mail_queue_list_protocol\0\0"
    for fields in messages:
        out += b"".join(f"{k}\0{v}\0".encode() for k, v in fields) + b"\0"
    return out + b"\0"


def test_showq_stream_good_and_bad() -> None:
    msg = [
        ("queue_name", "deferred"),
        ("queue_id", "ABCDEF123"),
        ("time", "1700000000"),
        ("size", "1234"),
        ("forced_expire", "0"),
        ("sender", "s@x.test"),
        ("recipient", "a@y.test"),
        ("reason", "connect to y: Connection refused"),
        ("recipient", "b@y.test"),
        ("reason", ""),
    ]
    good = showq_stream(msg, msg)
    errors: Counter[str] = Counter()
    parsed = parse_showq(good, errors)
    assert len(parsed) == 2 and not errors
    assert parsed[0].recipients == (
        ("a@y.test", "connect to y: Connection refused"),
        ("b@y.test", ""),
    )
    assert parsed[0].arrival == 1700000000 and parsed[0].size == 1234
    # bad inputs: another protocol, a stream cut mid-message, a message without its time
    assert parse_showq(b"protocol\0other\0\0\0", errors) == [] and errors["showq_protocol"] == 1
    assert len(parse_showq(good[: len(good) // 2 + 40], errors)) == 1
    assert errors["showq_truncated"] == 1
    no_time = [f for f in msg if f[0] != "time"]
    assert parse_showq(showq_stream(no_time, msg), errors)[0].queue_id == "ABCDEF123"
    assert errors["showq_garbage"] == 1
    # bad input: a time no long holds, a 5,000-digit size, a size with a sign in the middle
    for field, value in (("time", "9" * 23), ("size", "9" * 5000), ("size", "12-3")):
        bad = [(k, value if k == field else v) for k, v in msg]
        assert [m.queue_id for m in parse_showq(showq_stream(bad, msg), errors)] == ["ABCDEF123"]
    assert errors["showq_garbage"] == 4
    assert parse_showq(b"", errors) == []


def test_background_sampler_serves_the_last_good_snapshot(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    make_spool(spool, int(time.time()))
    sampler = QueueSampler(queue_dir=spool, source="spool")
    bg = BackgroundQueueSampler(sampler, interval_s=3600)
    assert bg.latest() is None
    first = bg.sample_once()
    assert first is not None and bg.latest() is first
    sampler.source = "showq"  # no showq socket in this spool: sampling fails
    assert bg.sample_once() is None
    assert bg.latest() is first and bg.failures == 1 and "showq" in bg.last_error
    sampler.source = "spool"
    bg.start()
    deadline = time.monotonic() + 60
    while bg.latest() is first and time.monotonic() < deadline:
        time.sleep(0.05)
    bg.stop()
    latest = bg.latest()
    assert latest is not None and latest is not first and depth(latest) == depth(first)


def test_instances_found_from_multi_instance_directories(tmp_path: Path) -> None:
    require_programs("postconf")
    main, bulk = tmp_path / "main", tmp_path / "bulk"
    for d in (main, bulk):
        d.mkdir()
    (main / "main.cf").write_text(
        f"queue_directory = {tmp_path}/q-main\nmulti_instance_directories = {bulk}\n"
    )
    (bulk / "main.cf").write_text(
        f"queue_directory = {tmp_path}/q-bulk\nsyslog_name = postfix-bulk1\n"
    )
    found = discover_instances(main)
    assert [(i.name, i.queue_dir) for i in found] == [
        ("postfix", tmp_path / "q-main"),
        ("postfix-bulk1", tmp_path / "q-bulk"),
    ]
    (tmp_path / "q-bulk" / "deferred").mkdir(parents=True)
    (tmp_path / "q-bulk" / "deferred" / "DDDDD0001").write_bytes(queue_file(1, "a@b", ["c@d"]))
    os.chmod(tmp_path / "q-bulk" / "deferred" / "DDDDD0001", 0o700)
    snaps = [s.sample() for s in samplers_for_host(main, source="spool")]
    assert [(s.instance, s.queues["deferred"].messages) for s in snaps] == [
        ("postfix", 0),
        ("postfix-bulk1", 1),
    ]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailpulse", "queue", *args], capture_output=True, text=True
    )


def test_command_line_table_and_json_equal_qshape(tmp_path: Path) -> None:
    require_programs("qshape", "postconf")
    spool = tmp_path / "spool"
    make_spool(spool, int(time.time()))
    cfg = tmp_path / "etc"
    cfg.mkdir()
    (cfg / "main.cf").write_text(f"queue_directory = {spool}\n")
    expected = qshape(str(spool / "deferred"))

    out = run_cli("-c", str(cfg), "--json")
    assert out.returncode == 0, out.stderr
    snap = json.loads(out.stdout)
    assert snap["source"] == "spool" and snap["instance"] == "postfix"
    rows: dict[str, list[int]] = {}
    for cell in snap["domains"]:
        if cell["queue"] == "deferred" and cell["kind"] == "recipient":
            row = rows.setdefault(cell["domain"], [0] * 11)
            row[0] += cell["recipients"]
            row[cell["bucket"] + 1] += cell["recipients"]
    assert {d: r for d, r in expected.items() if d != "TOTAL"} == rows
    assert snap["queues"]["deferred"]["recipients"] == expected["TOTAL"][0]
    assert snap["errors"] == {"garbage": 1, "truncated": 2}

    table = run_cli("-c", str(cfg))
    assert table.returncode == 0, table.stderr
    printed = {
        parts[0]: [int(x) for x in parts[1:]]
        for parts in (line.split() for line in table.stdout.splitlines())
        if parts and parts[0] in expected
    }
    assert printed == expected
    assert "read from spool" in table.stdout and "skipped: garbage 1, truncated 2" in table.stdout

    # bad input: a config directory that is not there
    missing = run_cli("-c", str(tmp_path / "nowhere"))
    assert missing.returncode == 66  # EX_NOINPUT, as every command's missing input
    assert "cannot read Postfix's configuration" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_command_line_reads_the_config_file(tmp_path: Path) -> None:
    # The instance from postfix.config_dirs and the domain groups from domain_groups, as the
    # agent reads them: lab.test and gmx.de are no provider of the shipped map.
    require_programs("postconf")
    spool = tmp_path / "spool"
    make_spool(spool, int(time.time()))
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "main.cf").write_text(f"queue_directory = {spool}\nsyslog_name = postfix-bulk1\n")
    config = tmp_path / "mailpulse.yml"
    config.write_text(
        f"postfix: {{config_dirs: [{etc}]}}\ndomain_groups: {{lab.test: lab, gmx.de: gmx}}\n"
    )
    out = run_cli("--config", str(config), "--json")
    assert out.returncode == 0, out.stderr
    snap = json.loads(out.stdout)
    assert snap["instance"] == "postfix-bulk1" and snap["source"] == "spool"
    recipients: Counter[str] = Counter()
    for cell in snap["shape"]:
        if cell["queue"] == "deferred" and cell["kind"] == "recipient":
            recipients[cell["group"]] += cell["recipients"]
    by_domain: Counter[str] = Counter()
    for cell in snap["domains"]:
        if cell["queue"] == "deferred" and cell["kind"] == "recipient":
            by_domain[cell["domain"]] += cell["recipients"]
    assert recipients["lab"] == by_domain["lab.test"] > 0
    assert recipients["gmx"] == by_domain["gmx.de"] > 0
    assert {row["group"] for row in snap["deferral_classes"]} == {
        "gmail",
        "yahoo",
        "lab",
        "gmx",
        "other",
    }

    # bad input: a misspelt key, and a config_dirs entry without main.cf: one line each,
    # naming the file and the key, exit 2
    config.write_text("domain_group: {lab.test: lab}\n")
    bad = run_cli("--config", str(config), "--json")
    assert bad.returncode == 2 and bad.stdout == "", bad.stderr
    assert bad.stderr.count("\n") == 1 and f"{config}: domain_group:" in bad.stderr
    config.write_text(f"postfix: {{config_dirs: [{tmp_path}]}}\n")
    bad = run_cli("--config", str(config), "--json")
    assert bad.returncode == 2 and bad.stdout == "", bad.stderr
    assert bad.stderr.count("\n") == 1 and "postfix.config_dirs: no main.cf" in bad.stderr


def test_corrupt_queue_files_are_counted_there(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    (spool / "corrupt").mkdir(parents=True)
    # bad input: what Postfix moved aside - garbage and a truncated file, mode 0400
    for qid, data in (
        ("CCCCC0001", b"\x07garbage"),
        ("CCCCC0002", queue_file(1, "a@b", ["c@d"])[:30]),
    ):
        p = spool / "corrupt" / qid
        p.write_bytes(data)
        os.chmod(p, 0o400)
    snap = QueueSampler(queue_dir=spool, source="spool").sample()
    assert snap.queues["corrupt"].messages == 2 and snap.queues["corrupt"].bytes == 8 + 30
    assert not snap.errors


def test_file_that_vanishes_before_it_is_read(tmp_path: Path) -> None:
    # bad input: a queue file delivered (removed) between the listing and the read, in the
    # same tick of the directory's clock - so the directory looks unchanged
    spool = tmp_path / "spool"
    now = int(time.time())
    for i in range(5):
        put(spool, "deferred", f"EEEEE000{i}", queue_file(now, "s@x.test", [f"r{i}@y.test"]))
    hashed = spool / "deferred" / "E"
    os.utime(hashed, (now - 100, now - 100))
    sampler = QueueSampler(queue_dir=spool, source="spool")
    cut = sampler.sample(deadline_s=0.0)  # listed, nothing read yet
    assert not cut.complete and cut.queues["deferred"].messages == 0
    (hashed / "EEEEE0003").unlink()
    os.utime(hashed, (now - 100, now - 100))
    snap = sampler.sample()
    assert snap.complete and snap.errors == {"vanished": 1}
    assert snap.queues["deferred"].messages == 4 and snap.queues["deferred"].recipients == 4


def test_recipient_delivered_in_place_is_seen_within_one_round_of_turns(tmp_path: Path) -> None:
    # A delivered recipient is rewritten in place (R -> D) by Postfix: the file's ctime moves,
    # its directory does not change. Every file is re-checked once per revalidate_every samples.
    require_programs("qshape")
    spool = tmp_path / "spool"
    now = int(time.time())
    rcpts = [f"u{i}@gmail.com" for i in range(3)] + ["v@gmx.de"]
    for i in range(40):
        put(spool, "deferred", f"CCCCC{i:04d}", queue_file(now - 60 * i, "s@x.test", rcpts))
    sampler = QueueSampler(queue_dir=spool, source="spool", revalidate_every=4)
    before = sampler.sample()
    assert before.queues["deferred"].recipients == 160
    hashed = spool / "deferred" / "C"
    os.utime(hashed, (now - 100, now - 100))  # the directory's mtime as it was
    for i in range(0, 40, 3):
        path = hashed / f"CCCCC{i:04d}"
        data = bytearray(path.read_bytes())
        at = data.index(rec(b"R", b"v@gmx.de"))
        data[at] = ord("D")
        with open(path, "r+b") as f:  # in place, as Postfix marks a recipient done
            f.write(data)
    os.utime(hashed, (now - 100, now - 100))
    for _ in range(4):
        snap = sampler.sample()
    assert mailpulse_rows(snap, "deferred", "recipient", 1) == qshape(str(spool / "deferred"))
    assert snap.queues["deferred"].recipients == 160 - 14


def over_long_numbers(now: int) -> dict[str, bytes]:
    """Queue files with numbers no long holds (bad input): a 23-digit arrival time, pointer and
    content size, and a 5,000-digit content size (past Python's int conversion limit)."""
    return {
        "FFFFF0001": queue_file(now, "s@x.test", ["r@y.test"], time_field=b"9" * 23 + b" 0"),
        "FFFFF0002": queue_file(now, "s@x.test", ["r@y.test"], pointer_field=b"9" * 23),
        "FFFFF0003": queue_file(now, "s@x.test", ["r@y.test"], size_field=b"9" * 23 + b" 0 1"),
        "FFFFF0004": queue_file(now, "s@x.test", ["r@y.test"], size_field=b"9" * 5000),
    }


def six_good_messages(spool: Path, now: int) -> None:
    for i in range(6):
        put(spool, "deferred", f"AAAAA{i:04d}", queue_file(now - 60, "s@x.test", [f"r{i}@y.test"]))


def test_over_long_numbers_are_garbage_and_cost_nothing_else(tmp_path: Path) -> None:
    now = int(time.time())
    for data in over_long_numbers(now).values():
        with pytest.raises(QueueFileError) as e:
            parse_queue_bytes(data)
        assert e.value.kind == "garbage"

    # In a spool beside six good messages, sampled as the agent does: the bad files are counted
    # as garbage, the six are counted, and nothing is lost once the bad files are gone.
    spool = tmp_path / "spool"
    six_good_messages(spool, now)
    for qid, data in over_long_numbers(now).items():
        put(spool, "deferred", qid, data)
    bg = BackgroundQueueSampler(QueueSampler(queue_dir=spool, source="spool"), 3600)
    snap = bg.sample_once()
    assert bg.failures == 0, bg.last_error
    assert snap is not None and snap.complete
    assert snap.errors == {"garbage": 4}
    assert (snap.queues["deferred"].messages, snap.queues["deferred"].recipients) == (6, 6)
    for qid in over_long_numbers(now):
        (spool / "deferred" / "F" / qid).unlink()
    snap = bg.sample_once()
    assert snap is not None and snap.complete and not snap.errors
    assert snap.queues["deferred"].messages == 6


def test_command_line_counts_over_long_numbers(tmp_path: Path) -> None:
    require_programs("postconf")
    now = int(time.time())
    spool = tmp_path / "spool"
    six_good_messages(spool, now)
    for qid, data in over_long_numbers(now).items():
        put(spool, "deferred", qid, data)
    cfg = tmp_path / "etc"
    cfg.mkdir()
    (cfg / "main.cf").write_text(f"queue_directory = {spool}\n")
    out = run_cli("-c", str(cfg), "--json")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    snap = json.loads(out.stdout)
    assert snap["errors"] == {"garbage": 4}
    assert snap["queues"]["deferred"]["messages"] == 6


def test_a_sample_that_fails_leaves_no_file_unread(tmp_path: Path) -> None:
    # Whatever stops a sample half way (here a failure the reader did not foresee, on the
    # third file), the files it listed but did not read are read by the next sample.
    spool = tmp_path / "spool"
    six_good_messages(spool, int(time.time()))

    class FailsOnce(QueueSampler):
        calls = 0

        def _take_file(
            self, qid: str, queue: str, directory: str, head: Head, errors: Counter[str]
        ) -> None:
            self.calls += 1
            if self.calls == 3:
                raise MemoryError("the third file")
            super()._take_file(qid, queue, directory, head, errors)

    sampler = FailsOnce(queue_dir=spool, source="spool")
    with pytest.raises(MemoryError):
        sampler.sample()
    snap = sampler.sample()
    assert snap.complete and not snap.errors
    assert snap.queues["deferred"].messages == 6


def test_fifos_symlinks_and_directories_named_like_queue_ids(tmp_path: Path) -> None:
    # bad input: a FIFO (an open without O_NONBLOCK waits for a writer for ever), a symlink to
    # a good queue file and a directory, each named like a queue id; and a FIFO in place of a
    # deferred message's defer log. Each is counted in every sample and never read.
    require_programs("postconf")
    now = int(time.time())
    spool = tmp_path / "spool"
    six_good_messages(spool, now)
    hashed = spool / "deferred" / "B"
    hashed.mkdir()
    os.mkfifo(hashed / "BBBBB0001")
    os.symlink(spool / "deferred" / "A" / "AAAAA0000", hashed / "BBBBB0002")
    (hashed / "BBBBB0003").mkdir()
    (spool / "defer" / "A").mkdir(parents=True)
    os.mkfifo(spool / "defer" / "A" / "AAAAA0001")
    cfg = tmp_path / "etc"
    cfg.mkdir()
    (cfg / "main.cf").write_text(f"queue_directory = {spool}\n")
    try:
        out = subprocess.run(
            [sys.executable, "-m", "mailpulse", "queue", "-c", str(cfg), "--json"],
            capture_output=True,
            text=True,
            timeout=120,  # only a hang comes near it
        )
    except subprocess.TimeoutExpired:
        pytest.fail("mailpulse queue hung on a FIFO in the spool")
    assert out.returncode == 0, out.stderr
    snap = json.loads(out.stdout)
    assert snap["errors"] == {"not_a_file": 3}
    assert snap["queues"]["deferred"]["messages"] == 6
    assert snap["deferral_coverage"] == 1.0
    # no reason logged (the defer log a FIFO, the others missing): the reason is undefined
    assert snap["deferral_classes"] == [
        {"group": "other", "reason": "undefined", "class": "other", "recipients": 6}
    ]

    sampler = QueueSampler(queue_dir=spool, source="spool")
    assert [sampler.sample().errors for _ in range(3)] == [{"not_a_file": 3}] * 3


def sample_as(user_id: int, spool: Path, unlock: Path) -> list[dict[str, object]]:
    """In a child process running as user_id: three samples, then unlock made readable (the
    child owns it), then one more sample; the errors and deferred depth of each."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(user_id)
            os.setuid(user_id)
            sampler = QueueSampler(queue_dir=spool, source="spool")
            out = []
            for n in range(4):
                if n == 3:
                    os.chmod(unlock, 0o700)
                snap = sampler.sample()
                out.append({"errors": snap.errors, "messages": snap.queues["deferred"].messages})
            os.write(write, json.dumps(out).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(data)  # type: ignore[no-any-return]


def test_unreadable_files_are_errors_in_every_sample_while_there() -> None:
    # bad input: a queue file its reader may not open (mode 0000). Root reads everything, so
    # the sampler runs as nobody (the file's owner, who may make it readable) in a child.
    require_root("to sample as another user")
    import pwd
    import shutil
    import tempfile

    nobody = pwd.getpwnam("nobody")
    root = Path(tempfile.mkdtemp(prefix="mailpulse-unreadable-"))
    try:
        os.chmod(root, 0o755)
        spool = root / "spool"
        six_good_messages(spool, int(time.time()))
        for p in [spool, *spool.rglob("*")]:
            os.chmod(p, 0o755)  # the owner's execute bit: complete queue files
        locked = put(spool, "deferred", "AAAAA0100", queue_file(1, "s@x.test", ["r@y.test"]), 0)
        os.chown(locked, nobody.pw_uid, nobody.pw_gid)
        unreadable = {"errors": {"unreadable": 1}, "messages": 6}
        assert sample_as(nobody.pw_uid, spool, locked) == [unreadable] * 3 + [
            {"errors": {}, "messages": 7}  # readable now: a message, no longer an error
        ]
    finally:
        shutil.rmtree(root)
