"""`mailpulse bounce parse PATH ... [--json]`: bounce mails in, one line per recipient out."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from os import EX_DATAERR, EX_NOINPUT, EX_NOPERM, EX_OK, EX_TEMPFAIL
from pathlib import Path
from typing import Any

from mailpulse.bounce.dsn import MAX_MESSAGE_BYTES, MAX_RECIPIENTS, BounceParseError
from mailpulse.bounce.intake import EX_PARTIAL, VerpSettings, analyse, read_paths

from mailpulse.config import BounceConfig, load_for


def verp_settings(args: argparse.Namespace) -> VerpSettings:
    return verp_of(load_for(args).bounce)


def verp_of(bounce: BounceConfig) -> VerpSettings:
    """The bounce: section of a config; MAILPULSE_VERP_KEY in the environment wins over the
    file (keeps the key out of it)."""
    key = os.environ.get("MAILPULSE_VERP_KEY") or bounce.verp_key
    return VerpSettings(
        key=key.encode() or None,
        prefix=bounce.verp_prefix,
        delimiters=bounce.recipient_delimiter,
    )


def _line(r: dict[str, Any]) -> str:
    uid = r["user_id"] or "-"
    mark = "" if r["verp_verified"] or uid == "-" else "?"
    fields = [r["file"], uid + mark, r["recipient"] or "-", r["status"] or "-"]
    fields += [r["reply_code"] or "-", r["reason"], "hard" if r["hard"] else "soft", r["kind"]]
    return "\t".join(fields)


def _why(e: OSError) -> str:
    """What is wrong with a path, in words (a link loop is not a missing file)."""
    if e.errno == errno.ELOOP:
        return "symbolic link loop"
    return (e.strerror or str(e)).lower()


def _code(e: OSError) -> int:
    if e.errno in (errno.EACCES, errno.EPERM):
        return EX_NOPERM
    if e.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.ENAMETOOLONG):
        return EX_NOINPUT
    return EX_TEMPFAIL


def run_parse(args: argparse.Namespace) -> int:
    verp = verp_settings(args)  # a wrong config file is said by the command line
    envelope = os.environ.get("MAILPULSE_ENVELOPE_RECIPIENT", "")
    errors: list[int] = []
    partial = False

    def unreadable(path: Path, e: OSError) -> None:
        print(f"mailpulse: {path}: {_why(e)}", file=sys.stderr)
        errors.append(_code(e))

    for item in read_paths(args.paths, on_error=unreadable):
        try:
            records = analyse(item, verp, envelope if item.source == "-" else "")
        except BounceParseError as e:
            print(f"mailpulse: {item.source}: skipped: {e}", file=sys.stderr)
            errors.append(EX_DATAERR)
            continue
        for r in records:
            print(json.dumps(r, ensure_ascii=False) if args.json else _line(r))
        omitted = records[0]["recipients_omitted"] if records else 0
        if omitted:
            partial = True
            if not args.json:
                print(f"# {item.source}: {omitted} more recipients not shown")
            print(
                f"mailpulse: {item.source}: names {len(records) + omitted} recipients;"
                f" {omitted} past the first {MAX_RECIPIENTS} not shown",
                file=sys.stderr,
            )
        if len(item.raw) > MAX_MESSAGE_BYTES:
            partial = True
            mib = MAX_MESSAGE_BYTES >> 20
            print(
                f"mailpulse: {item.source}: larger than {mib} MiB; only its first {mib} MiB read",
                file=sys.stderr,
            )
    # The first error says the exit code; a cut output alone exits EX_PARTIAL.
    return errors[0] if errors else EX_PARTIAL if partial else EX_OK
