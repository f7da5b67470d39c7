"""Postfix log -> delivery events: scan, correlate by queue id.

Every source hands over blocks of whole lines (LogSource.read_blocks: files, the journal,
stdin); one Correlator turns them into DeliveryEvents (feed_block). A block goes through a
scanner first: the C one (_fastlog.c) where it is built, else its pure-Python twin
(collectors.scanner), which return the same items. The shapes that make most of a busy log
(qmgr from=/removed/expired, cleanup message-id, smtpd client=, bounce notices, delivery
status) come out of it as fields; every other line goes to the general parser
(collectors.logparse). Both end in the same functions below, and tests hold them equal on the
lab's logs, the grok corpus and garbage.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from mailpulse.bounce.classify import Verdict, classify, without_addresses
from mailpulse.collectors.follower import BLOCK, JournalFollower, LogFollower, StreamSource
from mailpulse.collectors.logparse import (
    MAX_LINE,
    LogRecord,
    delay_of,
    delays_of,
    delivery_codes,
    has_stamp,
    parse_header,
    parse_line,
    reply_codes,
)
from mailpulse.collectors.scanner import SERVICES_OF, LineKind

from mailpulse.events import STATUSES, DeliveryEvent

try:  # the C scanner where it is built; both give the same items
    from mailpulse.collectors._fastlog import scan
except ImportError:  # pragma: no cover - a build without a C compiler
    from mailpulse.collectors.scanner import scan

__all__ = [
    "Correlator",
    "JournalFollower",
    "LogFollower",
    "LogRecord",
    "events_from_lines",
    "parse_line",
    "reply_codes",
]

DEFAULT_MAX_MESSAGES = 100_000  # queue ids kept; each costs a few hundred bytes
SAMPLES_PER_PROGRAM = 5
DEFERRED_KEPT_PER_MESSAGE = 50  # recipients remembered to name them when the message expires
_KIND_NAMES = tuple(k.name.lower() for k in LineKind)  # the general parser's names for them
# plain ints in the loop: comparing an int to an IntEnum member costs a call each time
DELIVERY, QUEUED, REMOVED, MESSAGE_ID, CLIENT, _NOTIFICATION, EXPIRED = map(int, list(LineKind)[1:])
# line prefix -> (time, node, instance, program, the kinds taken from its service as bits),
# a busy node logs from a few hundred processes, each many lines within one second
_HEADS: dict[str, tuple[Any, ...]] = {}
_NO_HEAD = (0.0, "", "", "", 0)  # not Postfix's, or another layout: the general parser reads it
_TAKEN: dict[str, int] = {}
for _kind, _services in enumerate(SERVICES_OF):
    for _service in _services:
        _TAKEN[_service] = _TAKEN.get(_service, 0) | 1 << _kind


@dataclass(slots=True)
class _Message:
    sender: str = ""
    size: int | None = None
    nrcpt: int | None = None
    client: str = ""
    message_id: str = ""
    # recipient -> (domain, relay, dsn, reply code, reason) of its last deferral
    deferred: dict[str, tuple[str, str, str, str, str]] | None = None


MessageKey = tuple[str, str, str]  # (queue id, node, instance): gathered logs mix many nodes


class _Messages(OrderedDict[MessageKey, _Message]):
    """The bounded queue-id table. Reading a key it lacks (table[key]) adds the message, and
    past the limit evicts the oldest (counted): the one place a message is added."""

    def __init__(self, limit: int, counts: Counter[str]) -> None:
        super().__init__()
        self.limit = limit
        self.counts = counts

    def __missing__(self, key: MessageKey) -> _Message:
        m = self[key] = _Message()
        if len(self) > self.limit:
            self.popitem(last=False)
            self.counts["evictions"] += 1
        return m


def _int(v: str) -> int | None:
    # ASCII digits only ("²" is a digit to isdigit, not to int); past 18 digits it is no size
    return int(v) if len(v) <= 18 and v.isascii() and v.isdigit() else None


_MEMO_SIZE = 4096


# A delivery line's fields after its queue id, as both scanners give them: recipient, orig_to,
# relay, delay, delays, dsn, status, reply, domain, reply code, logged dsn (see scanner.py).
DeliveryFields = tuple[Any, ...]


def delivery_fields(f: dict[str, str]) -> DeliveryFields:
    """A general parser's delivery record's fields -> what a scanner gives for the line."""
    rcpt, reply = f.get("to", ""), f.get("reply", "")
    dsn, code, logged = delivery_codes(f.get("dsn", ""), reply)
    delay, delays = delay_of(f.get("delay", "0")), delays_of(f.get("delays", ""))
    domain = rcpt.rpartition("@")[2].lower()
    status = f.get("status", "")
    return (rcpt, f.get("orig_to", ""), f.get("relay", ""), delay, delays, dsn, status, reply,
            domain, code, logged)  # fmt: skip


def reply_verdict(dsn: str, code: str, reply: str) -> Verdict:
    """How a delivery reply is classified, on every road and for the queue's deferrals."""
    # A 2.x.x outcome is "delivered" whatever the text ("queued as 3F2A1..." is unique per
    # message and would only fill the classifier's cache). The text is read as a bounce's is:
    # local parts out, domains kept.
    return classify(dsn, code, "" if dsn[:1] == "2" else without_addresses(reply))


