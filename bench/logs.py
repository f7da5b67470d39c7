"""Log parsing speed: mailpulse against pflogsumm, prometheus-postfix-exporter and mtail.

    .venv/bin/python bench/logs.py [--lines 2000000] [--messages 10000] [--source MAILLOG]

1. Builds the input: a real lab campaign (Postfix delivering to the scripted remote MX, its
   deferred mail expiring after a minute) gives a log; it is then repeated, each copy with its queue
   ids rewritten (a copy number in front, still hex) and its timestamps shifted past the
   previous copy, up to --lines lines.
   --source skips the lab and scales an existing Postfix log the same way.
2. Runs, on that same file, each tool on one core (taskset), measuring CPU seconds from the
   kernel's accounting of the child:
   - mailpulse: full extraction (every line parsed, delivery events built and classified) and
     queue-id correlation, as the agent does, reading the file in blocks (Correlator.feed_stream);
   - pflogsumm (Debian), its default report;
   - prometheus-postfix-exporter (Debian), started on an empty log file, fed by appending the
     whole input, measured by its CPU time once every line shows in its metrics;
   - mtail (Debian) with Debian's example program /usr/share/doc/mtail/examples/postfix.mtail,
     in --one_shot mode.
3. Prints lines/s and CPU s per million lines for each, mailpulse's ratio to each, and
   mailpulse's peak memory after 200,000 lines and after the whole file.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MTAIL_PROG = Path("/usr/share/doc/mtail/examples/postfix.mtail")
ONE_CORE = ["taskset", "-c", "0"] if shutil.which("taskset") else []

_STAMP = re.compile(rb"^(\w{3} [ \d]\d \d\d:\d\d:\d\d)")
_QID = re.compile(rb"\b([0-9A-F]{8,12})\b")


def lab_log(messages: int, root: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from lab.campaign import run_campaign
    from lab.postfix import Lab, free_port, wait_until

    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    # Deferred mail expires after a minute, so that the log also has qmgr's expiry lines and
    # every message ends with "removed", as on a node whose campaigns run to their end.
    lifetime = {"maximal_queue_lifetime": "60s", "bounce_queue_lifetime": "60s"}
    lab = Lab(root, smtp_port=free_port(), mx_port=free_port(), main_cf_extra=lifetime)
    lab.start()
    try:
        run_campaign(lab, messages, "bench", seed=2024, connections=8, timeout=1800)
        time.sleep(65)
        lab.flush()
        wait_until(lambda: lab.queue_files("deferred") == 0, 600, "deferred mail to expire", 1)
        wait_until(lab.queue_settled, 600, "the queue to settle", 0.5)
        time.sleep(2)
    finally:
        lab.stop()
    return lab.maillog


def scale(source: Path, out: Path, lines: int) -> int:
    """Repeat `source` with fresh queue ids and later timestamps until `lines` lines."""
    base = source.read_bytes().splitlines(keepends=True)
    qids = set()
    for line in base:
        m = re.search(rb"\]: ([0-9A-F]{8,12}): ", line)
        if m:
            qids.add(m.group(1))
    stamps = [m.group(1) for line in base if (m := _STAMP.match(line))]
    span = 1 + int(_secs(stamps[-1]) - _secs(stamps[0])) if stamps else 1
    written = copy = 0
    with out.open("wb") as f:
        while written < lines:
            prefix = b"%02X" % (copy % 256)
            shift = copy * span
            cache: dict[bytes, bytes] = {}

            def new_qid(m: re.Match[bytes], prefix: bytes = prefix) -> bytes:
                q = m.group(1)
                return prefix + q if q in qids else q

            for line in base:
                m = _STAMP.match(line)
                if m:
                    old = m.group(1)
                    new = cache.get(old)
                    if new is None:
                        t = time.localtime(_secs(old) + shift)
                        new = cache[old] = time.strftime("%b %d %H:%M:%S", t).encode()
                        if new[4:5] == b"0":
                            new = cache[old] = new[:4] + b" " + new[5:]
                    line = new + line[len(old) :]
                f.write(_QID.sub(new_qid, line))
                written += 1
                if written >= lines:
                    break
            copy += 1
    return written


def _secs(stamp: bytes) -> float:
    year = time.localtime().tm_year
    return time.mktime(time.strptime(f"{year} {stamp.decode()}", "%Y %b %d %H:%M:%S"))


def child_cpu(
    argv: list[str], **kw: object
) -> tuple[float, int, subprocess.CompletedProcess[bytes]]:
    """CPU seconds and peak RSS (KiB) of one child run to completion."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(ONE_CORE + argv, stdout=subprocess.PIPE, check=True, **kw)  # type: ignore[call-overload]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, after.ru_maxrss, r


