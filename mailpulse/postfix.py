"""The Postfix instances on this host, as Postfix's own postconf describes them.

One place for what the agent, the queue collector and the command line need to know about an
instance: its syslog_name (the label logs and queue samples share), its config and queue
directories, and its maillog_file when it logs there rather than through syslog.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path


class PostconfError(RuntimeError):
    """postconf could not read an instance's configuration; the message says which and why."""


@dataclass(frozen=True)
class Instance:
    name: str  # syslog_name: "postfix", "postfix-bulk1"
    config_dir: Path | None  # None: Postfix's default
    queue_dir: Path
    maillog_file: Path | None  # None: the instance logs through syslog


def run_tool(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """A Postfix command (postconf, postmap) in the C locale; PostconfError when it cannot run."""
    try:
        return subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "LC_ALL": "C"},
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PostconfError(f"{' '.join(argv)}: {e}") from e


def run_postconf(config_dir: Path | None, *args: str) -> str:
    """postconf's output for these arguments, for this instance's configuration."""
    argv = ["postconf", *(a for a in args if a.startswith("-"))]
    if config_dir is not None:
        argv += ["-c", str(config_dir)]
    r = run_tool([*argv, *(a for a in args if not a.startswith("-"))])
    if r.returncode != 0:
        raise PostconfError(f"{' '.join(argv)}: {r.stderr.strip() or r.returncode}")
    return r.stdout


def postconf(config_dir: Path | None, *names: str) -> dict[str, str]:
    """main.cf parameters as Postfix resolves them: defaults included, $names expanded."""
    values = {}
    for line in run_postconf(config_dir, "-x", *names).splitlines():
        name, sep, value = line.partition(" = ")
        if sep:
            values[name.strip()] = value.strip()
    return values


def master_services(config_dir: Path | None) -> str:
    """master.cf as `postconf -M` prints it: one service a line, continuation lines indented."""
    return run_postconf(config_dir, "-M")


_INSTANCE_PARAMETERS = ("syslog_name", "queue_directory", "maillog_file")


def instance_at(config_dir: Path | None) -> Instance:
    return _instance(config_dir, postconf(config_dir, *_INSTANCE_PARAMETERS))


def _instance(config_dir: Path | None, cf: dict[str, str]) -> Instance:
    maillog = cf.get("maillog_file", "")
    return Instance(
        name=cf.get("syslog_name", "postfix"),
        config_dir=config_dir,
        queue_dir=Path(cf.get("queue_directory", "/var/spool/postfix")),
        maillog_file=Path(maillog) if maillog else None,
    )


def discover_instances(config_dir: Path | None = None) -> list[Instance]:
    """config_dir's instance and those listed in its multi_instance_directories (postmulti's)."""
    # One postconf for the first instance and the list: each run costs a process start.
    cf = postconf(config_dir, *_INSTANCE_PARAMETERS, "multi_instance_directories")
    dirs = [Path(d) for d in re.split(r"[\s,]+", cf.get("multi_instance_directories", "")) if d]
    return [_instance(config_dir, cf), *(instance_at(d) for d in dirs)]
