"""`mailpulse agent`: one process per node that runs the collectors, keeps the state, serves it.

Threads: one per log source (follow, parse, count, commit counters and checkpoint together),
one background queue sampler per Postfix instance, the host sampler, the HTTP server for
/metrics, and the HAProxy agent-check port. The main thread waits for SIGTERM or SIGINT and
shuts down cleanly. What the collectors' outputs mean as series is mailpulse.series' business;
here they are only wired together.
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
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailpulse.agentcheck import AgentCheck, AgentCheckServer, BlockWatch
from mailpulse.collectors.host import HostSample, HostSampler
from mailpulse.config import Config
from mailpulse.domains import DomainGroups
from mailpulse.events import DeliveryEvent, QueueSnapshot
from mailpulse.files import atomic_write
from mailpulse.postfix import Instance
from mailpulse.profile import DriftWatch
from mailpulse.series import (
    BORN_META,
    PROMOTED_META,
    Accounting,
    Series,
    SourceStatus,
    TopDomains,
    follow_series,
    stats_series,
)
from mailpulse.state import State

if TYPE_CHECKING:
    from collections.abc import Callable

    from mailpulse.bounce.blacklist import BlacklistAgent
    from mailpulse.collectors.follower import LogSource
    from mailpulse.collectors.maillog import Correlator

log = logging.getLogger("mailpulse.agent")


# Postfix's settings change by hand, rarely: compare them with the profile every five minutes.
PROFILE_INTERVAL_S = 300.0
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
        self.events_to: Callable[[DeliveryEvent], None] | None = None  # the blacklist's
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
                if self.events_to is not None:
                    self.events_to(ev)
        for ev in correlator.flush():  # nothing held past the checkpoint
            self.accounting.apply(ev)
            if self.events_to is not None:
                self.events_to(ev)
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
    """One background queue sampler per Postfix instance."""

    def __init__(self, instances: list[Instance], cfg: Config, groups: DomainGroups) -> None:
        from mailpulse.collectors.background import BackgroundQueueSampler
        from mailpulse.collectors.queue import QueueSampler

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

    def start(self) -> None:
        for s in self.samplers.values():
            s.start()

    def stop(self) -> None:
        for s in self.samplers.values():
            s.stop()

    def latest(self) -> dict[str, QueueSnapshot | None]:
        return {name: s.latest() for name, s in self.samplers.items()}


class HostWatch:
    """The host sampler in its own thread: a scrape never waits for psutil's walk over the
    processes."""

    def __init__(self, instances: list[Instance], interval_s: float, stop: threading.Event):
        self.sampler = HostSampler(instances)
        self.interval_s = interval_s
        self.stop_event = stop
        self._latest: tuple[HostSample | None, SourceStatus] = (None, SourceStatus())
        self.thread = threading.Thread(target=self._run, name="host", daemon=True)

    def _run(self) -> None:
        while True:
            started = time.monotonic()
            sample, status = self._latest
            try:
                sample = self.sampler.sample()
                status = SourceStatus(True, time.time(), time.monotonic() - started)
            except Exception:
                log.exception("host sample failed")
                status = SourceStatus(False, status.last_ok, time.monotonic() - started)
            self._latest = (sample, status)
            if self.stop_event.wait(self.interval_s):
                return

    def start(self) -> None:
        self.thread.start()

    def latest(self) -> tuple[HostSample | None, SourceStatus]:
        return self._latest


class SnapshotWriter:
    """Every snmp.snapshot_interval: one Series.read() into the SNMP snapshot and the RRD
    archives; every few minutes, the day graphs the landing page shows."""

    DRAW_EVERY_S = 300.0

    def __init__(self, series: Series, cfg: Config, common: dict[str, str], stop: threading.Event):
        from mailpulse.exporters import rrd

        self.series = series
        self.cfg = cfg
        self.common = common
        self.stop_event = stop
        self.path = cfg.state_dir / "snapshot.json"
        self.rrd = rrd.RrdWriter(rrd.rrd_dir(cfg)) if cfg.rrd.enabled else None
        if self.rrd is not None and not rrd.available_here():
            log.warning("rrd.enabled, but the rrdtool module is missing: no archives, no graphs")
            self.rrd = None
        self.graph_dir = rrd.graph_dir(cfg)
        self._drawn = 0.0
        self._failing = ""
        self.thread = threading.Thread(target=self._run, name="snapshot", daemon=True)

    def write_once(self) -> None:
        from mailpulse.exporters import rrd, snmp

        now = time.time()
        doc = snmp.snapshot_document(self.series.read(), self.common, self.cfg.snmp.stale_after)
        snmp.write_snapshot(self.path, doc)
        if self.rrd is not None:
            self.rrd.update(doc["extend"], now)
            if now - self._drawn >= self.DRAW_EVERY_S:
                self._drawn = now
                g = self.cfg.graph
                rrd.draw(self.rrd.directory, self.graph_dir, g.width, g.height, ("day",))

    def _run(self) -> None:
        while True:
            try:
                self.write_once()
                self._failing = ""
            except Exception as e:  # said once; the next round tries again
                why = f"{type(e).__name__}: {e}"
                if why != self._failing:
                    log.error("snapshot %s: %s", self.path, why)
                    self._failing = why
            if self.stop_event.wait(self.cfg.snmp.snapshot_interval):
                return

    def start(self) -> None:
        self.thread.start()


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
    ckpt = path / "checkpoints"  # left by a run as another user, it stops every log source
    if ckpt.is_dir() and not os.access(ckpt, os.W_OK | os.X_OK):
        return f"state_dir {path}: cannot write in {ckpt}: Permission denied"
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


def domains_meta(state: State, key: str) -> list[str]:
    """A list of domains the state keeps (the promoted ones); damaged, it is said and started
    afresh: the domains are promoted again."""
    try:
        return [str(d) for d in json.loads(state.meta(key) or "[]")]
    except (ValueError, TypeError) as e:
        log.warning("state %s: %s unreadable (%s)", state.path, key, e)
        return []


class Agent:
    def __init__(self, cfg: Config, instances: list[Instance], log_sources: list[Path] | None):
        from mailpulse.exporters.prometheus import serve_metrics
        from mailpulse.exporters.web import WebServer, load_web_config

        self.cfg = cfg
        self.instances = instances
        self.stop_event = threading.Event()
        try:
            cfg.state_dir.mkdir(parents=True, exist_ok=True)
            self.state = State(cfg.state_dir / "state.sqlite")
        except (OSError, sqlite3.Error) as e:
            raise StartupError(f"state_dir {cfg.state_dir}: {e}") from None
        self.groups = DomainGroups(cfg.domain_groups)
        promoted, born = (domains_meta(self.state, key) for key in (PROMOTED_META, BORN_META))
        self.blocks = BlockWatch(cfg.agent_check)
        self.accounting = Accounting(
            self.state,
            TopDomains(self.groups, cfg.top_k, cfg.top_k_min_count, promoted, born),
            self.blocks,
        )
        sources: list[Path | None] = list(log_sources) if log_sources is not None else [None]
        batch_lock = threading.Lock()
        self.logs = [
            LogPipeline(s, self.state, self.accounting, cfg, self.stop_event, batch_lock)
            for s in sources
        ]
        self.queues = QueueWatch(instances, cfg, self.groups) if instances else None
        queues_latest = self.queues.latest if self.queues is not None else None
        self.host = HostWatch(instances, cfg.host_interval_s, self.stop_event)
        self.drift = (
            DriftWatch(instances, cfg.role, PROFILE_INTERVAL_S, self.stop_event)
            if instances
            else None
        )
        # The blacklist: the log's outcomes and the bounce Maildir into the policy, the store
        # into the Postfix table, the list served to the mailing software.
        self.blacklist: BlacklistAgent | None = None
        if cfg.blacklist.agent != "off":
            from mailpulse.bounce.blacklist import BlacklistAgent

            try:
                self.blacklist = BlacklistAgent(cfg, self.stop_event)
            except Exception as e:  # noqa: BLE001 - the store's own error, said in one line
                raise StartupError(f"blacklist store: {e}") from None
            for p in self.logs:
                p.events_to = self.blacklist.on_event
        self.series = Series(
            self.state,
            host=self.host.latest,
            queues=queues_latest,
            queue_interval_s=cfg.queue_interval_s,
            logs=self.logs,
            domains=self.accounting.domains,
            profile=self.drift.latest if self.drift is not None else None,
            blacklist=self.blacklist.blacklist.series if self.blacklist else None,
        )
        self.common = {"node": cfg.node, "role": cfg.role}
        web = load_web_config(cfg.web_config_file)
        host, _, port = cfg.listen.rpartition(":")
        try:
            self.http = WebServer((host.strip("[]"), int(port)), web, self.common)
        except OSError as e:
            raise StartupError(listen_problem("listen", cfg.listen, e)) from None
        serve_metrics(self.http, self.series, self.common)
        self.snapshots = SnapshotWriter(self.series, cfg, self.common, self.stop_event)
        if self.snapshots.rrd is not None:
            from mailpulse.exporters.rrd import serve_graphs

            serve_graphs(self.http, self.snapshots.graph_dir)
        if self.blacklist is not None:
            self.blacklist.serve(self.http)
        self.agent_check = AgentCheck(cfg.agent_check, self.blocks, queues_latest)
        self.check: AgentCheckServer | None = None
        if cfg.agent_check.listen:
            try:
                self.check = AgentCheckServer(cfg.agent_check.listen, self.agent_check.answer)
            except OSError as e:
                self.http.httpd.server_close()  # never served: shutdown() would wait forever
                raise StartupError(
                    listen_problem("agent_check.listen", cfg.agent_check.listen, e)
                ) from None

    def start(self) -> None:
        for p in self.logs:
            p.start()
        if self.queues is not None:
            self.queues.start()
        self.host.start()
        if self.drift is not None:
            self.drift.start()
        self.snapshots.start()
        if self.blacklist is not None:
            self.blacklist.start()
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
        if self.snapshots.thread.is_alive():  # it reads the state: done before it closes
            self.snapshots.thread.join(timeout=30)
        self.http.stop()
        if self.blacklist is not None:
            self.blacklist.stop()
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

    from mailpulse.config import ConfigError, instances_to_watch, load_for
    from mailpulse.config import log_sources as find_log_sources
    from mailpulse.exporters.web import WebConfigError, load_web_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        cfg = load_for(args)
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
