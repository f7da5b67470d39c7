"""`mailpulse logs parse` and `mailpulse logs report`: log files (or stdin) through the collector.

The report is what pflogsumm gives an operator, in mailpulse's words: outcomes per status,
reason, dsn, domain group, node and hour, and the replies behind the deferrals and bounces.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from mailpulse.collectors.maillog import Correlator
from mailpulse.config import load_for
from mailpulse.domains import DEFAULT_GROUPS, DomainGroups
from mailpulse.events import STATUSES, DeliveryEvent
from mailpulse.exits import DATAERR, FAILURE, OK, path_code, path_problem

TOP = 10
# Parts of a reply that name one recipient or host; without them equal replies group together.
_HOST_SAID = re.compile(r"^(?:delivery temporarily suspended: )?host \S+ said: ")
_ADDRESS = re.compile(r"<[^<>\s]*@[^<>\s]*>|\[[0-9A-Fa-f.:]+\](?::\d+)?")
_IN_REPLY = re.compile(r" \(in reply to [^)]*\)$")


def normalise_reply(text: str) -> str:
    text = _HOST_SAID.sub("", text)
    text = _IN_REPLY.sub("", text)
    return _ADDRESS.sub("<...>", text)[:200]


# Exit codes (mailpulse.exits, as every command): a file damaged part way (what came before it
# is counted), a file that cannot be opened; DATAERR too when lines that look like a delivery
# were left out, or when no line of the input is Postfix's. All still print what was read.


def _open(path: Path) -> BinaryIO:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


class _Counted:
    """A binary file that counts the bytes read through it: where damage was met."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.read_bytes = 0

    def read1(self, n: int) -> bytes:
        data = self.f.read1(n) if hasattr(self.f, "read1") else self.f.read(n)
        self.read_bytes += len(data)
        return data

    read = read1


def input_events(
    c: Correlator, files: Iterable[Path], failures: list[int] | None = None
) -> Iterator[DeliveryEvent]:
    """Delivery events of these files in order ("-" or none: stdin), read in blocks.

    A file that cannot be opened or is damaged part way (a truncated or corrupt .gz) is said in
    one line on stderr, counted in the correlator (unreadable_files, damaged_files) and its
    exit code appended to `failures`; what came before the damage is kept, the next file read.
    """
    fails = failures if failures is not None else []
    for p in list(files) or [Path("-")]:
        if str(p) == "-":
            yield from c.feed_stream(sys.stdin.buffer)
            yield from c.flush()  # a delivery line cut short at the end: read as it is
            continue
        try:
            f = _open(p)
        except OSError as e:
            _say(f"{p}: {path_problem(e)}")
            c.counts["unreadable_files"] += 1
            fails.append(path_code(e))
            continue
        with f:
            counted = _Counted(f)
            lines = c.lines
            try:
                yield from c.feed_stream(counted)
            except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
                text = " of its uncompressed text" if p.suffix == ".gz" else ""
                _say(
                    f"{p}: damaged after byte {counted.read_bytes}{text}, line {c.lines - lines}:"
                    f" {e}; what came before is counted"
                )
                c.counts["damaged_files"] += 1
                fails.append(DATAERR)
            yield from c.flush()


def _say(text: str) -> None:
    print(f"mailpulse: {text}", file=sys.stderr)


def settings(args: argparse.Namespace | None) -> tuple[Correlator, DomainGroups]:
    """The correlator and the domain groups the config file asks for (logs:, domain_groups:)."""
    cfg = load_for(args)
    correlator = Correlator(content_filters=cfg.content_filters, max_messages=cfg.max_messages)
    return correlator, DomainGroups(cfg.domain_groups)


def event_json(ev: DeliveryEvent) -> dict[str, Any]:
    d = ev.to_json()
    if not d["extra"]:
        del d["extra"]
    return d


# `logs parse --json` writes an event as json.dumps(event_json(ev)) would, byte for byte,
# without building the dict (asdict copies every field) nor walking it: its fields go into a
# template as they are when each string is printable ASCII without a quote or backslash, which
# json.dumps writes unchanged. The line is checked once, whole: no control character, no
# backslash, and no quote beyond the template's own; any other event goes through json.dumps.
_EVENT_QUOTES = 70  # around 20 keys and 15 string values
_NOT_AS_IS = bytes(range(32)) + b'"\\\x7f'
# delays= as JSON, by value: a float's repr costs more than a look-up, and a log repeats a
# few hundred of them
_DELAYS_JSON: dict[tuple[float, float, float, float] | None, str] = {None: "null"}


