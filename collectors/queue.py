"""Queue collector: qshape's and mailq's view of a Postfix instance as a QueueSnapshot.

Two ways in, picked automatically: the spool (queue files' envelope records, read directly;
root or the postfix user) and the showq service (collectors.showq: what `postqueue -j` reads; no
root, only access to the public/ directory). From the spool, sampling is incremental: a queued
message's arrival time, sender and recipients do not change while it sits in a queue, so a
sample lists only the directories whose mtime moved, reads only the queue ids new in them (a
queue id encodes the file's inode), re-checks one turn of known files by ctime (a retry or a
delivered recipient changes it), and adjusts running totals for what came and went. Why deferred
mail waits (the defer logs, named by collectors.deferral) is read after the queue files, a
bounded number of messages per sample and none in a first sample, so the first view of a big
queue costs what qshape's does.

Beside it: collectors.background samples in a thread for the agent, collectors.queue_report is
the `mailpulse queue` command.
"""

from __future__ import annotations

import bisect
import errno
import os
import stat
import struct
import sys
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import NamedTuple

from mailpulse.collectors.deferral import PENDING, UNKNOWN, UNREAD, Deferral, deferral_of
from mailpulse.collectors.qfile import (
    BLOCK,
    DeferEntry,
    QueueFileError,
    parse_defer_log,
    parse_queue_file,
    qshape_domain,
)
from mailpulse.collectors.spoolread import Head, envelope, read_all

from mailpulse.domains import DEFAULT_GROUPS, DomainGroups
from mailpulse.events import DEFAULT_AGE_EDGES_MIN, QUEUE_NAMES, QueueSnapshot, QueueStats
from mailpulse.postfix import discover_instances, instance_at

OTHER_DOMAINS = "(other)"


# -- Postfix instances ---------------------------------------------------------------------


def samplers_for_host(config_dir: Path | None = None, **options: object) -> list[QueueSampler]:
    """One sampler per Postfix instance found from config_dir, labelled with its syslog_name."""
    return [
        QueueSampler(i.config_dir, i.name, queue_dir=i.queue_dir, **options)  # type: ignore[arg-type]
        for i in discover_instances(config_dir)
    ]


# -- the sampler -----------------------------------------------------------------------------


class Waiting(NamedTuple):
    """Deferred recipients of one domain group that wait for one reason."""

    group: str
    reason: str
    deferral_class: str


class Cell(NamedTuple):
    """Recipients of a message under one of qshape's rows: its sender's or a recipient's domain."""

    side: str  # "sender" or "recipient"
    domain: str
    recipients: int


class Shape(NamedTuple):
    """What a queued message counts for, shared by every message alike (bulk mail: most of
    them). A file that could not be read has an error ("truncated", "garbage") and counts for
    nothing."""

    queue: str
    directory: str  # where its file is ("" from showq)
    cells: tuple[Cell, ...]  # its sender domain, then each recipient domain
    recipients: int
    deferrals: tuple[tuple[Waiting, int], ...]  # deferred recipients by why they wait
    error: str

    @property
    def pending(self) -> bool:
        """A deferred message whose reasons are not read (all of its deferrals are, or none)."""
        return bool(self.deferrals) and self.deferrals[0][0].deferral_class == PENDING


# Per message, 28 bytes: ctime (changes when Postfix renames the file, retries it or marks
# recipients done), arrival, size, and the index of its shape.
_ENTRY = struct.Struct("=qqqI")

# Queue and defer files are read without touching their access time: deferred files carry
# their next retry time as mtime, in the future, so with relatime every read would write the
# inode. Allowed for the files' owner (postfix) and root; others fall back to plain reads.
_NOATIME = getattr(os, "O_NOATIME", 0)
DEFER_LOG_HEAD = 1 << 16  # one read holds a defer log of hundreds of recipients


