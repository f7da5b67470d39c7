"""Queue sampling on a big deferred queue: mailpulse against qshape, postqueue -j and
Debian's prometheus-postfix-exporter, on the same queue in the same run.

    .venv/bin/python bench/queue.py [--messages 100000]   (as root; builds its own lab)

Builds a lab (retries put hours away, so the queue holds still), takes the remote MX down,
injects the messages over several SMTP connections and waits until they all sit in the deferred
queue. Then it times, in turn and `rounds` times over (the faster run counts), each as a whole
process under GNU time: `mailpulse queue` and `mailpulse queue --json` as an operator runs
them (qshape's table or the JSON, every reason read), one mailpulse sample in a fresh process
(queue files only: qshape's work), `qshape deferred`
and `qshape -s deferred`, and `postqueue -j`; beside them mailpulse's first sample timed inside
its process around sample(); then one /metrics scrape of prometheus-postfix-exporter pointed at
the lab's showq socket. mailpulse then samples until it has read every deferred message's
reasons, and after 1% new messages takes its next sample in the same process (its steady
state). Wall and CPU time and peak memory for each, then the ratios.

Every tool's counts are checked against the others' before any figure is printed: messages,
recipients and bytes per queue, recipients per recipient domain and messages per sender domain,
from mailpulse (command and in-process sampler), qshape, postqueue -j and the exporter, as far
as each tells them. Any disagreement ends the run with the differences and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lab.campaign import inject, make_plan  # noqa: E402
from lab.postfix import Lab, free_port, wait_until  # noqa: E402

# The mailpulse side runs in its own process, sampling on command, so its first sample pays
# for a cold start like the other tools and its later samples show the steady state.
SAMPLER = r"""
import json, sys, time
from pathlib import Path
from mailpulse.collectors.queue import QueueSampler
sampler = QueueSampler(Path(sys.argv[1]))
for line in sys.stdin:
    wall, cpu = time.perf_counter(), time.process_time()
    snap = sampler.sample()
    out = {
        "wall": time.perf_counter() - wall,
        "cpu": time.process_time() - cpu,
        # VmHWM, not ru_maxrss: the latter also counts the parent's memory before exec
        "peak_mb": int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
                       .split()[1]) / 1024,
        "deferred": snap.queues["deferred"].messages,
        "recipients": snap.queues["deferred"].recipients,
        "files_read": sampler.files_read,
        "coverage": snap.deferral_coverage,
    }
    if line.strip() == "counts":
        out["counts"] = {
            "queues": {q: [s.messages, s.recipients, s.bytes] for q, s in snap.queues.items()},
            "cells": [[q, k, d, m, r] for (q, k, d, _b), (m, r) in snap.domain_shape.items()],
            "errors": snap.errors,
        }
    print(json.dumps(out), flush=True)
