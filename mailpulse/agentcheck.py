"""HAProxy agent-check: the weight a load balancer should give this node, and the port it asks.

The answer is `up N%` from the worst of queue depth, queue growth and load, or `drain` while
receivers block the node's IP (a share of recent outcomes with a blocking reason).
"""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from mailpulse.config import AgentCheckConfig
from mailpulse.events import QueueSnapshot

log = logging.getLogger("mailpulse.agent")

# Queues whose messages still wait to leave: hold and corrupt never leave by themselves.
ACTIVE_QUEUES = ("maildrop", "incoming", "active", "deferred")


def health_weight(
    cfg: AgentCheckConfig, depth: int, growth_per_min: float, load1: float, cpus: int
) -> int:
    """HAProxy weight in percent: the worst of queue depth, queue growth and load decides."""
    factors = (
        1 - min(1.0, depth / cfg.queue_high),
        1 - min(1.0, max(0.0, growth_per_min) / cfg.growth_high_per_min),
        1 - min(1.0, load1 / (cfg.load_high_per_cpu * max(1, cpus))),
    )
    return max(cfg.min_weight_percent, round(100 * min(factors)))


class BlockWatch:
    """Share of recent outcomes whose reason says receivers block this node's IP."""

    def __init__(self, cfg: AgentCheckConfig) -> None:
        self.cfg = cfg
        self.reasons = frozenset(cfg.block_reasons)
        self._events: deque[tuple[float, bool]] = deque()
        self._lock = threading.Lock()

    def note(self, when: float, reason: str) -> None:
        if when < time.time() - self.cfg.block_window_s:
            return  # old lines read again after a restart say nothing about now
        with self._lock:
            self._events.append((when, reason in self.reasons))
            if len(self._events) > 200_000:
                self._events.popleft()

    def blocked(self) -> bool:
        cutoff = time.time() - self.cfg.block_window_s
        with self._lock:
            while self._events and self._events[0][0] < cutoff:
                self._events.popleft()
            total = len(self._events)
            hits = sum(1 for _, b in self._events if b)
        return hits >= self.cfg.block_min_failures and hits >= self.cfg.block_share * total


QueueLatest = Callable[[], Mapping[str, QueueSnapshot | None]]


class AgentCheck:
    """The answer to one agent-check, from the block watch, the queue samples and the load."""

    def __init__(
        self, cfg: AgentCheckConfig, blocks: BlockWatch, queues: QueueLatest | None
    ) -> None:
        self.cfg = cfg
        self.blocks = blocks
        self.queues = queues
        self.depths: deque[tuple[float, int]] = deque(maxlen=64)  # (sample time, depth)
        self._lock = threading.Lock()  # the agent-check threads share the depth history

    def queue_depth(self) -> tuple[int, float]:
        """Messages waiting (all instances) and their growth per minute over the last samples."""
        if self.queues is None:
            return 0, 0.0
        snaps = [s for s in self.queues().values() if s is not None]
        depth = sum(s.queues[q].messages for s in snaps for q in ACTIVE_QUEUES if q in s.queues)
        taken = max((s.taken_at for s in snaps), default=0.0)
        hist = self.depths
        if snaps and (not hist or hist[-1][0] != taken):
            hist.append((taken, depth))
        while len(hist) > 1 and taken - hist[0][0] > 600:
            hist.popleft()
        growth = 0.0
        if len(hist) > 1 and hist[-1][0] > hist[0][0]:
            growth = (hist[-1][1] - hist[0][1]) / ((hist[-1][0] - hist[0][0]) / 60)
        return depth, growth

    def answer(self) -> str:
        if self.blocks.blocked():
            return "drain"
        with self._lock:
            depth, growth = self.queue_depth()
        load1 = os.getloadavg()[0]
        weight = health_weight(self.cfg, depth, growth, load1, os.cpu_count() or 1)
        return f"up {weight}%"


class AgentCheckServer:
    """HAProxy agent-check: on each connection, one line (`up 80%`, or `drain`) and close.

    Every HAProxy in front of the node checks every few seconds, so connections come in
    bursts: they wait in a deep accept queue (a full one drops SYNs, which clients retry only
    after 1, 3, 7 s). Each connection has its own thread and a short timeout, so a client that
    never reads nor closes holds up no other and goes away after TIMEOUT_S.
    """

    BACKLOG = 1024  # the kernel caps it at net.core.somaxconn
    TIMEOUT_S = 2.0

    def __init__(self, listen: str, answer: Callable[[], str]) -> None:
        host, _, port = listen.rpartition(":")
        timeout = self.TIMEOUT_S

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                conn: socket.socket = self.request
                conn.settimeout(timeout)
                conn.sendall(answer().encode() + b"\n")
                # Read what the client sent (HAProxy's agent-send) until it closes: closing
                # with unread input would reset the connection and could lose the answer.
                conn.shutdown(socket.SHUT_WR)
                while conn.recv(4096):
                    pass

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = self.BACKLOG

            def handle_error(self, request: Any, client_address: Any) -> None:
                # Resets and timeouts are the client's business, not worth a traceback.
                log.debug("agent-check: connection from %s failed", client_address, exc_info=True)

        self.server = Server((host.strip("[]"), int(port)), Handler)
        self.address = self.server.server_address
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="agent-check", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
