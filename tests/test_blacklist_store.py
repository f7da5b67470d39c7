"""The blacklist's SQLite store under kill -9, its Postfix tables (real postmap), the shrink
guard, key validation, and the command line (pipe(8) exit codes included)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mailpulse.bounce.publish import (
    ACCESS_ACTION,
    TRANSPORT_ACTION,
    TableRefused,
    key_problem,
    publish,
)
from mailpulse.bounce.store import SqliteStore

from mailpulse.exits import USAGE
from tests.agent_support import mailpulse
from tests.conftest import require_programs
from tests.test_bounce_intake import postfix_dsn

WRITER = r"""
import sys, time
from pathlib import Path
from mailpulse.bounce.policy import Entry
from mailpulse.bounce.store import SqliteStore
store = SqliteStore(Path(sys.argv[1]))
i = 0
while True:
    e = Entry(f"u{i}@example.com", str(i), "userunknown", "other", time.time(), None, 1, "hard")
    store.put(e)
    print(i, flush=True)  # said only once the transaction returned
    i += 1
"""


def test_sqlite_store_survives_kill_9_mid_write(tmp_path: Path) -> None:
    db = tmp_path / "bl.sqlite"
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    confirmed = -1
    for line in p.stdout:
        confirmed = int(line)
        if confirmed >= 300:
            break
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    for line in p.stdout:  # what it confirmed after the reader stopped, still in the pipe
        if line.endswith("\n"):
            confirmed = int(line)
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store = SqliteStore(db)
    keys = set(store.keys_in_force(time.time()))
    # Every write it confirmed is there, and at most the one in flight besides.
    assert {f"u{i}@example.com" for i in range(confirmed + 1)} <= keys
    assert len(keys) <= confirmed + 2
    assert store.counters()[("additions", "userunknown")] == len(keys)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "a b@example.com",
        "a\tb@example.com",
        "a@example.com\nevil@example.com REJECT",
        "a@example.com OK",
        "#a@example.com",
        "a#b@example.com",
        "a\x00b@example.com",
        "a\x7f@example.com",
        "ü@example.com",
        "a@exämple.com",
        "A@example.com",
        "a" * 65 + "@example.com",
        "a@" + ("b" * 60 + ".") * 5 + "com",
        "@example.com",
        "a@",
        "a@localhost",
        ".a@example.com",
        "a..b@example.com",
        "a@[127.0.0.1]",
        "a|b@example.com",
        "a\\b@example.com",
        'a"b@example.com',
    ],
)
def test_key_problem_refuses_what_could_break_a_table(key: str) -> None:
    assert key_problem(key)


@pytest.mark.parametrize(
    "key",
    ["a@example.com", "first.last+tag@mail.example.co.uk", "x-y_z=1@gmail.com", "example.com"],
)
def test_key_problem_accepts_addresses_and_domains(key: str) -> None:
    assert key_problem(key) == ""


def postfix_dir(tmp_path: Path) -> Path:
    require_programs("postmap", "postconf")
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "main.cf").write_text("compatibility_level = 3.6\n")
    return etc


def query(etc: Path, table: str, key: str) -> str:
    r = subprocess.run(
        ["postmap", "-c", str(etc), "-q", key, table], capture_output=True, text=True, check=False
    )
    return r.stdout.strip()


@pytest.mark.parametrize("map_type", ["cdb", "lmdb", "texthash"])
def test_tables_are_built_aside_and_answer_postfix(tmp_path: Path, map_type: str) -> None:
    etc = postfix_dir(tmp_path)
    if (
        map_type
        not in subprocess.run(
            ["postconf", "-c", str(etc), "-m"], capture_output=True, text=True, check=False
        ).stdout.split()
    ):
        pytest.fail(f"Postfix lacks {map_type} (the Makefile installs postfix-cdb, postfix-lmdb)")
    path = etc / "blacklist"
    hostile = ["evil@example.com OK", "x\n@example.com", "good@example.com"]
    done = publish([*hostile, "b@example.com", "example.org"], path, map_type, config_dir=etc)
    assert (done.entries, done.map_type) == (3, map_type)
    table = f"{map_type}:{path}"
    assert query(etc, table, "good@example.com") == ACCESS_ACTION
    assert query(etc, table, "example.org") == ACCESS_ACTION
    assert query(etc, table, "evil@example.com") == ""
    assert query(etc, f"{map_type}:{path}_transport", "b@example.com") == TRANSPORT_ACTION
    assert path.read_text().count("\n") == 3
    assert sorted(p.name for p in etc.iterdir() if p.name.startswith(".")) == []  # no leftovers


def test_shrink_guard_keeps_the_table_in_force(tmp_path: Path) -> None:
    etc = postfix_dir(tmp_path)
    path = etc / "blacklist"
    publish([f"u{i}@example.com" for i in range(100)], path, "cdb", 0.5, etc)
    before = (path.with_suffix(".cdb").read_bytes(), path.read_bytes())
    with pytest.raises(TableRefused, match="40 entries would replace 100"):
        publish([f"u{i}@example.com" for i in range(40)], path, "cdb", 0.5, etc)
    assert (path.with_suffix(".cdb").read_bytes(), path.read_bytes()) == before
    assert query(etc, f"cdb:{path}", "u99@example.com") == ACCESS_ACTION
    assert publish([f"u{i}@example.com" for i in range(60)], path, "cdb", 0.5, etc).entries == 60
    assert publish([], path, "cdb", 0.5, etc, force=True).entries == 0


def cli_config(tmp_path: Path, etc: Path, extra: str = "") -> Path:
    cfg = tmp_path / "mailpulse.yml"
    cfg.write_text(
        f"blacklist:\n  table: {etc / 'blacklist'}\n  postfix_config_dir: {etc}\n"
        f"  jitter_share: 0\n{extra}"
    )
    return cfg


def test_cli_add_list_export_publish_remove(tmp_path: Path) -> None:
    etc = postfix_dir(tmp_path)
    c = ["--config", str(cli_config(tmp_path, etc)), "--state-dir", str(tmp_path / "st")]
    r = mailpulse("blacklist", "add", *c, "A@Example.com", "bad key@example.com", "--ttl", "2d")
    assert r.returncode == USAGE and "'bad key@example.com': not added" in r.stderr
    assert mailpulse("blacklist", "add", *c, "b@gmail.com").returncode == 0
    listed = [
        json.loads(x) for x in mailpulse("blacklist", "list", *c, "--json").stdout.split("\n") if x
    ]
    assert {(x["key"], x["domain_group"]) for x in listed} == {
        ("a@example.com", "other"),
        ("b@gmail.com", "gmail"),
    }
    csv = mailpulse("blacklist", "export", *c).stdout.splitlines()
    assert csv[0] == "user_id,address,domain,reason,expires" and len(csv) == 3
    assert mailpulse("blacklist", "publish", *c).returncode == 0
    assert query(etc, f"cdb:{etc / 'blacklist'}", "a@example.com") == ACCESS_ACTION
    assert mailpulse("blacklist", "remove", *c, "a@example.com", "b@gmail.com").returncode == 0
    r = mailpulse("blacklist", "publish", *c)  # would empty the table: refused
    assert r.returncode == 1 and "would replace 2" in r.stderr
    assert query(etc, f"cdb:{etc / 'blacklist'}", "a@example.com") == ACCESS_ACTION
    r = mailpulse("blacklist", "lift", *c)
    assert r.returncode == USAGE and "give a filter" in r.stderr


def run_pipe(tmp_path: Path, state_dir: Path, raw: bytes, env: dict[str, str]) -> int:
    etc = tmp_path / "etc"
    cfg = cli_config(tmp_path, etc)
    r = subprocess.run(
        [sys.executable, "-m", "mailpulse", "blacklist", "ingest", "--dsn", "-",
         "--config", str(cfg), "--state-dir", str(state_dir)],
        input=raw, capture_output=True, env={**os.environ, **env}, check=False,
    )  # fmt: skip
    return r.returncode


def test_pipe_ingest_exits_0_once_recorded_and_75_when_it_could_not_be(tmp_path: Path) -> None:
    from mailpulse.bounce.verp import make_address

    (tmp_path / "etc").mkdir()
    key = "pipe-key"
    verp = make_address("77", "bounces.example", key.encode())
    raw = postfix_dsn("gone@example.com", verp)
    env = {"MAILPULSE_VERP_KEY": key, "MAILPULSE_ENVELOPE_RECIPIENT": verp}
    st = tmp_path / "st"
    assert run_pipe(tmp_path, st, raw, env) == 0
    assert run_pipe(tmp_path, st, raw, env) == 0  # the same mail again: recorded once
    store = SqliteStore(st / "blacklist.sqlite")
    e = store.entry("gone@example.com")
    assert e is not None and e.user_id == "77" and e.evidence[0].verified
    assert len(e.evidence) == 1
    assert store.counters()[("bounce_recipients", "userunknown\tverified")] == 1
    # A state directory that cannot be made: Postfix must keep the mail and retry.
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert run_pipe(tmp_path, blocker / "st", raw, env) == 75


def test_pipe_ingest_never_bounces_a_bounce_whatever_is_broken(tmp_path: Path) -> None:
    """pipe(8) bounces the mail on any code but 0 and 75: a config file mid-edit or gone, a
    damaged SQLite file, a table directory that cannot be made all keep it queued (75)."""
    raw = postfix_dsn("gone@example.com", "bounce-77@bounces.example")

    def pipe(*options: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "mailpulse", "blacklist", "ingest", "--dsn", "-", *options],
            input=raw, capture_output=True, check=False,
        )  # fmt: skip

    broken = tmp_path / "broken.yml"
    broken.write_text("blacklist: {store: [\n")
    for cfg in (broken, tmp_path / "missing.yml"):
        r = pipe("--config", str(cfg), "--state-dir", str(tmp_path / "st"))
        assert r.returncode == 75 and b"Postfix will retry" in r.stderr
        assert b"Traceback" not in r.stderr
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "blacklist.sqlite").write_bytes(b"\x17not a database" * 400)
    assert pipe("--state-dir", str(damaged)).returncode == 75
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = tmp_path / "table.yml"
    cfg.write_text(f"blacklist:\n  table: {blocker / 'etc' / 'blacklist'}\n")
    r = pipe("--config", str(cfg), "--state-dir", str(tmp_path / "st2"), "--publish")
    assert r.returncode == 75 and b"Traceback" not in r.stderr


def test_agent_serves_the_export_behind_its_basic_auth(tmp_path: Path) -> None:
    import base64
    import urllib.error
    import urllib.request

    from lab.postfix import free_port, wait_until
    from mailpulse.agent import Agent
    from mailpulse.config import instances_to_watch, parse_config
    from tests.agent_support import spoolless_postfix
    from tests.test_exporter import write_web_config

    etc = postfix_dir(tmp_path)
    web = tmp_path / "web.yml"
    write_web_config(web, tls=False, password="s3cret")
    (tmp_path / "mail.log").write_text("")
    port = free_port()
    cfg = parse_config(
        {
            "listen": f"127.0.0.1:{port}",
            "state_dir": str(tmp_path / "state"),
            "web_config_file": str(web),
            "postfix": {"config_dirs": [str(spoolless_postfix(tmp_path))]},
            "logs": {"files": [str(tmp_path / "mail.log")], "poll_interval": 0.1},
            "blacklist": {"agent": "local", "table": str(etc / "bl"),
                          "postfix_config_dir": str(etc), "sync_interval": 0.1},
        }
    )  # fmt: skip
    agent = Agent(cfg, instances_to_watch(cfg), [tmp_path / "mail.log"])
    agent.start()
    try:
        assert (
            mailpulse(
                "blacklist", "add", "--state-dir", str(tmp_path / "state"), "gone@example.com"
            ).returncode
            == 0
        )
        wait_until(lambda: (etc / "bl").exists() and b"gone" in (etc / "bl").read_bytes(), 10,
                   "the agent to publish the new entry")  # fmt: skip

        def get(path: str, password: str | None) -> tuple[int, bytes]:
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
            if password:
                token = base64.b64encode(f"prom:{password}".encode()).decode()
                req.add_header("Authorization", f"Basic {token}")
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as e:
                return e.code, b""

        assert get("/blacklist.csv", None)[0] == 401
        assert get("/blacklist.json", "wrong")[0] == 401
        status, body = get("/blacklist.csv", "s3cret")
        assert status == 200 and ",gone@example.com,example.com,manual," in body.decode()
        status, body = get("/blacklist.json", "s3cret")
        assert status == 200 and json.loads(body)[0]["address"] == "gone@example.com"
        status, body = get("/metrics", "s3cret")
        assert b"mailpulse_blacklist_entries{" in body and b"} 1.0" in body
    finally:
        agent.stop()


def test_a_store_that_is_away_is_one_line(tmp_path: Path) -> None:
    from lab.postfix import free_port
    from tests.agent_support import assert_one_line_error

    cfg = tmp_path / "r.yml"
    cfg.write_text(
        f"blacklist:\n  store: redis\nredis:\n  url: redis://127.0.0.1:{free_port()}/0\n"
    )
    c = ["--config", str(cfg), "--state-dir", str(tmp_path / "st")]
    assert_one_line_error(mailpulse("blacklist", "list", *c), 1, "blacklist store:")
    assert_one_line_error(mailpulse("blacklist", "add", *c, "a@example.com"), 1, "blacklist store:")
    # Damaged SQLite: said, not a traceback.
    st = tmp_path / "bad"
    st.mkdir()
    (st / "blacklist.sqlite").write_bytes(b"not a database" * 100)
    r = mailpulse("blacklist", "list", "--state-dir", str(st))
    assert_one_line_error(r, 1, "blacklist store:")


def test_outbox_and_stream_skip_damaged_entries(tmp_path: Path) -> None:
    import threading
    from dataclasses import asdict, replace

    import redis as redis_client
    from mailpulse.bounce.blacklist import BlacklistAgent, Outbox, event_id

    from lab.postfix import wait_until
    from mailpulse.config import parse_config
    from mailpulse.events import Outcome
    from tests.redis_support import RedisServer

    def outcome(rcpt: str) -> Outcome:
        said = "550 5.1.1 unknown"
        return Outcome(
            rcpt, "9", False, "bounced", "5.1.1", "550", said,
            "userunknown", "recipient", True, "n1", "postfix", 1.0, "log", "Q",
        )  # fmt: skip

    server = RedisServer().start()
    stop = threading.Event()
    agent: BlacklistAgent | None = None
    try:
        etc = postfix_dir(tmp_path)
        cfg = parse_config(
            {"state_dir": str(tmp_path / "st"), "redis": {"url": server.url},
             "blacklist": {"agent": "analyser", "store": "redis", "table": str(etc / "bl"),
                           "postfix_config_dir": str(etc), "sync_interval": 0.1}}
        )  # fmt: skip
        r = redis_client.Redis.from_url(server.url, decode_responses=True)
        # A node's outbox with a line cut by a crash in the middle of it.
        box = Outbox(tmp_path / "outbox.jsonl")
        box.put(event_id(outcome("a@example.com")), outcome("a@example.com"))
        with box.path.open("a") as f:
            f.write('["log:cut", "{\\"recipi')
            f.write("\n")
        box.put(event_id(outcome("b@example.com")), outcome("b@example.com"))
        # A signed bounce a node read, sent twice (its Maildir read again after a crash).
        bounced = replace(outcome("d@example.com"), verp_verified=True, source="dsn")
        box.put(event_id(bounced, "mail1"), bounced)
        box.put(event_id(bounced, "mail1"), bounced)
        from mailpulse.bounce.redis_store import RedisStore

        sender = RedisStore(server.url)
        assert box.drain(sender.send) == 4 and box.pending() == 0
        # Junk on the stream from someone else, and a well-formed entry after it.
        r.xadd("mailpulse:outcomes", {"id": "x", "o": "not json"})
        r.xadd("mailpulse:outcomes", {"id": "y", "o": json.dumps({"recipient": 5})})
        good = asdict(outcome("c@example.com")) | {"recipient": ["not", "a", "string"]}
        r.xadd("mailpulse:outcomes", {"id": "z", "o": json.dumps(good)})
        agent = BlacklistAgent(cfg, stop)
        agent.start()
        want = {"a@example.com", "b@example.com", "d@example.com"}
        wait_until(lambda: set(sender.keys_in_force(time.time())) == want, 20, "all recorded")
        wait_until(
            lambda: r.xpending("mailpulse:outcomes", "analysers")["pending"] == 0, 20, "all acked"
        )
        assert sender.counters()[("stream_bad_entries", "")] == 3
        # The analyser counts the bounce's recipient once, as a lone node does.
        assert sender.counters()[("bounce_recipients", "userunknown\tverified")] == 1
    finally:
        stop.set()
        if agent is not None:
            agent.stop()
        server.destroy()
