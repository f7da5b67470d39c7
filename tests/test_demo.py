"""`make demo` with its port taken (as prometheus-postfix-exporter takes 9154): one line naming
the process that holds it, at once, before the lab starts; and what its counts mean."""

from __future__ import annotations

import collections
import subprocess
import sys
import time
from pathlib import Path

from lab.demo import counted_note
from lab.postfix import free_port, port_free

HOLDER = (
    "import socket, sys, time\n"
    "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
    "print('ready', flush=True); time.sleep(300)\n"
)


def test_demo_refuses_a_taken_port_naming_its_holder_before_starting_anything(
    tmp_path: Path,
) -> None:
    port = free_port()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        assert not port_free("127.0.0.1", port)
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
