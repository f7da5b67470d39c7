"""Queue collector: qshape's and mailq's view of a Postfix instance as a QueueSnapshot.

Two ways in, picked automatically: the spool (queue files' envelope records, read directly;
root or the postfix user) and the showq service (what `postqueue -j` reads; no root, only
access to the public/ directory). From the spool, sampling is incremental: a queued message's
arrival time, sender and recipients do not change while it sits in a queue, so a sample
re-reads only files whose (inode, ctime) it has not seen - a rename between queues or a retry
changes the ctime - and keeps running totals that it adjusts for new and gone messages only.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import re
import socket
import stat
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mailpulse.bounce.classify import classify
from mailpulse.collectors.qfile import (
    DeferEntry,
    QueueFileError,
    parse_defer_log,
    parse_queue_file,
    qshape_domain,
)

from mailpulse.domains import DEFAULT_GROUPS, DomainGroups
from mailpulse.events import DEFAULT_AGE_EDGES_MIN, QUEUE_NAMES, QueueSnapshot, QueueStats

_QUEUE_ID = re.compile(r"[A-Za-z0-9]{6,}")
OTHER_DOMAINS = "(other)"

# Deferral classes, as an operator sorts deferred mail.
DEFERRAL_CLASSES = (
    "connection",
    "dns",
    "tls",
    "greylisting",
    "ratelimit",
    "blocklisted",
    "mailboxfull",
    "other",
)
_REASON_CLASS = {
    "networkerror": "connection",
    "hostunknown": "dns",
    "securityerror": "tls",
    "speeding": "ratelimit",
    "toomanyconn": "ratelimit",
    "blocked": "blocklisted",
    "badreputation": "blocklisted",
    "mailboxfull": "mailboxfull",
}
# What the shared classifier does not tell apart: greylisting is one kind of policy refusal,
# TLS failures and timeouts are logged by Postfix itself without a reply code.
_TEXT_CLASS = (
    (re.compile(r"gr[ae]ylist", re.I), "greylisting"),
    (re.compile(r"\bTLS\b|\bSSL\b|certificate|STARTTLS", re.I), "tls"),
    (re.compile(r"name service error|host not found|domain not found|\bno MX\b", re.I), "dns"),
    (
        re.compile(
            r"connection (refused|timed out|reset)|timed out while|lost connection"
            r"|no route to host|network is unreachable",
            re.I,
        ),
        "connection",
    ),
)
_REPLY_CODE = re.compile(r"\bsaid: ([245]\d\d)\b")
_ENHANCED = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


def deferral_class(status: str, text: str) -> str:
    """One of DEFERRAL_CLASSES for the reason Postfix keeps for a deferred recipient."""
    for pattern, klass in _TEXT_CLASS[:2]:
        if pattern.search(text):
            return klass
    m = _REPLY_CODE.search(text)
    if not status:
        e = _ENHANCED.search(text)
        status = e.group(1) if e else ""
    verdict = classify(status, m.group(1) if m else "", text)
    if verdict.reason in _REASON_CLASS:
        return _REASON_CLASS[verdict.reason]
    for pattern, klass in _TEXT_CLASS[2:]:
        if pattern.search(text):
            return klass
    return "other"


# -- Postfix instances ---------------------------------------------------------------------


@dataclass(frozen=True)
class PostfixInstance:
    name: str  # syslog_name, the label logs and queue samples share
    config_dir: Path | None  # None: Postfix's default
    queue_dir: Path


def postconf(config_dir: Path | None, *names: str) -> dict[str, str]:
    argv = ["postconf"]
    if config_dir is not None:
        argv += ["-c", str(config_dir)]
    out = subprocess.run(
        [*argv, *names], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    values = {}
    for line in out.splitlines():
        name, sep, value = line.partition(" = ")
        if sep:
            values[name.strip()] = value.strip()
    return values


def _instance(config_dir: Path | None) -> PostfixInstance:
    cf = postconf(config_dir, "syslog_name", "queue_directory")
    return PostfixInstance(cf["syslog_name"], config_dir, Path(cf["queue_directory"]))


def discover_instances(config_dir: Path | None = None) -> list[PostfixInstance]:
    """config_dir's instance and those postmulti runs beside it (multi_instance_directories)."""
    main = _instance(config_dir)
    extra = postconf(config_dir, "multi_instance_directories").get("multi_instance_directories")
    found = [main]
    for d in re.split(r"[\s,]+", extra or ""):
        if d:
            found.append(_instance(Path(d)))
    return found


