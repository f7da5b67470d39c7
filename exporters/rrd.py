"""RRD archives of the graphs (exporters.graphs) and the PNGs `mailpulse graph` draws from them.

One file per graph, one data source per item, fed from the same snapshot values SNMP answers.
The step is one minute, kept for a day; then Cacti's own layout (5 minutes for 2 days, 30
minutes for 2 weeks, 2 hours for 2 months, a day for 2 years), averages and maxima, so a graph
here and Cacti's of the same node agree. Totals are DERIVE with a floor of 0: a counter that
starts again (a new state directory) is a gap, never a spike.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mailpulse.exporters.graphs import COUNTER, Graph, available

log = logging.getLogger(__name__)

STEP_S = 60
HEARTBEAT_S = 2 * STEP_S
# (steps per row, rows): a day of minutes, then Cacti's 5 min x 600, 30 min x 700, 2 h x 775,
# 1 day x 797.
RRA_LAYOUT = ((1, 1440), (5, 600), (30, 700), (120, 775), (1440, 797))
PERIODS = {"day": "-1d", "week": "-1w", "month": "-1m", "year": "-1y"}
COLOURS = (
    "1f77b4", "ff7f0e", "2ca02c", "d62728", "9467bd", "8c564b",
    "e377c2", "7f7f7f", "bcbd22", "17becf", "393b79", "ad494a",
)  # fmt: skip


def rrd_create_args(graph: Graph) -> list[str]:
    kind = "DERIVE" if graph.kind == COUNTER else "GAUGE"
    ds = [f"DS:{i.ds}:{kind}:{HEARTBEAT_S}:0:U" for i in graph.items]
    rras = [
        f"RRA:{cf}:0.5:{steps}:{rows}" for cf in ("AVERAGE", "MAX") for steps, rows in RRA_LAYOUT
    ]
    return ["--step", str(STEP_S), "--start", "now-10s", *ds, *rras]


def _rrdtool() -> Any:
    import rrdtool  # the rrd extra; imported here so SNMP and /metrics never need it

    return rrdtool


def available_here() -> bool:
    """Whether the rrdtool module (the rrd extra, or Debian's python3-rrdtool) is installed."""
    import importlib.util

    return importlib.util.find_spec("rrdtool") is not None


class RrdWriter:
    """Keeps one archive per graph in `directory`, updated from snapshot values."""

    def __init__(self, directory: Path, graphs: Sequence[Graph] | None = None) -> None:
        self.directory = directory
        self.graphs = tuple(graphs if graphs is not None else available())
        self._last: dict[str, int] = {}

    def path(self, graph: Graph) -> Path:
        return self.directory / f"{graph.name}.rrd"

    def _ensure(self, graph: Graph) -> Path:
        rrdtool = _rrdtool()
        path = self.path(graph)
        if path.exists():
            info = rrdtool.info(str(path))
            names = {k.split("[")[1].split("]")[0] for k in info if k.startswith("ds[")}
            if names == {i.ds for i in graph.items} and info.get("step") == STEP_S:
                return path
            # The graph changed shape (a new release): keep the old archive beside it.
            path.rename(path.with_name(path.name + ".old"))
            log.warning("rrd %s: data sources changed; old archive kept as %s.old", path, path)
        self.directory.mkdir(parents=True, exist_ok=True)
        rrdtool.create(str(path), *rrd_create_args(graph))
        return path

    def update(self, values: Mapping[str, Sequence[int | str]], now: float) -> None:
        """values: graph name -> its items' values (the snapshot's `extend`)."""
        rrdtool = _rrdtool()
        stamp = int(now)
        for g in self.graphs:
            row = values.get(g.name)
            if row is None or self._last.get(g.name, 0) >= stamp:
                continue
            path = self._ensure(g)
            template = ":".join(i.ds for i in g.items)
            data = ":".join(str(v) if isinstance(v, int) else "U" for v in row)
            try:
                rrdtool.update(str(path), "--template", template, f"{stamp}:{data}")
            except rrdtool.OperationalError as e:  # e.g. a clock that went back: skip one
                log.warning("rrd %s: %s", path, e)
            self._last[g.name] = stamp


def graph_args(graph: Graph, rrd: Path, period: str, width: int, height: int) -> list[str]:
    args = [
        "--start", PERIODS[period], "--end", "now",
        "--title", f"{graph.title} ({period})",
        "--vertical-label", graph.vertical_label,
        "--width", str(width), "--height", str(height),
        "--lower-limit", "0", "--slope-mode",
    ]  # fmt: skip
    # rrdtool reads ':' in a path as a separator: the file name is escaped for it.
    source = str(rrd).replace(":", "\\:")
    for n, item in enumerate(graph.items):
        raw = f"r{n}"
        args.append(f"DEF:{raw}={source}:{item.ds}:AVERAGE")
        args.append(f"CDEF:v{n}={raw},{graph.scale},/")
        colour = COLOURS[n % len(COLOURS)]
        legend = item.legend.replace(":", "\\:")
        if graph.stack:
            args.append(f"AREA:v{n}#{colour}:{legend}" + (":STACK" if n else ""))
        else:
            args.append(f"LINE2:v{n}#{colour}:{legend}")
        args.append(f"GPRINT:v{n}:LAST:%8.2lf%s\\l")
    return args


def draw(
    rrd_dir: Path, out: Path, width: int, height: int, periods: Sequence[str] = tuple(PERIODS)
) -> list[Path]:
    """Every graph whose archive exists, for each period; the PNGs written."""
    rrdtool = _rrdtool()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for g in available():
        rrd = rrd_dir / f"{g.name}.rrd"
        if not rrd.exists():
            continue
        for period in periods:
            png = out / f"{g.name}-{period}.png"
            tmp = png.with_name(png.name + ".tmp.png")
            rrdtool.graph(
                str(tmp), "--imgformat", "PNG", *graph_args(g, rrd, period, width, height)
            )
            tmp.replace(png)  # a page being served never shows half a picture
            written.append(png)
    return written


def rrd_dir(cfg: Any) -> Path:
    return cfg.rrd.dir or cfg.state_dir / "rrd"


def graph_dir(cfg: Any) -> Path:
    return cfg.graph.dir or cfg.state_dir / "graphs"


def run_graph(args: Any) -> int:
    """`mailpulse graph [--out DIR]`."""
    from mailpulse.config import load_for

    cfg = load_for(args)
    source = rrd_dir(cfg)
    if not any(source.glob("*.rrd")):
        print(f"mailpulse graph: no archives in {source} (the agent writes them)", file=sys.stderr)
        return 66
    try:
        written = draw(source, args.out or graph_dir(cfg), cfg.graph.width, cfg.graph.height)
    except ImportError:
        print(
            "mailpulse graph: the rrdtool module is missing (pip install 'mailpulse[rrd]')",
            file=sys.stderr,
        )
        return 69
    except OSError as e:
        print(f"mailpulse graph: {e}", file=sys.stderr)
        return 73
    for png in written:
        print(png)
    return 0


def serve_graphs(server: Any, directory: Path) -> None:
    """The day graphs on the agent's landing page, each at /graphs/NAME.png."""
    from mailpulse.exporters.web import Page

    for g in available():
        name = f"{g.name}-day.png"

        def page(_headers: Any, path: Path = directory / name) -> Page:
            with contextlib.suppress(OSError):
                return Page(path.read_bytes(), "image/png", {"Cache-Control": "max-age=60"})
            return Page(b"not drawn yet\n", "text/plain; charset=utf-8", status=404)

        server.route(f"/graphs/{name}", page, g.title, image=True)
