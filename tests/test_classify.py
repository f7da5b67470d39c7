"""The shared classifier: every rule of reasons.yaml on the examples that justify it, and the
rules around the text (code fallback, hard flag, SMTP stage)."""

from __future__ import annotations

import pytest
from mailpulse.bounce.classify import Verdict, classify, load_rules_data, pseudo_status

RULES = load_rules_data()
EXAMPLES = [
    (rule["reason"], rule["scope"], example)
    for rule in RULES["text_rules"]
    for example in rule["examples"]
]


@pytest.mark.parametrize(("reason", "scope", "text"), EXAMPLES)
def test_every_rule_example(reason: str, scope: str, text: str) -> None:
    # Codes taken from the example itself when it has them, as a log line would give them.
    parts = text.split()
    reply = parts[0] if parts and parts[0][:3].isdigit() and len(parts[0]) == 3 else ""
    status = parts[1] if reply and len(parts) > 1 and parts[1].count(".") == 2 else ""
    # Examples are answers to RCPT TO, where most refusals come.
    got = classify(status, reply, text, stage="rcpt")
    assert (got.reason, got.scope) == (reason, scope)


@pytest.mark.parametrize(
    "text",
    [e for rule in RULES["text_rules"] if rule.get("firm") for e in rule["examples"]],
)
def test_firm_wordings_hold_after_data(text: str) -> None:
    # The receiving system's own directory answered: proof even after DATA.
    assert classify("", "", text, stage="data").reason == "userunknown"


def test_every_rule_has_an_example() -> None:
    assert all(rule["examples"] for rule in RULES["text_rules"])


def test_text_beats_code() -> None:
    # 5.1.1 alone is a user unknown; the words say rate limiting.
    assert classify("5.1.1", "550", "550 5.1.1 <a@example.com>: too many recipients this hour") == (
        Verdict("speeding", "sender", False)
    )
    assert classify("5.1.1", "550", "").reason == "userunknown"


@pytest.mark.parametrize(
    ("status", "reply", "text", "expected"),
    [
        ("5.1.1", "550", "", Verdict("userunknown", "recipient", True)),
        ("4.1.1", "450", "", Verdict("userunknown", "recipient", True)),  # hard whatever the class
        ("5.1.2", "", "", Verdict("hostunknown", "domain", True)),
        ("5.7.1", "554", "blocked using zen.spamhaus.org", Verdict("blocked", "sender", False)),
        ("5.2.2", "552", "", Verdict("mailboxfull", "recipient", False)),
        ("5.7.27", "550", "", Verdict("notaccept", "domain", True)),  # notaccept + 5xx is hard
        ("5.7.1", "550", "Access denied", Verdict("securityerror", "sender", False)),
        ("4.7.1", "450", "Try again later", Verdict("blocked", "sender", False)),
        ("5.1.10", "550", "", Verdict("notaccept", "domain", True)),  # RFC 7505 null MX
        ("5.2.1", "550", "", Verdict("filtered", "recipient", False)),
        ("4.2.1", "450", "", Verdict("suspend", "recipient", False)),
        ("5.5.3", "552", "", Verdict("toomanyconn", "sender", False)),
        ("4.4.6", "450", "", Verdict("networkerror", "transport", False)),
        ("4.7.27", "450", "", Verdict("notaccept", "domain", False)),
        ("2.0.0", "250", "Ok", Verdict("delivered", "recipient", False)),
        ("", "450", "something nobody wrote a rule for", Verdict("onhold", "transport", False)),
        ("", "550", "something nobody wrote a rule for", Verdict("undefined", "transport", False)),
    ],
)
def test_code_fallback_and_hard_flag(status: str, reply: str, text: str, expected: Verdict) -> None:
    assert classify(status, reply, text) == expected


