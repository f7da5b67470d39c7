"""SNMP: the catalogue's values as numeric OIDs, the snapshot file, and net-snmp's pass_persist.

The agent turns one `Series.read()` into a snapshot (`snapshot_document`) and writes it whole
(`write_snapshot`) every snmp.snapshot_interval; `mailpulse snmp pass-persist` (this module)
and `mailpulse snmp extend` (exporters.extend) only read that file, so snmpd never waits on
the agent and never sees a value /metrics would not show.

OIDs, under catalogue.SNMP_ENTERPRISE_OID (R):
  R.1.1.0 snapshot age (s), R.1.2.0 node, R.1.3.0 role, R.1.4.0 version
  R.2.C.0 a metric's scalar (Metric.snmp_column): every series summed
  R.3.T.1.2.i row i's name (its index, column 1, is not-accessible, as SMIv2 has it),
  R.3.T.1.C.i a column (SnmpColumn), row i
Counters are Counter64; levels Gauge32, but bytes are 64-bit levels (RFC 2856's
CounterBasedGauge64, Counter64 on the wire): a spool or a deferred queue passes 4 GiB.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mailpulse.exporters import graphs

from mailpulse import __version__, catalogue
from mailpulse.files import atomic_write

SNAPSHOT_NAME = "snapshot.json"
SNAPSHOT_VERSION = 1
GAUGE32_MAX = 2**32 - 1
COUNTER64_MAX = 2**64 - 1

# pass_persist type words
COUNTER64 = "counter64"
GAUGE = "gauge"
INTEGER = "integer"
STRING = "string"

Oid = tuple[int, ...]
Labels = tuple[str, ...]


def parse_oid(text: str) -> Oid:
    return tuple(int(p) for p in text.strip().strip(".").split(".") if p)


def oid_text(oid: Oid) -> str:
    return "." + ".".join(map(str, oid))


ROOT = parse_oid(catalogue.SNMP_ENTERPRISE_OID)
INFO = (*ROOT, catalogue.SNMP_INFO_ARC)
SCALARS = (*ROOT, catalogue.SNMP_SCALARS_ARC)
TABLES = (*ROOT, catalogue.SNMP_TABLES_ARC)
AGE_OID = (*INFO, 1, 0)


def wire_type(m: catalogue.Metric) -> str:
    if m.type == catalogue.COUNTER:
        return COUNTER64
    return COUNTER64 if m.unit == "bytes" else GAUGE


def scalar_oid(column: int) -> Oid:
    return (*SCALARS, column, 0)


def table_entry(table: str) -> Oid:
    return (*TABLES, catalogue.SNMP_TABLES[table].number, 1)


def column_oid(table: str, column: int, row: int) -> Oid:
    return (*table_entry(table), column, row)


@dataclass(frozen=True, slots=True)
class Column:
    """One published column of the catalogue, with what it is called in the MIB."""

    metric: catalogue.Metric
    table: str  # "" for a scalar
    column: int
    where: tuple[tuple[str, str], ...]
    scale: int
    name: str  # MIB descriptor

    @property
    def type(self) -> str:
        return wire_type(self.metric)


def _camel(*words: str) -> str:
    parts = [p for w in words for p in w.replace("-", "_").split("_") if p]
    return "".join(p[:1].upper() + p[1:] for p in parts)


def metric_stem(m: catalogue.Metric) -> str:
    return m.name.removeprefix("mailpulse_").removesuffix("_total")


def columns() -> list[Column]:
    """Every SNMP column of the catalogue, scalars first, in OID order."""
    out: list[Column] = []
    for m in catalogue.CATALOGUE:
        scalar, table_columns = catalogue.snmp_of(m)
        if scalar is not None:
            out.append(Column(m, "", scalar, (), 1, "mp" + _camel(metric_stem(m))))
        for c in table_columns:
            table, stem = _camel(c.table), _camel(metric_stem(m), *(v for _, v in c.where))
            name = "mp" + table + stem.removeprefix(table)
            out.append(Column(m, c.table, c.column, c.where, c.scale, name))
    out.sort(key=lambda c: (c.table != "", c.table and table_entry(c.table), c.column))
    return out


def check_columns(cols: list[Column]) -> list[str]:
    """What is wrong with the catalogue's SNMP columns (two on one OID, a reserved column)."""
    problems = []
    seen: dict[tuple[str, int], str] = {}
    for c in cols:
        where = (c.table, c.column)
        if where in seen:
            problems.append(
                f"{c.metric.name}: {c.table or 'scalar'} column {c.column} is"
                f" {seen[where]}'s already"
            )
        seen[where] = c.metric.name
        if c.table and c.column < 3:
            problems.append(f"{c.metric.name}: columns 1 and 2 are the row's index and name")
        if c.table and c.table not in catalogue.SNMP_TABLES:
            problems.append(f"{c.metric.name}: no SNMP table {c.table!r}")
            continue
        needed = [k for k, _ in c.where]
        if c.table:
            needed.append(catalogue.SNMP_TABLES[c.table].label)
        for label in needed:
            if label not in c.metric.labels:
                problems.append(f"{c.metric.name}: no label {label!r} ({c.table or 'scalar'})")
    return problems


