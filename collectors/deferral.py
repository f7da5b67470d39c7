"""Why a deferred recipient waits, in the log's words: the reason (Sisimai's name) the log road
gives the same reply, and beside it a finer class operators sort deferred mail by.

The reason comes from the log road's own event builder, so a queued recipient and its
`status=deferred` line can never be named apart; the class only refines that reason with the
reply's words (one table below), it never decides anything the classifier does not.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from mailpulse.collectors.qfile import DeferEntry


class Deferral(NamedTuple):
    reason: str  # Sisimai reason name, as bounce.classify gives it to the log line
    deferral_class: str  # one of DEFERRAL_CLASSES


_ANY = None
# (reasons the row is for, or any; words in the reply, or none needed; the class). The first
# row that fits wins. Greylisting is one kind of policy refusal to the classifier; TLS failures
# and timeouts are said by Postfix itself, without a reply code.
_CLASS_TABLE: tuple[tuple[frozenset[str] | None, re.Pattern[str] | None, str], ...] = (
    (_ANY, re.compile(r"gr[ae]ylist", re.I), "greylisting"),
    (_ANY, re.compile(r"\bTLS\b|\bSSL\b|certificate|STARTTLS", re.I), "tls"),
    (frozenset({"networkerror"}), None, "connection"),
    (frozenset({"hostunknown"}), None, "dns"),
    (frozenset({"securityerror"}), None, "tls"),
    (frozenset({"speeding", "toomanyconn"}), None, "ratelimit"),
    (frozenset({"blocked", "badreputation"}), None, "blocklisted"),
    (frozenset({"mailboxfull"}), None, "mailboxfull"),
    (
        _ANY,
        re.compile(r"name service error|host not found|domain not found|\bno MX\b", re.I),
        "dns",
    ),
    (
        _ANY,
        re.compile(
            r"connection (refused|timed out|reset)|timed out while|lost connection"
            r"|no route to host|network is unreachable",
            re.I,
        ),
        "connection",
    ),
)
PENDING = "pending"  # reasons not read yet (QueueSnapshot.deferral_coverage says how many are)
DEFERRAL_CLASSES = (*dict.fromkeys(row[2] for row in _CLASS_TABLE), "other", PENDING)


@lru_cache(maxsize=16384)
def deferral(status: str, text: str) -> Deferral:
    """The reason and class of one deferral: status as Postfix keeps it ("4.7.1", or ""), text
    the reply or Postfix's own words."""
    # Imported on first use: a sample that reads no reason never loads the log parser.
    from mailpulse.collectors.logparse import delivery_codes, reply_codes
    from mailpulse.collectors.maillog import reply_verdict

    # showq and old defer logs keep no status: the remote's own enhanced code is what Postfix
    # would have logged for its reply.
    status = status or reply_codes(text)[1]
    dsn, code, _logged = delivery_codes(status, text)
    reason = reply_verdict(dsn, code, text).reason
    for reasons, words, klass in _CLASS_TABLE:
        if (reasons is None or reason in reasons) and (words is None or words.search(text)):
            return Deferral(reason, klass)
    return Deferral(reason, "other")


UNKNOWN = Deferral("undefined", "other")  # no reason logged: what deferral("", "") says
UNREAD = Deferral("undefined", PENDING)


def deferral_of(entry: DeferEntry | None) -> Deferral:
    if entry is None:
        return UNKNOWN
    from mailpulse.bounce.classify import without_addresses

    # Replies often quote the recipient: without local parts, as the log road reads them, one
    # classification serves everyone who got the same answer.
    return deferral(entry.status, without_addresses(entry.reason))
