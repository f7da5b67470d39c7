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


class _Reader:
    """Buffered random access over a ByteSource: few reads for a file's envelope."""

    BLOCK = 8192

    def __init__(self, source: ByteSource) -> None:
        self._source = source
        self._base = 0
        self._buf = b""

    def get(self, offset: int, size: int) -> bytes:
        end = offset + size
        if offset < self._base or end > self._base + len(self._buf):
            self._base = offset
            self._buf = self._source(offset, max(size, self.BLOCK))
        start = offset - self._base
        return self._buf[start : start + size]

    def record(self, offset: int) -> tuple[int, bytes, int]:
        """(type, payload, next offset) of the record at offset."""
        head = self.get(offset, 6)
        if not head:
            raise QueueFileError("truncated", f"no end record (stopped at offset {offset})")
        rtype = head[0]
        if rtype not in KNOWN_TYPES:
            raise QueueFileError("garbage", f"record type {rtype:#04x} at offset {offset}")
        length = shift = 0
        i = 1
        while True:
            if i >= len(head):
                raise QueueFileError("truncated", f"record length cut at offset {offset}")
            byte = head[i]
            i += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 28:
                raise QueueFileError("garbage", f"record length too long at offset {offset}")
        if length > MAX_RECORD:
            raise QueueFileError("garbage", f"record of {length} bytes at offset {offset}")
        payload = self.get(offset + i, length)
        if len(payload) != length:
            raise QueueFileError("truncated", f"record cut at offset {offset}")
        return rtype, payload, offset + i + length


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def parse_queue_file(source: ByteSource, mtime: int = 0) -> Envelope:
    """The envelope of one queue file, or QueueFileError. Reads only what it needs."""
    reader = _Reader(source)
    arrival: int | None = None
    sender: str | None = None
    recipients: list[str] = []
    content_size: int | None = None
    size = 0
    offset = 0
    for _ in range(MAX_RECORDS):
        rtype, payload, offset = reader.record(offset)
        if rtype == 0x52:  # R
            recipients.append(_decode(payload))
        elif rtype == 0x45:  # E
            if sender is None:
                raise QueueFileError("garbage", "no sender record")
            return Envelope(
                arrival if arrival is not None else mtime, sender, tuple(recipients), size
            )
        elif rtype == 0x54:  # T: "seconds microseconds"
            if arrival is None:
                arrival = _int_field(payload, "time")
        elif rtype == 0x53:  # S
            if sender is None:
                sender = _decode(payload)
        elif rtype == 0x43:  # C: content size, data offset, recipient count, ...
            if content_size is None:
                content_size = _int_field(payload, "size")
                size = content_size
        elif rtype == 0x4D:  # M: the content follows; skip it when its size is known
            if content_size is not None:
                offset += content_size
        elif rtype == 0x70:  # p: pointer
            target = _int_field(payload, "pointer")
            if target > 0:
                offset = target
    raise QueueFileError("garbage", "too many records")


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


_OLD_STYLE = re.compile(r"<(.*)>: (.*)")


def parse_defer_log(text: str) -> list[DeferEntry]:
    """Per-recipient entries of a defer (or bounce) logfile, as Postfix's bounce_log reads it.

    Entries are separated by blank lines and hold "name=value" lines; Postfix versions before
    2.3 wrote "<recipient>: reason" lines instead, and both may appear in one entry.
    """
    out: list[DeferEntry] = []
    fields: dict[str, str] = {}

    def close() -> None:
        if "recipient" in fields:
            out.append(
                DeferEntry(fields["recipient"], fields.get("status", ""), fields.get("reason", ""))
            )
        fields.clear()

    for line in text.split("\n"):
        if not line:
            close()
            continue
        if line[0].isalnum():
            name, sep, value = line.partition("=")
            if sep:
                fields[name.strip()] = value.strip()
            continue
        m = _OLD_STYLE.match(line)
        if m:
            fields.setdefault("recipient", m.group(1))
            fields.setdefault("reason", m.group(2))
    close()
    return out


def qshape_domain(address: str) -> str:
    """The domain qshape files an address under: lower case, after the last @, no edge dots."""
    a = address.lower()
    if a == "":
        return "MAILER-DAEMON"
    d = a.rpartition("@")[2].replace("..", ".")
    if len(d) > 1 and d[0] == ".":
        d = d[1:]
    if len(d) > 1 and d[-1] == ".":
        d = d[:-1]
    return d
