"""THE metric catalogue: every number mailpulse publishes, described once, as plain data.

The Prometheus collector reads it to build its families; the SNMP snapshot, the MIB, the Cacti
templates and the RRD layout are generated from it too. Names follow Prometheus conventions:
`mailpulse_` prefix, base units (seconds, bytes), counters end in `_total`. Every metric also
carries the agent's constant labels (COMMON_LABELS); `labels` lists only the varying ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailpulse.collectors.deferral import DEFERRAL_CLASSES
from mailpulse.domains import OTHER, PROVIDER_DOMAINS
from mailpulse.events import DEFAULT_AGE_EDGES_MIN, QUEUE_NAMES, STATUSES

COUNTER = "counter"
GAUGE = "gauge"
HISTOGRAM = "histogram"

# Labels every series has: which node, and whether it sends bulk or transactional mail.
COMMON_LABELS = ("node", "role")

# Histogram bucket upper bounds (the +Inf bucket is implied).
DELAY_BUCKETS_S = (0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0)
SIZE_BUCKETS_BYTES = (1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 5242880.0, 20971520.0)

# The stages of Postfix's delays=a/b/c/d, plus the whole trip.
DELAY_STAGES = ("before_qmgr", "in_qmgr", "connection", "transmission", "total")


@dataclass(frozen=True, slots=True)
class SnmpColumn:
    """One column of an SNMP table: the metric's series summed per row, the row being the value
    of the table's index label, over the series that match `where` (every other label summed).
    Integers on the wire: a value is multiplied by `scale` (load average in hundredths, as UCD's
    laLoadInt) and rounded."""

    table: str  # a key of SNMP_TABLES
    column: int  # sub-identifier in the table's entry; 1 and 2 are the row's index and name
    where: tuple[tuple[str, str], ...] = ()  # (label, value): only the series that match
    scale: int = 1


@dataclass(frozen=True, slots=True)
class SnmpTable:
    """An SNMP table indexed by one label. The rows named here keep their index (1, 2, ...)
    forever, so a Cacti data source on a numeric OID always reads the same thing; a value not
    named here gets the next free index, in name order, for as long as the agent runs."""

    number: int  # sub-identifier under mailpulseTables
    label: str
    rows: tuple[str, ...]
    description: str


@dataclass(frozen=True, slots=True)
class Metric:
    name: str  # full exposition name; counters end in _total
    type: str  # COUNTER, GAUGE or HISTOGRAM
    help: str
    labels: tuple[str, ...] = ()
    unit: str = ""  # base unit, "" when a plain count
    snmp_column: int | None = None  # a scalar under mailpulseScalars summing every series
    buckets: tuple[float, ...] = ()  # histograms only
    snmp: tuple[SnmpColumn, ...] = ()  # columns of the SNMP tables (SNMP_TABLES) it feeds

    @property
    def family_name(self) -> str:
        """The name prometheus-client wants: without the _total a counter gets on exposition."""
        return self.name.removesuffix("_total") if self.type == COUNTER else self.name


# -- SNMP ---------------------------------------------------------------------------------------
# The enterprise subtree everything is published under. 32473 is the Private Enterprise Number
# IANA reserves for documentation (RFC 5612): a site that owns a PEN puts its own here (and one
# more arc if it likes), runs `python cacti_templates/generate.py`, and ships what that writes.
SNMP_ENTERPRISE_OID = "1.3.6.1.4.1.32473.25"
SNMP_INFO_ARC = 1  # mailpulseInfo: the snapshot's age, node and role
SNMP_SCALARS_ARC = 2  # mailpulseScalars: Metric.snmp_column, every series summed
SNMP_TABLES_ARC = 3  # mailpulseTables: SNMP_TABLES

# Sisimai's reason names (DESIGN.md, "Words"), in a fixed order: the reason table's rows.
REASONS = (
    "userunknown", "hostunknown", "mailboxfull", "suspend", "hasmoved", "blocked",
    "badreputation", "spamdetected", "speeding", "toomanyconn", "expired", "networkerror",
    "policyviolation", "authfailure", "securityerror", "rejected", "norelaying", "mesgtoobig",
    "exceedlimit", "contenterror", "virusdetected", "systemerror", "systemfull", "mailererror",
    "notaccept", "syntaxerror", "notcompliantrfc", "filtered", "requireptr", "onhold",
    "undefined", "feedback", "vacation", "delivered",
)  # fmt: skip


def age_bucket_labels(edges: tuple[int, ...] = DEFAULT_AGE_EDGES_MIN) -> tuple[str, ...]:
    """The `age` label of mailpulse_queue_shape_messages, bucket by bucket."""
    return (*(f"lt{e}m" for e in edges), f"ge{edges[-1]}m")


SNMP_TABLES: dict[str, SnmpTable] = {
    "status": SnmpTable(1, "status", STATUSES, "Recipient delivery outcomes by status."),
    "queue": SnmpTable(2, "queue", QUEUE_NAMES, "Postfix queues, every instance summed."),
    "reason": SnmpTable(3, "reason", REASONS, "Failures by reason (Sisimai's names)."),
    "domainGroup": SnmpTable(
        4, "domain_group", (*PROVIDER_DOMAINS, OTHER), "Destinations by domain group."
    ),
    "queueAge": SnmpTable(
        5, "age", age_bucket_labels(), "Queued messages by age bucket (qshape's columns)."
    ),
    "deferralClass": SnmpTable(
        6, "deferral_class", DEFERRAL_CLASSES, "Deferred recipients by what keeps them waiting."
    ),
    "load": SnmpTable(7, "period", ("1m", "5m", "15m"), "Host load average."),
    "memory": SnmpTable(8, "kind", ("total", "available", "used"), "Host memory."),
    "spool": SnmpTable(9, "kind", ("size", "free", "avail"), "Filesystem of the spool."),
    "service": SnmpTable(10, "service", (), "Postfix master.cf services."),
    "source": SnmpTable(11, "source", ("host", "log", "queue"), "The agent's sources."),
}


def _by(table: str, column: int, **where: str) -> SnmpColumn:
    return SnmpColumn(table, column, tuple(where.items()))


def snmp_of(m: Metric) -> tuple[int | None, tuple[SnmpColumn, ...]]:
    """A metric's scalar column (or None) and its table columns."""
    return m.snmp_column, m.snmp