# -- the sampler -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Message:
    queue: str
    key: tuple[int, int]  # (inode, ctime ns): a different key means the file changed
    arrival: int
    size: int
    sender_domain: str
    rcpt_domains: tuple[tuple[str, int], ...]  # qshape domain -> recipients of that domain
    recipients: int
    deferrals: tuple[tuple[tuple[str, str], int], ...]  # (group, class) -> recipients
    error: str = ""  # a file that could not be read: counted, not shown


class QueueSampler:
    """Samples one Postfix instance's queue; each call to sample() builds on the previous one."""

    def __init__(
        self,
        config_dir: Path | None = None,
        instance: str = "postfix",
        age_edges_min: tuple[int, ...] = DEFAULT_AGE_EDGES_MIN,
        groups: DomainGroups = DEFAULT_GROUPS,
        *,
        queue_dir: Path | None = None,
        source: str = "auto",  # "auto", "spool" or "showq"
        huge_queue: int = 2_000_000,  # beyond this many files: count them, do not read them
        top_domains: int = 100,
    ) -> None:
        self.config_dir = config_dir
        self.instance = instance
        self.age_edges_min = tuple(age_edges_min)
        self.groups = groups
        self.queue_dir = queue_dir or _instance(config_dir).queue_dir
        self.source = source
        self.huge_queue = huge_queue
        self.top_domains = top_domains
        self._cache: dict[str, _Message] = {}
        self._msgs: Counter[tuple[str, str, str, int]] = Counter()
        self._rcpts: Counter[tuple[str, str, str, int]] = Counter()
        self._queue_totals: dict[str, list[int]] = {q: [0, 0, 0] for q in QUEUE_NAMES}
        self._deferrals: Counter[tuple[str, str]] = Counter()
        self._group_of: dict[str, str] = {}

    # -- aggregates ------------------------------------------------------------------------
    def _apply(self, m: _Message, sign: int) -> None:
        if m.error:
            return
        q, arr = m.queue, m.arrival
        totals = self._queue_totals[q]
        totals[0] += sign
        totals[1] += sign * m.recipients
        totals[2] += sign * m.size
        _bump(self._msgs, self._rcpts, (q, "sender", m.sender_domain, arr), sign, m.recipients)
        for d, n in m.rcpt_domains:
            _bump(self._msgs, self._rcpts, (q, "recipient", d, arr), sign, n)
        if q == "deferred":
            for k, n in m.deferrals:
                self._deferrals[k] += sign * n
                if not self._deferrals[k]:
                    del self._deferrals[k]

    def _put(self, qid: str, m: _Message) -> None:
        old = self._cache.get(qid)
        if old is not None:
            self._apply(old, -1)
        self._cache[qid] = m
        self._apply(m, +1)

    def _drop(self, qid: str) -> None:
        old = self._cache.pop(qid, None)
        if old is not None:
            self._apply(old, -1)

    def _group(self, domain: str) -> str:
        g = self._group_of.get(domain)
        if g is None:
            g = self._group_of[domain] = self.groups.group(domain)
        return g

    def _message(
        self,
        queue: str,
        key: tuple[int, int],
        arrival: int,
        size: int,
        sender: str,
        recipients: tuple[str, ...],
        reasons: dict[str, DeferEntry],
    ) -> _Message:
        domains = [qshape_domain(r) for r in recipients]
        deferrals: Counter[tuple[str, str]] = Counter()
        if queue == "deferred":
            for r, d in zip(recipients, domains, strict=True):
                e = reasons.get(r)
                klass = deferral_class(e.status, e.reason) if e else "other"
                deferrals[(self._group(d), klass)] += 1
        return _Message(
            queue,
            key,
            arrival,
            size,
            qshape_domain(sender),
            tuple(Counter(domains).items()),
            len(recipients),
            tuple(deferrals.items()),
        )

    # -- sampling --------------------------------------------------------------------------
    def pick_source(self) -> str:
        if self.source != "auto":
            return self.source
        readable = os.access(self.queue_dir / "deferred", os.R_OK | os.X_OK)
        return "spool" if readable else "showq"

    def sample(self, deadline_s: float | None = None) -> QueueSnapshot:
        started = time.monotonic()
        deadline = started + deadline_s if deadline_s is not None else None
        source = self.pick_source()
        errors: Counter[str] = Counter()
        if source == "spool":
            complete, counted = self._sample_spool(deadline, errors)
        else:
            complete, counted = self._sample_showq(errors), None
        return self._snapshot(source, started, complete, errors, counted)

    def _list_spool(self, errors: Counter[str]) -> Iterator[tuple[str, str, str, os.stat_result]]:
        for q in QUEUE_NAMES:
            yield from _walk(self.queue_dir / q, q, 0, errors)

    def _sample_spool(
        self, deadline: float | None, errors: Counter[str]
    ) -> tuple[bool, dict[str, list[int]] | None]:
        listing: dict[str, tuple[str, str, os.stat_result]] = {}
        for q, qid, path, st in self._list_spool(errors):
            listing[qid] = (q, path, st)  # seen twice mid-rename: the later queue wins
        if len(listing) > self.huge_queue:
            counted = {q: [0, 0] for q in QUEUE_NAMES}
            for q, _path, st in listing.values():
                counted[q][0] += 1
                counted[q][1] += st.st_size
            return False, counted
        for qid in [qid for qid in self._cache if qid not in listing]:
            self._drop(qid)
        todo = []
        for qid, (q, path, st) in listing.items():
            old = self._cache.get(qid)
            key = (st.st_ino, st.st_ctime_ns)
            if old is None or old.key != key or old.queue != q:
                todo.append((qid, q, path, st, key))
        defer_logs = _defer_index(self.queue_dir, errors) if todo else {}
        complete = True
        for i, (qid, q, path, st, key) in enumerate(todo):
            if deadline is not None and i % 64 == 0 and time.monotonic() > deadline:
                complete = False
                errors["deadline_skipped"] += len(todo) - i
                break
            self._read_file(qid, q, path, st, key, defer_logs.get(qid), errors)
        for m in self._cache.values():
            if m.error:
                errors[m.error] += 1
        return complete, None

    def _read_file(
        self,
        qid: str,
        queue: str,
        path: str,
        st: os.stat_result,
        key: tuple[int, int],
        defer_log: str | None,
        errors: Counter[str],
    ) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:  # delivered or moved since the listing: seen next time
            errors["vanished"] += 1
            self._drop(qid)
            return
        except OSError:
            errors["unreadable"] += 1
            return
        try:
            env = parse_queue_file(lambda off, n: os.pread(fd, n, off), int(st.st_mtime))
        except QueueFileError as e:
            self._put(qid, _Message(queue, key, 0, 0, "", (), 0, (), error=e.kind))
            return
        except OSError:
            errors["unreadable"] += 1
            return
        finally:
            os.close(fd)
        reasons: dict[str, DeferEntry] = {}
        if queue == "deferred" and defer_log:
            with (
                contextlib.suppress(OSError),
                open(defer_log, encoding="utf-8", errors="replace") as f,
            ):
                reasons = {e.recipient: e for e in parse_defer_log(f.read())}
        self._put(
            qid,
            self._message(queue, key, env.arrival, env.size, env.sender, env.recipients, reasons),
        )

    def _sample_showq(self, errors: Counter[str]) -> bool:
        data = read_showq(self.queue_dir / "public" / "showq")
        for qid in list(self._cache):
            self._drop(qid)
        for msg in parse_showq(data, errors):
            reasons = {
                r: DeferEntry(r, "", why) for r, why in msg.recipients if why
            }  # showq lists each recipient once, with its reason when it has one
            recipients = tuple(r for r, _why in msg.recipients)
            self._put(
                msg.queue_id,
                self._message(
                    msg.queue, (0, 0), msg.arrival, msg.size, msg.sender, recipients, reasons
                ),
            )
        return True

    # -- the snapshot ----------------------------------------------------------------------
    def _snapshot(
        self,
        source: str,
        started: float,
        complete: bool,
        errors: Counter[str],
        counted: dict[str, list[int]] | None,
    ) -> QueueSnapshot:
        now = time.time()
        now_s = int(now)  # qshape's clock has whole seconds
        edges = [e * 60 for e in self.age_edges_min]
        snap = QueueSnapshot(
            instance=self.instance,
            source=source,
            taken_at=now,
            duration_s=0.0,
            age_edges_min=self.age_edges_min,
            errors=dict(errors),
            complete=complete,
        )
        if counted is not None:  # a huge queue: depth and bytes only
            snap.queues = {q: QueueStats(messages=n, bytes=b) for q, (n, b) in counted.items()}
            snap.duration_s = time.monotonic() - started
            return snap
        oldest: dict[str, int] = {}
        shape: dict[tuple[str, str, str, int], list[int]] = {}
        raw: dict[tuple[str, str, str, int], list[int]] = {}
        for (q, kind, domain, arrival), m in self._msgs.items():
            r = self._rcpts[(q, kind, domain, arrival)]
            b = bisect.bisect_right(edges, now_s - arrival)
            for table, name in ((shape, self._group(domain)), (raw, domain)):
                cell = table.setdefault((q, kind, name, b), [0, 0])
                cell[0] += m
                cell[1] += r
            if kind == "sender" and (q not in oldest or arrival < oldest[q]):
                oldest[q] = arrival
        snap.queues = {
            q: QueueStats(n, r, b, float(max(0, now_s - oldest[q])) if q in oldest else 0.0)
            for q, (n, r, b) in self._queue_totals.items()
        }
        snap.shape = {k: (v[0], v[1]) for k, v in shape.items()}
        snap.domain_shape = _top_domains(raw, self.top_domains)
        snap.deferral_classes = dict(self._deferrals)
        snap.duration_s = time.monotonic() - started
        return snap


