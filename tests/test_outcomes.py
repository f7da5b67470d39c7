"""One Outcome for what happened to a recipient, whether the log or a bounce mail said it.

The contract: for a recipient the lab's MX refused, the log's delivery event and Postfix's own
DSN become equal outcomes (status, codes, reason, hard, user id from the VERP address), and
both equal the campaign's plan, written by the lab, never by mailpulse's parsers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mailpulse.bounce.dsn import Bounce
from mailpulse.bounce.intake import VerpSettings, outcomes, read_paths
from mailpulse.bounce.verp import VerpId, make_address
from mailpulse.collectors.maillog import Correlator

from lab.campaign import inject, make_plan, wait_settled
from lab.postfix import Lab
from mailpulse.events import DeliveryEvent, Outcome, outcome_of_bounce, outcome_of_event

KEY = b"outcome-test-key"


def event(sender: str) -> DeliveryEvent:
    return DeliveryEvent(
        time=1_700_000_000.0,
        node="bulk1",
        instance="postfix",
        program="smtp",
        queue_id="4F1A2B3C4D",
        recipient="u@example.org",
        domain="example.org",
        relay="mx.example.org[192.0.2.1]:25",
        status="bounced",
        dsn="5.1.1",
        reply_code="550",
        reply_text="550 5.1.1 <u@example.org>: Recipient address rejected: User unknown",
        reason="userunknown",
        scope="recipient",
        hard=True,
        delay=0.4,
        sender=sender,
    )


def test_a_log_event_names_the_user_of_its_verp_sender() -> None:
    signed = make_address("42", "bounces.example.com", KEY)
    o = outcome_of_event(event(signed), VerpSettings(KEY))
    assert (o.user_id, o.verp_verified, o.source, o.queue_id) == ("42", True, "log", "4F1A2B3C4D")
    assert (o.status, o.dsn, o.reply_code, o.reason, o.hard) == (
        "bounced",
        "5.1.1",
        "550",
        "userunknown",
        True,
    )
    # Bad input: the same address under another key, an unsigned one, and no VERP at all.
    assert outcome_of_event(event(signed), VerpSettings(b"other")).verp_verified is False
    unsigned = outcome_of_event(event("bounce-42@bounces.example.com"))
    assert (unsigned.user_id, unsigned.verp_verified) == ("42", False)
    assert outcome_of_event(event("news@example.com")).user_id is None
    assert outcome_of_event(event("")).user_id is None  # a bounce of a bounce: null sender


@pytest.mark.parametrize(
    "action, reason, status",
    [
        ("failed", "userunknown", "bounced"),
        ("failed", "expired", "expired"),  # as Postfix logs status=expired
        ("delayed", "mailboxfull", "deferred"),
        ("delivered", "delivered", "sent"),
        ("relayed", "delivered", "sent"),
        ("complaint", "feedback", "sent"),  # the mail reached a mailbox that complained
        ("autoreply", "vacation", "sent"),
        ("x-unheard-of", "undefined", "bounced"),  # bad input: an Action no RFC names
    ],
)
def test_a_bounce_says_its_status_in_the_log_s_words(action: str, reason: str, status: str) -> None:
    b = Bounce("u@example.org", "5.1.1", "550", action, "550 5.1.1 no", reason, "recipient", False)
    o = outcome_of_bounce(b, VerpId("7", False, "bounce-7@b.example"), node="mx9", time=5.0)
    assert o == Outcome(
        "u@example.org",
        "7",
        False,
        status,
        "5.1.1",
        "550",
        "550 5.1.1 no",
        reason,
        "recipient",
        False,
        "mx9",
        "",
        5.0,
        "dsn",
        "",
    )
    assert outcome_of_bounce(b, None).user_id is None


def agreeing(o: Outcome) -> tuple[object, ...]:
    return (o.status, o.dsn, o.reply_code, o.reason, o.scope, o.hard, o.user_id, o.verp_verified)


@pytest.mark.lab
def test_log_and_dsn_of_a_campaign_give_the_same_outcomes(lab: Lab) -> None:
    plan = make_plan(
        300,
        bounce_domain=lab.bounce_domain,
        seed=31,
        sender_for=lambda uid, domain: make_address(uid, domain, KEY),
    )
    bounced = {p.recipient: p for p in plan if p.status == "bounced"}
    assert bounced
    inject(lab, plan, "outcomes")
    wait_settled(lab, len(bounced))
    verp = VerpSettings(KEY)

    with lab.maillog.open("rb") as f:
        from_log = {
            o.recipient: o
            for o in (outcome_of_event(ev, verp) for ev in Correlator().feed_stream(f))
            if o.status == "bounced"
        }
    from_dsn: dict[str, Outcome] = {}
    for item in read_paths([lab.maildir]):
        for o in outcomes(item, verp, node=lab.node):
            assert o.recipient not in from_dsn, f"{o.recipient} bounced twice"
            from_dsn[o.recipient] = o

    assert set(from_log) == set(from_dsn) == set(bounced)
    for rcpt, p in bounced.items():
        log, dsn = from_log[rcpt], from_dsn[rcpt]
        assert agreeing(log) == agreeing(dsn), (p, log, dsn)
        want = ("bounced", p.dsn, p.reply_code, p.reason, p.reason == "userunknown", p.user_id)
        assert (log.status, log.dsn, log.reply_code, log.reason, log.hard, log.user_id) == want
        assert log.verp_verified is True
        assert (log.source, dsn.source) == ("log", "dsn")
        assert log.node == dsn.node == lab.node and log.queue_id


def test_maildir_outcomes_need_no_lab_for_a_written_dsn(tmp_path: Path) -> None:
    # The same road as the lab's Maildir, on one hand-written Postfix-style DSN.
    address = make_address("4242", "bounces.example.com", KEY)
    mail = tmp_path / "dsn.eml"
    mail.write_text(
        f"From: MAILER-DAEMON@mx.example.net\nTo: {address}\nSubject: Undelivered\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n\n'
        "--B\nContent-Type: text/plain\n\nfailed\n\n--B\n"
        "Content-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.net\n\n"
        "Final-Recipient: rfc822; u@example.org\nAction: failed\nStatus: 5.1.1\n"
        "Diagnostic-Code: smtp; 550 5.1.1 <u@example.org>: User unknown\n\n--B--\n"
    )
    (item,) = list(read_paths([mail]))
    (o,) = outcomes(item, VerpSettings(KEY), node="mx1", time=9.0)
    assert (o.recipient, o.user_id, o.verp_verified) == ("u@example.org", "4242", True)
    assert (o.status, o.dsn, o.reply_code, o.reason, o.hard) == (
        "bounced",
        "5.1.1",
        "550",
        "userunknown",
        True,
    )
    assert (o.node, o.time, o.source) == ("mx1", 9.0, "dsn")
