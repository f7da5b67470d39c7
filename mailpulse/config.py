"""The agent's one YAML config file: defaults that work on a stock Debian Postfix node, and
errors that name the key and the file.

Everything is optional. Where the file is silent, the sources are found on the node itself:
Postfix instances through postmulti (or the default /etc/postfix), each instance's log from
postconf's maillog_file, else /var/log/mail.log, else the journal; the queue from the spool
when readable, else through showq (postqueue -j).
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mailpulse.postfix import Instance, PostconfError, discover_instances, instance_at

DEFAULT_CONFIG_FILE = Path("/etc/mailpulse/mailpulse.yaml")
DEFAULT_STATE_DIR = Path("/var/lib/mailpulse")
DEFAULT_POSTFIX_CONFIG_DIR = Path("/etc/postfix")
SYSLOG_MAIL_LOG = Path("/var/log/mail.log")
ROLES = ("bulk", "transactional")


class ConfigError(Exception):
    """A setting is wrong; the message names the file and the key."""


@dataclass(frozen=True)
class AgentCheckConfig:
    listen: str | None = None  # "127.0.0.1:9155"; None: no agent-check port
    queue_high: int = 50_000  # active+incoming+deferred messages at which weight reaches its floor
    growth_high_per_min: float = 5_000.0  # queue growth per minute that alone floors the weight
    load_high_per_cpu: float = 2.0  # load1 per CPU that alone floors the weight
    min_weight_percent: int = 10
    block_reasons: tuple[str, ...] = ("blocked", "badreputation")
    block_window_s: float = 300.0
    block_min_failures: int = 20  # fewer blocked recipients in the window never drain
    block_share: float = 0.3  # blocked share of all outcomes in the window that drains


@dataclass(frozen=True)
class Config:
    source: Path | None = None  # the file read, None for pure defaults
    node: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    role: str = "bulk"
    state_dir: Path = DEFAULT_STATE_DIR
    listen: str = "127.0.0.1:9154"
    web_config_file: Path | None = None
    log_files: tuple[Path, ...] | None = None  # None: discover
    log_read_bytes: int = 4 << 20
    log_poll_s: float = 0.5
    journal_args: tuple[str, ...] | None = None  # set: read the journal, with these selectors
    content_filters: tuple[str, ...] = ("127.0.0.1:10024", "127.0.0.1:10025")
    max_messages: int = 100_000  # queue ids kept by the log correlator
    postfix_config_dirs: tuple[Path, ...] | None = None  # None: postmulti, else /etc/postfix
    queue_interval_s: float = 30.0
    host_interval_s: float = 15.0
    domain_groups: dict[str, str] = field(default_factory=dict)
    top_k: int = 10
    top_k_min_count: int = 100
    agent_check: AgentCheckConfig = field(default_factory=AgentCheckConfig)
    # Sections other parts of mailpulse read and check themselves, kept here as given.
    other: dict[str, dict[str, Any]] = field(default_factory=dict)


# key -> (type check, converter) for the flat keys; nested sections are handled below.
def _path(v: Any) -> Path:
    if not isinstance(v, str) or not v:
        raise TypeError("a path")
    return Path(v)


def _listen(v: Any) -> str:
    if not isinstance(v, str) or ":" not in v:
        raise TypeError('"host:port"')
    host, _, port = v.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TypeError('"host:port" with a port from 1 to 65535')
    return v


def _positive(kind: type) -> Any:
    def conv(v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < math.inf:
            raise TypeError("a positive number")
        return kind(v)

    return conv


def _role(v: Any) -> str:
    if v not in ROLES:
        raise TypeError(" or ".join(ROLES))
    return str(v)


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise TypeError("a non-empty string")
    return v


def _paths(v: Any) -> tuple[Path, ...]:
    if not isinstance(v, list) or not v:
        raise TypeError("a list of paths")
    return tuple(_path(x) for x in v)


def _groups(v: Any) -> dict[str, str]:
    if not isinstance(v, dict) or not all(
        isinstance(k, str) and isinstance(g, str) for k, g in v.items()
    ):
        raise TypeError("a map of domain: group")
    return {k.lower(): g for k, g in v.items()}


def _strings(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise TypeError("a list of strings")
    return tuple(v)


_reasons = _strings


def _share(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 1:
        raise TypeError("a number in (0, 1]")
    return float(v)


def _percent(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 100:
        raise TypeError("an integer from 0 to 100")
    return v


TOP_KEYS: dict[str, tuple[str, Any]] = {
    "node": ("node", _str),
    "role": ("role", _role),
    "state_dir": ("state_dir", _path),
    "listen": ("listen", _listen),
    "web_config_file": ("web_config_file", _path),
    "domain_groups": ("domain_groups", _groups),
    "top_k": ("top_k", _positive(int)),
    "top_k_min_count": ("top_k_min_count", _positive(int)),
}
SECTION_KEYS: dict[str, dict[str, tuple[str, Any]]] = {
    "logs": {
        "files": ("log_files", _paths),
        "read_bytes": ("log_read_bytes", _positive(int)),
        "poll_interval": ("log_poll_s", _positive(float)),
        "content_filters": ("content_filters", _strings),
        "journal_args": ("journal_args", _strings),
        "max_messages": ("max_messages", _positive(int)),
    },
    "postfix": {"config_dirs": ("postfix_config_dirs", _paths)},
    "queue": {"interval": ("queue_interval_s", _positive(float))},
    "host": {"interval": ("host_interval_s", _positive(float))},
}
# Sections of the same file that belong to other commands; the agent only checks they are maps.
OTHER_SECTIONS = ("bounce", "blacklist", "redis", "snmp", "rrd", "graph", "alerts")
AGENT_CHECK_KEYS: dict[str, Any] = {
    "listen": _listen,
    "queue_high": _positive(int),
    "growth_high_per_min": _positive(float),
    "load_high_per_cpu": _positive(float),
    "min_weight_percent": _percent,
    "block_reasons": _reasons,
    "block_window_s": _positive(float),
    "block_min_failures": _positive(int),
    "block_share": _share,
}


def _convert(where: str, key: str, conv: Any, value: Any) -> Any:
    try:
        return conv(value)
    except (TypeError, ValueError, OverflowError) as e:
        raise ConfigError(f"{where}: {key}: expected {e}, got {value!r}") from None


def parse_config(data: Any, source: Path | None = None) -> Config:
    where = str(source or "<config>")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a map of settings")
    values: dict[str, Any] = {}
    for key, raw in data.items():
        if key in TOP_KEYS:
            attr, conv = TOP_KEYS[key]
            values[attr] = _convert(where, key, conv, raw)
        elif key in SECTION_KEYS:
            if not isinstance(raw, dict):
                raise ConfigError(f"{where}: {key}: expected a map of settings")
            for sub, sub_raw in raw.items():
                if sub not in SECTION_KEYS[key]:
                    known = ", ".join(SECTION_KEYS[key])
                    raise ConfigError(f"{where}: {key}.{sub}: unknown setting (known: {known})")
                attr, conv = SECTION_KEYS[key][sub]
                values[attr] = _convert(where, f"{key}.{sub}", conv, sub_raw)
        elif key == "agent_check":
            if not isinstance(raw, dict):
                raise ConfigError(f"{where}: agent_check: expected a map of settings")
            check: dict[str, Any] = {}
            for sub, sub_raw in raw.items():
                if sub not in AGENT_CHECK_KEYS:
                    known = ", ".join(AGENT_CHECK_KEYS)
                    raise ConfigError(
                        f"{where}: agent_check.{sub}: unknown setting (known: {known})"
                    )
                check[sub] = _convert(where, f"agent_check.{sub}", AGENT_CHECK_KEYS[sub], sub_raw)
            values["agent_check"] = AgentCheckConfig(**check)
        elif key in OTHER_SECTIONS:
            if not isinstance(raw, dict):
                raise ConfigError(f"{where}: {key}: expected a map of settings")
            values.setdefault("other", {})[key] = raw
        else:
            known = ", ".join([*TOP_KEYS, *SECTION_KEYS, "agent_check", *OTHER_SECTIONS])
            raise ConfigError(f"{where}: {key}: unknown setting (known: {known})")
    return Config(source=source, **values)


MAX_CONFIG_BYTES = 1 << 20  # far above any real config; /dev/zero given by mistake stops here


def load_config(path: Path | None) -> Config:
    """Read the file (or the default one when it exists); no file at all means all defaults."""
    if path is None:
        if not DEFAULT_CONFIG_FILE.exists():
            return Config()
        path = DEFAULT_CONFIG_FILE
    return parse_config(read_yaml(path), path)


def read_yaml(path: Path) -> Any:
    """The YAML document of a config file; anything wrong is one line naming the file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO nothing writes to: no hang
        with open(fd, "rb") as f:
            if stat.S_ISFIFO(os.fstat(fd).st_mode) and not select.select([fd], [], [], 5)[0]:
                raise ConfigError(f"{path}: a FIFO nothing writes to, not a config file")
            os.set_blocking(fd, True)
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes, not a config file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        start = raw.rfind(b"\n", 0, e.start) + 1
        before = raw[start : e.start].decode("utf-8", "replace").strip()[-40:]
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(
            f"{path}: line {line}: not UTF-8"
            f" (byte 0x{raw[e.start]:02x} after {before!r}); save the file as UTF-8"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{path}: {where}not valid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None


# -- discovery on the node ----------------------------------------------------------------------
def postmulti_config_dirs() -> list[Path]:
    """Config directories of the instances postmulti manages beside the default one."""
    with contextlib.suppress(PostconfError):
        return [i.config_dir or DEFAULT_POSTFIX_CONFIG_DIR for i in discover_instances(None)]
    return []


def instances_to_watch(config: Config) -> list[Instance]:
    """postfix.config_dirs, else the instances postmulti manages, else /etc/postfix."""
    dirs = list(
        config.postfix_config_dirs or postmulti_config_dirs() or [DEFAULT_POSTFIX_CONFIG_DIR]
    )
    instances = []
    for d in dirs:
        if not (d / "main.cf").exists():
            raise ConfigError(
                f"{config.source or '<defaults>'}: postfix.config_dirs: no main.cf in {d}"
            )
        try:
            instances.append(instance_at(d))
        except PostconfError as e:
            raise ConfigError(f"{config.source or '<defaults>'}: postfix.config_dirs: {e}") from e
    return instances


def log_sources(config: Config, instances: list[Instance]) -> list[Path] | None:
    """Log files to follow, each once (instances often share syslog); None: use the journal."""
    if config.journal_args is not None:
        return None
    if config.log_files:
        return list(config.log_files)
    files: list[Path] = []
    for inst in instances:
        f = inst.maillog_file or (SYSLOG_MAIL_LOG if SYSLOG_MAIL_LOG.exists() else None)
        if f is None:
            return None
        if f not in files:
            files.append(f)
    return files or ([SYSLOG_MAIL_LOG] if SYSLOG_MAIL_LOG.exists() else None)
