"""Log parsing speed: mailpulse against pflogsumm, prometheus-postfix-exporter and mtail.

    .venv/bin/python bench/logs.py [--lines 2000000] [--messages 10000] [--source MAILLOG]

1. Builds the input: a real lab campaign (Postfix delivering to the scripted remote MX, its
   deferred mail expiring after a minute) gives a log; it is then repeated, each copy with its queue
   ids rewritten (a copy number in front, still hex) and its timestamps shifted past the
   previous copy, up to --lines lines.
   --source skips the lab and scales an existing Postfix log the same way.
2. Runs, on that same file, each tool on one core (taskset) as a whole process, from start to
   exit, measuring CPU seconds from the kernel's accounting of the child (mailpulse and
   pflogsumm in turn, --rounds times over, the fastest run of each counting):
   - mailpulse as an operator runs it: `mailpulse logs report FILE` (its text, as pflogsumm
     prints its own), `mailpulse logs report --json FILE` (the counts checked below) and
     `mailpulse logs parse --json FILE > /dev/null` (every event written out);
   - the same inside one interpreter, beside them: Correlator.feed_stream (events built,
     nothing counted or written: the parser's own cost, and its peak memory), and the report's
     counting over it (Report.add per event, nothing written);
   - pflogsumm (Debian), its default report;
   - prometheus-postfix-exporter (Debian), started on an empty log file, fed by appending the
     whole input; its CPU time is read when its /metrics shows every delivery line and every
     "removed" line of the input (its counters polled until they reach mailpulse's totals);
   - mtail (Debian) with Debian's example program /usr/share/doc/mtail/examples/postfix.mtail,
     in --one_shot mode.
3. Checks the delivered, deferred and bounced counts of every tool against mailpulse's report
   (as far as each tool counts them) and says which tool disagrees, by how much (exit 1).
4. Prints lines/s and CPU s per million lines for each, the ratio of each to `mailpulse logs
   report`, the command lines against pflogsumm and against their in-process rows (targets:
   `logs report` at least 3x pflogsumm, `logs parse --json` at least half the in-process rate),
   and mailpulse's peak memory after 200,000 lines and after the whole file.
"""

from __future__ import annotations

import argparse
import itertools
import json
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
from collections import Counter
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


def child_cpu(argv: list[str], stdout: int = subprocess.PIPE, **kw: object) -> tuple[float, bytes]:
    """CPU seconds of one child, from its start to its exit, and what it printed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(ONE_CORE + argv, stdout=stdout, check=True, **kw)  # type: ignore[call-overload]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, r.stdout or b""


def mailpulse_cli() -> list[str]:
    script = Path(sys.executable).with_name("mailpulse")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mailpulse"]


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


# The report's counting in process: what `logs report` adds to the parser, nothing printed.
REPORT_IN_PROCESS = r"""
import sys
from mailpulse.collectors.maillog import Correlator
from mailpulse.report import Report
c, rep = Correlator(), Report()
with open(sys.argv[1], "rb") as f:
    for ev in c.feed_stream(f):
        rep.add(ev)
print(sum(rep.to_json(c)["status"].values()))
"""


def run_correlator(log: Path) -> tuple[float, int, str]:
    cpu, out = child_cpu([sys.executable, "-c", MAILPULSE, str(log)], cwd=REPO)
    words = out.decode().split()
    return cpu, int(words[-1]), " ".join(words[:-1])


def parsed_events(log: Path) -> Counter[tuple[str, str]]:
    """(program, status) of every event `mailpulse logs parse --json` writes (not timed)."""
    argv = [*mailpulse_cli(), "logs", "parse", "--json", str(log)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE) as p:
        assert p.stdout is not None
        counts = Counter((e["program"], e["status"]) for e in map(json.loads, p.stdout))
    if p.returncode:
        raise SystemExit(f"mailpulse logs parse exited with {p.returncode}")
    return counts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


def metric_sums(text: str) -> dict[str, float]:
    """Prometheus text format -> each metric name's sum over all its label sets."""
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            sums[name] = sums.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return sums


# mtail's example program and the exporter read the same lines the same way: a delivery line
# of smtp, lmtp or pipe (any status) is one observation in each of the four stages of its
# "delays=" histogram; only smtp's deferrals have a counter of their own (the exporter's), and
# neither counts sent or bounced apart.
DELAY_PROGRAMS = ("smtp", "lmtp", "pipe")


def tool_counts(m: dict[str, float]) -> dict[str, int]:
    stages = sum(m.get(f"postfix_{p}_delivery_delay_seconds_count", 0.0) for p in DELAY_PROGRAMS)
    got = {"smtp/lmtp/pipe delivery lines": round(stages / 4)}
    if "postfix_smtp_status_deferred" in m:
        got["smtp deferred"] = round(m["postfix_smtp_status_deferred"])
    got["qmgr removed"] = round(m.get("postfix_qmgr_messages_removed_total", 0.0))
    return got


