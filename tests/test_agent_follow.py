"""The agent following a real log file when things go wrong: a log it may not read (as a real
non-root user), a damaged checkpoint in the state database, a batch that fails, rotations while
it is stopped. Expected counts are the deliveries the test wrote; nothing may be counted twice,
nothing lost without being counted and said."""

from __future__ import annotations

import base64
import gzip
import json
import logging
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mailpulse.collectors.maillog import Correlator

from lab.postfix import free_port
from mailpulse.agent import Agent
from mailpulse.events import DeliveryEvent
from mailpulse.series import Accounting
from tests.agent_support import AgentProcess, in_process_agent, scrape, spoolless_postfix, wait_for
from tests.conftest import require_programs, require_root

DELIVERY = (
    "Nov 28 10:{m:02d}:{s:02d} mx1 postfix/smtp[4242]: 4A{i:06X}C: to=<user{i}@gmail.com>,"
    " relay=gmail-smtp-in.l.google.com[142.250.1.27]:25, delay=1.2, delays=0.1/0.1/0.5/0.5,"
    " dsn=2.0.0, status=sent (250 2.0.0 OK 1700000000 abc.1 - gsmtp)\n"
)


def deliveries(first: int, n: int) -> bytes:
    return b"".join(
        DELIVERY.format(m=i // 60 % 60, s=i % 60, i=i).encode() for i in range(first, first + n)
    )


def total(port: int, name: str, **labels: str) -> float:
    return sum(
        v
        for (n, ls), v in scrape(port).items()
        if n == name and all(dict(ls).get(k) == want for k, want in labels.items())
    )


def log_series(port: int) -> dict[Any, float]:
    """What a failed wait shows: the log's own series."""
    return {
        k: v
        for k, v in scrape(port).items()
        if k[0].startswith(("mailpulse_log", "mailpulse_source_up", "mailpulse_deliveries"))
    }


@pytest.fixture
def agent_at(tmp_path: Path) -> Iterator[Any]:
    """Start the agent in this process over one log file; stopped at the end."""
    require_programs("postconf")
    started: list[Agent] = []

    def start(log: Path) -> tuple[Agent, int]:
        agent = in_process_agent(tmp_path, {"files": [str(log)]})
        started.append(agent)
        return agent, agent.http.address[1]

    yield start
    for agent in started:
        if not agent.stop_event.is_set():
            agent.stop()


def committed_offset(agent: Agent, log: Path) -> int:
    """Where the checkpoint committed with the counters says the log was read to."""
    saved = agent.state.meta(f"checkpoint:{log}")
    return int(json.loads(base64.b64decode(saved or ""))["offset"]) if saved else -1


def test_a_log_the_agent_may_not_read_is_said_once_shown_down_and_read_when_allowed() -> None:
    """Run as the real user nobody: the agent says in one line which file it cannot read and
    why, shows the source down with an error count, and reads the log once it may."""
    require_root("to run the agent as nobody and take a log's rights away and back")
    require_programs("setpriv", "postconf")
    work = Path(tempfile.mkdtemp(prefix="mailpulse-nobody-"))  # outside root's private tmp
    try:
        work.chmod(0o755)
        state = work / "state"
        state.mkdir()
        shutil.chown(state, "nobody", "nogroup")
        # Bad input: a log only root may read (mode 0600, root's), as after a rotation that
        # created the file with the wrong mode.
        log = work / "mail.log"
        log.write_bytes(deliveries(0, 12))
        log.chmod(0o600)
        port = free_port()
        config = work / "mailpulse.yml"
        config.write_text(
            f"node: mx1\nlisten: 127.0.0.1:{port}\n"
            f"postfix:\n  config_dirs: [{spoolless_postfix(work)}]\n"
            f"logs:\n  files: [{log}]\n  poll_interval: 0.1\nqueue:\n  interval: 5\n"
        )
        agent = AgentProcess(config, state, port, work / "agent.log")
        # The venv's interpreter lives under root's home, which nobody may not enter: the
        # system's Python of the same version runs the same installed tree.
        site = sysconfig.get_paths()["purelib"]
        boot = (
            f"import site, runpy; site.addsitedir({site!r}); "
            "runpy.run_module('mailpulse', run_name='__main__', alter_sys=True)"
        )
        agent.argv = [
            "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
            f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}", "-c", boot,
            *agent.argv[3:],
        ]  # fmt: skip
        agent.start()
        try:
            wait_for(
                lambda: total(port, "mailpulse_log_read_errors_total", kind="unreadable") >= 5,
                30,
                "five failed reads counted",
                lambda: log_series(port),
            )
            assert total(port, "mailpulse_source_up", source="log", target=str(log)) == 0
            assert total(port, "mailpulse_deliveries_total") == 0
            said = [x for x in (work / "agent.log").read_text().splitlines() if str(log) in x]
            assert len(said) == 1, said  # once, not once per retry
            assert "cannot read" in said[0] and "Permission denied" in said[0]
            assert "Traceback" not in (work / "agent.log").read_text()

            log.chmod(0o644)  # the rights come back
            wait_for(
                lambda: total(port, "mailpulse_deliveries_total") == 12,
                30,
                "the 12 deliveries once the log is readable",
                lambda: log_series(port),
            )
            assert total(port, "mailpulse_source_up", source="log", target=str(log)) == 1
            assert "read again" in (work / "agent.log").read_text()
        finally:
            agent.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("damage", ["not-json", "not-base64"])