@dataclass(slots=True)
class _Dir:
    mtime_ns: int
    reusable: bool  # read long enough after its last change that no change can hide
    names: tuple[str, ...]  # queue files in it (a tuple: a third of a set's memory)
    subdirs: tuple[str, ...]


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
        revalidate_every: int = 10,
        defer_logs_per_sample: int = 50_000,  # deferred messages whose reasons one sample reads
        reasons_in_first_sample: bool = False,  # a one-off view (`mailpulse queue`) wants them
    ) -> None:
        self.config_dir = config_dir
        self.instance = instance
        self.age_edges_min = tuple(age_edges_min)
        self.groups = groups
        self.queue_dir = queue_dir or instance_at(config_dir).queue_dir
        self.source = source
        self.huge_queue = huge_queue
        self.top_domains = top_domains
        self.revalidate_every = max(1, revalidate_every)
        self.defer_logs_per_sample = max(1, defer_logs_per_sample)
        self.reasons_in_first_sample = reasons_in_first_sample
        self.files_read = 0  # queue files opened since this sampler was made
        self._samples = 0
        self._group_of: dict[str, str] = {}
        self._bulk_shapes: dict[tuple[str, str, str, str, Deferral | None], Shape] = {}
        self._defer_dirs: dict[str, str] = {}
        self._deferral_seen: dict[tuple[str, str], Deferral] = {}
        # Non-blocking: a FIFO named like a queue id must not hang the open (it is then skipped).
        self._open_flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _NOATIME
        self._source = ""  # what the cache was built from
        self._reset()

    def _reset(self) -> None:
        """Forget every message: the next sample reads the whole queue again."""
        self._cache: dict[str, bytes] = {}  # queue id -> _ENTRY
        self._shapes: list[Shape] = []
        self._shape_ids: dict[Shape, int] = {}
        self._shape_refs: list[int] = []  # messages per shape; a shape no one has is reused
        self._free_ids: list[int] = []
        # (queue, "sender"|"recipient", domain, arrival) -> [messages, recipients]
        self._cells: dict[tuple[str, str, str, int], list[int]] = {}
        self._queue_totals: dict[str, list[int]] = {q: [0, 0, 0] for q in QUEUE_NAMES}
        self._deferrals: Counter[Waiting] = Counter()
        self._errors: Counter[str] = Counter()  # unreadable files in the cache, by kind
        self._dirs: dict[str, _Dir] = {}
        self._not_ready: dict[str, tuple[str, str]] = {}  # qid -> (queue, directory)
        # Deferred messages whose reasons are not read yet, in the order they came (read in
        # that order); a queue id gone or read since is skipped when its turn comes.
        self._pending: deque[str] = deque()
        self._pending_count = 0
        self._warm = False  # a first sample was made: later ones read reasons too

    # -- aggregates ------------------------------------------------------------------------
    def _apply(self, shape: Shape, arrival: int, size: int, sign: int) -> None:
        q = shape.queue
        if shape.error:
            self._errors[shape.error] += sign
            return
        totals = self._queue_totals[q]
        totals[0] += sign
        totals[1] += sign * shape.recipients
        totals[2] += sign * size
        cells = self._cells
        for kind, domain, n in shape.cells:
            key = (q, kind, domain, arrival)
            cell = cells.get(key)
            if cell is None:
                cells[key] = [sign, sign * n]
            else:
                cell[0] += sign
                cell[1] += sign * n
                if not cell[0]:
                    del cells[key]
        if q == "deferred":
            for k, n in shape.deferrals:
                self._deferrals[k] += sign * n
                if not self._deferrals[k]:
                    del self._deferrals[k]

    def _ref(self, shape: Shape) -> int:
        """The index of a shape, shared by every message that has it."""
        sid = self._shape_ids.get(shape)
        if sid is None:
            if self._free_ids:
                sid = self._free_ids.pop()
                self._shapes[sid] = shape
            else:
                sid = len(self._shapes)
                self._shapes.append(shape)
                self._shape_refs.append(0)
            self._shape_ids[shape] = sid
        self._shape_refs[sid] += 1
        return sid

    def _unref(self, sid: int) -> None:
        self._shape_refs[sid] -= 1
        if not self._shape_refs[sid]:
            del self._shape_ids[self._shapes[sid]]
            self._free_ids.append(sid)

    def _put(self, qid: str, shape: Shape, ctime_ns: int, arrival: int, size: int) -> None:
        self._drop(qid)
        self._cache[qid] = _ENTRY.pack(ctime_ns, arrival, size, self._ref(shape))
        self._apply(shape, arrival, size, +1)
        if shape.pending:
            self._pending.append(qid)
            self._pending_count += 1

    def _drop(self, qid: str) -> None:
        entry = self._cache.pop(qid, None)
        if entry is None:
            return
        _ctime, arrival, size, sid = _ENTRY.unpack(entry)
        shape = self._shapes[sid]
        self._apply(shape, arrival, size, -1)
        self._unref(sid)
        self._pending_count -= shape.pending

    def _queue_of(self, qid: str) -> str | None:
        entry = self._cache.get(qid)
        return None if entry is None else self._shapes[_ENTRY.unpack(entry)[3]].queue

    def _group(self, domain: str) -> str:
        g = self._group_of.get(domain)
        if g is None:
            g = self._group_of[domain] = self.groups.group(domain)
        return g

    def _shape(
        self,
        queue: str,
        directory: str,
        sender: str,
        recipients: tuple[str, ...],
        reasons: dict[str, DeferEntry] | None,
    ) -> Shape:
        """reasons None: not read yet, every deferred recipient counts as pending."""
        sender_domain = qshape_domain(sender)
        if len(recipients) == 1:  # bulk mail: most messages, without the general machinery
            d = qshape_domain(recipients[0])
            why = None
            if queue == "deferred":
                why = UNREAD if reasons is None else deferral_of(reasons.get(recipients[0]))
            # Bulk messages share a few shapes: found again, none is built per message.
            key = (queue, directory, sender_domain, d, why)
            shape = self._bulk_shapes.get(key)
            if shape is None:
                if len(self._bulk_shapes) >= 4096:  # bounded: it only saves time
                    self._bulk_shapes.clear()
                deferred = () if why is None else ((Waiting(self._group(d), *why), 1),)
                cells: tuple[Cell, ...] = (
                    Cell("sender", sender_domain, 1),
                    Cell("recipient", d, 1),
                )
                shape = self._bulk_shapes[key] = Shape(queue, directory, cells, 1, deferred, "")
            return shape
        domains = [qshape_domain(r) for r in recipients]
        deferrals: Counter[Waiting] = Counter()
        if queue == "deferred":
            for r, d in zip(recipients, domains, strict=True):
                why = UNREAD if reasons is None else deferral_of(reasons.get(r))
                deferrals[Waiting(self._group(d), *why)] += 1
        n = len(recipients)
        cells = (Cell("sender", sender_domain, n),) + tuple(
            Cell("recipient", d, k) for d, k in Counter(domains).items()
        )
        return Shape(queue, directory, cells, n, tuple(deferrals.items()), "")

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
        if source != self._source or source == "showq":  # showq lists everything each time
            self._reset()
            self._source = source
        errors: Counter[str] = Counter()
        if source == "spool":
            complete, counted = self._sample_spool(deadline, errors)
        else:
            complete, counted = self._sample_showq(errors), None
        return self._snapshot(source, started, complete, errors, counted)

    def _sample_spool(
        self, deadline: float | None, errors: Counter[str]
    ) -> tuple[bool, dict[str, list[int]] | None]:
        """Re-read only what changed: new names in directories whose mtime moved, files still
        being written, and one turn of files whose ctime moved (a retry, recipients delivered:
        what a directory listing cannot show)."""
        self._samples += 1
        # a first sample: queue files only, reasons from the next one (unless asked for now)
        cold = not self._warm and not self.reasons_in_first_sample
        todo: list[tuple[str, str, Iterable[str]]] = []  # (queue, directory, queue ids)
        gone: list[tuple[str, str]] = []  # (qid, queue)
        for q in QUEUE_NAMES:
            _diff_tree(os.path.join(self.queue_dir, q), q, self._dirs, todo, gone, errors)
        total = sum(len(d.names) for d in self._dirs.values())
        if total > self.huge_queue:
            counted = {q: [0, 0] for q in QUEUE_NAMES}
            for path, d in self._dirs.items():
                q = os.path.relpath(path, self.queue_dir).split(os.sep, 1)[0]
                if q in counted:
                    counted[q][0] += len(d.names)
            self._reset()  # what was listed was not read: the next sample starts over
            return False, counted
        for qid, q in gone:
            if self._queue_of(qid) == q:  # not already seen in its next queue
                self._drop(qid)
            self._not_ready.pop(qid, None)
        todo.extend((q, where, (qid,)) for qid, (q, where) in self._not_ready.items())
        self._not_ready.clear()
        every, turn = self.revalidate_every, self._samples % self.revalidate_every
        for qid in [qid for qid in self._cache if hash(qid) % every == turn]:
            ctime_ns, _arrival, _size, sid = _ENTRY.unpack(self._cache[qid])
            q, directory = self._shapes[sid].queue, self._shapes[sid].directory
            try:
                if os.stat(f"{directory}/{qid}").st_ctime_ns != ctime_ns:
                    todo.append((q, directory, (qid,)))
            except FileNotFoundError:
                self._drop(qid)
            except OSError:  # read it: the reading counts what is wrong
                todo.append((q, directory, (qid,)))
        late = False
        i = 0
        # The files are read in batches ahead of this loop (spoolread); when the deadline
        # passes, the reading stops and the names not taken yet wait for the next sample.
        queue_of = {directory: q for q, directory, _qids in todo}
        heads = read_all(((d, qids) for _q, d, qids in todo), self._open_flags, BLOCK)
        try:
            for directory, qid, head in heads:
                if deadline is not None and i % 64 == 0 and time.monotonic() > deadline:
                    late = True
                    break
                i += 1
                self._take_file(qid, queue_of[directory], directory, head, errors)
        except BaseException:
            # The listing already holds these names: unless they are read next time, the
            # files would never be read at all.
            heads.close()
            self._not_ready.update(_names_from(todo, i - 1))
            raise
        if late:  # read them next time
            heads.close()
            rest = dict(_names_from(todo, i))
            errors["deadline_skipped"] += len(rest)
            self._not_ready.update(rest)
        if not cold and not late:
            late = self._read_reasons(deadline)
        self._warm = self._warm or not late
        errors.update(+self._errors)
        return not late, None

    def _read_reasons(self, deadline: float | None) -> bool:
        """Read the defer logs of up to defer_logs_per_sample pending messages, oldest pending
        first; True when the deadline cut it short. Postfix removes a message's defer log when
        the message next enters the active queue, so a log changes only after its queue file
        was re-listed or changed its ctime, and was therefore re-read and made pending again."""
        # (pending shape, its deferrals) -> the shape with them: bulk mail shares a few
        known: dict[tuple[int, tuple[tuple[Waiting, int], ...]], Shape] = {}
        totals, pending = self._deferrals, self._pending
        # The messages whose logs this sample reads, in their turn, by defer directory.
        turn: dict[str, list[str]] = {}
        taken = 0
        while pending and taken < self.defer_logs_per_sample:
            qid = pending.popleft()
            entry = self._cache.get(qid)
            if entry is not None:
                shape = self._shapes[_ENTRY.unpack(entry)[3]]
                if shape.pending:
                    turn.setdefault(self._defer_dir(shape.directory), []).append(qid)
                    taken += 1
        logs = read_all(turn.items(), self._open_flags, DEFER_LOG_HEAD)
        for i, (defer_dir, qid, head) in enumerate(logs):
            if deadline is not None and i % 64 == 63 and time.monotonic() > deadline:
                logs.close()
                # Not read: first in line next time.
                left = [q for q, _w in _names_from([("", d, q) for d, q in turn.items()], i)]
                pending.extendleft(reversed(left))
                return True
            ctime_ns, arrival, size, sid = _ENTRY.unpack(self._cache[qid])
            shape = self._shapes[sid]
            err, _mode, _ctime, _mtime, data = head
            if not err and data is not None and len(data) < DEFER_LOG_HEAD:
                text = data.decode("utf-8", "replace")
            else:  # a long log, or something wrong: read it the slow way, which says what
                try:
                    text = self._read_small(f"{defer_dir}/{qid}")
                except OSError:  # none (e.g. requeued by postsuper -r) or unreadable: unknown
                    text = ""
            read = self._deferrals_read(shape.deferrals, parse_defer_log(text))
            new = known.get((sid, read))
            if new is None:
                new = known[(sid, read)] = shape._replace(deferrals=read)
            # Only the deferral counts move: the message's cells and totals stay as they are.
            self._cache[qid] = _ENTRY.pack(ctime_ns, arrival, size, self._ref(new))
            self._unref(sid)
            self._pending_count -= 1
            for k, n in shape.deferrals:
                totals[k] -= n
                if not totals[k]:
                    del totals[k]
            for k, n in read:
                totals[k] += n
        return False

    def _deferrals_read(
        self, pending: tuple[tuple[Waiting, int], ...], entries: list[DeferEntry]
    ) -> tuple[tuple[Waiting, int], ...]:
        """A message's recipients by why they wait, from its pending counts and its defer log;
        recipients without a logged reason count as UNKNOWN. A defer log names only its own
        message's recipients, so matching an entry to a recipient's domain group is matching
        it to the recipient."""
        if len(pending) == 1 and pending[0][1] == 1:  # one recipient: its last logged word
            group = pending[0][0].group
            last = None
            for e in entries:
                if self._group(qshape_domain(e.recipient)) == group:
                    last = e
            return ((Waiting(group, *self._deferral_of(last)), 1),)
        left: Counter[str] = Counter()
        for waiting, n in pending:
            left[waiting.group] += n
        deferrals: Counter[Waiting] = Counter()
        for e in {e.recipient: e for e in entries}.values():  # the last word per recipient
            group = self._group(qshape_domain(e.recipient))
            if left[group] > 0:
                left[group] -= 1
                deferrals[Waiting(group, *self._deferral_of(e))] += 1
        for group, n in left.items():
            if n:
                deferrals[Waiting(group, *UNKNOWN)] += n
        return tuple(deferrals.items())

    def _deferral_of(self, entry: DeferEntry | None) -> Deferral:
        """deferral_of, remembered per logged status and reason: the same reply reaches a
        whole campaign, so most defer logs say what an earlier one said."""
        if entry is None:
            return UNKNOWN
        key = (entry.status, entry.reason)
        why = self._deferral_seen.get(key)
        if why is None:
            if len(self._deferral_seen) >= 16384:  # bounded: it only saves time
                self._deferral_seen.clear()
            why = self._deferral_seen[key] = deferral_of(entry)
        return why

    def _defer_dir(self, directory: str) -> str:
        """defer/ is hashed like deferred/ (Postfix's default hash_queue_names)."""
        prefix = self._defer_dirs.get(directory)
        if prefix is None:
            sub = os.path.relpath(directory, os.path.join(self.queue_dir, "deferred"))
            prefix = os.path.join(self.queue_dir, "defer", sub) if sub != "." else ""
            prefix = self._defer_dirs[directory] = prefix or os.path.join(self.queue_dir, "defer")
        return prefix

    def _open(self, path: str) -> int:
        try:
            return os.open(path, self._open_flags)
        except PermissionError:
            if not self._open_flags & _NOATIME:
                raise
            self._open_flags &= ~_NOATIME  # not the files' owner: plain reads from now on
            return os.open(path, self._open_flags)

    def _take_file(
        self, qid: str, queue: str, directory: str, head: Head, errors: Counter[str]
    ) -> None:
        """A queue file from the first bytes read_all brought; anything but a complete,
        readable envelope within them is read again the slow way, which says what is wrong."""
        err, mode, ctime_ns, mtime, data = head
        if err or data is None:
            self._read_file(qid, queue, directory, errors)
            return
        # Postfix marks a queue file complete with the owner execute bit (showq checks it
        # too); until then cleanup or postdrop is still writing it.
        if queue != "corrupt" and mode & 0o700 != 0o700:
            self.files_read += 1
            self._not_ready[qid] = (queue, directory)
            return

        # The C envelope reader answers for the usual file and leaves the rest to Python's.
        got = envelope(data) if envelope is not None else None
        if got is not None:
            arrival, sender, recipients, size = got
            self.files_read += 1
            shape = self._shape(queue, directory, sender, tuple(recipients), None)
            self._put(qid, shape, ctime_ns, mtime if arrival is None else arrival, size or 0)
            return

        def source(offset: int, n: int) -> bytes:
            if offset + n > len(data) and len(data) == BLOCK:  # the file goes on
                raise _NeedMore
            return data[offset : offset + n]

        try:
            env = parse_queue_file(source, mtime)
        except (_NeedMore, QueueFileError):
            self._read_file(qid, queue, directory, errors)
            return
        self.files_read += 1
        shape = self._shape(queue, directory, env.sender, env.recipients, None)
        self._put(qid, shape, ctime_ns, env.arrival, env.size)

    def _read_file(self, qid: str, queue: str, directory: str, errors: Counter[str]) -> None:
        self.files_read += 1
        try:
            fd = self._open(f"{directory}/{qid}")
        except FileNotFoundError:  # delivered or moved since the listing: seen next time
            errors["vanished"] += 1
            if self._queue_of(qid) == queue:
                self._drop(qid)
            return
        except OSError as e:  # ELOOP: a symlink, refused by O_NOFOLLOW
            kind = "not_a_file" if e.errno == errno.ELOOP else "unreadable"
            self._skip(qid, queue, directory, kind, errors)
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # a FIFO, a device, a directory: never read
                self._skip(qid, queue, directory, "not_a_file", errors)
                return
            # Postfix marks a queue file complete with the owner execute bit (showq checks it
            # too); until then cleanup or postdrop is still writing it.
            if queue != "corrupt" and st.st_mode & 0o700 != 0o700:
                self._not_ready[qid] = (queue, directory)
                return
            env = parse_queue_file(lambda off, n: os.pread(fd, n, off), int(st.st_mtime))
        except QueueFileError as e:
            # A file in the corrupt queue is broken by definition: count it as a message there.
            error = "" if queue == "corrupt" else e.kind
            cells = () if error else (Cell("sender", "", 0),)  # its age still counts
            bad = Shape(queue, directory, cells, 0, (), error)
            self._put(qid, bad, st.st_ctime_ns, int(st.st_mtime), st.st_size)
            return
        except OSError:
            errors["unreadable"] += 1
            return
        finally:
            os.close(fd)
        shape = self._shape(queue, directory, env.sender, env.recipients, None)
        self._put(qid, shape, st.st_ctime_ns, env.arrival, env.size)

    def _skip(self, qid: str, queue: str, directory: str, kind: str, errors: Counter[str]) -> None:
        """A name that could not be read: an error of this sample and of every next one while
        it is there (it is tried again each time), and no longer a message."""
        errors[kind] += 1
        self._not_ready[qid] = (queue, directory)
        if self._queue_of(qid) == queue:
            self._drop(qid)

    def _read_small(self, path: str) -> str:
        """A defer log's text."""
        fd = self._open(path)
        try:
            data = os.read(fd, 1 << 16)
            if len(data) == 1 << 16:  # a long one: many recipients
                while chunk := os.read(fd, 1 << 16):
                    data += chunk
            return data.decode("utf-8", "replace")
        finally:
            os.close(fd)

    def _sample_showq(self, errors: Counter[str]) -> bool:
        # here: a spool sample (the usual case, as root or postfix) never loads the socket code
        from mailpulse.collectors.showq import parse_showq, read_showq

        data = read_showq(self.queue_dir / "public" / "showq")
        for msg in parse_showq(data, errors):
            reasons = {
                r: DeferEntry(r, "", why) for r, why in msg.recipients if why
            }  # showq lists each recipient once, with its reason when it has one
            recipients = tuple(r for r, _why in msg.recipients)
            shape = self._shape(msg.queue, "", msg.sender, recipients, reasons)
            self._put(msg.queue_id, shape, 0, msg.arrival, msg.size)
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
            snap.deferral_coverage = 0.0 if counted["deferred"][0] else 1.0
            snap.duration_s = time.monotonic() - started
            return snap
        oldest: dict[str, int] = {}
        shape: dict[tuple[str, str, str, int], list[int]] = {}
        raw: dict[tuple[str, str, str, int], list[int]] = {}
        for (q, kind, domain, arrival), (m, r) in self._cells.items():
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
        snap.deferrals = {
            (k.group, k.reason, k.deferral_class): n for k, n in self._deferrals.items()
        }
        deferred = self._queue_totals["deferred"][0]
        snap.deferral_coverage = (deferred - self._pending_count) / deferred if deferred else 1.0
        snap.duration_s = time.monotonic() - started
        return snap


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


