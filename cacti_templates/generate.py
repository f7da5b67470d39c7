"""Write this folder's files from the metric catalogue: the Cacti 1.2 templates, the snmpd.conf
snippet and MAILPULSE-MIB.

    .venv/bin/python cacti_templates/generate.py         # rewrite them
    .venv/bin/python cacti_templates/generate.py --check # exit 1 when one is out of date

Each graph of exporters.graphs becomes a graph template with one data template per line, on
Cacti's stock "Get SNMP Data" with the numeric OID pass_persist answers (a named table row, so
it never moves); the device template "Postfix mail node" holds them all and fits bulk and
transactional nodes alike (mpRole says which a node is). Every Cacti hash is derived from the
object's name, so regenerating never renames anything a Cacti already imported.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from xml.sax.saxutils import escape

from mailpulse.exporters import graphs, mib, snmp

from mailpulse import catalogue

HERE = Path(__file__).resolve().parent
SNMPD_SNIPPET = Path("snmpd.conf.d") / "mailpulse.conf"
HOST_TEMPLATE = "Postfix mail node"
CACTI_VERSION_CODE = "0103"  # Cacti 1.2.24's, in every hash

# Cacti's own objects the templates use, by the hashes its cacti.sql gives them.
GET_SNMP_DATA = "3eb92bb845b9660a7445cf9740726522"
# Its fields: management_ip, community, username, password, version, OID, port, auth protocol,
# privacy passphrase, privacy protocol.
GET_SNMP_DATA_FIELDS = (
    "92f5906c8dc0f964b41f4253df582c38",
    "32285d5bf16e56c478f5e83f32cda9ef",
    "ad14ac90641aed388139f6ba86a2e48b",
    "9c55a74bd571b4f00a96fd4b793278c6",
    "012ccb1d3687d3edb29c002ea66e72da",
    "4276a5ec6e3fe33995129041b1909762",
    "fc64b99742ec417cc424dbf8c7692d36",
    "20832ce12f099c8e54140793a091af90",
    "c60c9aac1e1b3555ea0620b8bbfd82cb",
    "feda162701240101bc74148415ef415a",
)
OID_FIELD = "4276a5ec6e3fe33995129041b1909762"
FIVE_MINUTE_PROFILE = "d62c52891f4f9688729a5bc9fad91b18"
GPRINT_NORMAL = "e9c43831e54eca8069317a2ce8c6f751"
GAUGE_TYPE, DERIVE_TYPE = "1", "3"  # Cacti's data_source_type_id
LINE2, AREA, STACK, GPRINT = "5", "7", "8", "9"  # Cacti's graph_type_id
CF_AVERAGE, CF_MAX, CF_LAST = "1", "3", "4"
COLOURS = (
    "1F77B4", "FF7F0E", "2CA02C", "D62728", "9467BD", "8C564B",
    "E377C2", "7F7F7F", "BCBD22", "17BECF", "393B79", "AD494A",
)  # fmt: skip

# The SNMP agent's command and state directory as the Debian package installs them.
MAILPULSE_BIN = "/usr/bin/mailpulse"
STATE_DIR = "/var/lib/mailpulse"
EXTEND_CACHE_S = 60
NS_EXTEND_OUT_LINE = ".1.3.6.1.4.1.8072.1.3.2.4.1.2"


def cacti_hash(kind: str, *name: str) -> str:
    """`hash_TTVVVV<md5>`: Cacti's type code, its version code, then ours from the name."""
    digest = hashlib.md5(":".join(("mailpulse", *name)).encode(), usedforsecurity=False)
    return f"hash_{kind}{CACTI_VERSION_CODE}{digest.hexdigest()}"


def _fields(indent: str, fields: list[tuple[str, str]]) -> str:
    return "".join(f"{indent}<{k}>{escape(v)}</{k}>\n" for k, v in fields)


