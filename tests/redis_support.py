"""A real redis-server on a free loopback port, in a temporary directory, for tests."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from lab.postfix import free_port, wait_until
from tests.conftest import require_programs


class RedisServer:
    """redis-server with an append-only file, so a stop and a start keep its data."""

    def __init__(self) -> None:
        require_programs("redis-server")
        self.dir = Path(tempfile.mkdtemp(prefix="mailpulse-redis-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "always"]
        argv += ["--save", "", "--protected-mode", "yes"]
        log = (self.dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log)
        log.close()
        wait_until(self.answers, 30, "redis-server to answer", step=0.05)
        return self

    def answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self.proc = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