# Peak memory from VmHWM: ru_maxrss of an exec'd child also counts what its parent had.
MAILPULSE = r"""
import sys
from mailpulse.collectors.maillog import Correlator
c = Correlator()
n = 0
with open(sys.argv[1], "rb") as f:
    for ev in c.feed_stream(f):
        n += 1
hwm = [x for x in open("/proc/self/status") if x.startswith("VmHWM:")][0].split()[1]
print(n, c.stats["lines"], c.stats.get("unparsed.smtp", 0), len(c.messages), hwm)
"""


def run_mailpulse(log: Path) -> tuple[float, int, str]:
    cpu, _, r = child_cpu([sys.executable, "-c", MAILPULSE, str(log)], cwd=REPO)
    out = r.stdout.decode().split()
    return cpu, int(out[-1]), " ".join(out[:-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


def run_exporter(log: Path, work: Path) -> float:
    """CPU seconds the exporter spent reading the appended log."""
    feed = work / "exporter.log"
    feed.write_bytes(b"")
    port = free_port()
    p = subprocess.Popen(
        ONE_CORE
        + [
            "prometheus-postfix-exporter",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--postfix.logfile_path={feed}",
            f"--postfix.showq_path={work / 'no-showq'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        for _ in range(100):
            try:
                urllib.request.urlopen(url, timeout=5).read()  # noqa: S310 - loopback
                break
            except OSError:
                time.sleep(0.1)
        start = proc_cpu(p.pid)
        with log.open("rb") as src, feed.open("ab") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        # Done when its CPU clock stops moving for a while.
        last, still = proc_cpu(p.pid), 0
        while still < 6:
            time.sleep(0.5)
            now = proc_cpu(p.pid)
            still = still + 1 if now - last < 0.01 else 0
            last = now
        metrics = urllib.request.urlopen(url, timeout=30).read().decode()  # noqa: S310
        sent = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("postfix_smtp_delivery_delay_seconds_count")
        )
        print(f"  exporter saw {sent:.0f} smtp deliveries", file=sys.stderr)
        return last - start
    finally:
        p.terminate()
        p.wait()


def main() -> int:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--lines", type=int, default=2_000_000)
    a.add_argument("--messages", type=int, default=10_000)
    a.add_argument("--source", type=Path, help="an existing Postfix log instead of a lab run")
    a.add_argument("--work", type=Path, help="keep the input here (default: a temp dir)")
    args = a.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="mailpulse-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)  # the lab's Postfix processes must reach their data directory below
    src = args.source or lab_log(args.messages, work / "lab")
    log = work / "maillog.big"
    n = scale(src, log, args.lines)
    print(f"input: {n} lines, {log.stat().st_size / 1e6:.0f} MB, from {src}")

    results: dict[str, float] = {}
    cpu, rss, info = run_mailpulse(log)
    results["mailpulse"] = cpu
    print(f"  mailpulse: events, lines, unparsed smtp, table size = {info}")
    head = work / "maillog.head"
    with log.open("rb") as src, head.open("wb") as dst:
        dst.writelines(itertools.islice(src, 200_000))
    _, rss_small, _ = run_mailpulse(head)
    if shutil.which("pflogsumm"):
        results["pflogsumm"], _, _ = child_cpu(["pflogsumm", str(log)])
    if shutil.which("prometheus-postfix-exporter"):
        results["postfix_exporter"] = run_exporter(log, work)
    if shutil.which("mtail") and MTAIL_PROG.exists():
        progs = work / "mtail-progs"
        progs.mkdir(exist_ok=True)
        shutil.copy(MTAIL_PROG, progs)
        results["mtail"], _, _ = child_cpu(
            [
                "mtail",
                "--progs",
                str(progs),
                "--logs",
                str(log),
                "--one_shot",
                "--one_shot_format",
                "prometheus",
                "--logtostderr",
            ],
            stderr=subprocess.DEVNULL,
        )
    print(f"\n{'tool':<18}{'lines/s':>12}{'CPU s / M lines':>18}{'mailpulse x':>14}")
    mp = results["mailpulse"]
    for name, cpu in results.items():
        print(f"{name:<18}{n / cpu:>12,.0f}{cpu / n * 1e6:>18.2f}{cpu / mp:>14.2f}")
    fastest = min((v for k, v in results.items() if k != "mailpulse"), default=None)
    if fastest:
        print(f"\nmailpulse vs the fastest other tool: {fastest / mp:.2f}x (target 3x)")
    print(
        f"mailpulse peak RSS: {rss_small / 1024:.1f} MiB after 200,000 lines, "
        f"{rss / 1024:.1f} MiB after {n:,} lines ({(rss / rss_small - 1) * 100:+.0f}%)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
