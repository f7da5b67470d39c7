"""Postfix's showq service: what `postqueue -j` and mailq read, for a reader without root.

The protocol is an attribute stream on a UNIX socket in the queue's public/ directory; reading it
(read_showq) is apart from parsing it (parse_showq, a pure function over the bytes).
"""

from __future__ import annotations

import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


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
        try:
            s.connect(str(socket_path))
        except OSError as e:
            raise OSError(e.errno, f"cannot reach showq at {socket_path}: {e.strerror}") from e
        chunks = []
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def _long(text: str) -> int:
    """A number as Postfix sends it (a C long), or ValueError."""
    n = int(text)
    if not -(1 << 63) <= n < 1 << 63:
        raise ValueError(f"not a long: {text[:40]!r}")
    return n


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
                        _long(fields["time"]),
                        _long(fields["size"]),
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
