"""A mailpulse Postfix profile applied to a lab node, for the tests and the benchmark.

The lab keeps the settings it needs to be a lab (its spool, log, loopback routes, timeouts):
where the profile names one of them, the lab's value stays and that setting is reported as
kept, so a check of the lab knows exactly which differences to expect.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from lab.postfix import Lab
from mailpulse.profile import load_profile, profile_dir

BLACKLIST_TABLE = "mailpulse-blacklist"  # the bulk profile's check_recipient_access table


def lab_main_cf_keys() -> set[str]:
    return set(Lab(Path("/nonexistent")).main_cf())


def profile_transports(name: str) -> dict[str, str]:
    """The profile's transport table as domain -> transport name."""
    out = {}
    for line in (profile_dir() / f"{name}.transport").read_text().splitlines():
        words = line.split()
        if len(words) == 2 and not line.startswith("#"):
            out[words[0]] = words[1].split(":", 1)[0]
    return out


def lab_kwargs(name: str) -> tuple[dict[str, Any], set[str]]:
    """Lab(**kwargs) for a node under this profile, and the main.cf settings the lab keeps."""
    settings = load_profile(name)
    own = lab_main_cf_keys()
    main = {s.key: s.value for s in settings if s.kind == "main"}
    kept = own & set(main)
    master = (profile_dir() / f"{name}.master.cf").read_text()
    kwargs = {
        "main_cf_extra": {k: v for k, v in main.items() if k not in kept},
        "master_cf_extra": master,
        "domain_transports": profile_transports(name),
    }
    return kwargs, kept


def make_tables(lab: Lab) -> None:
    """The (empty) blacklist table the bulk profile's smtpd looks recipients up in."""
    table = lab.etc / BLACKLIST_TABLE
    table.touch()
    subprocess.run(["postmap", "-c", str(lab.etc), f"hash:{table}"], check=True, timeout=60)