def delivery_event(
    time: float,
    node: str,
    instance: str,
    program: str,
    queue_id: str,
    fields: DeliveryFields,
    m: _Message | None,
) -> DeliveryEvent:
    """One delivery status line (and what its message's other lines said) -> DeliveryEvent:
    the one place every road builds one."""
    rcpt, orig_to, relay, delay, delays, dsn, status, reply, domain, code, logged = fields
    verdict = reply_verdict(dsn, code, reply)
    return DeliveryEvent(  # positional: once per delivery line
        time,
        node,
        instance,
        program,
        queue_id,
        rcpt,
        domain,
        relay,
        status,
        dsn,
        code,
        reply,
        verdict.reason,
        verdict.scope,
        verdict.hard,
        delay,
        delays,
        orig_to,
        m.sender if m else "",
        m.size if m else None,
        {} if logged is None else {"logged_dsn": logged},
    )


def relay_address(relay: str) -> tuple[str, str]:
    """ "host[ip]:port" -> (host, "ip:port"), for matching content filter addresses."""
    b = relay.find("[")
    if b < 0:
        return relay, ":"
    e = relay.find("]", b)
    port = relay[e + 2 :] if relay[e + 1 : e + 2] == ":" else ""
    return relay[:b], f"{relay[b + 1 : e]}:{port}"


