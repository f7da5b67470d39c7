"""The blacklist policy over a real SQLite store, with a clock the test moves: lifetimes,
repeats, soft state, forged bounces, breakers, the hourly cap, node bursts, quarantine."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from mailpulse.bounce.blacklist import Blacklist
from mailpulse.bounce.store import Filter, SqliteStore

from mailpulse.config import Config, parse_config
from mailpulse.events import Outcome
from tests.redis_support import RedisServer

DAY = 86_400.0
T0 = 1_800_000_000.0  # a fixed start, far from a day boundary's edge cases
HOUR = 3600.0


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def outcome(rcpt: str, kind: str = "unknown", **kw: Any) -> Outcome:
    """An outcome as the lab's remote MX answers produce them (see lab/behaviours.py)."""
    shapes = {
        "unknown": ("bounced", "5.1.1", "550", "userunknown", "recipient", True),
        "disabled": ("bounced", "5.2.1", "550", "suspend", "recipient", False),
        "full": ("deferred", "4.2.2", "452", "mailboxfull", "recipient", False),
        "blocked": ("bounced", "5.7.1", "554", "blocked", "sender", False),
        "spam": ("bounced", "5.7.1", "550", "spamdetected", "message", False),
        "ok": ("sent", "2.0.0", "250", "delivered", "recipient", False),
        "nohost": ("bounced", "5.4.4", "", "hostunknown", "domain", True),
    }
    status, dsn, code, reason, scope, hard = shapes[kind]
    base = dict(
        recipient=rcpt, user_id="42", verp_verified=False, status=status, dsn=dsn,
        reply_code=code, reply_text=f"{code} {dsn} said", reason=reason, scope=scope,
        hard=hard, node="node1", instance="postfix", time=T0, source="log", queue_id="Q1",
    )  # fmt: skip
    base.update(kw)
    return Outcome(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.destroy()


STORES: list[str] = []


@pytest.fixture(params=["sqlite", "redis"], autouse=True)
def store_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every behaviour test runs against both stores (Redis under a prefix of its own)."""
    if request.param == "redis":
        STORES.append(request.getfixturevalue("redis_server").url)
    else:
        STORES.append("")
    yield request.param
    STORES.clear()


def make(tmp_path: Path, clock: Clock, **blacklist: Any) -> Blacklist:
    cfg = parse_config({"blacklist": {"jitter_share": 0.0, **blacklist}})
    cfg = replace(cfg, state_dir=tmp_path)
    if STORES and STORES[-1]:
        from mailpulse.bounce.redis_store import RedisStore

        prefix = f"t{uuid.uuid4().hex}:"
        return Blacklist(cfg, RedisStore(STORES[-1], prefix), clock=clock)
    return Blacklist(cfg, SqliteStore(tmp_path / "bl.sqlite"), clock=clock)


def keys(bl: Blacklist) -> set[str]:
    return set(bl.store.keys_in_force(bl.clock()))


def test_hard_failure_lives_30_then_180_days_then_until_lifted(tmp_path: Path) -> None:
    clock = Clock()
    bl = make(tmp_path, clock)
    assert bl.record(outcome("a@example.com")).action == "add"
    e = bl.store.entry("a@example.com")
    assert e is not None and e.expires == T0 + 30 * DAY and e.strike == 1
    clock.t += 31 * DAY
    assert keys(bl) == set()
    assert bl.record(outcome("a@example.com", time=clock.t)).action == "add"
    e = bl.store.entry("a@example.com")
    assert e is not None and e.expires == clock.t + 180 * DAY
    clock.t += 181 * DAY
    assert bl.record(outcome("A@Example.com", time=clock.t)).action == "add"
    e = bl.store.entry("a@example.com")
    assert e is not None and e.expires is None and e.strike == 3
    clock.t += 10_000 * DAY
    assert keys(bl) == {"a@example.com"}


def test_sender_transport_and_message_scope_never_blacklist(tmp_path: Path) -> None:
    bl = make(tmp_path, Clock())
    for kind in ("blocked", "spam", "ok"):
        assert bl.record(outcome(f"{kind}@example.com", kind)).action == "ignore"
    assert keys(bl) == set()


def test_jitter_spreads_lifetimes_within_the_share(tmp_path: Path) -> None:
    clock = Clock()
    bl = make(tmp_path, clock, jitter_share=0.1, breaker_min_failures=1000)
    for i in range(50):
        bl.record(outcome(f"u{i}@example.com"))
    lifetimes = {e.expires - e.added for e in bl.store.entries(clock.t) if e.expires}
    assert len(lifetimes) > 40
    assert all(27 * DAY <= x <= 33 * DAY for x in lifetimes)


def test_forged_bounce_confirms_only_what_the_log_said(tmp_path: Path) -> None:
    bl = make(tmp_path, Clock())
    forged = dict(source="dsn", verp_verified=False, queue_id="")
    assert bl.record(outcome("ok@example.com", **forged)).action == "ignore"
    assert keys(bl) == set()
    assert bl.record(outcome("x@example.com")).action == "add"  # the log line
    d = bl.record(outcome("x@example.com", **forged, time=T0 + 5))
    assert d.action == "confirm"
    e = bl.store.entry("x@example.com")
    assert e is not None and [(v.source, v.verified) for v in e.evidence] == [
        ("log", True),
        ("dsn", False),
    ]
    # The same log line read again is not new evidence.
    bl.record(outcome("x@example.com"))
    e = bl.store.entry("x@example.com")
    assert e is not None and len(e.evidence) == 2
    # A correctly signed bounce alone is enough.
    assert bl.record(outcome("y@example.com", source="dsn", verp_verified=True)).action == "add"


def test_soft_failures_on_distinct_days_then_doubling_lifetimes(tmp_path: Path) -> None:
    clock = Clock()
    bl = make(tmp_path, clock, soft_repeat_days=3, ttl_4xx="1d")
    addr = "d@example.com"
    for _ in range(5):  # the same day counts once
        assert bl.record(outcome(addr, "disabled")).action == "soft"
    clock.t += DAY
    assert bl.record(outcome(addr, "disabled")).action == "soft"
    clock.t += DAY
    assert bl.record(outcome(addr, "disabled")).action == "add"
    e = bl.store.entry(addr)
    assert e is not None and e.expires == clock.t + DAY and e.kind == "soft"
    # Expired, three more days: twice as long.
    clock.t += 2 * DAY
    for _ in range(3):
        bl.record(outcome(addr, "disabled"))
        clock.t += DAY
    e = bl.store.entry(addr)
    assert e is not None and e.strike == 2 and e.expires - e.added == 2 * DAY  # type: ignore[operator]


def test_a_delivery_clears_soft_state(tmp_path: Path) -> None:
    clock = Clock()
    bl = make(tmp_path, clock, soft_repeat_days=2)
    bl.record(outcome("m@example.com", "full"))
    assert bl.store.soft_days("m@example.com")
    clock.t += DAY
    assert bl.record(outcome("m@example.com", "ok")).action == "clear_soft"
    assert bl.record(outcome("m@example.com", "full")).action == "soft"  # counting again


def test_hostunknown_lists_the_domain(tmp_path: Path) -> None:
    bl = make(tmp_path, Clock())
    d = bl.record(outcome("who@no-such-host.example", "nohost"))
    assert (d.action, d.key) == ("add", "no-such-host.example")


def test_a_signed_bounce_alone_never_lists_a_whole_domain(tmp_path: Path) -> None:
    """A forged DSN to a signed VERP address a subscriber holds (its own), saying host unknown
    for anyone at gmail.com: it would list the whole domain. It confirms what the log said."""
    bl = make(tmp_path, Clock())
    forged = dict(source="dsn", verp_verified=True, queue_id="")
    d = bl.record(outcome("anyone@gmail.com", "nohost", **forged))
    assert (d.action, d.why) == ("ignore", "domain from a bounce mail")
    assert keys(bl) == set()
    assert bl.record(outcome("who@no-such-host.example", "nohost")).action == "add"
    d = bl.record(outcome("x@no-such-host.example", "nohost", **forged, time=T0 + 5))
    assert d.action == "confirm"


def test_host_unknown_under_a_registry_suffix_lists_nothing(tmp_path: Path) -> None:
    # A subscriber typed user@co.uk: listing co.uk would refuse every *.co.uk recipient.
    bl = make(tmp_path, Clock())
    for rcpt in ("user@co.uk", "user@com.br", "user@ne.jp"):
        d = bl.record(outcome(rcpt, "nohost"))
        assert (d.action, d.why) == ("ignore", "a registry's suffix, not one domain"), rcpt
    assert keys(bl) == set()
    assert bl.record(outcome("user@shop.co.uk", "nohost")).key == "shop.co.uk"


def test_allowlist_and_dry_run(tmp_path: Path) -> None:
    bl = make(tmp_path, Clock(), allowlist=["vip@example.com", "@partner.example"])
    assert bl.record(outcome("vip@example.com")).why == "allowlist"
    assert bl.record(outcome("x@partner.example")).why == "allowlist"
    assert keys(bl) == set()
    dry = make(tmp_path / "dry", Clock(), dry_run=True)
    assert dry.record(outcome("z@example.com")).action == "add"
    assert keys(dry) == set()  # said, not done


def test_outage_breaker_holds_new_entries_in_quarantine(tmp_path: Path) -> None:
    clock = Clock()
    bl = make(tmp_path, clock, breaker_count=5, breaker_min_failures=1000)
    actions = [bl.record(outcome(f"u{i}@gmail.com")).action for i in range(20)]
    assert actions.count("add") == 5 and actions.count("quarantine") == 15
    assert bl.record(outcome("v@example.com")).action == "add"  # other groups go on
    series = bl.series()
    assert series[("mailpulse_blacklist_breaker_open", ("gmail",))] == 1.0
    assert series[("mailpulse_blacklist_breaker_open", ("other",))] == 0.0
    assert series[("mailpulse_blacklist_quarantine_entries", ())] == 15
    assert series[("mailpulse_blacklist_entries", ())] == 6
    assert series[("mailpulse_blacklist_additions_total", ("userunknown",))] == 6
    # The bounce mails Postfix sends for the same failures, read by a fresh process (pipe(8))
    # whose breaker saw nothing: the held ones stay held.
    fresh = Blacklist(bl.cfg, bl.store, clock=clock)
    signed = dict(source="dsn", verp_verified=True, queue_id="")
    echoes = [fresh.record(outcome(f"u{i}@gmail.com", **signed)) for i in range(20)]
    assert [d.action for d in echoes] == ["confirm"] * 5 + ["ignore"] * 15
    assert {d.why for d in echoes[5:]} == {"held in quarantine"}
    assert len(keys(bl)) == 6 and len(bl.store.quarantined()) == 15
    # Reviewed: released in bulk, or dropped.
    assert bl.store.drop(Filter(key="u19@gmail.com")) == 1
    assert bl.store.release(clock.t, Filter(domain_group="gmail")) == 14
    assert len(keys(bl)) == 20 and not bl.store.quarantined()
    # The window passes: the breaker closes.
    clock.t += 2 * HOUR
    assert bl.series()[("mailpulse_blacklist_breaker_open", ("gmail",))] == 0.0


def test_share_breaker_needs_its_minimum(tmp_path: Path) -> None:
    bl = make(tmp_path, Clock(), breaker_share=0.5, breaker_min_failures=4)
    for i in range(3):
        bl.record(outcome(f"ok{i}@yahoo.com", "ok"))
    got = [bl.record(outcome(f"u{i}@yahoo.com")).action for i in range(6)]
    # 4 hard of 7 outcomes is over half: the fourth and later wait.
    assert got == ["add", "add", "add", "quarantine", "quarantine", "quarantine"]


def test_hourly_cap_and_node_burst(tmp_path: Path) -> None:
    clock = Clock()
    bl = make(tmp_path, clock, hourly_cap=3)
    got = [bl.record(outcome(f"u{i}@d{i}.example")).action for i in range(5)]
    assert got == ["add"] * 3 + ["quarantine"] * 2
    assert {e.hold for e in bl.store.quarantined()} == {"hourly_cap"}
    clock.t += HOUR + 1
    assert bl.record(outcome("later@example.com")).action == "add"

    burst = make(tmp_path / "burst", Clock(), node_burst=3)
    for i in range(3):
        burst.record(outcome(f"b{i}@example.com", "blocked", node="node2"))
    held = burst.record(outcome("x@example.com", node="node2"))
    assert (held.action, held.why) == ("quarantine", "node_burst")
    assert burst.record(outcome("y@example.com", node="node1")).action == "add"


def test_lift_by_filter_keeps_the_strikes(tmp_path: Path) -> None:
    clock = Clock()
    bl = make(tmp_path, clock)
    bl.record(outcome("a@gmail.com"))
    bl.record(outcome("b@yahoo.com"))
    clock.t += HOUR
    bl.record(outcome("c@gmail.com", "disabled"))  # soft: not listed yet
    bl.record(outcome("d@gmail.com"))
    assert bl.store.lift(clock.t, Filter(domain_group="gmail", until=T0 + 1)) == 1
    assert keys(bl) == {"b@yahoo.com", "d@gmail.com"}
    assert bl.store.lift(clock.t, Filter(reason="userunknown")) == 2
    assert keys(bl) == set()
    assert bl.record(outcome("a@gmail.com")).entry.strike == 2  # type: ignore[union-attr]


def test_hostile_addresses_never_reach_the_store(tmp_path: Path) -> None:
    bl = make(tmp_path, Clock())
    for bad in ("a b@example.com", "a\n@example.com", "x#@example.com", "é@example.com",
                "a" * 65 + "@example.com", "@example.com", "a@-bad-.example", "a@b"):  # fmt: skip
        d = bl.record(outcome(bad))
        assert d.action == "ignore" and d.why.startswith("bad key"), bad
    assert keys(bl) == set()


def test_config_rejects_a_wrong_blacklist_key() -> None:
    from mailpulse.config import ConfigError

    with pytest.raises(ConfigError, match="blacklist.ttl_5x"):
        parse_config({"blacklist": {"ttl_5x": "3d"}})
    assert isinstance(parse_config({"blacklist": {"ttl_5xx": "3d"}}), Config)


def test_purge_drops_long_expired_entries_and_keeps_their_strikes(tmp_path: Path) -> None:
    clock = Clock()
    bl = make(tmp_path, clock)
    bl.record(outcome("old@example.com"))
    clock.t += 31 * DAY
    assert bl.store.purge(clock.t) == 0  # expired a day ago: kept to say why
    clock.t += 100 * DAY
    assert bl.store.purge(clock.t) == 1
    assert bl.store.purge(clock.t) == 0
    d = bl.record(outcome("old@example.com", time=clock.t))
    assert d.action == "add" and d.entry is not None and d.entry.strike == 2


def test_config_says_a_fleet_mode_needs_redis() -> None:
    from mailpulse.config import ConfigError

    with pytest.raises(ConfigError, match="blacklist.agent: node .* needs blacklist.store: redis"):
        parse_config({"blacklist": {"agent": "node"}})
    assert parse_config({"blacklist": {"agent": "analyser", "store": "redis"}}).blacklist.agent
