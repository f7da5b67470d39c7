"""What the scripted remote MX answers, by the recipient's local part.

A recipient `<kind>-u<user_id>@<domain>` gets the answer of its kind. The table also says what
Postfix will make of it, which is what a campaign plan records as the expected outcome.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Behaviour:
    kind: str
    stage: str  # "rcpt", "data", or "connect" when it does not answer at all
    code: int
    enhanced: str
    text: str  # "{rcpt}" is replaced by the recipient address
    status: str  # the final status= Postfix logs for it
    reason: str  # Sisimai reason the analysis must find
    weight: int  # share of a campaign's recipients

    def reply(self, rcpt: str) -> str:
        return f"{self.code} {self.enhanced} {self.text.format(rcpt=rcpt)}"


BEHAVIOURS: dict[str, Behaviour] = {
    b.kind: b
    for b in (
        Behaviour("ok", "rcpt", 250, "2.1.5", "Ok", "sent", "delivered", 70),
        Behaviour(
            "unknown",
            "rcpt",
            550,
            "5.1.1",
            "<{rcpt}>: Recipient address rejected: User unknown in virtual mailbox table",
            "bounced",
            "userunknown",
            8,
        ),
        Behaviour(
            "full",
            "rcpt",
            452,
            "4.2.2",
            "<{rcpt}>: Recipient address rejected: Mailbox full",
            "deferred",
            "mailboxfull",
            4,
        ),
        Behaviour(
            "dnsbl",
            "rcpt",
            554,
            "5.7.1",
            "Service unavailable; Client host [127.0.0.1] blocked using zen.spamhaus.org;"
            " https://www.spamhaus.org/query/ip/127.0.0.1",
            "bounced",
            "blocked",
            3,
        ),
        Behaviour(
            "ratelimit",
            "rcpt",
            421,
            "4.7.0",
            "Too many messages from 127.0.0.1, try again later",
            "deferred",
            "speeding",
            3,
        ),
        Behaviour(
            "grey",
            "rcpt",
            450,
            "4.7.1",
            "<{rcpt}>: Recipient address rejected: Greylisted, see"
            " https://postgrey.schweikert.ch/help/lab.html",
            "deferred",
            "policyviolation",
            4,
        ),
        Behaviour(
            "disabled",
            "rcpt",
            550,
            "5.2.1",
            "The email account that you tried to reach is disabled",
            "bounced",
            "suspend",
            4,
        ),
        Behaviour(
            "spam",
            "data",
            550,
            "5.7.1",
            "Message rejected as spam",
            "bounced",
            "spamdetected",
            4,
        ),
        # A big provider deferring a sending host its users complained about (Yahoo's words).
        # Weight 0: campaigns never draw it (their plans stay as they were); a recipient named
        # complaints-u<id> gets it.
        Behaviour(
            "complaints",
            "rcpt",
            421,
            "4.7.0",
            "[TSS04] Messages from 127.0.0.1 temporarily deferred due to unexpected volume or"
            " user complaints - 4.16.55.1; see https://postmaster.example/421-ts04",
            "deferred",
            "badreputation",
            0,
        ),
    )
}

# What every recipient of a domain in outage gets, whatever its kind.
OUTAGE = Behaviour(
    "outage",
    "rcpt",
    550,
    "5.1.1",
    "<{rcpt}>: Recipient address rejected: User unknown",
    "bounced",
    "userunknown",
    0,
)

# What every recipient gets while the remote MX is down: Postfix's own connection failure,
# no SMTP reply at all.
MX_DOWN = Behaviour(
    "mx-down",
    "connect",
    0,
    "4.4.1",
    "connect to {rcpt}: Connection refused",
    "deferred",
    "networkerror",
    0,
)

# Recipient domains of a campaign, with the share of recipients each gets, roughly as a
# European bulk sender sees them.
DOMAINS: dict[str, int] = {
    "gmail.com": 30,
    "yahoo.com": 8,
    "outlook.com": 8,
    "hotmail.com": 8,
    "aol.com": 3,
    "icloud.com": 5,
    "gmx.de": 8,
    "web.de": 7,
    "orange.fr": 6,
    "mail.ru": 5,
    "yandex.ru": 4,
    "comcast.net": 8,
}


def kind_of(local_part: str) -> str:
    return local_part.split("-", 1)[0].lower()
