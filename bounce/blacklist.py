"""The blacklist at work: Outcomes through the policy into a store, the store into Postfix's
tables, and the blacklist's series for every output.

Used the same way by `mailpulse blacklist ...` and by the agent.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mailpulse.bounce.cli import verp_of
from mailpulse.bounce.intake import MailItem, outcomes
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


def open_store(cfg: Config) -> Store:
    if cfg.blacklist.store == "redis":
        from mailpulse.bounce.redis_store import RedisStore

        return RedisStore(cfg.redis.url, cfg.redis.prefix)
    return SqliteStore(cfg.state_dir / "blacklist.sqlite")


def bounce_label(o: Outcome) -> str:
    verp = "none" if o.user_id is None else "verified" if o.verp_verified else "unverified"
    return f"{o.reason}\t{verp}"


def event_id(o: Outcome, mail_key: str = "") -> str:
    """The same outcome always gets the same id: a log line read twice, or a node's buffer
    sent again after an outage, is recorded once by the analyser."""
    if o.source == "dsn":
        return f"dsn:{mail_key}:{o.recipient}"
    return f"log:{o.node}:{o.instance}:{o.queue_id}:{o.recipient}:{o.status}:{o.time}"


class Outbox:
    """A node's outcomes on their way to Redis: appended to a file, sent in batches, and the
    file emptied only once Redis took them. While Redis is away the file grows; nothing is
    lost, and what was sent twice is recognised by its event id."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sending = path.with_name(path.name + ".sending")
        self.lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def put(self, event: str, o: Outcome) -> None:
        from dataclasses import asdict

        line = json.dumps([event, json.dumps(asdict(o))]) + "\n"
        with self.lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line)

    def pending(self) -> int:
        n = 0
        for p in (self.sending, self.path):
            if p.exists():
                with p.open("rb") as f:
                    n += sum(1 for _ in f)
        return n

    def drain(self, send: Callable[[list[tuple[str, str]]], None]) -> int:
        """Send what is buffered; raises (keeping it) when the sending fails."""
        with self.lock:
            if not self.sending.exists() and self.path.exists():
                os.replace(self.path, self.sending)
        if not self.sending.exists():
            return 0
        events: list[tuple[str, str]] = []
        with self.sending.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    event, body = json.loads(line)
                    events.append((str(event), str(body)))
                except ValueError:  # a line cut by a crash mid-write: said, the rest sent
                    log.warning("blacklist outbox %s: damaged line skipped", self.sending)
        for i in range(0, len(events), 1000):
            send(events[i : i + 1000])
        self.sending.unlink()
        return len(events)


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
        self.verp = verp_of(cfg.bounce)
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

    def record_mail(self, item: MailItem, node: str = "", envelope_recipient: str = "") -> int:
        """The recipients of one bounce mail; a mail already recorded (same key) is skipped."""
        if self.store.seen_mail(item.key):
            return 0
        now = self.clock()
        found = outcomes(item, self.verp, envelope_recipient, node=node, time=now)
        for o in found:
            self.record(o, now)
            self.store.count("bounce_recipients", bounce_label(o))
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
            ("mailpulse_blacklist_entries", ()): float(self.store.in_force(now)),
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


PURGE_EVERY_S = 3600.0