def _templated(fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Every field with its `t_` twin (empty: not overridable per device)."""
    out = []
    for k, v in fields:
        out += [(f"t_{k}", ""), (k, v)]
    return out


def data_template_hash(g: graphs.Graph, item: graphs.Item) -> tuple[str, str]:
    return cacti_hash("01", "dt", g.name, item.ds), cacti_hash("08", "dt", g.name, item.ds)


def data_template(g: graphs.Graph, item: graphs.Item) -> str:
    dt, rrd = data_template_hash(g, item)
    oid = snmp.oid_text(snmp.graph_oid(item))
    ds = _templated([("name", f"|host_description| - mailpulse - {g.title} - {item.legend}")])
    ds += [
        ("data_source_path", ""),
        ("data_input_id", f"hash_03{CACTI_VERSION_CODE}{GET_SNMP_DATA}"),
    ]
    ds += _templated(
        [
            ("data_source_profile_id", f"hash_20{CACTI_VERSION_CODE}{FIVE_MINUTE_PROFILE}"),
            ("rrd_step", "300"),
            ("active", "on"),
        ]
    )
    kind = DERIVE_TYPE if g.kind == graphs.COUNTER else GAUGE_TYPE
    rrd_fields = _templated(
        [
            ("data_source_name", item.ds),
            ("rrd_minimum", "0"),
            ("rrd_maximum", "U"),
            ("data_source_type_id", kind),
            ("rrd_heartbeat", "600"),
            ("data_input_field_id", "0"),
        ]
    )
    data = ""
    for n, field in enumerate(GET_SNMP_DATA_FIELDS):
        value = oid if field == OID_FIELD else ""
        data += (
            f"\t\t\t<item_{n:03d}>\n"
            + _fields(
                "\t\t\t\t",
                [
                    ("data_input_field_id", f"hash_07{CACTI_VERSION_CODE}{field}"),
                    ("t_value", ""),
                    ("value", value),
                ],
            )  # fmt: skip
            + f"\t\t\t</item_{n:03d}>\n"
        )
    return (
        f"\t<{dt}>\n"
        f"\t\t<name>mailpulse - {escape(g.title)} - {escape(item.legend)}</name>\n"
        "\t\t<ds>\n" + _fields("\t\t\t", ds) + "\t\t</ds>\n"
        f"\t\t<items>\n\t\t\t<{rrd}>\n" + _fields("\t\t\t\t", rrd_fields) + f"\t\t\t</{rrd}>\n"
        "\t\t</items>\n"
        f"\t\t<data>\n{data}\t\t</data>\n"
        f"\t</{dt}>\n"
    )


def cdef(scale: int) -> tuple[str, str]:
    """A CDEF dividing by `scale` (the load is published in hundredths): its hash and XML."""
    h = cacti_hash("05", "cdef", str(scale))
    item = cacti_hash("14", "cdef", str(scale), "1")
    xml = (
        f"\t<{h}>\n\t\t<name>mailpulse - Divide by {scale}</name>\n\t\t<system>0</system>\n"
        f"\t\t<items>\n\t\t\t<{item}>\n"
        + _fields(
            "\t\t\t\t",
            [
                ("sequence", "1"),
                ("type", "6"),
                ("value", f"CURRENT_DATA_SOURCE,{scale},/"),
            ],
        )  # fmt: skip
        + f"\t\t\t</{item}>\n\t\t</items>\n\t</{h}>\n"
    )
    return h, xml


def graph_template(g: graphs.Graph) -> str:
    h = cacti_hash("00", "gt", g.name)
    graph = _templated(
        [
            ("title", f"|host_description| - {g.title}"),
            ("vertical_label", g.vertical_label),
            ("image_format_id", "1"),
            ("height", "200"),
            ("width", "700"),
            ("base_value", "1000"),
            ("slope_mode", "on"),
            ("auto_scale", "on"),
            ("auto_scale_opts", "2"),
            ("auto_scale_log", ""),
            ("scale_log_units", ""),
            ("auto_scale_rigid", ""),
            ("upper_limit", "100"),
            ("lower_limit", "0"),
            ("unit_value", ""),
            ("unit_exponent_value", ""),
            ("alt_y_grid", ""),
            ("auto_padding", "on"),
            ("tab_width", "40"),
            ("legend_position", "0"),
            ("legend_direction", "0"),
        ]
    )
    cdef_hash = cdef(g.scale)[0] if g.scale != 1 else "0"
    items = ""
    seq = 0
    for n, item in enumerate(g.items):
        _, rrd = data_template_hash(g, item)
        shape = (STACK if n else AREA) if g.stack else LINE2
        for kind, cf, text, colour, last in (
            (shape, CF_AVERAGE, item.legend, COLOURS[n % len(COLOURS)], False),
            (GPRINT, CF_LAST, "Current:", "0", False),
            (GPRINT, CF_AVERAGE, "Average:", "0", False),
            (GPRINT, CF_MAX, "Maximum:", "0", True),
        ):
            seq += 1
            ih = cacti_hash("10", "gti", g.name, str(seq))
            items += (
                f"\t\t\t<{ih}>\n"
                + _fields(
                    "\t\t\t\t",
                    [
                        ("graph_type_id", kind),
                        ("task_item_id", rrd),
                        ("color_id", colour),
                        ("alpha", "FF"),
                        ("consolidation_function_id", cf),
                        ("cdef_id", cdef_hash),
                        ("vdef_id", "0"),
                        ("value", ""),
                        ("gprint_id", f"hash_06{CACTI_VERSION_CODE}{GPRINT_NORMAL}"),
                        ("text_format", text),
                        ("hard_return", "on" if last else ""),
                        ("line_width", "2.00" if kind == LINE2 else "0.00"),
                        ("sequence", str(seq)),
                    ],
                )  # fmt: skip
                + f"\t\t\t</{ih}>\n"
            )
    return (
        f"\t<{h}>\n\t\t<name>mailpulse - {escape(g.title)}</name>\n"
        "\t\t<graph>\n" + _fields("\t\t\t", graph) + "\t\t</graph>\n"
        f"\t\t<items>\n{items}\t\t</items>\n\t\t<inputs>\n\t\t</inputs>\n\t</{h}>\n"
    )


def graph_objects(g: graphs.Graph) -> str:
    """A graph template with everything it needs, dependencies first."""
    parts = [cdef(g.scale)[1]] if g.scale != 1 else []
    parts += [data_template(g, i) for i in g.items]
    parts.append(graph_template(g))
    return "".join(parts)


def host_template(gs: tuple[graphs.Graph, ...]) -> str:
    h = cacti_hash("02", "host", HOST_TEMPLATE)
    templates = "|".join(cacti_hash("00", "gt", g.name) for g in gs)
    body = "".join(graph_objects(g) for g in gs)
    return (
        f"<cacti>\n{body}\t<{h}>\n\t\t<name>{HOST_TEMPLATE}</name>\n\t\t<class>linux</class>\n"
        f"\t\t<graph_templates>{templates}</graph_templates>\n"
        "\t\t<data_queries></data_queries>\n"
        f"\t</{h}>\n</cacti>\n"
    )


def extend_oid(name: str, line: int) -> str:
    """nsExtendOutLine."NAME".LINE: the name's length, then its characters."""
    return f"{NS_EXTEND_OUT_LINE}.{len(name)}.{'.'.join(str(ord(c)) for c in name)}.{line}"


def snmpd_snippet(gs: tuple[graphs.Graph, ...]) -> str:
    root = snmp.oid_text(snmp.ROOT)
    out = [
        "# mailpulse for net-snmp's snmpd: put this file in /etc/snmp/snmpd.conf.d/ (Debian's",
        "# snmpd.conf includes that folder) and restart snmpd. Generated from the metric",
        "# catalogue by cacti_templates/generate.py: regenerate, never edit.",
        "#",
        f"# The agent writes {STATE_DIR}/snapshot.json every snmp.snapshot_interval; both ways",
        "# below only read it, so the snmpd user (Debian-snmp) must be able to read that file.",
        "# A snapshot older than snmp.stale_after reads as unknown, never as an old value.",
        "",
        "# Who may read: change the community, and the source address from loopback to your",
        "# Cacti poller's.",
        f"view   mailpulse included {root}",
        "view   mailpulse included .1.3.6.1.4.1.8072.1.3",
        "rocommunity mailpulse 127.0.0.1 -V mailpulse",
        "",
        f"# 1. pass_persist: the whole MAILPULSE-MIB under {root} (the Cacti templates read it).",
        f"pass_persist {root} {MAILPULSE_BIN} snmp pass-persist --state-dir {STATE_DIR}",
        "",
        "# 2. extend: one command per graph, its values one per line, for pollers that read",
        "# NET-SNMP-EXTEND-MIB. -cacheTime first: snmpd runs the command at most once a minute.",
    ]
    for g in gs:
        out.append(
            f"extend -cacheTime {EXTEND_CACHE_S} -execType exec {g.name} {MAILPULSE_BIN}"
            f" snmp extend {g.name} --state-dir {STATE_DIR}"
        )
    out += ["", "# Every numeric OID the Cacti templates read (pass_persist), and its extend twin:"]
    for g in gs:
        for n, item in enumerate(g.items, 1):
            out.append(
                f"#   {snmp.oid_text(snmp.graph_oid(item))}  {extend_oid(g.name, n)}"
                f"  {g.name} {item.legend}"
            )
    out += ["", "# Every column pass_persist answers (MAILPULSE-MIB; .N is the row):"]
    for c in snmp.columns():
        if c.table:
            oid = snmp.oid_text((*snmp.table_entry(c.table), c.column)) + ".N"
            rows = catalogue.SNMP_TABLES[c.table].rows
            more = f"  rows: {', '.join(rows)}" if rows else "  rows: by name"
        else:
            oid, more = snmp.oid_text(snmp.scalar_oid(c.column)), ""
        out.append(f"#   {oid}  {c.name} ({c.type}){more}")
    return "\n".join(out) + "\n"


def outputs() -> dict[Path, str]:
    gs = graphs.available()
    files = {
        Path("MAILPULSE-MIB.txt"): mib.generate(),
        SNMPD_SNIPPET: snmpd_snippet(gs),
        Path("cacti_host_postfix_mail_node.xml"): host_template(gs),
    }
    for g in gs:
        files[Path(f"cacti_graph_{g.name}.xml")] = f"<cacti>\n{graph_objects(g)}</cacti>\n"
    return files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 when a file is out of date")
    p.add_argument("--out", type=Path, default=HERE)
    args = p.parse_args(argv)
    stale = []
    wanted = outputs()
    for rel, text in wanted.items():
        path = args.out / rel
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(rel))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if not args.check:
        # A graph that left the list leaves no template behind.
        for old in args.out.glob("cacti_*.xml"):
            if old.relative_to(args.out) not in wanted:
                old.unlink()
    elif stale:
        print("out of date (run cacti_templates/generate.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
