"""Notice formats written out by hand from how each MTA words them (not from the corpus), to
check the parser on mail it has never seen: one recipient each, with the expected outcome."""

from __future__ import annotations

import pytest
from mailpulse.bounce.dsn import (
    KIND_AUTOREPLY,
    KIND_BOUNCE,
    KIND_COMPLAINT,
    KIND_DELIVERY,
    parse_message,
)

CASES = {
    "exim": (
        "From: Mail Delivery System <Mailer-Daemon@mx.example.net>\n"
        "To: bounce-77@b.example\n"
        "Subject: Mail delivery failed: returning message to sender\n"
        "X-Failed-Recipients: jane@example.org\n"
        "\n"
        "This message was created automatically by mail delivery software.\n"
        "\n"
        "A message that you sent could not be delivered to one or more of its\n"
        "recipients. This is a permanent error. The following address(es) failed:\n"
        "\n"
        "  jane@example.org\n"
        "    host mx.example.org [192.0.2.5]\n"
        "    SMTP error from remote mail server after RCPT TO:<jane@example.org>:\n"
        "    550 5.1.1 <jane@example.org>: Recipient address rejected: User unknown\n"
        "\n"
        "------ This is a copy of the message, including all the headers. ------\n"
        "\n"
        "Return-path: <bounce-77@b.example>\n"
        "To: jane@example.org\n"
        "Subject: news\n"
        "\n"
        "hello\n"
    ),
    "exim-quota": (
        "From: Mail Delivery System <Mailer-Daemon@mx.example.net>\n"
        "To: bounce-77@b.example\n"
        "Subject: Mail delivery failed: returning message to sender\n"
        "X-Failed-Recipients: bob@example.org\n"
        "\n"
        "This message was created automatically by mail delivery software.\n"
        "\n"
        "A message that you sent could not be delivered to one or more of its\n"
        "recipients. This is a permanent error. The following address(es) failed:\n"
        "\n"
        "  bob@example.org\n"
        "    mailbox is full: retry timeout exceeded\n"
        "\n"
        "------ This is a copy of the message, including all the headers. ------\n"
        "\n"
        "To: bob@example.org\n"
        "\n"
        "hello\n"
    ),
    "qmail": (
        "From: MAILER-DAEMON@mail.example.net\n"
        "To: bounce-77@b.example\n"
        "Subject: failure notice\n"
        "\n"
        "\n"
        "Hi. This is the qmail-send program at mail.example.net.\n"
        "I'm afraid I wasn't able to deliver your message to the following addresses.\n"
        "This is a permanent error; I've given up. Sorry it didn't work out.\n"
        "\n"
        "<sam@example.com>:\n"
        "Sorry, no mailbox here by that name. (#5.1.1)\n"
        "\n"
        "--- Below this line is a copy of the message.\n"
        "\n"
        "Return-Path: <bounce-77@b.example>\n"
        "To: sam@example.com\n"
        "\n"
        "hi\n"
    ),
    "courier": (
        "From: Courier mail server at mx.example.com <@>\n"
        "To: bounce-77@b.example\n"
        "Subject: NOTICE: mail delivery status.\n"
        "\n"
        "\n"
        "This is a delivery status notification from mx.example.com,\n"
        "running the Courier mail server, version 0.60.\n"
        "\n"
        "The original message was received on Thu, 29 Apr 2010 23:34:45 +0900\n"
        "from localhost [127.0.0.1]\n"
        "\n"
        "---------------------------------------------------------------------------\n"
        "\n"
        "                           UNDELIVERABLE MAIL\n"
        "\n"
        "Your message to the following recipients cannot be delivered:\n"
        "\n"
        "<kim@example.org>:\n"
        "    mx.example.org [192.0.2.1]:\n"
        ">>> RCPT TO:<kim@example.org>\n"
        "<<< 550 5.1.1 <kim@example.org>... User Unknown\n"
        "\n"
        "---------------------------------------------------------------------------\n"
    ),
    "exchange-text": (
        "From: System Administrator <postmaster@example.com>\n"
        "To: bounce-77@b.example\n"
        "Subject: Undeliverable: news\n"
        "\n"
        "\n"
        "Your message did not reach some or all of the intended recipients.\n"
        "\n"
        "      Subject:\tnews\n"
        "      Sent:\t1/1/2020 10:00 AM\n"
        "\n"
        "The following recipient(s) cannot be reached:\n"
        "\n"
        "      Lee, Ann on 1/1/2020 10:00 AM\n"
        "            The e-mail account does not exist at the organization "
        "this message was sent to.  Check the e-mail address, or contact the "
        "recipient directly to find out the correct address.\n"
        "            <mx.example.com #5.1.1 smtp;550 5.1.1 "
        "RESOLVER.ADR.RecipNotFound; not found>\n"
    ),
    # PowerMTA's report carries its own category per recipient; the words say only "rejected".
    "powermta": (
        "From: postmaster@mta.example.net\n"
        "To: bounce-77@b.example\n"
        "Subject: Delivery report\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\n'
        "\n"
        "--b1\n"
        "Content-Type: text/plain\n"
        "\n"
        "Delivery failed for the recipient below.\n"
        "--b1\n"
        "Content-Type: message/delivery-status\n"
        "\n"
        "Reporting-MTA: dns; mta.example.net\n"
        "\n"
        "Final-Recipient: rfc822; pat@example.org\n"
        "Action: failed\n"
        "Status: 5.0.0 (undefined status)\n"
        "Remote-MTA: dns; mx.example.org\n"
        "Diagnostic-Code: smtp; 550 Rejected\n"
        "X-PowerMTA-BounceCategory: bad-mailbox\n"
        "\n"
        "--b1--\n"
    ),
    # A relay that restates the remote's reply under its own code; "expired" as the action.
    "relay-expired": (
        "From: postmaster@relay.example.net\n"
        "To: bounce-77@b.example\n"
        "Subject: Delivery Status Notification (Failure)\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b2"\n'
        "\n"
        "--b2\n"
        "Content-Type: text/plain\n"
        "\n"
        "Your message could not be delivered.\n"
        "--b2\n"
        "Content-Type: message/delivery-status\n"
        "\n"
        "Reporting-MTA: dns; relay.example.net\n"
        "\n"
        "Final-Recipient: rfc822; lou@example.org\n"
        "Action: failed\n"
        "Status: 5.0.0\n"
        "Diagnostic-Code: smtp; 5.3.0 - Relay error 552-'5.2.2 Mailbox full' (attempts: 1)\n"
        "\n"
        "Final-Recipient: rfc822; kai@example.org\n"
        "Action: expired\n"
        "Status:\n"
        "Diagnostic-Code: Connection timed out\n"
        "\n"
        "--b2--\n"
    ),
    # Gmail's older notice: no stage in words, but the session state (14 is RCPT TO).
    "gmail-state": (
        "From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>\n"
        "To: bounce-77@b.example\n"
        "Subject: Delivery Status Notification (Failure)\n"
        "\n"
        "Delivery to the following recipient failed permanently:\n"
        "\n"
        "     kit@example.org\n"
        "\n"
        "Technical details of permanent failure:\n"
        "Google tried to deliver your message, but it was rejected by the recipient domain.\n"
        "The error that the other server returned was:\n"
        "550 550 Unknown user kit@example.org (state 14).\n"
        "\n"
        "----- Original message -----\n"
        "\n"
        "To: kit@example.org\n"
        "\n"
        "hello\n"
    ),
    # Orange numbers its refusals; the number names the reason ("Client host rejected" does not).
    "orange": (
        "From: MAILER-DAEMON@mail.example.net (Mail Delivery System)\n"
        "To: bounce-77@b.example\n"
        "Subject: Undelivered Mail Returned to Sender\n"
        "\n"
        "I'm sorry to have to inform you that your message could not\n"
        "be delivered to one or more recipients.\n"
        "\n"
        "<max@orange.example>: host smtp-in.orange.example[192.0.2.7] said: 550 5.7.1\n"
        "    Client host rejected: LPN000_401 (in reply to RCPT TO command)\n"
        "\n"
    ),
    # OpenSMTPD's notices (bounce.c): a delay warning and a success report.
    "opensmtpd-delay": (
        "From: Mailer Daemon <MAILER-DAEMON@mx.example.net>\n"
        "To: bounce-77@b.example\n"
        "Subject: Delivery status notification: delay\n"
        "\n"
        "    Hi!\n\n    This is the MAILER-DAEMON, please DO NOT REPLY to this email.\n\n"
        "    A message is delayed for more than 4 hours for the following\n"
        "    list of recipients:\n\n"
        "una@example.org: Network error on destination MXs\n\n"
        "    Please note that this is only a temporary failure report.\n"
        "    The message is kept in the queue for up to 4 days.\n\n"
        "    Below is a copy of the original message:\n\nTo: una@example.org\n\nhello\n"
    ),
    "opensmtpd-success": (
        "From: Mailer Daemon <MAILER-DAEMON@mx.example.net>\n"
        "To: bounce-77@b.example\n"
        "Subject: Delivery status notification: success\n"
        "\n"
        "    Hi!\n\n    This is the MAILER-DAEMON, please DO NOT REPLY to this email.\n\n"
        "    Your message was successfully delivered to these recipients.\n\n"
        "una@example.org: delivery succeeded\n\n"
        "    Below is a copy of the original message:\n\nTo: una@example.org\n\nhello\n"
    ),
    # Sendmail V5: no report, a session transcript with a verdict line per recipient.
    "sendmail-v5": (
        "From: Mail Delivery Subsystem <MAILER-DAEMON@relay.example.net>\n"
        "To: bounce-77@b.example\n"
        "Subject: Returned mail: User unknown\n"
        "\n"
        "   ----- Transcript of session follows -----\n"
        "While talking to mx.example.org:\n"
        ">>> RCPT To:<lee@example.org>\n"
        "<<< 550 No such user here\n"
        "550 <lee@example.org>... User unknown\n"
        "550 nowhere.example (smtp)... 550 Host unknown\n"
        "554 <ray@nowhere.example>... 550 Host unknown (Authoritative answer from name server)\n"
        "\n"
        "   ----- Unsent message follows -----\n"
        "To: lee@example.org, ray@nowhere.example\n"
        "\n"
        "hello\n"
    ),
    "auto-reply": (
        "From: Ann <ann@example.org>\n"
        "To: bounce-77@b.example\n"
        "Subject: Out of Office: news\n"
        "Auto-Submitted: auto-replied\n"
        "\n"
        "I am away until Monday.\n"
    ),
    # RFC 3834: an automatic reply goes back to a null return path, as a bounce does.
    "vacation-null-sender": (
        "Return-Path: <>\n"
        "From: Tama Neko <tama@example.org>\n"
        "To: bounce-77@b.example\n"
        "Subject: Re: Spring news\n"
        "Auto-Submitted: auto-replied\n"
        "\n"
        "I am away until Monday. Your message about the delivery failed to reach me in time;\n"
        "for urgent matters write to help@example.org.\n"
    ),
    "vacation-classic": (
        "Return-Path: <>\n"
        "From: tama@example.org\n"
        "To: bounce-77@b.example\n"
        "Subject: away from my mail\n"
        "Precedence: junk\n"
        "\n"
        "I will not be reading my mail for a while. Delivery errors? Write to root@example.org.\n"
    ),
    # RFC 8098: a read receipt names a final recipient and comes to a null return path.
    "read-receipt": (
        "Return-Path: <>\n"
        "From: Ann <ann@example.org>\n"
        "To: bounce-77@b.example\n"
        "Subject: Read: news\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=disposition-notification; boundary="R"\n'
        "\n--R\nContent-Type: text/plain\n\n"
        "A receipt for your mail to ann@example.org: it was displayed, which says nothing of\n"
        "whether its delivery failed.\n"
        "\n--R\nContent-Type: message/disposition-notification\n\n"
        "Reporting-UA: ann.example.org; Mail Client 1.0\n"
        "Final-Recipient: rfc822; ann@example.org\n"
        "Disposition: manual-action/MDN-sent-manually; displayed\n"
        "\n--R--\n"
    ),
    # A notice-like subject or sender, but nothing in it failed.
    "shop-notice": (
        "From: Example Shop <orders@shop.example>\n"
        "To: bounce-77@b.example\n"
        "Subject: Delivery status of your order 1234\n"
        "\n"
        "Your parcel is on its way and will be delivered on Monday.\n"
        "Questions? Write to support@shop.example.\n"
    ),
    "quota-warning": (
        "From: postmaster@example.org\n"
        "To: bounce-77@b.example\n"
        "Subject: Your mailbox is almost full\n"
        "\n"
        "Dear user, your mailbox ann@example.org is almost full. Delete old mail or delivery of\n"
        "new mail will fail.\n"
    ),
    "newsletter-reply": (
        "From: Ann <ann@example.org>\n"
        "To: bounce-77@b.example\n"
        "Subject: Re: news\n"
        "\n"
        "Please remove me, my mailbox is full of your mail. Delivery failed to impress.\n"
    ),
}

