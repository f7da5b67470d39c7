"""The agent's config file, its persisted state, and the host collector against a real lab."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from mailpulse.collectors.host import parse_master_limits

from mailpulse.agentcheck import health_weight
from mailpulse.config import AgentCheckConfig, Config, ConfigError, load_config, parse_config
from mailpulse.state import State
from tests.agent_support import assert_one_line_error, mailpulse


def test_no_file_means_defaults_for_a_stock_node() -> None:
    cfg = parse_config(None)
    assert cfg.listen == "127.0.0.1:9154"
    assert cfg.role == "bulk"
    assert cfg.state_dir == Path("/var/lib/mailpulse")
    assert cfg.agent_check.listen is None


def test_a_full_file_is_read(tmp_path: Path) -> None:
    f = tmp_path / "mailpulse.yaml"
    f.write_text(
        "node: bulk3\nrole: transactional\nlisten: 0.0.0.0:9999\n"
        "logs:\n  files: [/var/log/mail.log]\n  poll_interval: 0.2\n  max_messages: 5000\n"
        "  content_filters: ['127.0.0.1:10026']\n"
        "domain_groups:\n  Example.COM: example\n"
        "agent_check:\n  listen: 127.0.0.1:9155\n  block_share: 0.5\n"
        "blacklist:\n  ttl_5xx: 30d\n"  # another command's section: kept, not judged
    )
    cfg = load_config(f)
    assert (cfg.node, cfg.role, cfg.listen) == ("bulk3", "transactional", "0.0.0.0:9999")
    assert cfg.log_files == (Path("/var/log/mail.log"),) and cfg.log_poll_s == 0.2
    assert cfg.max_messages == 5000 and cfg.content_filters == ("127.0.0.1:10026",)
    assert cfg.domain_groups == {"example.com": "example"}
    assert cfg.agent_check.listen == "127.0.0.1:9155" and cfg.agent_check.block_share == 0.5
    assert cfg.other == {"blacklist": {"ttl_5xx": "30d"}}


@pytest.mark.parametrize(
    "text, key",
    [
        ("role: marketing\n", "role"),  # not bulk or transactional
        ("listen: 9154\n", "listen"),  # no host
        ("queue:\n  interval: -1\n", "queue.interval"),  # not positive
        ("queue:\n  intervall: 5\n", "queue.intervall"),  # misspelt
        ("agent_check:\n  block_share: 3\n", "agent_check.block_share"),  # not a share
        ("nodes: x\n", "nodes"),  # unknown key
        ("logs: [a, b]\n", "logs"),  # a list where a map belongs
        ("blacklist: 3\n", "blacklist"),  # another command's section, not even a map
        ("role: [bulk\n", "not valid YAML"),  # broken YAML
        ("- a\n- b\n", "top level"),  # not a map at all
    ],
)
def test_a_wrong_setting_names_the_key_and_the_file(tmp_path: Path, text: str, key: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(f) in str(e.value) and key in str(e.value)


def test_check_config_refuses_a_bad_file_with_the_key(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("role: marketing\n")
    r = subprocess.run(
        [sys.executable, "-m", "mailpulse", "agent", "--config", str(f), "--check-config"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert f"{f}: role: expected bulk or transactional" in r.stderr


@pytest.mark.lab
def test_check_config_finds_the_lab_instance_its_log_and_spool(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "mailpulse.yaml"
    f.write_text(f"postfix:\n  config_dirs: [{lab.etc}]\nrole: transactional\n")
    r = subprocess.run(
        [sys.executable, "-m", "mailpulse", "agent", "--config", str(f), "--check-config"]
        + ["--state-dir", str(tmp_path / "state")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert f"instance postfix: {lab.etc}, queue {lab.spool}" in r.stdout
    assert f"logs: {lab.maillog}" in r.stdout  # the lab sets maillog_file; postconf says so
    assert "role transactional" in r.stdout


def test_state_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    s = State(path)
    s.inc("mailpulse_deliveries_total", ("postfix", "sent", "delivered", "gmail", "2xx"), 5)
    s.observe("mailpulse_message_size_bytes", ("postfix",), (10.0, 100.0), 50.0)
    s.commit({"checkpoint:/var/log/mail.log": "abc"})
    s.inc("mailpulse_deliveries_total", ("postfix", "sent", "delivered", "gmail", "2xx"), 7)
    s.close()  # the last increment was never committed: it must not be there
    again = State(path)
    snap = again.snapshot()
    assert snap.counters == {
        ("mailpulse_deliveries_total", ("postfix", "sent", "delivered", "gmail", "2xx")): 5.0
    }
    hist = snap.histograms[("mailpulse_message_size_bytes", ("postfix",))]
    assert hist.counts == [0, 1, 0] and hist.sum == 50.0
    assert again.meta("checkpoint:/var/log/mail.log") == "abc"
    again.close()


def test_a_corrupt_state_file_is_set_aside_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.sqlite"
    path.write_bytes(b"this is not SQLite at all, a disk went bad\n" * 100)  # bad input
    with caplog.at_level(logging.WARNING):
        s = State(path)
    assert s.set_aside is not None and s.set_aside.exists()
    assert s.set_aside.read_bytes().startswith(b"this is not SQLite")
    assert "unreadable" in caplog.text and str(s.set_aside) in caplog.text
    assert s.snapshot().counters == {}
    s.inc("mailpulse_log_lines_total", (), 3)
    s.commit()
    s.close()
    assert State(path).snapshot().counters == {("mailpulse_log_lines_total", ()): 3.0}


def test_scrapes_see_only_committed_values(tmp_path: Path) -> None:
    # What a scrape showed must survive a kill -9, so it shows only what is on disk.
    s = State(tmp_path / "s.sqlite")
    s.inc("mailpulse_log_lines_total", (), 3)
    s.observe("mailpulse_message_size_bytes", ("postfix",), (10.0,), 5.0)
    assert s.snapshot().counters == {} and s.snapshot().histograms == {}
    s.commit()
    s.inc("mailpulse_log_lines_total", (), 4)
    assert s.snapshot().counters == {("mailpulse_log_lines_total", ()): 3.0}
    s.commit()
    assert s.snapshot().counters == {("mailpulse_log_lines_total", ()): 7.0}
    assert s.snapshot().histograms[("mailpulse_message_size_bytes", ("postfix",))].counts == [1, 0]
    s.close()


def test_a_counter_cannot_be_lowered(tmp_path: Path) -> None:
    s = State(tmp_path / "s.sqlite")
    with pytest.raises(ValueError, match="only go up"):
        s.inc("mailpulse_log_lines_total", (), -1)  # bad input: a negative increment
    s.close()


def test_master_cf_limits_use_default_process_limit() -> None:
    text = (
        "smtp       unix  -       -       n       -       -       smtp\n"
        "qmgr       unix  n       -       n       300     1       qmgr\n"
        "tlsmgr     unix  -       -       n       1000?   1       tlsmgr\n"
        "bulk       unix  -       -       n       -       250     smtp\n"
        "  -o syslog_name=postfix/bulk\n"
        "pipe1      unix  -       n       n       -       0       pipe\n"  # 0: unlimited
    )
    assert parse_master_limits(text, 100) == {"smtp": 100, "qmgr": 1, "tlsmgr": 1, "bulk": 250}
    # default_process_limit 0 makes every "-" service unlimited too: no limit to show.
    assert parse_master_limits(text, 0) == {"qmgr": 1, "tlsmgr": 1, "bulk": 250}


def test_weight_follows_the_worst_of_depth_growth_and_load() -> None:
    cfg = AgentCheckConfig(queue_high=1000, growth_high_per_min=100, load_high_per_cpu=2)
    assert health_weight(cfg, 0, 0, 0, 2) == 100
    assert health_weight(cfg, 500, 0, 0, 2) == 50
    assert health_weight(cfg, 0, 75, 0, 2) == 25
    assert health_weight(cfg, 0, -500, 3.0, 2) == 25  # a shrinking queue is no bonus
    assert health_weight(cfg, 10_000, 0, 0, 2) == cfg.min_weight_percent


@pytest.mark.lab
def test_host_sampler_sees_the_lab_postfix_processes_and_limits(lab) -> None:  # type: ignore[no-untyped-def]
    import os

    from mailpulse.collectors.host import HostSampler

    from mailpulse.config import instances_to_watch
    from mailpulse.series import host_series

    cfg = Config(postfix_config_dirs=(lab.etc,))
    sample = host_series(HostSampler(instances_to_watch(cfg)).sample())
    # The lab's master.cf: qmgr and pickup have 1 process each; smtp takes the default limit.
    assert sample[("mailpulse_postfix_processes", ("postfix", "qmgr"))] == 1
    assert sample[("mailpulse_postfix_processes", ("postfix", "pickup"))] == 1
    assert sample[("mailpulse_postfix_process_limit", ("postfix", "qmgr"))] == 1
    assert sample[("mailpulse_postfix_process_limit", ("postfix", "smtp"))] == 100
    st = os.statvfs(lab.spool)
    size = sample[("mailpulse_spool_filesystem_bytes", ("postfix", "size"))]
    assert size == st.f_blocks * st.f_frsize
    assert sample[("mailpulse_host_load_average", ("1m",))] >= 0


def test_check_config_refuses_a_bad_web_config(tmp_path: Path) -> None:
    cfg = tmp_path / "mailpulse.yaml"
    cfg.write_text("logs:\n  files: [/dev/null]\n")
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  prom: hunter2\n")  # bad input: a clear-text password
    r = subprocess.run(
        [sys.executable, "-m", "mailpulse", "agent", "--config", str(cfg), "--check-config"]
        + ["--web.config.file", str(web)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert f"{web}: basic_auth_users.prom: expected a bcrypt hash" in r.stderr


# Every command that reads the config file, with an input it accepts when the file is good.
CONFIG_COMMANDS = [
    ("agent", "--check-config"),
    ("logs", "parse", "/dev/null"),
    ("logs", "report", "/dev/null"),
    ("bounce", "parse", "/dev/null"),
]


@pytest.mark.parametrize("argv", CONFIG_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_a_config_file_not_in_utf8_is_one_line_naming_file_and_line(
    tmp_path: Path, argv: tuple[str, ...]
) -> None:
    f = tmp_path / "latin1.yaml"
    # Bad input: a file saved in Latin-1 by an editor: the é of "café" is the one byte 0xe9.
    f.write_bytes("role: bulk\nnode: café\n".encode("latin-1"))
    r = mailpulse(*argv[:2], "--config", str(f), *argv[2:])
    assert_one_line_error(r, 2, f"{f}: line 2: not UTF-8 (byte 0xe9 after 'node: caf')")


@pytest.mark.parametrize("argv", CONFIG_COMMANDS, ids=lambda a: " ".join(a[:2]))
@pytest.mark.parametrize(
    "text, key",
    [
        ("bounce: [verp_key, abc]\n", "bounce"),  # bad input: a list where a map belongs
        ("bounce: just a string\n", "bounce"),  # bad input: a scalar where a map belongs
        ("logs: 5\n", "logs"),  # bad input: the agent's own section, a number
        ("agent_check: [x]\n", "agent_check"),  # bad input: a list
    ],
)
def test_a_section_of_the_wrong_type_is_refused_by_every_command(
    tmp_path: Path, argv: tuple[str, ...], text: str, key: str
) -> None:
    f = tmp_path / "mailpulse.yaml"
    f.write_text(text)
    r = mailpulse(*argv[:2], "--config", str(f), *argv[2:])
    assert_one_line_error(r, 2, f"{f}: {key}: expected a map of settings")


def test_bounce_parse_refuses_a_verp_key_that_is_not_a_string(tmp_path: Path) -> None:
    f = tmp_path / "mailpulse.yaml"
    f.write_text("bounce:\n  verp_key: 0123\n")  # bad input: YAML reads this as the number 83
    r = mailpulse("bounce", "parse", "--config", str(f), "/dev/null")
    assert r.returncode == 2
    assert r.stderr == f"mailpulse: {f}: bounce.verp_key: expected a string (in quotes), got 83\n"


@pytest.mark.parametrize(
    "content, message",
    [
        # bad input: a YAML error spans several lines of text in PyYAML's own words
        (b"logs:\n  files: [/var/log/mail.log\n", "line 3, column 1: not valid YAML: expected"),
        (b"[" * 100_000, "not valid YAML: nested too deeply"),  # bad input: deep nesting
        (b"node: " + b"x" * (2 << 20) + b"\n", "larger than 1048576 bytes"),  # bad input: 2 MB
    ],
)
def test_a_broken_yaml_file_is_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    f = tmp_path / "mailpulse.yaml"
    f.write_bytes(content)
    r = mailpulse("agent", "--config", str(f), "--check-config")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and f"{f}: {message}" in r.stderr, r.stderr


def test_bounce_parse_reads_the_verp_key_from_the_common_config(tmp_path: Path) -> None:
    from mailpulse.bounce.verp import make_address

    key = "s3cret"
    f = tmp_path / "mailpulse.yaml"
    f.write_text(f"node: n1\nbounce:\n  verp_key: '{key}'\n")  # beside the agent's own keys
    address = make_address("4242", "bounces.example.com", key.encode())
    mail = tmp_path / "dsn.eml"
    mail.write_text(
        f"From: MAILER-DAEMON@mx.example.net\nTo: {address}\nSubject: Undelivered\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n\n'
        "--B\nContent-Type: text/plain\n\nfailed\n\n--B\n"
        "Content-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.net\n\n"
        "Final-Recipient: rfc822; u@example.org\nAction: failed\nStatus: 5.1.1\n\n--B--\n"
    )
    r = mailpulse("bounce", "parse", "--json", "--config", str(f), str(mail))
    assert r.returncode == 0, r.stderr
    import json

    (record,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert (record["user_id"], record["verp_verified"]) == ("4242", True)


@pytest.mark.parametrize(
    "text, message",
    [
        # bad input: near-misses of a key, at the top, in a section, in another command's section
        ("nodes: bulk1\n", "nodes: unknown setting; did you mean node?"),
        ("queue:\n  intervall: 5\n", "queue.intervall: unknown setting; did you mean interval?"),
        ("bounce:\n  verpkey: 'k'\n", "bounce.verpkey: unknown setting; did you mean verp_key?"),
        ("blacklist:\n  ttl_5x: 30d\n", "blacklist.ttl_5x: unknown setting; did you mean ttl_5xx?"),
        # bad input: a key in a section whose command is not built yet
        ("alerts:\n  receiver: x\n", "alerts.receiver: unknown setting (alerts accepts none yet"),
        ("snmp:\n  stale_afer: 60\n", "snmp.stale_afer: unknown setting; did you mean stale_a"),
        ("graph:\n  width: 0\n", "graph.width: expected a positive number"),
        # bad input: values of the wrong kind in the reserved sections
        ("blacklist:\n  ttl_5xx: 30 days\n", "blacklist.ttl_5xx: expected a duration"),
        ("blacklist:\n  store: mysql\n", "blacklist.store: expected sqlite or redis"),
        ("redis:\n  url: 127.0.0.1:6379\n", "redis.url: expected a Redis URL"),
        # bad input: infinite numbers, which int() cannot take
        ("top_k: .inf\n", "top_k: expected a positive number, got inf"),
        ("blacklist:\n  ttl_4xx: .inf\n", "blacklist.ttl_4xx: expected a duration"),
    ],
)
def test_every_section_is_checked_with_a_hint_for_a_near_miss(
    tmp_path: Path, text: str, message: str
) -> None:
    f = tmp_path / "mailpulse.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value).startswith(f"{f}: {message}"), str(e.value)


def test_the_reserved_sections_read_their_settings() -> None:
    cfg = parse_config(
        {
            "bounce": {"verp_key": "k", "recipient_delimiter": "+"},
            "blacklist": {"ttl_5xx": "30d", "ttl_4xx": "12h", "store": "redis", "dry_run": True},
            "redis": {"url": "redis://10.0.0.5:6379/1"},
            "snmp": {},
        }
    )
    assert (cfg.bounce.verp_key, cfg.bounce.recipient_delimiter) == ("k", "+")
    assert cfg.blacklist.ttl_5xx == 30 * 86400 and cfg.blacklist.ttl_4xx == 12 * 3600
    assert cfg.blacklist.store == "redis" and cfg.blacklist.dry_run is True
    assert cfg.redis.url == "redis://10.0.0.5:6379/1"
    # Defaults where the file is silent: DESIGN.md's delimiters, the policy's 30 and 180 days.
    assert parse_config(None).bounce.recipient_delimiter == "-+"
    assert parse_config(None).blacklist.ttl_5xx_repeat == 180 * 86400


@pytest.mark.parametrize(
    "argv",
    [
        ("logs", "parse", "/dev/null"),
        ("logs", "report", "/dev/null"),
        ("bounce", "parse", "/dev/null"),
        ("agent", "--check-config"),
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_every_command_reads_the_file_through_one_loader(
    tmp_path: Path, argv: tuple[str, ...]
) -> None:
    f = tmp_path / "mailpulse.yaml"
    f.write_text("redis:\n  ulr: redis://x\n")  # bad input: a misspelt key of a reserved section
    r = mailpulse(*argv[:2], "--config", str(f), "--state-dir", str(tmp_path), *argv[2:])
    assert_one_line_error(r, 2, f"{f}: redis.ulr: unknown setting; did you mean url?")


def test_the_command_line_state_dir_wins_over_the_file(tmp_path: Path) -> None:
    import argparse

    from mailpulse.config import load_for

    f = tmp_path / "mailpulse.yaml"
    f.write_text("state_dir: /var/lib/elsewhere\nlisten: 127.0.0.1:9999\n")
    given = argparse.Namespace(config=f, state_dir=tmp_path / "s")
    assert load_for(given).state_dir == tmp_path / "s"
    assert load_for(given).listen == "127.0.0.1:9999"
    bare = argparse.Namespace(config=f, state_dir=None)
    assert load_for(bare).state_dir == Path("/var/lib/elsewhere")
