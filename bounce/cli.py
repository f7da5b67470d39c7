"""`mailpulse bounce parse PATH ... [--json]`: bounce mails in, one line per recipient out."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from mailpulse.bounce.dsn import BounceParseError
from mailpulse.bounce.intake import (
    EX_DATAERR,
    EX_NOINPUT,
    EX_OK,
    EX_TEMPFAIL,
    VerpSettings,
    analyse,
    read_paths,
)
from mailpulse.bounce.verp import DEFAULT_PREFIX

from mailpulse.config import ConfigError, load_config


def verp_settings(config: Path | None) -> VerpSettings:
    """`bounce: {verp_key: ..., verp_prefix: ..., recipient_delimiter: ...}` from the config file
    (read as every command reads it); MAILPULSE_VERP_KEY in the environment wins over the file
    (keeps the key out of it)."""
    cfg = load_config(config)
    section = cfg.other.get("bounce", {})
    for key in ("verp_key", "verp_prefix", "recipient_delimiter"):
        if key in section and not isinstance(section[key], str):
            raise ConfigError(
                f"{cfg.source}: bounce.{key}: expected a string (in quotes), got {section[key]!r}"
            )
    key = os.environ.get("MAILPULSE_VERP_KEY") or section.get("verp_key") or ""
    return VerpSettings(
        key=key.encode() or None,
        prefix=section.get("verp_prefix", DEFAULT_PREFIX),
        delimiters=section.get("recipient_delimiter", "-+"),
    )


def _line(r: dict[str, Any]) -> str:
    uid = r["user_id"] or "-"
    mark = "" if r["verp_verified"] or uid == "-" else "?"
    fields = [r["file"], uid + mark, r["recipient"] or "-", r["status"] or "-"]
    fields += [r["reply_code"] or "-", r["reason"], "hard" if r["hard"] else "soft", r["kind"]]
    return "\t".join(fields)


def run_parse(args: argparse.Namespace) -> int:
    try:
        verp = verp_settings(args.config)
    except ConfigError as e:
        print(f"mailpulse: {e}", file=sys.stderr)
        return 2
    envelope = os.environ.get("MAILPULSE_ENVELOPE_RECIPIENT", "")
    status = EX_OK
    paths: list[Path] = args.paths
    for path in paths:
        if str(path) != "-" and not path.exists():
            print(f"mailpulse: {path}: no such file or directory", file=sys.stderr)
            status = EX_NOINPUT
            continue
        try:
            for item in read_paths([path]):
                try:
                    records = analyse(item, verp, envelope if item.source == "-" else "")
                except BounceParseError as e:
                    print(f"mailpulse: {item.source}: skipped: {e}", file=sys.stderr)
                    status = status or EX_DATAERR
                    continue
                for r in records:
                    print(json.dumps(r, ensure_ascii=False) if args.json else _line(r))
        except BrokenPipeError:
            raise  # our reader went away, not the input: the command line ends quietly
        except OSError as e:
            print(f"mailpulse: {path}: {e}", file=sys.stderr)
            status = EX_TEMPFAIL
    return status
