"""Following a log on real files: rotation by rename and by copytruncate, a restart in the
middle of a line, kill -9 between checkpoints, and stdin. Each run's totals must equal what
the test wrote, counted as it wrote them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from mailpulse.collectors.maillog import (
    Correlator,
    JournalFollower,
    LogFollower,
    events_from_lines,
)

STATUSES = ("sent", "deferred", "bounced")


def message_lines(start: int, n: int) -> Iterator[tuple[bytes, str]]:
    """Three lines per message, with the status its delivery line carries."""
    for i in range(start, start + n):
        qid = f"{0xA00000 + i:X}"
        status = STATUSES[i % 3]
        dsn = {"sent": "2.0.0", "deferred": "4.2.2", "bounced": "5.1.1"}[status]
        yield (
            f"Nov 28 17:33:59 mx1 postfix/qmgr[3]: {qid}: from=<bounce-{i}@ours.example>, "
            f"size=900, nrcpt=1 (queue active)\n".encode(),
            "",
        )
        yield (
            f"Nov 28 17:34:00 mx1 postfix/smtp[9]: {qid}: to=<u{i}@x.example>, "
            f"relay=mx.x.example[192.0.2.5]:25, delay=1, delays=0/0/0/1, dsn={dsn}, "
            f"status={status} (host mx.x.example[192.0.2.5] said: {dsn[0]}50 {dsn} "
            f"thing {i} (in reply to RCPT TO command))\n".encode(),
            status,
        )
        yield f"Nov 28 17:34:00 mx1 postfix/qmgr[3]: {qid}: removed\n".encode(), ""


class Writer:
    """Appends messages to the log and counts what it wrote."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.next = 0
        self.expected: Counter[str] = Counter()

    def write(self, n: int, path: Path | None = None) -> None:
        with (path or self.path).open("ab") as f:
            for line, status in message_lines(self.next, n):
                f.write(line)
                if status:
                    self.expected[status] += 1
        self.next += n


ROAD = {"road": "lines"}


