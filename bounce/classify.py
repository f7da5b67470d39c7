"""One classifier for reply texts and status codes, shared by logs, queue and DSNs.

Rules live in reasons.yaml: text rules first (text beats code where they disagree), then the
enhanced status code, then the reply code's class.
"""

from __future__ import annotations

import re
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
class _Rules:
    text: tuple[tuple[re.Pattern[str], str, str, bool], ...]
    status: dict[str, tuple[str, str]]
    hard: frozenset[str]


def load_rules_data() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("reasons.yaml").read_text(encoding="utf-8")
    data: dict[str, Any] = yaml.safe_load(text)
    return data


@lru_cache(maxsize=1)
def _rules() -> _Rules:
    data = load_rules_data()
    text = tuple(
        (
            re.compile("|".join(f"(?:{p})" for p in rule["patterns"]), re.I),
            rule["reason"],
            rule["scope"],
            bool(rule.get("weak")),
        )
        for rule in data["text_rules"]
    )
    status = {k: (v[0], v[1]) for k, v in data["status_rules"].items()}
    return _Rules(text, status, frozenset(data["hard_reasons"]))


def _class_of(status: str, reply_code: str) -> str:
    if status[:1] in "245" and status:
        return status[0]
    return reply_code[:1]


def pseudo_status(reason: str, klass: str = "5") -> str:
    """Sisimai's internal code for a reason ("5.0.911"), for bounces that carry no status."""
    detail = load_pseudo_codes().get(reason, 900)
    return f"{klass if klass in ('4', '5') else '5'}.0.{detail}"


@lru_cache(maxsize=1)
def load_pseudo_codes() -> dict[str, int]:
    codes: dict[str, int] = load_rules_data()["pseudo_status"]
    return codes


@lru_cache(maxsize=65536)
def classify(status: str = "", reply_code: str = "", text: str = "", *, stage: str = "") -> Verdict:
    """Reason, scope and hard flag for one failed (or delivered) recipient.

    stage is the SMTP command the remote answered ("rcpt", "data", ...) when known: a user
    refused only after the message was sent (DATA) exists, the message was filtered.
    """
    rules = _rules()
    klass = _class_of(status, reply_code)
    if klass == "2":
        return Verdict("delivered", "recipient", False)
    reason = scope = ""
    weak = False
    for pattern, r, s, w in rules.text:
        if pattern.search(text):
            reason, scope, weak = r, s, w
            break
    if (not reason or weak) and status.count(".") == 2:
        subject_detail = status.split(".", 1)[1]
        if subject_detail in rules.status:
            reason, scope = rules.status[subject_detail]
    if not reason:
        reason, scope = ("onhold", "transport") if klass == "4" else ("undefined", "transport")
    if stage == "data" and reason == "userunknown":
        reason, scope = "filtered", "recipient"
    elif stage == "mail" and reason in ("undefined", "onhold", "userunknown", "hostunknown"):
        # Refused at MAIL FROM: whatever the words, they are about our sender address.
        reason, scope = "rejected", "sender"
    return Verdict(reason, scope, is_hard(reason, klass))


def is_hard(reason: str, klass: str) -> bool:
    """Sisimai's hard bounce: a permanent recipient-level failure."""
    return reason in _rules().hard or (reason == "notaccept" and klass == "5")
