"""Every command and option says in --help what it does; the reserved commands say they are
not there yet; the exit codes are listed where --help ends."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from mailpulse.cli import build_parser
from mailpulse.exits import MEANINGS


def commands(
    p: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """Every (sub)command with the help its parent shows for it."""
    out = []
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                out.append(((*path, name), sub, helps.get(name, "")))
                out += commands(sub, (*path, name))
    return out


def test_every_command_and_option_says_what_it_does() -> None:
    found = commands(build_parser())
    assert {" ".join(p) for p, _, _ in found} >= {"agent", "logs parse", "queue", "bounce parse"}
    silent = []
    for path, parser, help_text in found:
        if not help_text.strip():
            silent.append(" ".join(path))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) or action.dest == "help":
                continue
            if not (action.help or "").strip():
                silent.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
    assert silent == []


def run(*argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "mailpulse", *argv], input=stdin, capture_output=True, timeout=60
    )


def test_help_ends_with_every_exit_code() -> None:
    out = run("--help").stdout.decode()
    for code in MEANINGS:
        assert f"\n  {code:>2}  " in out


def test_blacklist_ingest_under_pipe_answers_0_when_recorded_and_75_when_it_cannot_be(
    tmp_path: Path,
) -> None:
    # Bad input: a state directory that is a file, so the store cannot be opened.
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    bounce = b"From: MAILER-DAEMON\n\nbounce\n"
    r = run("blacklist", "ingest", "--state-dir", str(blocked / "st"), "--dsn", "-", stdin=bounce)
    assert r.returncode == 75, r.stderr  # EX_TEMPFAIL: pipe(8) keeps the mail queued
    assert r.stderr.decode().count("\n") == 1 and b"Traceback" not in r.stderr
    r = run("blacklist", "ingest", "--state-dir", str(tmp_path / "st"), "--dsn", "-", stdin=bounce)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "st" / "blacklist.sqlite").exists()


def test_the_log_records_help_names_the_delivery_kind_it_counts() -> None:
    from mailpulse.catalogue import BY_NAME
    from mailpulse.series import stats_series

    key = stats_series("records.delivery", set())
    assert key == ("mailpulse_log_records_total", ("delivery",))  # deliveries are a kind
    help_text = BY_NAME["mailpulse_log_records_total"].help
    assert "delivery" in help_text and "other than deliveries" not in help_text