def test_stage_refines_the_verdict() -> None:
    assert classify("5.0.0", "550", "User unknown", stage="data").reason == "filtered"
    assert classify("5.0.0", "550", "User unknown", stage="rcpt").reason == "userunknown"
    # The x.1.1 code is explicit whenever it comes (servers that check recipients after DATA).
    assert classify("5.1.1", "550", "User unknown", stage="data").reason == "userunknown"
    assert classify("5.1.1", "550", "User unknown", stage="rcpt").reason == "userunknown"
    assert classify("", "550", "Denied", stage="mail").reason == "rejected"
    assert classify("", "550", "Rejected", stage="ehlo") == Verdict("blocked", "sender", False)
    # A log line's text says the stage itself.
    postfix = (
        "host mx.example.org said: 550 <a@example.org>: User unknown (in reply to RCPT TO command)"
    )
    assert classify("", "550", postfix).reason == "userunknown"
    assert classify("", "550", postfix.replace("RCPT TO", "end of DATA")).reason == "filtered"
    # Microsoft's x.1.10 for a missing user: an address status, so the words are proof.
    text = "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"
    assert classify("5.1.10", "550", text).reason == "userunknown"


def test_positional_and_keyword_calls_agree_and_are_cached() -> None:
    a = classify("5.1.1", "550", "User unknown")
    b = classify(status="5.1.1", reply_code="550", text="User unknown")
    assert a == b
    assert classify.cache_info().hits >= 1  # lru_cached: it is called per log line


def test_pseudo_status_for_bounces_without_a_code() -> None:
    assert pseudo_status("userunknown", "5") == "5.0.911"
    assert pseudo_status("expired", "4") == "4.0.947"
    assert pseudo_status("no-such-reason", "") == "5.0.900"
    assert pseudo_status("filtered", "4") == "4.0.924"  # its own temporary code
    assert pseudo_status("userunknown", "4") == "4.0.911"


def test_weak_wording_yields_to_the_status_code() -> None:
    text = "550 Requested action not taken: mailbox unavailable"
    assert classify("5.1.1", "550", text).reason == "userunknown"
    assert classify("", "550", text).reason == "filtered"


@pytest.mark.parametrize("text", ["a." * 30000, "ab-" * 20000, "x" * 60000, "550 " * 15000])
def test_long_adversarial_texts_get_a_verdict(text: str) -> None:
    # Dotted or hyphenated runs once made a hostname pattern backtrack quadratically.
    assert classify("", "550", text) == Verdict("undefined", "transport", False)


PROVIDER_EXAMPLES = [
    (reason, text)
    for table in RULES.get("provider_codes", [])
    for text, reason in table["examples"]
]


@pytest.mark.parametrize(("reason", "text"), PROVIDER_EXAMPLES)
def test_provider_code_tables(reason: str, text: str) -> None:
    # The provider's number wins over the words ("Client host rejected" alone is blocked).
    assert classify("", text.split()[0], text).reason == reason


def test_user_unknown_words_need_a_code_or_the_rcpt_stage() -> None:
    text = "550 <a@example.org>: User unknown"
    assert classify("", "550", text, stage="rcpt") == Verdict("userunknown", "recipient", True)
    assert classify("5.1.1", "550", text) == Verdict("userunknown", "recipient", True)
    # No code, no stage, or after DATA: a filter may answer so; not proof of a missing mailbox.
    assert classify("", "550", text) == Verdict("filtered", "recipient", False)
    assert classify("5.0.0", "550", text) == Verdict("filtered", "recipient", False)
    assert classify("", "550", text, stage="data").reason == "filtered"
    assert classify("", "550", "550 : User unknown") == Verdict("filtered", "recipient", False)
    # The reporting system's own directory lookup is proof whatever the stage.
    assert classify("", "", "The recipient name is not recognized").reason == "userunknown"


def test_size_wording_under_the_administrative_limit_code() -> None:
    text = "552 5.2.3 Message size exceeds fixed maximum message size (10485760)"
    assert classify("5.2.3", "552", text).reason == "exceedlimit"
    assert classify("5.3.4", "552", text).reason == "mesgtoobig"


def test_a_quarantine_names_a_virus_when_there_is_one() -> None:
    assert classify("", "550", "550 Virus found; message quarantined").reason == "virusdetected"
    assert classify("", "550", "550 Message quarantined by the filter").reason == "spamdetected"