class _NeedMore(Exception):
    """A queue file's envelope goes on past the bytes read ahead."""


def _names_from(
    todo: list[tuple[str, str, Iterable[str]]], start: int
) -> Iterator[tuple[str, tuple[str, str]]]:
    """(queue id, (queue, directory)) of the names of todo from the start-th one on."""
    names = ((qid, (q, d)) for q, d, qids in todo for qid in qids)
    return islice(names, max(0, start), None)


def _diff_tree(
    root: str,
    queue: str,
    dirs: dict[str, _Dir],
    added: list[tuple[str, str, Iterable[str]]],
    gone: list[tuple[str, str]],
    errors: Counter[str],
) -> None:
    """What came and went under a (hashed) queue directory since the last call: one stat per
    directory, and a listing only of the directories whose mtime moved."""
    stack = [root]
    while stack:
        path = stack.pop()
        known = dirs.get(path)
        try:
            mtime_ns = os.stat(path).st_mtime_ns
            if known is not None and known.reusable and known.mtime_ns == mtime_ns:
                stack.extend(known.subdirs)
                continue
            # Directory times tick coarsely: a listing made within a second of a change may
            # miss a later change in the same tick, so it is read again next time.
            reusable = time.time_ns() - mtime_ns > 1_000_000_000
            entries = os.listdir(path)
        except FileNotFoundError:
            entries, reusable, mtime_ns = [], False, 0
        except OSError:
            errors["unreadable"] += 1
            continue
        # Postfix's hashed queues hold one-character directories and queue-id files.
        subdirs = tuple(f"{path}/{e}" for e in entries if len(e) == 1)
        names = tuple(e for e in entries if len(e) >= 6 and e.isascii() and e.isalnum())
        path = sys.intern(path)
        if known is None or not known.names:
            if names:
                added.append((queue, path, names))
        else:
            new, old = frozenset(names), frozenset(known.names)
            came = new - old
            added.append((queue, path, came))
            gone.extend((qid, queue) for qid in old - new)
            # A listing makes a new string of every name: keep those the cache already holds.
            names = tuple(filter(new.__contains__, known.names)) + tuple(came)
        for d in known.subdirs if known is not None else ():
            if d not in subdirs:  # a hash directory removed: everything in it went
                _forget(d, queue, dirs, gone)
        if mtime_ns:
            dirs[path] = _Dir(mtime_ns, reusable, names, subdirs)
        else:
            dirs.pop(path, None)
        stack.extend(subdirs)


def _forget(path: str, queue: str, dirs: dict[str, _Dir], gone: list[tuple[str, str]]) -> None:
    known = dirs.pop(path, None)
    if known is not None:
        gone.extend((qid, queue) for qid in known.names)
        for d in known.subdirs:
            _forget(d, queue, dirs, gone)
