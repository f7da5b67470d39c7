"""The blacklist on a lab node with a real Postfix: the agent reads the campaign's log and the
bounce Maildir, decides, and rebuilds the table Postfix checks at RCPT TO.

Ground truth is the campaign plan: what the remote MX was told to answer each recipient.
"""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mailpulse.bounce.verp import make_address

from lab.campaign import Planned, maildir_count, make_plan, message_bytes
from lab.postfix import Lab, free_port, wait_until
from tests.agent_support import AgentProcess, mailpulse, scrape, write_agent_config
from tests.test_bounce_intake import postfix_dsn

KEY = "lab-blacklist-key"
MakeLab = Callable[..., Lab]


def table_dir() -> Path:
    """Where the table lives: a directory Postfix's own processes can read."""
    d = Path(tempfile.mkdtemp(prefix="mailpulse-table-"))
    d.chmod(0o755)
    return d


def lab_with_table(make_lab: MakeLab, table: Path) -> Lab:
    return make_lab(
        main_cf_extra={"smtpd_recipient_restrictions": f"check_recipient_access cdb:{table}"}
    )


def blacklist_config(path: Path, lab: Lab, port: int, table: Path, extra: str = "") -> Path:
    return write_agent_config(
        path,
        [lab],
        port,
        "blacklist:\n  agent: local\n"
        f"  table: {table}\n  table_type: cdb\n  postfix_config_dir: {lab.etc}\n"
        f"  maildir: {lab.maildir}\n  jitter_share: 0\n  sync_interval: 0.2\n"
        + extra
        + f"bounce:\n  verp_key: {KEY}\n",
    )


def send(lab: Lab, plan: list[Planned], campaign: str) -> set[str]:
    """Submit one message per recipient; the recipients Postfix refused at RCPT TO."""
    refused: set[str] = set()
    with smtplib.SMTP("127.0.0.1", lab.smtp_port, timeout=60) as s:
        s.ehlo("injector.lab.test")
        for p in plan:
            try:
                s.sendmail(p.sender, [p.recipient], message_bytes(p, campaign))
            except smtplib.SMTPRecipientsRefused:
                refused.add(p.recipient)
    return refused


def bounces_seen(lab: Lab) -> int:
    done = lab.maildir / ".processed"
    return maildir_count(lab) + (sum(1 for _ in done.iterdir()) if done.exists() else 0)


def settle(lab: Lab, bounces: int) -> None:
    wait_until(lab.queue_settled, 600, "the queue to settle", step=0.25)
    wait_until(lambda: bounces_seen(lab) >= bounces, 600, "DSNs in the Maildir", 0.25)
    wait_until(lab.queue_settled, 600, "the queue to settle", step=0.25)


def refused_now(lab: Lab, rcpt: str) -> bool:
    with smtplib.SMTP("127.0.0.1", lab.smtp_port, timeout=30) as s:
        s.ehlo("probe.lab.test")
        s.mail(f"probe@{lab.bounce_domain}")
        code, _ = s.rcpt(rcpt)
        s.rset()
    return 500 <= code < 600


def listed(*argv: str) -> dict[str, dict[str, object]]:
    r = mailpulse("blacklist", "list", "--json", *argv)
    assert r.returncode == 0, r.stderr
    return {str(d["key"]): d for d in map(json.loads, r.stdout.splitlines())}


def mx_saw(lab: Lab) -> set[str]:
    if not lab.mx_answers.exists():
        return set()
    return {str(json.loads(x)["recipient"]).lower() for x in lab.mx_answers.open()}


