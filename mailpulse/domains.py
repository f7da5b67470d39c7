"""Domain groups: the cardinality-safe label for a destination (DESIGN.md, "Words").

A shipped map of the big mailbox providers (by domain, and by the MX host names Postfix logs
as relay=), overridable from config; everything else is `other` unless the agent promotes it
as one of its top-K destinations.
"""

from __future__ import annotations

from collections.abc import Mapping

# group -> recipient domains. Regional variants of a provider share its group.
PROVIDER_DOMAINS: dict[str, tuple[str, ...]] = {
    "gmail": ("gmail.com", "googlemail.com"),
    "microsoft": (
        "outlook.com",
        "hotmail.com",
        "live.com",
        "msn.com",
        "hotmail.fr",
        "hotmail.co.uk",
        "live.fr",
        "outlook.fr",
        "hotmail.de",
        "hotmail.it",
    ),
    "yahoo": (
        "yahoo.com",
        "yahoo.fr",
        "yahoo.co.uk",
        "yahoo.de",
        "ymail.com",
        "rocketmail.com",
        "aol.com",
        "aim.com",
        "verizon.net",
    ),
    "apple": ("icloud.com", "me.com", "mac.com"),
    "gmx": ("gmx.de", "gmx.net", "gmx.com", "gmx.at", "gmx.ch", "web.de"),
    "orange": ("orange.fr", "wanadoo.fr"),
    "mailru": ("mail.ru", "bk.ru", "list.ru", "inbox.ru"),
    "yandex": ("yandex.ru", "yandex.com", "ya.ru"),
    "comcast": ("comcast.net",),
    "free": ("free.fr",),
    "sfr": ("sfr.fr", "neuf.fr"),
    "laposte": ("laposte.net",),
    "tonline": ("t-online.de",),
}

# MX host suffixes, for relays of domains hosted by a provider (Google Workspace, Microsoft 365).
PROVIDER_MX_SUFFIXES: dict[str, str] = {
    ".google.com": "gmail",
    ".googlemail.com": "gmail",
    ".outlook.com": "microsoft",
    ".protection.outlook.com": "microsoft",
    ".yahoodns.net": "yahoo",
    ".icloud.com": "apple",
    ".gmx.net": "gmx",
    ".web.de": "gmx",
    ".mail.ru": "mailru",
    ".yandex.net": "yandex",
}

OTHER = "other"


class DomainGroups:
    """domain -> group, from the shipped map plus the operator's own (config wins)."""

    def __init__(self, extra: Mapping[str, str] | None = None) -> None:
        self._by_domain: dict[str, str] = {
            d: g for g, domains in PROVIDER_DOMAINS.items() for d in domains
        }
        if extra:
            self._by_domain.update({d.lower(): g for d, g in extra.items()})

    def group(self, domain: str, relay: str = "") -> str:
        d = domain.lower().rstrip(".")
        g = self._by_domain.get(d)
        if g:
            return g
        if relay:
            host = relay.split("[", 1)[0].lower()
            for suffix, group in PROVIDER_MX_SUFFIXES.items():
                if host.endswith(suffix):
                    return group
        return OTHER


DEFAULT_GROUPS = DomainGroups()
