"""`mailpulse blacklist ingest|list|add|remove|lift|quarantine|export|publish`."""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import sqlite3
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailpulse.exits import FAILURE, OK, TEMPFAIL, USAGE

if TYPE_CHECKING:
    from mailpulse.bounce.blacklist import Blacklist
    from mailpulse.bounce.policy import Decision, Entry
    from mailpulse.bounce.store import Filter


def _when(text: str) -> float:
    """POSIX seconds, or an ISO date/time (UTC unless it says otherwise)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (ISO 8601 or POSIX seconds)"
        ) from None
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp()


def _duration(text: str) -> float:
    from mailpulse.config import _duration as conv

    try:
        return conv(text)
    except TypeError as e:
        raise argparse.ArgumentTypeError(f"expected {e}") from None


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    bl = sub.add_parser("blacklist", help="the self-expiring blacklist")
    actions = bl.add_subparsers(dest="action", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = actions.add_parser(name, help=help_text)
        common(p)
        p.add_argument("--json", action="store_true", help="JSON instead of text")
        p.set_defaults(run=run)
        return p

    def filters(p: argparse.ArgumentParser) -> None:
        p.add_argument("--group", default="", help="domain group")
        p.add_argument("--reason", default="", help="reason")
        p.add_argument("--since", type=_when, help="added at or after (ISO 8601 or POSIX)")
        p.add_argument("--until", type=_when, help="added before")

    ingest = action("ingest", "feed log lines and bounce mails through the policy")
    ingest.add_argument("--log", type=Path, action="append", default=[], help="a mail log")
    ingest.add_argument(
        "--dsn",
        type=Path,
        action="append",
        default=[],
        help="bounce mail (.eml, Maildir, mbox); - for one message from pipe(8)",
    )
    ingest.add_argument("--publish", action="store_true", help="rebuild the table after")
    filters(action("list", "entries in force (--quarantine: held ones)"))
    actions.choices["list"].add_argument(
        "--quarantine", dest="in_quarantine", action="store_true", help="the held entries instead"
    )
    add = action("add", "put addresses (or domains) on the list by hand")
    add.add_argument("args", nargs="+", metavar="ADDRESS", help="addresses or domains to list")
    add.add_argument("--reason", default="manual", help="the reason kept as evidence")
    add.add_argument("--ttl", type=_duration, help="lifetime (default: until lifted)")
    remove = action("remove", "take addresses off the list")
    remove.add_argument("args", nargs="+", metavar="ADDRESS", help="entries to take out")
    lift = action("lift", "take entries off the list in bulk, by filter")
    filters(lift)
    lift.add_argument("--all", action="store_true", help="every entry")
    quarantine = action("quarantine", "review, release or drop held entries")
    quarantine.add_argument(
        "args",
        nargs="?",
        choices=["list", "release", "drop"],
        default="list",
        help="list the held entries, put them in force, or drop them",
    )
    filters(quarantine)
    quarantine.add_argument("--all", action="store_true", help="every held entry")
    export = action("export", "user ids and addresses to leave out, for the mailing software")
    export.add_argument(
        "--format", choices=["csv", "json"], default="csv", help="what the mailing software reads"
    )
    publish = action("publish", "rebuild the Postfix table from the entries in force")
    publish.add_argument("--force", action="store_true", help="past the shrink guard")


def _say(text: str) -> None:
    print(f"mailpulse: {text}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    if args.action == "ingest" and any(str(p) == "-" for p in args.dsn):
        return _piped(args)
    return _run(args)


def _piped(args: argparse.Namespace) -> int:
    """Under Postfix's pipe(8) only 0 (recorded, or no bounce) and 75 (kept queued, tried
    again) may come out: any other code would bounce a bounce. A config file being fixed, a
    store away, postmap missing: the mail waits in the queue until they are right."""
    try:
        code = _run(args)
    except Exception as e:  # noqa: BLE001 - whatever it is, the mail stays queued
        _say(f"bounce not recorded, Postfix will retry: {e}")
        return TEMPFAIL
    return code if code in (OK, TEMPFAIL) else TEMPFAIL


def _run(args: argparse.Namespace) -> int:
    from mailpulse.bounce.blacklist import Blacklist, open_store

    from mailpulse.config import load_for

    cfg = load_for(args)
    try:
        store = open_store(cfg)
    except Exception as e:  # noqa: BLE001 - the store's own error, said in one line
        _say(f"blacklist store: {e}")
        return TEMPFAIL if args.action == "ingest" else FAILURE
    bl = Blacklist(cfg, store)
    try:
        return COMMANDS[args.action](bl, args)
    except store_errors(cfg.blacklist.store) as e:
        _say(f"blacklist store: {e}")  # one line: the store is away or damaged
        return TEMPFAIL if args.action == "ingest" else FAILURE
    finally:
        store.close()


def store_errors(store: str) -> tuple[type[Exception], ...]:
    """What a store that is away or damaged raises."""
    if store != "redis":
        return (sqlite3.Error, OSError)
    import redis

    return (sqlite3.Error, OSError, redis.RedisError)


def _filter(args: argparse.Namespace) -> Filter:
    from mailpulse.bounce.store import Filter

    return Filter(
        getattr(args, "group", ""),
        getattr(args, "reason", ""),
        getattr(args, "since", None),
        getattr(args, "until", None),
    )


def _iso(t: float | None) -> str:
    if t is None:
        return ""
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _entry_json(e: Entry) -> dict[str, Any]:
    from mailpulse.bounce.store import entry_json

    d = entry_json(e)
    d["added_iso"], d["expires_iso"] = _iso(e.added), _iso(e.expires)
    return d


def _print_entries(entries: list[Entry], as_json: bool) -> None:
    for e in entries:
        if as_json:
            print(json.dumps(_entry_json(e)))
        else:
            last = e.evidence[-1] if e.evidence else None
            why = (
                f"{last.dsn} {last.source}{'' if last.verified else ' unverified'}" if last else ""
            )
            until = _iso(e.expires) or "until lifted"
            hold = f" held:{e.hold}" if e.hold else ""
            print(
                f"{e.key}\t{e.user_id or '-'}\t{e.reason}\t{e.domain_group}\t{until}\t{why}{hold}"
            )


def _ingest(bl: Blacklist, args: argparse.Namespace) -> int:
    from mailpulse.bounce.intake import pipe_delivery, read_paths

    from mailpulse.events import outcome_of_event
    from mailpulse.report import input_events, settings

    decisions: list[Decision] = []
    if any(str(p) == "-" for p in args.dsn):
        # Postfix pipe(8): one message; 0 once recorded, 75 so Postfix retries otherwise.
        envelope = os.environ.get("MAILPULSE_ENVELOPE_RECIPIENT", "")
        code = pipe_delivery(
            sys.stdin.buffer,
            lambda item, _records: bl.record_mail(item, bl.cfg.node, envelope),
            bl.verp,
            envelope,
        )
        if code == OK and args.publish:
            bl.publish()
        return code
    failures: list[int] = []
    if args.log:
        correlator, _groups = settings(args)
        for ev in input_events(correlator, args.log, failures):
            decisions.append(bl.record(outcome_of_event(ev, bl.verp)))

    def unreadable(path: Path, e: OSError) -> None:
        _say(f"{path}: cannot read: {e.strerror or e}")
        failures.append(os.EX_NOINPUT)

    for item in read_paths(args.dsn, on_error=unreadable):
        try:
            bl.record_mail(item, bl.cfg.node)
        except Exception as e:  # noqa: BLE001 - one unreadable mail is said, the rest go on
            _say(f"{item.source}: not recorded: {e}")
            failures.append(os.EX_DATAERR)
    tally = Counter(d.action for d in decisions)
    _say(
        f"{len(decisions)} log outcomes: "
        + ", ".join(f"{n} {a}" for a, n in sorted(tally.items()))
        + (" (dry run: nothing written)" if bl.cfg.blacklist.dry_run else "")
    )
    if args.json:
        for d in decisions:
            if d.action != "ignore":
                print(json.dumps({"action": d.action, "key": d.key, "why": d.why}))
    if args.publish and _publish(bl, args) != OK:
        failures.append(1)
    return max(failures, default=OK)


def _list(bl: Blacklist, args: argparse.Namespace) -> int:
    f = _filter(args)
    held = getattr(args, "in_quarantine", False)
    entries = bl.store.quarantined(f) if held else bl.store.entries(bl.clock(), f)
    _print_entries(entries, args.json)
    return OK


def _add(bl: Blacklist, args: argparse.Namespace) -> int:
    from mailpulse.bounce.policy import Entry, Evidence, normal_key
    from mailpulse.bounce.publish import key_problem

    now = bl.clock()
    bad = 0
    for raw in args.args:
        key = normal_key(raw)
        problem = key_problem(key)
        if problem:
            _say(f"{raw!r}: not added: {problem}")
            bad += 1
            continue
        ev = Evidence(args.reason, "", "", "added by hand", bl.cfg.node, now, "manual", True)
        group = bl.groups.group(key.rpartition("@")[2])
        expires = now + args.ttl if args.ttl else None
        bl.store.put(Entry(key, None, args.reason, group, now, expires, 1, "manual", [ev]))
    return USAGE if bad else OK


def _remove(bl: Blacklist, args: argparse.Namespace) -> int:
    from mailpulse.bounce.policy import normal_key
    from mailpulse.bounce.store import Filter

    missing = 0
    for raw in args.args:
        if not bl.store.lift(bl.clock(), Filter(key=normal_key(raw))):
            _say(f"{raw}: not on the blacklist")
            missing += 1
    return FAILURE if missing else OK


def _needs_filter(args: argparse.Namespace, what: str) -> bool:
    f = _filter(args)
    if args.all or f.domain_group or f.reason or f.since is not None or f.until is not None:
        return False
    _say(f"blacklist {what}: give a filter (--group, --reason, --since, --until) or --all")
    return True


def _lift(bl: Blacklist, args: argparse.Namespace) -> int:
    if _needs_filter(args, "lift"):
        return USAGE
    n = bl.store.lift(bl.clock(), _filter(args))
    _say(f"lifted {n} entries")
    return OK


def _quarantine(bl: Blacklist, args: argparse.Namespace) -> int:
    what = args.args
    if what == "list":
        _print_entries(bl.store.quarantined(_filter(args)), args.json)
        return OK
    if _needs_filter(args, f"quarantine {what}"):
        return USAGE
    f = _filter(args)
    n = bl.store.release(bl.clock(), f) if what == "release" else bl.store.drop(f)
    _say(f"{'released' if what == 'release' else 'dropped'} {n} entries")
    return OK


def export_rows(bl: Blacklist) -> list[dict[str, Any]]:
    """What the mailing software leaves out: one row per key in force."""
    return [
        {
            "user_id": e.user_id or "",
            "address": e.key if "@" in e.key else "",
            "domain": e.key.rpartition("@")[2],
            "reason": e.reason,
            "expires": _iso(e.expires),
        }
        for e in bl.store.entries(bl.clock())
    ]


EXPORT_FIELDS = ("user_id", "address", "domain", "reason", "expires")


def export_csv(rows: list[dict[str, Any]]) -> str:
    import io

    out = io.StringIO()
    w = csv.DictWriter(out, EXPORT_FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return out.getvalue()


def _export(bl: Blacklist, args: argparse.Namespace) -> int:
    rows = export_rows(bl)
    if args.format == "json" or args.json:
        print(json.dumps(rows, indent=1))
    else:
        sys.stdout.write(export_csv(rows))
    return OK


def _publish(bl: Blacklist, args: argparse.Namespace) -> int:
    try:
        done = bl.publish(force=getattr(args, "force", False))
    except OSError as e:
        _say(f"table not published: {e}")
        return FAILURE
    if done is None:
        return 1  # refused by the shrink guard: said by publish
    _say(f"{done.path} ({done.map_type}): {done.entries} entries, was {done.previous}")
    return OK


COMMANDS: dict[str, Callable[[Blacklist, argparse.Namespace], int]] = {
    "ingest": _ingest,
    "list": _list,
    "add": _add,
    "remove": _remove,
    "lift": _lift,
    "quarantine": _quarantine,
    "export": _export,
    "publish": _publish,
}
