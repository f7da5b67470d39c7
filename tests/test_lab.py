"""The lab against its own plan: what the remote MX was told to answer is what Postfix logged.

Log lines and DSNs are read here with the standard library and a regex of this test's own, so
the lab is checked independently of mailpulse's parsers.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import shutil
import socket
from collections import Counter
from pathlib import Path

import psutil
import pytest

from lab.campaign import make_plan, run_campaign
from lab.postfix import Lab, LabError, free_port, wait_until
from tests.conftest import require_programs

STATUS_LINE = re.compile(r"postfix/\w+\[\d+\]: \w+: to=<([^>]*)>,.*? dsn=([\d.]+), status=(\w+)")


def last_status(maillog: Path) -> dict[str, tuple[str, str]]:
    last: dict[str, tuple[str, str]] = {}
    with maillog.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            m = STATUS_LINE.search(line)
            if m:
                last[m.group(1)] = (m.group(3), m.group(2))
    return last


def dsns_by_mailbox(lab: Lab) -> dict[str, list[tuple[str, str]]]:
    """Delivered-To -> [(Final-Recipient, Status)] for every DSN in the Maildir."""
    out: dict[str, list[tuple[str, str]]] = {}
    for f in (lab.maildir / "new").iterdir():
        msg = email.message_from_bytes(f.read_bytes(), policy=email.policy.compat32)
        for part in msg.walk():
            if part.get_content_type() != "message/delivery-status":
                continue
            payload = part.get_payload()
            assert isinstance(payload, list)
            for block in payload[1:]:  # the first block is per-message
                rcpt = str(block["Final-Recipient"]).split(";", 1)[1].strip()
                out.setdefault(str(msg["Delivered-To"]), []).append((rcpt, str(block["Status"])))
    return out


@pytest.mark.lab
def test_campaign_of_1000_ends_as_planned(lab: Lab) -> None:
    plan, _ = run_campaign(lab, 1000, "c1000", seed=7)
    assert {p.status for p in plan} == {"sent", "bounced", "deferred"}

    logged = last_status(lab.maillog)
    wrong = {
        p.recipient: (p.status, p.dsn, logged.get(p.recipient))
        for p in plan
        if logged.get(p.recipient) != (p.status, p.dsn)
    }
    assert not wrong, f"{len(wrong)} differ from the plan, e.g. {list(wrong.items())[:3]}"

    dsns = dsns_by_mailbox(lab)
    for p in plan:
        got = dsns.get(f"bounce-{p.user_id}@{lab.bounce_domain}", [])
        if p.status == "bounced":
            assert got == [(p.recipient, p.dsn)], p
        else:
            assert got == [], p  # no DSN for mail that was delivered or is still trying
    assert sum(len(v) for v in dsns.values()) == sum(p.status == "bounced" for p in plan)


@pytest.mark.lab
def test_outage_switch_turns_a_domain_into_user_unknown(lab: Lab) -> None:
    lab.set_outage(["gmail.com"])
    plan, _ = run_campaign(lab, 300, "outage", seed=3)
    gmail = [p for p in plan if p.domain == "gmail.com"]
    assert gmail and all(p.status == "bounced" and p.dsn == "5.1.1" for p in gmail)
    logged = last_status(lab.maillog)
    assert all(logged[p.recipient] == ("bounced", "5.1.1") for p in gmail)
    others = [p for p in plan if p.domain != "gmail.com" and p.kind == "ok"]
    assert others and all(logged[p.recipient] == ("sent", "2.0.0") for p in others)


@pytest.mark.lab
def test_remote_down_defers_everything_then_flush_delivers(lab: Lab) -> None:
    lab.mx_down()
    plan, _ = run_campaign(lab, 200, "down", seed=5)
    logged = last_status(lab.maillog)
    assert Counter(logged[p.recipient][0] for p in plan) == {"deferred": 200}
    text = lab.maillog.read_text()
    assert "Connection refused" in text
    lab.mx_up()
    lab.flush()
    ok = [p for p in plan if p.kind == "ok"]
    wait_until(
        lambda: all(last_status(lab.maillog)[p.recipient][0] == "sent" for p in ok),
        120,
        "deferred mail to be delivered after the flush",
    )


@pytest.mark.lab
def test_start_twice_and_after_a_crash(lab: Lab) -> None:
    lab.start()  # already running: nothing to do, no error
    assert lab.postfix_running() and lab.mx_running()
    master_pid = int((lab.spool / "pid" / "master.pid").read_text().split()[0])
    crashed = [psutil.Process(master_pid), psutil.Process(lab._mx_pid())]
    for p in crashed:
        p.kill()
    psutil.wait_procs(crashed, timeout=10)  # a crash is over once the processes are gone
    lab.start()  # stale pid files and orphaned children of the dead master
    assert lab.postfix_running() and lab.mx_running()
    plan, _ = run_campaign(lab, 20, "after-crash", seed=11)
    logged = last_status(lab.maillog)
    assert all(logged[p.recipient] == (p.status, p.dsn) for p in plan)


@pytest.mark.lab
def test_port_in_use_is_a_clear_error(make_lab) -> None:  # type: ignore[no-untyped-def]
    first = make_lab()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = squatter.getsockname()[1]
    # A second lab whose remote MX port is the first lab's, and whose smtpd port is taken.
    other = Lab(first.root.with_name(first.root.name + "-b"), smtp_port=port, mx_port=first.mx_port)
    try:
        with pytest.raises(LabError, match=rf":{first.mx_port} is in use by pid \d+"):
            other.start()
        with pytest.raises(LabError, match=rf"127\.0\.0\.1:{port} is in use by pid {os.getpid()}"):
            other.start_postfix()
        assert not other.postfix_running()
    finally:
        squatter.close()
        other.destroy()


def test_plan_is_reproducible_and_spread() -> None:
    a = make_plan(2000, seed=42)
    b = make_plan(2000, seed=42)
    assert a == b
    assert len({p.user_id for p in a}) == 2000
    assert len({p.domain for p in a}) == 12
    assert all(p.sender == f"bounce-{p.user_id}@bounces.lab.test" for p in a)
    assert all(p.recipient.startswith(p.kind + "-u" + p.user_id + "@") for p in a)


def test_a_private_parent_directory_is_a_clear_error() -> None:
    """Bad input: a lab root under a 0700 directory, where Postfix's processes cannot reach."""
    require_programs("postfix")
    import tempfile

    private = Path(tempfile.mkdtemp(prefix="mailpulse-private-"))  # mode 0700
    try:
        lab = Lab(private / "lab", smtp_port=free_port(), mx_port=free_port())
        with pytest.raises(LabError, match=rf"{private} is private \(mode 700\)"):
            lab.start_postfix()
        assert not lab.postfix_running()
    finally:
        shutil.rmtree(private)