def _bump(
    msgs: Counter[tuple[str, str, str, int]],
    rcpts: Counter[tuple[str, str, str, int]],
    key: tuple[str, str, str, int],
    sign: int,
    n: int,
) -> None:
    msgs[key] += sign
    rcpts[key] += sign * n
    if not msgs[key]:
        del msgs[key]
        del rcpts[key]


def _top_domains(
    raw: dict[tuple[str, str, str, int], list[int]], top: int
) -> dict[tuple[str, str, str, int], tuple[int, int]]:
    """Keep the top domains of each (queue, kind) by recipients; fold the rest together."""
    totals: Counter[tuple[str, str, str]] = Counter()
    for (q, kind, d, _b), (_m, r) in raw.items():
        totals[(q, kind, d)] += r
    keep: set[tuple[str, str, str]] = set()
    by_qk: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for (q, kind, d), r in totals.items():
        by_qk.setdefault((q, kind), []).append((r, d))
    for (q, kind), rows in by_qk.items():
        rows.sort(key=lambda row: (-row[0], row[1]))
        keep.update((q, kind, d) for _r, d in rows[:top])
    out: dict[tuple[str, str, str, int], tuple[int, int]] = {}
    for (q, kind, d, b), (m, r) in raw.items():
        name = d if (q, kind, d) in keep else OTHER_DOMAINS
        pm, pr = out.get((q, kind, name, b), (0, 0))
        out[(q, kind, name, b)] = (pm + m, pr + r)
    return out