def run_exporter(log: Path, work: Path, want: dict[str, int]) -> tuple[float, dict[str, int]]:
    """CPU seconds the exporter spent until its metrics show `want`, and what they show."""
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
    url = f"http://127.0.0.1:{port}/metrics"

    def scrape() -> dict[str, int]:
        with urllib.request.urlopen(url, timeout=30) as r:  # noqa: S310 - loopback
            return tool_counts(metric_sums(r.read().decode()))

    try:
        for _ in range(100):
            try:
                scrape()
                break
            except OSError:
                time.sleep(0.1)
        start = proc_cpu(p.pid)
        with log.open("rb") as src, feed.open("ab") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        # Done when every delivery and every "removed" line shows in its counters. If they stop
        # short, they stay still: after a minute without change the counts say by how much.
        got, changed = scrape(), time.monotonic()
        while not all(got.get(k, 0) >= n for k, n in want.items()):
            time.sleep(0.2)
            now = scrape()
            if now != got:
                got, changed = now, time.monotonic()
            elif time.monotonic() - changed > 60:
                print("  exporter: its counters stopped short of the input", file=sys.stderr)
                break
        return proc_cpu(p.pid) - start, got
    finally:
        p.terminate()
        p.wait()


def run_mtail(log: Path, work: Path) -> tuple[float, dict[str, int]]:
    progs = work / "mtail-progs"
    progs.mkdir(exist_ok=True)
    shutil.copy(MTAIL_PROG, progs)
    argv = ["mtail", "--progs", str(progs), "--logs", str(log), "--one_shot"]
    argv += ["--one_shot_format", "prometheus", "--logtostderr"]
    cpu, out = child_cpu(argv, stderr=subprocess.DEVNULL)
    return cpu, tool_counts(metric_sums(out.decode()))


_PFLOGSUMM = {
    "sent": re.compile(r"^ *(\d+)([ km]) +delivered$", re.M),
    "deferred": re.compile(r"\((\d+)([ km]) deferrals\)"),
    "bounced": re.compile(r"^ *(\d+)([ km]) +bounced$", re.M),
}
_UNIT = {" ": 1, "k": 1024, "m": 1024 * 1024}


