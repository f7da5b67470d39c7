"""MAILPULSE-MIB, written from the catalogue: every OID `mailpulse snmp pass-persist` answers.

`python -m mailpulse.exporters.mib > MAILPULSE-MIB.txt` (cacti_templates/generate.py writes
the checked-in copy). smilint and snmptranslate read it with the three base modules it
imports (SNMPv2-SMI, SNMPv2-TC, SNMPv2-CONF).
"""

from __future__ import annotations

import sys

from mailpulse.exporters import snmp

from mailpulse import catalogue

MODULE = "MAILPULSE-MIB"
LAST_UPDATED = "202612020000Z"  # change with every change of the tree below
ENTERPRISES = (1, 3, 6, 1, 4, 1)


def _text(s: str) -> str:
    """A DESCRIPTION's text: no double quote inside, wrapped."""
    words = s.replace('"', "'").split()
    lines, line = [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > 64:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}" if line else w
    lines.append(line)
    return '"' + "\n         ".join(lines) + '"'


def _obj(name: str, syntax: str, access: str, description: str, parent: str, arc: int,
         units: str = "", index: str = "") -> str:  # fmt: skip
    out = [f"{name} OBJECT-TYPE", f"    SYNTAX      {syntax}"]
    if units:
        out.append(f'    UNITS       "{units}"')
    out += [f"    MAX-ACCESS  {access}", "    STATUS      current"]
    out.append(f"    DESCRIPTION {_text(description)}")
    if index:
        out.append(f"    INDEX       {{ {index} }}")
    out.append(f"    ::= {{ {parent} {arc} }}")
    return "\n".join(out) + "\n"


def _syntax(c: snmp.Column) -> str:
    if c.type == snmp.COUNTER64:
        return "Counter64" if c.metric.type == catalogue.COUNTER else "MpGauge64"
    return "Gauge32"


def _description(c: snmp.Column) -> str:
    d = c.metric.help.rstrip(".") + f" ({c.metric.name}"
    if c.where:
        d += ", only " + ", ".join(f"{k}={v}" for k, v in c.where)
    d += "; every other label summed)."
    if c.scale != 1:
        d += f" In 1/{c.scale}ths."
    return d


def _units(c: snmp.Column) -> str:
    if c.scale != 1:
        return f"1/{c.scale}"
    return c.metric.unit


def _upper(name: str) -> str:
    return name[:1].upper() + name[1:]


