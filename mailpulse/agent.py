"""`mailpulse agent`: one process per node that runs the collectors, keeps the state, serves it.

Threads: one per log source (follow, parse, count, commit counters and checkpoint together),
one background queue sampler per Postfix instance, the HTTP server for /metrics, and the
HAProxy agent-check port. The main thread waits for SIGTERM or SIGINT and shuts down cleanly.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import logging
import os
import signal
import socket
import socketserver
import sqlite3
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailpulse import __version__, catalogue
from mailpulse.config import AgentCheckConfig, Config
from mailpulse.domains import OTHER, DomainGroups
from mailpulse.events import DeliveryEvent, QueueSnapshot
from mailpulse.files import atomic_write
from mailpulse.postfix import Instance
from mailpulse.state import SeriesKey, State

if TYPE_CHECKING:
    from mailpulse.collectors.follower import LogSource
    from mailpulse.collectors.maillog import Correlator

log = logging.getLogger("mailpulse.agent")

FINAL_STATUSES = frozenset({"sent", "bounced", "expired"})
ACTIVE_QUEUES = ("maildrop", "incoming", "active", "deferred")
PROMOTED_META = "promoted_domains"


class TopDomains:
    """Domain group labels within a budget: the shipped/configured groups, plus up to K busy
    destinations of our own promoted to their own label, plus `other`.

    A promotion is permanent (persisted with the counters), so a series never vanishes and no
    counter ever goes backwards; what a domain counted before its promotion stays in `other`.
    """

    def __init__(self, groups: DomainGroups, k: int, min_count: int, promoted: Iterable[str] = ()):
        self.groups = groups
        self.k = k
        self.min_count = min_count
        self.promoted = set(promoted)
        self._counts: dict[str, int] = {}
        self._capacity = max(64, 20 * k)

    def label(self, domain: str, relay: str = "") -> str:
        group = self.groups.group(domain, relay)
        if group != OTHER or not domain:
            return group
        d = domain.lower()
        if d in self.promoted:
            return d
        if len(self.promoted) >= self.k:
            return OTHER
        n = self._counts.get(d, 0) + 1
        self._counts[d] = n
        if n >= self.min_count:
            self.promoted.add(d)
            del self._counts[d]
        elif len(self._counts) > 2 * self._capacity:
            # Keep the busiest: the long tail of one-off domains never costs more than this.
            keep = sorted(self._counts.items(), key=lambda kv: kv[1], reverse=True)
            self._counts = dict(keep[: self._capacity])
        return OTHER


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


class Accounting:
    """Delivery events into counters: the only place that decides which series an event feeds."""

    def __init__(self, state: State, domains: TopDomains, blocks: BlockWatch | None = None):
        self.state = state
        self.domains = domains
        self.blocks = blocks
        # Outcomes for the block watch, handed on with their commit: a batch that failed and is
        # read again must not be seen twice.
        self._notes: list[tuple[float, str]] = []

    def apply(self, ev: DeliveryEvent) -> None:
        group = self.domains.label(ev.domain, ev.relay)
        dsn_class = ev.dsn[:1] + "xx" if ev.dsn[:1] in ("2", "4", "5") else "unknown"
        self.state.inc(
            "mailpulse_deliveries_total", (ev.instance, ev.status, ev.reason, group, dsn_class)
        )
        if self.blocks is not None:
            self._notes.append((ev.time, ev.reason))
        if ev.status not in FINAL_STATUSES:
            return
        stages = dict(zip(catalogue.DELAY_STAGES, ev.delays or (), strict=False))
        stages["total"] = ev.delay
        for stage, seconds in stages.items():
            self.state.observe(
                "mailpulse_delivery_delay_seconds",
                (ev.instance, stage, ev.status),
                catalogue.DELAY_BUCKETS_S,
                seconds,
            )
        if ev.size is not None:
            self.state.observe(
                "mailpulse_message_size_bytes",
                (ev.instance,),
                catalogue.SIZE_BUCKETS_BYTES,
                float(ev.size),
            )

    def committed(self) -> None:
        if self.blocks is not None:
            for when, reason in self._notes:
                self.blocks.note(when, reason)
        self._notes.clear()

    def discard(self) -> None:
        self._notes.clear()

    def promoted_meta(self) -> dict[str, str]:
        return {PROMOTED_META: json.dumps(sorted(self.domains.promoted))}


MAX_PROGRAM_LABELS = 64  # programs named in parse errors; the rest count as "other"


def stats_series(name: str, programs: set[str]) -> SeriesKey | None:
    """Where one of the log correlator's stats counters goes in the catalogue (None: nowhere,
    e.g. events per status, which mailpulse_deliveries_total already counts)."""
    head, _, tail = name.partition(".")
    if name == "lines":
        return ("mailpulse_log_lines_total", ())
    if name == "evictions":
        return ("mailpulse_log_evicted_queue_ids_total", ())
    if head == "unparsed":
        if tail not in programs and len(programs) >= MAX_PROGRAM_LABELS:
            tail = "other"
        programs.add(tail)
        return ("mailpulse_log_parse_errors_total", (tail,))
    if head == "events":
        return None
    if head == "records":
        return ("mailpulse_log_records_total", (tail,))
    return ("mailpulse_log_records_total", (name.replace(".", "_"),))


# The log follower's own counts and where they go (entries: the journal's, counted as lines).
FOLLOW_EVENTS = {
    "rotations": "rotation",
    "truncations": "truncation",
    "lost_files": "lost_file",
    "bad_checkpoint": "bad_checkpoint",
    "bad_entries": "bad_entry",
}


def follow_series(name: str, target: str) -> SeriesKey | None:
    if name == "skipped_bytes":
        return ("mailpulse_log_skipped_bytes_total", (target,))
    if name in FOLLOW_EVENTS:
        return ("mailpulse_log_follow_events_total", (target, FOLLOW_EVENTS[name]))
    return None


@dataclass
class SourceStatus:
    up: bool = False
    last_ok: float = 0.0
    duration_s: float = 0.0


# Postfix's units on a systemd node: postfix.service and the instances' postfix@NAME.service.
JOURNAL_ARGS = ["-u", "postfix.service", "-u", "postfix@*.service"]


class LogPipeline(threading.Thread):
    """Follow one log source; each batch's counters and the checkpoint after it commit together.

    A batch that fails leaves nothing behind: its counts are dropped and the source is read
    again from the last commit, so the checkpoint never passes a line that was not counted.
    Meanwhile the source is down, the failure is counted and said once.
    """

    def __init__(
        self,
        source: Path | None,  # None: the journal
        state: State,
        accounting: Accounting,
        cfg: Config,
        stop: threading.Event,
        batch_lock: threading.Lock,
    ) -> None:
        super().__init__(name=f"log:{source or 'journal'}", daemon=True)
        self.source = source
        self.state = state
        self.accounting = accounting
        self.cfg = cfg
        self.stop_event = stop
        # A commit writes every pending counter: two sources' batches must not interleave, or
        # one would commit the other's counts without its checkpoint.
        self.batch_lock = batch_lock
        self.status = SourceStatus()
        self.target = key = str(source) if source else "journal"
        self.meta_key = f"checkpoint:{key}"
        safe = base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")
        self.checkpoint_path = cfg.state_dir / "checkpoints" / f"{safe}.ckpt"
        self.stats_seen: dict[str, int] = {}
        self.follow_seen: dict[str, int] = {}
        self.programs: set[str] = set()
        self.errors: dict[str, int] = {}  # failed reads by kind, since the agent started
        self._failing = ""  # the failure said last; "" while reading works

    def _restore_checkpoint(self) -> str:
        """The state's copy wins: it is the one that matches the counters. Returns why that
        copy is damaged, or ""."""
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        saved = self.state.meta(self.meta_key)
        self.checkpoint_path.unlink(missing_ok=True)
        if saved is None:
            return ""
        try:
            data = base64.b64decode(saved, validate=True)
        except ValueError as e:  # binascii.Error is one
            return f"not base64: {e}"
        atomic_write(self.checkpoint_path, data)
        return ""

    def _open(self) -> tuple[LogSource, Correlator]:
        """A follower at the last committed checkpoint and a fresh correlator, as at start."""
        from mailpulse.collectors.follower import JournalFollower, LogFollower
        from mailpulse.collectors.maillog import Correlator

        damage = self._restore_checkpoint()
        follower: LogSource = (
            LogFollower(self.source, self.checkpoint_path)
            if self.source
            else JournalFollower(
                self.checkpoint_path, journal_args=list(self.cfg.journal_args or JOURNAL_ARGS)
            )
        )
        correlator = Correlator(
            content_filters=self.cfg.content_filters, max_messages=self.cfg.max_messages
        )
        self.stats_seen, self.follow_seen = {}, {}
        damage = damage or follower.damage
        if damage:
            # The counters are the truth: they hold every line up to the checkpoint, and where
            # that was is lost. Read from the start, those lines would count twice; so reading
            # goes on from the log's end, and the damage is counted and said.
            follower.stats["bad_checkpoint"] = 1
            where = follower.seek_end()
            log.warning(
                "log source %s: checkpoint in %s damaged (%s); counters kept, reading from %s",
                self.target,
                self.state.path,
                damage,
                where,
            )
            self._commit(follower, correlator)
        return follower, correlator

    def run(self) -> None:
        from mailpulse.collectors.follower import LogUnreadable

        follower: LogSource | None = None
        correlator: Correlator | None = None
        while not self.stop_event.is_set():
            started = time.monotonic()
            n = 0
            try:
                with self.batch_lock:
                    try:
                        if follower is None or correlator is None:
                            follower, correlator = self._open()
                        n = self._batch(follower, correlator)
                    except BaseException:
                        self.state.rollback()
                        self.accounting.discard()
                        if follower is not None:
                            follower.close()
                        follower = None
                        raise
            except LogUnreadable as e:
                self._failed("unreadable", str(e), started)
            except Exception as e:
                log.debug("log source %s: batch failed", self.target, exc_info=True)
                self._failed("batch", f"a batch failed ({type(e).__name__}: {e})", started)
            else:
                if self._failing:
                    log.info("log source %s: read again, from its last checkpoint", self.target)
                    self._failing = ""
                self.status = SourceStatus(True, time.time(), time.monotonic() - started)
            if n == 0:
                self.stop_event.wait(self.cfg.log_poll_s)

    def _failed(self, kind: str, why: str, started: float) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.status = SourceStatus(False, self.status.last_ok, time.monotonic() - started)
        if why != self._failing:  # one line per failure, not one per retry
            log.error("log source %s: %s; nothing counted, retrying", self.target, why)
            self._failing = why

    def _batch(self, follower: LogSource, correlator: Correlator) -> int:
        before = correlator.lines
        for block in follower.read_blocks(self.cfg.log_read_bytes):
            for ev in correlator.feed_block(block):
                self.accounting.apply(ev)
        n: int = correlator.lines - before
        if n or follower.stats != self.follow_seen:
            self._commit(follower, correlator)
        return n

    def _commit(self, follower: LogSource, correlator: Correlator) -> None:
        """This batch's counters, the follower's own counts and the checkpoint after them, in
        one transaction."""
        for k, v in correlator.stats.items():
            delta = v - self.stats_seen.get(k, 0)
            series = stats_series(k, self.programs) if delta > 0 else None
            if series is not None:
                self.state.inc(*series, delta)
        for k, v in follower.stats.items():
            delta = v - self.follow_seen.get(k, 0)
            series = follow_series(k, self.target) if delta > 0 else None
            if series is not None:
                self.state.inc(*series, delta)
        self.stats_seen, self.follow_seen = dict(correlator.stats), dict(follower.stats)
        follower.save_checkpoint()
        meta = self.accounting.promoted_meta()
        with contextlib.suppress(FileNotFoundError):  # no file to follow yet: nothing to mark
            meta[self.meta_key] = base64.b64encode(self.checkpoint_path.read_bytes()).decode()
        self.state.commit(meta)
        self.accounting.committed()


class QueueWatch:
    """One background queue sampler per Postfix instance, and the depth history for growth."""

    def __init__(self, instances: list[Instance], cfg: Config, groups: DomainGroups) -> None:
        from mailpulse.collectors.queue import BackgroundQueueSampler, QueueSampler

        self.samplers = {
            inst.name: BackgroundQueueSampler(
                QueueSampler(
                    inst.config_dir,
                    instance=inst.name,
                    groups=groups,
                    queue_dir=inst.queue_dir,
                ),
                cfg.queue_interval_s,
            )
            for inst in instances
        }
        self.depths: deque[tuple[float, int]] = deque(maxlen=64)

    def start(self) -> None:
        for s in self.samplers.values():
            s.start()

    def stop(self) -> None:
        for s in self.samplers.values():
            s.stop()

    def latest(self) -> dict[str, QueueSnapshot | None]:
        return {name: s.latest() for name, s in self.samplers.items()}


def queue_series(snap: QueueSnapshot) -> dict[SeriesKey, float]:
    out: dict[SeriesKey, float] = {}
    inst = snap.instance
    for q, st in snap.queues.items():
        out[("mailpulse_queue_messages", (inst, q))] = st.messages
        out[("mailpulse_queue_recipients", (inst, q))] = st.recipients
        out[("mailpulse_queue_size_bytes", (inst, q))] = st.bytes
        out[("mailpulse_queue_oldest_message_age_seconds", (inst, q))] = st.oldest_age_s
    edges = snap.age_edges_min
    for (q, side, group, bucket), (messages, _rcpts) in snap.shape.items():
        if side != "recipient":
            continue
        age = f"lt{edges[bucket]}m" if bucket < len(edges) else f"ge{edges[-1]}m"
        key = ("mailpulse_queue_shape_messages", (inst, q, group, age))
        out[key] = out.get(key, 0) + messages
    for (group, deferral_class), n in snap.deferral_classes.items():
        out[("mailpulse_queue_deferred_recipients", (inst, group, deferral_class))] = n
    out[("mailpulse_queue_deferral_coverage_ratio", (inst,))] = snap.deferral_coverage
    for kind, n in snap.errors.items():
        out[("mailpulse_queue_read_errors", (inst, kind))] = n
    out[("mailpulse_queue_sample_complete", (inst,))] = 1.0 if snap.complete else 0.0
    return out


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


class AgentCheckServer:
    """HAProxy agent-check: on each connection, one line (`up 80%`, or `drain`) and close.

    Every HAProxy in front of the node checks every few seconds, so connections come in
    bursts: they wait in a deep accept queue (a full one drops SYNs, which clients retry only
    after 1, 3, 7 s). Each connection has its own thread and a short timeout, so a client that
    never reads nor closes holds up no other and goes away after TIMEOUT_S.
    """

    BACKLOG = 1024  # the kernel caps it at net.core.somaxconn
    TIMEOUT_S = 2.0

    def __init__(self, listen: str, answer: Any) -> None:
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


class StartupError(Exception):
    """This host keeps the agent from starting; the message names the setting and the cause."""


def listen_problem(key: str, listen: str, e: OSError) -> str:
    what = f"{key} {listen}"
    host, _, port = listen.rpartition(":")
    if isinstance(e, socket.gaierror):
        return f"{what}: not an IPv4 address or a name this host resolves ({e.strerror})"
    if e.errno == errno.EADDRINUSE:
        return f"{what}: address already in use{port_holder(int(port))}"
    if e.errno == errno.EADDRNOTAVAIL:
        return f"{what}: {host.strip('[]')} is not an address of this host"
    if e.errno == errno.EACCES:
        return f"{what}: permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)"
    return f"{what}: cannot listen: {e.strerror}"


def port_holder(port: int) -> str:
    """' by pid N (name)': who listens on this TCP port, when psutil may see it (root sees all)."""
    import psutil

    with contextlib.suppress(psutil.Error, OSError):
        for c in psutil.net_connections("tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return f" by pid {c.pid} ({psutil.Process(c.pid).name()})"
    return ""


def state_dir_problem(path: Path) -> str | None:
    """Whether the agent can keep its state in this directory; creates nothing."""
    existing = path
    while not existing.exists():  # it will be created in the nearest parent that exists
        existing = existing.parent
    if not existing.is_dir():
        return f"state_dir {path}: {existing} is not a directory"
    try:
        tempfile.NamedTemporaryFile(dir=existing, prefix=".mailpulse-").close()
    except OSError as e:
        return f"state_dir {path}: cannot write in {existing}: {e.strerror}"
    for name in ("state.sqlite", "state.sqlite-wal", "state.sqlite-shm"):
        f = path / name
        try:
            if f.exists():
                os.close(os.open(f, os.O_RDWR))
        except OSError as e:
            # Left alone, SQLite would take the file for corrupt and move it aside.
            return f"state_dir {path}: cannot write {f}: {e.strerror}"
    return None


def startup_problems(cfg: Config) -> list[str]:
    """What would stop the agent from starting, found without starting anything: the state
    directory must be writable and every listen address free to bind."""
    problems = [p for p in [state_dir_problem(cfg.state_dir)] if p]
    listens = [("listen", cfg.listen)]
    if cfg.agent_check.listen:
        listens.append(("agent_check.listen", cfg.agent_check.listen))
    bound: dict[int, str] = {}  # port -> key, held open so two keys on one port are caught
    socks = []
    try:
        for key, listen in listens:
            host, _, port = listen.rpartition(":")
            if int(port) in bound:
                problems.append(f"{key} {listen}: the same port as {bound[int(port)]}")
                continue
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            try:
                s.bind((host.strip("[]"), int(port)))
            except OSError as e:
                problems.append(listen_problem(key, listen, e))
            else:
                bound[int(port)] = key
    finally:
        for s in socks:
            s.close()
    return problems


class Agent:
    def __init__(self, cfg: Config, instances: list[Instance], log_sources: list[Path] | None):
        from mailpulse.collectors.host import HostSampler
        from mailpulse.exporters.prometheus import (
            CatalogueCollector,
            MetricsServer,
            load_web_config,
            make_registry,
        )

        self.cfg = cfg
        self.instances = instances
        self.stop_event = threading.Event()
        try:
            cfg.state_dir.mkdir(parents=True, exist_ok=True)
            self.state = State(cfg.state_dir / "state.sqlite")
        except (OSError, sqlite3.Error) as e:
            raise StartupError(f"state_dir {cfg.state_dir}: {e}") from None
        self.groups = DomainGroups(cfg.domain_groups)
        promoted = json.loads(self.state.meta(PROMOTED_META) or "[]")
        self.blocks = BlockWatch(cfg.agent_check)
        self.accounting = Accounting(
            self.state,
            TopDomains(self.groups, cfg.top_k, cfg.top_k_min_count, promoted),
            self.blocks,
        )
        sources: list[Path | None] = list(log_sources) if log_sources is not None else [None]
        batch_lock = threading.Lock()
        self.logs = [
            LogPipeline(s, self.state, self.accounting, cfg, self.stop_event, batch_lock)
            for s in sources
        ]
        self.queues = QueueWatch(instances, cfg, self.groups) if instances else None
        self.host = HostSampler(instances)
        self._host_cache: tuple[float, dict[SeriesKey, float]] = (0.0, {})
        self._host_status = SourceStatus()
        self._host_thread = threading.Thread(target=self._sample_host, name="host", daemon=True)
        self.common = {"node": cfg.node, "role": cfg.role}
        web = load_web_config(cfg.web_config_file)
        collector = CatalogueCollector(self.state, self.live, self.common)
        host, _, port = cfg.listen.rpartition(":")
        try:
            self.http = MetricsServer(
                make_registry(collector), (host.strip("[]"), int(port)), web, self.common
            )
        except OSError as e:
            raise StartupError(listen_problem("listen", cfg.listen, e)) from None
        self._check_lock = threading.Lock()  # the agent-check threads share the depth history
        self.check: AgentCheckServer | None = None
        if cfg.agent_check.listen:
            try:
                self.check = AgentCheckServer(cfg.agent_check.listen, self.agent_check_answer)
            except OSError as e:
                self.http.httpd.server_close()  # never served: shutdown() would wait forever
                raise StartupError(
                    listen_problem("agent_check.listen", cfg.agent_check.listen, e)
                ) from None

    # -- what a scrape sees -------------------------------------------------------------------
    def _sample_host(self) -> None:
        """In its own thread: a scrape never waits for psutil's walk over the processes."""
        while True:
            started = time.monotonic()
            try:
                sample = self.host.sample()
                status = SourceStatus(True, time.time(), time.monotonic() - started)
            except Exception:
                log.exception("host sample failed")
                sample = self._host_cache[1]
                status = SourceStatus(False, self._host_status.last_ok, time.monotonic() - started)
            self._host_cache, self._host_status = (time.monotonic(), sample), status
            if self.stop_event.wait(self.cfg.host_interval_s):
                return

    def host_sample(self) -> dict[SeriesKey, float]:
        return self._host_cache[1]

    def live(self) -> dict[SeriesKey, float]:
        out = dict(self.host_sample())
        now = time.time()
        statuses: list[tuple[str, str, SourceStatus]] = [("host", "", self._host_status)]
        for p in self.logs:
            statuses.append(("log", p.target, p.status))
            for kind, n in p.errors.items():
                out[("mailpulse_log_read_errors_total", (p.target, kind))] = n
        if self.queues is not None:
            for name, snap in self.queues.latest().items():
                if snap is None:
                    statuses.append(("queue", name, SourceStatus()))
                    continue
                out.update(queue_series(snap))
                fresh = now - snap.taken_at < 3 * self.cfg.queue_interval_s + snap.duration_s
                statuses.append(
                    ("queue", name, SourceStatus(fresh, snap.taken_at, snap.duration_s))
                )
        for source, inst, st in statuses:
            out[("mailpulse_source_up", (source, inst))] = 1.0 if st.up else 0.0
            if st.last_ok:
                out[("mailpulse_source_sample_age_seconds", (source, inst))] = now - st.last_ok
            out[("mailpulse_source_scan_duration_seconds", (source, inst))] = st.duration_s
        out[("mailpulse_domain_groups_promoted", ())] = len(self.accounting.domains.promoted)
        out[("mailpulse_agent_info", (__version__,))] = 1.0
        return out

    def queue_depth(self) -> tuple[int, float]:
        """Messages waiting (all instances) and their growth per minute over the last samples."""
        if self.queues is None:
            return 0, 0.0
        snaps = [s for s in self.queues.latest().values() if s is not None]
        depth = sum(s.queues[q].messages for s in snaps for q in ACTIVE_QUEUES if q in s.queues)
        taken = max((s.taken_at for s in snaps), default=0.0)
        hist = self.queues.depths
        if snaps and (not hist or hist[-1][0] != taken):
            hist.append((taken, depth))
        while len(hist) > 1 and taken - hist[0][0] > 600:
            hist.popleft()
        growth = 0.0
        if len(hist) > 1 and hist[-1][0] > hist[0][0]:
            growth = (hist[-1][1] - hist[0][1]) / ((hist[-1][0] - hist[0][0]) / 60)
        return depth, growth

    def agent_check_answer(self) -> str:
        if self.blocks.blocked():
            return "drain"
        with self._check_lock:
            depth, growth = self.queue_depth()
        load1 = os.getloadavg()[0]
        weight = health_weight(self.cfg.agent_check, depth, growth, load1, os.cpu_count() or 1)
        return f"up {weight}%"

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        for p in self.logs:
            p.start()
        if self.queues is not None:
            self.queues.start()
        self._host_thread.start()
        self.http.start()
        if self.check is not None:
            self.check.start()
        log.info(
            "mailpulse agent on %s:%s (node %s, role %s)",
            *self.http.address[:2],
            *self.common.values(),
        )

    def stop(self) -> None:
        self.stop_event.set()
        for p in self.logs:
            p.join(timeout=30)
        if self.queues is not None:
            self.queues.stop()
        if self.check is not None:
            self.check.stop()
        self.http.stop()
        # No commit here: each batch committed itself with its checkpoint, and a batch still
        # running (a source that did not stop in time) must not be committed without its own.
        self.state.close()


