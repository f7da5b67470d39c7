"""Where blacklist entries live: SQLite on one machine (the default), Redis for a fleet.

Both keep the same things behind the same narrow interface (Store): entries in force with their
evidence, the strikes each key had (so a returning failure lives longer), the distinct days of
soft failures, the quarantine, the bounce mails already recorded, and the blacklist's counters.
A third back end (a lookup service answering Postfix's socketmap) would implement the same.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from mailpulse.bounce.policy import (
    ADD,
    CLEAR_SOFT,
    CONFIRM,
    QUARANTINE,
    SOFT,
    Decision,
    Entry,
    Evidence,
)


@dataclass(frozen=True, slots=True)
class Filter:
    """Which entries a bulk lift, release or drop touches; empty fields match everything."""

    domain_group: str = ""
    reason: str = ""
    since: float | None = None  # added at or after
    until: float | None = None  # added before
    key: str = ""

    def matches(self, e: Entry) -> bool:
        return (
            (not self.domain_group or e.domain_group == self.domain_group)
            and (not self.reason or e.reason == self.reason)
            and (self.since is None or e.added >= self.since)
            and (self.until is None or e.added < self.until)
            and (not self.key or e.key == self.key)
        )


EVERYTHING = Filter()


class Store(Protocol):
    def entry(self, key: str) -> Entry | None: ...
    def strikes(self, key: str, kind: str) -> int: ...
    def soft_days(self, key: str) -> list[int]: ...
    def held(self, key: str) -> bool: ...
    def apply(self, d: Decision, ev: Evidence | None) -> bool: ...
    def put(self, e: Entry) -> None: ...
    def entries(self, now: float, f: Filter = Filter()) -> list[Entry]: ...
    def keys_in_force(self, now: float) -> list[str]: ...
    def in_force(self, now: float) -> int: ...
    def lift(self, now: float, f: Filter) -> int: ...
    def quarantined(self, f: Filter = Filter()) -> list[Entry]: ...
    def release(self, now: float, f: Filter) -> int: ...
    def drop(self, f: Filter) -> int: ...
    def seen_mail(self, key: str) -> bool: ...
    def mark_mail(self, key: str) -> None: ...
    def count(self, name: str, label: str = "", by: int = 1) -> None: ...
    def counters(self) -> dict[tuple[str, str], int]: ...
    def version(self) -> int: ...
    def purge(self, now: float, keep_s: float = ...) -> int: ...
    def close(self) -> None: ...


def entry_json(e: Entry) -> dict[str, Any]:
    return asdict(e)


def entry_of_json(d: dict[str, Any]) -> Entry:
    d = dict(d)
    d["evidence"] = [Evidence(**x) for x in d.get("evidence", [])]
    return Entry(**d)


PURGE_AFTER_S = 90 * 86_400.0  # expired entries kept this long, for anyone asking why
MAX_EVIDENCE = 20  # per entry: the first ones and the latest

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, body TEXT NOT NULL,
    expires REAL, added REAL NOT NULL);
CREATE INDEX IF NOT EXISTS entries_expires ON entries(expires);
CREATE TABLE IF NOT EXISTS strikes (key TEXT NOT NULL, kind TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (key, kind));
CREATE TABLE IF NOT EXISTS soft (key TEXT NOT NULL, day INTEGER NOT NULL, PRIMARY KEY (key, day));
CREATE TABLE IF NOT EXISTS quarantine (key TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS mails (key TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS counters (name TEXT NOT NULL, label TEXT NOT NULL,
    value INTEGER NOT NULL, PRIMARY KEY (name, label));
"""


