"""python -m lab up|down|status|campaign N|mx up|mx down|outage [DOMAIN ...]"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path

from lab.campaign import run_campaign
from lab.postfix import Lab, LabError

DEFAULT_ROOT = Path(os.environ.get("MAILPULSE_LAB_DIR", "/var/tmp/mailpulse-lab"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab", description=__doc__)
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="lab directory (%(default)s)")
    p.add_argument("--smtp-port", type=int, default=2525)
    p.add_argument("--mx-port", type=int, default=2526)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="start the remote MX and the private Postfix")
    sub.add_parser("down", help="stop both")
    sub.add_parser("status")
    c = sub.add_parser("campaign", help="send a campaign and wait for its first attempts")
    c.add_argument("n", type=int)
    c.add_argument("--name", default="campaign")
    c.add_argument("--seed", type=int, default=1)
    m = sub.add_parser("mx", help="take the remote MX down or bring it back")
    m.add_argument("state", choices=["up", "down"])
    o = sub.add_parser("outage", help="domains whose every recipient gets 550 5.1.1 (none: clear)")
    o.add_argument("domains", nargs="*")
    a = p.parse_args(argv)
    lab = Lab(a.root, smtp_port=a.smtp_port, mx_port=a.mx_port)
    try:
        if a.cmd == "up":
            lab.start()
            print(f"lab up: Postfix smtpd 127.0.0.1:{lab.smtp_port}, config {lab.etc}")
            print(f"  maillog {lab.maillog}\n  bounces {lab.maildir}")
        elif a.cmd == "down":
            lab.stop()
            print("lab down")
        elif a.cmd == "status":
            print(
                f"postfix {'running' if lab.postfix_running() else 'stopped'};"
                f" remote MX {'up' if lab.mx_running() else 'down'}; outage {lab.outage()}"
            )
        elif a.cmd == "campaign":
            plan, path = run_campaign(lab, a.n, a.name, a.seed)
            counts = collections.Counter(x.status for x in plan)
            print(f"campaign {a.name}: {a.n} messages, plan {path}: {dict(counts)}")
        elif a.cmd == "mx":
            lab.mx_up() if a.state == "up" else lab.mx_down()
        elif a.cmd == "outage":
            lab.set_outage(a.domains)
    except LabError as e:
        print(f"lab: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
