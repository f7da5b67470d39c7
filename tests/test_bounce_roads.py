"""One reply, one reason, whichever road it comes by: a log line, a bounce mail, a queued
deferral. Written from how Postfix logs and reports a reply (not copied from any log)."""

from __future__ import annotations

import pytest
from mailpulse.bounce.classify import held_out
from mailpulse.bounce.dsn import parse_message
from mailpulse.collectors.deferral import deferral_of
from mailpulse.collectors.maillog import Correlator, events_from_lines
from mailpulse.collectors.qfile import DeferEntry, parse_defer_log

from lab.campaign import Planned, inject, verp_sender, wait_settled
from lab.postfix import Lab

YAHOO_COMPLAINTS = (
    "421 4.7.0 [TSS04] Messages from 192.0.2.25 temporarily deferred due to user complaints"
    " - 4.16.55.1; see https://postmaster.example/421-ts01"
)
AU_UNKNOWN = "550 <tama@ezweb.ne.jp>: User unknown"


def log_reason(status: str, dsn: str, rcpt: str, reply: str, command: str) -> str:
    line = (
        f"Nov 28 17:33:59 mx1 postfix/smtp[9]: 3F2A1B2C3D: to=<{rcpt}>,"
        f" relay=mx.example.net[192.0.2.9]:25, delay=1, delays=0/0/0/1, dsn={dsn},"
        f" status={status} (host mx.example.net[192.0.2.9] said: {reply}"
        f" (in reply to {command} command))"
    ).encode()
    (event,) = Correlator().feed_line(line)
    return event.reason


def dsn_mail(rcpt: str, action: str, status: str, diagnostic: str) -> bytes:
    return (
        "From: MAILER-DAEMON@out.example.com (Mail Delivery System)\n"
        "To: bounce-7@bounces.example.com\n"
        "Subject: Undelivered Mail Returned to Sender\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n'
        "\n--B\nContent-Type: text/plain\n\nThis is the mail system at host out.example.com.\n"
        "\n--B\nContent-Type: message/delivery-status\n\n"
        "Reporting-MTA: dns; out.example.com\n\n"
        f"Final-Recipient: rfc822; {rcpt}\nOriginal-Recipient: rfc822;{rcpt}\n"
        f"Action: {action}\nStatus: {status}\n"
        "Remote-MTA: dns; mx.example.net\n"
        f"Diagnostic-Code: smtp; {diagnostic}\n"
        "\n--B--\n"
    ).encode()


@pytest.mark.parametrize("families", [(), ("yahoo",)])
def test_complaint_deferrals_are_bad_reputation_on_every_road(families: tuple[str, ...]) -> None:
    # Held out or not: Yahoo's own [TSnn] rule, or the shared complaint wording.
    with held_out(*families):
        rcpt = "tama@yahoo.example"
        assert log_reason("deferred", "4.7.0", rcpt, YAHOO_COMPLAINTS, "MAIL FROM") == (
            "badreputation"
        )
        (b,) = parse_message(dsn_mail(rcpt, "delayed", "4.7.0", YAHOO_COMPLAINTS))
        assert (b.reason, b.scope, b.hard) == ("badreputation", "sender", False)
        queued = deferral_of(DeferEntry(rcpt, "4.7.0", YAHOO_COMPLAINTS))
        assert queued.reason == "badreputation" and queued.deferral_class == "blocklisted"


def test_a_receiver_known_by_its_domain_gets_one_verdict_from_log_and_mail() -> None:
    # au's own directory answered for its domain: the log line says so as the bounce mail does.
    rcpt = "tama@ezweb.ne.jp"
    assert log_reason("bounced", "5.0.0", rcpt, AU_UNKNOWN, "end of DATA") == "userunknown"
    (b,) = parse_message(dsn_mail(rcpt, "failed", "5.0.0", AU_UNKNOWN))
    assert (b.reason, b.hard) == ("userunknown", True)


def test_remote_mta_is_the_host_the_report_names() -> None:
    (b,) = parse_message(dsn_mail("a@example.org", "failed", "5.1.1", "550 5.1.1 No such user"))
    assert b.remote_mta == "mx.example.net"
    raw = dsn_mail("a@example.org", "failed", "5.1.1", "550 5.1.1 No such user")
    for field, host in (
        (b"dns; [192.0.2.7]", "192.0.2.7"),
        (b"dns; MX2.Example.NET.", "mx2.example.net"),
        (b"smtp; mx3.example.net (192.0.2.8)", "mx3.example.net"),
        (b"dns;", ""),
    ):
        (b,) = parse_message(raw.replace(b"dns; mx.example.net", field))
        assert b.remote_mta == host, field


@pytest.mark.lab
def test_complaint_deferrals_from_a_real_postfix_are_bad_reputation(lab: Lab) -> None:
    # The lab's remote MX answers complaints-u<id> as Yahoo does; Postfix logs the deferral
    # and keeps the reply in the message's defer log: both roads say badreputation.
    plan = [
        Planned(uid, verp_sender(uid, lab.bounce_domain), f"complaints-u{uid}@yahoo.com",
                "yahoo.com", "complaints", "deferred", "4.7.0", "421", "badreputation", "rcpt")
        for uid in ("1000001", "1000002")
    ]  # fmt: skip
    inject(lab, plan, "complaints")
    wait_settled(lab, 0)
    recipients = {p.recipient for p in plan}
    with open(lab.maillog, "rb") as f:
        logged = {e.recipient: e for e in events_from_lines(f) if e.recipient in recipients}
    assert {r: (e.status, e.dsn, e.reason) for r, e in logged.items()} == {
        r: ("deferred", "4.7.0", "badreputation") for r in recipients
    }
    queued = {
        e.recipient: deferral_of(e)
        for path in (lab.spool / "defer").rglob("*")
        if path.is_file()
        for e in parse_defer_log(path.read_text())
    }
    assert {r: tuple(d) for r, d in queued.items()} == {
        r: ("badreputation", "blocklisted") for r in recipients
    }


def test_postfix_recipient_refusal_is_the_rcpt_stage_even_unsaid() -> None:
    # Postfix's smtpd says "Recipient address rejected" only in answer to RCPT TO: the missing
    # mailbox is proven though the report does not say which command was refused.
    text = (
        "550 <lee@example.org>: Recipient address rejected: User unknown in local recipient table"
    )
    (b,) = parse_message(dsn_mail("lee@example.org", "failed", "5.0.0", text))
    assert (b.reason, b.hard) == ("userunknown", True)
    # A size refusal there is still about the size, not the user.
    text = "552 <lee@example.org>: Recipient address rejected: Message too big for system"
    (b,) = parse_message(dsn_mail("lee@example.org", "failed", "5.0.0", text))
    assert (b.reason, b.hard) == ("mesgtoobig", False)
