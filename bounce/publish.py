"""The blacklist as Postfix tables: keys checked, tables built aside and renamed into place.

Two tables come from one list of keys:
- `TABLE` (access(5)): `key REJECT 5.1.1 ...`, for check_recipient_access on mail submitted over
  SMTP, which is then refused at RCPT TO;
- `TABLE_transport` (transport(5)): `key discard:...`, for transport_maps, so recipients of mail
  injected with sendmail(1) are dropped instead of sent.

Each is written as text beside its final name, run through postmap (cdb, else lmdb, else
texthash which needs no postmap), and renamed over the one in force: Postfix sees the old table
or the new one, never half of one. A rebuild that would lose more than a set share of the table
in force is refused (a wiped store must not empty every node's table). Only keys that
`key_problem` passes are written, so no address can break a line of the table or add one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MAX_KEY = 254  # RFC 5321's path limit, less the angle brackets
MAX_LOCAL = 64
# RFC 5322 atext and dots, less '#' (a comment in a Postfix table) and '|' (a pipe elsewhere).
_LOCAL_RE = re.compile(r"^[a-z0-9!$%&'*+/=?^_`{}~.-]+$")
_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
ACCESS_ACTION = "REJECT 5.1.1 Recipient address blacklisted after bounces (mailpulse)"
TRANSPORT_ACTION = "discard:blacklisted by mailpulse"
TRANSPORT_SUFFIX = "_transport"


_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
# The common case in one match: a plain address whose local part has no dot at either end and
# no two dots together. Anything else goes the long way, which also says what is wrong.
_PLAIN_RE = re.compile(
    r"[a-z0-9!$%&'*+/=?^_`{}~-]+(?:\.[a-z0-9!$%&'*+/=?^_`{}~-]+)*@" + rf"(?:{_LABEL}\.)+{_LABEL}"
)


def key_problem(key: str) -> str:
    """Why key may not go into a Postfix table ("" when it may): an address `local@domain` or a
    bare domain, lower case ASCII, nothing a table line could be split or commented at."""
    if len(key) <= MAX_KEY and _PLAIN_RE.fullmatch(key) and key.index("@") <= MAX_LOCAL:
        return ""
    if not key:
        return "empty"
    if len(key) > MAX_KEY:
        return f"longer than {MAX_KEY} characters"
    if not key.isascii():
        return "not ASCII"
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in key):
        return "whitespace or control character"
    if key != key.lower():
        return "not lower case"
    local, at, domain = key.rpartition("@")
    if at:
        if not local or len(local) > MAX_LOCAL or not _LOCAL_RE.match(local):
            return "bad local part"
        if local.startswith(".") or local.endswith(".") or ".." in local:
            return "bad dots in local part"
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL_RE.match(label) for label in labels):
        return "bad domain"
    return ""


class TableRefused(Exception):
    """The new table would shrink the one in force by more than the allowed share."""


@dataclass(frozen=True, slots=True)
class Published:
    path: Path
    map_type: str
    entries: int
    previous: int
    seconds: float


def postfix_tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def map_types(config_dir: Path | None) -> set[str]:
    cmd = [postfix_tool("postconf"), "-m"]
    if config_dir:
        cmd[1:1] = ["-c", str(config_dir)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return set()
    return set(done.stdout.split()) if done.returncode == 0 else set()


def pick_map_type(wanted: str, config_dir: Path | None) -> str:
    if wanted != "auto":
        return wanted
    known = map_types(config_dir)
    return next((t for t in ("cdb", "lmdb") if t in known), "texthash")


def db_suffix(map_type: str) -> str:
    return {"cdb": ".cdb", "lmdb": ".lmdb"}.get(map_type, "")


def entries_in_force(path: Path) -> int:
    """Keys of the table's text in force (0 when there is none)."""
    try:
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip() and not line.startswith(b"#"))
    except FileNotFoundError:
        return 0


def _postmap(map_type: str, text: Path, config_dir: Path | None) -> None:
    cmd = [postfix_tool("postmap")]
    if config_dir:
        cmd += ["-c", str(config_dir)]
    cmd.append(f"{map_type}:{text}")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False)
    if done.returncode != 0:
        raise OSError(f"postmap {map_type}:{text}: {done.stderr.strip() or done.returncode}")


def _build_one(
    path: Path, keys: list[str], action: str, map_type: str, config_dir: Path | None
) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    try:
        with tmp.open("w", encoding="ascii") as f:
            f.writelines(f"{k} {action}\n" for k in keys)
            f.flush()
            os.fsync(f.fileno())
        suffix = db_suffix(map_type)
        if suffix:
            _postmap(map_type, tmp, config_dir)
            os.replace(tmp.with_name(tmp.name + suffix), path.with_name(path.name + suffix))
        os.replace(tmp, path)
    finally:  # a failed build leaves nothing behind
        tmp.unlink(missing_ok=True)
        tmp.with_name(tmp.name + db_suffix(map_type)).unlink(missing_ok=True)


def publish(
    keys: Iterable[str],
    path: Path,
    map_type: str = "auto",
    shrink_share: float = 0.5,
    config_dir: Path | None = None,
    force: bool = False,
    transport: bool = True,
) -> Published:
    """Write the access table (and its transport twin) of keys at path.

    Keys failing key_problem are left out (the store never holds them; this is the last
    guard). Raises TableRefused when the table would shrink past shrink_share, OSError when
    postmap or the file system fails; the table in force stays as it was in both cases.
    """
    started = time.monotonic()
    good = list(dict.fromkeys(k for k in keys if not key_problem(k)))  # once each, as given
    previous = entries_in_force(path)
    if not force and previous and len(good) < previous * (1.0 - shrink_share):
        raise TableRefused(
            f"{path}: new table of {len(good)} entries would replace {previous}"
            f" (more than {shrink_share:.0%} fewer); kept the table in force"
        )
    kind = pick_map_type(map_type, config_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    if transport:
        twin = path.with_name(path.name + TRANSPORT_SUFFIX)
        _build_one(twin, good, TRANSPORT_ACTION, kind, config_dir)
    _build_one(path, good, ACCESS_ACTION, kind, config_dir)
    return Published(path, kind, len(good), previous, time.monotonic() - started)


def table_age(path: Path, map_type: str, now: float | None = None) -> float | None:
    """Seconds since the table in force was written; None when there is none."""
    try:
        mtime = path.with_name(path.name + db_suffix(map_type)).stat().st_mtime
    except FileNotFoundError:
        return None
    return max(0.0, (now if now is not None else time.time()) - mtime)