def _walk(
    directory: Path | str, queue: str, depth: int, errors: Counter[str]
) -> Iterator[tuple[str, str, str, os.stat_result]]:
    """(queue, queue id, path, stat) of every finished queue file under a (hashed) queue."""
    try:
        it = os.scandir(directory)
    except FileNotFoundError:
        return
    except OSError:
        errors["unreadable"] += 1
        return
    with it:
        for entry in it:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # moved on between readdir and stat
            if stat.S_ISDIR(st.st_mode):
                if depth < 16:
                    yield from _walk(entry.path, queue, depth + 1, errors)
                continue
            if not stat.S_ISREG(st.st_mode) or not _QUEUE_ID.fullmatch(entry.name):
                continue
            # Postfix marks a queue file complete with the owner execute bit (showq does too);
            # corrupt files keep whatever mode they had.
            if queue != "corrupt" and st.st_mode & 0o700 != 0o700:
                continue
            yield queue, entry.name, entry.path, st


def _defer_index(queue_dir: Path, errors: Counter[str]) -> dict[str, str]:
    """queue id -> path of its defer logfile, whatever the hashing of the defer directory."""
    index = {}
    stack = [str(queue_dir / "defer")]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except FileNotFoundError:
            continue
        except OSError:
            errors["unreadable"] += 1
            continue
        with it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    if len(stack) < 4096:
                        stack.append(entry.path)
                else:
                    index[entry.name] = entry.path
    return index