def test_a_damaged_checkpoint_never_counts_a_line_twice(
    tmp_path: Path, agent_at: Any, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    log = tmp_path / "mail.log"
    log.write_bytes(deliveries(0, 20))
    agent, port = agent_at(log)
    wait_for(lambda: total(port, "mailpulse_deliveries_total") == 20, 30, "the first 20")
    agent.stop()
    # Bad input: the checkpoint row in the state database is damaged: text that decodes to
    # no JSON, or no base64 at all.
    bad = (
        base64.b64encode(b'{"inode": 1234, "offs').decode()
        if damage == "not-json"
        else "%%% not base64 %%%"
    )
    with sqlite3.connect(tmp_path / "state" / "state.sqlite") as db:
        changed = db.execute(
            "UPDATE meta SET value = ? WHERE key = ?", (bad, f"checkpoint:{log}")
        ).rowcount
    assert changed == 1
    with log.open("ab") as f:
        f.write(deliveries(20, 3))  # written while the agent was down
    caplog.set_level(logging.INFO, "mailpulse.agent")
    agent, port = agent_at(log)
    wait_for(
        lambda: total(port, "mailpulse_log_follow_events_total", event="bad_checkpoint") == 1,
        30,
        "the damaged checkpoint counted",
        lambda: log_series(port),
    )
    with log.open("ab") as f:
        f.write(deliveries(23, 7))
    wait_for(lambda: committed_offset(agent, log) == log.stat().st_size, 30, "the log read")
    # The counters are the truth: the 20 counted before stay counted once; where the damaged
    # checkpoint stood is unknown, so the 3 written while the agent was down are not counted
    # (the warning says so); the 7 written since are.
    assert total(port, "mailpulse_deliveries_total") == 27
    assert total(port, "mailpulse_source_up", source="log") == 1
    said = [r for r in caplog.records if "checkpoint" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING and said[0].exc_info is None
    assert str(log) in said[0].getMessage() and "damaged" in said[0].getMessage()


class FaultyAccounting(Accounting):
    """Stands for a bug in the counting (as a string delay once made state.py raise a
    TypeError): raises on one recipient while armed. Everything around it is the real agent."""

    armed = True

    def apply(self, ev: DeliveryEvent) -> None:
        if self.armed and ev.recipient == "user25@gmail.com":
            raise TypeError("'<' not supported between instances of 'str' and 'float'")
        super().apply(ev)


def test_a_failing_batch_is_shown_and_read_again_whole(
    tmp_path: Path, agent_at: Any, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "mail.log"
    log.write_bytes(deliveries(0, 20))
    caplog.set_level(logging.INFO, "mailpulse.agent")
    agent, port = agent_at(log)
    wait_for(lambda: total(port, "mailpulse_deliveries_total") == 20, 30, "the first 20")
    read_to = committed_offset(agent, log)
    assert read_to == log.stat().st_size
    faulty = FaultyAccounting(agent.state, agent.accounting.domains, agent.blocks)
    for p in agent.logs:
        p.accounting = faulty
    # Bad input: a batch of ten deliveries whose sixth the counting fails on.
    with log.open("ab") as f:
        f.write(deliveries(20, 10))
    wait_for(
        lambda: total(port, "mailpulse_log_read_errors_total", kind="batch") >= 5,
        30,
        "five failed batches counted",
        lambda: log_series(port),
    )
    # Nothing of the failing batch is counted (not even the five before the fault), the
    # checkpoint has not moved past it, and the source shows down.
    assert total(port, "mailpulse_deliveries_total") == 20
    assert committed_offset(agent, log) == read_to
    assert total(port, "mailpulse_source_up", source="log") == 0
    faulty.armed = False  # the fault goes away (a fixed release)
    wait_for(lambda: total(port, "mailpulse_deliveries_total") == 30, 30, "all 30, once")
    assert total(port, "mailpulse_source_up", source="log") == 1
    assert committed_offset(agent, log) == log.stat().st_size
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None  # one line, not one per retry
    assert "TypeError" in errors[0].getMessage() and str(log) in errors[0].getMessage()
    assert any("read again" in r.getMessage() for r in caplog.records)


def test_rotations_while_the_agent_is_stopped_are_read_in_full(
    tmp_path: Path, agent_at: Any
) -> None:
    require_programs("logrotate")
    log = tmp_path / "mail.log"
    log.write_bytes(deliveries(0, 400))
    agent, port = agent_at(log)
    wait_for(lambda: total(port, "mailpulse_deliveries_total") == 400, 30, "the first 400")
    agent.stop()
    # While the agent is down: 300 more lines in its file, rotated and compressed by logrotate;
    # another file's worth, rotated too; then the current file.
    conf = tmp_path / "logrotate.conf"
    conf.write_text(f"{log} {{\n  rotate 4\n  create\n  compress\n}}\n")
    rotate = ["logrotate", "-f", "-s", str(tmp_path / "logrotate.state"), str(conf)]
    with log.open("ab") as f:
        f.write(deliveries(400, 300))
    subprocess.run(rotate, check=True)
    log.write_bytes(deliveries(700, 200))
    subprocess.run(rotate, check=True)
    log.write_bytes(deliveries(900, 100))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("mail.log.")) == [
        "mail.log.1.gz",
        "mail.log.2.gz",
    ]
    agent, port = agent_at(log)
    wait_for(lambda: committed_offset(agent, log) == log.stat().st_size, 30, "the log read")
    # The same as one clean read of every file's text, oldest first.
    text = b"".join(
        gzip.decompress((tmp_path / n).read_bytes()) for n in ("mail.log.2.gz", "mail.log.1.gz")
    )
    clean = len(
        [ev for ev in Correlator().feed_block(text + log.read_bytes()) if ev.status == "sent"]
    )
    assert clean == 1000
    assert total(port, "mailpulse_deliveries_total") == clean
    assert total(port, "mailpulse_log_follow_events_total", event="lost_file") == 0
    assert total(port, "mailpulse_log_skipped_bytes_total") == 0