class BlacklistAgent:
    """The blacklist inside `mailpulse agent`, by blacklist.agent:

    - local: this node's log and bounce Maildir through the policy into the store;
    - node: the same outcomes sent to Redis (through the on-disk Outbox) for the analyser;
    - analyser: the outcomes of every node, read from the Redis stream, through the policy.

    In every mode the node's Postfix table follows the store: rebuilt when the store's version
    moves, and once a minute for the entries that expired meanwhile. While the store cannot be
    reached the table in force stays as it is.
    """

    FULL_REBUILD_S = 60.0

    def __init__(self, cfg: Config, stop: threading.Event) -> None:
        mode = cfg.blacklist.agent  # node and analyser come with store: redis (config.py)
        self.cfg = cfg
        self.stop_event = stop
        self.store = open_store(cfg)
        self.blacklist = Blacklist(cfg, self.store)
        self.last_rebuild = 0.0
        self.last_build_s = 0.0
        self.last_purge = float("-inf")
        self.down_since: dict[str, str] = {}  # what failed, said once until it works again
        self.outbox = Outbox(cfg.state_dir / "blacklist-outbox.jsonl") if mode == "node" else None
        loops = [("table", self._sync_loop)]
        if cfg.blacklist.maildir is not None:
            loops.append(("maildir", self._maildir_loop))
        if self.outbox is not None:
            loops.append(("outbox", self._outbox_loop))
        if mode == "analyser":
            loops.append(("stream", self._stream_loop))
        self.threads = [
            threading.Thread(target=self._guarded(name, fn), name=f"blacklist:{name}", daemon=True)
            for name, fn in loops
        ]

    def _guarded(self, name: str, step: Callable[[], None]) -> Callable[[], None]:
        """Run step until the agent stops; a failure is logged once, until it works again."""

        def loop() -> None:
            while not self.stop_event.is_set():
                try:
                    step()
                    if self.down_since.pop(name, None) is not None:
                        log.info("blacklist %s: working again", name)
                except Exception as e:  # noqa: BLE001 - said once, tried again
                    if name not in self.down_since:
                        self.down_since[name] = str(e)
                        log.warning("blacklist %s: %s (trying again)", name, e)
                self.stop_event.wait(self.cfg.blacklist.sync_interval)

        return loop

    def take(self, o: Outcome, mail_key: str = "") -> None:
        if self.outbox is not None:
            self.outbox.put(event_id(o, mail_key), o)
        else:
            self.blacklist.record(o)

    def on_event(self, ev: DeliveryEvent) -> None:
        from mailpulse.events import outcome_of_event

        self.take(outcome_of_event(ev, self.blacklist.verp))

    def _mail(self, item: MailItem) -> None:
        if self.outbox is None:
            self.blacklist.record_mail(item, self.cfg.node)
            return
        for o in outcomes(item, self.blacklist.verp, node=self.cfg.node, time=time.time()):
            self.take(o, item.key)

    def _maildir_loop(self) -> None:
        from mailpulse.bounce.intake import process_maildir

        root = self.cfg.blacklist.maildir
        assert root is not None
        process_maildir(root, lambda item, _records: self._mail(item), self.blacklist.verp)

    def _outbox_loop(self) -> None:
        from mailpulse.bounce.redis_store import RedisStore

        assert self.outbox is not None and isinstance(self.store, RedisStore)
        self.outbox.drain(self.store.send)

    def _stream_loop(self) -> None:
        """Read the stream as one consumer of the analysers' group: first what this consumer
        took before a restart and never acknowledged, then new entries."""
        from mailpulse.bounce.redis_store import RedisStore

        from mailpulse.events import Outcome

        store = self.store
        assert isinstance(store, RedisStore)
        store.ensure_group()
        pending = True
        while not self.stop_event.is_set():
            got = store.receive(self.cfg.node, pending)
            if pending and not got:
                pending = False
                continue
            for _sid, event, body in got:
                try:
                    o = Outcome(**json.loads(body))
                    if event and store.first_time(event):
                        self.blacklist.record(o)
                        if o.source == "dsn":  # as record_mail counts them on a lone node
                            store.count("bounce_recipients", bounce_label(o))
                except (ValueError, TypeError, AttributeError):  # not one of ours: counted, and
                    store.count("stream_bad_entries")  # acknowledged so it cannot block the rest
            store.ack([sid for sid, _, _ in got])

    def sync(self, now: float) -> None:
        """Rebuild the table when the store changed or a full minute passed; never spending
        more than a fifth of the time rebuilding (a big table on a busy node)."""
        if self.last_rebuild and (
            now - self.last_rebuild < 5 * self.last_build_s
            or (
                self.store.version() == self.blacklist.published_version
                and now - self.last_rebuild < self.FULL_REBUILD_S
            )
        ):
            return
        if self.outbox is None and now - self.last_purge > PURGE_EVERY_S:  # deciders only
            self.store.purge(self.blacklist.clock())
            self.last_purge = now
        self.blacklist.publish()
        self.last_build_s = time.monotonic() - now
        self.last_rebuild = now

    def _sync_loop(self) -> None:
        self.sync(time.monotonic())

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