def event_json_line(ev: DeliveryEvent) -> bytes:
    """One event as a line of JSON: json.dumps(event_json(ev)) and a newline. The template
    names DeliveryEvent's fields in their order: a new field goes here too (the tests of
    test_logs_json.py fail until it does)."""
    delays = ev.delays
    delays_json = _DELAYS_JSON.get(delays)
    if delays_json is None:
        if len(_DELAYS_JSON) > 4096:
            _DELAYS_JSON.clear()
            _DELAYS_JSON[None] = "null"
        delays_json = _DELAYS_JSON[delays] = "[" + ", ".join(map(repr, delays)) + "]"  # type: ignore[arg-type]
    size = "null" if ev.size is None else ev.size
    line = (
        f'{{"time": {ev.time!r}, "node": "{ev.node}", "instance": "{ev.instance}", '
        f'"program": "{ev.program}", "queue_id": "{ev.queue_id}", '
        f'"recipient": "{ev.recipient}", "domain": "{ev.domain}", "relay": "{ev.relay}", '
        f'"status": "{ev.status}", "dsn": "{ev.dsn}", "reply_code": "{ev.reply_code}", '
        f'"reply_text": "{ev.reply_text}", "reason": "{ev.reason}", "scope": "{ev.scope}", '
        f'"hard": {"true" if ev.hard else "false"}, "delay": {ev.delay!r}, '
        f'"delays": {delays_json}, "orig_recipient": "{ev.orig_recipient}", '
        f'"sender": "{ev.sender}", "size": {size}'
    )
    numbers = ev.time + ev.delay + (sum(delays) if delays else 0.0)
    if line.isascii() and numbers - numbers == 0.0:  # finite: else "Infinity", "NaN"
        data = line.encode("ascii")
        if len(data) - len(data.translate(None, _NOT_AS_IS)) == _EVENT_QUOTES:
            if ev.extra:
                return b'%s, "extra": %s}\n' % (data, json.dumps(ev.extra).encode())
            return data + b"}\n"
    return json.dumps(event_json(ev)).encode("ascii") + b"\n"


Consumer = Callable[[argparse.Namespace, Iterator[DeliveryEvent], Correlator, DomainGroups], None]


def _run(args: argparse.Namespace, consume: Consumer) -> int:
    """The inputs' events through `consume`. Exit code: FAILURE when writing fails, else the
    first file's problem (see input_events)."""
    c, groups = settings(args)  # a wrong config file is said by the command line
    failures: list[int] = []
    try:
        consume(args, input_events(c, args.files, failures), c, groups)
    except BrokenPipeError:  # `| head`: the reader has all it wants
        return OK
    except OSError as e:
        _say(path_problem(e))
        return FAILURE
    verdict = input_verdict(c)
    if verdict:
        failures.append(verdict)
    return failures[0] if failures else OK


def input_verdict(c: Correlator) -> int:
    """DATAERR (65), said on stderr, when the input cannot be summed up truly: delivery lines
    were left out, or it holds lines and none of them is Postfix's (not a mail log)."""
    stats = c.stats
    left_out = {k[9:]: n for k, n in stats.items() if k.startswith("left_out.") and n}
    if left_out:
        _say(f"delivery lines left out, per reason: {left_out}")
        return DATAERR
    if stats["lines"] and not postfix_lines(stats):
        _say(f"no Postfix line in {stats['lines']} lines read: not a Postfix mail log?")
        return DATAERR
    return OK


def postfix_lines(stats: Counter[str]) -> int:
    """Lines written by Postfix: not another program's, nor Sendmail's in the same file."""
    return stats["lines"] - stats["not_postfix"] - stats["records.other_mta"]


def run_parse(args: argparse.Namespace) -> int:
    return _run(args, _print_events)


def _print_events(
    args: argparse.Namespace, events: Iterator[DeliveryEvent], c: Correlator, _g: DomainGroups
) -> None:
    if args.json:
        sys.stdout.flush()
        write_json = sys.stdout.buffer.write  # the lines are ASCII bytes already
        for ev in events:
            write_json(event_json_line(ev))
    else:
        write = sys.stdout.write
        for ev in events:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ev.time))
            write(
                f"{stamp} {ev.node} {ev.instance}/{ev.program} {ev.queue_id} "
                f"{ev.recipient} {ev.status} {ev.dsn} {ev.reason}\n"
            )
    _print_unparsed(c)


def _print_unparsed(c: Correlator) -> None:
    unparsed = {k[9:]: v for k, v in c.stats.items() if k.startswith("unparsed.")}
    if unparsed:
        print(f"mailpulse: lines not understood, per program: {unparsed}", file=sys.stderr)


