"""The Postfix profiles and `mailpulse postfix check`, against Postfix's own postconf.

The expected findings are worked out here from the test's own edits of main.cf and master.cf:
a setting the test moves away from the profile must be named, and only that one.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mailpulse.profile import (
    PROFILES,
    NodeSettings,
    ProfileError,
    compare,
    load_profile,
    parse_main,
    parse_master,
    profile_dir,
)
from tests.conftest import require_programs

DEBIAN_MAIN = Path("/usr/share/postfix/main.cf.debian")
DEBIAN_MASTER = Path("/usr/share/postfix/master.cf.dist")


# -- the profile files, no Postfix needed ----------------------------------------------------


@pytest.mark.parametrize("name", PROFILES)
def test_every_setting_says_why(name: str) -> None:
    settings = load_profile(name)
    assert settings
    for s in settings:
        assert len(s.why) > 20, s  # a reason, not a stray word
    # Every line of the fragments that is not a comment is under a comment block: counted
    # here on the raw text, independently of the parser.
    # A route of the transport table may share the comment of the route on the line above.
    for part in ("main.cf", "master.cf", "transport"):
        lines = (profile_dir() / f"{name}.{part}").read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip() and not line.lstrip().startswith("#"):
                above = lines[i - 1].strip() if i else ""
                continues = (line[0].isspace() or part == "transport") and above != ""
                assert above.startswith("#") or continues, f"{name}.{part}:{i + 1}: {line}"


def test_profiles_carry_what_the_other_features_need() -> None:
    bulk = {s.key: s for s in load_profile("bulk")}
    assert bulk["recipient_delimiter"].value == "-"
    assert "check_recipient_access" in bulk["smtpd_recipient_restrictions"].value
    assert "mailpulse blacklist ingest --dsn -" in bulk["mailpulse/unix"].value
    for receiver in ("gmail", "microsoft", "yahoo"):
        assert f"{receiver}/unix" in bulk
        assert f"{receiver}_destination_concurrency_limit" in bulk
    transactional = {s.key: s for s in load_profile("transactional")}
    assert "check_recipient_access" not in transactional["smtpd_recipient_restrictions"].value
    assert not any(k.startswith(("gmail", "microsoft", "yahoo")) for k in transactional)


def test_a_setting_without_a_reason_is_refused() -> None:
    with pytest.raises(ProfileError, match="x.cf:4: b has no comment"):
        parse_main("# why a\na = 1\n\nb = 2\n", "x.cf")
    with pytest.raises(ProfileError, match="eight columns"):
        parse_master("# why\nsmtp unix - - n\n")


def test_master_options_take_the_comment_above_their_own_line() -> None:
    text = (
        "# the service\n"
        "t unix - - n - 7 smtp\n"
        "  # the option\n"
        "  -o { smtp_helo_name = a b }\n"
        "  -o smtp_bind_address=127.0.0.2\n"
    )
    got = {s.key: (s.value, s.why) for s in parse_master(text)}
    assert got == {
        "t/unix": ("- - n - 7 smtp", "the service"),
        "t/unix/smtp_helo_name": ("a b", "the option"),
        "t/unix/smtp_bind_address": ("127.0.0.2", "the service"),
    }


def test_postconf_output_with_empty_and_odd_values() -> None:
    from mailpulse.profile import parse_options, parse_services

    assert parse_options("a/unix/x =\nb/unix/y = 1 = 2\n") == {"a/unix/x": "", "b/unix/y": "1 = 2"}
    assert parse_services("smtp unix - - y - - smtp\n#x y\n") == {
        "smtp/unix": ["-", "-", "y", "-", "-", "smtp"]
    }


def test_compare_reads_dashes_lists_and_names_as_postfix_does() -> None:
    settings = parse_main(
        "# w\nmaps = hash:$config_directory/t\n# w\nlist = a, b\n# site: w\nsite_value = x\n"
        "# w\nunset = 1\n"
    ) + parse_master("# w\nt unix - - n - - smtp\n")
    node = NodeSettings(
        main={
            "maps": "hash:/etc/postfix-b/t",
            "config_directory": "/etc/postfix-b",
            "list": "a b",
            "site_value": "mine.example",
            "default_process_limit": "150",
        },
        services={"t/unix": ["y", "-", "n", "0", "150", "smtp"]},
        options={},
    )
    verdict = {f.key: f.ok for f in compare(settings, node)}
    assert verdict == {
        "maps": True,
        "list": True,
        "site_value": True,
        "unset": False,
        "t/unix": True,
    }


# -- against postconf ----------------------------------------------------------------------------


def _other(value: str) -> str:
    """A value Postfix accepts for the setting but that is not the profile's."""
    if value in ("yes", "no"):
        return "no" if value == "yes" else "yes"
    m = re.fullmatch(r"(\d+)([a-z]?)", value)
    if m:
        return f"{int(m.group(1)) + 1}{m.group(2)}"
    return f"{value}, permit" if value else "/var/log/elsewhere.log"


