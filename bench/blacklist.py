"""Rebuilding a node's blacklist table: mailpulse's publish against plain postmap as the floor.

    .venv/bin/python bench/blacklist.py [--entries 1000000] [--map cdb]

The floor is what an operator's own script would do: a text file of `address REJECT` lines
already written, one `postmap cdb:FILE`. mailpulse's publish does more (reads the keys from the
store, checks every key, sorts them, writes the text, postmap, rename into place) for two tables
(access and transport): it is timed for the access table alone, for both, and with the keys read
from a SQLite store of the same entries. Every table is checked to answer for a sample of keys
before any figure is printed.
"""

from __future__ import annotations

import argparse
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mailpulse.bounce.publish import ACCESS_ACTION, postfix_tool, publish  # noqa: E402

ROUNDS = 2  # the machine is shared: the faster of two runs counts


def cpu_seconds() -> float:
    """User and system CPU of this process and its finished children (postmap)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: object, *args: object, **kw: object) -> tuple[float, float]:
    """(wall, CPU) seconds, the best of ROUNDS runs each: CPU is the steadier figure on a
    shared machine."""
    wall = cpu = float("inf")
    for _ in range(ROUNDS):
        started, cpu0 = time.perf_counter(), cpu_seconds()
        fn(*args, **kw)  # type: ignore[operator]
        wall = min(wall, time.perf_counter() - started)
        cpu = min(cpu, cpu_seconds() - cpu0)
    return wall, cpu


def answers(etc: Path, table: str, key: str) -> bool:
    r = subprocess.run(
        [postfix_tool("postmap"), "-c", str(etc), "-q", key, table],
        capture_output=True,
        text=True,
        check=False,
    )
    return r.stdout.strip() == ACCESS_ACTION


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--map", default="cdb", choices=["cdb", "lmdb"])
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mailpulse-bench-bl-"))
    etc = work / "etc"
    etc.mkdir()
    (etc / "main.cf").write_text("compatibility_level = 3.6\n")
    rng = random.Random(7)
    domains = ["gmail.com", "yahoo.com", "outlook.com", "gmx.de", "orange.fr", "mail.ru"]
    keys = [
        f"user{rng.randrange(10**12)}.{i}@{domains[i % len(domains)]}" for i in range(args.entries)
    ]

    floor_text = work / "floor"
    floor_text.write_text("".join(f"{k} {ACCESS_ACTION}\n" for k in keys))
    floor = timed(
        subprocess.run,
        [postfix_tool("postmap"), "-c", str(etc), f"{args.map}:{floor_text}"],
        check=True,
    )
    access = timed(publish, keys, work / "access", args.map, 0.5, etc, transport=False)
    both = timed(publish, keys, work / "both", args.map, 0.5, etc)

    from mailpulse.bounce.policy import Entry
    from mailpulse.bounce.store import SqliteStore

    store = SqliteStore(work / "bl.sqlite")
    now = time.time()
    with store._tx() as db:  # loaded in one transaction: the load is not what is measured
        for k in keys:
            store._put(
                db, Entry(k, None, "userunknown", "other", now, now + 86_400 * 30, 1, "hard")
            )
    from_store = timed(
        lambda: publish(store.keys_in_force(time.time()), work / "store", args.map, 0.5, etc)
    )
    for name in ("floor", "access", "both", "store"):
        for k in (keys[0], keys[len(keys) // 2], keys[-1]):
            assert answers(etc, f"{args.map}:{work / name}", k), f"{name} does not answer {k}"

    print(f"{args.entries:,} entries, {args.map}, faster of {ROUNDS} runs")
    rows = [
        ("plain postmap (floor)", floor),
        ("mailpulse publish, access table", access),
        ("mailpulse publish, access + transport", both),
        ("the same, keys read from the SQLite store", from_store),
    ]
    print(f"  {'':42} {'wall':>8} {'ratio':>6} {'CPU':>8} {'ratio':>6}")
    for label, (wall, cpu) in rows:
        print(
            f"  {label:42} {wall:7.2f}s {wall / floor[0]:5.2f}x {cpu:7.2f}s {cpu / floor[1]:5.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
