"""The event model every collector produces and every consumer reads (DESIGN.md, "Words")."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the bounce side loads the email package: only where outcomes are made
    from mailpulse.bounce.dsn import Bounce
    from mailpulse.bounce.verp import VerpId, VerpSettings

# Final and intermediate outcomes of one recipient, as Postfix logs them in status=.
STATUSES = ("sent", "deferred", "bounced", "expired")
FINAL_STATUSES = frozenset(STATUSES) - {"deferred"}  # the recipient's delivery is over

# Delivery agents whose status= lines are recipient outcomes.
DELIVERY_AGENTS = frozenset(
    {"smtp", "lmtp", "local", "virtual", "pipe", "error", "retry", "discard", "relay"}
)


@dataclass(slots=True)
class DeliveryEvent:
    """One recipient's outcome from one delivery agent."""

    time: float  # POSIX seconds
    node: str
    instance: str  # syslog name before the slash: "postfix", "postfix-bulk1"
    program: str  # service after the instance: "smtp", "submission/smtpd"
    queue_id: str
    recipient: str
    domain: str
    relay: str
    status: str  # one of STATUSES
    dsn: str  # enhanced status as the remote gave it ("5.1.1")
    reply_code: str  # "550", or "" when no SMTP reply was involved
    reply_text: str
    reason: str  # Sisimai reason name
    scope: str  # recipient, domain, message, sender, transport
    hard: bool
    delay: float
    delays: tuple[float, float, float, float] | None = None
    orig_recipient: str = ""
    sender: str = ""
    size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one recipient, whether a log line or a bounce mail said it: the one
    record the blacklist reads."""

    recipient: str
    user_id: str | None  # from our VERP address; None when it is not one
    verp_verified: bool  # its signature checked under our key: only then may a DSN blacklist
    status: str  # one of STATUSES
    dsn: str  # enhanced status code ("5.1.1")
    reply_code: str  # "550", or "" when no SMTP reply was involved
    reply_text: str
    reason: str
    scope: str
    hard: bool
    node: str
    instance: str
    time: float  # POSIX seconds
    source: str  # "log" or "dsn"
    queue_id: str  # "" when the bounce mail does not say


def outcome_of_event(ev: DeliveryEvent, verp: VerpSettings | None = None) -> Outcome:
    """A log delivery event; the user is read from its envelope sender (unsigned addresses
    without a key)."""
    from mailpulse.bounce.verp import VerpSettings

    who = (verp or VerpSettings()).user_of(ev.sender) if ev.sender else None
    return Outcome(
        ev.recipient,
        who.user_id if who else None,
        who.verified if who else False,
        ev.status,
        ev.dsn,
        ev.reply_code,
        ev.reply_text,
        ev.reason,
        ev.scope,
        ev.hard,
        ev.node,
        ev.instance,
        ev.time,
        "log",
        ev.queue_id,
    )


# A DSN's Action (or the parser's kind of report) as the log's status would say it. A complaint
# or an auto-reply came from a mailbox the mail reached; any other action is a failure.
_STATUS_OF_ACTION = dict.fromkeys(
    ("delivered", "relayed", "expanded", "deliverable", "complaint", "autoreply"), "sent"
) | {"delayed": "deferred"}


def outcome_of_bounce(
    b: Bounce,
    who: VerpId | None,
    node: str = "",
    instance: str = "",
    time: float = 0.0,
    queue_id: str = "",
) -> Outcome:
    """One recipient of a bounce mail, with the user of the VERP address it came back to."""
    status = _STATUS_OF_ACTION.get(b.action, "bounced")
    if status == "bounced" and b.reason == "expired":
        status = "expired"  # as Postfix logs a message that outlived its queue lifetime
    return Outcome(
        b.recipient,
        who.user_id if who else None,
        who.verified if who else False,
        status,
        b.status,
        b.reply_code,
        b.diagnostic,
        b.reason,
        b.scope,
        b.hard,
        node,
        instance,
        time,
        "dsn",
        queue_id,
    )


# Queue names as Postfix's spool has them, in the order a message moves through them.
QUEUE_NAMES = ("maildrop", "incoming", "active", "deferred", "hold", "corrupt")

# qshape's default age bucket edges, in minutes; the last bucket is "over the last edge".
DEFAULT_AGE_EDGES_MIN = (5, 10, 20, 40, 80, 160, 320, 640, 1280)


@dataclass(slots=True)
class QueueStats:
    messages: int = 0
    recipients: int = 0
    bytes: int = 0
    oldest_age_s: float = 0.0


@dataclass(slots=True)
class QueueSnapshot:
    """One sample of one Postfix instance's queue, as every output reads it."""

    instance: str
    source: str  # "spool" or "showq": how it was read
    taken_at: float  # POSIX seconds when the sample finished
    duration_s: float
    age_edges_min: tuple[int, ...] = DEFAULT_AGE_EDGES_MIN
    queues: dict[str, QueueStats] = field(default_factory=dict)
    # (queue, "recipient"|"sender", domain group, age bucket index) -> (messages, recipients);
    # bucket i holds ages below age_edges_min[i], the last index (len(edges)) the older ones.
    shape: dict[tuple[str, str, str, int], tuple[int, int]] = field(default_factory=dict)
    # (domain group, reason, deferral class) -> deferred recipients; the reason is the one the
    # log gives the same reply, the class a finer sort beside it (collectors.deferral).
    # Reasons are read after the queue files, a bounded number per sample: recipients whose
    # reasons are not read yet count under the class "pending", so the classes still sum to the
    # deferred recipients.
    deferrals: dict[tuple[str, str, str], int] = field(default_factory=dict)
    # Deferred messages whose reasons are read / deferred messages (1.0 with none deferred).
    deferral_coverage: float = 1.0
    # read problems, counted and skipped: "vanished", "truncated", "garbage", ...
    errors: dict[str, int] = field(default_factory=dict)
    complete: bool = True  # False when a huge queue fell back to counting or a deadline hit
    # The same as shape with raw domains as qshape prints them (top domains per queue and kind,
    # the rest under "(other)"): for the command line and checks, never a metric label.
    domain_shape: dict[tuple[str, str, str, int], tuple[int, int]] = field(default_factory=dict)

    @property
    def deferral_classes(self) -> dict[tuple[str, str], int]:
        """(domain group, deferral class) -> deferred recipients, whatever the reason."""
        out: dict[tuple[str, str], int] = {}
        for (group, _reason, klass), n in self.deferrals.items():
            out[(group, klass)] = out.get((group, klass), 0) + n
        return out