def generate() -> str:
    root = snmp.ROOT
    if root[: len(ENTERPRISES)] != ENTERPRISES or len(root) <= len(ENTERPRISES):
        raise ValueError(f"{catalogue.SNMP_ENTERPRISE_OID} is not under enterprises")
    arcs = " ".join(map(str, root[len(ENTERPRISES) :]))
    cols = snmp.columns()
    parts = [
        f"{MODULE} DEFINITIONS ::= BEGIN\n\n"
        "IMPORTS\n"
        "    MODULE-IDENTITY, OBJECT-TYPE, Counter64, Gauge32, Integer32, enterprises\n"
        "        FROM SNMPv2-SMI\n"
        "    TEXTUAL-CONVENTION, DisplayString\n"
        "        FROM SNMPv2-TC\n"
        "    MODULE-COMPLIANCE, OBJECT-GROUP\n"
        "        FROM SNMPv2-CONF;\n\n"
        "mailpulseMIB MODULE-IDENTITY\n"
        f'    LAST-UPDATED "{LAST_UPDATED}"\n'
        '    ORGANIZATION "mailpulse"\n'
        '    CONTACT-INFO "The mailpulse project; see its README."\n'
        "    DESCRIPTION "
        + _text(
            "What the mailpulse agent counts on a Postfix node: deliveries, queues, deferrals,"
            " bounces and the host, from the same readings as its Prometheus /metrics. Written"
            " from the metric catalogue; regenerate it, never edit it. The enterprise number"
            " 32473 is the one reserved for documentation (RFC 5612): a site with its own"
            " number sets it in the catalogue and regenerates."
        )
        + "\n"
        f'    REVISION "{LAST_UPDATED}"\n'
        '    DESCRIPTION "The catalogue as this module was generated from it."\n'
        f"    ::= {{ enterprises {arcs} }}\n\n"
        "MpGauge64 ::= TEXTUAL-CONVENTION\n"
        "    STATUS      current\n"
        "    DESCRIPTION "
        + _text(
            "A level that may pass 2^32 (bytes of a queue, a disk, memory), sent as a"
            " Counter64 as RFC 2856's CounterBasedGauge64 is. It goes down as well as up."
        )
        + "\n    SYNTAX      Counter64\n\n"
        f"mpInfo OBJECT IDENTIFIER ::= {{ mailpulseMIB {catalogue.SNMP_INFO_ARC} }}\n"
        f"mpScalars OBJECT IDENTIFIER ::= {{ mailpulseMIB {catalogue.SNMP_SCALARS_ARC} }}\n"
        f"mpTables OBJECT IDENTIFIER ::= {{ mailpulseMIB {catalogue.SNMP_TABLES_ARC} }}\n"
        "mpConformance OBJECT IDENTIFIER ::= { mailpulseMIB 4 }\n\n",
        _obj(
            "mpSnapshotAge",
            "Gauge32",
            "read-only",
            "Seconds since the agent wrote the values answered. Past snmp.stale_after (config)"
            " nothing else is answered, so a poller records unknown; 4294967295 while there"
            " is no snapshot at all.",
            "mpInfo",
            1,
            units="seconds",
        ),  # fmt: skip
        _obj("mpNode", "DisplayString", "read-only", "The node's name.", "mpInfo", 2),
        _obj("mpRole", "DisplayString", "read-only", "bulk or transactional.", "mpInfo", 3),
        _obj("mpVersion", "DisplayString", "read-only", "mailpulse's version.", "mpInfo", 4),
    ]
    objects = ["mpSnapshotAge", "mpNode", "mpRole", "mpVersion"]
    for c in cols:
        if not c.table:
            parts.append(_obj(c.name, _syntax(c), "read-only", _description(c), "mpScalars",
                              c.column, units=_units(c)))  # fmt: skip
            objects.append(c.name)
    for key, table in sorted(catalogue.SNMP_TABLES.items(), key=lambda kv: kv[1].number):
        mine = [c for c in cols if c.table == key]
        if not mine:
            continue
        t = "mp" + _upper(key)
        entry_type = _upper(t) + "Entry"
        rows = (
            f" Rows 1 to {len(table.rows)} are always {', '.join(table.rows)}, in that order;"
            " others follow in name order."
            if table.rows
            else " Rows are numbered in name order while the agent runs."
        )
        parts.append(
            _obj(f"{t}Table", f"SEQUENCE OF {entry_type}", "not-accessible",
                 table.description + f" One row per {table.label}." + rows, "mpTables",
                 table.number)
        )  # fmt: skip
        parts.append(
            _obj(f"{t}Entry", entry_type, "not-accessible", f"One {table.label}.",
                 f"{t}Table", 1, index=f"{t}Index")
        )  # fmt: skip
        members = [f"{t}Index Integer32", f"{t}Name DisplayString"]
        members += [f"{c.name} {_syntax(c)}" for c in mine]
        parts.append(f"{entry_type} ::= SEQUENCE {{\n    " + ",\n    ".join(members) + "\n}\n")
        parts.append(
            _obj(f"{t}Index", "Integer32 (1..2147483647)", "not-accessible",
                 "The row's number.", f"{t}Entry", 1)
        )  # fmt: skip
        parts.append(
            _obj(f"{t}Name", "DisplayString", "read-only", f"The {table.label}.", f"{t}Entry", 2)
        )
        objects.append(f"{t}Name")
        for c in mine:
            parts.append(_obj(c.name, _syntax(c), "read-only", _description(c), f"{t}Entry",
                              c.column, units=_units(c)))  # fmt: skip
            objects.append(c.name)
    parts.append(
        "mpGroups OBJECT IDENTIFIER ::= { mpConformance 1 }\n"
        "mpCompliances OBJECT IDENTIFIER ::= { mpConformance 2 }\n\n"
        "mpObjectsGroup OBJECT-GROUP\n"
        "    OBJECTS { " + ",\n              ".join(objects) + " }\n"
        "    STATUS      current\n"
        '    DESCRIPTION "Everything the agent publishes."\n'
        "    ::= { mpGroups 1 }\n\n"
        "mpCompliance MODULE-COMPLIANCE\n"
        "    STATUS      current\n"
        '    DESCRIPTION "A mailpulse agent answers every object."\n'
        "    MODULE\n"
        "        MANDATORY-GROUPS { mpObjectsGroup }\n"
        "    ::= { mpCompliances 1 }\n\n"
        "END\n"
    )
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(generate())
