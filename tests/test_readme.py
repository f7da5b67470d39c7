"""The README's tables say what the code does: every reason with the classifier's own scope and
hard flag, and every exit code of mailpulse.exits."""

from __future__ import annotations

import re

from mailpulse.bounce.classify import _rules, is_hard

from mailpulse.exits import MEANINGS
from tests.conftest import REPO

README = (REPO / "README.md").read_text()
# DESIGN.md's vocabulary: Sisimai's reason names.
REASONS = (
    "userunknown",
    "hostunknown",
    "mailboxfull",
    "suspend",
    "hasmoved",
    "blocked",
    "badreputation",
    "spamdetected",
    "speeding",
    "toomanyconn",
    "expired",
    "networkerror",
    "policyviolation",
    "authfailure",
    "securityerror",
    "rejected",
    "norelaying",
    "mesgtoobig",
    "exceedlimit",
    "contenterror",
    "virusdetected",
    "systemerror",
    "systemfull",
    "mailererror",
    "notaccept",
    "syntaxerror",
    "notcompliantrfc",
    "filtered",
    "requireptr",
    "onhold",
    "undefined",
    "feedback",
    "vacation",
    "delivered",
)
# Outcomes not decided from a reply carry their own scope (dsn.py, classify.py).
OWN_SCOPE = {"feedback": "recipient", "vacation": "recipient", "delivered": "recipient"}


def table(header: str) -> list[list[str]]:
    start = README.index(header)
    rows = []
    for line in README[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_the_reason_table_lists_every_reason_with_its_scope_and_hardness() -> None:
    rows = {r[0]: r for r in table("| reason | scope | hard | what to do |")}
    assert sorted(rows) == sorted(REASONS)
    scopes = _rules().scopes
    for reason, (_, scope, hard, todo) in rows.items():
        assert scope == OWN_SCOPE.get(reason, scopes.get(reason, "transport")), reason
        want = {(False, False): "no", (True, True): "yes", (False, True): "5xx only"}
        assert hard == want[(is_hard(reason, "4"), is_hard(reason, "5"))], reason
        assert len(todo) > 10


def test_the_exit_code_table_is_mailpulse_exits() -> None:
    rows = table("| code | meaning |")
    assert [int(r[0]) for r in rows] == sorted(MEANINGS)
    assert all(re.search(r"\w", r[1]) for r in rows)
