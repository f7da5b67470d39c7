"""The graphs mailpulse draws and Cacti is given: which catalogue values each one shows.

One list feeds the Cacti templates, the `snmp extend` outputs (one line per item, in this
order), the RRD archives and `mailpulse graph`. A graph whose metrics are not in the catalogue
(yet) is left out everywhere, so regenerating after a metric lands adds its graph.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailpulse import catalogue

GAUGE = "GAUGE"  # a level: drawn as it is
COUNTER = "COUNTER"  # a total: drawn as a rate per second


@dataclass(frozen=True, slots=True)
class Item:
    ds: str  # RRD data source name: at most 19 of [a-z0-9_]
    legend: str
    metric: str  # catalogue name
    table: str = ""  # "" for the metric's scalar, else a key of catalogue.SNMP_TABLES
    row: str = ""  # the index label's value (a named row, so its OID never moves)
    where: tuple[tuple[str, str], ...] = ()  # picks the metric's column in that table


@dataclass(frozen=True, slots=True)
class Graph:
    name: str  # file and extend name: [a-z_]
    title: str
    vertical_label: str
    kind: str  # GAUGE or COUNTER
    items: tuple[Item, ...]
    scale: int = 1  # values are this many times the real one (load in hundredths)
    stack: bool = False


def _rows(metric: str, table: str, rows: tuple[str, ...], **where: str) -> tuple[Item, ...]:
    return tuple(
        Item(row.lower()[:19], row, metric, table, row, tuple(where.items())) for row in rows
    )


BOUNCE_REASONS = (
    "userunknown", "hostunknown", "mailboxfull", "suspend", "blocked", "badreputation",
    "spamdetected", "policyviolation", "rejected", "expired", "networkerror", "filtered",
)  # fmt: skip
BLACKLIST_REASONS = ("userunknown", "hostunknown", "mailboxfull", "suspend", "hasmoved")

GRAPHS: tuple[Graph, ...] = (
    Graph(
        "queue_depth",
        "Postfix queue depth",
        "messages",
        GAUGE,
        _rows("mailpulse_queue_messages", "queue", ("incoming", "active", "deferred", "hold")),
    ),
    Graph(
        "queue_age",
        "Deferred queue by age (qshape)",
        "messages",
        GAUGE,
        _rows(
            "mailpulse_queue_shape_messages",
            "queueAge",
            catalogue.age_bucket_labels(),
            queue="deferred",
        ),
        stack=True,
    ),
    Graph(
        "deferral_classes",
        "Deferred recipients by what they wait for",
        "recipients",
        GAUGE,
        _rows(
            "mailpulse_queue_deferred_recipients",
            "deferralClass",
            catalogue.SNMP_TABLES["deferralClass"].rows,
        ),
        stack=True,
    ),
    Graph(
        "deliveries",
        "Deliveries",
        "recipients/s",
        COUNTER,
        _rows("mailpulse_deliveries_total", "status", ("sent", "deferred", "bounced", "expired")),
    ),
    Graph(
        "bounce_reasons",
        "Bounced recipients by reason",
        "recipients/s",
        COUNTER,
        _rows("mailpulse_deliveries_total", "reason", BOUNCE_REASONS, status="bounced"),
        stack=True,
    ),
    Graph(
        "blacklist",
        "Blacklist size",
        "entries",
        GAUGE,
        (
            Item("entries", "in force", "mailpulse_blacklist_entries"),
            Item("quarantine", "in quarantine", "mailpulse_blacklist_quarantine_entries"),
        ),
    ),
    Graph(
        "blacklist_additions",
        "Blacklist additions by reason",
        "entries/s",
        COUNTER,
        _rows("mailpulse_blacklist_additions_total", "reason", BLACKLIST_REASONS),
        stack=True,
    ),
    Graph(
        "load",
        "Host load average",
        "load",
        GAUGE,
        _rows("mailpulse_host_load_average", "load", ("1m", "5m", "15m")),
        scale=100,
    ),
)


def available(graphs: tuple[Graph, ...] = GRAPHS) -> tuple[Graph, ...]:
    """The graphs every metric of which the catalogue has."""
    return tuple(g for g in graphs if all(i.metric in catalogue.BY_NAME for i in g.items))
