"""What log input may cost, whatever it holds (README, "Limits"): time linear in its size, and
memory bounded by MAX_LINE plus a read block however long a line or a stream is.

Memory is measured with tracemalloc (deterministic); time only as a ratio between two sizes in
one process (linear: the size ratio; quadratic: its square), with an absolute ceiling only a
hang would reach. The road is `logs report`'s: input_events over a file, into a Report.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

from mailpulse.collectors.logparse import MAX_LINE
from mailpulse.collectors.maillog import BLOCK

from mailpulse.report import Report, input_events, settings

MB = 1 << 20
# The stated limits. Memory: what one line may hold, however long (a few copies of its first
# MAX_LINE bytes and of a read block). Time: per byte read, some 15 times what is measured
# for ordinary lines (65 ns) so only a hang or a blow-up reaches it, plus a second of start.
LINE_MEMORY = 1 * MB
assert LINE_MEMORY > 4 * (MAX_LINE + BLOCK)
SECONDS_PER_BYTE = 1e-6
NOISE_S = 0.01  # shorter times are taken as this: below it the clock measures the machine

HEAD = b"Nov 28 17:33:59 mx1 postfix/smtp[9]: 1A2B3C: to=<a@b.example>, relay=none, delay=1, "
HEAD += b"delays=1/0/0/0, dsn=5.0.0, status=bounced ("


def delivery(i: int) -> bytes:
    return (
        f"Nov 28 17:{i // 60 % 60:02d}:{i % 60:02d} mx1 postfix/smtp[{i % 500}]: {i + 0x10000:X}:"
        f" to=<u{i}@d{i % 50}.example>, relay=mx[192.0.2.{i % 250}]:25, delay=1.{i % 10}, "
        f"delays=0.1/0/0.{i % 7}/1, dsn={('2.0.0', '5.1.1')[i % 2]}, "
        f"status={('sent', 'bounced')[i % 2]} ({('250 2.0.0 Ok', '550 5.1.1 <u@x>: no')[i % 2]})\n"
    ).encode()


def write_long_line(path: Path, size: int) -> None:
    """An ordinary line, one delivery line of `size` bytes, an ordinary line."""
    with path.open("wb") as f:
        f.write(delivery(1) + HEAD)
        left = size - len(HEAD)
        while left > 0:
            n = min(left, MB)
            f.write(b"x" * n)
            left -= n
        f.write(b")\n" + delivery(2))


def write_many_lines(path: Path, n: int) -> None:
    with path.open("wb") as f:
        for start in range(0, n, 10_000):
            f.write(b"".join(delivery(i) for i in range(start, min(n, start + 10_000))))


def report_road(path: Path) -> dict[str, object]:
    c, groups = settings(None)
    rep = Report(groups)
    failures: list[int] = []
    for ev in input_events(c, [path], failures):
        rep.add(ev)
    assert failures == []
    return rep.to_json(c)


def peak_memory(path: Path) -> tuple[int, dict[str, object]]:
    report_road(path)  # caches, imports and the classifier's memo filled first
    tracemalloc.start()
    try:
        data = report_road(path)
        return tracemalloc.get_traced_memory()[1], data
    finally:
        tracemalloc.stop()


def seconds(path: Path) -> float:
    best = float("inf")
    for _ in range(3):  # the best of three: a neighbour's burst is not ours
        t = time.perf_counter()
        report_road(path)
        best = min(best, time.perf_counter() - t)
    return best


def test_one_long_line_costs_linear_time_and_bounded_memory(tmp_path: Path) -> None:
    # Bad input: one delivery line of 1, 4, 16 and 64 MB between two ordinary ones.
    sizes = [1 * MB, 4 * MB, 16 * MB, 64 * MB]
    paths = {}
    for size in sizes:
        paths[size] = tmp_path / f"line-{size}.log"
        write_long_line(paths[size], size)
    for size in sizes:
        peak, data = peak_memory(paths[size])
        assert data["cut_lines"] == 1 and data["lines"] == 3, size
        assert data["status"] == {"sent": 1, "deferred": 0, "bounced": 2, "expired": 0}, size
        assert peak < LINE_MEMORY, (size, peak, LINE_MEMORY)
    small, big = seconds(paths[4 * MB]), seconds(paths[64 * MB])
    # 16 times the bytes: linear is about 16 times the time, quadratic 256 times
    assert big / max(small, NOISE_S) < 48, (small, big)
    assert big < 1 + SECONDS_PER_BYTE * paths[64 * MB].stat().st_size, big


def test_many_lines_cost_linear_time_and_memory_that_does_not_grow(tmp_path: Path) -> None:
    # A stream of 20,000 and then 80,000 ordinary lines (sent and bounced, 50 domains).
    small, big = tmp_path / "small.log", tmp_path / "big.log"
    write_many_lines(small, 20_000)
    write_many_lines(big, 80_000)
    peak_small, data_small = peak_memory(small)
    peak_big, data_big = peak_memory(big)
    assert data_small["status"] == {"sent": 10_000, "deferred": 0, "bounced": 10_000, "expired": 0}
    assert data_big["status"] == {"sent": 40_000, "deferred": 0, "bounced": 40_000, "expired": 0}
    # four times the lines, the same memory: what is kept is per shape, not per line
    assert peak_big < peak_small + 256 * 1024, (peak_small, peak_big)
    assert peak_big < 2 * MB, peak_big  # the report's counters and the classifier's memo
    t_small, t_big = seconds(small), seconds(big)
    assert t_big / max(t_small, NOISE_S) < 12, (t_small, t_big)  # linear: 4
    assert t_big < 1 + SECONDS_PER_BYTE * big.stat().st_size, t_big


def test_a_64_mb_line_on_stdin_through_the_command(tmp_path: Path) -> None:
    # Bad input: a 64 MB line on stdin (a pipe), read by the real command.
    path = tmp_path / "line.log"
    write_long_line(path, 64 * MB)
    # A small launcher runs the command and reports its peak RSS (wait4): a child forked
    # from pytest itself would start its high-water mark at pytest's own size.
    launcher = (
        "import os, sys; pid = os.fork()\n"
        "if pid == 0: os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n"
        "_, status, usage = os.wait4(pid, 0)\n"
        "open(sys.argv[1], 'w').write(f'{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}')"
    )
    measured = tmp_path / "rusage"
    with path.open("rb") as stdin:
        out = subprocess.run(
            [sys.executable, "-c", launcher, str(measured)]
            + ["-m", "mailpulse", "logs", "report", "--json"],
            stdin=stdin,
            capture_output=True,
            check=True,
        )
    code, maxrss_kib = map(int, measured.read_text().split())
    assert code == 0 and out.stderr == b"", out.stderr
    data = json.loads(out.stdout)
    assert data["cut_lines"] == 1 and data["status"]["bounced"] == 2
    # the interpreter and its imports, not the 64 MB line
    assert maxrss_kib * 1024 < 48 * MB, maxrss_kib
