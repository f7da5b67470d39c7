"""The agent's one YAML config file: defaults that work on a stock Debian Postfix node, and
errors that name the key and the file.

Everything is optional. Where the file is silent, the sources are found on the node itself:
Postfix instances through postmulti (or the default /etc/postfix), each instance's log from
postconf's maillog_file, else /var/log/mail.log, else the journal; the queue from the spool
when readable, else through showq (postqueue -j).
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
import re
import select
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mailpulse.bounce.verp import DEFAULT_DELIMITERS, DEFAULT_PREFIX
from mailpulse.postfix import Instance, PostconfError, discover_instances, instance_at

DEFAULT_CONFIG_FILE = Path("/etc/mailpulse/mailpulse.yml")
DEFAULT_STATE_DIR = Path("/var/lib/mailpulse")
DEFAULT_POSTFIX_CONFIG_DIR = Path("/etc/postfix")
SYSLOG_MAIL_LOG = Path("/var/log/mail.log")
ROLES = ("bulk", "transactional")
STORES = ("sqlite", "redis")
DAY_S = 86_400.0


class ConfigError(Exception):
    """A setting is wrong; the message names the file and the key."""


# -- converters: each takes the YAML value and returns the setting, or raises TypeError with
# what was expected (the error message reads "expected <that>, got <value>").
Conv = Callable[[Any], Any]


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


def _positive(kind: type) -> Conv:
    def conv(v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < math.inf:
            raise TypeError("a positive number")
        return kind(v)

    return conv


def _one_of(*choices: str) -> Conv:
    def conv(v: Any) -> str:
        if v not in choices:
            raise TypeError(" or ".join(choices))
        return str(v)

    return conv


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise TypeError("a non-empty string")
    return v


def _quoted(v: Any) -> str:
    # YAML reads an unquoted 0123 as the number 83: a key or a prefix must be written quoted.
    if not isinstance(v, str):
        raise TypeError("a string (in quotes)")
    return v


def _flag(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError("true or false")
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


def _share(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 1:
        raise TypeError("a number in (0, 1]")
    return float(v)


def _fraction(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1:
        raise TypeError("a number in [0, 1)")
    return float(v)


def _percent(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 100:
        raise TypeError("an integer from 0 to 100")
    return v


_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY_S}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def _duration(v: Any) -> float:
    """Seconds, or a number with a unit: "90s", "15m", "12h", "30d"."""
    m = _DURATION_RE.fullmatch(v.strip()) if isinstance(v, str) else None
    seconds = float(m.group(1)) * _UNIT_S[m.group(2)] if m else v
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        seconds = 0
    if not 0 < seconds < math.inf:
        raise TypeError('a duration ("30d", "12h", "15m", "90s" or seconds)')
    return float(seconds)


def _redis_url(v: Any) -> str:
    if not isinstance(v, str) or not v.startswith(("redis://", "rediss://", "unix://")):
        raise TypeError('a Redis URL ("redis://host:6379/0", "rediss://..." or "unix://path")')
    return v


def setting(default: Any, conv: Conv, key: str = "") -> Any:
    """A field that the config file may set: its default, its converter, and its key in the
    file when that is not the field's own name ("logs.files" for log_files)."""
    meta = {"conv": conv, "key": key}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    if callable(default):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


def section(record: type) -> Any:
    """A field holding one section of the file, itself a record of settings."""
    return field(default_factory=record, metadata={"section": record})


# -- every setting of the file, with its type and default: one record per section ----------------
@dataclass(frozen=True)
class AgentCheckConfig:
    """agent_check: the HAProxy agent-check port of the agent."""

    listen: str | None = setting(None, _listen)  # "127.0.0.1:9155"; None: no agent-check port
    # active+incoming+deferred messages at which weight reaches its floor
    queue_high: int = setting(50_000, _positive(int))
    growth_high_per_min: float = setting(5_000.0, _positive(float))  # alone floors the weight
    load_high_per_cpu: float = setting(2.0, _positive(float))  # load1 per CPU, alone floors it
    min_weight_percent: int = setting(10, _percent)
    block_reasons: tuple[str, ...] = setting(("blocked", "badreputation"), _strings)
    block_window_s: float = setting(300.0, _positive(float))
    block_min_failures: int = setting(20, _positive(int))  # fewer blocked never drain
    block_share: float = setting(0.3, _share)  # blocked share of the window's outcomes: drain


@dataclass(frozen=True)
class BounceConfig:
    """bounce: reading bounce mail (`mailpulse bounce parse`, the bounce intake)."""

    verp_key: str = setting("", _quoted)  # MAILPULSE_VERP_KEY in the environment wins
    verp_prefix: str = setting(DEFAULT_PREFIX, _quoted)
    recipient_delimiter: str = setting(DEFAULT_DELIMITERS, _quoted)


