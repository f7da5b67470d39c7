"""Counters that survive restarts: kept in memory, written to SQLite in one transaction together
with the log checkpoint that produced them.

Because the counters and the position in the log they account for are committed atomically,
a kill -9 at any moment leaves either both old or both new: on restart the lines after the
saved position are read again and counted exactly once, and no counter goes backwards.
A state file that SQLite cannot read is moved aside with a warning and the agent starts afresh.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

Labels = tuple[str, ...]
SeriesKey = tuple[str, Labels]

SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (name TEXT NOT NULL, labels TEXT NOT NULL,
    value TEXT NOT NULL, PRIMARY KEY (name, labels));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(slots=True)
class Histogram:
    """Per-bucket (not cumulative) counts, the last one for +Inf, and the sum of observations."""

    counts: list[int]
    sum: float = 0.0

    def observe(self, bounds: tuple[float, ...], value: float) -> None:
        self.counts[bisect.bisect_left(bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[int]:
        out, running = [], 0
        for c in self.counts:
            running += c
            out.append(running)
        return out


@dataclass
class Snapshot:
    """A consistent copy for one scrape."""

    counters: dict[SeriesKey, float] = field(default_factory=dict)
    histograms: dict[SeriesKey, Histogram] = field(default_factory=dict)


class StateCorrupt(Exception):
    pass


class State:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._counters: dict[SeriesKey, float] = {}
        self._histograms: dict[SeriesKey, Histogram] = {}
        # What scrapes see: the values of the last commit.
        self._pub_counters: dict[SeriesKey, float] = {}
        self._pub_histograms: dict[SeriesKey, Histogram] = {}
        self._commit_lock = threading.Lock()
        self._meta: dict[str, str] = {}
        self._dirty: set[SeriesKey] = set()
        self.set_aside: Path | None = None  # where a corrupt file went, if one did
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._open()
            self._load()
        except (sqlite3.DatabaseError, StateCorrupt, ValueError, TypeError) as e:
            with contextlib.suppress(Exception):
                self._db.close()
            self.set_aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            log.warning("state file %s is unreadable (%s); moved to %s", path, e, self.set_aside)
            path.replace(self.set_aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            self._counters.clear()
            self._histograms.clear()
            self._meta.clear()
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # WAL: a crash of the process never loses a committed transaction and readers never block.
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        return db

    def _load(self) -> None:
        check = self._db.execute("PRAGMA quick_check").fetchone()
        if not check or check[0] != "ok":
            raise StateCorrupt(f"quick_check: {check}")
        for name, labels_json, value_json in self._db.execute(
            "SELECT name, labels, value FROM counters"
        ):
            key = (name, tuple(json.loads(labels_json)))
            value = json.loads(value_json)
            if isinstance(value, dict):
                self._histograms[key] = Histogram([int(c) for c in value["counts"]], value["sum"])
            else:
                self._counters[key] = float(value)
        self._meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        self._pub_counters = dict(self._counters)
        self._pub_histograms = {
            k: Histogram(list(h.counts), h.sum) for k, h in self._histograms.items()
        }

    # -- updates, from the collector threads -------------------------------------------------
    def inc(self, name: str, labels: Labels, value: float = 1.0) -> None:
        if value < 0:
            raise ValueError(f"counter {name} can only go up, got {value}")
        key = (name, labels)
        with self._lock:
            self._counters[key] = self._counters.get(key, 0.0) + value
            self._dirty.add(key)

    def observe(self, name: str, labels: Labels, bounds: tuple[float, ...], value: float) -> None:
        key = (name, labels)
        with self._lock:
            h = self._histograms.get(key)
            if h is None or len(h.counts) != len(bounds) + 1:  # or kept with other buckets
                h = self._histograms[key] = Histogram([0] * (len(bounds) + 1))
            h.observe(bounds, value)
            self._dirty.add(key)

    def meta(self, key: str, default: str | None = None) -> str | None:
        with self._lock:
            return self._meta.get(key, default)

    def commit(self, meta: Mapping[str, str] | None = None) -> None:
        """Write what changed and these meta values (e.g. a log checkpoint) in one transaction;
        only then do scrapes see the new values, so a crash can never show a counter falling
        back to its last committed value."""
        with self._commit_lock:
            with self._lock:
                rows = []
                published: dict[SeriesKey, float | Histogram] = {}
                for key in self._dirty:
                    name, labels = key
                    if key in self._histograms:
                        h = self._histograms[key]
                        published[key] = Histogram(list(h.counts), h.sum)
                        value = json.dumps({"counts": h.counts, "sum": h.sum})
                    else:
                        published[key] = self._counters[key]
                        value = json.dumps(self._counters[key])
                    rows.append((name, json.dumps(labels), value))
                dirty, self._dirty = self._dirty, set()
            meta_rows = list((meta or {}).items())
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO counters (name, labels, value) VALUES (?, ?, ?)"
                    " ON CONFLICT (name, labels) DO UPDATE SET value = excluded.value",
                    rows,
                )
                self._db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    meta_rows,
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                with self._lock:
                    self._dirty |= dirty  # written with the next commit that works
                raise
            with self._lock:
                self._meta.update(meta or {})
                for key, v in published.items():
                    if isinstance(v, Histogram):
                        self._pub_histograms[key] = v
                    else:
                        self._pub_counters[key] = v

    def rollback(self) -> None:
        """Drop every change since the last commit: a batch that failed is counted again whole
        when it is read again, never in part twice."""
        with self._lock:
            for key in self._dirty:
                h = self._pub_histograms.get(key)
                if h is not None:
                    self._histograms[key] = Histogram(list(h.counts), h.sum)
                elif key in self._pub_counters:
                    self._counters[key] = self._pub_counters[key]
                else:
                    self._counters.pop(key, None)
                    self._histograms.pop(key, None)
            self._dirty.clear()

    # -- reads, from scrapes -----------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The values as last committed."""
        with self._lock:
            return Snapshot(
                dict(self._pub_counters),
                {k: Histogram(list(h.counts), h.sum) for k, h in self._pub_histograms.items()},
            )

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