class Report:
    """Counts over a stream of events, plus the correlator's own counts."""

    def __init__(self, groups: DomainGroups = DEFAULT_GROUPS) -> None:
        self.groups = groups
        # (status, reason, dsn, domain group, node, hour) -> events: one count per event, spread
        # over the report's tables at the end, or when it holds _CELLS_KEPT of them (a long log
        # has many hours: their product with the other columns must not grow without end)
        self.cells: Counter[tuple[str, str, str, str, str, str]] = Counter()
        self._status: Counter[str] = Counter()
        self._by: dict[str, dict[str, Counter[str]]] = {
            k: defaultdict(Counter) for k in ("reason", "dsn", "dsn_class", "group", "node", "hour")
        }
        self.replies: dict[str, Counter[str]] = {"deferred": Counter(), "bounced": Counter()}
        self.first = self.last = 0.0
        # what add() looks up rather than works out again: lines share their second, relays
        # and domains recur, and so do the replies of one remote
        self._hours: dict[float, str] = {}
        self._groups: dict[tuple[str, str], str] = {}
        self._normalised: dict[str, str] = {}

    def add(self, ev: DeliveryEvent) -> None:
        self.add_all((ev,))

    def add_all(self, events: Iterable[DeliveryEvent]) -> None:
        # one loop with its look-ups bound once: this runs for every delivery line
        cells, replies, hours, groups, normalised = (
            self.cells, self.replies, self._hours, self._groups, self._normalised
        )  # fmt: skip
        for ev in events:
            s = ev.status
            hour = hours.get(ev.time) or self._hour(ev.time)
            where = (ev.domain, ev.relay)
            group = groups.get(where) or self._group(where)
            cells[(s, ev.reason, ev.dsn, group, ev.node, hour)] += 1
            if s in replies:
                text = ev.reply_text
                replies[s][normalised.get(text) or self._normalise(text)] += 1

    def _hour(self, t: float) -> str:
        """The hour of a time not seen lately (and the report's first and last times)."""
        if t:
            self.first = t if not self.first else min(self.first, t)
            self.last = max(self.last, t)
        if len(self.cells) >= _CELLS_KEPT:
            self._fold()
        return _remember(self._hours, t, time.strftime("%Y-%m-%d %H:00", time.localtime(t)))

    def _group(self, where: tuple[str, str]) -> str:
        return _remember(self._groups, where, self.groups.group(*where))

    def _normalise(self, text: str) -> str:
        return _remember(self._normalised, text, normalise_reply(text))

    def tables(self) -> tuple[Counter[str], dict[str, dict[str, Counter[str]]]]:
        """Events per status, and per (table, row) per status."""
        self._fold()
        return self._status, self._by

    def _fold(self) -> None:
        """The cells counted so far, spread over the tables."""
        status, by = self._status, self._by
        for (s, reason, dsn, group, node, hour), n in self.cells.items():
            status[s] += n
            if s != "sent":
                by["reason"][reason][s] += n
            by["dsn"][dsn or "none"][s] += n
            by["dsn_class"][(dsn[:1] + ".x.x") if dsn else "none"][s] += n
            by["group"][group][s] += n
            by["node"][node][s] += n
            by["hour"][hour][s] += n
        self.cells.clear()

    def to_json(self, c: Correlator) -> dict[str, Any]:
        stats = dict(c.stats)
        status, by = self.tables()
        return {
            "first": self.first,
            "last": self.last,
            "status": {s: status.get(s, 0) for s in STATUSES},
            **{
                k: {
                    name: {s: cnt[s] for s in STATUSES if s in cnt}
                    for name, cnt in sorted(v.items())
                }
                for k, v in by.items()
            },
            "top_replies": {
                s: [{"reply": r, "count": n} for r, n in cnt.most_common(TOP)]
                for s, cnt in self.replies.items()
            },
            "messages": {
                "received": stats.get("records.client", 0) + stats.get("records.pickup", 0),
                "queued": stats.get("records.queued", 0),
                "removed": stats.get("records.removed", 0),
                "notifications": stats.get("records.notification", 0),
            },
            "content_filter_relays": stats.get("content_filter_relays", 0),
            "rejects": {k[8:]: v for k, v in stats.items() if k.startswith("rejects.")},
            "warnings": {
                lvl: stats.get("records." + lvl, 0)
                for lvl in ("warning", "error", "fatal", "panic")
            },
            "lines": stats.get("lines", 0),
            "not_postfix": stats.get("not_postfix", 0),
            "unparsed": {k[9:]: v for k, v in stats.items() if k.startswith("unparsed.")},
            "unparsed_samples": c.samples,
            # what could not be read, per program, with one line of it to look at
            "not_read": {
                k[9:]: {"count": v, "sample": (c.samples.get(k[9:]) or [""])[0]}
                for k, v in stats.items()
                if k.startswith("unparsed.")
            },
            "left_out": {k[9:]: v for k, v in stats.items() if k.startswith("left_out.")},
            "postfix_lines": postfix_lines(Counter(stats)),
            "other_mta_lines": stats.get("records.other_mta", 0),
            "verify_probes": stats.get("records.verify", 0),
            "evictions": stats.get("evictions", 0),
            "cut_lines": stats.get("cut_lines", 0),
            "damaged_files": stats.get("damaged_files", 0),
            "unreadable_files": stats.get("unreadable_files", 0),
        }


