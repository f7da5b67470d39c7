"""The spool's batch reader: the C reader and its pure-Python twin give the same heads, and
read_all gives every name once, in order, whatever the batches and the thread do."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from mailpulse.collectors import spoolread
from mailpulse.collectors.qfile import parse_queue_bytes

FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK


def odd_directory(d: Path) -> list[str]:
    """Files of every size around the read size, and every kind of name that is no file."""
    d.mkdir()
    sizes = {"EMPTY0": 0, "SMALL1": 1, "JUST511": 511, "FULL512": 512, "LONG513": 513}
    for name, size in sizes.items():
        (d / name).write_bytes(os.urandom(size))
    os.chmod(d / "SMALL1", 0o700)
    os.mkfifo(d / "FIFO0001")
    os.symlink(d / "SMALL1", d / "LINK0001")
    (d / "DIR00001").mkdir()
    (d / "GONE0001").write_bytes(b"x")
    os.unlink(d / "GONE0001")
    return [*sizes, "FIFO0001", "LINK0001", "DIR00001", "GONE0001"]


def test_the_pure_python_twin_reads_what_is_expected(tmp_path: Path) -> None:
    names = odd_directory(tmp_path / "d")
    heads = dict(
        zip(
            names,
            spoolread.read_heads_py(os.fsencode(tmp_path / "d"), names, FLAGS, 512),
            strict=True,
        )
    )
    for name in ("EMPTY0", "SMALL1", "JUST511", "FULL512", "LONG513"):
        st = os.stat(tmp_path / "d" / name)
        data = (tmp_path / "d" / name).read_bytes()[:512]
        assert heads[name] == (0, st.st_mode, st.st_ctime_ns, int(st.st_mtime), data)
    assert stat.S_ISFIFO(heads["FIFO0001"][1]) and heads["FIFO0001"][4] is None
    assert stat.S_ISDIR(heads["DIR00001"][1]) and heads["DIR00001"][4] is None
    assert heads["LINK0001"][0] == errno.ELOOP
    assert heads["GONE0001"] == (errno.ENOENT, 0, 0, 0, None)


def test_the_c_reader_and_its_twin_agree(tmp_path: Path) -> None:
    fast = pytest.importorskip("mailpulse.collectors._fastqueue")
    names = odd_directory(tmp_path / "d")
    where = os.fsencode(tmp_path / "d")
    for size in (0, 1, 511, 512, 513, 8192):
        assert fast.read_heads(where, names, FLAGS, size) == spoolread.read_heads_py(
            where, names, FLAGS, size
        )
    with pytest.raises(FileNotFoundError):
        fast.read_heads(os.fsencode(tmp_path / "nowhere"), names, FLAGS, 512)
    assert fast.read_heads(where, [], FLAGS, 512) == []


def test_read_all_gives_every_name_once_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spoolread, "BATCH", 7)  # many batches, the worker well ahead
    groups = []
    for i in range(5):
        d = tmp_path / f"q{i}"
        d.mkdir()
        names = [f"M{i}{n:05d}" for n in range(i * 13)]
        for n in names:
            (d / n).write_bytes(n.encode())
        groups.append((str(d), names))
    groups.append((str(tmp_path / "missing"), ["M0000001", "M0000002"]))
    got = list(spoolread.read_all(groups, FLAGS, 64))
    assert [(d, n) for d, n, _h in got] == [(d, n) for d, names in groups for n in names]
    for _d, n, head in got:
        assert head[4] == n.encode() if "missing" not in _d else head[0] == errno.ENOENT
    # Left half way, the reader stops and nothing hangs.
    partial = spoolread.read_all(groups, FLAGS, 64)
    assert next(partial)[1] == groups[1][1][0]
    partial.close()


def test_the_c_envelope_reader_answers_what_the_python_parser_does() -> None:
    # Where the C reader answers at all, it answers what qfile.parse_queue_file does; on every
    # cut, every flipped byte and every odd field of a set of queue files.
    fast = pytest.importorskip("mailpulse.collectors._fastqueue")
    from tests.test_queue_files import queue_file

    files = [
        queue_file(1_700_000_000, "a@example.org", ["b@example.net"]),
        queue_file(1_700_000_000, "", ["x@a.test", "y@b.test"], done=("z@c.test",)),
        queue_file(1_700_000_000, "s@x.test", ["r@y.test"], extracted=("e@z.test",)),
        queue_file(1_700_000_000, "s@x.test", ["r@y.test"], appended=("late@z.test",)),
        queue_file(1_700_000_000, "s\u00ff@x.test", ["r\u00e9@y.test"], body_lines=200),
        queue_file(1_700_000_000, "s@x.test", ["r@y.test"], time_field=b" 12 3"),
        queue_file(1_700_000_000, "s@x.test", ["r@y.test"], time_field=b"1x"),
        queue_file(1_700_000_000, "s@x.test", ["r@y.test"], size_field=b"9" * 19),
        queue_file(1_700_000_000, "s@x.test", ["r@y.test"], size_field=b"0"),
    ]
    mutants = []
    for data in files:
        mutants += [data[:cut] for cut in range(len(data) + 1)]
        mutants += [data[:i] + bytes([data[i] ^ 0x41]) + data[i + 1 :] for i in range(len(data))]
    answered = 0
    for data in mutants:
        got = fast.envelope(data)
        if got is None:
            continue
        answered += 1
        env = parse_queue_bytes(data, 42)
        arrival, sender, recipients, size = got
        assert (42 if arrival is None else arrival, sender, tuple(recipients), size or 0) == (
            env.arrival,
            env.sender,
            env.recipients,
            env.size,
        )
    assert answered > len(files)  # it does answer, beyond the intact files
