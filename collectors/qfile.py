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
MAX_JUMPS = 1 << 16  # bounds the work on a chain of pointers in a damaged file
# Times, sizes and offsets are longs in Postfix; 18 digits hold any of them and still fit the
# signed 64 bits that a file offset and the sampler's cache need.
MAX_DIGITS = 18

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
    known = KNOWN_TYPES
    base = 0  # file offset of buf[0]
    buf = source(0, BLOCK)
    n = len(buf)
    pos = 0  # the next record's offset in buf
    while True:
        # The common case, with as little Python as possible per record: walk the records
        # held in buf. Indexing past its end (IndexError) or a record cut by its end (break)
        # means: read again from that record's offset.
        try:
            while True:
                rtype = buf[pos]
                length = buf[pos + 1]
                head = 2
                if length > 0x7F:
                    head, length = _long_length(buf, pos, base + pos)
                if rtype == _A:  # named attributes: most of an envelope, none needed here
                    pos += head + length
                    continue
                end = pos + head + length
                if end > n:
                    break
                if rtype == _R:
                    recipients.append(buf[pos + head : end].decode("utf-8", "surrogateescape"))
                elif rtype == _E:
                    if sender is None:
                        raise QueueFileError("garbage", "no sender record")
                    return Envelope(
                        mtime if arrival is None else arrival,
                        sender,
                        tuple(recipients),
                        content_size or 0,
                    )
                elif rtype == _S:
                    if sender is None:
                        sender = buf[pos + head : end].decode("utf-8", "surrogateescape")
                elif rtype == _T:  # "seconds microseconds"
                    if arrival is None:
                        arrival = _int_field(buf[pos + head : end], "time")
                elif rtype == _C:  # content size, data offset, recipient count, ...
                    if content_size is None:
                        content_size = _int_field(buf[pos + head : end], "size")
                elif rtype == _M:  # the content follows; skip it when its size is known
                    if content_size is not None:
                        end += content_size
                elif rtype == _P:  # pointer: a non-zero target redirects reading
                    target = _int_field(buf[pos + head : end], "pointer")
                    if target > 0:
                        if target in jumps or len(jumps) >= MAX_JUMPS:
                            raise QueueFileError("garbage", f"pointer loop at offset {target}")
                        jumps.add(target)
                        end = target - base  # may be before buf: read from there
                        if end < 0:
                            base, pos, buf = target, 0, source(target, BLOCK)
                            n = len(buf)
                            continue
                elif rtype not in known:
                    raise QueueFileError(
                        "garbage", f"record type {rtype:#04x} at offset {base + pos}"
                    )
                pos = end
        except IndexError:
            pass
        base += pos
        pos, buf = 0, _record_at(source, base)
        n = len(buf)


def _record_at(source: ByteSource, offset: int) -> bytes:
    """The file from the record at offset on, enough to hold that record whole."""
    buf = source(offset, BLOCK)
    if not buf:
        raise QueueFileError("truncated", f"no end record (stopped at offset {offset})")
    if buf[0] not in KNOWN_TYPES:
        raise QueueFileError("garbage", f"record type {buf[0]:#04x} at offset {offset}")
    try:
        head, length = _long_length(buf, 0, offset)
    except IndexError:
        raise QueueFileError("truncated", f"record length cut at offset {offset}") from None
    if head + length > len(buf):
        buf = source(offset, head + length)
        if head + length > len(buf):
            raise QueueFileError("truncated", f"record cut at offset {offset}")
    return buf


def _long_length(buf: bytes, pos: int, offset: int) -> tuple[int, int]:
    """(header size, payload length) of the record at buf[pos]; IndexError when buf cuts it."""
    length = shift = 0
    for i in range(pos + 1, pos + 6):
        byte = buf[i]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if length > MAX_RECORD:
                raise QueueFileError("garbage", f"record of {length} bytes at offset {offset}")
            return i + 1 - pos, length
        shift += 7
    raise QueueFileError("garbage", f"record length too long at offset {offset}")


def _int_field(payload: bytes, what: str) -> int:
    parts = payload.split(None, 1)
    if not parts or not parts[0].isdigit() or len(parts[0]) > MAX_DIGITS:
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
# Only the three names used; greedy values, stripped after (a lazy match is slow).
_NAME_VALUE = re.compile(r"^(recipient|status|reason)[ \t]*=[ \t]*(.*)$", re.M)


def parse_defer_log(text: str) -> list[DeferEntry]:
    """Per-recipient entries of a defer (or bounce) logfile, as Postfix's bounce_log reads it.

    Entries are separated by blank lines and hold "name = value" lines; Postfix versions before
    2.3 wrote "<recipient>: reason" lines instead, and both may appear in one entry.
    """
    out: list[DeferEntry] = []
    for block in text.split("\n\n") if "\n\n" in text.rstrip("\n") else (text,):
        fields = dict(_NAME_VALUE.findall(block))
        if "recipient" not in fields:
            m = _OLD_STYLE.search(block)
            if not m:
                continue
            fields.setdefault("recipient", m.group(1))
            fields.setdefault("reason", m.group(2))
        out.append(
            DeferEntry(
                fields["recipient"].rstrip(" \t"),
                fields.get("status", "").rstrip(" \t"),
                fields.get("reason", "").rstrip(" \t"),
            )
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
