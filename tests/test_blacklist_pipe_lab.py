"""The README's pipe(8) line, `mailpulse blacklist ingest --dsn -`, run by a real Postfix for a
real bounce: while the blacklist cannot record it its exit code must make Postfix keep the mail
(deferred, tried again), never bounce it back for good; once it can, the mail is delivered."""

from __future__ import annotations

import re
import shutil
import smtplib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from lab.postfix import Lab, run_in_pty, wait_until
from tests.conftest import REPO, require_programs

PIPE_DOMAIN = "pipe.lab.test"


@pytest.fixture
def readable_copy() -> Iterator[Path]:
    target = install_readable_copy()
    yield target
    shutil.rmtree(target, ignore_errors=True)


def install_readable_copy() -> Path:
    """mailpulse installed where pipe(8)'s unprivileged user reaches it (this checkout's venv
    may sit under a private home), run by Debian's python3 with Debian's python3-* packages."""
    target = Path(tempfile.mkdtemp(prefix="mailpulse-pipe-"))
    target.chmod(0o755)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps"]
        + ["--no-compile", "--target", str(target), str(REPO)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return target


@pytest.mark.lab
def test_pipe_delivery_of_a_bounce_is_deferred_not_bounced(lab: Lab, readable_copy: Path) -> None:
    require_programs("/usr/bin/python3")
    target = readable_copy
    # Bad input: a state directory the pipe's user may not write (the store cannot be opened).
    state = readable_copy / "state"  # under a directory the pipe's user can reach
    state.mkdir(mode=0o755)
    # The README's master.cf service, with this copy's interpreter and path.
    argv = (
        f"/usr/bin/env PYTHONPATH={target} MAILPULSE_ENVELOPE_RECIPIENT=${{recipient}}"
        f" /usr/bin/python3 -m mailpulse blacklist ingest --state-dir {state} --dsn -"
    )
    with (lab.etc / "master.cf").open("a") as f:
        f.write(f"mailpulse unix - n n - 4 pipe\n  flags=DOq user=nobody argv={argv}\n")
    with (lab.etc / "transport").open("a") as f:
        f.write(f"{PIPE_DOMAIN} mailpulse:\n")
    run_in_pty(["postfix", "-c", str(lab.etc), "reload"], timeout=60, env=lab._env())

    msg = EmailMessage()
    msg["From"] = "MAILER-DAEMON@example.net"
    msg["To"] = f"bounce-42@{PIPE_DOMAIN}"
    msg["Subject"] = "Undelivered Mail Returned to Sender"
    msg.set_content("This is the mail system at host example.net.\n")
    with smtplib.SMTP("127.0.0.1", lab.smtp_port, timeout=30) as smtp:
        smtp.send_message(msg, from_addr="", to_addrs=[f"bounce-42@{PIPE_DOMAIN}"])

    delivery = re.compile(rf"to=<bounce-42@{PIPE_DOMAIN}>, relay=mailpulse, .*")

    def tried(status: str) -> str | None:
        for found in delivery.finditer(lab.maillog.read_text(errors="replace")):
            if f"status={status}" in found.group(0):
                return found.group(0)
        return None

    wait_until(lambda: tried("deferred") is not None, 60, "Postfix's pipe(8) delivery")
    line = tried("deferred") or ""
    # EX_TEMPFAIL: deferred with a 4.x.x status, the command's one line said beside it.
    assert "dsn=4.3.0" in line and "blacklist store" in line, line
    assert lab.queue_files("deferred") == 1  # kept for the next try, not bounced
    assert tried("bounced") is None

    # The store can be written now: the next try records it and Postfix delivers.
    shutil.chown(state, "nobody")
    lab.flush()
    wait_until(
        lambda: tried("sent") is not None,
        120,
        "the retried pipe(8) delivery",
    )
    assert "dsn=2.0.0" in (tried("sent") or ""), lab.maillog.read_text(errors="replace")[-2000:]
    assert lab.queue_files("deferred") == 0 and tried("bounced") is None
    assert (state / "blacklist.sqlite").exists()