CATALOGUE: tuple[Metric, ...] = (
    # -- deliveries, from the log ------------------------------------------------------------
    Metric(
        "mailpulse_deliveries_total",
        COUNTER,
        "Recipient delivery outcomes logged by Postfix's delivery agents.",
        ("instance", "status", "reason", "domain_group", "dsn_class"),
        snmp=(
            _by("status", 3),
            _by("reason", 3, status="bounced"),
            _by("reason", 4, status="deferred"),
            _by("reason", 5, status="expired"),
            _by("domainGroup", 3, status="sent"),
            _by("domainGroup", 4, status="deferred"),
            _by("domainGroup", 5, status="bounced"),
        ),
    ),
    Metric(
        "mailpulse_delivery_delay_seconds",
        HISTOGRAM,
        "Time a recipient spent per stage of delays=a/b/c/d, recorded on its final status only.",
        ("instance", "stage", "status"),
        unit="seconds",
        buckets=DELAY_BUCKETS_S,
    ),
    Metric(
        "mailpulse_message_size_bytes",
        HISTOGRAM,
        "Size of messages as the queue manager logged it, per recipient reaching a final status.",
        ("instance",),
        unit="bytes",
        buckets=SIZE_BUCKETS_BYTES,
    ),
    Metric(
        "mailpulse_log_lines_total",
        COUNTER,
        "Log lines read from the mail log.",
        (),
        snmp_column=2,
    ),
    Metric(
        "mailpulse_log_records_total",
        COUNTER,
        "Log records read, by kind (delivery, queued, removed, smtpd rejects, warnings, ...);"
        " what became of each recipient is in mailpulse_deliveries_total.",
        ("kind",),
    ),
    Metric(
        "mailpulse_log_parse_errors_total",
        COUNTER,
        "Postfix log lines that could not be understood, by program; counted and skipped.",
        ("program",),
        snmp_column=3,
    ),
    Metric(
        "mailpulse_log_unread_delivery_lines_total",
        COUNTER,
        "Lines that look like a delivery (to=<...>, status=) but gave none, by reason (no_queue_id,"
        " no_status, unknown_status, unread_shape); also counted in the parse errors.",
        ("reason",),
    ),
    Metric(
        "mailpulse_log_evicted_queue_ids_total",
        COUNTER,
        "Queue ids dropped from the bounded correlation table before their message ended.",
        (),
        snmp_column=4,
    ),
    Metric(
        "mailpulse_log_follow_events_total",
        COUNTER,
        "What following a log met, by event: rotation, truncation (copytruncate), lost_file (a"
        " file that could not be read to its end), bad_checkpoint (damaged: reading resumed at"
        " the log's end), bad_entry (a journal entry that is no log line).",
        ("target", "event"),
    ),
    Metric(
        "mailpulse_log_skipped_bytes_total",
        COUNTER,
        "Bytes of a log the checkpoint proves were never read (a rotated file gone or unreadable).",
        ("target",),
        unit="bytes",
    ),
    Metric(
        "mailpulse_log_read_errors_total",
        COUNTER,
        "Failed reads of a log source since the agent started, by kind: unreadable (no right to"
        " read it), batch (a batch failed; nothing of it counted, it is read again).",
        ("target", "kind"),
    ),
    # -- queue, from the spool or showq ------------------------------------------------------
    Metric(
        "mailpulse_queue_messages",
        GAUGE,
        "Messages in a Postfix queue.",
        ("instance", "queue"),
        snmp=(_by("queue", 3),),
    ),
    Metric(
        "mailpulse_queue_recipients",
        GAUGE,
        "Recipients still to deliver in a Postfix queue.",
        ("instance", "queue"),
        snmp=(_by("queue", 4),),
    ),
    Metric(
        "mailpulse_queue_size_bytes",
        GAUGE,
        "Bytes of messages in a Postfix queue.",
        ("instance", "queue"),
        unit="bytes",
        snmp=(_by("queue", 5),),
    ),
    Metric(
        "mailpulse_queue_oldest_message_age_seconds",
        GAUGE,
        "Age of the oldest message in a Postfix queue.",
        ("instance", "queue"),
        unit="seconds",
        snmp=(_by("queue", 6),),
    ),
    Metric(
        "mailpulse_queue_shape_messages",
        GAUGE,
        "Messages per queue, recipient domain group and age bucket (qshape's matrix).",
        ("instance", "queue", "domain_group", "age"),
        snmp=(_by("queueAge", 3), _by("queueAge", 4, queue="deferred")),
    ),
    Metric(
        "mailpulse_queue_deferred_recipients",
        GAUGE,
        "Deferred recipients by domain group and why they wait: the reason the log gives the"
        " same reply, and a finer deferral class ('pending' until the sampler has read their"
        " defer log).",
        ("instance", "domain_group", "reason", "deferral_class"),
        snmp=(_by("deferralClass", 3), _by("domainGroup", 7), _by("reason", 8)),
    ),
    Metric(
        "mailpulse_queue_deferral_coverage_ratio",
        GAUGE,
        "Share of deferred messages whose deferral reasons the sampler has read (1: all).",
        ("instance",),
    ),
    Metric(
        "mailpulse_queue_read_errors",
        GAUGE,
        "Queue files the last sample could not read, by problem; counted and skipped.",
        ("instance", "kind"),
    ),
    Metric(
        "mailpulse_queue_sample_complete",
        GAUGE,
        "1 when the last queue sample read every file, 0 when it was cut short.",
        ("instance",),
    ),
    # -- host, from psutil -------------------------------------------------------------------
    Metric(
        "mailpulse_host_load_average",
        GAUGE,
        "System load average over 1, 5 and 15 minutes.",
        ("period",),
        snmp=(SnmpColumn("load", 3, scale=100),),
    ),
    Metric(
        "mailpulse_host_cpu_seconds_total",
        COUNTER,
        "CPU time spent by the host in each mode, all cores summed.",
        ("mode",),
        unit="seconds",
    ),
    Metric("mailpulse_host_cpus", GAUGE, "Logical CPUs of the host.", (), snmp_column=20),
    Metric(
        "mailpulse_host_memory_bytes",
        GAUGE,
        "Host memory: total, available, used.",
        ("kind",),
        unit="bytes",
        snmp=(_by("memory", 3),),
    ),
    Metric(
        "mailpulse_spool_filesystem_bytes",
        GAUGE,
        "Filesystem holding the Postfix spool: size, free (for root) and avail (for others).",
        ("instance", "kind"),
        unit="bytes",
        snmp=(_by("spool", 3),),
    ),
    Metric(
        "mailpulse_spool_filesystem_inodes",
        GAUGE,
        "Filesystem holding the Postfix spool: inodes total and free.",
        ("instance", "kind"),
    ),
    Metric(
        "mailpulse_postfix_processes",
        GAUGE,
        "Running Postfix daemon processes per master.cf service.",
        ("instance", "service"),
        snmp=(_by("service", 3),),
    ),
    Metric(
        "mailpulse_postfix_process_limit",
        GAUGE,
        "Process limit of a master.cf service (default_process_limit when master.cf says -);"
        " no series for a service without a limit (maxproc 0).",
        ("instance", "service"),
        snmp=(_by("service", 4),),
    ),
    Metric(
        "mailpulse_postfix_profile_drift",
        GAUGE,
        "Settings of a Postfix instance that differ from its profile, as `mailpulse postfix"
        " check` lists them (0: as the profile); re-read every few minutes.",
        ("instance", "profile"),
    ),
    # -- the blacklist and the bounce mail it reads ---------------------------------------
    Metric(
        "mailpulse_blacklist_entries",
        GAUGE,
        "Blacklist entries in force (addresses, and domains for hostunknown).",
        (),
        snmp_column=40,
    ),
    Metric(
        "mailpulse_blacklist_quarantine_entries",
        GAUGE,
        "Blacklist entries held in quarantine by a breaker or the hourly cap, awaiting review.",
        (),
        snmp_column=41,
    ),
    Metric(
        "mailpulse_blacklist_additions_total",
        COUNTER,
        "New blacklist entries put in force, by reason.",
        ("reason",),
        snmp_column=42,
        snmp=(_by("reason", 6),),
    ),
    Metric(
        "mailpulse_blacklist_hourly_cap",
        GAUGE,
        "The configured cap on new blacklist entries per hour.",
        (),
        snmp_column=43,
    ),
    Metric(
        "mailpulse_blacklist_breaker_open",
        GAUGE,
        "1 while the circuit breaker of a domain group sends its new entries to quarantine.",
        ("domain_group",),
        snmp_column=44,
        snmp=(_by("domainGroup", 6),),
    ),
    Metric(
        "mailpulse_blacklist_table_refusals_total",
        COUNTER,
        "Postfix table rebuilds refused because the table would shrink past the allowed share.",
        (),
        snmp_column=45,
    ),
    Metric(
        "mailpulse_blacklist_table_age_seconds",
        GAUGE,
        "Age of the blacklist's Postfix table in force on this node.",
        (),
        unit="seconds",
        snmp_column=46,
    ),
    Metric(
        "mailpulse_bounce_recipients_total",
        COUNTER,
        "Bounced recipients read from bounce mail (DSNs), by reason and whether the VERP address"
        " verified (verified, unverified, none).",
        ("reason", "verp"),
        snmp_column=47,
        snmp=(_by("reason", 7),),
    ),
    # -- the agent itself --------------------------------------------------------------------
    Metric(
        "mailpulse_source_up",
        GAUGE,
        "1 when the agent's last read of a source worked; target: log file, Postfix instance.",
        ("source", "target"),
        snmp=(_by("source", 3),),
    ),
    Metric(
        "mailpulse_source_sample_age_seconds",
        GAUGE,
        "Seconds since a source was last read successfully.",
        ("source", "target"),
        unit="seconds",
    ),
    Metric(
        "mailpulse_source_scan_duration_seconds",
        GAUGE,
        "How long the last read of a source took.",
        ("source", "target"),
        unit="seconds",
    ),
    Metric(
        "mailpulse_domain_groups_promoted",
        GAUGE,
        "Busy destinations promoted to their own domain_group label (top-K), out of the budget.",
        (),
    ),
    Metric(
        "mailpulse_agent_info",
        GAUGE,
        "Always 1; the labels say which mailpulse runs.",
        ("version",),
    ),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in CATALOGUE}
