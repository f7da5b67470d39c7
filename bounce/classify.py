"""One classifier for reply texts and status codes, shared by logs, queue and DSNs.

Rules live in reasons.yaml: text rules first (text beats code where they disagree), then the
enhanced status code, then the reply code's class. A rule taken from one MTA's or provider's own
wording names it as its family; held_out() builds the rules without some families, to see how
the rest does on mail of a kind it has not been told about.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml


@dataclass(frozen=True, slots=True)
class Verdict:
    reason: str
    scope: str
    hard: bool


@dataclass(frozen=True, slots=True)
class _TextRule:
    pattern: re.Pattern[str]
    reason: str
    scope: str
    weak: bool  # yields to any status code that has a rule
    yields_to: frozenset[str]  # reasons of status codes that win over this wording
    firm: bool  # a user-unknown wording that stays so whatever the stage


@dataclass(frozen=True, slots=True)
class _CodeTable:
    """A provider's own error numbers in the reply text (Orange's "OFR_506", "LPN000_630")."""

    pattern: re.Pattern[str]
    codes: dict[str, str]
    default: str | None  # for a number not in the table; None: the words decide


@dataclass(frozen=True, slots=True)
class _Rules:
    text: tuple[_TextRule, ...]
    status: dict[str, tuple[str, str]]
    hard: frozenset[str]
    tables: tuple[_CodeTable, ...]
    scopes: dict[str, str]


# libyaml's safe loader when PyYAML was built with it: the same data, ten times faster to load
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_rules_data() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("reasons.yaml").read_text(encoding="utf-8")
    data: dict[str, Any] = yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 (a safe loader)
    return data


# Families whose own rules are left out (held_out); empty in normal use.
_held_out: frozenset[str] = frozenset()


def family_known(family: str) -> bool:
    """Whether the rules of this MTA or provider are in use (not held out)."""
    return family not in _held_out


@contextmanager
def held_out(*families: str) -> Iterator[None]:
    """Classify (and parse bounces) as if the rules of these families had never been written.

    For measuring (tests/test_bounce_heldout.py): it swaps the rules of the whole process, so
    nothing else may classify meanwhile."""
    global _held_out
    before = _held_out
    _held_out = frozenset(families)
    _forget()
    try:
        yield
    finally:
        _held_out = before
        _forget()


def _forget() -> None:
    _rules.cache_clear()
    classify.cache_clear()


@lru_cache(maxsize=1)
def _rules() -> _Rules:
    data = load_rules_data()
    text = tuple(
        _TextRule(
            re.compile("|".join(f"(?:{p})" for p in rule["patterns"]), re.I),
            rule["reason"],
            rule["scope"],
            bool(rule.get("weak")),
            frozenset(rule.get("yields_to", ())),
            bool(rule.get("firm")),
        )
        for rule in data["text_rules"]
        if family_known(rule.get("family", ""))
    )
    status = {k: (v[0], v[1]) for k, v in data["status_rules"].items()}
    scopes: dict[str, str] = {}
    for r in text:
        scopes.setdefault(r.reason, r.scope)
    for reason, scope in status.values():
        scopes.setdefault(reason, scope)
    tables = tuple(
        _CodeTable(
            re.compile(t["pattern"], re.I),
            {str(k): v for k, v in t["codes"].items()},
            t.get("default"),
        )
        for t in data.get("provider_codes", ())
        if family_known(t.get("family", ""))
    )
    return _Rules(text, status, frozenset(data["hard_reasons"]), tables, scopes)


def _status_rule(rules: _Rules, status: str) -> tuple[str, str] | None:
    """The rule for a full code ("5.7.1") first, then for its subject and detail ("7.1")."""
    if status.count(".") != 2:
        return None
    return rules.status.get(status) or rules.status.get(status.split(".", 1)[1])


def _class_of(status: str, reply_code: str) -> str:
    if status[:1] in "245" and status:
        return status[0]
    return reply_code[:1]


def pseudo_status(reason: str, klass: str = "5") -> str:
    """Sisimai's internal code for a reason ("5.0.911"), for bounces that carry no status."""
    klass = klass if klass in ("4", "5") else "5"
    permanent, temporary = load_pseudo_codes()
    detail = (klass == "4" and temporary.get(reason)) or permanent.get(reason, 900)
    return f"{klass}.0.{detail}"


