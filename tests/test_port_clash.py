"""The agent's port taken by another program (as Debian's prometheus-postfix-exporter takes
9154): the agent and `make demo` each say in one line which address and which process, and stop
at once (the demo before it starts the lab); and what the demo's counts mean."""

from __future__ import annotations

import collections
import subprocess
import sys
import time
from pathlib import Path

from lab.demo import counted_note
from lab.postfix import free_port, port_free
from tests.agent_support import assert_one_line_error, mailpulse, spoolless_postfix
from tests.conftest import require_programs

HOLDER = (
    "import socket, sys, time\n"
    "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
    "print('ready', flush=True); time.sleep(300)\n"
)


def hold(port: int) -> subprocess.Popen[str]:
    """Another program listening on the port."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(port)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
    assert not port_free("127.0.0.1", port)
    return holder


def test_the_agent_names_the_program_holding_its_port_and_stops(tmp_path: Path) -> None:
    require_programs("postconf")
    port = free_port()
    config = tmp_path / "mailpulse.yml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\npostfix:\n  config_dirs: [{spoolless_postfix(tmp_path)}]\n"
        f"logs:\n  files: [{tmp_path / 'mail.log'}]\n"
    )
    (tmp_path / "mail.log").touch()
    holder = hold(port)
    try:
        for check in (["--check-config"], []):
            r = mailpulse(
                "agent", "--config", str(config), "--state-dir", str(tmp_path / "s"), *check
            )
            assert_one_line_error(
                r, 1, f"listen 127.0.0.1:{port}: address already in use by pid {holder.pid} ("
            )
    finally:
        holder.kill()
        holder.wait()


def test_demo_refuses_a_taken_port_naming_its_holder_before_starting_anything(
    tmp_path: Path,
) -> None:
    port = free_port()
    holder = hold(port)
    try:
        started = time.monotonic()
        r = subprocess.run(
            [sys.executable, "-m", "lab.demo", "--root", str(tmp_path / "lab")]
            + ["--state-dir", str(tmp_path / "state"), "--agent-port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        took = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 1 and r.stdout == ""
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"demo: 127.0.0.1:{port} is in use by pid {holder.pid} (")
    assert "-c import socket" in line and "prometheus-postfix-exporter" in line
    assert not (tmp_path / "lab" / "etc").exists()  # the lab was not started
    assert took < 60  # not the two-minute wait for an agent that never came (generous bound)


def test_the_demo_says_why_sent_is_more_than_planned() -> None:
    planned = collections.Counter({"sent": 704, "bounced": 179, "deferred": 117})
    note = counted_note(planned, {"sent": 883.0, "bounced": 179.0})
    assert note.startswith("sent 883 = 704 planned + 179 DSNs")
    assert "Maildir" in note