def pflogsumm_counts(text: str) -> dict[str, tuple[int, int]]:
    """Its grand totals as (count, unit): past 512k it prints whole thousands (1024s), cut."""
    got = {}
    for status, pattern in _PFLOGSUMM.items():
        m = pattern.search(text)
        got[status] = (int(m.group(1)), _UNIT[m.group(2)]) if m else (0, 1)
    return got


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Check:
    """Counts of the other tools against mailpulse's; a disagreement is named, never hidden."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, int, bool]] = []

    def __call__(self, tool: str, what: str, theirs: int, ours: int, unit: int = 1) -> None:
        shown = f"{theirs:,}" + {1: "", 1024: "k", 1024 * 1024: "m"}[unit]
        self.rows.append((tool, what, shown, ours, theirs == ours // unit))

    def report(self) -> bool:
        print(f"\n{'counts':<22}{'what':<32}{'tool':>14}{'mailpulse':>14}")
        for tool, what, theirs, ours, ok in self.rows:
            print(f"{tool:<22}{what:<32}{theirs:>14}{ours:>14,}{'' if ok else '   <-- DISAGREE'}")
        sys.stdout.flush()
        bad = [r for r in self.rows if not r[4]]
        for tool, what, theirs, ours, _ in bad:
            print(
                f"!!! {tool} and mailpulse disagree on {what}: {tool} {theirs}, mailpulse {ours:,}",
                file=sys.stderr,
            )
        return not bad


def main() -> int:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--lines", type=int, default=2_000_000)
    a.add_argument("--messages", type=int, default=10_000)
    a.add_argument("--source", type=Path, help="an existing Postfix log instead of a lab run")
    a.add_argument("--work", type=Path, help="keep the input here (default: a temp dir)")
    a.add_argument("--rounds", type=int, default=2, help="runs of mailpulse and pflogsumm")
    args = a.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="mailpulse-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)  # the lab's Postfix processes must reach their data directory below
    src = args.source or lab_log(args.messages, work / "lab")
    log = work / "maillog.big"
    n = scale(src, log, args.lines)
    print(f"input: {n} lines, {log.stat().st_size / 1e6:.0f} MB, from {src}")
    print(f"load average at the start: {load()} (other work on the machine)")

    results: dict[str, float] = {}
    cli = mailpulse_cli()
    timed = {
        "mailpulse report": [*cli, "logs", "report", str(log)],
        "mailpulse report --json": [*cli, "logs", "report", "--json", str(log)],
        "mailpulse parse --json": [*cli, "logs", "parse", "--json", str(log)],
        "in process: Report.add": [sys.executable, "-c", REPORT_IN_PROCESS, str(log)],
    }
    if shutil.which("pflogsumm"):
        timed["pflogsumm"] = ["pflogsumm", str(log)]
    printed: dict[str, bytes] = {}
    # In turn, `rounds` times over, the fastest run of each counting: a shared machine's load
    # moves during a run, and the ratios compare runs of the same rounds.
    kept = ("mailpulse report --json", "pflogsumm")  # what they print is checked below
    for _round in range(args.rounds):
        for name, argv in timed.items():
            out_to = subprocess.PIPE if name in kept else subprocess.DEVNULL
            cpu, printed[name] = child_cpu(argv, stdout=out_to, cwd=REPO)
            results[name] = min(cpu, results.get(name, cpu))
        cpu, rss, info = run_correlator(log)
        results["in process: feed_stream"] = min(cpu, results.get("in process: feed_stream", cpu))
    report = json.loads(printed["mailpulse report --json"])
    print(f"  feed_stream: events, lines, unparsed smtp, table size = {info}")
    head = work / "maillog.head"
    with log.open("rb") as f, head.open("wb") as dst:
        dst.writelines(itertools.islice(f, 200_000))
    _, rss_small, _ = run_correlator(head)

    # What mailpulse counted, the yardstick for the others.
    status = report["status"]
    events = parsed_events(log)
    check = Check()
    for s in ("sent", "deferred", "bounced", "expired"):
        parsed = sum(v for (_, st), v in events.items() if st == s)
        check("mailpulse parse", s, parsed, status[s])
    delay_lines = sum(
        v
        for (prog, st), v in events.items()
        if prog in DELAY_PROGRAMS and st in ("sent", "deferred", "bounced")
    )
    want = {
        "smtp/lmtp/pipe delivery lines": delay_lines,
        "smtp deferred": events[("smtp", "deferred")],
        "qmgr removed": report["messages"]["removed"],
    }

    if "pflogsumm" in printed:
        out = printed["pflogsumm"]
        # pflogsumm's "delivered" is every status=sent line (mailpulse's sent, content filter
        # relays aside: the lab has none), its deferrals and bounced are lines as mailpulse's
        # are; qmgr's "status=expired" lines have no to=<> and it does not count them.
        for s, (count, unit) in pflogsumm_counts(out.decode()).items():
            check("pflogsumm", s, count, status[s], unit)
    if shutil.which("prometheus-postfix-exporter"):
        results["postfix_exporter"], got = run_exporter(log, work, want)
        for what, ours in want.items():
            check("postfix_exporter", what, got.get(what, 0), ours)
    if shutil.which("mtail") and MTAIL_PROG.exists():
        results["mtail"], got = run_mtail(log, work)
        for what, ours in want.items():
            if what in got:  # mtail's example program has no deferral counter
                check("mtail", what, got[what], ours)
    agree = check.report()

    print(f"\n{'tool':<24}{'lines/s':>12}{'CPU s / M lines':>18}{'x mailpulse report':>20}")
    mp = results["mailpulse report"]
    for name, cpu in results.items():
        print(f"{name:<24}{n / cpu:>12,.0f}{cpu / n * 1e6:>18.2f}{cpu / mp:>20.2f}")
    others = {k: v for k, v in results.items() if not k.startswith(("mailpulse", "in process"))}
    print()
    if "pflogsumm" in others:
        for name in ("mailpulse report", "mailpulse report --json"):
            ratio = others["pflogsumm"] / results[name]
            print(f"pflogsumm / {name}: {ratio:.2f}x faster (target 3x)")
    if others:
        fastest = min(others, key=lambda k: others[k])
        print(f"{fastest} (the fastest other tool) / mailpulse report: {others[fastest] / mp:.2f}x")
    feed = results["in process: feed_stream"]
    for name in ("mailpulse report", "mailpulse parse --json"):
        print(f"{name} / in process: feed_stream, in lines/s: {feed / results[name]:.2f}")
    print("  (target: logs parse --json at least 0.5 of the in-process rate)")
    print(
        f"mailpulse feed_stream peak RSS: {rss_small / 1024:.1f} MiB after 200,000 lines, "
        f"{rss / 1024:.1f} MiB after {n:,} lines ({(rss / rss_small - 1) * 100:+.0f}%)"
    )
    print(f"load average at the end: {load()}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
