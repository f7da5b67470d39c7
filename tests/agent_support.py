"""Starting the real agent and a real Prometheus for tests and benchmarks."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lab.postfix import Lab, free_port, wait_until

SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

# The lab's campaign domains and the group a Postfix operator expects each in; written here
# from the providers' own brands, not read from mailpulse's map.
LAB_DOMAIN_GROUPS = {
    "gmail.com": "gmail",
    "yahoo.com": "yahoo",
    "aol.com": "yahoo",
    "outlook.com": "microsoft",
    "hotmail.com": "microsoft",
    "icloud.com": "apple",
    "gmx.de": "gmx",
    "web.de": "gmx",
    "orange.fr": "orange",
    "mail.ru": "mailru",
    "yandex.ru": "yandex",
    "comcast.net": "comcast",
}

Series = tuple[str, frozenset[tuple[str, str]]]


def parse_exposition(text: str) -> dict[Series, float]:
    out = {}
    for line in text.split("\n"):  # as Prometheus: a label value may hold "\r" or "\x85"
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if m:
            out[(m.group(1), frozenset(LABEL.findall(m.group(2) or "")))] = float(m.group(3))
    return out


def scrape(port: int, timeout: float = 10) -> dict[Series, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        return parse_exposition(r.read().decode())


def write_agent_config(path: Path, labs: list[Lab], port: int, extra: str = "") -> Path:
    dirs = ", ".join(str(lab.etc) for lab in labs)
    path.write_text(
        f"node: {labs[0].node}\nrole: bulk\nlisten: 127.0.0.1:{port}\n"
        f"postfix:\n  config_dirs: [{dirs}]\n"
        "logs:\n  poll_interval: 0.2\nqueue:\n  interval: 1\nhost:\n  interval: 1\n" + extra
    )
    return path


class AgentProcess:
    """`mailpulse agent` in the foreground, as a child process."""

    def __init__(self, config: Path, state_dir: Path, port: int, log: Path) -> None:
        self.argv = [sys.executable, "-m", "mailpulse", "agent", "--config", str(config)]
        self.argv += ["--state-dir", str(state_dir)]
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(self.argv, stdout=out, stderr=out)
        out.close()

        def answers() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited {self.proc.returncode}: {self.log.read_text()}")
            try:
                scrape(self.port, timeout=2)
            except OSError:
                return False
            return True

        wait_until(answers, 60, "the agent to serve /metrics", step=0.1)
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


class Prometheus:
    """The Debian prometheus, scraping the given targets every second."""

    def __init__(self, workdir: Path, targets: list[str]) -> None:
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = workdir / "prometheus.yml"
        cfg.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: mailpulse\n    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n"
        )
        self.log = workdir / "prometheus.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={cfg}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=out,
                stderr=out,
            )
        wait_until(self._ready, 60, "Prometheus to be ready", step=0.2)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def query(self, expr: str) -> list[dict[str, object]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr}
        )
        with urllib.request.urlopen(url, timeout=10) as r:
            data = json.loads(r.read())
        assert data["status"] == "success", data
        result: list[dict[str, object]] = data["data"]["result"]
        return result

    def stop(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(30)
        if self.proc.poll() is None:
            self.proc.kill()


def wait_for(
    pred: Callable[[], bool], timeout: float, what: str, show: Callable[[], object] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if pred():
                return
        if time.monotonic() > deadline:
            seen = f"; last seen: {show()}" if show else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{seen}")
        time.sleep(0.25)


def mailpulse(*argv: str) -> subprocess.CompletedProcess[str]:
    """The command line as a user runs it, with no terminal on stdin."""
    return subprocess.run(
        [sys.executable, "-m", "mailpulse", *argv],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,  # a command that hangs fails here instead of holding the suite
    )


def assert_one_line_error(r: subprocess.CompletedProcess[str], code: int, says: str) -> None:
    """A refusal as an operator should see it: one line on stderr, no traceback, the exit code."""
    assert r.returncode == code, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert says in r.stderr, r.stderr


def spoolless_postfix(where: Path) -> Path:
    """A Postfix config whose spool does not exist: the agent's queue source is down, and
    nothing of a system Postfix is touched."""
    etc = where / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "main.cf").write_text(f"queue_directory = {where / 'no-spool'}\n")
    return etc


def in_process_agent(where: Path, logs: dict[str, Any], queue_interval: float = 5) -> Any:
    """The agent started in this process over the given `logs:` settings and a spoolless
    Postfix; the caller stops it."""
    from mailpulse.agent import Agent
    from mailpulse.config import instances_to_watch, parse_config

    cfg = parse_config(
        {
            "listen": f"127.0.0.1:{free_port()}",
            "state_dir": str(where / "state"),
            "postfix": {"config_dirs": [str(spoolless_postfix(where))]},
            "logs": {"poll_interval": 0.1, **logs},
            "queue": {"interval": queue_interval},
        }
    )
    files = [Path(f) for f in logs.get("files", [])] or None
    agent = Agent(cfg, instances_to_watch(cfg), files)
    agent.start()
    return agent


@contextlib.contextmanager
def agent_over_log(where: Path, log: Path, queue_interval: float = 5) -> Iterator[Any]:
    """The agent in this process following one log file; stopped on the way out."""
    agent = in_process_agent(where, {"files": [str(log)]}, queue_interval)
    try:
        yield agent
    finally:
        if not agent.stop_event.is_set():
            agent.stop()