@pytest.fixture(params=["lines", "blocks"])
def road(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each test twice: read_lines into feed_lines, then read_blocks into feed_block."""
    ROAD["road"] = request.param
    yield request.param
    ROAD["road"] = "lines"


def drain(follower: LogFollower, c: Correlator, got: Counter[str], max_bytes: int | None = None):
    if ROAD["road"] == "blocks":
        events = (ev for block in follower.read_blocks(max_bytes) for ev in c.feed_block(block))
    else:
        events = events_from_lines(follower.read_lines(max_bytes), c)
    for ev in events:
        got[ev.status] += 1


@pytest.mark.usefixtures("road")
def test_rename_and_create_rotation_finishes_the_old_file_first(tmp_path: Path) -> None:
    log = tmp_path / "maillog"
    w = Writer(log)
    w.write(100)
    f = LogFollower(log, tmp_path / "cp.json")
    c, got = Correlator(), Counter[str]()
    drain(f, c, got, max_bytes=5000)  # part of the file
    w.write(50)
    log.rename(tmp_path / "maillog.1")
    w.write(20, tmp_path / "maillog.1")  # the writer has not reopened yet
    w.write(70)  # creates the new maillog
    drain(f, c, got)
    w.write(10)
    drain(f, c, got)
    assert got == w.expected and sum(got.values()) == 250
    assert f.stats["rotations"] == 1


@pytest.mark.usefixtures("road")
def test_copytruncate_rotation_reads_the_copy_then_the_new_start(tmp_path: Path) -> None:
    log = tmp_path / "maillog"
    w = Writer(log)
    w.write(100)
    f = LogFollower(log, tmp_path / "cp.json")
    c, got = Correlator(), Counter[str]()
    drain(f, c, got)
    w.write(40)  # written before the copy, not read yet: only the copy will have them
    shutil.copyfile(log, tmp_path / "maillog.1")
    with log.open("r+b") as fh:
        fh.truncate(0)
    w.write(150)  # already longer than the old offset when we look again
    drain(f, c, got)
    assert got == w.expected and sum(got.values()) == 290
    assert f.stats["truncations"] == 1


@pytest.mark.usefixtures("road")
def test_restart_in_the_middle_of_a_line(tmp_path: Path) -> None:
    log, cp = tmp_path / "maillog", tmp_path / "cp.json"
    w = Writer(log)
    w.write(30)
    (line, status), *_ = [x for x in message_lines(30, 1) if x[1]]
    with log.open("ab") as fh:
        fh.write(line[:50])  # the writer is in the middle of the line
    f = LogFollower(log, cp)
    c, got = Correlator(), Counter[str]()
    drain(f, c, got)
    f.save_checkpoint()
    f.close()
    with log.open("ab") as fh:
        fh.write(line[50:])
    w.expected[status] += 1
    f2 = LogFollower(log, cp)
    drain(f2, Correlator(), got)
    assert got == w.expected and sum(got.values()) == 31


@pytest.mark.usefixtures("road")
def test_checkpoint_survives_rotation_while_stopped(tmp_path: Path) -> None:
    log, cp = tmp_path / "maillog", tmp_path / "cp.json"
    w = Writer(log)
    w.write(60)
    f = LogFollower(log, cp)
    got: Counter[str] = Counter()
    drain(f, Correlator(), got, max_bytes=8000)
    f.save_checkpoint()
    f.close()
    w.write(10)
    log.rename(tmp_path / "maillog.1")
    w.write(25)
    f2 = LogFollower(log, cp)
    drain(f2, Correlator(), got)
    assert got == w.expected and sum(got.values()) == 95


READER = r"""
import sys, time
from collections import Counter
from mailpulse.collectors.maillog import (
    Correlator,
    JournalFollower,
    LogFollower,
    events_from_lines,
)
log, cp, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
f = LogFollower(log, cp)
c = Correlator()
while True:
    counts = Counter(f.state.get("counts", {}))
    n = 0
    if sys.argv[4] == "blocks":
        events = [ev for block in f.read_blocks(max_bytes=3000) for ev in c.feed_block(block)]
    else:
        events = list(events_from_lines(f.read_lines(max_bytes=3000), c))
    for ev in events:
        counts[ev.status] += 1
        n += 1
    if n == 0:
        break
    f.save_checkpoint({"counts": dict(counts)})
    time.sleep(pause)
print("done", flush=True)
"""


def test_kill_9_between_checkpoints_loses_and_repeats_nothing(tmp_path: Path, road: str) -> None:
    log, cp = tmp_path / "maillog", tmp_path / "cp.json"
    w = Writer(log)
    w.write(400)
    script = tmp_path / "reader.py"
    script.write_text(READER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    last_offset = 0
    for _ in range(3):  # three kills, each while the reader is in the middle of the file
        # 50 ms between 3,000-byte batches: the file takes the reader seconds to get through
        p = subprocess.Popen(
            [sys.executable, str(script), str(log), str(cp), "0.05", road], env=env
        )
        deadline = time.monotonic() + 60
        first = cp.stat().st_mtime_ns if cp.exists() else 0
        while time.monotonic() < deadline:
            if cp.exists() and cp.stat().st_mtime_ns != first:
                break
            time.sleep(0.005)
        p.send_signal(signal.SIGKILL)
        p.wait()
        # The kill landed mid-read: past what the last run had committed, short of the end,
        # with fewer deliveries committed than the file holds.
        at_kill = json.loads(cp.read_text())
        assert last_offset < at_kill["offset"] < log.stat().st_size
        assert 0 < sum(at_kill["state"]["counts"].values()) < w.next
        last_offset = at_kill["offset"]
        w.write(30)  # the log keeps growing while the reader is dead
    done = subprocess.run(
        [sys.executable, str(script), str(log), str(cp), "0", road],
        env=env,
        timeout=120,
        check=True,
    )
    assert done.returncode == 0
    counts = json.loads(cp.read_text())["state"]["counts"]
    assert Counter(counts) == w.expected and sum(counts.values()) == 490
    # the same as one clean read of the whole file
    clean = Counter(ev.status for ev in Correlator().feed_block(log.read_bytes()))
    assert Counter(counts) == clean


def test_logs_parse_reads_stdin_like_a_file(tmp_path: Path) -> None:
    log = tmp_path / "maillog"
    w = Writer(log)
    w.write(200)
    cmd = [sys.executable, "-m", "mailpulse", "logs", "parse", "--json"]
    from_file = subprocess.run([*cmd, str(log)], capture_output=True, check=True).stdout
    with log.open("rb") as fh:
        from_pipe = subprocess.run(cmd, stdin=fh, capture_output=True, check=True).stdout
    assert from_pipe == from_file
    assert Counter(json.loads(x)["status"] for x in from_pipe.splitlines()) == w.expected


JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"


def write_journal(path: Path, first: int, n: int, expected: Counter[str]) -> None:
    """A real journal file, written by systemd-journal-remote from export-format entries."""
    entries = []
    for seq, (line, status) in enumerate(message_lines(first, n)):
        header, _, message = line.decode().rstrip("\n").partition(": ")
        ident = header.split()[-1].split("[")[0]
        usec = 1795889945_000000 + (first * 3 + seq) * 1000
        entries.append(
            f"__REALTIME_TIMESTAMP={usec}\n__MONOTONIC_TIMESTAMP={usec}\n"
            f"_BOOT_ID=0123456789abcdef0123456789abcdef\n_HOSTNAME=mx1\n"
            f"SYSLOG_IDENTIFIER={ident}\n_PID=77\nMESSAGE={message}\n\n"
        )
        if status:
            expected[status] += 1
    subprocess.run(
        [JOURNAL_REMOTE, "-o", str(path), "-"],
        input="".join(entries).encode(),
        check=True,
        capture_output=True,
    )


def test_journal_with_a_saved_cursor(tmp_path: Path) -> None:
    from tests.conftest import require_programs

    require_programs("journalctl", JOURNAL_REMOTE)
    expected: Counter[str] = Counter()
    write_journal(tmp_path / "a.journal", 0, 120, expected)
    args = ["--directory", str(tmp_path)]
    cp = tmp_path / "journal.cp"
    got: Counter[str] = Counter()
    j = JournalFollower(cp, args)
    for ev in events_from_lines(j.read_lines(max_lines=100), Correlator()):
        got[ev.status] += 1
    j.save_checkpoint()
    # restarted, and more was logged meanwhile
    write_journal(tmp_path / "b.journal", 120, 40, expected)
    j2 = JournalFollower(cp, args)
    assert j2.cursor == j.cursor
    for ev in events_from_lines(j2.read_lines(), Correlator()):
        got[ev.status] += 1
    assert got == expected and sum(got.values()) == 160
    assert j2.stats["bad_entries"] == 0


# -- rotation while the reader is stopped -------------------------------------------------------
# logrotate itself does the renames and the compression; the truth is what the writer wrote, and a
# single clean read of every file's text in order must count the same.
LOGROTATE_CONFIGS = {
    "renamed": "rotate 5\ncreate\n",
    "compressed": "rotate 5\ncreate\ncompress\n",
    "delaycompress": "rotate 5\ncreate\ncompress\ndelaycompress\n",
}
ROTATED_NAMES = {
    "renamed": ["maillog.1", "maillog.2"],
    "compressed": ["maillog.1.gz", "maillog.2.gz"],
    "delaycompress": ["maillog.1", "maillog.2.gz"],
}


def logrotate(log: Path, config: str) -> None:
    conf = log.parent / "logrotate.conf"
    conf.write_text(f"{log} {{\n{config}}}\n")
    subprocess.run(
        ["logrotate", "-f", "-s", str(log.parent / "logrotate.state"), str(conf)],
        check=True,
        capture_output=True,
    )


def clean_read(paths: list[Path]) -> Counter[str]:
    """Every file's text in order, through one correlator, as `logs parse` would read it."""
    import gzip

    got: Counter[str] = Counter()
    text = b"".join(
        gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes() for p in paths
    )
    for ev in Correlator().feed_block(text):
        got[ev.status] += 1
    return got


def stop_mid_file(log: Path, cp: Path, w: Writer, got: Counter[str]) -> LogFollower:
    w.write(100)
    f = LogFollower(log, cp)
    drain(f, Correlator(), got, max_bytes=9000)  # part of the file
    f.save_checkpoint()
    f.close()
    assert 0 < f.offset < log.stat().st_size
    return f


@pytest.mark.usefixtures("road")
@pytest.mark.parametrize("style", LOGROTATE_CONFIGS)
def test_two_rotations_while_stopped_read_every_rotated_file(tmp_path: Path, style: str) -> None:
    from tests.conftest import require_programs

    require_programs("logrotate")
    log, cp = tmp_path / "maillog", tmp_path / "cp.json"
    w, got = Writer(log), Counter[str]()
    stop_mid_file(log, cp, w, got)
    w.write(50)  # the rest of the checkpoint's file, unread
    logrotate(log, LOGROTATE_CONFIGS[style])
    w.write(60)  # a whole file that is rotated before the reader comes back
    logrotate(log, LOGROTATE_CONFIGS[style])
    w.write(40)
    rotated = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("maillog."))
    assert rotated == ROTATED_NAMES[style]
    f2 = LogFollower(log, cp)
    drain(f2, Correlator(), got)
    assert got == w.expected and sum(got.values()) == 250
    files = [tmp_path / n for n in reversed(rotated)] + [log]
    assert clean_read(files) == got
    assert f2.stats["lost_files"] == 0 and f2.stats["skipped_bytes"] == 0