EXPECTED = {
    "exim": ("jane@example.org", "5.1.1", "550", "userunknown", True, KIND_BOUNCE),
    "exim-quota": ("bob@example.org", "5.0.922", "", "mailboxfull", False, KIND_BOUNCE),
    "qmail": ("sam@example.com", "5.1.1", "", "userunknown", True, KIND_BOUNCE),
    "courier": ("kim@example.org", "5.1.1", "550", "userunknown", True, KIND_BOUNCE),
    "powermta": ("pat@example.org", "5.0.0", "550", "userunknown", True, KIND_BOUNCE),
    "gmail-state": ("kit@example.org", "5.0.911", "550", "userunknown", True, KIND_BOUNCE),
    "orange": ("max@orange.example", "5.7.1", "550", "authfailure", False, KIND_BOUNCE),
    "auto-reply": ("ann@example.org", "", "", "vacation", False, KIND_AUTOREPLY),
    "opensmtpd-delay": ("una@example.org", "4.0.944", "", "networkerror", False, KIND_BOUNCE),
    "opensmtpd-success": ("una@example.org", "2.0.0", "", "delivered", False, KIND_DELIVERY),
    "vacation-null-sender": ("tama@example.org", "", "", "vacation", False, KIND_AUTOREPLY),
    "vacation-classic": ("tama@example.org", "", "", "vacation", False, KIND_AUTOREPLY),
}


