"""The blacklist at work: Outcomes through the policy into a store, the store into Postfix's
tables, and the blacklist's series for every output.

Used the same way by `mailpulse blacklist ...` and by the agent.
"""

from __future__ import annotations

import json
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
    from email.message import Message

    from mailpulse.exporters.web import WebServer

    from mailpulse.config import Config
    from mailpulse.events import DeliveryEvent, Outcome
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


class BlacklistAgent:
    """The blacklist inside `mailpulse agent`: the log's outcomes and the bounce Maildir through
    the policy, and the Postfix table kept in step with the store (a rebuild when the store's
    version moves, and once a minute for the entries that expired meanwhile)."""

    FULL_REBUILD_S = 60.0

    def __init__(self, cfg: Config, stop: threading.Event) -> None:
        self.cfg = cfg
        self.stop_event = stop
        self.store = open_store(cfg)
        self.blacklist = Blacklist(cfg, self.store)
        self.last_rebuild = 0.0
        self.threads = [
            threading.Thread(target=self._sync_loop, name="blacklist:table", daemon=True)
        ]
        if cfg.blacklist.maildir is not None:
            self.threads.append(
                threading.Thread(target=self._maildir_loop, name="blacklist:maildir", daemon=True)
            )

    def on_event(self, ev: DeliveryEvent) -> None:
        from mailpulse.events import outcome_of_event

        self.blacklist.record(outcome_of_event(ev, self.blacklist.verp))

    def _maildir_loop(self) -> None:
        from mailpulse.bounce.intake import process_maildir

        root = self.cfg.blacklist.maildir
        assert root is not None
        while not self.stop_event.is_set():
            try:
                process_maildir(
                    root,
                    lambda item, _records: self.blacklist.record_mail(item, self.cfg.node),
                    self.blacklist.verp,
                )
            except Exception:
                log.exception("bounce Maildir %s", root)
            self.stop_event.wait(self.cfg.blacklist.sync_interval)

    def sync(self, now: float) -> None:
        """Rebuild the table when the store changed or a full minute passed."""
        if self.last_rebuild and (
            self.store.version() == self.blacklist.published_version
            and now - self.last_rebuild < self.FULL_REBUILD_S
        ):
            return
        self.last_rebuild = now
        try:
            self.blacklist.publish()
        except OSError as e:
            log.error("blacklist table not published: %s", e)

    def _sync_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.sync(time.monotonic())
            except Exception:
                log.exception("blacklist table sync")
            self.stop_event.wait(self.cfg.blacklist.sync_interval)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        for t in self.threads:
            t.join(timeout=30)
        self.store.close()

    def serve(self, http: WebServer) -> None:
        """/blacklist.csv and /blacklist.json for the mailing software, behind the agent's
        TLS and basic auth like every other page."""
        from mailpulse.bounce.blacklist_cli import export_csv, export_rows
        from mailpulse.exporters.web import Page

        def csv_page(_headers: Message) -> Page:
            return Page(export_csv(export_rows(self.blacklist)).encode(), "text/csv; charset=utf-8")

        def json_page(_headers: Message) -> Page:
            body = json.dumps(export_rows(self.blacklist)).encode()
            return Page(body, "application/json")

        http.route("/blacklist.csv", csv_page, "blacklist (CSV)", compress=True)
        http.route("/blacklist.json", json_page, "blacklist (JSON)", compress=True)