def run(cfg: Config, instances: list[Instance], log_sources: list[Path] | None) -> int:
    # The queue sampler's pure-Python walk over a big spool holds the GIL; hand it over more
    # often than the default 5 ms so a scrape arriving meanwhile is not kept waiting.
    sys.setswitchinterval(0.001)
    try:
        agent = Agent(cfg, instances, log_sources)
    except StartupError as e:  # taken since the check in main(): the same one line
        print(f"mailpulse agent: {e}", file=sys.stderr)
        return 1
    done = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: shutting down", signum)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.start()
    # systemd Type=notify without a library: tell it we listen now.
    notify = os.environ.get("NOTIFY_SOCKET")
    if notify:
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect("\0" + notify[1:] if notify.startswith("@") else notify)
            s.sendall(b"READY=1")
    done.wait()
    agent.stop()
    return 0


def main(args: Any) -> int:
    """The `agent` command."""

    from mailpulse.config import ConfigError, instances_to_watch, load_config
    from mailpulse.config import log_sources as find_log_sources
    from mailpulse.exporters.prometheus import WebConfigError, load_web_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        cfg = load_config(args.config)
        overrides: dict[str, Any] = {}
        if args.state_dir:
            overrides["state_dir"] = args.state_dir
        if getattr(args, "web_config_file", None):
            overrides["web_config_file"] = args.web_config_file
        if getattr(args, "listen", None):
            overrides["listen"] = args.listen
        if overrides:
            from dataclasses import replace

            cfg = replace(cfg, **overrides)
        load_web_config(cfg.web_config_file)
        instances = instances_to_watch(cfg)
        sources = find_log_sources(cfg, instances)
    except (ConfigError, WebConfigError) as e:
        print(f"mailpulse agent: {e}", file=sys.stderr)
        return 2
    problems = startup_problems(cfg)
    for p in problems:
        print(f"mailpulse agent: {p}", file=sys.stderr)
    if problems:
        return 1
    if args.check_config:
        print(f"config ok: {cfg.source or 'defaults'}")
        print(f"node {cfg.node}, role {cfg.role}, listen {cfg.listen}, state {cfg.state_dir}")
        for inst in instances:
            print(f"instance {inst.name}: {inst.config_dir}, queue {inst.queue_dir}")
        print("logs: " + (", ".join(map(str, sources)) if sources else "the journal"))
        return 0
    return run(cfg, instances, sources)
