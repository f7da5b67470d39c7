"""`make demo`: start the lab, send a campaign, run the agent on it and say where to look."""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from lab.campaign import run_campaign
from lab.postfix import Lab, LabError, port_free, port_owner, wait_until

AGENT_PORT = 9154


def agent_config(lab: Lab, port: int) -> str:
    return (
        f"node: {lab.node}\n"
        "role: bulk\n"
        f"listen: 127.0.0.1:{port}\n"
        f"postfix:\n  config_dirs: [{lab.etc}]\n"
        "queue:\n  interval: 5\n"
    )


def agent_pid(pidfile: Path) -> int | None:
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        pid = int(pidfile.read_text())
        os.kill(pid, 0)
        if b"mailpulse" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    return None


def check_agent_port(state_dir: Path, port: int) -> None:
    """The agent's port is free, or held by this demo's own agent: else say who holds it
    before anything starts (prometheus-postfix-exporter has the same default, 9154)."""
    if agent_pid(state_dir / "agent.pid") or port_free("127.0.0.1", port):
        return
    raise LabError(
        f"127.0.0.1:{port} is in use by {port_owner('127.0.0.1', port)}; stop it (for Debian's"
        " exporter: systemctl disable --now prometheus-postfix-exporter) or run the demo with"
        " --agent-port"
    )


def counted_note(planned: collections.Counter[str], seen: dict[str, float]) -> str:
    """Why the agent counts more `sent` than the plan: every bounce Postfix wrote back to the
    VERP sender was itself a delivery, to the lab's bounce Maildir."""
    dsns = planned["bounced"]
    return (
        f"sent {seen.get('sent', 0):.0f} = {planned['sent']} planned + {dsns} DSNs: each bounce"
        " Postfix sent back to bounce-<user_id>@ was itself delivered, to the Maildir below"
    )


def start_agent(lab: Lab, state_dir: Path, port: int) -> int:
    """The agent in the background, with the lab's Postfix as its only instance."""
    state_dir.mkdir(parents=True, exist_ok=True)
    pidfile = state_dir / "agent.pid"
    pid = agent_pid(pidfile)
    if pid:
        return pid
    config = state_dir / "agent.yaml"
    config.write_text(agent_config(lab, port))
    with (state_dir / "agent.log").open("ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mailpulse",
                "agent",
                "--config",
                str(config),
                "--state-dir",
                str(state_dir),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    pidfile.write_text(f"{proc.pid}\n")
    return proc.pid


def delivered_totals(port: int) -> dict[str, float]:
    """Deliveries per status, summed from the agent's own /metrics."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 (fixed loopback URL)
        text = r.read().decode()
    totals: dict[str, float] = collections.defaultdict(float)
    for line in text.splitlines():
        if line.startswith("mailpulse_deliveries_total{"):
            labels, value = line.rsplit(" ", 1)
            status = labels.split('status="', 1)[1].split('"', 1)[0]
            totals[status] += float(value)
    return totals


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.demo")
    p.add_argument("--root", type=Path, default=Path("/var/tmp/mailpulse-lab"))
    p.add_argument("--state-dir", type=Path, default=Path("/var/tmp/mailpulse-state"))
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--stop", action="store_true", help="stop the demo's agent and the lab")
    p.add_argument("--agent-port", type=int, default=AGENT_PORT, help="the agent's /metrics port")
    a = p.parse_args(argv)
    port = a.agent_port
    lab = Lab(a.root)
    if a.stop:
        pid = agent_pid(a.state_dir / "agent.pid")
        if pid:
            os.kill(pid, signal.SIGTERM)
        lab.stop()
        print("demo stopped: agent and lab")
        return 0
    try:
        check_agent_port(a.state_dir, port)
        lab.start()
        pid = start_agent(lab, a.state_dir, port)
        before: dict[str, float] | None = None

        def agent_settled() -> bool:  # up, and done with what the log already held
            nonlocal before
            try:
                last, before = before, delivered_totals(port)
            except OSError:
                return False
            return before == last

        wait_until(agent_settled, 120, f"the agent on 127.0.0.1:{port}", step=1.0)
        existing = len(list((lab.root / "campaigns").glob("demo-*.plan.jsonl")))
        name = f"demo-{existing + 1}"
        plan, plan_path = run_campaign(lab, a.messages, name, seed=existing + 1)
        planned = collections.Counter(x.status for x in plan)
        seen: dict[str, float] = {}

        # One outcome per planned recipient, plus the delivery of each DSN to the Maildir.
        expected = len(plan) + planned["bounced"]

        def caught_up() -> bool:
            nonlocal seen
            with contextlib.suppress(OSError):
                now = delivered_totals(port)
                seen = {k: v - (before or {}).get(k, 0) for k, v in now.items()}
            return sum(seen.values()) >= expected

        wait_until(caught_up, 120, "the agent to read the campaign", step=0.5)
    except LabError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    print(
        f"""
mailpulse demo
  lab Postfix      running, smtpd on 127.0.0.1:{lab.smtp_port}, config {lab.etc}
  remote MX        running on 127.0.0.{lab.mx_base_ip}-{lab.mx_base_ip + 11}:{lab.mx_port}
  campaign         {name}: {a.messages} messages, planned {dict(planned)}
  plan             {plan_path}
  Postfix log      {lab.maillog}
  bounces (DSNs)   {lab.maildir}/new
  agent            pid {pid}, config and log in {a.state_dir}
  metrics          http://127.0.0.1:{port}/metrics
  agent counted    {dict(seen)} for this campaign
                   {counted_note(planned, seen)}
  try              .venv/bin/mailpulse logs report {lab.maillog}
                   .venv/bin/mailpulse queue -c {lab.etc}
                   .venv/bin/mailpulse bounce parse {lab.maildir}
  stop             make lab-down (the lab and the agent)
"""
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
