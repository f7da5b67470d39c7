"""The lab's delivery rate with Postfix's defaults (as Debian ships them) and with the bulk
profile, in one run on one machine.

    .venv/bin/python bench/profile.py [--messages 20000] [--rounds 1]   (as root)

For each configuration it builds a fresh lab node (the same loopback remote MX, the same
campaign plan), injects the campaign with every message put on hold as it arrives (an
end-of-data HOLD, so injection is timed apart and delivery starts from a full queue for both),
then releases the hold queue, flushes, and times until every planned recipient has had its
first delivery attempt logged: the time the campaign takes to drain. The rate is the messages
delivered to the remote MX (status=sent) per second of that time, and attempts (sent, bounced
or deferred) per second beside it. Rounds alternate the order of the two configurations;
the best round of each counts. Outcomes are read from the maillog with this file's own regex
and checked against the plan: a configuration that delivers differently ends the run, exit 1.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lab.campaign import inject, make_plan  # noqa: E402
from lab.postfix import Lab, free_port, wait_until  # noqa: E402
from lab.profiles import lab_kwargs, make_tables  # noqa: E402

STATUS = re.compile(rb"\]: [0-9A-F]+: to=<([^>]+)>,.*? status=(sent|bounced|deferred)")
HOLD = {"smtpd_end_of_data_restrictions": "check_client_access static:HOLD"}


def one_run(config: str, n: int, connections: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if config == "bulk":
        kwargs, _kept = lab_kwargs("bulk")
    kwargs["main_cf_extra"] = {**kwargs.get("main_cf_extra", {}), **HOLD}
    root = Path(tempfile.mkdtemp(prefix="mailpulse-bench-profile-"))
    os.chmod(root, 0o755)
    lab = Lab(root, smtp_port=free_port(), mx_port=0, **kwargs)
    lab.mx_port = free_port(lab.mx_addresses())
    try:
        lab.start()
        if config == "bulk":
            make_tables(lab)
        plan = make_plan(n, bounce_domain=lab.bounce_domain, seed=11)
        started = time.perf_counter()
        inject(lab, plan, f"bench-{config}", connections)
        wait_until(lambda: lab.queue_files("hold") >= n, 600, "every message on hold", 0.25)
        injected_s = time.perf_counter() - started

        offset = lab.maillog.stat().st_size
        planned = {p.recipient.encode() for p in plan}
        first: dict[bytes, bytes] = {}
        buffer = b""
        etc = str(lab.etc)
        started = time.perf_counter()
        subprocess.run(["postsuper", "-c", etc, "-H", "ALL"], check=True, capture_output=True)
        lab.flush()

        def all_attempted() -> bool:
            nonlocal offset, buffer
            with lab.maillog.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            offset += len(chunk)
            buffer += chunk
            lines = buffer.split(b"\n")
            buffer = lines.pop()
            for line in lines:
                m = STATUS.search(line)
                if m and m.group(1) in planned:
                    first.setdefault(m.group(1), m.group(2))
            return len(first) == n

        wait_until(all_attempted, 3600, "every recipient's first attempt", 0.25)
        drain_s = time.perf_counter() - started
        statuses = Counter(v.decode() for v in first.values())
        wrong = [p.recipient for p in plan if first[p.recipient.encode()].decode() != p.status]
        return {
            "config": config,
            "injected_s": injected_s,
            "drain_s": drain_s,
            "sent": statuses["sent"],
            "attempts": n,
            "statuses": dict(statuses),
            "wrong": wrong,
        }
    finally:
        lab.destroy()
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--connections", type=int, default=8, help="SMTP connections injecting")
    ap.add_argument("--rounds", type=int, default=1, help="rounds; the best of each counts")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/profile.py: run as root (the lab runs a private Postfix)", file=sys.stderr)
        return 2
    best: dict[str, dict[str, Any]] = {}
    for r in range(args.rounds):
        order = ("debian", "bulk") if r % 2 == 0 else ("bulk", "debian")
        for config in order:
            res = one_run(config, args.messages, args.connections)
            print(
                f"round {r + 1} {config:7} injected in {res['injected_s']:7.1f}s,"
                f" drained in {res['drain_s']:7.1f}s, {res['statuses']}",
                flush=True,
            )
            if res["wrong"]:
                print(
                    f"{config}: {len(res['wrong'])} recipients not as planned,"
                    f" e.g. {res['wrong'][:3]}",
                    file=sys.stderr,
                )
                return 1
            if config not in best or res["drain_s"] < best[config]["drain_s"]:
                best[config] = res

    print(f"\n{args.messages} messages, {os.cpu_count()} CPUs, best of {args.rounds} round(s)")
    print(f"{'':10}{'drain s':>10}{'sent/s':>10}{'attempts/s':>12}{'inject s':>10}")
    for config in ("debian", "bulk"):
        b = best[config]
        print(
            f"{config:10}{b['drain_s']:10.1f}{b['sent'] / b['drain_s']:10.1f}"
            f"{b['attempts'] / b['drain_s']:12.1f}{b['injected_s']:10.1f}"
        )
    ratio = best["debian"]["drain_s"] / best["bulk"]["drain_s"]
    print(
        f"bulk profile drains {ratio:.2f}x as fast as Debian's defaults"
        f" ({'faster' if ratio >= 1 else 'SLOWER'})"
    )
    return 0 if ratio >= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