def _matches(m: catalogue.Metric, labels: Labels, where: tuple[tuple[str, str], ...]) -> bool:
    return all(labels[m.labels.index(k)] == v for k, v in where)


def table_rows(table: str, names: Iterable[str]) -> dict[str, int]:
    """Row index of every name: the table's named rows first, in their fixed places, then the
    others in name order."""
    fixed = catalogue.SNMP_TABLES[table].rows
    rows = {name: i for i, name in enumerate(fixed, 1)}
    for name in sorted(set(names) - set(rows)):
        rows[name] = len(rows) + 1
    return rows


def wire_value(kind: str, value: float) -> int:
    if not math.isfinite(value):
        return 0
    v = round(value)
    if kind == GAUGE:
        return min(max(v, 0), GAUGE32_MAX)
    return min(max(v, 0), COUNTER64_MAX)


Reading = Mapping[tuple[str, Labels], Any]


def oid_values(reading: Reading) -> dict[Oid, tuple[str, int | str]]:
    """Every published OID with its type and value, from one Series.read() (the snapshot's age
    excepted: pass_persist tells it as it answers)."""
    by_metric: dict[str, list[tuple[Labels, float]]] = {}
    for (name, labels), value in reading.items():
        if isinstance(value, int | float):
            by_metric.setdefault(name, []).append((labels, float(value)))
    cols = columns()
    # The rows a table has: its named ones and every value any of its columns has now.
    seen: dict[str, set[str]] = {t: set() for t in catalogue.SNMP_TABLES}
    for c in cols:
        if c.table:
            label = catalogue.SNMP_TABLES[c.table].label
            pos = c.metric.labels.index(label)
            seen[c.table].update(labels[pos] for labels, _ in by_metric.get(c.metric.name, ()))
    rows = {t: table_rows(t, names) for t, names in seen.items()}
    out: dict[Oid, tuple[str, int | str]] = {}
    for t, names in rows.items():
        for name, i in names.items():
            out[column_oid(t, 2, i)] = (STRING, name)
    for c in cols:
        series = [
            (lab, v)
            for lab, v in by_metric.get(c.metric.name, ())
            if _matches(c.metric, lab, c.where)
        ]
        if not c.table:
            total = sum(v for _, v in series)
            out[scalar_oid(c.column)] = (c.type, wire_value(c.type, total * c.scale))
            continue
        pos = c.metric.labels.index(catalogue.SNMP_TABLES[c.table].label)
        sums = dict.fromkeys(rows[c.table], 0.0)
        for labels, v in series:
            sums[labels[pos]] += v
        for name, total in sums.items():
            oid = column_oid(c.table, c.column, rows[c.table][name])
            out[oid] = (c.type, wire_value(c.type, total * c.scale))
    return out


def graph_oid(item: graphs.Item) -> Oid:
    """The OID an item of a graph reads: a named row's, so it never moves."""
    m = catalogue.BY_NAME[item.metric]
    scalar, table_columns = catalogue.snmp_of(m)
    if not item.table:
        if scalar is None:
            raise ValueError(f"{item.metric} has no SNMP scalar")
        return scalar_oid(scalar)
    for c in table_columns:
        if c.table == item.table and c.where == item.where:
            row = catalogue.SNMP_TABLES[item.table].rows.index(item.row) + 1
            return column_oid(c.table, c.column, row)
    raise ValueError(f"{item.metric} has no column in {item.table} where {item.where}")


def snapshot_document(
    reading: Reading, common: Mapping[str, str], stale_after_s: float, now: float | None = None
) -> dict[str, Any]:
    values = oid_values(reading)
    values[(*INFO, 2, 0)] = (STRING, common.get("node", ""))
    values[(*INFO, 3, 0)] = (STRING, common.get("role", ""))
    values[(*INFO, 4, 0)] = (STRING, __version__)
    extend = {g.name: [values[graph_oid(i)][1] for i in g.items] for g in graphs.available()}
    return {
        "version": SNAPSHOT_VERSION,
        "written": time.time() if now is None else now,
        "stale_after": stale_after_s,
        "oids": [[oid_text(o), t, v] for o, (t, v) in sorted(values.items())],
        "extend": extend,
    }


def write_snapshot(path: Path, document: Mapping[str, Any]) -> None:
    atomic_write(path, json.dumps(document, separators=(",", ":")).encode())


# -- pass_persist ---------------------------------------------------------------------------------
MAX_SNAPSHOT_BYTES = 64 << 20  # far past any real snapshot; a bigger file is not read at all
_WIRE_RANGES = {
    GAUGE: (0, GAUGE32_MAX),
    COUNTER64: (0, COUNTER64_MAX),
    INTEGER: (-(2**31), 2**31 - 1),
}


