"""The blacklist policy: one Outcome, what the store knows of its address, and the clock in; one
Decision out. Nothing here writes: the caller applies the decision to a store (or, in dry-run,
only reports it).

- Hard recipient failures (userunknown, hasmoved, notaccept with 5xx) blacklist the address for
  ttl_5xx, after an expired entry for ttl_5xx_repeat, and a third time until lifted.
- hostunknown blacklists the whole domain, with the soft lifetimes: the next mailing after it
  expires re-checks the domain. Only a log line can list a domain; a bounce mail only confirms.
- Soft recipient reasons (mailboxfull, suspend, expired) only after soft_repeat_days distinct
  days, each entry living twice as long as the one before.
- Sender, transport and message scope never blacklist; a 5.7.x burst from one node sends that
  node's new entries to quarantine, as does an open breaker of a domain group or the hourly cap.
- A bounce mail whose VERP signature did not verify never blacklists on its own: it only
  confirms an address the log already put on the list (its evidence is added there).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from mailpulse.bounce.publish import key_problem

if TYPE_CHECKING:
    from mailpulse.config import BlacklistConfig
    from mailpulse.events import Outcome

DAY_S = 86_400.0
HARD_REASONS = frozenset({"userunknown", "hasmoved", "notaccept"})
DOMAIN_REASONS = frozenset({"hostunknown"})
SOFT_REASONS = frozenset({"mailboxfull", "suspend", "expired"})
LISTABLE_SCOPES = frozenset({"recipient", "domain"})
# Second-level names under which registries hand out domains (co.uk, com.br, ne.jp): host
# unknown for user@co.uk must not list co.uk, which check_recipient_access matches for every
# domain under it (smtpd_access_maps is in parent_domain_matches_subdomains by default).
REGISTRY_LABELS = frozenset(
    {"ac", "co", "com", "edu", "gob", "go", "gov", "ltd", "mil", "ne", "net", "or", "org", "plc"}
)

# Why an entry was held in quarantine rather than put in force.
HOLD_BREAKER = "breaker"
HOLD_HOURLY_CAP = "hourly_cap"
HOLD_NODE_BURST = "node_burst"


@dataclass(frozen=True, slots=True)
class Evidence:
    """What said it: kept with every entry, so anyone can see why an address is listed."""

    reason: str
    dsn: str
    reply_code: str
    reply_text: str
    node: str
    time: float
    source: str  # log or dsn
    verified: bool  # a log line, or a DSN whose VERP signature checked
    queue_id: str = ""

    @classmethod
    def of(cls, o: Outcome) -> Evidence:
        verified = o.source == "log" or o.verp_verified
        return cls(
            o.reason,
            o.dsn,
            o.reply_code,
            o.reply_text[:500],
            o.node,
            o.time,
            o.source,
            verified,
            o.queue_id,
        )


@dataclass(slots=True)
class Entry:
    """One key of the table (an address, or a domain for hostunknown) with its evidence."""

    key: str
    user_id: str | None
    reason: str
    domain_group: str
    added: float
    expires: float | None  # None: until lifted
    strike: int  # 1 for the first entry of this key, 2 after one expired, ...
    kind: str  # hard, soft or domain
    evidence: list[Evidence] = field(default_factory=list)
    hold: str = ""  # quarantine only: why it was held

    def active(self, now: float) -> bool:
        return self.expires is None or self.expires > now


class StoreView(Protocol):
    """What the policy reads of a store about one key."""

    def entry(self, key: str) -> Entry | None: ...  # in force or expired, not quarantined
    def strikes(self, key: str, kind: str) -> int: ...  # entries it had of that kind, ever
    def soft_days(self, key: str) -> list[int]: ...  # distinct days with a soft failure
    def held(self, key: str) -> bool: ...  # waiting in quarantine


@dataclass(frozen=True, slots=True)
class Decision:
    action: str  # ignore, clear_soft, soft, add, quarantine, confirm
    key: str = ""
    why: str = ""  # for ignore: what kept it off the list; for quarantine: the hold
    entry: Entry | None = None
    soft_day: int = 0


IGNORE = "ignore"
CLEAR_SOFT = "clear_soft"
SOFT = "soft"
ADD = "add"
QUARANTINE = "quarantine"
CONFIRM = "confirm"


def domain_of(address: str) -> str:
    return address.rpartition("@")[2]


def normal_key(address: str) -> str:
    return address.strip().strip("<>").lower()


def kind_of(o: Outcome) -> str:
    """hard, soft or domain: which lifetimes a failure gets; "" when it never lists."""
    if o.reason in DOMAIN_REASONS:
        return "domain"
    if o.reason in HARD_REASONS and (o.hard or o.reply_code.startswith("5")):
        return "hard"
    return "soft" if o.reason in SOFT_REASONS else ""


class Breakers:
    """Sliding windows over recent outcomes: per domain group, per node, and the additions of
    the last hour. Kept in memory: after a restart the windows fill again from new outcomes."""

    def __init__(self, cfg: BlacklistConfig) -> None:
        self.cfg = cfg
        self.groups: dict[str, deque[tuple[float, bool]]] = {}
        self.node_blocks: dict[str, deque[tuple[float, bool]]] = {}
        self.additions: deque[tuple[float, bool]] = deque()

    def _trim(self, q: deque[tuple[float, bool]], now: float, span: float) -> None:
        while q and q[0][0] <= now - span:
            q.popleft()

    def note(self, group: str, hard: bool, now: float) -> None:
        """One final outcome to a domain group: delivered, or a hard failure counted once."""
        q = self.groups.setdefault(group, deque())
        q.append((now, hard))
        self._trim(q, now, self.cfg.breaker_window)

    def note_block(self, node: str, now: float) -> None:
        """A 5.7.x refusal of mail the node sent (from its log: a DSN names the node that
        received it, not the one refused)."""
        b = self.node_blocks.setdefault(node, deque())
        b.append((now, True))
        self._trim(b, now, self.cfg.breaker_window)

    def group_open(self, group: str, now: float) -> bool:
        q = self.groups.get(group)
        if not q:
            return False
        self._trim(q, now, self.cfg.breaker_window)
        hard = sum(1 for _, h in q if h)
        if hard > self.cfg.breaker_count:
            return True
        return hard >= self.cfg.breaker_min_failures and hard / len(q) >= self.cfg.breaker_share

    def node_blocked(self, node: str, now: float) -> bool:
        q = self.node_blocks.get(node)
        if not q:
            return False
        self._trim(q, now, self.cfg.breaker_window)
        return len(q) >= self.cfg.node_burst

    def capped(self, now: float) -> bool:
        self._trim(self.additions, now, 3600.0)
        return len(self.additions) >= self.cfg.hourly_cap

    def added(self, now: float) -> None:
        self.additions.append((now, True))

    def open_groups(self, now: float) -> dict[str, bool]:
        return {g: self.group_open(g, now) for g in list(self.groups)}


class Policy:
    def __init__(
        self,
        cfg: BlacklistConfig,
        group_of: Callable[[str], str] | None = None,  # domain -> domain group
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.group_of = group_of or (lambda domain: "other")
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self.breakers = Breakers(cfg)
        self.allow = {normal_key(a).lstrip("@") for a in cfg.allowlist}

    def _allowed(self, address: str) -> bool:
        return address in self.allow or domain_of(address) in self.allow

    def _lifetime(self, base: float) -> float:
        j = self.cfg.jitter_share
        return base * (1.0 + self.rng.uniform(-j, j)) if j else base

    def _hold(self, o: Outcome, group: str, now: float) -> str:
        """Why a new entry must wait in quarantine, or ""."""
        if o.source == "log" and o.node and self.breakers.node_blocked(o.node, now):
            return HOLD_NODE_BURST
        if self.breakers.group_open(group, now):
            return HOLD_BREAKER
        if self.breakers.capped(now):
            return HOLD_HOURLY_CAP
        return ""

    def decide(self, o: Outcome, store: StoreView, now: float) -> Decision:
        address = normal_key(o.recipient)
        group = self.group_of(domain_of(address))
        if o.source == "log" and o.node and o.dsn.startswith("5.7."):
            self.breakers.note_block(o.node, now)
        if o.status == "sent":
            if o.source == "log":
                self.breakers.note(group, False, now)
            return Decision(CLEAR_SOFT, address) if store.soft_days(address) else Decision(IGNORE)
        if o.status == "deferred" and o.reason not in SOFT_REASONS:
            return Decision(IGNORE, address, "deferred")
        if o.scope not in LISTABLE_SCOPES:
            return Decision(IGNORE, address, f"scope {o.scope}")
        kind = kind_of(o)
        if not kind:
            return Decision(IGNORE, address, f"reason {o.reason}")
        key = domain_of(address) if kind == "domain" else address
        problem = key_problem(key)
        if problem:
            return Decision(IGNORE, key, f"bad key: {problem}")
        if self._allowed(address):
            return Decision(IGNORE, key, "allowlist")
        ev = Evidence.of(o)
        current = store.entry(key)
        if current is not None and current.active(now):
            return Decision(CONFIRM, key, entry=current)
        if not ev.verified:
            return Decision(IGNORE, key, "unverified bounce")
        if o.source != "log" and store.held(key):
            # The bounce mail of a failure the log already sent to quarantine: Postfix mails one
            # for every recipient of an outage, and in its own process (pipe(8)) the breaker's
            # window is empty. It echoes the held failure; it is not a new one.
            return Decision(IGNORE, key, "held in quarantine")
        if kind == "domain" and key.count(".") == 1 and key.partition(".")[0] in REGISTRY_LABELS:
            return Decision(IGNORE, key, "a registry's suffix, not one domain")
        if kind == "domain" and o.source != "log":
            # A whole domain (and, in an access table, its subdomains) on one mail's word: a
            # VERP signature names a user, not the domain, so anyone holding one signed address
            # could list gmail.com. Our own DNS lookup, in the log, is the proof.
            return Decision(IGNORE, key, "domain from a bounce mail")
        if kind == "soft":
            day = int(now // DAY_S)  # when it was recorded: a clock tests control
            days = set(store.soft_days(key)) | {day}
            if len(days) < self.cfg.soft_repeat_days:
                return Decision(SOFT, key, soft_day=day)
        else:  # counted once: the DSN of a listed address confirmed above
            self.breakers.note(group, True, now)
        strike = store.strikes(key, kind) + 1
        if kind == "hard":
            base = [self.cfg.ttl_5xx, self.cfg.ttl_5xx_repeat][strike - 1] if strike <= 2 else None
        else:
            base = self.cfg.ttl_4xx * 2 ** min(strike - 1, 20)
        entry = Entry(
            key,
            o.user_id,
            o.reason,
            group,
            now,
            None if base is None else now + self._lifetime(base),
            strike,
            kind,
            [ev],
        )
        hold = self._hold(o, group, now)
        if hold:
            entry.hold = hold
            return Decision(QUARANTINE, key, hold, entry)
        self.breakers.added(now)
        return Decision(ADD, key, entry=entry)