@pytest.mark.lab
def test_campaign_blacklist_matches_the_plan_and_the_next_campaign_is_refused(
    make_lab: MakeLab, tmp_path: Path
) -> None:
    table = table_dir() / "blacklist"
    lab = lab_with_table(make_lab, table)
    port = free_port()
    state = tmp_path / "state"
    cfg = blacklist_config(tmp_path / "agent.yml", lab, port, table)
    agent = AgentProcess(cfg, state, port, tmp_path / "agent.log").start()
    try:
        wait_until(lambda: table.with_suffix(".cdb").exists(), 30, "the first table")
        plan = make_plan(
            400,
            bounce_domain=lab.bounce_domain,
            seed=31,
            sender_for=lambda uid, d: make_address(uid, d, KEY.encode()),
        )
        assert send(lab, plan, "first") == set()
        settle(lab, sum(p.status == "bounced" for p in plan))
        unknown = {p.recipient for p in plan if p.kind == "unknown"}
        # Soft recipient reasons: disabled (5.2.1 suspend) and mailbox full (4.2.2).
        soft = {p.recipient for p in plan if p.kind in ("disabled", "full")}
        assert unknown and soft
        c = ["--config", str(cfg), "--state-dir", str(state)]

        def agent_list() -> set[str]:
            return set(listed(*c))

        wait_until(
            lambda: agent_list() == unknown and not any((lab.maildir / "new").iterdir()),
            60,
            "the agent to list the planned unknowns",
        )
        entries = listed(*c)
        precision = len(unknown & set(entries)) / len(entries)
        recall = len(unknown & set(entries)) / len(unknown)
        assert (precision, recall) == (1.0, 1.0)
        for p in plan:
            if p.kind == "unknown":
                e = entries[p.recipient]
                assert e["user_id"] == p.user_id and e["reason"] == "userunknown"
                sources = {(v["source"], v["verified"]) for v in e["evidence"]}  # type: ignore[attr-defined]
                assert sources == {("log", True), ("dsn", True)}, p  # the log line and its DSN
        # The soft ones wait as soft state (one day seen of the three it takes).
        from mailpulse.bounce.store import SqliteStore

        store = SqliteStore(state / "blacklist.sqlite")
        assert {p.recipient for p in plan if store.soft_days(p.recipient)} == soft
        store.close()
        # The same log and Maildir, offline, in a fresh state directory: the same list.
        offline = ["--config", str(cfg), "--state-dir", str(tmp_path / "offline")]
        r = mailpulse(
            "blacklist", "ingest", *offline, "--log", str(lab.maillog),
            "--dsn", str(lab.maildir / ".processed"),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert set(listed(*offline)) == unknown

        # The metrics say it.
        m = scrape(port)
        assert m[
            ("mailpulse_blacklist_entries", frozenset({("node", lab.node), ("role", "bulk")}))
        ] == len(unknown)

        # From a hard bounce's arrival through pipe(8) to Postfix refusing the recipient.
        fresh = "unknown-u999999@gmail.com"
        assert not refused_now(lab, fresh)
        verp = make_address("999999", lab.bounce_domain, KEY.encode())
        started = time.monotonic()
        r = subprocess.run(
            [sys.executable, "-m", "mailpulse", "blacklist", "ingest", "--dsn", "-", *c],
            input=postfix_dsn(fresh, verp),
            env={**os.environ, "MAILPULSE_ENVELOPE_RECIPIENT": verp},
            capture_output=True,
            check=False,
        )
        assert r.returncode == 0, r.stderr
        wait_until(lambda: refused_now(lab, fresh), 30, "Postfix to refuse the new entry", 0.05)
        seconds = time.monotonic() - started
        print(f"bounce arrival (pipe) to Postfix refusing the recipient: {seconds:.2f} s")
        (tmp_path / "latency.txt").write_text(f"{seconds:.3f}\n")

        # The second campaign to the same list: refused at submission, unseen by the MX.
        before = mx_saw(lab)
        second = make_plan(
            400,
            bounce_domain=lab.bounce_domain,
            seed=31,
            sender_for=lambda uid, d: make_address(uid, d, KEY.encode()),
        )
        assert send(lab, second, "second") == unknown
        settle(lab, 0)
        seen_after = mx_saw(lab) - before
        assert not (seen_after & unknown)
    finally:
        agent.stop()


@pytest.mark.lab
def test_forged_bounces_blacklist_nobody_and_signed_ones_confirm(
    make_lab: MakeLab, tmp_path: Path
) -> None:
    table = table_dir() / "blacklist"
    lab = lab_with_table(make_lab, table)
    cfg = blacklist_config(tmp_path / "agent.yml", lab, free_port(), table)
    c = ["--config", str(cfg), "--state-dir", str(tmp_path / "state")]
    plan = make_plan(
        200,
        bounce_domain=lab.bounce_domain,
        seed=37,
        sender_for=lambda uid, d: make_address(uid, d, KEY.encode()),
    )
    assert mailpulse("blacklist", "publish", *c).returncode == 0
    assert send(lab, plan, "forged") == set()
    settle(lab, sum(p.status == "bounced" for p in plan))
    delivered = next(p for p in plan if p.kind == "ok")
    unknown = next(p for p in plan if p.kind == "unknown")
    forged_dir = tmp_path / "forged"
    forged_dir.mkdir()
    unsigned = make_address(delivered.user_id, lab.bounce_domain)
    other_key = make_address(delivered.user_id, lab.bounce_domain, b"not our key")
    (forged_dir / "1.eml").write_bytes(postfix_dsn(delivered.recipient, unsigned))
    (forged_dir / "2.eml").write_bytes(postfix_dsn(delivered.recipient, other_key))
    # Bounces alone (no log): forged ones list nobody.
    assert mailpulse("blacklist", "ingest", *c, "--dsn", str(forged_dir)).returncode == 0
    assert listed(*c) == {}
    # With the log read, the planned unknown is listed from it; a correctly signed bounce
    # confirms it, and the forged ones still list nobody.
    r = mailpulse("blacklist", "ingest", *c, "--log", str(lab.maillog))
    assert r.returncode == 0, r.stderr
    signed = make_address(unknown.user_id, lab.bounce_domain, KEY.encode())
    (forged_dir / "3.eml").write_bytes(postfix_dsn(unknown.recipient, signed))
    assert mailpulse("blacklist", "ingest", *c, "--dsn", str(forged_dir)).returncode == 0
    entries = listed(*c)
    assert delivered.recipient not in entries
    ev = entries[unknown.recipient]["evidence"]
    assert ("dsn", True) in {(v["source"], v["verified"]) for v in ev}  # type: ignore[attr-defined]
    # Soft state with a clock the test moves: the same campaign log read on three distinct days
    # lists the disabled and mailbox-full recipients on the third, and no one else is added.
    from mailpulse.bounce.blacklist import Blacklist
    from mailpulse.bounce.store import SqliteStore
    from mailpulse.collectors.maillog import Correlator

    from mailpulse.config import load_config
    from mailpulse.events import outcome_of_event
    from mailpulse.report import input_events

    day = [1_800_000_000.0]
    config = load_config(cfg)
    soft = Blacklist(config, SqliteStore(tmp_path / "soft.sqlite"), clock=lambda: day[0])
    for n in range(3):
        for ev in input_events(Correlator(), [lab.maillog]):
            soft.record(outcome_of_event(ev, soft.verp))
        if n < 2:
            soft_kinds = {p.recipient for p in plan if p.kind in ("disabled", "full")}
            assert not soft_kinds & set(soft.store.keys_in_force(day[0]))
            day[0] += 86_400.0
    want = {p.recipient for p in plan if p.kind in ("unknown", "disabled", "full")}
    assert set(soft.store.keys_in_force(day[0])) == want


@pytest.mark.lab
def test_outage_switch_trips_the_breaker_and_holds_the_rest(
    make_lab: MakeLab, tmp_path: Path
) -> None:
    table = table_dir() / "blacklist"
    lab = lab_with_table(make_lab, table)
    port = free_port()
    state = tmp_path / "state"
    cfg = blacklist_config(
        tmp_path / "agent.yml",
        lab,
        port,
        table,
        "  breaker_count: 5\n  breaker_min_failures: 1000\n",
    )
    agent = AgentProcess(cfg, state, port, tmp_path / "agent.log").start()
    try:
        wait_until(lambda: table.with_suffix(".cdb").exists(), 30, "the first table")
        lab.set_outage(["gmail.com"])
        plan = make_plan(
            300,
            bounce_domain=lab.bounce_domain,
            seed=41,
            outage=["gmail.com"],
            sender_for=lambda uid, d: make_address(uid, d, KEY.encode()),
        )
        assert send(lab, plan, "outage") == set()
        settle(lab, sum(p.status == "bounced" for p in plan))
        gmail = {p.recipient for p in plan if p.domain == "gmail.com"}
        c = ["--config", str(cfg), "--state-dir", str(state)]

        def held() -> dict[str, dict[str, object]]:
            return listed(*c, "--quarantine")

        wait_until(
            lambda: len(set(listed(*c)) & gmail) + len(held()) == len(gmail),
            60,
            "every gmail recipient listed or held",
        )
        assert len(set(listed(*c)) & gmail) == 5
        assert set(held()) <= gmail and {h["hold"] for h in held().values()} == {"breaker"}
        labels = frozenset({("node", lab.node), ("role", "bulk"), ("domain_group", "gmail")})
        assert scrape(port)[("mailpulse_blacklist_breaker_open", labels)] == 1.0
        # Reviewed and dropped in bulk.
        r = mailpulse("blacklist", "quarantine", "drop", *c, "--group", "gmail")
        assert r.returncode == 0 and held() == {}
    finally:
        agent.stop()


def fleet_config(path: Path, lab: Lab, port: int, table: Path, redis_url: str, mode: str) -> Path:
    return write_agent_config(
        path,
        [lab],
        port,
        f"blacklist:\n  agent: {mode}\n  store: redis\n"
        f"  table: {table}\n  table_type: cdb\n  postfix_config_dir: {lab.etc}\n"
        f"  maildir: {lab.maildir}\n  jitter_share: 0\n  sync_interval: 0.2\n"
        f"redis:\n  url: {redis_url}\nbounce:\n  verp_key: {KEY}\n",
    )


def analyser_config(path: Path, where: Path, port: int, etc: Path, redis_url: str) -> Path:
    from tests.agent_support import spoolless_postfix

    where.mkdir(parents=True, exist_ok=True)
    (where / "empty.log").write_text("")
    path.write_text(
        f"node: analyser\nlisten: 127.0.0.1:{port}\n"
        f"postfix:\n  config_dirs: [{spoolless_postfix(where)}]\n"
        f"logs:\n  files: [{where / 'empty.log'}]\n  poll_interval: 0.2\n"
        f"blacklist:\n  agent: analyser\n  store: redis\n  table: {where / 'blacklist'}\n"
        f"  postfix_config_dir: {etc}\n  jitter_share: 0\n  sync_interval: 0.2\n"
        f"redis:\n  url: {redis_url}\nbounce:\n  verp_key: {KEY}\n"
    )
    return path


@pytest.mark.lab
def test_redis_fleet_two_nodes_and_an_analyser(make_lab: MakeLab, tmp_path: Path) -> None:
    import redis as redis_client

    from tests.redis_support import RedisServer

    server = RedisServer().start()
    tables = [table_dir() / "blacklist", table_dir() / "blacklist"]
    labs = [
        make_lab(
            node=f"node{i + 1}",
            main_cf_extra={"smtpd_recipient_restrictions": f"check_recipient_access cdb:{t}"},
        )
        for i, t in enumerate(tables)
    ]
    agents: list[AgentProcess] = []
    try:
        for i, (lab, table) in enumerate(zip(labs, tables, strict=True)):
            port = free_port()
            cfg = fleet_config(tmp_path / f"node{i}.yml", lab, port, table, server.url, "node")
            agents.append(AgentProcess(cfg, tmp_path / f"state{i}", port, tmp_path / f"a{i}.log"))
        port = free_port()
        acfg = analyser_config(
            tmp_path / "analyser.yml", tmp_path / "analyser", port, labs[0].etc, server.url
        )
        agents.append(AgentProcess(acfg, tmp_path / "state-a", port, tmp_path / "aa.log"))
        for a in agents:
            a.start()
        for t in tables:
            wait_until(lambda t=t: t.with_suffix(".cdb").exists(), 30, "the nodes' first tables")
        a_c = ["--config", str(acfg), "--state-dir", str(tmp_path / "state-a")]

        # A decision reaches both nodes' tables.
        manual = "unknown-u1@gmail.com"
        started = time.monotonic()
        assert mailpulse("blacklist", "add", *a_c, manual).returncode == 0
        for lab in labs:
            wait_until(lambda lab=lab: refused_now(lab, manual), 10, "both nodes to refuse", 0.05)
        reach = time.monotonic() - started
        print(f"decision to both nodes refusing: {reach:.2f} s")
        (tmp_path / "fleet-latency.txt").write_text(f"{reach:.3f}\n")
        assert reach < 5.0

        def plan_for(seed: int) -> list[Planned]:
            return make_plan(
                150,
                bounce_domain=labs[0].bounce_domain,
                seed=seed,
                sender_for=lambda uid, d: make_address(uid, d, KEY.encode()),
            )

        # Node 1's campaign: decided by the analyser, enforced on node 2 too.
        first = plan_for(51)
        assert send(labs[0], first, "fleet1") == set()
        settle(labs[0], sum(p.status == "bounced" for p in first))
        unknown1 = {p.recipient for p in first if p.kind == "unknown"}
        wait_until(lambda: set(listed(*a_c)) == unknown1 | {manual}, 60, "the analyser's list")
        some = sorted(unknown1)[0]
        wait_until(
            lambda: all(refused_now(lab, some) for lab in labs),
            10,
            "both nodes to refuse node 1's bounce",
        )

        # Redis away: the nodes keep their tables and buffer node 2's campaign.
        server.stop()
        second = plan_for(52)
        assert send(labs[1], second, "fleet2") == set()
        settle(labs[1], sum(p.status == "bounced" for p in second))
        for lab in labs:
            assert refused_now(lab, manual) and refused_now(lab, some)
        outbox = tmp_path / "state1" / "blacklist-outbox.jsonl"
        wait_until(
            lambda: outbox.exists() or outbox.with_name(outbox.name + ".sending").exists(),
            30,
            "node 2 to buffer its outcomes",
        )

        # Redis back: everything buffered arrives, once.
        server.start()
        unknown2 = {p.recipient for p in second if p.kind == "unknown"}
        want = unknown1 | unknown2 | {manual}
        wait_until(lambda: set(listed(*a_c)) == want, 60, "the buffered outcomes decided")
        r = redis_client.Redis.from_url(server.url, decode_responses=True)
        events = [f["id"] for _, f in r.xrange("mailpulse:outcomes")]
        assert len(events) == len(set(events)), "an outcome arrived twice"
        final2 = {p.recipient for p in second if p.status in ("sent", "bounced")}
        from_node2 = {e.split(":")[4] for e in events if e.startswith("log:node2:")}
        assert final2 <= from_node2
        counters = r.hgetall("mailpulse:bl:counters")
        assert int(counters["additions\tuserunknown"]) == len(unknown1 | unknown2)
        some2 = sorted(unknown2)[0]
        wait_until(lambda: refused_now(labs[0], some2), 10, "node 1 to refuse node 2's bounce")
    finally:
        for a in agents:
            a.stop()
        server.destroy()


@pytest.mark.lab
def test_sendmail_injected_mail_to_a_blacklisted_recipient_is_dropped(
    make_lab: MakeLab, tmp_path: Path
) -> None:
    table = table_dir() / "blacklist"
    lab = lab_with_table(make_lab, table)
    cfg = blacklist_config(tmp_path / "agent.yml", lab, free_port(), table)
    c = ["--config", str(cfg), "--state-dir", str(tmp_path / "state")]
    gone, kept = "unknown-u7@gmail.com", "ok-u8@gmail.com"
    assert mailpulse("blacklist", "add", *c, gone).returncode == 0
    assert mailpulse("blacklist", "publish", *c).returncode == 0
    # The README's route for mail that never meets smtpd.
    maps = f"transport_maps=cdb:{table}_transport, texthash:{lab.etc / 'transport'}"
    subprocess.run(["postconf", "-c", str(lab.etc), "-e", maps], check=True)
    subprocess.run(["postfix", "-c", str(lab.etc), "reload"], check=True, capture_output=True)
    message = f"From: news@lab.test\nTo: {gone}, {kept}\nSubject: injected\n\nhello\n".encode()
    subprocess.run(
        ["sendmail", "-C", str(lab.etc), "-f", f"bounce-7@{lab.bounce_domain}", gone, kept],
        input=message,
        check=True,
    )

    def logged() -> str:
        return lab.maillog.read_text()

    wait_until(
        lambda: f"to=<{gone}>" in logged() and f"to=<{kept}>" in logged(), 60, "both deliveries"
    )
    line = next(x for x in logged().splitlines() if f"to=<{gone}>" in x)
    assert "relay=none" in line and "blacklisted by mailpulse" in line, line
    assert gone not in mx_saw(lab) and kept in mx_saw(lab)