@dataclass(frozen=True)
class BlacklistConfig:
    """blacklist: the policy of `mailpulse blacklist` and of the agent's blacklist."""

    # What the agent does with it: off; local (decide from this node's log and bounces and
    # keep its own table); node (send outcomes to Redis, keep the table the analyser decides);
    # analyser (decide for every node from the Redis stream, and keep its own table too).
    agent: str = setting("off", _one_of("off", "local", "node", "analyser"))
    store: str = setting("sqlite", _one_of(*STORES))
    ttl_5xx: float = setting(30 * DAY_S, _duration)  # a hard failure, the first time
    ttl_5xx_repeat: float = setting(180 * DAY_S, _duration)  # again after it expired
    ttl_4xx: float = setting(DAY_S, _duration)  # a soft failure's first lifetime, then doubled
    soft_repeat_days: int = setting(3, _positive(int))  # distinct days before a soft entry
    jitter_share: float = setting(0.1, _fraction)  # lifetimes spread so expiries don't all coincide
    allowlist: tuple[str, ...] = setting((), _strings)  # addresses, domains or @domains
    dry_run: bool = setting(False, _flag)
    # Circuit breakers: a destination whose hard failures in the window pass the count, or the
    # share once min_failures are seen, sends its new entries to quarantine instead.
    breaker_window: float = setting(3600.0, _duration)
    breaker_count: int = setting(200, _positive(int))
    breaker_share: float = setting(0.5, _share)
    breaker_min_failures: int = setting(20, _positive(int))
    hourly_cap: int = setting(5000, _positive(int))  # new entries per hour, all groups
    node_burst: int = setting(50, _positive(int))  # 5.7.x from one node in the window
    # The Postfix table: where, which map type (auto: cdb, else lmdb, else texthash).
    # A directory of its own that the agent may write (the systemd unit's ReadWritePaths).
    table: Path = setting(Path("/etc/postfix/mailpulse/blacklist"), _path)
    table_type: str = setting("auto", _one_of("auto", "cdb", "lmdb", "texthash"))
    shrink_share: float = setting(0.5, _share)  # a rebuild losing more of the table is refused
    postfix_config_dir: Path | None = setting(None, _path)  # for postmap -c
    maildir: Path | None = setting(None, _path)  # bounce Maildir the agent reads
    sync_interval: float = setting(1.0, _positive(float))  # agent: table rebuild check


@dataclass(frozen=True)
class RedisConfig:
    """redis: the store shared by many nodes (blacklist.store: redis)."""

    url: str = setting("redis://127.0.0.1:6379/0", _redis_url)
    prefix: str = setting("mailpulse:", _str)  # every key and stream name starts with it


@dataclass(frozen=True)
class SnmpConfig:
    """snmp: the snapshot the agent writes for `mailpulse snmp extend|pass-persist`."""

    snapshot_interval: float = setting(15.0, _duration)  # seconds between two snapshots
    # older than this, a snapshot's values read as unknown (the agent is stopped or stuck)
    stale_after: float = setting(120.0, _duration)


@dataclass(frozen=True)
class RrdConfig:
    """rrd: the round-robin archives the agent keeps (one-minute steps for a day, then Cacti's
    five-minute layout)."""

    enabled: bool = setting(True, _flag)
    dir: Path | None = setting(None, _path)  # None: STATE_DIR/rrd


@dataclass(frozen=True)
class GraphConfig:
    """graph: the PNGs `mailpulse graph` draws and the agent's landing page shows."""

    dir: Path | None = setting(None, _path)  # None: STATE_DIR/graphs
    width: int = setting(600, _positive(int))
    height: int = setting(200, _positive(int))


@dataclass(frozen=True)
class ReservedSection:
    """A section kept for a command not built yet: it accepts no key until that command declares
    its own here (alerts)."""


