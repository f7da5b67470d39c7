"""The event model every collector produces and every consumer reads (DESIGN.md, "Words")."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Final and intermediate outcomes of one recipient, as Postfix logs them in status=.
STATUSES = ("sent", "deferred", "bounced", "expired")

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