@pytest.mark.usefixtures("road")
def test_dateext_names_and_gzip_while_stopped(tmp_path: Path) -> None:
    import gzip

    log, cp = tmp_path / "maillog", tmp_path / "cp.json"
    w, got = Writer(log), Counter[str]()
    stop_mid_file(log, cp, w, got)
    w.write(30)
    # logrotate with dateext: the old file under its date, compressed the next day
    log.rename(tmp_path / "maillog-20261128")
    w.write(45)
    log.rename(tmp_path / "maillog-20261129")
    day = tmp_path / "maillog-20261128"
    with day.open("rb") as src, gzip.open(day.with_name(day.name + ".gz"), "wb") as dst:
        shutil.copyfileobj(src, dst)
    (tmp_path / "maillog-20261128").unlink()
    w.write(25)
    # Bad input: a file that only looks like a rotated copy by its prefix is not read.
    (tmp_path / "maillog-notes.txt").write_bytes(b"".join(x for x, _ in message_lines(900, 5)))
    f2 = LogFollower(log, cp)
    drain(f2, Correlator(), got)
    assert got == w.expected and sum(got.values()) == 200


def after_a_clock_tick(path: Path) -> None:
    """Wait until the file system's clock has moved past `path`'s mtime (its coarse tick), so a
    file written from now on is provably later: this orders events, it measures nothing."""
    probe = path.with_name(path.name + ".tick")
    while True:
        probe.touch()
        if probe.stat().st_mtime_ns > path.stat().st_mtime_ns:
            probe.unlink()
            return
        time.sleep(0.001)


