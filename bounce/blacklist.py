"""The blacklist at work: Outcomes through the policy into a store, the store into Postfix's
tables, and the blacklist's series for every output.

Used the same way by `mailpulse blacklist ...` and by the agent.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from mailpulse.bounce.intake import MailItem, VerpSettings, outcomes
from mailpulse.bounce.policy import ADD, CONFIRM, IGNORE, Decision, Evidence, Policy
from mailpulse.bounce.publish import Published, TableRefused, publish, table_age
from mailpulse.bounce.store import SqliteStore, Store

if TYPE_CHECKING:
    from mailpulse.config import Config
    from mailpulse.events import Outcome
    from mailpulse.state import SeriesKey

log = logging.getLogger(__name__)


def verp_settings(cfg: Config) -> VerpSettings:
    import os

    key = os.environ.get("MAILPULSE_VERP_KEY") or cfg.bounce.verp_key
    return VerpSettings(
        key.encode() if key else None, cfg.bounce.verp_prefix, cfg.bounce.recipient_delimiter
    )


def open_store(cfg: Config) -> Store:
    if cfg.blacklist.store == "redis":
        from mailpulse.bounce.redis_store import RedisStore

        return RedisStore(cfg.redis.url, cfg.redis.prefix)
    return SqliteStore(cfg.state_dir / "blacklist.sqlite")


class Blacklist:
    def __init__(
        self,
        cfg: Config,
        store: Store,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        from mailpulse.domains import DomainGroups

        self.cfg = cfg
        self.store = store
        self.clock = clock
        self.groups = DomainGroups(cfg.domain_groups)
        self.policy = Policy(cfg.blacklist, self.groups.group, rng)
        self.verp = verp_settings(cfg)
        self.lock = threading.Lock()  # the policy's windows are shared by the agent's threads
        self.published_version = -1
        self.last: Published | None = None
        self.map_type = cfg.blacklist.table_type

    def record(self, o: Outcome, now: float | None = None) -> Decision:
        """One outcome through the policy; applied unless dry-run. The decision is returned
        either way (dry-run callers print it)."""
        now = self.clock() if now is None else now
        with self.lock:
            d = self.policy.decide(o, self.store, now)
            if d.action != IGNORE and not self.cfg.blacklist.dry_run:
                self.store.apply(d, Evidence.of(o) if d.action == CONFIRM else None)
        if d.action == ADD:
            log.info("blacklisted %s (%s, %s)", d.key, o.reason, o.source)
        return d

    def record_all(self, items: Iterable[Outcome]) -> list[Decision]:
        return [self.record(o) for o in items]

    def record_mail(self, item: MailItem, node: str = "", envelope_recipient: str = "") -> int:
        """The recipients of one bounce mail; a mail already recorded (same key) is skipped."""
        if self.store.seen_mail(item.key):
            return 0
        now = self.clock()
        found = outcomes(item, self.verp, envelope_recipient, node=node, time=now)
        for o in found:
            self.record(o, now)
            verp = "none" if o.user_id is None else "verified" if o.verp_verified else "unverified"
            self.store.count("bounce_recipients", f"{o.reason}\t{verp}")
        self.store.mark_mail(item.key)
        return len(found)

    def publish(self, force: bool = False) -> Published | None:
        """Rebuild the Postfix table from the keys in force; None when refused (said, counted)."""
        b = self.cfg.blacklist
        version = self.store.version()
        try:
            self.last = publish(
                self.store.keys_in_force(self.clock()),
                b.table,
                b.table_type,
                b.shrink_share,
                b.postfix_config_dir,
                force=force,
            )
        except TableRefused as e:
            log.error("%s", e)
            self.store.count("table_refusals")
            return None
        self.map_type = self.last.map_type
        self.published_version = version
        return self.last

    def series(self) -> dict[SeriesKey, float]:
        now = self.clock()
        out: dict[SeriesKey, float] = {
            ("mailpulse_blacklist_entries", ()): float(len(self.store.keys_in_force(now))),
            ("mailpulse_blacklist_quarantine_entries", ()): float(len(self.store.quarantined())),
            ("mailpulse_blacklist_hourly_cap", ()): float(self.cfg.blacklist.hourly_cap),
            ("mailpulse_blacklist_table_refusals_total", ()): 0.0,
        }
        for (name, label), n in self.store.counters().items():
            if name == "additions":
                out[("mailpulse_blacklist_additions_total", (label,))] = float(n)
            elif name == "table_refusals":
                out[("mailpulse_blacklist_table_refusals_total", ())] = float(n)
            elif name == "bounce_recipients":
                reason, _, verp = label.partition("\t")
                out[("mailpulse_bounce_recipients_total", (reason, verp))] = float(n)
        with self.lock:
            for group, is_open in self.policy.breakers.open_groups(now).items():
                out[("mailpulse_blacklist_breaker_open", (group,))] = float(is_open)
        age = table_age(self.cfg.blacklist.table, self.map_type, now)
        if age is not None:
            out[("mailpulse_blacklist_table_age_seconds", ())] = age
        return out
