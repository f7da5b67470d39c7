"""Log sources share one interface, and checkpoints are written whole or not at all."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from mailpulse.collectors.follower import JournalFollower, LogFollower, LogSource, StreamSource
from mailpulse.collectors.maillog import Correlator

from mailpulse.files import atomic_write

LINE = (
    b"Nov 28 17:34:00 mx1 postfix/smtp[9]: 1A2B3C4D5E: to=<a@x.example>, relay=r, delay=1, "
    b"delays=1/0/0/0, dsn=5.1.1, status=bounced (550 5.1.1 unknown)"
)


def test_every_source_is_a_log_source(tmp_path: Path) -> None:
    # Bad input: none; the agent and `logs parse|report` read any of them the same way.
    sources = [
        LogFollower(tmp_path / "maillog", tmp_path / "cp"),
        JournalFollower(tmp_path / "jcp", ["--directory", str(tmp_path)]),
        StreamSource(io.BytesIO(LINE)),
    ]
    assert all(isinstance(s, LogSource) for s in sources)


def test_a_stream_hands_over_whole_lines_then_its_damage() -> None:
    # Bad input: a stream that fails after a line and a half.
    class Failing(io.RawIOBase):
        def __init__(self) -> None:
            self.parts = [LINE + b"\n" + LINE[:40]]

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            if self.parts:
                return self.parts.pop()
            raise OSError("disk on fire")

    got = []
    with pytest.raises(OSError, match="disk on fire"):
        got.extend(StreamSource(Failing()).read_blocks())  # type: ignore[arg-type]
    assert got == [LINE + b"\n", LINE[:40]]
    c = Correlator()
    assert [e.status for b in got for e in c.feed_block(b)] == ["bounced"]
    assert c.stats["lines"] == 2 and c.stats["not_postfix"] == 0


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    # Bad input: a directory that does not exist (a clear OSError, nothing written).
    path = tmp_path / "checkpoint"
    atomic_write(path, b"old")
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "missing" / "checkpoint", b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]
