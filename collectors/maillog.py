"""Postfix log -> delivery events: parse (collectors.logparse), correlate by queue id, follow.

The agent reads lines with LogFollower, feeds them to one Correlator and gets DeliveryEvents;
`mailpulse logs parse|report` do the same over files or stdin.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from mailpulse.bounce.classify import classify
from mailpulse.collectors.follower import LogFollower
from mailpulse.collectors.logparse import LogRecord, parse_line, reply_codes

from mailpulse.events import DeliveryEvent

__all__ = [
    "Correlator",
    "LogFollower",
    "LogRecord",
    "events_from_lines",
    "parse_line",
    "reply_codes",
]

DEFAULT_MAX_MESSAGES = 100_000  # queue ids kept; each costs well under 1 KiB
SAMPLES_PER_PROGRAM = 5
DEFERRED_KEPT_PER_MESSAGE = 50  # recipients remembered to name them when the message expires


@dataclass(slots=True)
class _Message:
    sender: str = ""
    size: int | None = None
    nrcpt: int | None = None
    client: str = ""
    message_id: str = ""
    # recipient -> the last deferral event, to report each one when the message expires
    deferred: dict[str, DeliveryEvent] = field(default_factory=dict)


def _float(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        return 0.0


def _delays(v: str) -> tuple[float, float, float, float] | None:
    parts = v.split("/")
    if len(parts) != 4:
        return None
    try:
        a, b, c, d = (float(x) for x in parts)
    except ValueError:
        return None
    return (a, b, c, d)


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
        self.messages: OrderedDict[str, _Message] = OrderedDict()
        self.stats: Counter[str] = Counter()
        self.samples: dict[str, list[str]] = {}

    # -- table ---------------------------------------------------------------------------
    def _message(self, key: str) -> _Message:
        m = self.messages.get(key)
        if m is None:
            m = self.messages[key] = _Message()
            if len(self.messages) > self.max_messages:
                self.messages.popitem(last=False)
                self.stats["evictions"] += 1
        return m

    # -- input ---------------------------------------------------------------------------
    def feed_line(self, line: bytes | str) -> list[DeliveryEvent]:
        self.stats["lines"] += 1
        rec = parse_line(line)
        if rec is None:
            self.stats["not_postfix"] += 1
            return []
        return self.feed(rec)

    def feed(self, record: LogRecord) -> list[DeliveryEvent]:
        kind = record.kind
        self.stats["records." + kind] += 1
        if "cut" in record.fields:
            self.stats["cut_lines"] += 1
        if kind == "delivery":
            return self._delivery(record)
        # A message is keyed by node, instance and queue id: gathered logs mix many nodes.
        if kind == "queued":
            m = self._message(_key(record))
            f = record.fields
            m.sender = f.get("from", "")
            m.size = _int(f.get("size", ""))
            m.nrcpt = _int(f.get("nrcpt", ""))
        elif kind == "client":
            self._message(_key(record)).client = record.fields.get("client_ip", "")
        elif kind == "message_id":
            self._message(_key(record)).message_id = record.fields.get("message_id", "")
        elif kind == "removed":
            self.messages.pop(_key(record), None)
        elif kind == "expired":
            return self._expired(record)
        elif kind == "unknown":
            prog = record.program or "?"
            self.stats["unparsed." + prog] += 1
            kept = self.samples.setdefault(prog, [])
            if len(kept) < SAMPLES_PER_PROGRAM:
                kept.append(record.fields.get("message", ""))
        elif kind == "reject":
            self.stats["rejects." + record.fields.get("action", "reject")] += 1
        return []

    def _delivery(self, rec: LogRecord) -> list[DeliveryEvent]:
        f = rec.fields
        relay = f.get("relay", "")
        if self.content_filters and relay:
            hostport = f"{f.get('relay_ip', '')}:{f.get('relay_port', '')}"
            if hostport in self.content_filters or f.get("relay_host", "") in self.content_filters:
                self.stats["content_filter_relays"] += 1
                return []
        key = _key(rec)
        m = self.messages.get(key)
        ev = make_event(rec, m)
        self.stats["events." + ev.status] += 1
        if ev.status == "deferred":
            m = m or self._message(key)
            if len(m.deferred) < DEFERRED_KEPT_PER_MESSAGE or ev.recipient in m.deferred:
                m.deferred[ev.recipient] = ev
        elif m is not None and m.deferred:
            m.deferred.pop(ev.recipient, None)
        return [ev]

    def _expired(self, rec: LogRecord) -> list[DeliveryEvent]:
        """qmgr gives up on a message: one event per recipient still deferred in it."""
        m = self.messages.get(_key(rec))
        reason = "message expired"
        verdict = classify("", "", reason)
        out = []
        deferred: list[DeliveryEvent | None] = list(m.deferred.values()) if m else []
        for last in deferred or [None]:
            out.append(
                DeliveryEvent(
                    time=rec.time,
                    node=rec.node,
                    instance=rec.instance,
                    program=rec.program,
                    queue_id=rec.queue_id,
                    recipient=last.recipient if last else "",
                    domain=last.domain if last else "",
                    relay=last.relay if last else "",
                    status="expired",
                    dsn=last.dsn if last else "",
                    reply_code=last.reply_code if last else "",
                    reply_text=last.reply_text if last else reason,
                    reason=verdict.reason,
                    scope=verdict.scope,
                    hard=False,
                    delay=0.0,
                    sender=rec.fields.get("from", ""),
                    size=m.size if m else None,
                    extra={"last_reason": last.reason} if last else {},
                )
            )
        if m:
            m.deferred.clear()
        self.stats["events.expired"] += len(out)
        return out


def _key(rec: LogRecord) -> str:
    return f"{rec.node}/{rec.instance}/{rec.queue_id}"


def _int(v: str) -> int | None:
    return int(v) if v.isdigit() else None


def make_event(rec: LogRecord, m: _Message | None = None) -> DeliveryEvent:
    """A delivery record (and what its message's other lines said) -> DeliveryEvent."""
    f = rec.fields
    recipient = f.get("to", "")
    reply = f.get("reply", "")
    logged_dsn = f.get("dsn", "")
    reply_code, remote_dsn = reply_codes(reply)
    dsn = logged_dsn
    extra: dict[str, str] = {}
    # Postfix logs X.0.0 when the remote's enhanced code disagrees with its reply code's
    # class (or is missing); the remote's own codes are what the analysis must see.
    if remote_dsn and remote_dsn != logged_dsn and logged_dsn.endswith(".0.0"):
        dsn = remote_dsn
        extra["logged_dsn"] = logged_dsn
    status = f.get("status", "")
    verdict = classify(dsn, reply_code, reply)
    if "orig_to" in f:
        extra["orig_to"] = f["orig_to"]
    return DeliveryEvent(
        time=rec.time,
        node=rec.node,
        instance=rec.instance,
        program=rec.program,
        queue_id=rec.queue_id,
        recipient=recipient,
        domain=recipient.rpartition("@")[2].lower(),
        relay=f.get("relay", ""),
        status=status,
        dsn=dsn,
        reply_code=reply_code,
        reply_text=reply,
        reason=verdict.reason,
        scope=verdict.scope,
        hard=verdict.hard,
        delay=_float(f.get("delay", "0")),
        delays=_delays(f.get("delays", "")),
        orig_recipient=f.get("orig_to", ""),
        sender=m.sender if m else "",
        size=m.size if m else None,
        extra=extra,
    )


def events_from_lines(
    lines: Iterable[bytes | str], correlator: Correlator | None = None
) -> Iterator[DeliveryEvent]:
    """Every delivery event in these lines, in order."""
    c = correlator if correlator is not None else Correlator()
    for line in lines:
        yield from c.feed_line(line)
