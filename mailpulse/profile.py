"""Postfix profiles (mailpulse/profiles/NAME.main.cf, .master.cf, .transport) and how far a
node is from one.

A profile is a main.cf and a master.cf fragment and a transport table in Postfix's own syntax,
every setting under the comment lines that say why it is there. Parsing them and comparing
them with a node's settings are pure functions; reading the node goes through `postconf`
(mailpulse.postfix) and `postmap -q`, so what is compared is what Postfix itself resolves, per
instance.

A setting is named as postconf names it: `name` for main.cf, `service/type` for a master.cf
service line, `service/type/name` for one of its `-o name=value` overrides (postconf -P), and
`transport:domain` for a route of the transport table.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from mailpulse.postfix import Instance, PostconfError, run_postconf, run_tool
from mailpulse.series import SourceStatus

log = logging.getLogger(__name__)

PROFILES = ("bulk", "transactional")
ROUTE = "transport:"  # a route of the profile's transport table: "transport:gmail.com"
SITE = "site:"  # a reason starting so marks an example value: only its presence is checked
# master.cf columns after service and type, and what "-" means in each (master(5), Postfix 3).
MASTER_FIELDS = ("private", "unpriv", "chroot", "wakeup", "maxproc")
MASTER_DASH = {"private": "y", "unpriv": "y", "chroot": "n", "wakeup": "0"}
NAME_REF = re.compile(r"\$(?:\{(\w+)\}|\(?(\w+)\)?)")
# Exit statuses, as diff(1) has them: scripts tell "differs" from "could not compare".
EXIT_MATCH, EXIT_DRIFT, EXIT_TROUBLE = 0, 1, 2


class ProfileError(ValueError):
    """A profile file breaks the profile rules; the message names the file and the line."""


@dataclass(frozen=True)
class Setting:
    key: str  # "name", "service/type", "service/type/name" or "transport:domain"
    value: str  # as the profile writes it ($names unexpanded)
    why: str
    site: bool  # an example value: the node only has to set it

    @property
    def kind(self) -> str:
        if self.key.startswith(ROUTE):
            return "route"
        return ("main", "service", "option")[self.key.count("/")]


@dataclass(frozen=True)
class Finding:
    key: str
    node: str | None  # None: the node does not set it at all
    profile: str  # the profile's value, expanded with the node's own parameters
    ok: bool
    why: str


# -- the profile files ---------------------------------------------------------------------


def profile_dir() -> Path:
    return Path(str(resources.files("mailpulse") / "profiles"))


Part = tuple[str, str]  # (physical line, the comment lines just above it)


def _logical_lines(text: str, source: str) -> Iterable[tuple[int, list[Part]]]:
    """(line number, its physical lines): a line starting with whitespace continues the one
    before, as Postfix reads them; each physical line comes with the comment block just above
    it, and a blank line drops the comments gathered so far."""
    comments: list[str] = []
    current: tuple[int, list[Part]] | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#"):
            comments.append(stripped.lstrip("#").strip())
            continue
        if not stripped:  # a blank line: the comments above were about no one setting
            comments = []
            continue
        part = (stripped, " ".join(comments))
        comments = []
        if raw[0].isspace():
            if current is None:
                raise ProfileError(f"{source}:{n}: a continuation line with nothing to continue")
            current[1].append(part)
            continue
        if current is not None:
            yield current
        current = (n, [part])
    if current is not None:
        yield current


def parse_main(text: str, source: str = "main.cf") -> list[Setting]:
    out = []
    for n, parts in _logical_lines(text, source):
        name, eq, value = " ".join(p[0] for p in parts).partition("=")
        if not eq or not re.fullmatch(r"\w+", name.strip()):
            raise ProfileError(f"{source}:{n}: not a 'name = value' line")
        out.append(_setting(name.strip(), value.strip(), parts[0][1], source, n))
    return out


def _split_args(args: str) -> list[str]:
    """master.cf arguments; `{ ... }` keeps spaces inside one argument (master(5))."""
    words = re.findall(r"\{[^}]*\}|\S+", args)
    return [w[1:-1].strip() if w.startswith("{") else w for w in words]


def parse_master(text: str, source: str = "master.cf") -> list[Setting]:
    """Service lines as `service/type` settings, their -o overrides as `service/type/name`,
    each -o with the comment above its own line (else the service's)."""
    out = []
    for n, parts in _logical_lines(text, source):
        (first, why), rest = parts[0], parts[1:]
        words = first.split(None, 7)
        if len(words) < 8:
            raise ProfileError(f"{source}:{n}: a master.cf service needs eight columns")
        service, type_, *fields, command = words
        key = f"{service}/{type_}"
        args = _split_args(command)
        plain, options = _options(args[1:])
        overrides = [(k, v, why) for k, v in options]
        for text_, part_why in rest:
            more, opts = _options(_split_args(text_))
            plain += more
            overrides += [(k, v, part_why or why) for k, v in opts]
        out.append(_setting(key, " ".join([*fields, args[0], *plain]), why, source, n))
        out.extend(_setting(f"{key}/{k}", v, w, source, n) for k, v, w in overrides)
    return out


def _options(args: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    plain: list[str] = []
    options: list[tuple[str, str]] = []
    it = iter(args)
    for a in it:
        if a == "-o":
            name, _, value = next(it, "").partition("=")
            options.append((name.strip(), value.strip()))
        else:
            plain.append(a)
    return plain, options


def _setting(key: str, value: str, why: str, source: str, n: int) -> Setting:
    if not why:
        raise ProfileError(f"{source}:{n}: {key} has no comment saying why")
    site = why.startswith(SITE)
    return Setting(key, value, why.removeprefix(SITE).strip() if site else why, site)


def parse_transport(text: str, source: str = "transport") -> list[Setting]:
    """Routes as `transport:<domain>` settings whose value is the transport's name; a route on
    the line right under another shares its comment. A site route (the bounce domain) names
    an example domain, so there is nothing to look up."""
    out = []
    last_n, last_why = 0, ""
    for n, parts in _logical_lines(text, source):
        words = " ".join(p[0] for p in parts).split()
        if len(words) != 2:
            raise ProfileError(f"{source}:{n}: not a 'domain transport:nexthop' line")
        why = parts[0][1] or (last_why if n == last_n + 1 else "")
        route = _setting(ROUTE + words[0], words[1].split(":", 1)[0], why, source, n)
        last_n, last_why = n, why
        if not route.site:
            out.append(route)
    return out


def load_profile(name: str, directory: Path | None = None) -> list[Setting]:
    if name not in PROFILES:
        raise ProfileError(f"no profile {name!r}; there are {', '.join(PROFILES)}")
    d = directory or profile_dir()
    main = d / f"{name}.main.cf"
    master = d / f"{name}.master.cf"
    transport = d / f"{name}.transport"
    settings = [
        *parse_main(main.read_text(), str(main)),
        *parse_master(master.read_text(), str(master)),
        *parse_transport(transport.read_text(), str(transport)),
    ]
    keys = [s.key for s in settings]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ProfileError(f"profile {name}: set twice: {', '.join(twice)}")
    return settings


# -- the comparison (pure) ---------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSettings:
    """What postconf says of one instance: main.cf values ($names expanded), master.cf services
    (`postconf -M`: service/type -> its words after the type) and -o overrides (`postconf -P`)."""

    main: Mapping[str, str]
    services: Mapping[str, list[str]]
    options: Mapping[str, str]
    routes: Mapping[str, str] = field(default_factory=dict)  # domain -> transport_maps' value


def referenced_names(settings: Iterable[Setting]) -> set[str]:
    """main.cf names the profile's values refer to, and default_process_limit (maxproc "-")."""
    names = {"default_process_limit", "transport_maps"}
    for s in settings:
        if s.kind == "main":
            names.add(s.key)
            names.update(m.group(1) or m.group(2) for m in NAME_REF.finditer(s.value))
    return names


def expand(value: str, main: Mapping[str, str]) -> str:
    """$name and ${name} replaced by the node's (already expanded) values: main.cf values
    only, since postconf -M and -P print master.cf as written."""
    return NAME_REF.sub(lambda m: main.get(m.group(1) or m.group(2), m.group(0)), value)


def _normal(value: str) -> str:
    # Postfix reads lists split on commas and whitespace alike (postconf(5)).
    return " ".join(w for w in re.split(r"[\s,]+", value) if w)


def _service_words(words: list[str], main: Mapping[str, str]) -> list[str]:
    fields = [
        MASTER_DASH.get(f, main.get("default_process_limit", "100")) if w == "-" else w
        for f, w in zip(MASTER_FIELDS, words, strict=False)
    ]
    plain, _ = _options(_split_args(" ".join(words[len(MASTER_FIELDS) :])))
    return fields + plain


def compare(settings: Iterable[Setting], node: NodeSettings) -> list[Finding]:
    out = []
    for s in settings:
        want = s.value
        have: str | None
        if s.kind == "main":
            have = node.main.get(s.key)
            want = expand(s.value, node.main)
        elif s.kind == "option":
            have = node.options.get(s.key)
        elif s.kind == "route":
            route = node.routes.get(s.key.removeprefix(ROUTE))
            have = None if route is None else route.split(":", 1)[0]
        else:
            words = node.services.get(s.key)
            have = None if words is None else " ".join(_service_words(words, node.main))
            want = " ".join(_service_words(want.split(), node.main))
        if have is None:
            ok = False
        elif s.site:
            # An example value: set it is enough; a service must still run the same command.
            ok = bool(have.strip()) and (
                s.kind != "service" or have.split()[:6] == want.split()[:6]
            )
        else:
            ok = _normal(have) == _normal(want)
        out.append(Finding(s.key, have, want, ok, s.why))
    return out


def parse_services(text: str) -> dict[str, list[str]]:
    """`postconf -M` output: one service a line."""
    out = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 8 and not line.startswith("#"):
            out[f"{words[0]}/{words[1]}"] = words[2:]
    return out


def parse_options(text: str) -> dict[str, str]:
    """`postconf -P` output: service/type/name = value."""
    out = {}
    for line in text.splitlines():
        key, eq, value = line.partition("=")  # "key =" when empty: no space after it
        if eq and key.count("/") == 2:
            out[key.strip()] = value.strip()
    return out


# -- reading a node ----------------------------------------------------------------------------


def read_node(config_dir: Path | None, settings: list[Setting]) -> NodeSettings:
    """One instance's effective settings, through postconf (raises PostconfError)."""
    main = {}
    for line in run_postconf(config_dir, "-x", *sorted(referenced_names(settings))).splitlines():
        name, eq, value = line.partition("=")  # "name =" when empty: no space after it
        if eq:
            main[name.strip()] = value.strip()
    services = parse_services(run_postconf(config_dir, "-M"))
    options = parse_options(run_postconf(config_dir, "-P"))
    domains = [s.key.removeprefix(ROUTE) for s in settings if s.kind == "route"]
    routes = lookup_routes(config_dir, main.get("transport_maps", ""), domains)
    return NodeSettings(main, services, options, routes)


def lookup_routes(config_dir: Path | None, maps: str, domains: list[str]) -> dict[str, str]:
    """Each domain's value in the first of transport_maps that has it, as `postmap -q -` reads
    keys from its input: one process per table. A table postmap cannot open routes nothing
    (the check shows those routes as not set)."""
    found: dict[str, str] = {}
    for table in _normal(maps).split() if domains else []:
        wanted = [d for d in domains if d not in found]
        if not wanted:
            break
        argv = ["postmap", *(["-c", str(config_dir)] if config_dir else []), "-q", "-", table]
        # postmap -q exits 1 when a key is absent: its output, not its status, is the answer.
        r = run_tool(argv, "".join(f"{d}\n" for d in wanted))
        for line in r.stdout.splitlines():
            key, tab, value = line.partition("\t")
            if tab and key in wanted:
                found[key] = value.strip()
    return found


def check_instance(inst: Instance, settings: list[Setting]) -> list[Finding]:
    return compare(settings, read_node(inst.config_dir, settings))


# -- the command line -------------------------------------------------------------------------


def format_findings(inst: Instance, profile: str, findings: list[Finding]) -> str:
    """Per setting: whether it matches, the node's value, the profile's and why; the settings
    that differ first."""
    off = sum(not f.ok for f in findings)
    where = f" ({inst.config_dir})" if inst.config_dir else ""
    lines = [f"{inst.name}{where}: profile {profile}, {off} of {len(findings)} settings differ"]
    for f in sorted(findings, key=lambda f: f.ok):
        node = "(not set)" if f.node is None else f.node or "(empty)"
        lines += [
            f"{'ok  ' if f.ok else 'DIFF'} {f.key}",
            f"       node:    {node}",
            f"       profile: {f.profile or '(empty)'}",
            f"       why:     {f.why}",
        ]
    return "\n".join(lines)


def run_check(args: argparse.Namespace) -> int:
    """`mailpulse postfix check`: exit 0 when every instance matches, 1 when one differs, 2
    when a profile or an instance could not be read."""
    from mailpulse.config import ConfigError, instances_to_watch, load_for
    from mailpulse.postfix import discover_instances

    try:
        cfg = load_for(args)
        name = args.profile or cfg.role
        settings = load_profile(name)
        if args.postfix_config is None:
            instances = instances_to_watch(cfg)
        else:
            instances = discover_instances(args.postfix_config)
    except (ConfigError, ProfileError, OSError) as e:
        print(f"mailpulse postfix check: {e}", file=sys.stderr)
        return EXIT_TROUBLE
    except PostconfError as e:
        print(f"mailpulse postfix check: cannot read Postfix's configuration: {e}", file=sys.stderr)
        return EXIT_TROUBLE
    status = EXIT_MATCH
    for inst in instances:
        try:
            findings = check_instance(inst, settings)
        except PostconfError as e:
            print(f"mailpulse postfix check: {inst.name}: {e}", file=sys.stderr)
            status = EXIT_TROUBLE
            continue
        if any(not f.ok for f in findings) and status == EXIT_MATCH:
            status = EXIT_DRIFT
        if args.json:
            doc = {
                "instance": inst.name,
                "config_dir": str(inst.config_dir) if inst.config_dir else None,
                "profile": name,
                "differ": sum(not f.ok for f in findings),
                "settings": [asdict(f) for f in findings],
            }
            print(json.dumps(doc, sort_keys=True))
        else:
            print(format_findings(inst, name, findings))
    return status


# -- the agent's slow watch --------------------------------------------------------------------


class DriftWatch:
    """Settings off the node's profile, per instance, re-read every few minutes in a thread of
    its own: configuration changes rarely, and postconf costs a few forks per instance."""

    def __init__(
        self, instances: list[Instance], profile: str, interval_s: float, stop: threading.Event
    ):
        self.instances = instances
        self.profile = profile
        self.interval_s = interval_s
        self.stop_event = stop
        self._latest: tuple[dict[str, int], SourceStatus] = ({}, SourceStatus())
        self.thread = threading.Thread(target=self._run, name="profile", daemon=True)

    def sample(self) -> tuple[dict[str, int], SourceStatus]:
        """Drift per instance; the status is up only when the profile and every instance were
        read (an instance postconf cannot read is left out, not counted as drift)."""
        started = time.monotonic()
        drift: dict[str, int] = {}
        ok = True
        try:
            settings = load_profile(self.profile)
        except (ProfileError, OSError) as e:
            log.warning("profile %s unreadable: %s", self.profile, e)
            settings, ok = [], False
        for inst in self.instances if settings else []:
            try:
                drift[inst.name] = sum(not f.ok for f in check_instance(inst, settings))
            except PostconfError as e:
                # As the host sampler's postconf: said by the series (source_up 0), not every
                # five minutes in the log; `mailpulse postfix check` prints the reason.
                log.debug("profile check of %s failed: %s", inst.name, e)
                ok = False
        last_ok = time.time() if ok else self._latest[1].last_ok
        return drift, SourceStatus(ok, last_ok, time.monotonic() - started)

    def _run(self) -> None:
        while True:
            self._latest = self.sample()
            if self.stop_event.wait(self.interval_s):
                return

    def start(self) -> None:
        self.thread.start()

    def latest(self) -> tuple[str, dict[str, int], SourceStatus]:
        drift, status = self._latest
        return self.profile, drift, status
