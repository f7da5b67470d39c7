"""The agent's follower against the command line's reading of the same file: an over-long
line, however it is read (in one go, a few bytes at a time, across a restart), is one cut line
for both, and what lies after its first megabyte is never read as a line of its own."""

from __future__ import annotations

from pathlib import Path

import pytest
from mailpulse.collectors.follower import BLOCK, MAX_PENDING
from mailpulse.collectors.maillog import Correlator, LogFollower

DELIVERY = (
    b"Nov 28 10:00:01 mx1 postfix/smtp[42]: 4A2B3C01ABCD: to=<u1@gmail.com>, "
    b"relay=g[192.0.2.1]:25, delay=1, delays=0.1/0/0/1, dsn=2.0.0, status=sent (250 2.0.0 OK)"
)


def cli_road(path: Path) -> tuple[int, int, int]:
    """Deliveries, lines and cut lines as `mailpulse logs parse` reads the file."""
    c = Correlator()
    with path.open("rb") as f:
        events = list(c.feed_stream(f))
    return len(events), c.stats["lines"], c.stats["cut_lines"]


def agent_road(
    path: Path, checkpoint: Path, budget: int | None, restarts: bool
) -> tuple[int, int, int]:
    """The same as the agent reads it: read_blocks with a byte budget per batch, each batch
    saved in the checkpoint, and (restarts) a new follower from that checkpoint each time."""
    c = Correlator()
    events = 0
    follower = LogFollower(path, checkpoint)
    for _ in range(200):
        before = c.lines
        for block in follower.read_blocks(budget):
            events += len(c.feed_block(block))
        follower.save_checkpoint()
        if c.lines == before and follower.offset == path.stat().st_size:
            break
        if restarts:
            follower.close()
            follower = LogFollower(path, checkpoint)
    follower.close()
    return events, c.stats["lines"], c.stats["cut_lines"]


# Junk before a delivery line on one line: short of the follower's MAX_PENDING, the size of
# the piece it hands on when reading 64 KiB blocks (17 blocks), and several megabytes.
SIZES = [100_000, (MAX_PENDING // BLOCK + 1) * BLOCK, 3_000_000]


@pytest.mark.parametrize("junk", SIZES)
@pytest.mark.parametrize(("budget", "restarts"), [(None, False), (1 << 22, False), (1 << 20, True)])
def test_an_over_long_line_is_one_cut_line_on_the_agent_road_too(
    tmp_path: Path, junk: int, budget: int | None, restarts: bool
) -> None:
    # Bad input: one line of `junk` bytes with a delivery line's text at its end (no newline
    # between), then one ordinary delivery line. The follower once handed the part after its
    # first megabyte on as a line of its own: the agent counted the hidden delivery, and one
    # cut line per megabyte, where `logs parse` counts one delivery and one cut line.
    log = tmp_path / "mail.log"
    log.write_bytes(b"x" * junk + DELIVERY + b"\n" + DELIVERY + b"\n")
    assert cli_road(log) == (1, 2, 1)
    got = agent_road(log, tmp_path / "checkpoint.json", budget, restarts)
    assert got == (1, 2, 1)


def test_lines_written_to_the_renamed_file_before_the_writer_reopens_are_read(
    tmp_path: Path,
) -> None:
    # Bad luck, not bad input: logrotate renames the log and creates a new one, the follower
    # polls and moves to the new file, then the writer (rsyslog, postlogd), not yet told to
    # reopen, appends one more line to the renamed file; then it reopens and goes on.
    log = tmp_path / "mail.log"
    follower = LogFollower(log, tmp_path / "checkpoint.json")
    got: list[bytes] = []
    with log.open("ab", buffering=0) as old:
        old.write(b"line 0\n")
        got += follower.read_lines()
        log.rename(tmp_path / "mail.log.1")
        log.touch()  # logrotate's create
        old.write(b"line 1\n")
        got += follower.read_lines()  # the poll that finds the new file
        old.write(b"line 2\n")  # before the writer is told to reopen
    with log.open("ab", buffering=0) as new:
        new.write(b"line 3\n")
    for _ in range(3):
        got += follower.read_lines()
    follower.close()
    assert got == [b"line 0", b"line 1", b"line 2", b"line 3"]