def test_relay_report_keeps_the_remote_code_and_expiry() -> None:
    lou, kai = parse_message(CASES["relay-expired"].encode())
    # The code inside the remote's reply, not the relay's own restatement before it.
    assert (lou.status, lou.reply_code, lou.reason) == ("5.2.2", "552", "mailboxfull")
    assert (kai.recipient, kai.action, kai.status, kai.reason) == (
        "kai@example.org",
        "failed",
        "5.0.947",
        "expired",
    )


def test_sendmail_v5_transcript_gives_each_recipient_its_own_verdict() -> None:
    lee, ray = parse_message(CASES["sendmail-v5"].encode())
    assert (lee.recipient, lee.status, lee.reply_code, lee.reason, lee.hard) == (
        "lee@example.org",
        "5.0.911",
        "550",
        "userunknown",
        True,
    )
    assert (ray.recipient, ray.reply_code, ray.reason, ray.hard) == (
        "ray@nowhere.example",
        "550",
        "hostunknown",
        True,
    )


def test_sendmail_transcript_names_recipients_without_brackets_too() -> None:
    bare = CASES["sendmail-v5"].replace("550 <lee@example.org>...", "550 lee@example.org...")
    bare = bare.replace("554 <ray@nowhere.example>...", "554 ray@nowhere.example...")
    lee, ray = parse_message(bare.encode())
    assert (lee.recipient, lee.reply_code, lee.reason, lee.hard) == (
        "lee@example.org",
        "550",
        "userunknown",
        True,
    )
    assert (ray.recipient, ray.reply_code, ray.reason) == (
        "ray@nowhere.example",
        "550",
        "hostunknown",
    )


