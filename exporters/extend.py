"""`mailpulse snmp extend NAME`: one graph's values from the agent's snapshot, one per line.

snmpd runs this on every poll (its `extend` directive) and publishes the lines as
nsExtendOutLine."NAME".1, .2, ...: the order is the graph's items' (exporters.graphs), fixed.
So it must be cheap and harmless: only the standard library's json, os and sys are loaded (no
config parser, no catalogue); a missing, damaged or stale snapshot prints `U` (Cacti's
unknown) for every line; nothing is ever written to stderr (snmpd mixes it into the answer);
and an alarm ends it before snmpd could wait on it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

DEFAULT_STATE_DIR = "/var/lib/mailpulse"
DEFAULT_CONFIG_FILE = "/etc/mailpulse/mailpulse.yaml"
MAX_SNAPSHOT_BYTES = 64 << 20
UNKNOWN = "U"
# A graph's line count when no snapshot says it: the largest graph's, so Cacti's data sources
# all read unknown rather than missing.
FALLBACK_LINES = 12


def _state_dir(argv: list[str]) -> str:
    """--state-dir, else the state_dir of --config (or of the default config file): only then
    is the config loader imported."""
    for i, a in enumerate(argv):
        if a == "--state-dir" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--state-dir="):
            return a.split("=", 1)[1]
    config = None
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            config = argv[i + 1]
        elif a.startswith("--config="):
            config = a.split("=", 1)[1]
    if config is None and not os.path.exists(DEFAULT_CONFIG_FILE):
        return DEFAULT_STATE_DIR
    from pathlib import Path

    from mailpulse.config import load_config

    return str(load_config(Path(config) if config else None).state_dir)


def read_snapshot(path: str) -> dict | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO put there never blocks us
        with os.fdopen(fd, "rb") as f:
            if not os.path.isfile(path) or os.fstat(fd).st_size > MAX_SNAPSHOT_BYTES:
                return None
            doc = json.loads(f.read(MAX_SNAPSHOT_BYTES))
        return doc if isinstance(doc, dict) else None
    except (OSError, ValueError):
        return None


def lines(doc: dict | None, name: str, now: float) -> list[str]:
    """The graph's lines, or as many `U` when the snapshot cannot be trusted now."""
    try:
        values = doc["extend"][name]  # type: ignore[index]
        age = now - float(doc["written"])  # type: ignore[index]
        fresh = 0 <= age <= float(doc["stale_after"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return [UNKNOWN] * FALLBACK_LINES
    if not isinstance(values, list):
        return [UNKNOWN] * FALLBACK_LINES
    if not fresh:
        return [UNKNOWN] * len(values)
    return [str(v) if type(v) is int else UNKNOWN for v in values]


def main(argv: list[str]) -> int:
    """argv: what follows `mailpulse snmp extend`: NAME and the common options."""
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (never closed: it lives as long as we do)
    signal.alarm(5)  # whatever happens, snmpd gets its answer or an end, never a hang
    try:
        names = [
            a
            for i, a in enumerate(argv)
            if not a.startswith("-") and (i == 0 or argv[i - 1] not in ("--state-dir", "--config"))
        ]
        name = names[0] if names else ""
        try:
            state_dir = _state_dir(argv)
        except Exception:
            state_dir = ""
        doc = read_snapshot(os.path.join(state_dir, "snapshot.json")) if state_dir else None
        out = lines(doc, name, time.time())
    except Exception:
        out = [UNKNOWN] * FALLBACK_LINES
    sys.stdout.write("".join(f"{v}\n" for v in out))
    sys.stdout.flush()
    return 0
