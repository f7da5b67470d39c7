"""A state directory damaged or left behind in ways SQLite itself does not see: a meta value
that is no JSON, a histogram kept with another bucket layout (an older version's, or edited by
hand), a checkpoints directory left by a run as another user. Expected counts are the
deliveries the test wrote to the log; the agent must start, count each once, and
--check-config must name what would stop it."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

from lab.postfix import free_port
from tests.agent_support import AgentProcess, scrape, spoolless_postfix, wait_for
from tests.conftest import require_programs, require_root
from tests.test_agent_follow import deliveries, log_series, total


def agent_for(work: Path, log: Path) -> AgentProcess:
    port = free_port()
    config = work / "mailpulse.yml"
    config.write_text(
        f"node: mx1\nlisten: 127.0.0.1:{port}\n"
        f"postfix:\n  config_dirs: [{spoolless_postfix(work)}]\n"
        f"logs:\n  files: [{log}]\n  poll_interval: 0.1\nqueue:\n  interval: 5\n"
    )
    return AgentProcess(config, work / "state", port, work / "agent.log")


def counted(agent: AgentProcess, n: int) -> None:
    wait_for(
        lambda: total(agent.port, "mailpulse_deliveries_total") == n,
        30,
        f"{n} deliveries",
        lambda: log_series(agent.port),
    )


@pytest.mark.parametrize(
    "sql, delays",
    [
        # Bad input: the promoted domains' meta value cut short (no JSON), and one that is JSON
        # but no list; each made every start a traceback.
        ("UPDATE meta SET value = '[\"exam' WHERE key = 'promoted_domains'", 37),
        ("UPDATE meta SET value = '5' WHERE key = 'promoted_domains'", 37),
        # Bad input: every histogram kept with one bucket where the catalogue has many (as a
        # version with other buckets leaves it); each batch failed on it, nothing was counted.
        # Such a histogram starts again: it holds the 30 deliveries after the restart.
        (
            'UPDATE counters SET value = \'{"counts": [7], "sum": 8.4}\''
            " WHERE name LIKE '%_seconds' OR name LIKE '%_bytes'",
            30,
        ),
    ],
    ids=["promoted-not-json", "promoted-not-a-list", "histogram-other-buckets"],
)
def test_a_damaged_value_in_the_state_never_stops_counting(
    tmp_path: Path, sql: str, delays: int
) -> None:
    require_programs("postconf")
    log = tmp_path / "mail.log"
    log.write_bytes(deliveries(0, 7))
    agent = agent_for(tmp_path, log).start()
    try:
        counted(agent, 7)
    finally:
        agent.stop()
    db = sqlite3.connect(tmp_path / "state" / "state.sqlite")
    with db:
        assert db.execute(sql).rowcount > 0
    db.close()
    with log.open("ab") as f:
        f.write(deliveries(7, 30))
    agent.start()
    try:
        counted(agent, 37)
        assert "Traceback" not in (tmp_path / "agent.log").read_text()
        got = sum(
            v
            for (n, ls), v in scrape(agent.port).items()
            if n == "mailpulse_delivery_delay_seconds_count" and dict(ls).get("stage") == "total"
        )
        assert got == delays
    finally:
        agent.stop()


def test_a_checkpoints_directory_left_by_root_is_named_by_check_config() -> None:
    """Run as the real user nobody, as after `mailpulse agent` was tried once as root and the
    operator then gave the state directory and its database to the service's user."""
    require_root("to leave a root-owned directory and run the agent as nobody")
    require_programs("setpriv", "postconf")
    work = Path(tempfile.mkdtemp(prefix="mailpulse-nobody-"))  # outside root's private tmp
    try:
        work.chmod(0o755)
        log = work / "mail.log"
        log.write_bytes(deliveries(0, 5))
        log.chmod(0o644)
        agent = agent_for(work, log)
        agent.start()  # as root
        try:
            counted(agent, 5)
        finally:
            agent.stop()
        state = work / "state"
        # Bad input: the state directory and its database given to the user, checkpoints/ not
        # (chown without -R); the agent started, said "config ok" and then counted nothing.
        for p in [state, *state.glob("state.sqlite*")]:
            shutil.chown(p, "nobody", "nogroup")
        site = sysconfig.get_paths()["purelib"]
        boot = (
            f"import site, runpy; site.addsitedir({site!r}); "
            "runpy.run_module('mailpulse', run_name='__main__', alter_sys=True)"
        )
        r = subprocess.run(
            [
                "setpriv",
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}",
                "-c",
                boot,
                *agent.argv[3:],
                "--check-config",
            ],  # fmt: skip
            capture_output=True,
            text=True,
            cwd="/",
            timeout=120,
        )
        assert r.returncode == 1, r.stdout + r.stderr
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
        assert f"cannot write in {state / 'checkpoints'}: Permission denied" in r.stderr
    finally:
        shutil.rmtree(work, ignore_errors=True)