def test_gmail_state_after_data_is_a_filter() -> None:
    (b,) = parse_message(CASES["gmail-state"].replace("(state 14)", "(state 18)").encode())
    assert (b.status, b.reason, b.hard) == ("5.0.910", "filtered", False)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_unseen_formats(name: str) -> None:
    (b,) = parse_message(CASES[name].encode())
    assert (b.recipient, b.status, b.reply_code, b.reason, b.hard, b.kind) == EXPECTED[name]


@pytest.mark.parametrize("name", ["read-receipt", "shop-notice", "quota-warning"])
def test_mail_that_reports_no_failure_is_not_a_bounce(name: str) -> None:
    # A read receipt says nothing of delivery; the others look like notices (subject, sender)
    # but carry no code, no returned message and no words of a failure.
    assert parse_message(CASES[name].encode()) == []


def test_a_reply_from_a_person_is_not_a_bounce() -> None:
    # Words like "failed" and "mailbox is full" in a human reply must not make it a bounce.
    assert parse_message(CASES["newsletter-reply"].encode()) == []


def test_exchange_notice_without_any_address_gives_nothing_rather_than_a_guess() -> None:
    assert parse_message(CASES["exchange-text"].encode()) == []


def garbled_report(field: str) -> bytes:
    return (
        "From: MAILER-DAEMON@mx.example\nTo: bounce-1@b.example\nMIME-Version: 1.0\n"
        "Content-Type: multipart/report; report-type=delivery-status; boundary=B\n\n"
        f"--B\nContent-Type: text/plain\n\n<{field}>: host mx said: 550 5.1.1 user unknown\n\n"
        "--B\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example\n\n"
        f"Final-Recipient: rfc822; {field}\nAction: failed\nStatus: 5.1.1\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\n\n--B--\n"
    ).encode()