@pytest.mark.usefixtures("road")
def test_a_rotated_file_gone_while_stopped_is_counted_as_skipped(tmp_path: Path) -> None:
    from tests.conftest import require_programs

    require_programs("logrotate")
    log, cp = tmp_path / "maillog", tmp_path / "cp.json"
    w, got = Writer(log), Counter[str]()
    f = stop_mid_file(log, cp, w, got)
    unread = log.stat().st_size - f.offset  # provably unread: the checkpoint saw the file this long
    w.write(20)
    after_a_clock_tick(log)
    logrotate(log, "rotate 1\ncreate\n")
    before = Counter(w.expected)
    # Bad input: more rotations than logrotate keeps (rotate 1): the checkpoint's file is gone.
    w.write(30)
    logrotate(log, "rotate 1\ncreate\n")
    w.write(10)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("maillog.")) == [
        "maillog.1"
    ]
    read_before = Counter(got)
    f2 = LogFollower(log, cp)
    drain(f2, Correlator(), got)
    # the rotated file written after the checkpoint and the current one are read, once
    assert got - read_before == w.expected - before and sum((got - read_before).values()) == 40
    assert f2.stats["lost_files"] == 1 and f2.stats["skipped_bytes"] == unread


@pytest.mark.usefixtures("road")
def test_a_damaged_gz_while_stopped_is_a_lost_file_not_an_error(tmp_path: Path) -> None:
    import gzip

    log, cp = tmp_path / "maillog", tmp_path / "cp.json"
    w, got = Writer(log), Counter[str]()
    stop_mid_file(log, cp, w, got)
    read_before = Counter(got)
    log.rename(tmp_path / "maillog.1")
    data = gzip.compress((tmp_path / "maillog.1").read_bytes())
    # Bad input: the compressed copy is cut short (a full disk while gzip wrote it).
    (tmp_path / "maillog.1.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "maillog.1").unlink()
    w.write(10)
    f2 = LogFollower(log, cp)
    drain(f2, Correlator(), got)
    assert f2.stats["lost_files"] == 1
    # the current file is read whole, after what could be read of the damaged one
    new = Counter(s for _, s in message_lines(100, 10) if s)
    assert all(got[s] - read_before[s] >= n for s, n in new.items())
    assert sum(got.values()) < sum(w.expected.values())


@pytest.mark.usefixtures("road")
def test_two_rotations_between_two_reads_while_following(tmp_path: Path) -> None:
    from tests.conftest import require_programs

    require_programs("logrotate")
    log = tmp_path / "maillog"
    w, got = Writer(log), Counter[str]()
    w.write(100)
    f = LogFollower(log, tmp_path / "cp.json")
    c = Correlator()
    drain(f, c, got, max_bytes=9000)  # part of the file; it stays open
    w.write(20)
    logrotate(log, "rotate 5\ncreate\ncompress\n")  # the open file is compressed and removed
    w.write(30)
    logrotate(log, "rotate 5\ncreate\ncompress\n")
    w.write(10)
    drain(f, c, got)
    assert got == w.expected and sum(got.values()) == 160
    assert f.stats["rotations"] == 1 and f.stats["lost_files"] == 0
