"""`make demo`: start the lab, send a campaign, then run mailpulse on it and say where to look."""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

from lab.campaign import run_campaign
from lab.postfix import Lab, LabError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.demo")
    p.add_argument("--root", type=Path, default=Path("/var/tmp/mailpulse-lab"))
    p.add_argument("--state-dir", type=Path, default=Path("/var/tmp/mailpulse-state"))
    p.add_argument("--messages", type=int, default=1000)
    a = p.parse_args(argv)
    lab = Lab(a.root)
    try:
        lab.start()
        existing = len(list((lab.root / "campaigns").glob("demo-*.plan.jsonl")))
        name = f"demo-{existing + 1}"
        plan, plan_path = run_campaign(lab, a.messages, name, seed=existing + 1)
    except LabError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    counts = collections.Counter(x.status for x in plan)
    print(
        f"""
mailpulse demo
  lab Postfix      running, smtpd on 127.0.0.1:{lab.smtp_port}, config {lab.etc}
  remote MX        running on 127.0.0.{lab.mx_base_ip}-{lab.mx_base_ip + 11}:{lab.mx_port}
  campaign         {name}: {a.messages} messages {dict(counts)}
  plan             {plan_path}
  Postfix log      {lab.maillog}
  bounces (DSNs)   {lab.maildir}/new
  stop the lab     .venv/bin/python -m lab --root {lab.root} down
"""
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
