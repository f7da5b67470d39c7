"""The agent in-process on a plain log file and a Postfix config whose spool is missing:
bad lines are counted and skipped, a broken source shows as down, nothing stops serving."""

from __future__ import annotations

import os
from pathlib import Path

from mailpulse.series import stats_series
from tests.agent_support import in_process_agent, scrape, wait_for
from tests.conftest import require_programs

DELIVERY = (
    "Nov 28 10:00:0{i} mx1 postfix/smtp[4242]: 4A2B3C0{i}ABCD: to=<user{i}@gmail.com>,"
    " relay=gmail-smtp-in.l.google.com[142.250.1.27]:25, delay=1.2, delays=0.1/0.1/0.5/0.5,"
    " dsn=2.0.0, status=sent (250 2.0.0 OK 1700000000 abc.1 - gsmtp)\n"
)
BOUNCE = (
    "Nov 28 10:00:09 mx1 postfix/smtp[4242]: 4A2B3C09ABCD: to=<nobody@example.org>,"
    " relay=mx.example.org[192.0.2.7]:25, delay=0.4, delays=0.1/0/0.2/0.1, dsn=5.1.1,"
    " status=bounced (host mx.example.org[192.0.2.7] said: 550 5.1.1 <nobody@example.org>:"
    " Recipient address rejected: User unknown (in reply to RCPT TO command))\n"
)
JUNK = [
    b"\x00\xff\xfe binary junk from a damaged disk block\n",  # not text at all
    b"Nov 28 10:00:10 mx1 sshd[99]: Accepted publickey for root\n",  # another program
    b"Nov 28 10:00:11 mx1 postfix/smtp[4242]: " + b"x" * 100_000 + b"\n",  # a huge line
    "Nov 28 10:00:12 mx1 postfix/smtp[4242]: 4A2B3C07ABCD: to=<caf\u00e9@b\xe4d.example>,"
    " relay=none, delay=0, dsn=4.4.1, status=deferred (connect failed)\n".encode("latin-1"),
]


def test_bad_lines_are_counted_and_a_missing_spool_shows_down(tmp_path: Path) -> None:
    require_programs("postconf")
    # Bad input: a Postfix instance whose queue directory does not exist (a spool not mounted).
    log = tmp_path / "mail.log"
    log.write_bytes(b"")
    agent = in_process_agent(tmp_path, {"files": [str(log)]}, queue_interval=0.5)
    port = agent.http.address[1]
    try:
        with log.open("ab") as f:
            for i in range(5):
                f.write(DELIVERY.format(i=i).encode())
            for junk in JUNK:
                f.write(junk)
            f.write(BOUNCE.encode())
            f.write(b"Nov 28 10:00:13 mx1 postfix/smtp[4242]: 4A2B3C0")  # no newline yet
        written_lines = 5 + len(JUNK) + 1

        def total(name: str) -> float:
            return sum(v for (n, _), v in scrape(port).items() if n == name)

        wait_for(lambda: total("mailpulse_log_lines_total") == written_lines, 30, "the lines")
        # The host is sampled in the background; its first sample may come after the lines.
        cpus = os.cpu_count()
        wait_for(lambda: total("mailpulse_host_cpus") == cpus, 30, "the first host sample")
        samples = scrape(port)
        by = {(n, frozenset(dict(labels).items())): v for (n, labels), v in samples.items()}
        deliveries = {
            (dict(labels)["status"], dict(labels)["domain_group"]): v
            for (n, labels), v in by.items()
            if n == "mailpulse_deliveries_total"
        }
        assert deliveries[("sent", "gmail")] == 5
        assert deliveries[("bounced", "other")] == 1
        # The bad-encoding deferral is still a deferral: counted, not dropped.
        assert deliveries.get(("deferred", "other")) == 1
        kinds = {
            dict(labels)["kind"]: v
            for (n, labels), v in by.items()
            if n == "mailpulse_log_records_total"
        }
        # Of the 10 lines: 7 deliveries (5 sent, the bounce, the Latin-1 deferral), the binary
        # junk and sshd's line not Postfix's, and the huge line Postfix's but unknown (and cut).
        assert kinds == {"delivery": 7, "not_postfix": 2, "unknown": 1, "cut_lines": 1}
        errors = {
            dict(labels)["program"]: v
            for (n, labels), v in by.items()
            if n == "mailpulse_log_parse_errors_total"
        }
        assert errors == {"smtp": 1}
        up = {
            dict(labels)["source"]: v for (n, labels), v in by.items() if n == "mailpulse_source_up"
        }
        # The instance has no Postfix configuration to compare with a profile either.
        assert up == {"log": 1.0, "queue": 0.0, "host": 1.0, "profile": 0.0}

        # The half-written line is not counted until its end arrives.
        with log.open("ab") as f:
            f.write(b"9ABCD: removed\n")
        wait_for(lambda: total("mailpulse_log_lines_total") == written_lines + 1, 30, "the rest")
        assert total("mailpulse_deliveries_total") == 7  # a "removed" line is no delivery
    finally:
        agent.stop()


def test_collector_stats_map_to_catalogue_series() -> None:
    programs: set[str] = set()
    assert stats_series("lines", programs) == ("mailpulse_log_lines_total", ())
    assert stats_series("evictions", programs) == ("mailpulse_log_evicted_queue_ids_total", ())
    assert stats_series("unparsed.smtpd", programs) == (
        "mailpulse_log_parse_errors_total",
        ("smtpd",),
    )
    assert stats_series("events.sent", programs) is None  # deliveries_total counts those
    assert stats_series("records.reject", programs) == ("mailpulse_log_records_total", ("reject",))
    # Bad input: a flood of made-up program names stays within the label budget.
    for i in range(500):
        stats_series(f"unparsed.prog{i}", programs)
    assert len(programs) <= 65
    assert stats_series("unparsed.prog499", programs) == (
        "mailpulse_log_parse_errors_total",
        ("other",),
    )