def wire_fits(kind: object, value: object) -> bool:
    """A value snmpd can take as pass_persist tells it: a known type word, a number within
    that type, or a string on one line (a line break would shift every later answer)."""
    if kind == STRING:
        return isinstance(value, str) and value.isprintable()
    bounds = _WIRE_RANGES.get(kind) if isinstance(kind, str) else None
    return bounds is not None and type(value) is int and bounds[0] <= value <= bounds[1]


class SnapshotView:
    """The snapshot as pass_persist answers it, read again whenever the file changes."""

    def __init__(self, path: Path, clock: Any = time.time) -> None:
        self.path = path
        self.clock = clock
        self._stamp: tuple[int, int, int] | None = None
        self.written = 0.0
        self.stale_after = 0.0
        self.oids: list[Oid] = []
        self.values: dict[Oid, tuple[str, int | str]] = {}

    def refresh(self) -> None:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_ino, st.st_size)  # size: a rewrite in one clock tick
            if stamp == self._stamp:
                return
            if not self.path.is_file():  # a FIFO or a directory put there: never opened
                raise ValueError(f"{self.path} is no file")
            if st.st_size > MAX_SNAPSHOT_BYTES:
                raise ValueError(f"{self.path} is larger than any snapshot")
            doc = json.loads(self.path.read_bytes())
            values: dict[Oid, tuple[str, int | str]] = {}
            for o, t, v in doc["oids"]:
                if wire_fits(t, v):
                    values[parse_oid(o)] = (t, v)
            self.written, self.stale_after = float(doc["written"]), float(doc["stale_after"])
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            self._stamp, self.values, self.oids, self.written = None, {}, [], 0.0
            return
        self._stamp, self.values, self.oids = stamp, values, sorted({*values, AGE_OID})

    def fresh(self) -> bool:
        return bool(self.values) and self.clock() - self.written <= self.stale_after

    def answerable(self) -> tuple[list[Oid], dict[Oid, tuple[str, int | str]]]:
        """The OIDs (in order) and values that may be answered now: a stale or missing snapshot
        has nothing but its age (Cacti then records unknown, never an old value as new)."""
        self.refresh()
        age = self.clock() - self.written if self.written else GAUGE32_MAX
        values: dict[Oid, tuple[str, int | str]] = {AGE_OID: (GAUGE, wire_value(GAUGE, age))}
        if not self.fresh():
            return [AGE_OID], values
        values.update(self.values)
        return self.oids, values

    def get(self, oid: Oid) -> tuple[Oid, str, int | str] | None:
        _, values = self.answerable()
        return (oid, *values[oid]) if oid in values else None

    def getnext(self, oid: Oid) -> tuple[Oid, str, int | str] | None:
        oids, values = self.answerable()
        i = bisect.bisect_right(oids, oid)
        return (oids[i], *values[oids[i]]) if i < len(oids) else None


def serve_pass_persist(view: SnapshotView, stdin: IO[str], stdout: IO[str]) -> int:
    """net-snmp's pass_persist protocol (snmpd.conf(5)): PING, get, getnext, set."""

    def say(*lines: object) -> None:
        stdout.write("".join(f"{line}\n" for line in lines))
        stdout.flush()

    while True:
        command = stdin.readline()
        if not command:
            return 0
        command = command.strip().lower()
        if command == "ping":
            say("PONG")
        elif command in ("get", "getnext"):
            try:
                oid = parse_oid(stdin.readline())
            except ValueError:
                say("NONE")
                continue
            found = view.get(oid) if command == "get" else view.getnext(oid)
            if found is None or found[0][: len(ROOT)] != ROOT:
                say("NONE")
            else:
                say(oid_text(found[0]), found[1], found[2])
        elif command == "set":
            stdin.readline()
            stdin.readline()
            say("not-writable")
        elif command == "":
            continue
        else:
            say("NONE")


def snapshot_path(state_dir: Path) -> Path:
    return state_dir / SNAPSHOT_NAME


def run_pass_persist(args: Any) -> int:
    from mailpulse.config import load_for

    cfg = load_for(args)
    # snmpd reads our stdout; anything on stderr would end up in its log or the answer.
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115
    return serve_pass_persist(SnapshotView(snapshot_path(cfg.state_dir)), sys.stdin, sys.stdout)


def run_oids(args: Any) -> int:
    """`mailpulse snmp oids`: every published OID, with its MIB name and what it holds."""
    for c in columns():
        if c.table:
            where = f" (rows: {c.table}, index .N)"
            oid = oid_text((*table_entry(c.table), c.column))
        else:
            where, oid = "", oid_text(scalar_oid(c.column))
        print(f"{oid}\t{c.name}\t{c.type}\t{c.metric.name}{where}")
    return 0
