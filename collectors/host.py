"""The host under Postfix, through psutil: load, CPU, memory, the spool's filesystem, and
Postfix's own daemon processes against their master.cf process limits.

A sample is a plain mapping (metric name, label values) -> value, in the catalogue's names.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections import Counter
from pathlib import Path

import psutil

from mailpulse.postfix import Instance

SeriesKey = tuple[str, tuple[str, ...]]


def parse_master_limits(postconf_m: str, default_limit: int) -> dict[str, int]:
    """service -> process limit from `postconf -M` output; "-" means default_process_limit."""
    limits = {}
    for line in postconf_m.splitlines():
        fields = line.split()
        if len(fields) < 8 or line[:1].isspace():
            continue
        service, maxproc = fields[0], fields[6]
        if maxproc == "-":
            limits[service] = default_limit
        elif maxproc.rstrip("?").isdigit():
            limits[service] = int(maxproc.rstrip("?"))
    return limits


def service_of(cmdline: list[str]) -> str:
    """master.cf service name of a Postfix daemon: its -n argument, else its command name."""
    for i, arg in enumerate(cmdline[:-1]):
        if arg == "-n":
            return cmdline[i + 1]
    return os.path.basename(cmdline[0]) if cmdline else "?"


def master_pid(queue_directory: Path) -> int | None:
    try:
        return int((queue_directory / "pid" / "master.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def process_limits(inst: Instance) -> dict[str, int]:
    env = {**os.environ, "LC_ALL": "C"}
    try:
        default = subprocess.run(
            ["postconf", "-c", str(inst.config_dir), "-h", "default_process_limit"],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        ).stdout.strip()
        master = subprocess.run(
            ["postconf", "-c", str(inst.config_dir), "-M"],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return parse_master_limits(master, int(default) if default.isdigit() else 100)


class HostSampler:
    """Cheap enough to run every few seconds; process limits are read once (master.cf rarely
    changes, and a reload of the agent picks up a new one)."""

    def __init__(self, instances: list[Instance]) -> None:
        self.instances = instances
        self.limits = {inst.name: process_limits(inst) for inst in instances}

    def sample(self) -> dict[SeriesKey, float]:
        out: dict[SeriesKey, float] = {}
        for period, value in zip(("1m", "5m", "15m"), os.getloadavg(), strict=True):
            out[("mailpulse_host_load_average", (period,))] = value
        times = psutil.cpu_times()
        for mode in ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"):
            if hasattr(times, mode):
                out[("mailpulse_host_cpu_seconds_total", (mode,))] = float(getattr(times, mode))
        out[("mailpulse_host_cpus", ())] = float(psutil.cpu_count() or 1)
        mem = psutil.virtual_memory()
        out[("mailpulse_host_memory_bytes", ("total",))] = float(mem.total)
        out[("mailpulse_host_memory_bytes", ("available",))] = float(mem.available)
        out[("mailpulse_host_memory_bytes", ("used",))] = float(mem.used)
        masters = {}
        for inst in self.instances:
            with contextlib.suppress(OSError):
                st = os.statvfs(inst.queue_dir)
                fs = (
                    ("size", st.f_blocks * st.f_frsize),
                    ("free", st.f_bfree * st.f_frsize),
                    ("avail", st.f_bavail * st.f_frsize),
                )
                for kind, v in fs:
                    out[("mailpulse_spool_filesystem_bytes", (inst.name, kind))] = float(v)
                out[("mailpulse_spool_filesystem_inodes", (inst.name, "total"))] = float(st.f_files)
                out[("mailpulse_spool_filesystem_inodes", (inst.name, "free"))] = float(st.f_ffree)
            pid = master_pid(inst.queue_dir)
            if pid is not None:
                masters[pid] = inst.name
            for service, limit in self.limits.get(inst.name, {}).items():
                out[("mailpulse_postfix_process_limit", (inst.name, service))] = float(limit)
        counts: Counter[tuple[str, str]] = Counter()
        for p in psutil.process_iter(["ppid", "cmdline"]):
            instance = masters.get(p.info["ppid"])
            if instance is not None and p.info["cmdline"]:
                counts[(instance, service_of(p.info["cmdline"]))] += 1
        for inst in self.instances:
            for service in self.limits.get(inst.name, {}):
                counts.setdefault((inst.name, service), 0)
        for (instance, service), n in counts.items():
            out[("mailpulse_postfix_processes", (instance, service))] = float(n)
        return out