@dataclass(frozen=True)
class Config:
    source: Path | None = None  # the file read, None for pure defaults
    node: str = setting(lambda: socket.gethostname().split(".")[0], _str)
    role: str = setting("bulk", _one_of(*ROLES))
    state_dir: Path = setting(DEFAULT_STATE_DIR, _path)
    listen: str = setting("127.0.0.1:9154", _listen)
    web_config_file: Path | None = setting(None, _path)
    domain_groups: dict[str, str] = setting({}, _groups)
    top_k: int = setting(10, _positive(int))
    top_k_min_count: int = setting(100, _positive(int))
    log_files: tuple[Path, ...] | None = setting(None, _paths, "logs.files")  # None: discover
    log_read_bytes: int = setting(4 << 20, _positive(int), "logs.read_bytes")
    log_poll_s: float = setting(0.5, _positive(float), "logs.poll_interval")
    # set: read the journal, with these selectors
    journal_args: tuple[str, ...] | None = setting(None, _strings, "logs.journal_args")
    content_filters: tuple[str, ...] = setting(
        ("127.0.0.1:10024", "127.0.0.1:10025"), _strings, "logs.content_filters"
    )
    # queue ids kept by the log correlator
    max_messages: int = setting(100_000, _positive(int), "logs.max_messages")
    # None: postmulti, else /etc/postfix
    postfix_config_dirs: tuple[Path, ...] | None = setting(None, _paths, "postfix.config_dirs")
    queue_interval_s: float = setting(30.0, _positive(float), "queue.interval")
    host_interval_s: float = setting(15.0, _positive(float), "host.interval")
    agent_check: AgentCheckConfig = section(AgentCheckConfig)
    bounce: BounceConfig = section(BounceConfig)
    blacklist: BlacklistConfig = section(BlacklistConfig)
    redis: RedisConfig = section(RedisConfig)
    snmp: SnmpConfig = section(SnmpConfig)
    rrd: RrdConfig = section(RrdConfig)
    graph: GraphConfig = section(GraphConfig)
    alerts: ReservedSection = section(ReservedSection)
    # The sections of the other commands as the file gives them (checked all the same).
    other: dict[str, dict[str, Any]] = field(default_factory=dict)


OTHER_SECTIONS = ("bounce", "blacklist", "redis", "snmp", "rrd", "graph", "alerts")


def _keys(record: type) -> dict[str, Any]:
    """The file's keys of a record: "key" or "section.key" -> its field."""
    return {f.metadata.get("key") or f.name: f for f in fields(record) if f.metadata}


def _unknown(where: str, name: str, key: str, known: list[str]) -> ConfigError:
    if not known:
        section_name = name.split(".")[0]
        return ConfigError(
            f"{where}: {name}: unknown setting ({section_name} accepts none yet: the command"
            " that reads it is not part of this version)"
        )
    near = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {near[0]}?" if near else ""
    return ConfigError(f"{where}: {name}: unknown setting{hint} (known: {', '.join(known)})")


def _convert(where: str, key: str, conv: Conv, value: Any) -> Any:
    try:
        return conv(value)
    except (TypeError, ValueError, OverflowError) as e:
        raise ConfigError(f"{where}: {key}: expected {e}, got {value!r}") from None


def _map(where: str, name: str, raw: Any) -> dict[Any, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {name}: expected a map of settings")
    return raw


def parse_config(data: Any, source: Path | None = None) -> Config:
    """The settings of one YAML document; the first wrong key is a ConfigError naming it."""
    where = str(source or "<config>")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a map of settings")
    keys = _keys(Config)
    top = [k for k in keys if "." not in k]
    values: dict[str, Any] = {}
    for key, raw in data.items():
        name = str(key)
        f = keys.get(name)
        if f is not None and "section" in f.metadata:
            record = f.metadata["section"]
            sub = _keys(record)
            given = _map(where, name, raw)
            values[f.name] = record(**_settings(where, name, sub, given))
            if name in OTHER_SECTIONS:
                values.setdefault("other", {})[name] = given
        elif f is not None:
            values[f.name] = _convert(where, name, f.metadata["conv"], raw)
        elif any(k.startswith(name + ".") for k in keys):
            # A section whose keys set Config's own fields (logs.files -> log_files).
            sub = {k.split(".", 1)[1]: v for k, v in keys.items() if k.startswith(name + ".")}
            values.update(_settings(where, name, sub, _map(where, name, raw)))
        else:
            sections = sorted({k.split(".")[0] for k in keys if "." in k})
            raise _unknown(where, name, name, top + sections)
    cfg = Config(source=source, **values)
    if cfg.blacklist.agent in ("node", "analyser") and cfg.blacklist.store != "redis":
        raise ConfigError(
            f"{where}: blacklist.agent: {cfg.blacklist.agent} shares the list through Redis;"
            " it needs blacklist.store: redis"
        )
    return cfg


def _settings(
    where: str, name: str, known: dict[str, Any], given: dict[Any, Any]
) -> dict[str, Any]:
    """Field name -> converted value for the keys given in one section."""
    out: dict[str, Any] = {}
    for key, raw in given.items():
        f = known.get(str(key))
        if f is None:
            raise _unknown(where, f"{name}.{key}", str(key), list(known))
        out[f.name] = _convert(where, f"{name}.{key}", f.metadata["conv"], raw)
    return out


# Command-line options that stand for the file's setting of the same name.
CLI_OVERRIDES = ("state_dir", "web_config_file", "listen")


def load_for(args: Any) -> Config:
    """The settings of one command: --config (else the default file, else defaults), then the
    command line's --state-dir (and the agent's --web.* options) over them."""
    cfg = load_config(getattr(args, "config", None))
    over = {k: v for k in CLI_OVERRIDES if (v := getattr(args, k, None))}
    return replace(cfg, **over) if over else cfg


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
    import yaml  # here: commands run without a config file never pay for loading it

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
