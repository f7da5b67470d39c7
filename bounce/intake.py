"""Getting bounce mail in: files, Maildir, mbox, and one message on stdin from Postfix pipe(8).

Parsing stays in dsn.py; this module only reads, hands each message on, and makes sure a message
is neither lost nor counted twice:

- Maildir: a message is moved from new/ (or cur/) to `.processed/` only after the handler
  returned. A crash before the move hands the same message on again with the same key (its
  Maildir unique name); consumers store by `MailItem.key`, so it is not counted twice.
- pipe(8): exit codes follow sysexits.h, which Postfix reads: 0 delivered, 75 (EX_TEMPFAIL)
  retry later; nothing else, so a bounce is never bounced back.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import mailbox
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from os import EX_OK, EX_TEMPFAIL  # sysexits.h, which Postfix's pipe(8) reads
from pathlib import Path
from typing import Any, BinaryIO

from mailpulse.bounce.dsn import MAX_MESSAGE_BYTES, Bounce, BounceParseError, Parsed, parse
from mailpulse.bounce.verp import VerpId, VerpSettings, find_user

from mailpulse.events import Outcome, outcome_of_bounce

PROCESSED_DIR = ".processed"
UNREADABLE_DIR = ".unreadable"  # messages the parser refused: kept for a person to look at


@dataclass(frozen=True, slots=True)
class MailItem:
    source: str  # file path, "mbox:index" or "-"
    key: str  # stable identity: Maildir unique name, or a digest of the bytes
    raw: bytes


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:32]


def _read_capped(f: BinaryIO, drain: bool = False) -> bytes:
    """At most MAX_MESSAGE_BYTES (+1 to know it was cut). The rest is left unread (an endless
    stdin ends here), or drained for a writer that must see its message taken in whole."""
    data = f.read(MAX_MESSAGE_BYTES + 1)
    while drain and f.read(1 << 20):
        pass
    return data


def _is_maildir(path: Path) -> bool:
    return (path / "new").is_dir() and (path / "cur").is_dir()


def _is_mbox(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(5) == b"From "


OnError = Callable[[Path, OSError], None]


def _raise(path: Path, e: OSError) -> None:
    raise e


def read_paths(
    paths: Iterable[Path], stdin: BinaryIO | None = None, on_error: OnError = _raise
) -> Iterator[MailItem]:
    """Every message under the given paths, read-only: .eml files, directories, Maildirs, mbox.

    "-" is one message on stdin. A path that cannot be read goes to on_error (which raises
    unless told otherwise) and the others are still read.
    """
    for path in paths:
        try:
            yield from _read_path(path, stdin, on_error)
        except OSError as e:
            on_error(path, e)


def _read_path(path: Path, stdin: BinaryIO | None, on_error: OnError) -> Iterator[MailItem]:
    if str(path) == "-":
        raw = _read_capped(stdin or sys.stdin.buffer)
        yield MailItem("-", _digest(raw), raw)
    elif stat.S_ISDIR(path.stat().st_mode):
        subdirs = (path / "new", path / "cur") if _is_maildir(path) else (path,)
        for d in subdirs:
            try:
                entries = sorted(d.iterdir())
            except OSError as e:
                on_error(d, e)
                continue
            for f in entries:
                if f.name.startswith("."):
                    continue
                try:
                    regular = stat.S_ISREG(f.stat().st_mode)
                except OSError as e:  # a dangling link or a link loop: said, not skipped
                    on_error(f, e)
                    continue
                if regular:
                    yield from read_paths([f], on_error=on_error)
    else:
        yield from _read_file(path)


def _read_file(path: Path) -> Iterator[MailItem]:
    if _is_mbox(path):
        box = mailbox.mbox(str(path), create=False)
        try:
            for i, key in enumerate(box.iterkeys()):
                raw = box.get_bytes(key)[: MAX_MESSAGE_BYTES + 1]
                yield MailItem(f"{path}:{i}", _digest(raw), raw)
        finally:
            box.close()
    else:
        with path.open("rb") as fh:
            raw = _read_capped(fh)
        yield MailItem(str(path), path.name.split(":", 1)[0], raw)


def read_bounce(
    item: MailItem, verp: VerpSettings, envelope_recipient: str = ""
) -> tuple[Parsed, VerpId | None]:
    """What one message says, and the user of the VERP address it came back to."""
    parsed = parse(item.raw)
    if not parsed.records:
        return parsed, None
    head = email.message_from_bytes(item.raw[: 64 << 10], policy=email.policy.compat32)
    who = find_user(head, envelope_recipient, verp.key, verp.prefix, verp.delimiters)
    if who and who.verified and len({b.recipient for b in parsed.records}) > 1:
        # A signed address goes out on one mail to one user, so its bounce names one recipient.
        # Anyone holding their own signed address could otherwise list a thousand strangers
        # with one forged report; it vouches for none of them, they can only confirm the log.
        who = replace(who, verified=False)
    return parsed, who


def analyse(
    item: MailItem, verp: VerpSettings, envelope_recipient: str = ""
) -> list[dict[str, Any]]:
    """One JSON-ready object per recipient of one message (DESIGN.md's `bounce parse` fields)."""
    parsed, who = read_bounce(item, verp, envelope_recipient)
    return [_as_json(item, b, who, parsed.omitted) for b in parsed.records]


def outcomes(
    item: MailItem,
    verp: VerpSettings,
    envelope_recipient: str = "",
    node: str = "",
    time: float = 0.0,
) -> list[Outcome]:
    """One Outcome per recipient of one message, as the blacklist reads them; node is the one
    that received the bounce, time when it did."""
    parsed, who = read_bounce(item, verp, envelope_recipient)
    return [outcome_of_bounce(b, who, node=node, time=time) for b in parsed.records]


def _as_json(item: MailItem, b: Bounce, who: VerpId | None, omitted: int) -> dict[str, Any]:
    out: dict[str, Any] = {"file": item.source, "key": item.key}
    out.update(asdict(b))
    out["user_id"] = who.user_id if who else None
    out["verp_verified"] = who.verified if who else False
    out["bounce_address"] = who.address if who else None
    # Recipients the same message named past the limit, not reported: said on every record.
    out["recipients_omitted"] = omitted
    return out


Handler = Callable[[MailItem, list[dict[str, Any]]], None]


def process_maildir(root: Path, handler: Handler, verp: VerpSettings) -> int:
    """Hand every new message of a Maildir to handler, then move it out of the way.

    Returns the number of messages processed. A message is moved (rename, atomic) into
    `.processed/` only after handler returned, so an exception or a crash leaves it where it
    was, to be handed on again, under the same key, by the next run.
    """
    done_dir = root / PROCESSED_DIR
    done_dir.mkdir(exist_ok=True)
    n = 0
    for sub in ("new", "cur"):
        for f in sorted((root / sub).iterdir()):
            if not f.is_file() or f.name.startswith("."):
                continue
            try:
                with f.open("rb") as fh:
                    raw = _read_capped(fh)
            except OSError as e:
                # Left where it is for the next run; the rest of the directory goes on.
                print(f"mailpulse: {f}: cannot read: {e.strerror}; left in place", file=sys.stderr)
                continue
            item = MailItem(str(f), f.name.split(":", 1)[0], raw)
            try:
                records = analyse(item, verp)
            except BounceParseError as e:
                print(f"mailpulse: {f}: {e}; moved to {UNREADABLE_DIR}/", file=sys.stderr)
                bad_dir = root / UNREADABLE_DIR
                bad_dir.mkdir(exist_ok=True)
                os.replace(f, bad_dir / f.name)
                continue
            handler(item, records)
            os.replace(f, done_dir / f.name)
            n += 1
    _fsync_dir(done_dir)
    return n


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pipe_delivery(
    stdin: BinaryIO, handler: Handler, verp: VerpSettings, envelope_recipient: str = ""
) -> int:
    """One message from Postfix pipe(8): sysexits code for Postfix.

    A message that is not a bounce is accepted and dropped (0): bouncing it would only send
    mail back to a daemon. Any failure to hand it on is EX_TEMPFAIL so Postfix keeps it queued
    and retries; nothing is lost.
    """
    try:
        raw = _read_capped(stdin, drain=True)  # Postfix's message_size_limit bounds it
    except OSError:
        return EX_TEMPFAIL
    if not raw.strip():
        return EX_OK
    item = MailItem("-", _digest(raw), raw)
    try:
        records = analyse(item, verp, envelope_recipient)
    except BounceParseError as e:
        print(f"mailpulse: unreadable bounce dropped: {e}", file=sys.stderr)
        return EX_OK
    try:
        handler(item, records)
    except Exception as e:  # noqa: BLE001 - any failure must become a retry, never a loss
        print(f"mailpulse: bounce not recorded, Postfix will retry: {e}", file=sys.stderr)
        return EX_TEMPFAIL
    return EX_OK
