"""RRD archives in Cacti's layout plus a day of minutes, fed from snapshot values, the PNGs
`mailpulse graph` draws from them, and the agent's landing page showing them."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import ModuleType

import pytest
from mailpulse.exporters.graphs import available

from tests.conftest import require_programs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def rrdtool() -> ModuleType:
    require_programs("rrdtool")
    return pytest.importorskip("rrdtool", reason="the rrd extra (pip install -e '.[rrd]')")


def test_a_day_of_minutes_then_cactis_layout(rrdtool: ModuleType, tmp_path: Path) -> None:
    from mailpulse.exporters.rrd import RrdWriter

    writer = RrdWriter(tmp_path)
    values = {"deliveries": [100, 0, 10, 0], "queue_depth": [1, 2, 30, 4]}
    writer.update(values, time.time())
    info = rrdtool.info(str(tmp_path / "deliveries.rrd"))
    assert info["step"] == 60
    rras = {
        (info[f"rra[{i}].cf"], info[f"rra[{i}].pdp_per_row"], info[f"rra[{i}].rows"])
        for i in range(10)
    }
    # one minute for a day; 5 min x 600, 30 min x 700, 2 h x 775, 1 day x 797 (Cacti's)
    for cf in ("AVERAGE", "MAX"):
        assert {(cf, 1, 1440), (cf, 5, 600), (cf, 30, 700), (cf, 120, 775), (cf, 1440, 797)} <= rras
    assert info["ds[sent].type"] == "DERIVE" and info["ds[sent].min"] == 0
    assert rrdtool.info(str(tmp_path / "queue_depth.rrd"))["ds[deferred].type"] == "GAUGE"


def test_updates_land_and_graphs_are_drawn(rrdtool: ModuleType, tmp_path: Path) -> None:
    from mailpulse.exporters.rrd import RrdWriter, draw

    writer = RrdWriter(tmp_path / "rrd")
    now = float(int(time.time()) // 60 * 60)
    # a counter growing by 60 a minute is a rate of 1/s; a level of 30 stays 30
    for minute in range(6):
        t = now + 60 * minute + 1
        writer.update({"deliveries": [60 * minute, 0, 0, 0], "queue_depth": [0, 0, 30, 0]}, t)
    _, names, rows = rrdtool.fetch(
        str(tmp_path / "rrd" / "deliveries.rrd"), "AVERAGE", "-r", "60",
        "-s", str(int(now + 120)), "-e", str(int(now + 300)),
    )  # fmt: skip
    sent = [r[names.index("sent")] for r in rows if r[names.index("sent")] is not None]
    assert sent and all(abs(v - 1.0) < 1e-6 for v in sent)
    _, names, rows = rrdtool.fetch(
        str(tmp_path / "rrd" / "queue_depth.rrd"), "AVERAGE", "-r", "60",
        "-s", str(int(now + 120)), "-e", str(int(now + 300)),
    )  # fmt: skip
    deferred = [r[names.index("deferred")] for r in rows if r[names.index("deferred")] is not None]
    assert deferred and all(abs(v - 30.0) < 1e-6 for v in deferred)
    out = tmp_path / "png"
    written = draw(tmp_path / "rrd", out, 400, 120)
    assert {p.name for p in written} == {
        f"{g}-{period}.png"
        for g in ("deliveries", "queue_depth")
        for period in ("day", "week", "month", "year")
    }
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in written)


def test_graph_command(rrdtool: ModuleType, tmp_path: Path) -> None:
    from mailpulse.exporters.rrd import RrdWriter

    state = tmp_path / "state"
    cmd = [sys.executable, "-m", "mailpulse", "graph", "--state-dir", str(state)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 66 and "no archives" in r.stderr and r.stdout == ""

    RrdWriter(state / "rrd").update({"load": [120, 80, 50]}, time.time())
    r = subprocess.run([*cmd, "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "load-week.png").read_bytes().startswith(PNG_MAGIC)


def test_landing_page_shows_the_day_graphs(rrdtool: ModuleType, tmp_path: Path) -> None:
    from mailpulse.exporters.rrd import serve_graphs
    from mailpulse.exporters.web import WebServer

    server = WebServer(("127.0.0.1", 0))
    serve_graphs(server, tmp_path)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.address[1]}"
        page = urllib.request.urlopen(base + "/", timeout=10).read().decode()
        for g in available():
            assert f'<img src="/graphs/{g.name}-day.png" alt="{g.title}">' in page
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "/graphs/load-day.png", timeout=10)
        assert e.value.code == 404
        (tmp_path / "load-day.png").write_bytes(PNG_MAGIC + b"x")
        with urllib.request.urlopen(base + "/graphs/load-day.png", timeout=10) as r:
            assert r.headers["Content-Type"] == "image/png" and r.read() == PNG_MAGIC + b"x"
    finally:
        server.stop()