# -- showq -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShowqMessage:
    queue: str
    queue_id: str
    arrival: int
    size: int
    sender: str
    recipients: tuple[tuple[str, str], ...]  # (address, reason) - reason "" when none


def read_showq(socket_path: Path, timeout: float = 60.0) -> bytes:
    """Everything the showq service says on one connection (it speaks first, then closes)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(socket_path))
        chunks = []
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def parse_showq(data: bytes, errors: Counter[str] | None = None) -> list[ShowqMessage]:
    """showq's attribute stream: NUL-terminated names and values, an empty name ends a list.

    It opens with protocol=mail_queue_list_protocol; then each message is queue_name, queue_id,
    time, size, forced_expire, sender and then recipient/reason pairs (newer versions add
    original_recipient and log_class), ended by an empty name; an empty name alone ends all.
    """
    errors = errors if errors is not None else Counter()
    words = data.split(b"\0")
    if words and words[-1] == b"":
        words.pop()  # the terminator of the last string
    out: list[ShowqMessage] = []
    i = 0
    # protocol announcement: name, value, end
    if words[:3] != [b"protocol", b"mail_queue_list_protocol", b""]:
        errors["showq_protocol"] += 1
        return out
    i = 3
    fields: dict[str, str] = {}
    rcpts: list[tuple[str, str]] = []
    pending: str | None = None
    while i < len(words):
        name = words[i].decode("utf-8", "replace")
        if name == "":
            if not fields:
                break  # end of the listing
            try:
                out.append(
                    ShowqMessage(
                        fields["queue_name"],
                        fields["queue_id"],
                        int(fields["time"]),
                        int(fields["size"]),
                        fields.get("sender", ""),
                        tuple(rcpts),
                    )
                )
            except (KeyError, ValueError):
                errors["showq_garbage"] += 1
            fields, rcpts, pending = {}, [], None
            i += 1
            continue
        if i + 1 >= len(words):
            errors["showq_truncated"] += 1
            break
        value = words[i + 1].decode("utf-8", "replace")
        i += 2
        if name == "recipient":
            pending = value
            rcpts.append((value, ""))
        elif name == "reason" and pending is not None:
            rcpts[-1] = (pending, value)
        elif name not in ("original_recipient", "log_class"):
            fields[name] = value
    else:
        if fields:
            errors["showq_truncated"] += 1
    return out


# -- in the background -------------------------------------------------------------------


class BackgroundQueueSampler:
    """Samples every interval_s in a thread; outputs read latest() and never wait on the spool."""

    def __init__(
        self, sampler: QueueSampler, interval_s: float = 60.0, deadline_s: float | None = None
    ) -> None:
        self.sampler = sampler
        self.interval_s = interval_s
        self.deadline_s = deadline_s if deadline_s is not None else max(1.0, interval_s * 0.8)
        self.failures = 0
        self.last_error = ""
        self._latest: QueueSnapshot | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="queue-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def latest(self) -> QueueSnapshot | None:
        """The last good snapshot (its age is time.time() - taken_at), None before the first."""
        with self._lock:
            return self._latest

    def sample_once(self) -> QueueSnapshot | None:
        try:
            snap = self.sampler.sample(self.deadline_s)
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            # a stopped Postfix, a spool gone read-only...: keep serving the last good one
            self.failures += 1
            self.last_error = f"{type(e).__name__}: {e}"
            return None
        with self._lock:
            self._latest = snap
        return snap

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(self.interval_s)