"""

# One sample in a fresh process, as a whole process: the work qshape does (queue files only).
ONE_SAMPLE = r"""
import json, sys
from pathlib import Path
from mailpulse.collectors.queue import QueueSampler
from mailpulse.collectors.queue_report import snapshot_to_json
print(json.dumps(snapshot_to_json(QueueSampler(Path(sys.argv[1])).sample())))
"""

QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")


def run_tool(argv: list[str]) -> tuple[dict[str, float], str]:
    """Wall and CPU time and peak memory of one run of a command, as GNU time measures them
    (ru_maxrss of a child of this Python process would count Python's own pages), and what
    the command printed."""
    with tempfile.NamedTemporaryFile("r") as out, tempfile.TemporaryFile("w+") as stdout:
        start = time.perf_counter()
        r = subprocess.run(
            ["/usr/bin/time", "-f", "%e %U %S %M", "-o", out.name, *argv],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
        )
        wall = time.perf_counter() - start  # time's own %e has 10 ms steps
        if r.returncode != 0:
            raise SystemExit(f"{argv[0]} failed: {r.stderr.strip()}")
        _e, user, system, peak_kb = out.read().split()
        stdout.seek(0)
        printed = stdout.read()
    timing = {"wall": wall, "cpu": float(user) + float(system), "peak_mb": int(peak_kb) / 1024}
    return timing, printed


def scrape_exporter(lab: Lab) -> tuple[dict[str, float], str]:
    port = free_port()
    exporter = subprocess.Popen(
        [
            "prometheus-postfix-exporter",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--postfix.showq_path={lab.spool / 'public' / 'showq'}",
            f"--postfix.logfile_path={lab.maillog}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_until(lambda: not _port_free(port), 30, "the exporter to listen")
        ps = psutil.Process(exporter.pid)
        cpu0 = sum(ps.cpu_times()[:2])
        start = time.perf_counter()
        with urllib.request.urlopen(url, timeout=600) as r:  # noqa: S310 - loopback, ours
            body = r.read()
        wall = time.perf_counter() - start
        cpu = sum(ps.cpu_times()[:2]) - cpu0
        peak_kb = _vm_hwm_kb(exporter.pid)
        if b"postfix_showq_message_size_bytes_count" not in body:
            raise SystemExit("the exporter's scrape has no showq metrics")
        return {"wall": wall, "cpu": cpu, "peak_mb": peak_kb / 1024}, body.decode()
    finally:
        exporter.terminate()
        exporter.wait(30)


def _port_free(port: int) -> bool:
    from lab.postfix import port_free

    return port_free("127.0.0.1", port)


def _vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def fill(lab: Lab, n: int, name: str, seed: int, connections: int) -> None:
    plan = make_plan(n, bounce_domain=lab.bounce_domain, seed=seed, mx_down=True)
    inject(lab, plan, name, connections)
    wait_until(lab.queue_settled, 3600, "the queue to settle", step=1.0)


def _start_sampler(lab: Lab) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", SAMPLER, str(lab.etc)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def _sample(sampler: subprocess.Popen[str], command: str = "sample") -> dict[str, Any]:
    assert sampler.stdin and sampler.stdout
    sampler.stdin.write(command + "\n")
    sampler.stdin.flush()
    return dict(json.loads(sampler.stdout.readline()))


def _stop(sampler: subprocess.Popen[str]) -> None:
    assert sampler.stdin
    sampler.stdin.close()
    sampler.wait(60)


def _keep_best(results: dict[str, dict[str, float]], name: str, run: dict[str, float]) -> None:
    """The fastest wall and CPU time and the lowest peak of the runs so far (noisy machines)."""
    old = results.get(name)
    if old is not None:
        run = {k: min(v, old[k]) if k in ("wall", "cpu", "peak_mb") else v for k, v in run.items()}
    results[name] = run


# -- what each tool counted -------------------------------------------------------------
# Keys: (what, queue, domain): ("messages"|"recipients"|"bytes", queue, "") per queue,
# ("recipients", queue, recipient domain) and ("messages", queue, "from " + sender domain).
Counts = dict[tuple[str, str, str], int]


def _domain(address: str) -> str:
    """The domain of an address as qshape files it (lower case, after the last @): the lab's
    addresses need nothing more."""
    return address.rsplit("@", 1)[-1].lower().strip(".") if address else "MAILER-DAEMON"


def counts_of_postqueue(printed: str) -> Counts:
    out: Counter[tuple[str, str, str]] = Counter()
    for line in printed.splitlines():
        m = json.loads(line)
        q = m["queue_name"]
        out[("messages", q, "")] += 1
        out[("bytes", q, "")] += m["message_size"]
        out[("messages", q, "from " + _domain(m["sender"]))] += 1
        for r in m["recipients"]:
            out[("recipients", q, "")] += 1
            out[("recipients", q, _domain(r["address"]))] += 1
    return dict(out)


def counts_of_qshape(printed: str, sender: bool) -> Counts:
    """`qshape deferred` (recipients by domain) or `qshape -s deferred` (messages by sender)."""
    out: Counts = {}
    for line in printed.splitlines()[1:]:
        domain, total = line.split()[:2]
        if sender:
            key = ("messages", "deferred", "" if domain == "TOTAL" else "from " + domain)
        else:
            key = ("recipients", "deferred", "" if domain == "TOTAL" else domain)
        out[key] = int(total)
    return out


def counts_of_mailpulse(
    queues: dict[str, list[int]], cells: list[tuple[str, str, str, int, int]]
) -> Counts:
    out: Counter[tuple[str, str, str]] = Counter()
    for q, (messages, recipients, size) in queues.items():
        out[("messages", q, "")] += messages
        out[("recipients", q, "")] += recipients
        out[("bytes", q, "")] += size
    for q, kind, domain, messages, recipients in cells:
        if domain == "(other)":
            raise SystemExit("mailpulse folded domains into (other): raise top_domains")
        if kind == "sender":
            out[("messages", q, "from " + domain)] += messages
        else:
            out[("recipients", q, domain)] += recipients
    return dict(out)


def counts_of_mailpulse_json(printed: str) -> Counts:
    snap = json.loads(printed)
    queues = {q: [s["messages"], s["recipients"], s["bytes"]] for q, s in snap["queues"].items()}
    cells = [
        (c["queue"], c["kind"], c["domain"], c["messages"], c["recipients"])
        for c in snap["domains"]
    ]
    return counts_of_mailpulse(queues, cells)


def counts_of_exporter(body: str) -> Counts:
    out: Counts = {}
    for line in body.splitlines():
        for suffix, what in (("_count", "messages"), ("_sum", "bytes")):
            head = f'postfix_showq_message_size_bytes{suffix}{{queue="'
            if line.startswith(head):
                q = line[len(head) : line.index('"', len(head))]
                out[(what, q, "")] = int(float(line.rsplit(" ", 1)[1]))
    return out


def cross_check(
    reference: str, sources: dict[str, tuple[Counts, set[tuple[str, str, bool]]]]
) -> list[str]:
    """Each source against the reference, on what the source tells: a scope entry (what,
    queue, per domain) covers the queue's total (False) or every domain of it (True)."""
    ref = sources[reference][0]
    problems = []
    for name, (counts, scope) in sources.items():
        if name == reference:
            continue
        for what, q, per_domain in sorted(scope):
            mine = {
                k: n
                for k, n in counts.items()
                if k[:2] == (what, q) and bool(k[2]) == per_domain and n
            }
            theirs = {
                k: n
                for k, n in ref.items()
                if k[:2] == (what, q) and bool(k[2]) == per_domain and n
            }
            for k in sorted(mine.keys() | theirs.keys()):
                if mine.get(k, 0) != theirs.get(k, 0):
                    problems.append(
                        f"{name} says {k} = {mine.get(k, 0)}, {reference} says {theirs.get(k, 0)}"
                    )
    return problems


def _scope(
    whats: tuple[str, ...], queues: tuple[str, ...], per_domain: bool
) -> set[tuple[str, str, bool]]:
    return {(w, q, per_domain) for w in whats for q in queues}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2, help="runs of each tool; the fastest counts")
    ap.add_argument("--root", type=Path, help="lab directory (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="leave the lab running afterwards")
    args = ap.parse_args()
    for tool in ("postfix", "qshape", "postqueue", "prometheus-postfix-exporter", "/usr/bin/time"):
        if shutil.which(tool) is None:
            raise SystemExit(f"not installed: {tool} (make deps installs it)")
    mailpulse = Path(sys.executable).parent / "mailpulse"
    if not mailpulse.exists():
        raise SystemExit(f"not installed: {mailpulse} (pip install -e . installs it)")

    root = args.root or Path(tempfile.mkdtemp(prefix="mailpulse-bench-queue-"))
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    # Retries hours away: no message leaves the deferred queue while the tools are compared.
    still = {"minimal_backoff_time": "4h", "maximal_backoff_time": "8h", "queue_run_delay": "4h"}
    lab = Lab(root, smtp_port=free_port(), mx_port=free_port(), main_cf_extra=still)
    etc = str(lab.etc)
    try:
        lab.start()
        lab.mx_down()
        t = time.perf_counter()
        fill(lab, args.messages, "bench", 1, args.connections)
        print(
            f"queue built: {lab.queue_files('deferred')} deferred messages in {root}"
            f" ({time.perf_counter() - t:.0f} s)",
            flush=True,
        )

        # The queue was just written: flush it to disk first, so that whoever runs first does
        # not pay for the write-back. Then every tool runs `rounds` times in turn, mailpulse's
        # first sample in a fresh process each time, and the fastest run of each counts.
        os.sync()
        load_before = os.getloadavg()
        results: dict[str, dict[str, Any]] = {}
        printed: dict[str, str] = {}
        commands = {
            "mailpulse queue": [str(mailpulse), "queue", "-c", etc],
            "mailpulse queue --json": [str(mailpulse), "queue", "-c", etc, "--json"],
            "mailpulse one sample": [sys.executable, "-c", ONE_SAMPLE, etc],
            "qshape deferred": ["qshape", "-c", etc, "deferred"],
            "qshape -s deferred": ["qshape", "-c", etc, "-s", "deferred"],
            "postqueue -j": ["postqueue", "-c", etc, "-j"],
        }
        sampler: subprocess.Popen[str] | None = None
        for _round in range(args.rounds):
            if sampler is not None:
                _stop(sampler)
            sampler = _start_sampler(lab)
            first = _sample(sampler, "counts")
            in_process = first.pop("counts")
            _keep_best(results, "mailpulse first sample (in process)", first)
            for name, argv in commands.items():
                timing, printed[name] = run_tool(argv)
                _keep_best(results, name, timing)
        assert sampler is not None
        # The reasons, read by the next samples; their times add up to the cost of a full view.
        covering = [_sample(sampler)]
        while covering[-1]["coverage"] < 1.0 and len(covering) < 100:
            covering.append(_sample(sampler))
        results["mailpulse reasons (sum)"] = {
            "wall": sum(r["wall"] for r in covering),
            "cpu": sum(r["cpu"] for r in covering),
            "peak_mb": max(r["peak_mb"] for r in covering),
        }
        results["postfix-exporter /metrics"], printed["exporter"] = scrape_exporter(lab)
        load_after = os.getloadavg()

        # Every tool's counts, against postqueue -j (showq's full listing) on what each tells.
        everything = ("messages", "recipients", "bytes")
        sources = {
            "postqueue -j": (counts_of_postqueue(printed["postqueue -j"]), set()),
            "mailpulse queue --json": (
                counts_of_mailpulse_json(printed["mailpulse queue --json"]),
                _scope(everything, QUEUES, False)
                | _scope(("messages", "recipients"), QUEUES, True),
            ),
            "mailpulse one sample": (
                counts_of_mailpulse_json(printed["mailpulse one sample"]),
                _scope(everything, QUEUES, False)
                | _scope(("messages", "recipients"), QUEUES, True),
            ),
            "mailpulse sampler": (
                counts_of_mailpulse(in_process["queues"], in_process["cells"]),
                _scope(everything, QUEUES, False)
                | _scope(("messages", "recipients"), QUEUES, True),
            ),
            "qshape deferred": (
                counts_of_qshape(printed["qshape deferred"], sender=False),
                _scope(("recipients",), ("deferred",), False)
                | _scope(("recipients",), ("deferred",), True),
            ),
            "qshape -s deferred": (
                counts_of_qshape(printed["qshape -s deferred"], sender=True),
                _scope(("messages",), ("deferred",), False)
                | _scope(("messages",), ("deferred",), True),
            ),
            "postfix-exporter": (
                counts_of_exporter(printed["exporter"]),
                _scope(("messages", "bytes"), QUEUES, False),
            ),
        }
        reference = sources["postqueue -j"][0]
        problems = cross_check("postqueue -j", sources)
        if reference.get(("messages", "deferred", ""), 0) != lab.queue_files("deferred"):
            problems.append("postqueue -j does not list every deferred queue file")
        if in_process["errors"]:
            problems.append(f"mailpulse skipped files: {in_process['errors']}")
        if problems:
            print("\nThe tools disagree:", *problems[:50], sep="\n  ", file=sys.stderr)
            return 1
        checked = sum(len(scope) for _c, scope in sources.values())
        print(
            f"counts agree: {reference[('messages', 'deferred', '')]} messages,"
            f" {reference[('recipients', 'deferred', '')]} recipients,"
            f" {reference[('bytes', 'deferred', '')]} bytes deferred;"
            f" {len(sources) - 1} tools against postqueue -j over {checked} tables",
            flush=True,
        )

        fill(lab, max(1, args.messages // 100), "bench-more", 2, args.connections)
        os.sync()
        results["mailpulse after 1% new"] = _sample(sampler)
        results["mailpulse, nothing new"] = _sample(sampler)
        _stop(sampler)
    finally:
        if not args.keep:
            lab.destroy()

    print(f"\n{'':36}{'wall s':>10}{'CPU s':>10}{'peak MB':>10}")
    for name, r in results.items():
        print(f"{name:36}{r['wall']:10.3f}{r['cpu']:10.3f}{r['peak_mb']:10.1f}")
    first = results["mailpulse first sample (in process)"]
    steady = results["mailpulse after 1% new"]
    print(
        f"\nmessages sampled: {first['deferred']:.0f}, then {steady['deferred']:.0f}"
        f" (files read: {first['files_read']:.0f}, then"
        f" {steady['files_read'] - first['files_read']:.0f})"
    )
    walls = ", ".join(f"{r['wall']:.3f}" for r in covering)
    print(
        f"deferral coverage: {first['coverage']:.2f} after the first sample,"
        f" {covering[-1]['coverage']:.2f} after {len(covering)} more sample(s) of {walls} s"
    )
    print("postqueue -j's CPU is its client's only: showq does the work in Postfix's process")
    print(
        f"load average (1 min) {load_before[0]:.2f} before the timed runs,"
        f" {load_after[0]:.2f} after, on {os.cpu_count()} CPUs"
    )

    def ratio(other: str, mine: str) -> str:
        o, m = results[other], results[mine]
        return (
            f"{other:28} / {mine:36}: {o['wall'] / m['wall']:7.1f}x wall"
            f" {o['cpu'] / max(m['cpu'], 1e-6):7.1f}x CPU"
        )

    # As the user runs them, whole processes: qshape against the command (which reads every
    # reason too) and against one sample (queue files only, qshape's own work); postqueue -j
    # (every reason, from showq) against the command; then each against the in-process and
    # steady-state figures.
    print(ratio("qshape deferred", "mailpulse queue"))
    print(ratio("qshape deferred", "mailpulse one sample"))
    print(ratio("postqueue -j", "mailpulse queue"))
    print(ratio("postqueue -j", "mailpulse queue --json"))
    for other in ("qshape deferred", "postqueue -j", "postfix-exporter /metrics"):
        print(ratio(other, "mailpulse first sample (in process)"))
        print(ratio(other, "mailpulse after 1% new"))
    print(
        "targets: steady state >= 20x faster than qshape, first sample >= 2x,"
        " `mailpulse queue` (reasons included) >= 2x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