@lru_cache(maxsize=1)
def load_pseudo_codes() -> tuple[dict[str, int], dict[str, int]]:
    data = load_rules_data()
    return data["pseudo_status"], data.get("pseudo_status_temporary", {})


# The local part of an address (RFC 5322 atext and dots: the whole run of them before an "@"
# that a domain follows), matched in the reversed text: there every match starts with the "@"
# itself, which the engine finds by a fast literal search instead of trying every position of
# the text (ten times faster on a log reply, and linear however long a run without "@" is).
_REVERSED_LOCAL_PART_RE = re.compile(r"@(?<=[\w-]@)[\w.!#$%&'*+/=?^`{|}~-]+")


def without_addresses(text: str) -> str:
    """The text a classification reads: every address's local part taken out, its domain kept.

    A mailbox name must never decide a reason ("nospam@", "full-u7@"), and without it equal
    replies to different users share one cached verdict. The domain stays: a few receivers are
    known by the domain they name (au/KDDI's "<a@ezweb.ne.jp>: User unknown").
    """
    if "@" not in text:
        return text
    return _REVERSED_LOCAL_PART_RE.sub("@", text[::-1])[::-1]


# Postfix's "(in reply to RCPT TO command)" and Exim's "after RCPT TO:" in a log line's text.
STAGE_IN_TEXT_RE = re.compile(
    r"(?:in reply to|after) (end of data|data|rcpt|mail|ehlo|helo)\b", re.I
)
_STAGE_WORDS = {"end of data": "data"}


@lru_cache(maxsize=65536)
def classify(status: str = "", reply_code: str = "", text: str = "", *, stage: str = "") -> Verdict:
    """Reason, scope and hard flag for one failed (or delivered) recipient.

    stage is the SMTP command the remote answered ("rcpt", "data", ...) when known: user-unknown
    words without an x.1.x code are a missing mailbox only when RCPT TO was refused.
    """
    rules = _rules()
    if not stage:
        m = STAGE_IN_TEXT_RE.search(text)
        stage = _STAGE_WORDS.get(m.group(1).lower(), m.group(1).lower()) if m else ""
    klass = _class_of(status, reply_code)
    if klass == "2":
        return Verdict("delivered", "recipient", False)
    for table in rules.tables:
        m = table.pattern.search(text)
        code_reason = table.codes.get(m.group("code"), table.default) if m else None
        if code_reason:
            return verdict_of(code_reason, klass)
    matched = next((r for r in rules.text if r.pattern.search(text)), None)
    by_status = _status_rule(rules, status)
    reason, scope = (matched.reason, matched.scope) if matched else ("", "")
    if by_status and (not matched or matched.weak or by_status[0] in matched.yields_to):
        reason, scope = by_status
    if not reason:
        reason, scope = ("onhold", "transport") if klass == "4" else ("undefined", "transport")
    if stage == "mail" and reason in ("undefined", "onhold", "userunknown", "hostunknown"):
        # Refused at MAIL FROM: whatever the words, they are about our sender address.
        reason, scope = "rejected", "sender"
    elif stage in ("ehlo", "helo") and reason in ("undefined", "onhold"):
        # Refused at the greeting, before any address: the sending host is not wanted.
        reason, scope = "blocked", "sender"
    elif reason == "userunknown" and not (matched and matched.firm):
        # An x.1.x code (about the address) or a refused RCPT TO proves the mailbox is missing;
        # the same words with neither (after DATA, or no sign of when) may be a filter's answer.
        proven = stage == "rcpt" or status.split(".")[1:2] == ["1"]
        if not proven:
            reason, scope = "filtered", "recipient"
    return Verdict(reason, scope, is_hard(reason, klass))


def verdict_of(reason: str, klass: str = "5") -> Verdict:
    """The verdict for a reason decided elsewhere (an MTA's own bounce category)."""
    return Verdict(reason, _rules().scopes.get(reason, "transport"), is_hard(reason, klass))


def is_hard(reason: str, klass: str) -> bool:
    """Sisimai's hard bounce: a permanent recipient-level failure."""
    return reason in _rules().hard or (reason == "notaccept" and klass == "5")
