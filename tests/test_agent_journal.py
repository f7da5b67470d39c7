"""The agent on a node where Postfix logs only to the journal: a real journal file written by
systemd-journal-remote, read through journalctl, the cursor kept with the counters."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.agent_support import in_process_agent, scrape, wait_for
from tests.conftest import require_programs

JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"
SENT = (
    "4A2B3C{i:04X}: to=<user{i}@gmail.com>, relay=gmail-smtp-in.l.google.com[142.250.1.27]:25,"
    " delay=1.2, delays=0.1/0.1/0.5/0.5, dsn=2.0.0, status=sent (250 2.0.0 OK abc - gsmtp)"
)


def write_journal(path: Path, first: int, n: int) -> None:
    """n smtp deliveries as journald entries (export format), stored by systemd-journal-remote."""
    entries = []
    for i in range(first, first + n):
        usec = 1795889945_000000 + i * 1000
        entries.append(
            f"__REALTIME_TIMESTAMP={usec}\n__MONOTONIC_TIMESTAMP={usec}\n"
            "_BOOT_ID=0123456789abcdef0123456789abcdef\n_HOSTNAME=mx1\n"
            f"SYSLOG_IDENTIFIER=postfix/smtp\n_PID=77\nMESSAGE={SENT.format(i=i)}\n\n"
        )
    subprocess.run(
        [JOURNAL_REMOTE, "-o", str(path), "-"],
        input="".join(entries).encode(),
        check=True,
        capture_output=True,
    )


def test_journal_source_counts_each_entry_once_across_a_restart(tmp_path: Path) -> None:
    require_programs("journalctl", "postconf", JOURNAL_REMOTE)
    journal = tmp_path / "journal"
    journal.mkdir()
    write_journal(journal / "a.journal", 0, 30)
    journal_logs = {"journal_args": ["--directory", str(journal)]}

    def totals(port: int) -> tuple[float, float]:
        samples = scrape(port)
        lines = sum(v for (n, _), v in samples.items() if n == "mailpulse_log_lines_total")
        sent = sum(
            v
            for (n, labels), v in samples.items()
            if n == "mailpulse_deliveries_total" and ("domain_group", "gmail") in labels
        )
        return lines, sent

    agent = in_process_agent(tmp_path, journal_logs)
    try:
        port = agent.http.address[1]
        wait_for(lambda: totals(port) == (30, 30), 30, "the first 30 entries")
    finally:
        agent.stop()

    write_journal(journal / "b.journal", 30, 12)  # logged while the agent was down
    again = in_process_agent(tmp_path, journal_logs)
    try:
        port = again.http.address[1]
        wait_for(lambda: totals(port) == (42, 42), 30, "the 12 new entries, and only those")
        # One more full read of the journal after that, and still nothing counted twice.
        read_at = time.time()
        wait_for(lambda: again.logs[0].status.last_ok > read_at, 30, "another read")
        assert totals(port) == (42, 42)
    finally:
        again.stop()
