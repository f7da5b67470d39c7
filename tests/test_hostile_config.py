"""Config files wrong in ways a YAML loader accepts: numbers that are no number of seconds or
items (.inf, .nan), and a path that is a FIFO. Each is one line naming the file (and the key),
exit 2, from every command that reads the file; none may hang or run with a busy loop."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent_support import assert_one_line_error, mailpulse
from tests.test_agent_config import CONFIG_COMMANDS


@pytest.mark.parametrize(
    "text, key",
    [
        # Bad input: YAML's infinity where a whole number belongs (int() of it overflowed).
        ("top_k: .inf\n", "top_k"),
        ("agent_check:\n  queue_high: .inf\n", "agent_check.queue_high"),
        ("logs:\n  max_messages: -.inf\n", "logs.max_messages"),
        # Bad input: infinity and NaN as seconds: a wait of inf seconds overflows in the
        # thread that does it; NaN passed "> 0" and a wait of NaN returns at once (a busy loop).
        ("queue:\n  interval: .inf\n", "queue.interval"),
        ("queue:\n  interval: .nan\n", "queue.interval"),
        ("logs:\n  poll_interval: .NaN\n", "logs.poll_interval"),
        ("host:\n  interval: .Inf\n", "host.interval"),
        ("agent_check:\n  block_window_s: .nan\n", "agent_check.block_window_s"),
    ],
)
def test_an_infinite_or_nan_number_is_refused_naming_the_key(
    tmp_path: Path, text: str, key: str
) -> None:
    f = tmp_path / "mailpulse.yaml"
    f.write_text(text)
    r = mailpulse("agent", "--config", str(f), "--check-config")
    assert_one_line_error(r, 2, f"{f}: {key}: expected a positive number")


@pytest.mark.parametrize("argv", CONFIG_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_a_config_path_that_is_a_fifo_nothing_writes_to_is_refused(
    tmp_path: Path, argv: tuple[str, ...]
) -> None:
    # Bad input: a named pipe where the config file belongs (left by a deploy script); opening
    # it for reading waited for a writer forever.
    f = tmp_path / "mailpulse.yaml"
    os.mkfifo(f)
    r = mailpulse(*argv[:2], "--config", str(f), *argv[2:])
    assert_one_line_error(r, 2, f"{f}: a FIFO nothing writes to")


def test_a_config_given_through_a_pipe_is_still_read(tmp_path: Path) -> None:
    # The FIFO check must not refuse a pipe that does bring a config (a shell's <(...)).
    r = subprocess.run(
        ["bash", "-c", f'{sys.executable} -m mailpulse logs report --config <(echo "top_k: x")'],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert "top_k: expected a positive number, got 'x'" in r.stderr
