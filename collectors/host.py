"""The host under Postfix, through psutil: load, CPU, memory, the spool's filesystem, and
Postfix's own daemon processes against their master.cf process limits.

A sample is plain data; mailpulse.series maps it onto the catalogue.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from mailpulse.postfix import Instance, PostconfError, master_services, postconf


def parse_master_limits(postconf_m: str, default_limit: int) -> dict[str, int]:
    """service -> process limit from `postconf -M` output; "-" means default_process_limit.
    A limit of 0 is no limit (master(8)): such a service is left out, as a 0 would read as
    "no process allowed" and make processes/limit infinite."""
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
    return {service: limit for service, limit in limits.items() if limit > 0}


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
    try:
        limit = postconf(inst.config_dir, "default_process_limit")
        default = limit.get("default_process_limit", "")
        master = master_services(inst.config_dir)
    except PostconfError:
        return {}  # no limits to show beside the processes; the rest of the sample stands
    return parse_master_limits(master, int(default) if default.isdigit() else 100)


@dataclass(slots=True)
class SpoolFilesystem:
    size: int
    free: int  # for root
    avail: int  # for others
    inodes: int
    inodes_free: int


@dataclass(slots=True)
class HostSample:
    load: tuple[float, float, float]  # 1, 5, 15 minutes
    cpu_seconds: dict[str, float]  # mode -> seconds, all cores summed
    cpus: int
    memory: dict[str, int]  # total, available, used
    spool: dict[str, SpoolFilesystem] = field(default_factory=dict)  # instance ->
    process_limits: dict[tuple[str, str], int] = field(default_factory=dict)  # (instance, service)
    processes: dict[tuple[str, str], int] = field(default_factory=dict)  # (instance, service)


CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


class HostSampler:
    """Cheap enough to run every few seconds; process limits are read once (master.cf rarely
    changes, and a reload of the agent picks up a new one)."""

    def __init__(self, instances: list[Instance]) -> None:
        self.instances = instances
        self.limits = {inst.name: process_limits(inst) for inst in instances}

    def sample(self) -> HostSample:
        times = psutil.cpu_times()
        mem = psutil.virtual_memory()
        load = os.getloadavg()
        out = HostSample(
            load=(load[0], load[1], load[2]),
            cpu_seconds={m: float(getattr(times, m)) for m in CPU_MODES if hasattr(times, m)},
            cpus=psutil.cpu_count() or 1,
            memory={"total": mem.total, "available": mem.available, "used": mem.used},
        )
        masters = {}
        for inst in self.instances:
            with contextlib.suppress(OSError):
                st = os.statvfs(inst.queue_dir)
                out.spool[inst.name] = SpoolFilesystem(
                    st.f_blocks * st.f_frsize,
                    st.f_bfree * st.f_frsize,
                    st.f_bavail * st.f_frsize,
                    st.f_files,
                    st.f_ffree,
                )
            pid = master_pid(inst.queue_dir)
            if pid is not None:
                masters[pid] = inst.name
            for service, limit in self.limits.get(inst.name, {}).items():
                out.process_limits[(inst.name, service)] = limit
        counts: Counter[tuple[str, str]] = Counter()
        for p in psutil.process_iter(["ppid", "cmdline"]):
            instance = masters.get(p.info["ppid"])
            if instance is not None and p.info["cmdline"]:
                counts[(instance, service_of(p.info["cmdline"]))] += 1
        for inst in self.instances:
            for service in self.limits.get(inst.name, {}):
                counts.setdefault((inst.name, service), 0)
        out.processes = dict(counts)
        return out