def merge_evidence(e: Entry, ev: Evidence) -> bool:
    """Add ev to e unless the same event is there already (a log line and its DSN are one event
    each; the same line read twice is not a second one). True when added."""
    same = [
        x
        for x in e.evidence
        if x.source == ev.source and x.time == ev.time and x.queue_id == ev.queue_id
    ]
    if same:
        return False
    e.evidence.append(ev)
    if len(e.evidence) > MAX_EVIDENCE:
        del e.evidence[MAX_EVIDENCE // 2]
    return True


class SqliteStore:
    """One SQLite file in WAL mode, synchronous FULL: a transaction that returned is on disk,
    and a kill -9 in the middle of one leaves the file as it was before it."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self.lock = threading.RLock()
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    # -- what the policy reads ---------------------------------------------------------
    def entry(self, key: str) -> Entry | None:
        with self.lock:
            row = self.db.execute("SELECT body FROM entries WHERE key=?", (key,)).fetchone()
        return entry_of_json(json.loads(row[0])) if row else None

    def strikes(self, key: str, kind: str) -> int:
        with self.lock:
            row = self.db.execute(
                "SELECT n FROM strikes WHERE key=? AND kind=?", (key, kind)
            ).fetchone()
        return int(row[0]) if row else 0

    def soft_days(self, key: str) -> list[int]:
        with self.lock:
            rows = self.db.execute("SELECT day FROM soft WHERE key=? ORDER BY day", (key,))
            return [int(r[0]) for r in rows]

    def held(self, key: str) -> bool:
        with self.lock:
            row = self.db.execute("SELECT 1 FROM quarantine WHERE key=?", (key,)).fetchone()
        return row is not None

    # -- writes -------------------------------------------------------------------------
    def _put(self, db: sqlite3.Connection, e: Entry) -> None:
        db.execute(
            "INSERT OR REPLACE INTO entries VALUES (?,?,?,?)",
            (e.key, json.dumps(entry_json(e)), e.expires, e.added),
        )

    def _bump(self, db: sqlite3.Connection, name: str, label: str, by: int = 1) -> None:
        db.execute(
            "INSERT INTO counters VALUES (?,?,?) ON CONFLICT(name, label)"
            " DO UPDATE SET value = value + excluded.value",
            (name, label, by),
        )

    def _add(self, db: sqlite3.Connection, e: Entry) -> None:
        e.hold = ""
        self._put(db, e)
        db.execute(
            "INSERT INTO strikes VALUES (?,?,1) ON CONFLICT(key, kind) DO UPDATE SET n = n + 1",
            (e.key, e.kind),
        )
        db.execute("DELETE FROM soft WHERE key=?", (e.key,))
        db.execute("DELETE FROM quarantine WHERE key=?", (e.key,))
        self._bump(db, "additions", e.reason)
        self._bump(db, "version", "")

    def apply(self, d: Decision, ev: Evidence | None) -> bool:
        """Carry out one decision; True when the table's keys changed."""
        with self._tx() as db:
            if d.action == ADD and d.entry is not None:
                self._add(db, d.entry)
                return True
            if d.action == QUARANTINE and d.entry is not None:
                row = db.execute("SELECT body FROM quarantine WHERE key=?", (d.key,)).fetchone()
                if row is None:
                    db.execute(
                        "INSERT INTO quarantine VALUES (?,?)",
                        (d.key, json.dumps(entry_json(d.entry))),
                    )
            elif d.action == CONFIRM and d.entry is not None and ev is not None:
                if merge_evidence(d.entry, ev):
                    self._put(db, d.entry)
            elif d.action == SOFT:
                db.execute("INSERT OR IGNORE INTO soft VALUES (?,?)", (d.key, d.soft_day))
            elif d.action == CLEAR_SOFT:
                db.execute("DELETE FROM soft WHERE key=?", (d.key,))
        return False

    def put(self, e: Entry) -> None:
        """An entry added by hand: in force at once, counted as an addition."""
        with self._tx() as db:
            self._add(db, e)

    # -- reading and bulk changes ---------------------------------------------------------
    def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[Entry]:
        with self.lock:
            return [entry_of_json(json.loads(r[0])) for r in self.db.execute(sql, tuple(args))]

    def entries(self, now: float, f: Filter = Filter()) -> list[Entry]:
        rows = self._rows(
            "SELECT body FROM entries WHERE expires IS NULL OR expires > ? ORDER BY key", (now,)
        )
        return [e for e in rows if f.matches(e)]

    def keys_in_force(self, now: float) -> list[str]:
        with self.lock:
            rows = self.db.execute(
                "SELECT key FROM entries WHERE expires IS NULL OR expires > ?", (now,)
            )
            return [r[0] for r in rows]

    def in_force(self, now: float) -> int:
        with self.lock:
            row = self.db.execute(
                "SELECT count(*) FROM entries WHERE expires IS NULL OR expires > ?", (now,)
            ).fetchone()
        return int(row[0])

    def lift(self, now: float, f: Filter) -> int:
        keys = [e.key for e in self.entries(now, f)]
        with self._tx() as db:
            db.executemany("DELETE FROM entries WHERE key=?", [(k,) for k in keys])
            if keys:
                self._bump(db, "version", "")
        return len(keys)

    def quarantined(self, f: Filter = Filter()) -> list[Entry]:
        return [e for e in self._rows("SELECT body FROM quarantine ORDER BY key") if f.matches(e)]

    def release(self, now: float, f: Filter) -> int:
        held = self.quarantined(f)
        with self._tx() as db:
            for e in held:
                if e.expires is not None:  # its lifetime starts now, not when it was held
                    e.expires = now + (e.expires - e.added)
                e.added = now
                self._add(db, e)
        return len(held)

    def drop(self, f: Filter) -> int:
        keys = [e.key for e in self.quarantined(f)]
        with self._tx() as db:
            db.executemany("DELETE FROM quarantine WHERE key=?", [(k,) for k in keys])
        return len(keys)

    def seen_mail(self, key: str) -> bool:
        with self.lock:
            return self.db.execute("SELECT 1 FROM mails WHERE key=?", (key,)).fetchone() is not None

    def mark_mail(self, key: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO mails VALUES (?)", (key,))

    def count(self, name: str, label: str = "", by: int = 1) -> None:
        with self._tx() as db:
            self._bump(db, name, label, by)

    def counters(self) -> dict[tuple[str, str], int]:
        with self.lock:
            rows = self.db.execute("SELECT name, label, value FROM counters")
            return {(n, lab): int(v) for n, lab, v in rows}

    def version(self) -> int:
        """Grows whenever the keys in force change by a write (expiry is the clock's doing)."""
        return self.counters().get(("version", ""), 0)

    def purge(self, now: float, keep_s: float = PURGE_AFTER_S) -> int:
        """Drop entries expired more than keep_s ago and soft days as old (the strikes stay, so
        a returning address still gets its longer lifetime). Returns the entries dropped."""
        with self._tx() as db:
            gone = db.execute(
                "DELETE FROM entries WHERE expires IS NOT NULL AND expires < ?", (now - keep_s,)
            ).rowcount
            db.execute("DELETE FROM soft WHERE day < ?", (int((now - keep_s) // 86_400),))
        return int(gone)