@pytest.mark.parametrize(
    "field",
    ["foo bar@example.com", "a@bar@example.com", "x(c)bar@example.com", "a\0bar@example.com"],
)
def test_a_recipient_field_with_text_before_its_address_names_nobody(field: str) -> None:
    # Read as bar@example.com, the bounce of an address that never existed would list a person.
    assert parse_message(garbled_report(field)) == []
    [ok] = parse_message(garbled_report("Bar@Example.com"))
    assert (ok.recipient, ok.status) == ("bar@example.com", "5.1.1")


def test_arf_report_is_a_complaint_per_recipient() -> None:
    raw = (
        "From: fbl@isp.example\nTo: abuse@b.example\nSubject: FW: news\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="R"\n\n'
        "--R\nContent-Type: text/plain\n\nThis is an email abuse report.\n\n"
        "--R\nContent-Type: message/feedback-report\n\nFeedback-Type: abuse\nVersion: 1\n"
        "Original-Rcpt-To: <one@example.com>\nOriginal-Rcpt-To: <two@example.com>\n\n"
        "--R\nContent-Type: text/rfc822-headers\n\nFrom: news@b.example\nTo: one@example.com\n\n"
        "--R--\n"
    )
    got = parse_message(raw.encode())
    assert [(b.recipient, b.reason, b.kind, b.hard) for b in got] == [
        ("one@example.com", "feedback", KIND_COMPLAINT, False),
        ("two@example.com", "feedback", KIND_COMPLAINT, False),
    ]


def test_a_delay_warning_is_delayed_not_failed() -> None:
    raw = (
        "From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>\n"
        "To: bounce-77@b.example\nSubject: Delivery Status Notification (Delay)\n\n"
        "This is an automatically generated Delivery Status Notification\n\n"
        "THIS IS A WARNING MESSAGE ONLY.\n\nYOU DO NOT NEED TO RESEND YOUR MESSAGE.\n\n"
        "Delivery to the following recipient has been delayed:\n\n     pat@example.net\n\n"
        "Message will be retried for 2 more day(s)\n\n"
        "Technical details of temporary failure:\n"
        "The recipient server did not accept our requests to connect.\n"
    )
    (b,) = parse_message(raw.encode())
    # The server refused connections and the MTA keeps trying: running out of time (expired),
    # with Sisimai's temporary code for it since the notice gives none.
    assert (b.recipient, b.action, b.status, b.reply_code) == (
        "pat@example.net",
        "delayed",
        "4.0.947",
        "",
    )
    assert (b.reason, b.scope, b.hard, b.kind) == ("expired", "transport", False, KIND_BOUNCE)