def _node(
    tmp_path: Path,
    name: str,
    main_extra: str = "",
    master_extra: str = "",
    transport: Callable[[str], str] = lambda text: text,
) -> Path:
    """A Postfix config directory: Debian's stock files, the profile appended, then edits; the
    profile's transport table, edited, beside them."""
    d = tmp_path / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "main.cf").write_text(
        DEBIAN_MAIN.read_text() + (profile_dir() / f"{name}.main.cf").read_text() + main_extra
    )
    (d / "master.cf").write_text(
        DEBIAN_MASTER.read_text() + (profile_dir() / f"{name}.master.cf").read_text() + master_extra
    )
    (d / "transport").write_text(transport((profile_dir() / f"{name}.transport").read_text()))
    subprocess.run(["postmap", "-c", str(d), f"hash:{d / 'transport'}"], check=True)
    return d


def _check(config_dir: Path, name: str) -> tuple[int, dict[str, bool]]:
    r = subprocess.run(
        [sys.executable, "-m", "mailpulse", "postfix", "check", "-c", str(config_dir)]
        + ["--profile", name, "--json", "--state-dir", str(config_dir / "state")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode in (0, 1), r.stderr
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(docs) == 1 and docs[0]["profile"] == name
    return r.returncode, {s["key"]: s["ok"] for s in docs[0]["settings"]}


@pytest.fixture
def stock_files() -> None:
    require_programs("postconf", "postmap")
    if not (DEBIAN_MAIN.exists() and DEBIAN_MASTER.exists()):
        pytest.skip("Debian's postfix package files are not installed (make deps)")


@pytest.mark.usefixtures("stock_files")
@pytest.mark.parametrize("name", PROFILES)
def test_profile_on_stock_debian_files_has_no_warning_and_matches(
    tmp_path: Path, name: str
) -> None:
    d = _node(tmp_path, name)
    for args in (["-n"], ["-M"], ["-P"], ["-x"]):
        r = subprocess.run(["postconf", "-c", str(d), *args], capture_output=True, text=True)
        assert r.returncode == 0 and r.stderr == "", (args, r.stderr)
    rc, verdict = _check(d, name)
    assert rc == 0
    assert set(verdict) == {s.key for s in load_profile(name)}
    assert all(verdict.values())


@pytest.mark.usefixtures("stock_files")
@pytest.mark.parametrize("name", PROFILES)
def test_check_names_each_main_setting_changed_away(tmp_path: Path, name: str) -> None:
    for s in load_profile(name):
        if s.kind != "main":
            continue
        # A site value is an example: only leaving it empty is drift.
        changed = "" if s.site else _other(s.value)
        d = _node(tmp_path, name, main_extra=f"{s.key} = {changed}\n")
        rc, verdict = _check(d, name)
        assert rc == 1, s.key
        assert [k for k, ok in verdict.items() if not ok] == [s.key]


@pytest.mark.usefixtures("stock_files")
def test_check_names_changed_services_and_options(tmp_path: Path) -> None:
    # master.cf: a later entry of the same service replaces the earlier one (postconf -M).
    cases = {
        "gmail/unix": "gmail unix - - n - 41 smtp\n"
        "  -o syslog_name=${multi_instance_name?{$multi_instance_name}:{postfix}}/$service_name\n",
        "yahoo/unix/syslog_name": "yahoo unix - - n - 20 smtp -o syslog_name=postfix\n",
        "mailpulse/unix": "mailpulse unix - n n - 4 local\n",
    }
    for key, edit in cases.items():
        d = _node(tmp_path, "bulk", master_extra=edit)
        rc, verdict = _check(d, "bulk")
        assert rc == 1
        assert [k for k, ok in verdict.items() if not ok] == [key]
    # A route the transport table gives another transport, or none.
    d = _node(
        tmp_path,
        "bulk",
        transport=lambda t: t.replace(
            "outlook.com          microsoft:", "outlook.com smtp:"
        ).replace("aol.com              yahoo:\n", ""),
    )
    rc, verdict = _check(d, "bulk")
    assert rc == 1
    assert [k for k, ok in verdict.items() if not ok] == [
        "transport:outlook.com",
        "transport:aol.com",
    ]
    # The pipe's path is the site's own: another is no drift.
    other_path = (
        (profile_dir() / "bulk.master.cf")
        .read_text()
        .replace("/usr/bin/mailpulse", "/opt/mailpulse/.venv/bin/mailpulse")
    )
    d = _node(tmp_path, "bulk", master_extra=other_path)
    assert _check(d, "bulk") == (0, {s.key: True for s in load_profile("bulk")})


@pytest.mark.usefixtures("stock_files")
def test_a_service_the_node_lacks_is_drift_and_trouble_is_exit_2(tmp_path: Path) -> None:
    d = tmp_path / "bare"
    d.mkdir()
    shutil.copy(DEBIAN_MAIN, d / "main.cf")
    shutil.copy(DEBIAN_MASTER, d / "master.cf")
    rc, verdict = _check(d, "transactional")
    assert rc == 1
    assert verdict["mailpulse/unix"] is False
    r = subprocess.run(
        [sys.executable, "-m", "mailpulse", "postfix", "check", "-c", str(tmp_path / "none")]
        + ["--state-dir", str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "mailpulse postfix check" in r.stderr


@pytest.mark.usefixtures("stock_files")
def test_the_agent_drift_watch_and_its_series(tmp_path: Path) -> None:
    import threading

    from mailpulse.postfix import Instance, instance_at
    from mailpulse.profile import DriftWatch
    from mailpulse.series import Series
    from mailpulse.state import State

    good = _node(tmp_path / "a", "bulk", main_extra="syslog_name = bulk-a\n")
    off = _node(
        tmp_path / "b",
        "bulk",
        main_extra="syslog_name = bulk-b\nsoft_bounce = yes\nqueue_run_delay = 1h\n",
    )
    gone = Instance("bulk-c", tmp_path / "gone", tmp_path / "gone", None)
    watch = DriftWatch([instance_at(good), instance_at(off)], "bulk", 300, threading.Event())
    drift, status = watch.sample()
    assert drift == {"bulk-a": 0, "bulk-b": 2}
    assert status.up
    state = State(tmp_path / "state.sqlite")
    try:
        watch._latest = (drift, status)
        reading = Series(state, profile=watch.latest).read()
        # An instance postconf cannot read is left out and the source is down, not 0 drift.
        watch.instances.append(gone)
        watch._latest = watch.sample()
        down = Series(state, profile=watch.latest).read()
    finally:
        state.close()
    assert reading[("mailpulse_postfix_profile_drift", ("bulk-a", "bulk"))] == 0
    assert reading[("mailpulse_postfix_profile_drift", ("bulk-b", "bulk"))] == 2
    assert reading[("mailpulse_source_up", ("profile", "bulk"))] == 1.0
    assert down[("mailpulse_source_up", ("profile", "bulk"))] == 0.0
    assert ("mailpulse_postfix_profile_drift", ("bulk-c", "bulk")) not in down


# -- in the lab's private Postfix ------------------------------------------------------------------


@pytest.mark.lab
@pytest.mark.parametrize("name", PROFILES)
def test_profile_loads_in_the_lab_and_delivers(make_lab: Callable[..., object], name: str) -> None:
    from lab.behaviours import DOMAINS
    from lab.campaign import run_campaign
    from lab.postfix import Lab, run_in_pty
    from lab.profiles import lab_kwargs, make_tables

    kwargs, kept = lab_kwargs(name)
    lab = make_lab(**kwargs)
    assert isinstance(lab, Lab)
    make_tables(lab)
    rc, out = run_in_pty(["postfix", "-c", str(lab.etc), "check"], timeout=60)
    assert rc == 0 and out.strip() == "", out
    for args in (["-n"], ["-M"], ["-P"]):
        r = subprocess.run(["postconf", "-c", str(lab.etc), *args], capture_output=True, text=True)
        assert r.returncode == 0 and r.stderr == "", (args, r.stderr)

    plan, _ = run_campaign(lab, 200, f"profile-{name}", seed=5)
    log = lab.maillog.read_text(errors="replace")
    assert not re.search(r"\b(warning|fatal|panic|error):", log), log[-2000:]
    sent = {
        m.group(2): m.group(1)
        for m in re.finditer(r" (\S+)\[\d+\]: \w+: to=<([^>]+)>.*status=sent", log)
    }
    planned = {p.recipient for p in plan}
    sent = {rcpt: program for rcpt, program in sent.items() if rcpt in planned}
    assert sent.keys() == {p.recipient for p in plan if p.status == "sent"}
    transports = kwargs["domain_transports"]
    for rcpt, program in sent.items():
        transport = transports.get(rcpt.rsplit("@", 1)[1], "smtp")
        expected = f"{lab.instance}/{transport}/smtp" if transport != "smtp" else "postfix/smtp"
        assert program == expected, (rcpt, program)

    # The check of the lab differs from the profile exactly where the lab keeps its own value.
    profile_values = {s.key: s.value for s in load_profile(name)}
    lab_cf = lab.main_cf()
    expected_off = {k for k in kept if lab_cf[k] != profile_values[k]}
    # The lab's own transport table routes only its campaign domains.
    expected_off |= {k for k in profile_values if k.startswith("transport:")} - {
        f"transport:{d}" for d in DOMAINS
    }
    rc, verdict = _check(lab.etc, name)
    assert {k for k, ok in verdict.items() if not ok} == expected_off
    assert rc == (1 if expected_off else 0)


@pytest.mark.usefixtures("stock_files")
def test_text_output_gives_node_profile_and_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mailpulse.cli import main

    d = _node(tmp_path, "bulk", main_extra="soft_bounce = yes\n")
    rc = main(["postfix", "check", "-c", str(d), "--profile", "bulk"])
    out = capsys.readouterr().out
    assert rc == 1
    total = len(load_profile("bulk"))
    assert f"profile bulk, 1 of {total} settings differ" in out
    assert "DIFF soft_bounce\n       node:    yes\n       profile: no\n       why:     Must" in out
    assert out.count("\nok   ") == total - 1


@pytest.mark.usefixtures("stock_files")
def test_every_instance_of_a_multi_instance_node_is_checked(tmp_path: Path) -> None:
    second = _node(
        tmp_path / "second", "bulk", main_extra="syslog_name = postfix-b\nsoft_bounce = yes\n"
    )
    first = _node(tmp_path / "first", "bulk", main_extra=f"multi_instance_directories = {second}\n")
    r = subprocess.run(
        [sys.executable, "-m", "mailpulse", "postfix", "check", "-c", str(first), "--json"]
        + ["--profile", "bulk", "--state-dir", str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1, r.stderr
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(d["instance"], d["config_dir"], d["differ"]) for d in docs] == [
        ("postfix", str(first), 0),
        ("postfix-b", str(second), 1),
    ]
