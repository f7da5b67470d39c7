"""`mailpulse logs parse|report` on input that is not a clean log: over-long lines, truncated or
corrupt .gz files, paths that are missing, directories or unreadable. What came before the
trouble is kept, the trouble is said in one line and counted, the exit code says which."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import pytest
from mailpulse.collectors import maillog
from mailpulse.collectors.logparse import MAX_LINE
from mailpulse.collectors.maillog import Correlator

from tests.conftest import require_programs, require_root
from tests.test_maillog import block_scanner  # noqa: F401 - the fixture: both block roads

EX_DATAERR, EX_NOINPUT, EX_NOPERM = 65, 66, 77  # as the README's exit codes say


def delivery(i: int, status: str = "sent") -> bytes:
    return (
        f"Nov 28 10:00:01 mx1 postfix/smtp[42]: 4A2B{i:06X}: to=<u{i}@gmail.com>, "
        f"relay=g[192.0.2.1]:25, delay=1, delays=0.1/0/0/1, dsn=2.0.0, status={status} "
        "(250 2.0.0 OK)\n"
    ).encode()


def log_of(n: int) -> bytes:
    return b"".join(delivery(i) for i in range(n))


def mailpulse(*argv: str, stdin: bytes = b"", **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(  # type: ignore[call-overload]
        [sys.executable, "-m", "mailpulse", *argv],
        input=stdin,
        capture_output=True,
        timeout=300,
        **kw,
    )


def report(*argv: str, stdin: bytes = b"") -> tuple[int, dict[str, object], list[str]]:
    out = mailpulse("logs", "report", "--json", *argv, stdin=stdin)
    assert b"Traceback" not in out.stderr, out.stderr.decode()
    return out.returncode, json.loads(out.stdout), out.stderr.decode().splitlines()


# -- over-long lines --------------------------------------------------------------------------
@pytest.mark.usefixtures("block_scanner")
def test_an_over_long_line_is_cut_counted_and_the_lines_around_it_kept() -> None:
    # Bad input: a delivery line whose reply text runs 3 MiB past MAX_LINE, then a 3 MiB line
    # of garbage, between ordinary lines; read in small and usual blocks.
    long_delivery = delivery(2, "bounced").replace(b"(250 2.0.0 OK)", b"(" + b"x" * (3 << 20))
    garbage = b"\xff" * (3 << 20) + b"\n"
    data = delivery(1) + long_delivery + garbage + delivery(3)
    for block in (4096, maillog.BLOCK, 1 << 20):
        c = Correlator()
        events = list(c.feed_stream(io.BytesIO(data), block))
        # the long delivery's outcome lies in its first MAX_LINE bytes: read, flagged cut
        assert [(e.recipient, e.status) for e in events] == [
            ("u1@gmail.com", "sent"),
            ("u2@gmail.com", "bounced"),
            ("u3@gmail.com", "sent"),
        ], block
        assert len(events[1].reply_text) < MAX_LINE
        assert c.stats["lines"] == 4 and c.stats["cut_lines"] == 2, block
        assert c.stats["not_postfix"] == 1, block


@pytest.mark.usefixtures("block_scanner")
def test_an_over_long_last_line_without_newline_is_cut_too() -> None:
    # Bad input: the stream ends inside a 1 MiB line (a writer killed mid-line).
    c = Correlator()
    data = delivery(1) + delivery(2)[:-20] + b"y" * (1 << 20)
    events = list(c.feed_stream(io.BytesIO(data), 4096))
    assert [e.recipient for e in events] == ["u1@gmail.com"]
    assert c.stats["lines"] == 2 and c.stats["cut_lines"] == 1


def test_logs_report_shows_cut_lines_from_stdin() -> None:
    # Bad input: a 2 MiB line on stdin among ordinary ones.
    rc, data, err = report(stdin=log_of(3) + b"z" * (2 << 20) + b"\n" + delivery(9))
    assert rc == 0 and err == []
    assert data["cut_lines"] == 1 and data["lines"] == 5
    assert data["status"] == {"sent": 4, "deferred": 0, "bounced": 0, "expired": 0}


# -- damaged .gz files ------------------------------------------------------------------------
N = 20_000


@pytest.fixture
def gz_files(tmp_path: Path) -> dict[str, Path]:
    """A whole .gz log of N deliveries, and damaged ones of each kind zlib and gzip report."""
    whole = gzip.compress(log_of(N))
    second = bytearray(gzip.compress(log_of(7)))
    second[10] = 0x07  # the first deflate block says "final, type 3": no such type
    wrong_crc = bytearray(whole)
    wrong_crc[-8] ^= 0xFF  # the trailer's CRC-32 of the text
    files = {
        "whole": whole,
        "truncated": whole[: len(whole) // 2],  # EOFError
        "corrupt": whole + bytes(second),  # a second member zlib refuses: zlib.error
        "wrong_crc": bytes(wrong_crc),  # every byte given, then BadGzipFile
        "not_gzip": b"this is not gzip\n",  # BadGzipFile at once
    }
    out = {}
    for name, data in files.items():
        out[name] = tmp_path / f"{name}.log.gz"
        out[name].write_bytes(data)
    return out


def readable_part(path: Path) -> bytes:
    """What gzip itself gives of a damaged file before it raises."""
    good = b""
    with gzip.open(path) as f:
        try:
            while chunk := f.read1(1 << 16):
                good += chunk
        except (EOFError, zlib.error, OSError):
            return good
    raise AssertionError(f"{path} is not damaged")


def test_gz_damage_is_the_kind_the_command_must_catch(gz_files: dict[str, Path]) -> None:
    # The damaged files raise what the command must turn into one line (no traceback).
    for name, kind in (
        ("truncated", EOFError),
        ("corrupt", zlib.error),
        ("wrong_crc", gzip.BadGzipFile),
        ("not_gzip", gzip.BadGzipFile),
    ):
        with pytest.raises(kind), gzip.open(gz_files[name]) as f:
            f.read()


def test_a_truncated_or_corrupt_gz_keeps_what_came_before(gz_files: dict[str, Path]) -> None:
    # Bad input: a .gz cut in half, one whose second member zlib refuses, one with a wrong
    # CRC, one that is not gzip at all; each followed by a whole file, which is still read.
    for name in ("truncated", "corrupt", "wrong_crc", "not_gzip"):
        path = gz_files[name]
        good = readable_part(path)
        before = good.count(b"status=sent")  # the whole lines (a cut one may keep its status)
        want = {"truncated": range(N // 4, N), "corrupt": [N], "wrong_crc": [N], "not_gzip": [0]}
        assert before in want[name], (name, before)  # the damage is where it was put
        rc, data, err = report(str(path), str(gz_files["whole"]))
        assert rc == EX_DATAERR, (name, err)
        assert len(err) == 1 and err[0].startswith(f"mailpulse: {path}: damaged after byte "), err
        assert f"byte {len(good)} of its uncompressed text" in err[0], (name, err, len(good))
        assert data["damaged_files"] == 1
        assert data["status"]["sent"] == before + N, name  # type: ignore[index]


def test_logs_parse_prints_the_events_before_the_damage(gz_files: dict[str, Path]) -> None:
    out = mailpulse("logs", "parse", "--json", str(gz_files["truncated"]))
    assert out.returncode == EX_DATAERR and b"Traceback" not in out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    # one event per line decompressed, in order, none invented
    good = readable_part(gz_files["truncated"])
    assert [e["recipient"] for e in events] == [
        f"u{i}@gmail.com" for i in range(good.count(b"status=sent"))
    ]


# -- paths that cannot be read ----------------------------------------------------------------
def test_missing_paths_and_directories_are_one_line_each(tmp_path: Path) -> None:
    # Bad input: a path that does not exist and a directory, around a good file.
    good = tmp_path / "mail.log"
    good.write_bytes(log_of(5))
    missing = tmp_path / "nope.log"
    for cmd in ("parse", "report"):
        out = mailpulse("logs", cmd, "--json", str(missing), str(tmp_path), str(good))
        err = out.stderr.decode().splitlines()
        assert out.returncode == EX_NOINPUT, err
        assert err == [
            f"mailpulse: {missing}: no such file or directory",
            f"mailpulse: {tmp_path}: is a directory",
        ]
    rc, data, _ = report(str(missing), str(good))
    assert rc == EX_NOINPUT and data["unreadable_files"] == 1 and data["status"]["sent"] == 5  # type: ignore[index]


def test_an_unreadable_file_is_one_line_as_a_user_without_rights() -> None:
    # Bad input: a log file its reader has no right to (root reads everything: run as nobody).
    require_root("runs the command as another user")
    require_programs("setpriv")
    d = Path(tempfile.mkdtemp(prefix="mailpulse-unreadable-"))
    try:
        os.chmod(d, 0o755)
        secret, good = d / "secret.log", d / "mail.log"
        secret.write_bytes(log_of(3))
        secret.chmod(0o600)
        good.write_bytes(log_of(2))
        good.chmod(0o644)
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        out = subprocess.run(
            [*as_nobody, sys.executable, "-m", "mailpulse", "logs", "report", "--json"]
            + [str(secret), str(good)],
            capture_output=True,
            timeout=300,
            cwd=d,
        )
        assert out.returncode == EX_NOPERM
        assert out.stderr.decode().splitlines() == [f"mailpulse: {secret}: permission denied"]
        assert json.loads(out.stdout)["status"]["sent"] == 2
    finally:
        for p in d.iterdir():
            p.unlink()
        d.rmdir()
