"""The block scanner in pure Python: `scan` returns what `_fastlog.scan` returns, item for item.

scan(block, max_line[, end]) -> one item per line of block[:end] ("\\n" between lines):
  (OTHER, start, end)                 any other line: for the caller's general parser
  (DELIVERY, start, end, prefix, qid, to, orig_to, relay, delay, delays, dsn, status, reply,
   domain, reply_code, logged_dsn)    delay a float (0.0 when not a number), delays a tuple of
                                      4 floats or None, reply without its parentheses, domain
                                      lowercased; dsn, reply_code and logged_dsn as
                                      logparse.delivery_codes gives them
  (QUEUED, start, end, prefix, qid, sender, size, nrcpt)   qmgr from=<>, ... (queue active)
  (REMOVED, start, end, prefix, qid)                       qmgr removed
  (MESSAGE_ID, start, end, prefix, qid, message_id)        cleanup message-id=
  (CLIENT, start, end, prefix, qid, client_ip)             smtpd client=
  (NOTIFICATION, start, end, prefix, qid)                  bounce "... notification: ..."
  (EXPIRED, start, end, prefix, qid, sender)               qmgr from=<>, status=expired...
prefix is "Nov 28 17:33:59 host postfix/smtp[123]"; the caller checks the service
(SERVICES_OF). Shapes are strict: a line with anything unusual (not ASCII, NUL, CR, over
max_line bytes, a "," or "<>" inside a field) is OTHER. The reference for both scanners is the
general parser (logparse.py); tests hold all three equal. A new shape: a kind here, its reading
in `_item` and in _fastlog.c, and a line in the tests.
"""

from __future__ import annotations

import re
from enum import IntEnum
from typing import Any

from mailpulse.collectors.logparse import QID_HEX, QID_LONG, delay_of, delays_of, delivery_codes

from mailpulse.events import DELIVERY_AGENTS, STATUSES


class LineKind(IntEnum):
    """What a scanned line is; _fastlog exports the same names with the same values."""

    OTHER = 0
    DELIVERY = 1
    QUEUED = 2
    REMOVED = 3
    MESSAGE_ID = 4
    CLIENT = 5
    NOTIFICATION = 6
    EXPIRED = 7


_QMGR = frozenset({"qmgr"})
# The services whose line of each kind the correlator takes as that kind (else: the general
# parser reads the line), indexed by kind.
SERVICES_OF: tuple[frozenset[str], ...] = (
    frozenset(),
    DELIVERY_AGENTS,
    _QMGR,
    _QMGR,
    frozenset({"cleanup"}),
    frozenset({"smtpd"}),
    frozenset({"bounce"}),
    _QMGR,
)

_FIELD = "[^<>,]*"  # "," stops every field: Postfix separates them with ", "
_DELIVERY = re.compile(
    f"to=<({_FIELD})>, (?:orig_to=(?:<({_FIELD})>|({_FIELD})), )?relay=({_FIELD}), "
    f"(?:conn_use=[0-9]+, )?delay=({_FIELD}), delays=({_FIELD}), dsn=({_FIELD}), "
    f"status=({'|'.join(STATUSES)})(?: (.*))?\\Z"
)
_FROM = re.compile(
    r"from=<([^<>, ]*)>, (?:(status=expired)|size=([0-9]+), nrcpt=([0-9]+) \(queue active\)\Z)"
)
_CLIENT = re.compile(r"client=[^\[,\s]*\[([^\],]*)\]")


def _plain(data: bytes) -> bool:
    """ASCII without NUL or CR: the bytes are the characters, and the shapes may match."""
    return data.isascii() and b"\x00" not in data and b"\r" not in data


def _queue_id(s: str, q: int) -> int:
    """Where the queue id starting at s[q] ends (at its ": "), or -1 when there is none."""
    k = s.find(": ", q, q + 26)
    if k < 0:
        return -1
    qid = s[q:k]
    if (len(qid) >= 5 and not qid.strip(QID_HEX)) or (len(qid) >= 10 and not qid.strip(QID_LONG)):
        return k
    return -1


def _item(s: str, a: int, b: int) -> tuple[Any, ...]:
    """One plain ASCII line s, at [a, b) of the block -> its item."""
    pre = s.find("]")
    if pre < 0 or not s.startswith(": ", pre + 1):
        return (0, a, b)
    qe = _queue_id(s, pre + 3)
    if qe < 0:
        return (0, a, b)
    prefix, qid, r = s[: pre + 1], s[pre + 3 : qe], qe + 2
    c = s[r : r + 1]
    if c == "t":
        m = _DELIVERY.match(s, r)
        if m:
            to, ot1, ot2, relay, delay, delays, logged, status, reply = m.groups()
            reply = reply or ""
            if len(reply) >= 2 and reply[0] == "(" and reply[-1] == ")":
                reply = reply[1:-1]
            dsn, code, logged_dsn = delivery_codes(logged, reply)
            return (
                1, a, b, prefix, qid, to, ot1 or ot2 or "", relay, delay_of(delay),
                delays_of(delays), dsn, status, reply, to.rpartition("@")[2].lower(), code,
                logged_dsn,
            )  # fmt: skip
    elif c == "f":
        m = _FROM.match(s, r)
        if m:
            if m.group(2):
                return (7, a, b, prefix, qid, m.group(1))
            size, nrcpt = m.group(3), m.group(4)
            if len(size) <= 18 and len(nrcpt) <= 18:
                return (2, a, b, prefix, qid, m.group(1), int(size), int(nrcpt))
    elif c == "r":
        if len(s) - r == 7 and s.endswith("removed"):
            return (3, a, b, prefix, qid)
    elif c == "m":
        if s.startswith("message-id=", r):
            mid = s[r + 11 :]
            if len(mid) >= 2 and mid[0] == "<" and mid[-1] == ">":
                mid = mid[1:-1]
            return (4, a, b, prefix, qid, mid)
    elif c == "c":
        m = _CLIENT.match(s, r)
        # a later "client_ip=" field is what the general parser would keep
        if m and s.find("client_ip=", m.end() - 1) < 0:
            return (5, a, b, prefix, qid, m.group(1))
    if s.find(" notification: ", r) >= 0:
        return (6, a, b, prefix, qid)
    return (0, a, b)


def scan(data: bytes, max_line: int, end: int = -1) -> list[tuple[Any, ...]]:
    """One item per line of data[:end] (all of data when end is negative or past it)."""
    if end < 0 or end > len(data):
        end = len(data)
    view = data[:end] if end < len(data) else data
    out: list[tuple[Any, ...]] = []
    a = 0
    if _plain(view):  # usually the whole block is: then no line needs looking at alone
        for s in view.decode("ascii").split("\n"):
            b = a + len(s)
            out.append((0, a, b) if b - a > max_line else _item(s, a, b))
            a = b + 1
        return out
    for raw in view.split(b"\n"):
        b = a + len(raw)
        plain = b - a <= max_line and _plain(raw)
        out.append(_item(raw.decode("ascii"), a, b) if plain else (0, a, b))
        a = b + 1
    return out
