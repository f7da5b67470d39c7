"""Collector outputs onto the catalogue's series: the one place that decides which series a
delivery event, a log reader's counts, a queue snapshot or a host sample feeds.

Counters go into the State (committed with the log position that produced them); gauges are
mapped from the latest samples when read. `Series.read()` gives every series' current value in
one call: the Prometheus collector reads it, and so will the SNMP snapshot and the RRD writer,
so no two outputs can ever disagree.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Protocol

from mailpulse import __version__, catalogue
from mailpulse.collectors.host import HostSample
from mailpulse.domains import OTHER, DomainGroups
from mailpulse.events import FINAL_STATUSES, DeliveryEvent, QueueSnapshot
from mailpulse.state import Histogram, SeriesKey, State

log = logging.getLogger(__name__)

# Statuses after which a recipient's trip is over: the ones its delays and size are recorded on.
PROMOTED_META = "promoted_domains"
BORN_META = "promoted_domains_unread"  # promoted, but their series at 0 not read by an output
DELIVERIES = "mailpulse_deliveries_total"
GROUP_AT = catalogue.BY_NAME[DELIVERIES].labels.index("domain_group")
MAX_PROGRAM_LABELS = 64  # programs named in parse errors; the rest count as "other"

# What a read gives: counters and gauges as numbers, histograms as their buckets.
Reading = dict[SeriesKey, float | Histogram]


class TopDomains:
    """Domain group labels within a budget: the shipped/configured groups, plus up to K busy
    destinations of our own promoted to their own label, plus `other`.

    A promotion never breaks a series: it is permanent (persisted with the counters), so a
    series never vanishes and no counter ever goes backwards, and what a domain counted before
    stays in `other`. A promoted domain is first only *born*: its series are made at 0 while its
    deliveries still count in `other`, until an output has read those zeros (`seen`); only then
    do they count under its own name. So rate() over domain_group shows the traffic move from
    `other` to the domain, never a drop in one without the same rise in the other.
    """

    def __init__(
        self,
        groups: DomainGroups,
        k: int,
        min_count: int,
        promoted: Iterable[str] = (),
        born: Iterable[str] = (),
    ):
        self.groups = groups
        self.k = k
        self.min_count = min_count
        self.promoted = set(promoted)
        self.born = set(born) & self.promoted  # promoted, their zeros not read yet
        self._counts: dict[str, int] = {}
        self._capacity = max(64, 20 * k)
        self._lock = threading.Lock()  # labels from the log threads, `seen` from scrapes

    def label(self, domain: str, relay: str = "") -> str:
        return self.labels(domain, relay)[0]

    def labels(self, domain: str, relay: str = "") -> tuple[str, str | None]:
        """The label to count a delivery under, and the promoted label whose series must be
        made at 0 beside it (None when there is none)."""
        group = self.groups.group(domain, relay)
        if group != OTHER or not domain:
            return group, None
        d = domain.lower()
        with self._lock:
            if d in self.promoted:
                return (OTHER, d) if d in self.born else (d, None)
            if len(self.promoted) >= self.k:
                return OTHER, None
            n = self._counts.get(d, 0) + 1
            self._counts[d] = n
            if n >= self.min_count:
                self.promoted.add(d)
                self.born.add(d)
                del self._counts[d]
                return OTHER, d
            if len(self._counts) > 2 * self._capacity:
                # Keep the busiest: the long tail of one-off domains never costs more than this.
                keep = sorted(self._counts.items(), key=lambda kv: kv[1], reverse=True)
                self._counts = dict(keep[: self._capacity])
            return OTHER, None

    def seen(self, labels: Iterable[str]) -> None:
        """An output has read series under these domain_group labels: born domains among them
        count under their own name from now on."""
        with self._lock:
            if self.born:
                self.born -= set(labels)

    def meta(self) -> dict[str, str]:
        with self._lock:
            return {
                PROMOTED_META: json.dumps(sorted(self.promoted)),
                BORN_META: json.dumps(sorted(self.born)),
            }


class OutcomeWatch(Protocol):
    """Something that wants each counted outcome once it is committed (the block watch)."""

    def note(self, when: float, reason: str) -> None: ...


class Accounting:
    """Delivery events into counters: the only place that decides which series an event feeds."""

    def __init__(self, state: State, domains: TopDomains, blocks: OutcomeWatch | None = None):
        self.state = state
        self.domains = domains
        self.blocks = blocks
        # Outcomes for the block watch, handed on with their commit: a batch that failed and is
        # read again must not be seen twice.
        self._notes: list[tuple[float, str]] = []
        self.instances: set[str] = set()  # instance labels given so far (MAX_PROGRAM_LABELS)

    def apply(self, ev: DeliveryEvent) -> None:
        group, born = self.domains.labels(ev.domain, ev.relay)
        dsn_class = ev.dsn[:1] + "xx" if ev.dsn[:1] in ("2", "4", "5") else "unknown"
        instance = ev.instance  # any local user may log under a made-up one: a label budget
        if instance not in self.instances:
            if len(self.instances) >= MAX_PROGRAM_LABELS:
                instance = OTHER
            self.instances.add(instance)
        self.state.inc(
            "mailpulse_deliveries_total", (instance, ev.status, ev.reason, group, dsn_class)
        )
        if born is not None:  # its series at 0 first (see TopDomains)
            self.state.inc(
                "mailpulse_deliveries_total", (instance, ev.status, ev.reason, born, dsn_class), 0
            )
        if self.blocks is not None:
            self._notes.append((ev.time, ev.reason))
        if ev.status not in FINAL_STATUSES:
            return
        stages = dict(zip(catalogue.DELAY_STAGES, ev.delays or (), strict=False))
        stages["total"] = ev.delay
        for stage, seconds in stages.items():
            if not 0 <= seconds < math.inf:  # "nan", "inf", "-5": no duration
                continue
            self.state.observe(
                "mailpulse_delivery_delay_seconds",
                (instance, stage, ev.status),
                catalogue.DELAY_BUCKETS_S,
                seconds,
            )
        if ev.size is not None:
            self.state.observe(
                "mailpulse_message_size_bytes",
                (instance,),
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
        return self.domains.meta()


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
    if head == "left_out":
        return ("mailpulse_log_unread_delivery_lines_total", (tail,))
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
    for (group, reason, deferral_class), n in snap.deferrals.items():
        out[("mailpulse_queue_deferred_recipients", (inst, group, reason, deferral_class))] = n
    out[("mailpulse_queue_deferral_coverage_ratio", (inst,))] = snap.deferral_coverage
    for kind, n in snap.errors.items():
        out[("mailpulse_queue_read_errors", (inst, kind))] = n
    out[("mailpulse_queue_sample_complete", (inst,))] = 1.0 if snap.complete else 0.0
    return out


def host_series(sample: HostSample) -> dict[SeriesKey, float]:
    out: dict[SeriesKey, float] = {}
    for period, value in zip(("1m", "5m", "15m"), sample.load, strict=True):
        out[("mailpulse_host_load_average", (period,))] = value
    for mode, seconds in sample.cpu_seconds.items():
        out[("mailpulse_host_cpu_seconds_total", (mode,))] = seconds
    out[("mailpulse_host_cpus", ())] = float(sample.cpus)
    for kind, n in sample.memory.items():
        out[("mailpulse_host_memory_bytes", (kind,))] = float(n)
    for inst, fs in sample.spool.items():
        for kind, n in (("size", fs.size), ("free", fs.free), ("avail", fs.avail)):
            out[("mailpulse_spool_filesystem_bytes", (inst, kind))] = float(n)
        out[("mailpulse_spool_filesystem_inodes", (inst, "total"))] = float(fs.inodes)
        out[("mailpulse_spool_filesystem_inodes", (inst, "free"))] = float(fs.inodes_free)
    for (inst, service), limit in sample.process_limits.items():
        out[("mailpulse_postfix_process_limit", (inst, service))] = float(limit)
    for (inst, service), n in sample.processes.items():
        out[("mailpulse_postfix_processes", (inst, service))] = float(n)
    return out


@dataclass
class SourceStatus:
    up: bool = False
    last_ok: float = 0.0
    duration_s: float = 0.0


def status_series(source: str, target: str, st: SourceStatus, now: float) -> dict[SeriesKey, float]:
    out: dict[SeriesKey, float] = {("mailpulse_source_up", (source, target)): 1.0 if st.up else 0.0}
    if st.last_ok:
        out[("mailpulse_source_sample_age_seconds", (source, target))] = now - st.last_ok
    out[("mailpulse_source_scan_duration_seconds", (source, target))] = st.duration_s
    return out


Statuses = list[tuple[str, str, SourceStatus]]  # (source, target, status)


class LogReader(Protocol):
    """What the series need of a log source's reader."""

    target: str
    status: SourceStatus
    errors: dict[str, int]  # failed reads by kind, since the agent started


