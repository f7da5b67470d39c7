"""The queue collector on the lab's real Postfix, against qshape, postqueue -j and the plan."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from mailpulse.collectors.deferral import deferral_of
from mailpulse.collectors.maillog import events_from_lines
from mailpulse.collectors.qfile import parse_defer_log
from mailpulse.collectors.queue import QueueSampler

from lab.campaign import run_campaign
from lab.postfix import Lab
from mailpulse.domains import DEFAULT_GROUPS
from mailpulse.events import QueueSnapshot
from tests.conftest import require_programs
from tests.test_queue_files import AGES_MIN, mailpulse_rows

# What the remote MX was told to answer (lab/behaviours.py), as the deferral class it means.
KIND_CLASS = {"full": "mailboxfull", "grey": "greylisting", "ratelimit": "ratelimit"}


def backdate(path: Path, arrival: int) -> None:
    """Rewrite a queue file's arrival time (its T record, right after the C record) in place,
    keeping its length and its mtime (qmgr's next retry time), so the queue holds every age."""
    data = path.read_bytes()
    c_len = data[1]
    assert data[0:1] == b"C" and c_len < 0x80, path
    t_at = 2 + c_len
    assert data[t_at : t_at + 1] == b"T", path
    t_len = data[t_at + 1]
    old = data[t_at + 2 : t_at + 2 + t_len]
    seconds, rest = old.split(b" ", 1)
    new = b"%d %s" % (arrival, rest)
    assert len(new) == len(old) and len(str(arrival)) == len(seconds)
    st = path.stat()
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, new, t_at + 2)
    finally:
        os.close(fd)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def qshape(lab: Lab, *args: str) -> dict[str, list[int]]:
    out = subprocess.run(
        ["qshape", "-c", str(lab.etc), "-w", "200", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {p[0]: [int(x) for x in p[1:]] for p in (line.split() for line in out.splitlines()[1:])}


def postqueue_json(lab: Lab) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in lab.postqueue("-j").stdout.splitlines() if line]


def stable_sample(lab: Lab, sampler: QueueSampler, *qshape_args: str) -> tuple[QueueSnapshot, ...]:
    """qshape, mailpulse, qshape again, until both qshape runs agree: the queue held still."""
    for _ in range(10):
        before = [qshape(lab, *a.split()) for a in qshape_args]
        snap = sampler.sample()
        after = [qshape(lab, *a.split()) for a in qshape_args]
        if before == after:
            return (snap, *before)  # type: ignore[return-value]
        time.sleep(1)
    raise AssertionError("the queue never held still for qshape")


def sample_until_covered(sampler: QueueSampler) -> list[QueueSnapshot]:
    """Samples until every deferred message's reasons are read (a first sample reads none)."""
    snaps = [sampler.sample()]
    while snaps[-1].deferral_coverage < 1.0:
        assert len(snaps) < 50, [s.deferral_coverage for s in snaps]
        snaps.append(sampler.sample())
    return snaps


@pytest.mark.lab
@pytest.mark.slow
def test_deferred_queue_equals_qshape_postqueue_and_plan(lab: Lab) -> None:
    require_programs("qshape", "postqueue")
    lab.mx_down()
    plan, _ = run_campaign(lab, 3000, "down", seed=21, connections=8)
    now = int(time.time())
    files = sorted(p for p in (lab.spool / "deferred").rglob("*") if p.is_file())
    assert len(files) == 3000
    for k, f in enumerate(files):
        backdate(f, now - AGES_MIN[k % len(AGES_MIN)] * 60 - 7)

    sampler = QueueSampler(lab.etc, instance=lab.instance)
    snap, rcpt_rows, sender_rows = stable_sample(lab, sampler, "deferred", "-s deferred")
    assert snap.source == "spool" and snap.complete and not snap.errors
    assert mailpulse_rows(snap, "deferred", "recipient", 1) == rcpt_rows
    assert mailpulse_rows(snap, "deferred", "sender", 0) == sender_rows
    # one recipient a message, the k-th file backdated to the middle of bucket k % 10
    assert rcpt_rows["TOTAL"] == [3000] + [300] * len(AGES_MIN)

    listed = postqueue_json(lab)
    for q in ("maildrop", "incoming", "active", "deferred", "hold"):
        mine = snap.queues[q]
        theirs = [m for m in listed if m["queue_name"] == q]
        assert mine.messages == len(theirs), q
        assert mine.recipients == sum(len(m["recipients"]) for m in theirs), q
        assert mine.bytes == sum(m["message_size"] for m in theirs), q
    oldest = now - min(m["arrival_time"] for m in listed)
    assert abs(snap.queues["deferred"].oldest_age_s - oldest) <= 5

    # Nothing got through: every recipient waits because the connection was refused. The
    # first sample read queue files only; the next ones read the reasons.
    expected = Counter((DEFAULT_GROUPS.group(p.domain), "connection") for p in plan)
    assert snap.deferral_coverage == 0.0
    assert snap.deferral_classes == {(g, "pending"): n for (g, _c), n in expected.items()}
    snap = sample_until_covered(sampler)[-1]
    assert snap.deferral_classes == dict(expected)

    # The showq service (what postqueue -j reads) tells the same story.
    via_showq = QueueSampler(lab.etc, instance=lab.instance, source="showq").sample()
    assert via_showq.source == "showq"
    assert {q: (s.messages, s.recipients, s.bytes) for q, s in via_showq.queues.items()} == {
        q: (s.messages, s.recipients, s.bytes) for q, s in snap.queues.items()
    }
    assert via_showq.domain_shape == snap.domain_shape
    assert via_showq.deferral_classes == snap.deferral_classes

    # A steady-state sample after new mail reads only the new files.
    read = sampler.files_read
    more, _ = run_campaign(lab, 30, "more", seed=22)
    again = sampler.sample()
    assert sampler.files_read - read == 30
    assert again.queues["deferred"].messages == len(
        [m for m in postqueue_json(lab) if m["queue_name"] == "deferred"]
    )
    expected.update((DEFAULT_GROUPS.group(p.domain), "connection") for p in more)
    assert again.deferral_classes == dict(expected)


@pytest.mark.lab
def test_deferral_classes_match_what_the_remote_answered(lab: Lab) -> None:
    require_programs("postqueue")
    plan, _ = run_campaign(lab, 1500, "answers", seed=23)
    deferred = [p for p in plan if p.status == "deferred"]
    assert {p.kind for p in deferred} == set(KIND_CLASS)
    # A budget small enough that reading every reason takes several samples.
    sampler = QueueSampler(lab.etc, instance=lab.instance, defer_logs_per_sample=100)
    snaps = sample_until_covered(sampler)
    expected = Counter((DEFAULT_GROUPS.group(p.domain), KIND_CLASS[p.kind]) for p in deferred)
    coverages = [s.deferral_coverage for s in snaps]
    assert coverages[0] == 0.0 and 0.0 < coverages[1] < 1.0 and coverages == sorted(coverages)
    for s in snaps:  # read or pending, every deferred recipient is counted once
        assert sum(s.deferral_classes.values()) == len(deferred)
    snap = snaps[-1]
    assert snap.deferral_classes == dict(expected)
    listed = postqueue_json(lab)
    assert snap.queues["deferred"].messages == len(deferred) == len(listed)

    # One vocabulary: each deferred recipient's reason is the one the log gives its last
    # status=deferred line, recipient by recipient (from its defer log) and in the sample.
    logged: dict[str, str] = {}
    with open(lab.maillog, "rb") as f:
        for ev in events_from_lines(f):
            if ev.status == "deferred":
                logged[ev.recipient] = ev.reason
    assert {p.recipient for p in deferred} <= set(logged)
    from_queue: dict[str, str] = {}
    for path in (lab.spool / "defer").rglob("*"):
        if path.is_file():
            for e in parse_defer_log(path.read_text()):
                from_queue[e.recipient] = deferral_of(e).reason
    assert from_queue == {p.recipient: logged[p.recipient] for p in deferred}
    by_reason = Counter((DEFAULT_GROUPS.group(p.domain), logged[p.recipient]) for p in deferred)
    sampled: Counter[tuple[str, str]] = Counter()
    for (group, reason, _class), n in snap.deferrals.items():
        sampled[(group, reason)] += n
    assert sampled == by_reason
    assert {r for _g, r in by_reason} == {"mailboxfull", "policyviolation", "speeding"}


@pytest.mark.lab
def test_real_queue_files_beside_over_long_numbers(lab: Lab, tmp_path: Path) -> None:
    # bad input: beside six queue files Postfix wrote, four with over-long numbers (a 23-digit
    # time, pointer and size, a 5,000-digit size) and a copy of a real one whose content size
    # and data offset were overwritten in place by one 31-digit number
    require_programs("postqueue")
    from mailpulse.collectors.background import BackgroundQueueSampler

    from tests.test_queue_files import over_long_numbers, put

    lab.mx_down()
    run_campaign(lab, 6, "six", seed=24)
    real = sorted(p for p in (lab.spool / "deferred").rglob("*") if p.is_file())
    assert len(real) == 6
    listed = postqueue_json(lab)
    spool = tmp_path / "spool"
    for p in real:
        put(spool, "deferred", p.name, p.read_bytes())
    for qid, data in over_long_numbers(int(time.time())).items():
        put(spool, "deferred", qid, data)
    data = bytearray(real[0].read_bytes())
    head = bytes(data[:34])  # C, its length, "%15ld %15ld " (content size, data offset)
    fields = head[2:33].split()
    assert head[:1] == b"C" and len(fields) == 2 and all(f.isdigit() for f in fields)
    assert head[33:34] == b" "
    data[2:33] = b"9" * 31
    put(spool, "deferred", "FFFFF0005", bytes(data))

    bg = BackgroundQueueSampler(QueueSampler(queue_dir=spool, source="spool"), 3600)
    snap = bg.sample_once()
    assert bg.failures == 0, bg.last_error
    assert snap is not None and snap.complete and snap.errors == {"garbage": 5}
    stats = snap.queues["deferred"]
    assert (stats.messages, stats.recipients, stats.bytes) == (
        len(listed),
        sum(len(m["recipients"]) for m in listed),
        sum(m["message_size"] for m in listed),
    )
