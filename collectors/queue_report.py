"""`mailpulse queue`: a queue snapshot as qshape's table or as JSON, for every instance."""

from __future__ import annotations

import argparse
import json
import sys

from mailpulse.collectors.queue import QueueSampler

from mailpulse.config import ConfigError, instances_to_watch, load_for
from mailpulse.domains import DomainGroups
from mailpulse.events import QUEUE_NAMES, QueueSnapshot, QueueStats
from mailpulse.exits import NOINPUT, OK, USAGE, path_code
from mailpulse.postfix import PostconfError, discover_instances


def bucket_labels(edges: tuple[int, ...]) -> list[str]:
    """qshape's column heads: each bucket's upper edge in minutes, the last one "edge+"."""
    return [str(e) for e in edges] + [f"{edges[-1]}+"]


def snapshot_to_json(snap: QueueSnapshot) -> dict[str, object]:
    def cells(
        table: dict[tuple[str, str, str, int], tuple[int, int]], name: str
    ) -> list[dict[str, object]]:
        return [
            {"queue": q, "kind": k, name: d, "bucket": b, "messages": m, "recipients": r}
            for (q, k, d, b), (m, r) in sorted(table.items())
        ]

    return {
        "instance": snap.instance,
        "source": snap.source,
        "taken_at": snap.taken_at,
        "duration_s": snap.duration_s,
        "complete": snap.complete,
        "deferral_coverage": snap.deferral_coverage,
        "age_edges_min": list(snap.age_edges_min),
        "bucket_labels": bucket_labels(snap.age_edges_min),
        "queues": {
            q: {
                "messages": s.messages,
                "recipients": s.recipients,
                "bytes": s.bytes,
                "oldest_age_s": s.oldest_age_s,
            }
            for q, s in snap.queues.items()
        },
        "shape": cells(snap.shape, "group"),
        "domains": cells(snap.domain_shape, "domain"),
        "deferral_classes": [
            {"group": g, "reason": r, "class": c, "recipients": n}
            for (g, r, c), n in sorted(snap.deferrals.items())
        ],
        "errors": dict(snap.errors),
    }


def _age(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def format_table(snap: QueueSnapshot, kind: str = "recipient") -> str:
    """Per queue: depth, bytes and oldest age, then qshape's table (domain x age bucket)."""
    heads = ["T", *bucket_labels(snap.age_edges_min)]
    lines = []
    state = "" if snap.complete else ", incomplete"
    lines.append(f"instance {snap.instance} (read from {snap.source}{state})")
    for q in QUEUE_NAMES:
        s = snap.queues.get(q, QueueStats())
        if not s.messages:
            continue
        lines.append(
            f"\n{q}: {s.messages} messages, {s.recipients} recipients, {s.bytes} bytes,"
            f" oldest {_age(s.oldest_age_s)}"
        )
        rows: dict[str, list[int]] = {}
        column = 1 if kind == "recipient" else 0  # qshape counts recipients, or senders
        for (qq, k, domain, b), counts in snap.domain_shape.items():
            if qq == q and k == kind:
                row = rows.setdefault(domain, [0] * len(heads))
                row[0] += counts[column]
                row[b + 1] += counts[column]
        if not rows:
            continue
        total = [sum(col) for col in zip(*rows.values(), strict=True)]
        ordered = [("TOTAL", total)] + sorted(rows.items(), key=lambda kv: (-kv[1][0], kv[0]))
        width = max(len(d) for d, _ in ordered)
        widths = [max(len(h), len(str(total[i])), 2) + 1 for i, h in enumerate(heads)]
        lines.append(" " * width + "".join(h.rjust(w) for h, w in zip(heads, widths, strict=True)))
        for d, row in ordered:
            cells = "".join(str(n).rjust(w) for n, w in zip(row, widths, strict=True))
            lines.append(d.rjust(width) + cells)
    if snap.deferrals:
        read = f", reasons read for {snap.deferral_coverage:.0%} of messages"
        lines.append(
            "\nwhy deferred mail waits (recipients"
            + (read if snap.deferral_coverage < 1.0 else "")
            + "):"
        )
        for (g, r, c), n in sorted(snap.deferrals.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {g:>12} {r:<15} {c:<12} {n}")
    if snap.errors:
        lines.append("\nskipped: " + ", ".join(f"{k} {v}" for k, v in sorted(snap.errors.items())))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """`mailpulse queue`: every instance of the config file's postfix.config_dirs (as the agent
    watches them), or found from the Postfix config directory given with -c."""
    try:
        cfg = load_for(args)
        if args.postfix_config is None:
            instances = instances_to_watch(cfg)
        else:
            instances = discover_instances(args.postfix_config)
    except ConfigError as e:
        print(f"mailpulse queue: {e}", file=sys.stderr)
        return USAGE
    except PostconfError as e:
        print(f"mailpulse queue: cannot read Postfix's configuration: {e}", file=sys.stderr)
        return NOINPUT
    groups = DomainGroups(cfg.domain_groups)
    status = OK
    for inst in instances:
        sampler = QueueSampler(
            inst.config_dir,
            inst.name,
            groups=groups,
            queue_dir=inst.queue_dir,
            source=args.source,
            reasons_in_first_sample=True,  # one pass over the spool, not a listing per sample
        )
        try:
            snap = sample_every_reason(sampler)
        except OSError as e:
            print(f"mailpulse queue: {inst.name}: {e}", file=sys.stderr)
            status = status or path_code(e)
            continue
        if args.json:
            print(json.dumps(snapshot_to_json(snap), sort_keys=True))
        else:
            print(format_table(snap, "sender" if args.sender else "recipient"))
    return status


def sample_every_reason(sampler: QueueSampler) -> QueueSnapshot:
    """Sample until every reason is read (a first sample may read queue files only), or until
    a sample reads none (new deferred mail arriving as fast as it is read)."""
    snap = sampler.sample()
    while snap.deferral_coverage < 1.0:
        coverage = snap.deferral_coverage
        snap = sampler.sample()
        if snap.deferral_coverage <= coverage:
            break
    return snap
