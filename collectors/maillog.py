"""Postfix log -> delivery events: parse (collectors.logparse), correlate by queue id, follow.

The agent reads blocks of whole lines with LogFollower.read_blocks, feeds them to one
Correlator (feed_block) and gets DeliveryEvents; `mailpulse logs parse|report` do the same over
files or stdin (feed_stream).

Speed: the shapes that make most of a busy log (qmgr from=/removed/expired, cleanup
message-id, smtpd client=, bounce notices, delivery status) are read by the C scanner
(_fastlog.c) a block at a time, or, where it is not built, by `feed_lines`, one loop of str
methods per line. Every other line goes to the general parser. All roads end in the same
functions below (the C scanner also reads the reply codes and domain as event_of does, so the
block road builds its delivery events in its loop), and tests hold them equal to the general
parser on the lab's logs, the grok corpus and garbage.
"""

from __future__ import annotations

import re
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from mailpulse.bounce.classify import classify
from mailpulse.collectors.follower import BLOCK, JournalFollower, LogFollower
from mailpulse.collectors.logparse import (
    _CLIENT,
    _HEADERS,
    DELIVERY_SERVICES,
    MAX_LINE,
    LogRecord,
    _classic_stamp,
    _iso_time,
    _keyvalues,
    _parse,
    parse_line,
    reply_codes,
)

from mailpulse.events import DeliveryEvent

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
FINAL = frozenset(("sent", "deferred", "bounced", "expired"))
_HEX = "0123456789ABCDEF"
_LONG_QID = re.compile(r"[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{10,24}")
_PREFIXES: dict[str, tuple[float, tuple[Any, ...]]] = {}
# the block road's: header -> (time, node, instance, program, service), flat to unpack at once
_HEADS: dict[str, tuple[float, str, str, str, str]] = {}
_ADDRESS = re.compile(r"<[^<>\s]*@[^<>\s]*>")

try:  # the C scanner for blocks of lines; without it, blocks go through feed_lines
    from mailpulse.collectors._fastlog import scan as _scan
except ImportError:  # pragma: no cover - a build without a C compiler
    _scan = None


@dataclass(slots=True)
class _Message:
    sender: str = ""
    size: int | None = None
    nrcpt: int | None = None
    client: str = ""
    message_id: str = ""
    # recipient -> (domain, relay, dsn, reply code, reason) of its last deferral
    deferred: dict[str, tuple[str, str, str, str, str]] | None = None


