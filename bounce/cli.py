"""`mailpulse bounce parse PATH ... [--json]`: bounce mails in, one line per recipient out."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from mailpulse.bounce.dsn import MAX_MESSAGE_BYTES, MAX_RECIPIENTS, BounceParseError
from mailpulse.bounce.intake import VerpSettings, analyse, read_paths

from mailpulse.config import BounceConfig, load_for
from mailpulse.exits import DATAERR, OK, PARTIAL, path_code, path_problem


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


# The text output's columns, said once before the first recipient.
HEADER = (
    "# file\tuser_id\trecipient\tstatus\treply_code\treason\thard/soft\tkind\n"
    "# user_id?: named by the VERP address, but its signature did not verify (no key or a"
    " wrong one): never blacklists alone"
)


def _line(r: dict[str, Any]) -> str:
    uid = r["user_id"] or "-"
    mark = "" if r["verp_verified"] or uid == "-" else "?"
    fields = [r["file"], uid + mark, r["recipient"] or "-", r["status"] or "-"]
    fields += [r["reply_code"] or "-", r["reason"], "hard" if r["hard"] else "soft", r["kind"]]
    return "\t".join(fields)


def run_parse(args: argparse.Namespace) -> int:
    verp = verp_settings(args)  # a wrong config file is said by the command line
    envelope = os.environ.get("MAILPULSE_ENVELOPE_RECIPIENT", "")
    errors: list[int] = []
    partial = False
    header = not args.json

    def unreadable(path: Path, e: OSError) -> None:
        print(f"mailpulse: {path}: {path_problem(e)}", file=sys.stderr)
        errors.append(path_code(e))

    for item in read_paths(args.paths, on_error=unreadable):
        try:
            records = analyse(item, verp, envelope if item.source == "-" else "")
        except BounceParseError as e:
            print(f"mailpulse: {item.source}: skipped: {e}", file=sys.stderr)
            errors.append(DATAERR)
            continue
        if records and header:
            print(HEADER)
            header = False
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
    # The first error says the exit code; a cut output alone exits PARTIAL.
    return errors[0] if errors else PARTIAL if partial else OK
