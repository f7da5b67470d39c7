"""The agent's cost on a busy node, next to Debian's prometheus-postfix-exporter on the same input.

A lab node runs a real campaign once to get real Postfix log lines; then its hold queue is
filled to 100,000 messages (copies of one of its own queue files, so Postfix's showq and our
spool reader both see them), and a writer appends those log lines to a log file at 1,000
lines a second. Each exporter in turn follows that file and that queue for the same time,
while it is scraped four times a second: its CPU (share of one core), its largest RSS, and the
/metrics latency are measured, then the ratios printed.

Run as root on a machine set up with `make deps`: python -m bench.agent [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from lab.campaign import run_campaign
from lab.postfix import Lab, free_port, wait_until


@dataclass
class Result:
    name: str
    cpu_share: float  # of one core
    rss_max_mb: float
    p50_ms: float
    p99_ms: float
    scrapes: int
    failed: int
    lines_per_s: float | None = None  # log lines the exporter says it read, per second


class LogWriter(threading.Thread):
    """Appends real Postfix lines to `path` at `rate` lines a second, in 10 ms slices."""

    def __init__(self, path: Path, lines: list[bytes], rate: int) -> None:
        super().__init__(daemon=True)
        self.path, self.lines, self.rate = path, lines, rate
        self.stop = threading.Event()
        self.written = 0

    def run(self) -> None:
        started = time.monotonic()
        i = 0
        with self.path.open("ab", buffering=0) as f:
            while not self.stop.is_set():
                due = int((time.monotonic() - started) * self.rate)
                chunk = []
                while self.written < due:
                    chunk.append(self.lines[i % len(self.lines)])
                    i += 1
                    self.written += 1
                if chunk:
                    f.write(b"".join(chunk))
                self.stop.wait(0.01)


def fill_hold_queue(lab: Lab, n: int) -> None:
    """n messages on hold: copies of one real queue file, owned and named as Postfix does."""
    sample = next(p for p in (lab.spool / "deferred").rglob("*") if p.is_file())
    hold = lab.spool / "hold"
    pf = pwd.getpwnam("postfix")
    data = sample.read_bytes()
    existing = sum(1 for _ in hold.iterdir())
    for i in range(existing, n):
        p = hold / f"B{i:09X}"
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
        os.write(fd, data)
        os.fchown(fd, pf.pw_uid, pf.pw_gid)
        os.close(fd)


LINES = re.compile(r"^mailpulse_log_lines_total\{[^}]*\} (\S+)$", re.M)


def lines_read(port: int) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        m = LINES.search(r.read().decode())
    return float(m.group(1)) if m else None


def measure(name: str, proc: subprocess.Popen[bytes], port: int, seconds: float) -> Result:
    lines0 = lines_read(port)
    p = psutil.Process(proc.pid)
    latencies: list[float] = []
    failed = 0
    rss_max = 0
    cpu0 = p.cpu_times()
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                r.read()
            latencies.append(time.perf_counter() - started)
        except OSError:
            failed += 1
        rss_max = max(rss_max, p.memory_info().rss)
        time.sleep(0.25)
    cpu1 = p.cpu_times()
    wall = time.monotonic() - t0
    lines1 = lines_read(port)
    rate = (lines1 - lines0) / wall if lines0 is not None and lines1 is not None else None
    used = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
    return Result(
        name,
        used / wall,
        rss_max / 2**20,
        statistics.median(latencies) * 1000 if latencies else 0.0,
        p99 * 1000,
        len(latencies),
        failed,
        rate,
    )


def wait_metrics(port: int, what: str, pred: Callable[[str], bool]) -> None:
    def ok() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
                return pred(r.read().decode())
        except OSError:
            return False

    wait_until(ok, 600, what, step=0.5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--queue", type=int, default=100_000)
    ap.add_argument("--rate", type=int, default=1000, help="log lines per second")
    ap.add_argument("--keep", action="store_true", help="leave the lab directory behind")
    args = ap.parse_args()
    for prog in ("postfix", "prometheus-postfix-exporter"):
        if shutil.which(prog) is None:
            print(f"bench: {prog} is not installed (make deps)", file=sys.stderr)
            return 2

    root = Path(tempfile.mkdtemp(prefix="mailpulse-bench-"))
    os.chmod(root, 0o755)
    lab = Lab(root / "lab", smtp_port=free_port(), mx_port=free_port(), node="bench1")
    results: list[Result] = []
    try:
        lab.start()
        print("campaign for real log lines ...", flush=True)
        run_campaign(lab, 400, "bench", seed=99)
        lines = [ln + b"\n" for ln in lab.maillog.read_bytes().splitlines() if ln]
        print(
            f"{len(lines)} real log lines; filling the hold queue to {args.queue} ...", flush=True
        )
        fill_hold_queue(lab, args.queue)

        log = root / "bench-mail.log"
        log.touch()
        writer = LogWriter(log, lines, args.rate)
        writer.start()

        state = root / "state"
        port = free_port()
        cfg = root / "mailpulse.yaml"
        cfg.write_text(
            f"node: bench1\nlisten: 127.0.0.1:{port}\npostfix:\n  config_dirs: [{lab.etc}]\n"
            f"logs:\n  files: [{log}]\n"
        )
        agent = subprocess.Popen(
            [sys.executable, "-m", "mailpulse", "agent", "--config", str(cfg)]
            + ["--state-dir", str(state)],
            stdout=subprocess.DEVNULL,
            stderr=(root / "agent.log").open("wb"),
        )
        try:
            # Measure the steady state: after the first full read of the queue.
            hold = re.compile(r'^mailpulse_queue_messages\{[^}]*queue="hold"[^}]*\} (\S+)$', re.M)

            def queue_read(text: str) -> bool:
                m = hold.search(text)
                return m is not None and float(m.group(1)) == args.queue

            wait_metrics(port, "the agent's first queue sample", queue_read)
            print("measuring the mailpulse agent ...", flush=True)
            results.append(measure("mailpulse agent", agent, port, args.seconds))
        finally:
            agent.terminate()
            agent.wait(60)

        port = free_port()
        exporter = subprocess.Popen(
            [
                "prometheus-postfix-exporter",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--postfix.showq_path={lab.spool / 'public' / 'showq'}",
                f"--postfix.logfile_path={log}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(root / "exporter.log").open("wb"),
        )
        try:
            wait_metrics(port, "prometheus-postfix-exporter", lambda t: "postfix_up" in t)
            print("measuring prometheus-postfix-exporter ...", flush=True)
            results.append(measure("prometheus-postfix-exporter", exporter, port, args.seconds))
        finally:
            exporter.terminate()
            exporter.wait(60)
        writer.stop.set()
        writer.join()
        print(f"log lines written: {writer.written} in both runs")
    finally:
        lab.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print()
    print(f"queue {args.queue} messages on hold, log {args.rate} lines/s, {args.seconds:.0f}s each")
    print(f"{'':30} {'CPU %core':>10} {'RSS MB':>8} {'p50 ms':>8} {'p99 ms':>8} {'scrapes':>8}")
    for r in results:
        print(
            f"{r.name:30} {100 * r.cpu_share:10.2f} {r.rss_max_mb:8.1f} {r.p50_ms:8.2f}"
            f" {r.p99_ms:8.2f} {r.scrapes:8d}"
            + (f"  ({r.failed} failed)" if r.failed else "")
            + (f"  (read {r.lines_per_s:.0f} log lines/s)" if r.lines_per_s is not None else "")
        )
    if len(results) == 2 and all(r.scrapes for r in results):
        a, b = results
        print(
            f"mailpulse / postfix_exporter: CPU x{a.cpu_share / max(b.cpu_share, 1e-9):.2f},"
            f" RSS x{a.rss_max_mb / b.rss_max_mb:.2f}, p99 latency x{a.p99_ms / b.p99_ms:.3g}"
        )
        print("targets: CPU < 5% of a core, RSS < 80 MB, /metrics p99 < 50 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
