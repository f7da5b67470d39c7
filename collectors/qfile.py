"""Postfix queue files and defer logs, parsed without Postfix: pure functions over bytes.

A queue file is a sequence of records: one type byte, the payload length as a base-128 varint
(low 7 bits first, high bit set while more follow), then the payload (src/global/rec_type.h).
Only the envelope matters here: arrival time (T), sender (S), the recipients still to deliver
(R; delivered ones are rewritten in place to D, cancelled ones to /), and the content size
from the first record (C), which lets the reader jump over the message body to the extracted
segment (X ... E). Pointer records (p) with a non-zero offset redirect reading, as cleanup
leaves them for recipients added later.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

# Every record type a queue file may hold (rec_type.h); anything else is not a queue file.
KNOWN_TYPES = frozenset(b"CTcFILSDRO/WAK>fdMLNwXrePpV<ionmE")
MAX_RECORD = 1 << 24  # far above anything Postfix writes; a larger length means garbage
MAX_RECORDS = 1 << 20  # bounds the work on a pointer loop in a damaged file

ByteSource = Callable[[int, int], bytes]  # (offset, size) -> at most size bytes


class QueueFileError(ValueError):
    """The file is not a complete queue file; kind says how ("truncated" or "garbage")."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Envelope:
    arrival: int  # POSIX seconds from the T record (file mtime for maildrop files without one)
    sender: str  # "" for the null sender
    recipients: tuple[str, ...]  # recipients still to be delivered, in file order
    size: int  # message content size from the C record (what mailq and showq report)


BLOCK = 8192  # one read holds the whole envelope of a typical queue file

# Record types whose payload the envelope needs: C T S R p (the rest is only stepped over).
_A, _C, _T, _S, _R, _M, _P, _E = b"ACTSRMpE"


def parse_queue_file(source: ByteSource, mtime: int = 0) -> Envelope:
    """The envelope of one queue file, or QueueFileError. Reads only what it needs."""
    arrival: int | None = None
    sender: str | None = None
    recipients: list[str] = []
    content_size: int | None = None
    jumps: set[int] = set()
    base = 0  # file offset of buf[0]
    buf = source(0, BLOCK)
    n = len(buf)
    offset = 0
    known = KNOWN_TYPES
    for _ in range(MAX_RECORDS):
        i = offset - base
        # The common case first: the whole record in the buffer, a one-byte length.
        if i >= 0 and i + 2 <= n and buf[i + 1] < 0x80 and i + 2 + buf[i + 1] <= n:
            rtype = buf[i]
            head = 2
            length = buf[i + 1]
            end = i + 2 + length
            if rtype == _A:  # named attributes: most of an envelope, none needed here
                offset += 2 + length
                continue
        else:
            base, buf, i = offset, source(offset, BLOCK), 0
            n = len(buf)
            if not n:
                raise QueueFileError("truncated", f"no end record (stopped at offset {offset})")
            rtype = buf[0]
            length, head = _varint(buf, offset)
            end = head + length
            if end > n:
                buf = source(offset, max(BLOCK, end))
                n = len(buf)
                if end > n:
                    raise QueueFileError("truncated", f"record cut at offset {offset}")
        offset += head + length
        if rtype == _R:
            recipients.append(buf[i + head : end].decode("utf-8", "surrogateescape"))
        elif rtype == _E:
            if sender is None:
                raise QueueFileError("garbage", "no sender record")
            if arrival is None:
                arrival = mtime
            return Envelope(arrival, sender, tuple(recipients), content_size or 0)
        elif rtype == _S:
            if sender is None:
                sender = buf[i + head : end].decode("utf-8", "surrogateescape")
        elif rtype == _T:  # "seconds microseconds"
            if arrival is None:
                arrival = _int_field(buf[i + head : end], "time")
        elif rtype == _C:  # content size, data offset, recipient count, ...
            if content_size is None:
                content_size = _int_field(buf[i + head : end], "size")
        elif rtype == _M:  # the content follows; skip it when its size is known
            if content_size is not None:
                offset += content_size
        elif rtype == _P:  # pointer: a non-zero target redirects reading
            target = _int_field(buf[i + head : end], "pointer")
            if target > 0:
                if target in jumps:
                    raise QueueFileError("garbage", f"pointer loop at offset {target}")
                jumps.add(target)
                offset = target
        elif rtype not in known:
            raise QueueFileError("garbage", f"record type {rtype:#04x} at offset {offset}")
    raise QueueFileError("garbage", "too many records")


def _varint(buf: bytes, offset: int) -> tuple[int, int]:
    """(payload length, header size) of the record at the start of buf."""
    length = shift = 0
    for i in range(1, 6):
        if i >= len(buf):
            raise QueueFileError("truncated", f"record length cut at offset {offset}")
        byte = buf[i]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if length > MAX_RECORD:
                raise QueueFileError("garbage", f"record of {length} bytes at offset {offset}")
            return length, i + 1
        shift += 7
    raise QueueFileError("garbage", f"record length too long at offset {offset}")


def _int_field(payload: bytes, what: str) -> int:
    parts = payload.split()
    if not parts or not parts[0].isdigit():
        raise QueueFileError("garbage", f"bad {what} record {payload[:40]!r}")
    return int(parts[0])


def parse_queue_bytes(data: bytes, mtime: int = 0) -> Envelope:
    """parse_queue_file over a whole file held in memory."""
    return parse_queue_file(lambda off, n: data[off : off + n], mtime)


@dataclass(frozen=True, slots=True)
class DeferEntry:
    recipient: str
    status: str  # enhanced status, "4.4.1"
    reason: str  # the text Postfix keeps, as mailq shows it


_OLD_STYLE = re.compile(r"^<(.*)>: (.*)$", re.M)
_NAME_VALUE = re.compile(r"^([A-Za-z0-9_]+)[ \t]*=[ \t]*(.*?)[ \t]*$", re.M)


def parse_defer_log(text: str) -> list[DeferEntry]:
    """Per-recipient entries of a defer (or bounce) logfile, as Postfix's bounce_log reads it.

    Entries are separated by blank lines and hold "name = value" lines; Postfix versions before
    2.3 wrote "<recipient>: reason" lines instead, and both may appear in one entry.
    """
    out: list[DeferEntry] = []
    for block in text.split("\n\n"):
        fields = dict(_NAME_VALUE.findall(block))
        if "recipient" not in fields:
            m = _OLD_STYLE.search(block)
            if not m:
                continue
            fields.setdefault("recipient", m.group(1))
            fields.setdefault("reason", m.group(2))
        out.append(
            DeferEntry(fields["recipient"], fields.get("status", ""), fields.get("reason", ""))
        )
    return out


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def qshape_domain(address: str) -> str:
    """The domain qshape files an address under: lower case, after the last @, no edge dots."""
    if address == "":
        return "MAILER-DAEMON"
    d = address[address.rfind("@") + 1 :]
    d = d.lower() if d.isascii() else d.translate(_ASCII_LOWER)  # qshape's lc(): ASCII only
    if ".." in d:
        d = d.replace("..", ".")
    if len(d) > 1 and d[0] == ".":
        d = d[1:]
    if len(d) > 1 and d[-1] == ".":
        d = d[:-1]
    return d
