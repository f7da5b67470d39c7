"""A private net-snmp snmpd on a free loopback UDP port, configured with the shipped snippet.

It never reads /etc/snmp: `-C -c FILE` gives it only our file, its persistent state goes to a
temporary directory, and it listens on 127.0.0.1 alone. The snippet's command and state
directory are replaced by this checkout's `mailpulse` and the test's state directory; nothing
else of it is changed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from lab.postfix import LabError, wait_until

REPO = Path(__file__).resolve().parent.parent
SNIPPET = REPO / "cacti_templates" / "snmpd.conf.d" / "mailpulse.conf"
COMMUNITY = "mailpulse"  # the snippet's


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for port in range(20000 + os.getpid() % 5000, 32000):
            with contextlib.suppress(OSError):
                s.bind(("127.0.0.1", port))
                return port
    raise LabError("no free loopback UDP port between 20000 and 32000")


def mailpulse_command() -> str:
    """This checkout's `mailpulse`: the venv's console script next to the interpreter."""
    script = Path(sys.executable).with_name("mailpulse")
    if not script.exists():
        raise LabError(f"{script} missing: pip install -e . first")
    return str(script)


def snippet_for(state_dir: Path, command: str) -> str:
    text = SNIPPET.read_text()
    return text.replace("/usr/bin/mailpulse", command).replace(
        "--state-dir /var/lib/mailpulse", f"--state-dir {state_dir}"
    )


class Snmpd:
    def __init__(self, workdir: Path, state_dir: Path) -> None:
        self.workdir = workdir
        self.state_dir = state_dir
        self.port = free_udp_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "snmpd.log"

    def start(self) -> Snmpd:
        binary = shutil.which("snmpd") or "/usr/sbin/snmpd"
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "snmpd.conf"
        conf.write_text(snippet_for(self.state_dir, mailpulse_command()))
        persist = self.workdir / "persist"
        persist.mkdir(exist_ok=True)
        argv = [
            binary, "-f", "-C", "-c", str(conf), "-Lf", str(self.log),
            "-p", str(self.workdir / "snmpd.pid"), f"udp:127.0.0.1:{self.port}",
        ]  # fmt: skip
        # Root's snmpd would change to the Debian-snmp user only if told; it stays root here,
        # and reads the state directory as the agent wrote it.
        env = {**os.environ, "SNMP_PERSISTENT_DIR": str(persist), "MIBS": ""}
        self.proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )

        def listening() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise LabError(f"snmpd exited {self.proc.returncode}: {self.log_text()}")
            return "NET-SNMP version" in self.log_text()

        wait_until(listening, 30, "snmpd to start")
        time.sleep(0.2)
        return self

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")
        return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