HostLatest = Callable[[], tuple[HostSample | None, SourceStatus]]
QueueLatest = Callable[[], Mapping[str, QueueSnapshot | None]]
# (profile, settings off it per instance, how the last check went)
ProfileLatest = Callable[[], tuple[str, Mapping[str, int], SourceStatus]]


@dataclass
class Series:
    """Every catalogue series as it stands now, from the State and the latest samples.

    Each source is read on its own: one that fails is said and left out, never hiding the
    counters or the other sources.
    """

    state: State
    _: KW_ONLY
    host: HostLatest | None = None
    queues: QueueLatest | None = None
    queue_interval_s: float = 30.0  # a queue sample older than three intervals is stale
    logs: Sequence[LogReader] = ()
    domains: TopDomains | None = None
    profile: ProfileLatest | None = None
    blacklist: Callable[[], Mapping[SeriesKey, float]] | None = None  # its series, when it runs
    clock: Callable[[], float] = time.time

    def read(self) -> Reading:
        snap = self.state.snapshot()
        out: Reading = {**snap.counters, **snap.histograms}
        now = self.clock()
        statuses: Statuses = []
        parts = (
            ("host", self._host),
            ("log", self._logs),
            ("queue", self._queues),
            ("profile", self._profile),
            ("blacklist", self._blacklist),
        )
        for source, part in parts:
            try:
                part(out, statuses, now)
            except Exception:
                log.exception("reading the %s source failed", source)
        for source, target, st in statuses:
            out.update(status_series(source, target, st, now))
        if self.domains is not None:
            out[("mailpulse_domain_groups_promoted", ())] = len(self.domains.promoted)
            self.domains.seen(
                labels[GROUP_AT] for name, labels in snap.counters if name == DELIVERIES
            )
        out[("mailpulse_agent_info", (__version__,))] = 1.0
        return out

    def _host(self, out: Reading, statuses: Statuses, _: float) -> None:
        if self.host is None:
            return
        sample, status = self.host()
        if sample is not None:
            out.update(host_series(sample))
        statuses.append(("host", "", status))

    def _logs(self, out: Reading, statuses: Statuses, _: float) -> None:
        for p in self.logs:
            statuses.append(("log", p.target, p.status))
            for kind, n in p.errors.items():
                out[("mailpulse_log_read_errors_total", (p.target, kind))] = n

    def _blacklist(self, out: Reading, _statuses: Statuses, _: float) -> None:
        if self.blacklist is not None:
            out.update(self.blacklist())

    def _queues(self, out: Reading, statuses: Statuses, now: float) -> None:
        if self.queues is None:
            return
        for name, snap in self.queues().items():
            if snap is None:
                statuses.append(("queue", name, SourceStatus()))
                continue
            out.update(queue_series(snap))
            fresh = now - snap.taken_at < 3 * self.queue_interval_s + snap.duration_s
            statuses.append(("queue", name, SourceStatus(fresh, snap.taken_at, snap.duration_s)))

    def _profile(self, out: Reading, statuses: Statuses, _: float) -> None:
        if self.profile is None:
            return
        name, drift, status = self.profile()
        for instance, n in drift.items():
            out[("mailpulse_postfix_profile_drift", (instance, name))] = float(n)
        statuses.append(("profile", name, status))
