"""Campaigns: a plan of who gets what answer, and an injector that submits it over SMTP.

The plan is written before anything is sent and is the lab's ground truth: for each recipient
it names the user id, the VERP sender, what the remote MX will answer and hence the status,
dsn and reason that Postfix's log and mailpulse's analysis must show.
"""

from __future__ import annotations

import json
import random
import smtplib
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from email.utils import formatdate
from pathlib import Path

from lab.behaviours import BEHAVIOURS, DOMAINS, MX_DOWN, OUTAGE
from lab.postfix import Lab, LabError, wait_until


@dataclass(frozen=True)
class Planned:
    user_id: str
    sender: str
    recipient: str
    domain: str
    kind: str
    status: str  # expected final status in Postfix's log
    dsn: str  # expected enhanced status
    reply_code: str
    reason: str
    stage: str  # where the remote answers: rcpt or data


def verp_sender(user_id: str, bounce_domain: str) -> str:
    return f"bounce-{user_id}@{bounce_domain}"


def make_plan(
    n: int,
    *,
    bounce_domain: str = "bounces.lab.test",
    seed: int = 1,
    outage: Iterable[str] = (),
    mx_down: bool = False,
    sender_for: Callable[[str, str], str] = verp_sender,
) -> list[Planned]:
    """n recipients, one message each, spread over the campaign domains and behaviours."""
    rng = random.Random(seed)
    down = {d.lower() for d in outage}
    kinds = list(BEHAVIOURS)
    kind_weights = [BEHAVIOURS[k].weight for k in kinds]
    domains = list(DOMAINS)
    domain_weights = list(DOMAINS.values())
    user_ids = rng.sample(range(100_000, 10_000_000), n)
    plan = []
    for uid_n in user_ids:
        uid = str(uid_n)
        kind = rng.choices(kinds, kind_weights)[0]
        domain = rng.choices(domains, domain_weights)[0]
        recipient = f"{kind}-u{uid}@{domain}"
        b = MX_DOWN if mx_down else OUTAGE if domain in down else BEHAVIOURS[kind]
        plan.append(
            Planned(
                user_id=uid,
                sender=sender_for(uid, bounce_domain),
                recipient=recipient,
                domain=domain,
                kind=kind,
                status=b.status,
                dsn="2.0.0" if b.status == "sent" else b.enhanced,
                reply_code="250" if b.status == "sent" else str(b.code or ""),
                reason=b.reason,
                stage=b.stage,
            )
        )
    return plan


def write_plan(plan: list[Planned], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for p in plan:
            f.write(json.dumps(asdict(p)) + "\n")
    tmp.replace(path)


def load_plan(path: Path) -> list[Planned]:
    with path.open(encoding="utf-8") as f:
        return [Planned(**json.loads(line)) for line in f if line.strip()]


def message_bytes(p: Planned, campaign: str) -> bytes:
    return (
        f"From: Lab Newsletter <news@lab.test>\r\n"
        f"To: <{p.recipient}>\r\n"
        f"Subject: {campaign}: news for user {p.user_id}\r\n"
        f"Date: {formatdate(localtime=False)}\r\n"
        f"Message-ID: <{campaign}.{p.user_id}@lab.test>\r\n"
        f"List-Unsubscribe: <mailto:unsubscribe-{p.user_id}@lab.test>\r\n"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n"
        f"\r\n"
        f"Hello user {p.user_id},\r\n\r\nthis is the {campaign} issue of the lab newsletter.\r\n"
    ).encode()


def _chunks(plan: list[Planned], k: int) -> Iterator[list[Planned]]:
    for i in range(k):
        yield plan[i::k]


def inject(lab: Lab, plan: list[Planned], campaign: str, connections: int = 4) -> None:
    """Submit one message per planned recipient to the lab's smtpd, over a few connections."""
    errors: list[str] = []

    def send(part: list[Planned]) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", lab.smtp_port, timeout=60) as s:
                s.ehlo("injector.lab.test")
                for p in part:
                    s.sendmail(p.sender, [p.recipient], message_bytes(p, campaign))
        except (smtplib.SMTPException, OSError) as e:
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=send, args=(part,)) for part in _chunks(plan, connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise LabError("injection failed: " + "; ".join(errors[:3]))


def maildir_count(lab: Lab) -> int:
    return sum(1 for _ in (lab.maildir / "new").iterdir())


def wait_settled(lab: Lab, bounces_expected: int, timeout: float = 600) -> None:
    """Wait until every message had its first attempt and the Maildir holds that many DSNs."""
    wait_until(lab.queue_settled, timeout, "the queue to settle", step=0.25)
    wait_until(lambda: maildir_count(lab) >= bounces_expected, timeout, "DSNs in the Maildir", 0.25)
    wait_until(lab.queue_settled, timeout, "the queue to settle", step=0.25)
    # Postfix's daemons log through postlogd, which may still be writing the last lines.
    last_size = -1

    def log_quiet() -> bool:
        nonlocal last_size
        previous, last_size = last_size, lab.maillog.stat().st_size
        return previous == last_size

    wait_until(log_quiet, timeout, "the maillog to stop growing", step=0.3)


def run_campaign(
    lab: Lab,
    n: int,
    name: str = "campaign",
    seed: int = 1,
    connections: int = 4,
    timeout: float = 600,
) -> tuple[list[Planned], Path]:
    """Plan, submit and wait: returns the plan and where it was written."""
    plan = make_plan(
        n,
        bounce_domain=lab.bounce_domain,
        seed=seed,
        outage=lab.outage(),
        mx_down=not lab.mx_running(),
    )
    path = lab.root / "campaigns" / f"{name}.plan.jsonl"
    write_plan(plan, path)
    before = maildir_count(lab)
    inject(lab, plan, name, connections)
    wait_settled(lab, before + sum(1 for p in plan if p.status == "bounced"), timeout)
    return plan, path
