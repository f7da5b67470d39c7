"""The SNMP side without snmpd: catalogue columns, the snapshot's values, pass_persist's
protocol, `mailpulse snmp extend` on every kind of bad snapshot, the MIB through smilint and
snmptranslate, and the generated files being current."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mailpulse.exporters import mib, snmp

from tests.conftest import REPO, require_programs

ROOT = ".1.3.6.1.4.1.32473.25"
MIB_DIR = Path(os.environ.get("MAILPULSE_MIB_DIR", "/usr/local/share/mailpulse/mibs"))
MAILPULSE = [sys.executable, "-m", "mailpulse"]

READING = {
    ("mailpulse_queue_messages", ("default", "deferred")): 7.0,
    ("mailpulse_queue_messages", ("second", "deferred")): 3.0,
    ("mailpulse_queue_messages", ("default", "hold")): 5e9,  # past Gauge32: held at its top
    ("mailpulse_deliveries_total", ("default", "bounced", "userunknown", "gmail", "5xx")): 4.0,
    ("mailpulse_deliveries_total", ("default", "bounced", "userunknown", "yahoo", "5xx")): 2.0,
    ("mailpulse_deliveries_total", ("default", "sent", "", "example.com", "2xx")): 9.0,
    ("mailpulse_host_load_average", ("1m",)): 1.234,
    ("mailpulse_host_memory_bytes", ("total",)): 33e9,
    ("mailpulse_log_lines_total", ()): 12.0,
}


def document(now: float = 1000.0, stale_after: float = 60.0) -> dict:
    return snmp.snapshot_document(READING, {"node": "n1", "role": "bulk"}, stale_after, now)


def values(doc: dict) -> dict[str, tuple[str, object]]:
    return {oid: (t, v) for oid, t, v in doc["oids"]}


def test_the_catalogue_columns_are_consistent() -> None:
    cols = snmp.columns()
    assert snmp.check_columns(cols) == []
    names = [c.name for c in cols]
    assert len(names) == len(set(names))
    assert all(c.name.startswith("mp") and "_" not in c.name for c in cols)


def test_column_mistakes_are_named() -> None:
    from mailpulse import catalogue

    queue = catalogue.BY_NAME["mailpulse_queue_messages"]
    lines = catalogue.BY_NAME["mailpulse_log_lines_total"]
    cols = [
        snmp.Column(queue, "reason", 3, (), 1, "a"),  # queue metrics have no reason label
        snmp.Column(queue, "queue", 2, (), 1, "b"),  # column 2 is the row's name
        snmp.Column(lines, "", 9, (), 1, "c"),
        snmp.Column(lines, "", 9, (), 1, "d"),  # the same OID twice
        snmp.Column(lines, "nosuch", 3, (), 1, "e"),
    ]
    problems = snmp.check_columns(cols)
    assert len(problems) == 4, problems
    assert "no label 'reason'" in problems[0] and "index and name" in problems[1]
    assert "already" in problems[2] and "no SNMP table 'nosuch'" in problems[3]


def test_snapshot_sums_series_per_row_with_the_wire_types() -> None:
    v = values(document())
    # queue table (2), messages column (3): deferred is the 4th named queue, hold the 5th
    assert v[f"{ROOT}.3.2.1.3.4"] == ("gauge", 10)
    assert v[f"{ROOT}.3.2.1.3.5"] == ("gauge", 2**32 - 1)
    assert v[f"{ROOT}.3.2.1.2.4"] == ("string", "deferred")
    # status table (1), deliveries (3): sent is row 1, bounced row 3; Counter64
    assert v[f"{ROOT}.3.1.1.3.1"] == ("counter64", 9)
    assert v[f"{ROOT}.3.1.1.3.3"] == ("counter64", 6)
    # reason table (3), bounced column (3): userunknown is row 1
    assert v[f"{ROOT}.3.3.1.3.1"] == ("counter64", 6)
    # load table (7): hundredths; memory table (8): bytes past 2^32 as a 64-bit level
    assert v[f"{ROOT}.3.7.1.3.1"] == ("gauge", 123)
    assert v[f"{ROOT}.3.8.1.3.1"] == ("counter64", 33_000_000_000)
    assert v[f"{ROOT}.2.2.0"] == ("counter64", 12)
    assert v[f"{ROOT}.1.2.0"] == ("string", "n1")
    # A domain group no row is named for gets the next free one, named in column 2.
    groups = {val: oid for oid, (t, val) in v.items() if oid.startswith(f"{ROOT}.3.4.1.2.")}
    row = groups["example.com"].rsplit(".", 1)[1]
    assert int(row) == len(groups)
    assert v[f"{ROOT}.3.4.1.3.{row}"] == ("counter64", 9)
    assert v[f"{ROOT}.3.4.1.5.{row}"] == ("counter64", 0)
    assert document()["extend"]["deliveries"] == [9, 0, 6, 0]


def converse(view: snmp.SnapshotView, text: str) -> list[str]:
    out = io.StringIO()
    assert snmp.serve_pass_persist(view, io.StringIO(text), out) == 0
    return out.getvalue().splitlines()


def test_pass_persist_answers_get_getnext_and_refuses_set(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    snmp.write_snapshot(path, document(now=1000.0))
    view = snmp.SnapshotView(path, clock=lambda: 1010.0)
    assert converse(view, "PING\n") == ["PONG"]
    assert converse(view, f"get\n{ROOT}.3.2.1.3.4\n") == [f"{ROOT}.3.2.1.3.4", "gauge", "10"]
    assert converse(view, f"get\n{ROOT}.1.1.0\n") == [f"{ROOT}.1.1.0", "gauge", "10"]
    assert converse(view, f"get\n{ROOT}.3.2.1.3.99\n") == ["NONE"]
    assert converse(view, "get\nnot an oid\n") == ["NONE"]
    assert converse(view, f"set\n{ROOT}.1.2.0\nstring x\n") == ["not-writable"]
    # A walk of the whole tree: strictly increasing, every published OID once, then NONE.
    walked, oid = [], ROOT
    while True:
        answer = converse(view, f"getnext\n{oid}\n")
        if answer == ["NONE"]:
            break
        oid = answer[0]
        walked.append(tuple(int(p) for p in oid.strip(".").split(".")))
    assert walked == sorted(set(walked))
    assert len(walked) == len(document()["oids"]) + 1  # and the snapshot's age


def test_pass_persist_has_nothing_but_the_age_when_stale_or_missing(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    snmp.write_snapshot(path, document(now=1000.0, stale_after=60))
    view = snmp.SnapshotView(path, clock=lambda: 1061.0)
    assert converse(view, f"get\n{ROOT}.3.2.1.3.4\n") == ["NONE"]
    assert converse(view, f"getnext\n{ROOT}\n") == [f"{ROOT}.1.1.0", "gauge", "61"]
    assert converse(view, f"getnext\n{ROOT}.1.1.0\n") == ["NONE"]
    path.write_text("{damaged")
    assert converse(view, f"get\n{ROOT}.3.2.1.3.4\n") == ["NONE"]


def test_pass_persist_skips_snapshot_values_snmpd_could_not_take(tmp_path: Path) -> None:
    """A damaged snapshot: a string with a line break (it would shift every later answer),
    numbers past their type, an unknown type word; then an OID that is no text (nothing of that
    snapshot is answered, and the server goes on), then a snapshot far too big to read."""
    path = tmp_path / "snapshot.json"
    good = [f"{ROOT}.1.3.0", "string", "bulk"]
    oids = [
        [f"{ROOT}.1.2.0", "string", "n1\ngauge\n7"],
        [f"{ROOT}.2.1.0", "gauge", -5],
        [f"{ROOT}.2.2.0", "gauge", 2**32],
        [f"{ROOT}.2.3.0", "counter64", 2**64],
        [f"{ROOT}.2.4.0", "opaque", 1],
        good,
    ]
    path.write_text(json.dumps({"oids": oids, "written": 1000.0, "stale_after": 60.0}))
    view = snmp.SnapshotView(path, clock=lambda: 1010.0)
    assert converse(view, f"getnext\n{ROOT}.1.1.0\nget\n{ROOT}.1.2.0\nPING\n") == [
        *good,
        "NONE",
        "PONG",
    ]
    for n in range(2, 5):
        assert converse(view, f"get\n{ROOT}.2.{n}.0\n") == ["NONE"]
    oids.append([1, "gauge", 3])
    path.write_text(json.dumps({"oids": oids, "written": 1000.0, "stale_after": 60.0}))
    assert converse(view, f"get\n{ROOT}.1.3.0\nPING\n") == ["NONE", "PONG"]
    path.write_text(json.dumps({"oids": [good], "written": 1000.0, "stale_after": 60.0}))
    assert converse(view, f"get\n{ROOT}.1.3.0\n") == good
    with path.open("r+b") as f:  # sparse: the size alone must keep it from being read
        f.truncate(snmp.MAX_SNAPSHOT_BYTES + 1)
    assert converse(view, f"get\n{ROOT}.1.3.0\n") == ["NONE"]


def extend(state_dir: Path, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MAILPULSE, "snmp", "extend", name, "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_extend_prints_the_graph_lines_or_unknown(tmp_path: Path) -> None:
    import time

    doc = document(now=time.time(), stale_after=60)
    snmp.write_snapshot(tmp_path / "snapshot.json", doc)
    r = extend(tmp_path, "deliveries")
    assert (r.returncode, r.stdout, r.stderr) == (0, "9\n0\n6\n0\n", "")
    r = extend(tmp_path, "load")
    assert r.stdout.split() == ["123", "0", "0"]
    # stale: as many lines, every one unknown
    snmp.write_snapshot(tmp_path / "snapshot.json", {**doc, "written": time.time() - 61})
    assert extend(tmp_path, "deliveries").stdout == "U\nU\nU\nU\n"


@pytest.mark.parametrize("damage", ["missing", "not json", "a list", "a fifo", "a directory"])
def test_extend_never_fails_never_hangs_never_writes_stderr(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "snapshot.json"
    if damage == "not json":
        path.write_bytes(b"\xff{")
    elif damage == "a list":
        path.write_text("[1, 2]")
    elif damage == "a fifo":
        os.mkfifo(path)  # nothing ever writes to it
    elif damage == "a directory":
        path.mkdir()
    r = extend(tmp_path, "deliveries")
    assert r.returncode == 0 and r.stderr == ""
    assert set(r.stdout.split()) == {"U"}


def test_extend_loads_no_config_parser_and_no_catalogue(tmp_path: Path) -> None:
    listing = tmp_path / "modules"
    code = (
        "import sys\nfrom mailpulse.cli import main\n"
        f"main(['snmp', 'extend', 'deliveries', '--state-dir', {str(tmp_path)!r}])\n"
        f"open({str(listing)!r}, 'w').write(' '.join(sys.modules))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=30)
    loaded = set(listing.read_text().split())
    assert "mailpulse.exporters.extend" in loaded
    heavy = {"yaml", "prometheus_client", "mailpulse.config", "mailpulse.catalogue", "psutil"}
    assert not loaded & heavy


def base_mibs() -> Path:
    if not (MIB_DIR / "SNMPv2-SMI.txt").exists():
        pytest.skip(f"SMIv2 base modules not in {MIB_DIR} (make deps fetches them)")
    return MIB_DIR


def test_smilint_accepts_the_mib(tmp_path: Path) -> None:
    require_programs("smilint")
    mibs = base_mibs()
    f = tmp_path / "MAILPULSE-MIB.txt"
    f.write_text(mib.generate())
    r = subprocess.run(
        ["smilint", "-l", "4", "-s", str(f)],
        capture_output=True, text=True, env={**os.environ, "SMIPATH": str(mibs)}, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr
    # and a mistake is seen: a column that names an object never defined
    broken = mib.generate().replace("mpQueueMessages OBJECT-TYPE", "mpQueueMessagez OBJECT-TYPE")
    f.write_text(broken)
    r = subprocess.run(
        ["smilint", "-l", "4", "-s", str(f)],
        capture_output=True, text=True, env={**os.environ, "SMIPATH": str(mibs)}, timeout=60,
    )  # fmt: skip
    assert "mpQueueMessages" in r.stdout + r.stderr


def test_snmptranslate_resolves_every_column_to_its_oid(tmp_path: Path) -> None:
    require_programs("snmptranslate")
    mibs = base_mibs()
    (tmp_path / "MAILPULSE-MIB.txt").write_text(mib.generate())
    cols = snmp.columns()
    names = [f"MAILPULSE-MIB::{c.name}" for c in cols]
    r = subprocess.run(
        ["snmptranslate", "-M", f"{mibs}:{tmp_path}", "-m", "MAILPULSE-MIB", "-On", *names],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    want = []
    for c in cols:
        oid = (*snmp.table_entry(c.table), c.column) if c.table else snmp.scalar_oid(c.column)[:-1]
        want.append(snmp.oid_text(oid))
    assert r.stdout.split() == want, r.stderr


def test_the_generated_files_are_current() -> None:
    r = subprocess.run(
        [sys.executable, str(REPO / "cacti_templates" / "generate.py"), "--check"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def test_oids_command_lists_every_column() -> None:
    r = subprocess.run([*MAILPULSE, "snmp", "oids"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert len(lines) == len(snmp.columns())
    assert f"{ROOT}.3.2.1.3\tmpQueueMessages\tgauge\tmailpulse_queue_messages" in r.stdout


# The blacklist's metrics as the shared decision names them; the catalogue gets them later.
def test_blacklist_metrics_have_their_columns_and_graphs(tmp_path: Path) -> None:
    """The blacklist's metrics are published under their columns, with the blacklist graphs,
    in the MIB and the Cacti templates."""
    from mailpulse.exporters import graphs

    names = {g.name for g in graphs.available()}
    assert {"blacklist", "blacklist_additions"} <= names
    assert snmp.check_columns(snmp.columns()) == []
    reading = {
        ("mailpulse_blacklist_entries", ()): 1500.0,
        ("mailpulse_blacklist_additions_total", ("userunknown",)): 7.0,
    }
    doc = snmp.snapshot_document(reading, {}, 60, now=0)
    v = values(doc)
    assert v[f"{ROOT}.2.40.0"] == ("gauge", 1500)
    assert v[f"{ROOT}.3.3.1.6.1"] == ("counter64", 7)  # reason table, additions, userunknown
    assert doc["extend"]["blacklist"] == [1500, 0]
    from cacti_templates import generate

    files = generate.outputs()
    assert "mpBlacklistEntries" in files[Path("MAILPULSE-MIB.txt")]
    assert f"<value>{ROOT}.2.40.0</value>" in files[Path("cacti_graph_blacklist.xml")]
    if shutil.which("smilint") and (MIB_DIR / "SNMPv2-SMI.txt").exists():
        f = tmp_path / "MAILPULSE-MIB.txt"
        f.write_text(files[Path("MAILPULSE-MIB.txt")])
        r = subprocess.run(
            ["smilint", "-l", "4", "-s", str(f)],
            capture_output=True, text=True, env={**os.environ, "SMIPATH": str(MIB_DIR)},
        )  # fmt: skip
        assert r.stdout + r.stderr == ""