_REMEMBERED = 4096  # entries of each look-up table of Report.add, beyond which it starts again
_CELLS_KEPT = 100_000


def _remember(table: dict[Any, str], key: Any, value: str) -> str:
    if len(table) >= _REMEMBERED:
        table.clear()
    table[key] = value
    return value


def _table(title: str, rows: dict[str, dict[str, int]], limit: int | None = None) -> list[str]:
    out = [f"\n{title}", f"  {'':<28}" + "".join(f"{s:>10}" for s in STATUSES)]
    ranked = sorted(rows.items(), key=lambda kv: -sum(kv[1].values()))
    for name, cnt in ranked[:limit]:
        out.append(f"  {name[:28]:<28}" + "".join(f"{cnt.get(s, 0):>10}" for s in STATUSES))
    return out


def render_text(data: dict[str, Any]) -> str:
    fmt = "%Y-%m-%d %H:%M:%S"
    lines = [
        "Postfix log summary (mailpulse)",
        f"  from {time.strftime(fmt, time.localtime(data['first']))}"
        f" to {time.strftime(fmt, time.localtime(data['last']))}"
        if data["first"]
        else "  no delivery in these lines",
        "\nGrand totals",
        *(f"  {s:<24}{n:>10}" for s, n in data["status"].items()),
        *(f"  {k:<24}{n:>10}" for k, n in data["messages"].items()),
        f"  {'content filter relays':<24}{data['content_filter_relays']:>10}",
        *(f"  {'rejects ' + k:<24}{n:>10}" for k, n in sorted(data["rejects"].items())),
        *(f"  {k + 's':<24}{n:>10}" for k, n in data["warnings"].items() if n),
        f"  {'lines read':<24}{data['lines']:>10}",
        f"  {'postfix lines':<24}{data['postfix_lines']:>10}",
        *(
            f"  {label:<24}{data[k]:>10}"
            for k, label in (
                ("other_mta_lines", "sendmail lines"),
                ("verify_probes", "verify probes"),
            )
            if data[k]
        ),
        *(
            f"  {k.replace('_', ' '):<24}{data[k]:>10}"
            for k in ("cut_lines", "damaged_files", "unreadable_files")
            if data[k]
        ),
    ]
    lines += _table("Per reason (failures)", data["reason"])
    lines += _table("Per dsn class", data["dsn_class"])
    lines += _table("Per dsn", data["dsn"], 20)
    lines += _table("Per domain group", data["group"])
    lines += _table("Per node", data["node"])
    lines += _table("Per hour", dict(sorted(data["hour"].items())))
    for s in ("deferred", "bounced"):
        lines.append(f"\nTop {s} replies")
        lines += [f"  {r['count']:>8}  {r['reply']}" for r in data["top_replies"][s]]
    if data["not_read"]:
        lines.append("\nNot read, per program (count, a sample)")
        lines += [
            f"  {k:<24}{v['count']:>10}  {v['sample'][:200]}" for k, v in data["not_read"].items()
        ]
    if data["left_out"]:
        lines.append("\nDelivery lines left out, per reason")
        lines += [f"  {k:<24}{n:>10}" for k, n in data["left_out"].items()]
    return "\n".join(lines) + "\n"


def run_report(args: argparse.Namespace) -> int:
    return _run(args, _print_report)


def _print_report(
    args: argparse.Namespace, events: Iterator[DeliveryEvent], c: Correlator, groups: DomainGroups
) -> None:
    rep = Report(groups)
    rep.add_all(events)
    data = rep.to_json(c)
    # hour keys print in order in both outputs
    data["hour"] = dict(sorted(data["hour"].items()))
    if args.json:
        json.dump(data, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_text(data))