class Correlator:
    """Records in, delivery events out, with what each message's other lines said.

    `stats` counts everything seen: lines, records per kind, unparsed lines per program
    (with a few kept in `samples`), evictions from the bounded queue-id table, relays to a
    content filter (not outcomes: the message comes back and is delivered again).
    """

    def __init__(
        self,
        *,
        content_filters: Iterable[str] = ("127.0.0.1:10024", "127.0.0.1:10025"),
        max_messages: int = DEFAULT_MAX_MESSAGES,
    ) -> None:
        self.content_filters = frozenset(content_filters)
        self.max_messages = max_messages
        self.counts: Counter[str] = Counter()
        self.messages = _Messages(max_messages, self.counts)
        self.kinds: Counter[str] = Counter()  # records per kind, counted apart: the hot path
        self.lines = 0
        self.not_postfix = 0
        self.samples: dict[str, list[str]] = {}
        self._filter_relays: dict[str, bool] = {}  # relay -> is a content filter
        # a delivery line cut short (its reply not closed, or no status= yet), waiting for the
        # rest of it on the next line: the line and its record
        self._held: tuple[bytes | str, LogRecord] | None = None

    @property
    def stats(self) -> Counter[str]:
        """Every counter under one name: lines, not_postfix, records.<kind>, events.<status>,
        unparsed.<program>, left_out.<reason> (the unparsed lines that look like a delivery:
        to=<...> and status=), joined_lines (the rest of a delivery line split over two),
        rejects.<action>, evictions, content_filter_relays, cut_lines
        (lines over MAX_LINE, read up to it), and what the caller adds (damaged or unreadable
        files)."""
        out = Counter(self.counts)
        out["lines"] = self.lines
        out["not_postfix"] = self.not_postfix
        for kind, n in self.kinds.items():
            out["records." + kind] = n
        return out

    # -- table ---------------------------------------------------------------------------
    def _is_filter(self, relay: str) -> bool:
        known = self._filter_relays.get(relay)
        if known is None:
            host, address = relay_address(relay)
            known = address in self.content_filters or host in self.content_filters
            if len(self._filter_relays) >= _MEMO_SIZE:
                self._filter_relays.clear()
            self._filter_relays[relay] = known
        return known

    def _track_deferral(self, ev: DeliveryEvent, key: MessageKey, m: _Message | None) -> None:
        """Remember deferrals so an expiry can name its recipients."""
        if ev.status == "deferred":
            m = m or self.messages[key]
            d = m.deferred
            if d is None:
                d = m.deferred = {}
            if len(d) < DEFERRED_KEPT_PER_MESSAGE or ev.recipient in d:
                d[ev.recipient] = (ev.domain, ev.relay, ev.dsn, ev.reply_code, ev.reason)
        elif m is not None and m.deferred:
            m.deferred.pop(ev.recipient, None)

    # -- input ---------------------------------------------------------------------------
    def feed_line(self, line: bytes | str) -> list[DeliveryEvent]:
        """One line (the general road: parse_line, then feed). A delivery line cut short is
        held until the next line says whether it is the rest of it (a line without a syslog
        stamp: a logger that splits long lines) or not (then it is read as it is)."""
        self.lines += 1
        rec = parse_line(line)
        out: list[DeliveryEvent] = []
        if self._held is not None:
            if rec is None and line and len(line) < MAX_LINE and not has_stamp(line):
                return self._continued(line)
            out = self.flush()
        if rec is None:
            self.not_postfix += 1
            if len(line) > MAX_LINE:  # Postfix's lines count it in feed, from the record
                self.counts["cut_lines"] += 1
            return out
        if _cut_short(rec) and len(line) < MAX_LINE:
            self._held = (line, rec)
            return out
        return out + self.feed(rec) if out else self.feed(rec)

    def _continued(self, rest: bytes | str) -> list[DeliveryEvent]:
        """The held line and the rest of it, read as one line."""
        assert self._held is not None
        first = self._held[0]
        self._held = None
        self.counts["joined_lines"] += 1
        if type(first) is not type(rest):
            first, rest = _text(first), _text(rest)
        joined = first + rest  # type: ignore[operator]
        rec = parse_line(joined)
        if rec is not None and _cut_short(rec) and len(joined) < MAX_LINE:
            self._held = (joined, rec)
            return []
        return self.feed(rec) if rec is not None else []

    def flush(self) -> list[DeliveryEvent]:
        """The held line, read as it is: at the end of the input, or before another line."""
        if self._held is None:
            return []
        rec = self._held[1]
        self._held = None
        return self.feed(rec)

    def feed(self, record: LogRecord) -> list[DeliveryEvent]:
        kind = record.kind
        self.kinds[kind] += 1
        if "cut" in record.fields:
            self.counts["cut_lines"] += 1
        f = record.fields
        key = (record.queue_id, record.node, record.instance)
        if kind == "delivery":
            if self.content_filters and self._is_filter(f.get("relay", "")):
                self.counts["content_filter_relays"] += 1
                return []
            m = self.messages.get(key)
            ev = delivery_event(
                record.time,
                record.node,
                record.instance,
                record.program,
                record.queue_id,
                delivery_fields(f),
                m,
            )
            self.counts["events." + ev.status] += 1
            self._track_deferral(ev, key, m)
            return [ev]
        if kind == "queued":
            m = self.messages[key]
            m.sender = f.get("from", "")
            m.size = _int(f.get("size", ""))
            m.nrcpt = _int(f.get("nrcpt", ""))
        elif kind == "client":
            self.messages[key].client = f.get("client_ip", "")
        elif kind == "message_id":
            self.messages[key].message_id = f.get("message_id", "")
        elif kind == "removed":
            self.messages.pop(key, None)
        elif kind == "expired":
            return self._expired(record, key)
        elif kind == "unknown":
            prog = record.program or "?"
            self.counts["unparsed." + prog] += 1
            kept = self.samples.setdefault(prog, [])
            if len(kept) < SAMPLES_PER_PROGRAM:
                kept.append(f.get("message", ""))
            left_out = f.get("left_out")
            if left_out:
                self.counts["left_out." + left_out] += 1
        elif kind == "reject":
            self.counts["rejects." + f.get("action", "reject")] += 1
        return []

    def _expired(self, rec: LogRecord, key: MessageKey) -> list[DeliveryEvent]:
        f = rec.fields
        return self._expire(
            key, rec.time, rec.node, rec.instance, rec.program, rec.queue_id, f.get("from", "")
        )

    def _expire(
        self,
        key: MessageKey,
        time: float,
        node: str,
        instance: str,
        program: str,
        queue_id: str,
        sender: str,
    ) -> list[DeliveryEvent]:
        """qmgr gives up on a message: one event per recipient still deferred in it."""
        m = self.messages.get(key)
        text = "message expired"
        verdict = classify("", "", text)
        deferred = list(m.deferred.items()) if m and m.deferred else [("", None)]
        out = []
        for rcpt, last in deferred:
            domain, relay, dsn, code, reason = last or ("", "", "", "", "")
            out.append(
                DeliveryEvent(
                    time=time,
                    node=node,
                    instance=instance,
                    program=program,
                    queue_id=queue_id,
                    recipient=rcpt,
                    domain=domain,
                    relay=relay,
                    status="expired",
                    dsn=dsn,
                    reply_code=code,
                    reply_text=text,
                    reason=verdict.reason,
                    scope=verdict.scope,
                    hard=False,
                    delay=0.0,
                    sender=sender,
                    size=m.size if m else None,
                    extra={"last_reason": reason} if reason else {},
                )
            )
        if m and m.deferred:
            m.deferred.clear()
        self.counts["events.expired"] += len(out)
        return out

    def feed_lines(self, lines: Iterable[bytes | str]) -> Iterator[DeliveryEvent]:
        """Every delivery event in these lines, read a block at a time (a str, or a line
        holding a newline, goes alone through feed_line)."""
        batch: list[bytes] = []
        size = 0
        for line in lines:
            if type(line) is bytes and b"\n" not in line:
                batch.append(line)
                size += len(line) + 1
                if size >= BLOCK:
                    yield from self._feed_lines_of(b"\n".join(batch), -1)
                    batch, size = [], 0
                continue
            if batch:
                yield from self._feed_lines_of(b"\n".join(batch), -1)
                batch, size = [], 0
            yield from self.feed_line(line)
        if batch:
            yield from self._feed_lines_of(b"\n".join(batch), -1)

    # -- the block road ------------------------------------------------------------------
    def feed_stream(self, f: BinaryIO, block: int = BLOCK) -> Iterator[DeliveryEvent]:
        """Every delivery event in a binary stream (see StreamSource: a pipe's block is what
        it holds, so events come as its lines arrive; an over-long line is cut)."""
        for data in StreamSource(f, block).read_blocks():
            yield from self.feed_block(data)

    def feed_block(self, data: bytes) -> list[DeliveryEvent]:
        """Every delivery event in a block of whole lines ("\n" after each; the last one may
        lack it): the same as feed_line on each line, several times faster."""
        if not data:
            return []
        return self._feed_lines_of(data, len(data) - 1 if data[-1:] == b"\n" else len(data))

    def _feed_lines_of(self, data: bytes, end: int) -> list[DeliveryEvent]:
        """The lines of data[:end] ("\n" between them; all of data when end is -1), without
        copying them out."""
        items = scan(data, MAX_LINE, end)
        out: list[DeliveryEvent] = []
        seen = [0] * len(LineKind)  # lines read per kind, counted at the end: the hot path
        outcomes = dict.fromkeys(STATUSES, 0)
        messages, filters = self.messages, self.content_filters
        heads = _HEADS
        held = self._held is not None
        for it in items:
            kind = it[0]
            head = (heads.get(it[3]) or _header(it[3])) if kind else _NO_HEAD
            t, node, instance, program, taken = head
            # the general road also takes the lines after a held one, and a delivery line cut
            # short in its reply (its rest may come on the next line)
            if not taken >> kind & 1 or held or (kind == DELIVERY and it[12][:1] == "("):
                out += self._general(data[it[1] : it[2]])
                held = self._held is not None
                continue
            seen[kind] += 1
            key = (it[4], node, instance)
            if kind == DELIVERY:
                if filters and self._is_filter(it[7]):
                    self.counts["content_filter_relays"] += 1
                    continue
                m = messages.get(key)
                ev = delivery_event(t, node, instance, program, it[4], it[5:], m)
                outcomes[ev.status] += 1
                if ev.status == "deferred" or (m is not None and m.deferred):
                    self._track_deferral(ev, key, m)
                out.append(ev)
            elif kind == QUEUED:
                m = messages[key]
                m.sender, m.size, m.nrcpt = it[5], it[6], it[7]
            elif kind == MESSAGE_ID:
                messages[key].message_id = it[5]
            elif kind == CLIENT:
                messages[key].client = it[5]
            elif kind == REMOVED:
                messages.pop(key, None)
            elif kind == EXPIRED:
                out += self._expire(key, t, node, instance, program, it[4], it[5])
        self.lines += len(items)
        for kind, n in enumerate(seen):
            if n:
                self.kinds[_KIND_NAMES[kind]] += n
        for status, n in outcomes.items():
            if n:
                self.counts["events." + status] += n
        return out

    def _general(self, line: bytes | str) -> list[DeliveryEvent]:
        self.lines -= 1  # feed_line counts it again
        return self.feed_line(line)


def _text(line: bytes | str) -> str:
    return line if isinstance(line, str) else line.decode("utf-8", "replace")


def _cut_short(rec: LogRecord) -> bool:
    """A delivery line whose reply is not closed, or that stops before its status=."""
    if rec.kind == "delivery":
        return rec.fields["reply"][:1] == "("
    return rec.kind == "unknown" and rec.fields.get("left_out") == "no_status"


def _header(prefix: str) -> tuple[Any, ...]:
    """parse_header, remembered in _HEADS as the loop reads it."""
    h = parse_header(prefix)
    if h is None:
        return _NO_HEAD
    head = (*h[:4], _TAKEN.get(h[4], 0))
    if prefix[9:10] == ":":  # RFC 3339 stamps with a fraction never recur
        if len(_HEADS) > 4096:
            _HEADS.clear()
        _HEADS[prefix] = head
    return head


def events_from_lines(
    lines: Iterable[bytes | str], correlator: Correlator | None = None
) -> Iterator[DeliveryEvent]:
    """Every delivery event in these lines, in order."""
    c = correlator if correlator is not None else Correlator()
    return c.feed_lines(lines)
