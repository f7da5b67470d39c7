"""The wordings each MTA writes into its own notices (from its sources and manuals, written out
here by hand), and what a Postfix operator reads in them. Checked twice: with every rule, and
with the rules written for that MTA's family left out, so a wording passes only if the shared
rules read it too (or the family's own rule is the only thing that can)."""

from __future__ import annotations

import pytest
from mailpulse.bounce.classify import classify, held_out

# (family, text, status, reply code, stage, reason). Stage is the SMTP command the notice says
# was refused ("" when it does not say).
WORDINGS = [
    # Exim: router, transport and retry messages
    ("exim", "Unrouteable address", "", "", "", "hostunknown"),
    ("exim", "all relevant MX records point to non-existent hosts", "", "", "", "hostunknown"),
    ("exim", "all host address lookups failed permanently", "", "", "", "hostunknown"),
    ("exim", "retry timeout exceeded", "", "", "", "expired"),
    (
        "exim",
        "retry time not reached for any host after a long failure period",
        "",
        "",
        "",
        "expired",
    ),
    ("exim", "an MX or SRV record indicated no SMTP service", "", "", "", "notaccept"),
    ("exim", 'Too many "Received" headers - suspected mail loop', "", "", "", "contenterror"),
    ("exim", "mailbox is full: retry timeout exceeded", "", "", "", "mailboxfull"),
    ("exim", "550 Unroutable sender address", "", "550", "mail", "rejected"),
    (
        "exim",
        "This message has been rejected because it has a potentially executable attachment",
        "",
        "550",
        "data",
        "policyviolation",
    ),
    (
        "exim",
        "Remote host mx.example.org [192.0.2.1] closed connection in response to initial"
        " connection",
        "",
        "",
        "",
        "networkerror",
    ),
    # Sendmail, new and V5
    ("sendmail", "550 5.1.1 <a@example.org>... User unknown", "5.1.1", "550", "", "userunknown"),
    (
        "sendmail",
        "Host unknown (Name server: mx.example.org: host not found)",
        "",
        "",
        "",
        "hostunknown",
    ),
    ("sendmail", "Cannot send message for 5 days", "", "", "", "expired"),
    ("sendmail", "Message could not be delivered for 5 days", "", "", "", "expired"),
    (
        "sendmail",
        "552 5.3.4 Message size exceeds fixed maximum message size",
        "5.3.4",
        "552",
        "",
        "mesgtoobig",
    ),
    ("sendmail", "554 5.4.6 Too many hops", "5.4.6", "554", "", "networkerror"),
    ("sendmail", "550 5.7.1 <a@example.org>... Relaying denied", "5.7.1", "550", "", "norelaying"),
    # OpenSMTPD's relay failures
    ("opensmtpd", "Envelope expired", "", "", "", "expired"),
    ("opensmtpd", "Destination seem to reject all mails", "", "", "", "notaccept"),
    ("opensmtpd", "Network error on destination MXs", "", "", "", "networkerror"),
    ("opensmtpd", "No valid route to remote MX", "", "", "", "networkerror"),
    ("opensmtpd", "Domain does not exist", "", "", "", "hostunknown"),
    ("opensmtpd", "Invalid domain name", "", "", "", "hostunknown"),
    ("opensmtpd", "Loop detected", "", "", "", "systemerror"),
    # Postfix's own texts
    (
        "postfix",
        "Host or domain name not found. Name service error for name=example.org type=MX:"
        " Host not found",
        "5.4.4",
        "",
        "",
        "hostunknown",
    ),
    ("postfix", "mail for example.org loops back to myself", "5.4.6", "", "", "systemerror"),
    (
        "postfix",
        "message size 20480000 exceeds size limit 10240000 of server mx.example.org",
        "5.3.4",
        "",
        "",
        "mesgtoobig",
    ),
    ("postfix", "mail forwarding loop for a@example.org", "5.4.6", "", "", "systemerror"),
    (
        "postfix",
        "cannot update mailbox /var/mail/a for user a. error writing message: Disk quota exceeded",
        "5.2.2",
        "",
        "",
        "mailboxfull",
    ),
    # qmail and its patches
    ("qmail", "Sorry, no mailbox here by that name. (#5.1.1)", "5.1.1", "", "", "userunknown"),
    (
        "qmail",
        "Sorry, I couldn't find any host named example.org. (#5.1.2)",
        "5.1.2",
        "",
        "",
        "hostunknown",
    ),
    (
        "qmail",
        "Sorry, I wasn't able to establish an SMTP connection. (#4.4.1)",
        "4.4.1",
        "",
        "",
        "networkerror",
    ),
    (
        "qmail",
        "Sorry, that domain isn't in my list of allowed rcpthosts. (#5.7.1)",
        "5.7.1",
        "",
        "",
        "norelaying",
    ),
    (
        "qmail",
        "This message is looping: it already has my Delivered-To line. (#5.4.6)",
        "5.4.6",
        "",
        "",
        "systemerror",
    ),
    (
        "qmail",
        "I'm not going to try again; this message has been in the queue too long.",
        "",
        "",
        "",
        "expired",
    ),
    ("qmail", "Mailaddress is administratively disabled. (#5.2.1)", "5.2.1", "", "", "suspend"),
    (
        "qmail",
        "The users mailfolder is over the allowed quota (size). (#5.2.2)",
        "5.2.2",
        "",
        "",
        "mailboxfull",
    ),
    # Exchange and X.400 gateways
    ("microsoft", "The recipient name is not recognized", "", "", "data", "userunknown"),
    (
        "microsoft",
        "The e-mail account does not exist at the organization this message was sent to.",
        "",
        "",
        "",
        "userunknown",
    ),
    (
        "microsoft",
        "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found",
        "5.1.1",
        "550",
        "",
        "userunknown",
    ),
    (
        "microsoft",
        "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact"
        " your Internet service provider.",
        "5.7.1",
        "550",
        "",
        "blocked",
    ),
    # Domino and Lotus Notes directories
    (
        "domino",
        "User Tama (tama@example.org) not listed in Domino Directory",
        "",
        "",
        "data",
        "userunknown",
    ),
    (
        "domino",
        "User Tama (tama@example.org) not listed in public Name & Address Book",
        "",
        "",
        "",
        "userunknown",
    ),
    # Gmail and Google Workspace
    (
        "google",
        "The email account that you tried to reach does not exist.",
        "5.1.1",
        "550",
        "",
        "userunknown",
    ),
    (
        "google",
        "The IP you're using to send mail is not authorized to send email directly to our"
        " servers. Please use the SMTP relay at your service provider instead.",
        "5.7.1",
        "550",
        "",
        "blocked",
    ),
    (
        "google",
        "You may not have permission to post messages to the group.",
        "",
        "",
        "",
        "rejected",
    ),
    # Yahoo
    (
        "yahoo",
        "421 4.7.0 [TSS04] Messages from 192.0.2.25 temporarily deferred due to user complaints",
        "4.7.0",
        "421",
        "mail",
        "badreputation",
    ),
    (
        "yahoo",
        "554 delivery error: dd This user doesn't have a yahoo.com account",
        "",
        "554",
        "rcpt",
        "userunknown",
    ),
    (
        "yahoo",
        "554 delivery error: dd Sorry your message cannot be delivered. This account has"
        " been disabled or discontinued [#102].",
        "",
        "554",
        "",
        "suspend",
    ),
    # IMail, McAfee, MessageLabs, Verizon, au
    ("imail", "User mailbox exceeds allowed size", "", "", "", "mailboxfull"),
    ("imail", "Delivery failed 20 attempts", "", "", "", "expired"),
    ("mcafee", "550 <a@example.org>... User not exist", "", "550", "rcpt", "userunknown"),
    (
        "messagelabs",
        "553-you are trying to use me [server-1.example.net] as a relay, but I have"
        " not been configured to let you do this",
        "",
        "553",
        "",
        "norelaying",
    ),
    (
        "verizon",
        "550 - Requested action not taken: no such user here",
        "",
        "550",
        "rcpt",
        "userunknown",
    ),
    ("au", "The user(s) account is disabled.", "", "", "", "suspend"),
    ("au", "The user(s) account is temporarily over quota.", "", "", "", "mailboxfull"),
]


@pytest.mark.parametrize(("family", "text", "status", "reply", "stage", "reason"), WORDINGS)
def test_each_mta_wording_with_and_without_its_family_rules(
    family: str, text: str, status: str, reply: str, stage: str, reason: str
) -> None:
    assert classify(status, reply, text, stage=stage).reason == reason
    with held_out(family):
        assert classify(status, reply, text, stage=stage).reason == reason