def _float(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        return 0.0


def _int(v: str) -> int | None:
    # ASCII digits only ("²" is a digit to isdigit, not to int); past 18 digits it is no size
    return int(v) if len(v) <= 18 and v.isascii() and v.isdigit() else None


def _delays(v: str) -> tuple[float, float, float, float] | None:
    try:
        a, b, c, d = map(float, v.split("/"))
    except ValueError:
        return None
    return (a, b, c, d)


_MEMO_SIZE = 4096


def _classify_text(text: str) -> str:
    # Addresses never decide a reason; without them equal replies share one cache entry.
    return _ADDRESS.sub("<>", text) if "@" in text else text


def build_event(
    time: float,
    node: str,
    instance: str,
    program: str,
    queue_id: str,
    recipient: str,
    relay: str,
    status: str,
    logged_dsn: str,
    reply: str,
    delay: str,
    delays: str,
    orig_to: str,
    m: _Message | None,
) -> DeliveryEvent:
    """One delivery status line (and what its message's other lines said) -> DeliveryEvent."""
    return event_of(
        time,
        node,
        instance,
        program,
        queue_id,
        recipient,
        relay,
        status,
        logged_dsn,
        reply,
        _float(delay),
        _delays(delays),
        orig_to,
        m,
    )


def event_of(
    time: float,
    node: str,
    instance: str,
    program: str,
    queue_id: str,
    recipient: str,
    relay: str,
    status: str,
    logged_dsn: str,
    reply: str,
    delay: float,
    delays: tuple[float, float, float, float] | None,
    orig_to: str,
    m: _Message | None,
) -> DeliveryEvent:
    """build_event with delay and delays already read."""
    c0 = reply[:1]
    if c0 and c0 in "245" and reply[1:3].isdecimal() and reply[3:4] in (" ", "-"):
        reply_code = reply[:3]  # the usual "250 2.0.0 ...": no regex needed
        usual = True
    else:
        codes = reply_codes(reply)
        reply_code = codes[0]
        usual = False
    dsn = logged_dsn
    extra: dict[str, str] = {}
    # Postfix logs X.0.0 when the remote's enhanced code disagrees with its reply code's
    # class (or is missing); the remote's own codes are what the analysis must see. When the
    # reply starts with the logged code itself (not followed by a digit) they agree.
    if logged_dsn.endswith(".0.0") and not (
        usual
        and reply.startswith(logged_dsn, 4)
        and not reply[4 + len(logged_dsn) : 5 + len(logged_dsn)].isdecimal()
    ):
        remote_dsn = (reply_codes(reply) if usual else codes)[1]
        if remote_dsn and remote_dsn != logged_dsn:
            dsn = remote_dsn
            extra["logged_dsn"] = logged_dsn
    # A 2.x.x outcome is "delivered" whatever the text ("queued as 3F2A1..." is unique per
    # message and would only fill the classifier's cache).
    verdict = classify(dsn, reply_code, "" if dsn[:1] == "2" else _classify_text(reply))
    return DeliveryEvent(  # positional: once per delivery line
        time,
        node,
        instance,
        program,
        queue_id,
        recipient,
        recipient.rpartition("@")[2].lower(),
        relay,
        status,
        dsn,
        reply_code,
        reply,
        verdict.reason,
        verdict.scope,
        verdict.hard,
        delay,
        delays,
        orig_to,
        m.sender if m else "",
        m.size if m else None,
        extra,
    )


def make_event(rec: LogRecord, m: _Message | None = None) -> DeliveryEvent:
    f = rec.fields
    return build_event(
        rec.time,
        rec.node,
        rec.instance,
        rec.program,
        rec.queue_id,
        f.get("to", ""),
        f.get("relay", ""),
        f.get("status", ""),
        f.get("dsn", ""),
        f.get("reply", ""),
        f.get("delay", "0"),
        f.get("delays", ""),
        f.get("orig_to", ""),
        m,
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
        # keyed by (queue id, node, instance): gathered logs mix many nodes
        self.messages: OrderedDict[tuple[str, str, str], _Message] = OrderedDict()
        self.counts: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()  # records per kind, counted apart: the hot path
        self.lines = 0
        self.not_postfix = 0
        self.samples: dict[str, list[str]] = {}
        self._filter_relays: dict[str, bool] = {}  # relay -> is a content filter

    @property
    def stats(self) -> Counter[str]:
        """Every counter under one name: lines, not_postfix, records.<kind>, events.<status>,
        unparsed.<program>, rejects.<action>, evictions, content_filter_relays, cut_lines (lines
        over MAX_LINE, read up to it), and what the caller adds (damaged or unreadable files)."""
        out = Counter(self.counts)
        out["lines"] = self.lines
        out["not_postfix"] = self.not_postfix
        for kind, n in self.kinds.items():
            out["records." + kind] = n
        return out

    # -- table ---------------------------------------------------------------------------
    def _message(self, key: tuple[str, str, str]) -> _Message:
        m = self.messages.get(key)
        if m is None:
            m = self.messages[key] = _Message()
            if len(self.messages) > self.max_messages:
                self.messages.popitem(last=False)
                self.counts["evictions"] += 1
        return m

    def _is_filter(self, relay: str) -> bool:
        known = self._filter_relays.get(relay)
        if known is None:
            host, address = relay_address(relay)
            known = address in self.content_filters or host in self.content_filters
            if len(self._filter_relays) >= _MEMO_SIZE:
                self._filter_relays.clear()
            self._filter_relays[relay] = known
        return known

    def _outcome(self, ev: DeliveryEvent, key: tuple[str, str, str], m: _Message | None) -> None:
        """Count the event; remember deferrals so an expiry can name its recipients."""
        self.counts["events." + ev.status] += 1
        self._track_deferral(ev, key, m)

    def _track_deferral(
        self, ev: DeliveryEvent, key: tuple[str, str, str], m: _Message | None
    ) -> None:
        if ev.status == "deferred":
            m = m or self._message(key)
            d = m.deferred
            if d is None:
                d = m.deferred = {}
            if len(d) < DEFERRED_KEPT_PER_MESSAGE or ev.recipient in d:
                d[ev.recipient] = (ev.domain, ev.relay, ev.dsn, ev.reply_code, ev.reason)
        elif m is not None and m.deferred:
            m.deferred.pop(ev.recipient, None)

    # -- input ---------------------------------------------------------------------------
    def feed_line(self, line: bytes | str) -> list[DeliveryEvent]:
        """One line (the general road: parse_line, then feed)."""
        self.lines += 1
        try:
            rec = _parse(line)
        except Exception:  # noqa: BLE001 - counted, never raised: see parse_line
            rec = parse_line(line)
        if rec is None:
            self.not_postfix += 1
            if len(line) > MAX_LINE:  # Postfix's lines count it in feed, from the record
                self.counts["cut_lines"] += 1
            return []
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
            ev = make_event(record, m)
            self._outcome(ev, key, m)
            return [ev]
        if kind == "queued":
            m = self._message(key)
            m.sender = f.get("from", "")
            m.size = _int(f.get("size", ""))
            m.nrcpt = _int(f.get("nrcpt", ""))
        elif kind == "client":
            self._message(key).client = f.get("client_ip", "")
        elif kind == "message_id":
            self._message(key).message_id = f.get("message_id", "")
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
        elif kind == "reject":
            self.counts["rejects." + f.get("action", "reject")] += 1
        return []

    def _expired(self, rec: LogRecord, key: tuple[str, str, str]) -> list[DeliveryEvent]:
        f = rec.fields
        return self._expire(
            key, rec.time, rec.node, rec.instance, rec.program, rec.queue_id, f.get("from", "")
        )

    def _expire(
        self,
        key: tuple[str, str, str],
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
        """Every delivery event in these lines: the fast road for the common shapes."""
        kinds = self.kinds
        messages = self.messages
        headers = _HEADERS
        delivery_services = DELIVERY_SERVICES
        filters = self.content_filters
        prefixes = _PREFIXES
        keyvalues = _keyvalues
        client_re = _CLIENT.match
        n = removed = queued = client = message_id = notification = 0
        try:
            for line in lines:
                n += 1
                # -- the syslog header, as logparse._parse reads it --------------------
                if type(line) is bytes and len(line) <= MAX_LINE:
                    s = line.decode("utf-8", "replace")
                else:
                    yield from self._general(line)
                    continue
                if s[-1:] == "\n":
                    s = s.rstrip("\r\n")
                # "Nov 28 17:33:59 host postfix/smtp[123]" recurs for every line a process
                # logs within one second: one lookup gives its time and program.
                i = s.find(": ", 16)
                pre = prefixes.get(s[:i]) if i > 0 else None
                if pre is None:
                    if s[9:10] == ":" and s[3:4] == " ":
                        j = s.find(" ", 15)
                        tt = _classic_stamp(s[:j])
                    elif s[4:5] == "-" and s[10:11] == "T":
                        j = s.find(" ")
                        tt = _iso_time(s[:j])
                    else:
                        tt = None
                    if tt is None or i < 0 or j < 0 or j > i:
                        yield from self._general(line)
                        continue
                    hdr = headers.get(s[j + 1 : i])
                    if not hdr:
                        yield from self._general(line)
                        continue
                    pre = (tt, hdr)
                    if s[9:10] == ":":  # RFC 3339 stamps with a fraction never recur
                        if len(prefixes) > 4096:
                            prefixes.clear()
                        prefixes[s[:i]] = pre
                if "\x00" in s:
                    yield from self._general(line)
                    continue
                t, hdr = pre
                node, instance, program, service, _pid, _h = hdr
                # -- the queue id ----------------------------------------------------
                k = s.find(": ", i + 7, i + 28)
                if k < 0:
                    yield from self._general(line)
                    continue
                qid = s[i + 2 : k]
                if qid.strip(_HEX) and not _LONG_QID.fullmatch(qid):
                    yield from self._general(line)
                    continue
                key = (qid, node, instance)
                c = s[k + 2 : k + 3]
                # -- the six shapes --------------------------------------------------
                if service in delivery_services and s.startswith("to=<", k + 2):
                    p = s.find(", status=", k)
                    if p < 0:
                        yield from self._general(line)
                        continue
                    sp = s.find(" ", p + 9)
                    status = s[p + 9 : sp] if sp > 0 else s[p + 9 :]
                    if status not in FINAL:
                        yield from self._general(line)
                        continue
                    reply = s[sp + 1 :] if sp > 0 else ""
                    if reply[:1] == "(" and reply[-1:] == ")":
                        reply = reply[1:-1]
                    e = s.find(">, ", k + 6, p)
                    if e < 0:
                        yield from self._general(line)
                        continue
                    # the fields as the general parser reads them: whatever their order,
                    # a field given twice, an empty one, "relay=<>"
                    f = {"to": s[k + 6 : e]}
                    keyvalues(f, s[e + 3 : p], ", ")
                    relay = f.get("relay", "")
                    kinds["delivery"] += 1
                    if filters and self._is_filter(relay):
                        self.counts["content_filter_relays"] += 1
                        continue
                    m = messages.get(key)
                    ev = build_event(
                        t,
                        node,
                        instance,
                        program,
                        qid,
                        f["to"],
                        relay,
                        status,
                        f.get("dsn", ""),
                        reply,
                        f.get("delay", "0"),
                        f.get("delays", ""),
                        f.get("orig_to", ""),
                        m,
                    )
                    self._outcome(ev, key, m)
                    yield ev
                    continue
                if service == "qmgr":
                    if c == "r" and s.endswith("removed", k + 2) and len(s) == k + 9:
                        messages.pop(key, None)
                        removed += 1
                        continue
                    if c == "f" and s.endswith(" (queue active)"):
                        e = s.find(">, size=", k)
                        r = s.find(", nrcpt=", e)
                        sender = s[k + 8 : e]
                        size, nrcpt = s[e + 8 : r], s[r + 8 : -15]
                        # what the general parser would split otherwise: ", " or " (" inside
                        # a field, ", status=expired" in the sender, "<1>" as a size
                        if (
                            s.startswith("from=<", k + 2)
                            and e > 0
                            and r > 0
                            and ", " not in sender
                            and " (" not in sender
                            and size.isascii()
                            and size.isdigit()
                            and nrcpt.isascii()
                            and nrcpt.isdigit()
                        ):
                            m = self._message(key)
                            m.sender = sender
                            m.size = _int(size)
                            m.nrcpt = _int(nrcpt)
                            queued += 1
                            continue
                elif service == "cleanup":
                    if c == "m" and s.startswith("message-id=", k + 2):
                        mid = s[k + 13 :]
                        if mid[:1] == "<" and mid[-1:] == ">":  # as logparse keeps it
                            mid = mid[1:-1]
                        self._message(key).message_id = mid
                        message_id += 1
                        continue
                elif service == "smtpd":
                    if c == "c" and s.startswith("client=", k + 2):
                        text, _, more = s[k + 9 :].partition(", ")
                        if "client_ip=" not in more:  # else a later field would say it
                            ip = client_re(text)
                            self._message(key).client = ip.group(2) if ip else ""
                            client += 1
                            continue
                elif service == "bounce" and " notification: " in s:
                    notification += 1
                    continue
                yield from self._general(line)
        finally:
            self.lines += n
            for kind, count in (
                ("removed", removed),
                ("queued", queued),
                ("client", client),
                ("message_id", message_id),
                ("notification", notification),
            ):
                if count:
                    kinds[kind] += count

    # -- the block road ------------------------------------------------------------------
    def feed_stream(self, f: BinaryIO, block: int = BLOCK) -> Iterator[DeliveryEvent]:
        """Every delivery event in a binary stream, read in blocks cut after their last
        newline (a pipe's block is what it holds: events come as its lines arrive).

        A line longer than MAX_LINE keeps only its first MAX_LINE + 1 bytes (the parser reads
        MAX_LINE of them and flags it cut, as it does for the whole line); the rest is skipped
        up to its newline without being held, so any line costs linear time and at most
        MAX_LINE + block bytes. When reading fails part way, the lines before are fed first."""
        read = getattr(f, "read1", f.read)
        rest = b""  # the start of a line cut by the last block: at most MAX_LINE + 1 bytes
        skipping = False  # rest is the head of an over-long line whose newline is still ahead
        while True:
            try:
                chunk = read(block)
            except Exception:
                if rest:  # what was read before the damage: a last line cut where it stopped
                    yield from self._feed_lines_of(rest, len(rest))
                raise
            if not chunk:
                break
            if skipping:
                nl = chunk.find(b"\n")
                if nl < 0:
                    continue
                skipping = False
                chunk = chunk[nl:]
            data = rest + chunk if rest else chunk
            cut = data.rfind(b"\n")
            if cut >= 0:
                yield from self._feed_lines_of(data, cut)
            rest = data[cut + 1 :]
            if len(rest) > MAX_LINE:
                rest = rest[: MAX_LINE + 1]
                skipping = True
        if rest:
            yield from self._feed_lines_of(rest, len(rest))

    def feed_block(self, data: bytes) -> list[DeliveryEvent]:
        """Every delivery event in a block of whole lines ("\n" after each; the last one may
        lack it): the same as feed_line on each line, several times faster."""
        if not data:
            return []
        return self._feed_lines_of(data, len(data) - 1 if data[-1:] == b"\n" else len(data))

    def _feed_lines_of(self, data: bytes, end: int) -> list[DeliveryEvent]:
        """The lines of data[:end] ("\n" between them), without copying them out."""
        if _scan is None:
            return list(self.feed_lines(data[:end].split(b"\n")))
        # one item per line: (kind, start, end, header, queue id, fields...), see _fastlog.c
        return self._feed_scanned(data, _scan(data, MAX_LINE, end))

    def _feed_scanned(self, data: bytes, items: list[tuple[Any, ...]]) -> list[DeliveryEvent]:
        out: list[DeliveryEvent] = []
        kinds = self.kinds
        messages = self.messages
        max_messages = self.max_messages
        delivery_services = DELIVERY_SERVICES
        filters = self.content_filters
        heads = _HEADS
        general = self._general
        delivered = removed = queued = client = message_id = notification = expired = 0
        outcomes = dict.fromkeys(FINAL, 0)
        for it in items:
            kind = it[0]
            if kind:
                head = heads.get(it[3])
                if head is None:
                    head = _line_header(it[3])
                if head is not None:
                    t, node, instance, program, service = head
                    key = (it[4], node, instance)
                    if kind == 1:
                        if service in delivery_services:
                            delivered += 1
                            (
                                _k,
                                _s,
                                _e,
                                _p,
                                qid,
                                rcpt,
                                orig_to,
                                relay,
                                delay,
                                delays,
                                dsn,
                                status,
                                reply,
                                domain,
                                code,
                                logged_dsn,
                            ) = it
                            if filters and self._is_filter(relay):
                                self.counts["content_filter_relays"] += 1
                                continue
                            m = messages.get(key)
                            # event_of's work, the codes read by the scanner
                            verdict = classify(
                                dsn, code, "" if dsn[:1] == "2" else _classify_text(reply)
                            )
                            ev = DeliveryEvent(
                                t,
                                node,
                                instance,
                                program,
                                qid,
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
                                {} if logged_dsn is None else {"logged_dsn": logged_dsn},
                            )
                            outcomes[status] += 1
                            if status == "deferred" or (m is not None and m.deferred):
                                self._track_deferral(ev, key, m)
                            out.append(ev)
                            continue
                    elif kind == 3:
                        if service == "qmgr":
                            messages.pop(key, None)
                            removed += 1
                            continue
                    elif kind == 6:
                        if service == "bounce":
                            notification += 1
                            continue
                    elif kind == 7:
                        if service == "qmgr":
                            expired += 1
                            out += self._expire(key, t, node, instance, program, it[4], it[5])
                            continue
                    elif service == ("", "", "qmgr", "", "cleanup", "smtpd")[kind]:
                        m = messages.get(key)
                        if m is None:
                            m = messages[key] = _Message()
                            if len(messages) > max_messages:
                                messages.popitem(last=False)
                                self.counts["evictions"] += 1
                        if kind == 2:
                            m.sender, m.size, m.nrcpt = it[5], it[6], it[7]
                            queued += 1
                        elif kind == 4:
                            m.message_id = it[5]
                            message_id += 1
                        else:
                            m.client = it[5]
                            client += 1
                        continue
            out += general(data[it[1] : it[2]])
        self.lines += len(items)
        for status, count in outcomes.items():
            if count:
                self.counts["events." + status] += count
        for name, count in (
            ("delivery", delivered),
            ("removed", removed),
            ("queued", queued),
            ("client", client),
            ("message_id", message_id),
            ("notification", notification),
            ("expired", expired),
        ):
            if count:
                kinds[name] += count
        return out

    def _general(self, line: bytes | str) -> list[DeliveryEvent]:
        self.lines -= 1  # feed_line counts it again
        return self.feed_line(line)


def _line_header(pre: str) -> tuple[float, str, str, str, str] | None:
    """ "Nov 28 17:33:59 host postfix/smtp[123]" -> (time, node, instance, program, service) as
    _parse reads them, or None when the general parser must see the line; remembered like
    feed_lines does."""
    if len(pre) < 16 or pre.find(": ", 16) >= 0:
        return None  # the line's first ": " must be the one after the tag
    if pre[9:10] == ":" and pre[3:4] == " ":
        j = pre.find(" ", 15)
        tt = _classic_stamp(pre[:j]) if j > 0 else None
    elif pre[4:5] == "-" and pre[10:11] == "T":
        j = pre.find(" ")
        tt = _iso_time(pre[:j]) if j > 0 else None
    else:
        return None
    if tt is None:
        return None
    hdr = _HEADERS.get(pre[j + 1 :])
    if not hdr:
        return None
    head = (tt, hdr[0], hdr[1], hdr[2], hdr[3])
    if pre[9:10] == ":":  # RFC 3339 stamps with a fraction never recur
        if len(_HEADS) > 4096:
            _HEADS.clear()
        _HEADS[pre] = head
    return head


def events_from_lines(
    lines: Iterable[bytes | str], correlator: Correlator | None = None
) -> Iterator[DeliveryEvent]:
    """Every delivery event in these lines, in order."""
    c = correlator if correlator is not None else Correlator()
    return c.feed_lines(lines)
