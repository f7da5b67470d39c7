"""Reading many small spool files fast: the first bytes of each, with its mode and times.

A queue sample opens every new queue file and every defer log; the system calls of that
(open, fstat, read, close) cost as much as parsing what they return. read_heads does one
directory's batch of them; where the C twin (_fastqueue.c) is built it does them without the
GIL, and read_all runs it in a worker thread one batch ahead of the caller, so that reading
the next files and parsing the last ones share the machine's cores.

A head is (errno, st_mode, st_ctime_ns, mtime in whole seconds, data): errno non-zero when
the file could not be opened, stat-ed or read (the caller reads it the slow way to say why),
data the first `size` bytes of a regular file and None for anything else.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterable, Iterator
from itertools import islice

Head = tuple[int, int, int, int, bytes | None]

BATCH = 256  # files per call: long enough to pay for a thread switch, short enough to overlap
AHEAD = 4  # batches read before the caller takes them: bounds memory, keeps the reader busy


def read_heads_py(directory: bytes, names: list[str], flags: int, size: int) -> list[Head]:
    """The pure-Python twin of _fastqueue.read_heads."""
    out: list[Head] = []
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            try:
                fd = os.open(name, flags, dir_fd=dir_fd)
            except OSError as e:
                out.append((e.errno or 0, 0, 0, 0, None))
                continue
            try:
                st = os.fstat(fd)
                data = os.pread(fd, size, 0) if stat.S_ISREG(st.st_mode) else None
            except OSError as e:
                out.append((e.errno or 0, 0, 0, 0, None))
                continue
            finally:
                os.close(fd)
            out.append((0, st.st_mode, st.st_ctime_ns, st.st_mtime_ns // 1_000_000_000, data))
    finally:
        os.close(dir_fd)
    return out


try:
    from mailpulse.collectors._fastqueue import envelope, read_heads

    THREADED = True  # the C reader lets go of the GIL: a worker thread pays off
except ImportError:  # not built (no compiler at install time): the twin, in the caller's thread
    read_heads = read_heads_py
    envelope = None  # qfile.parse_queue_file does all the parsing
    THREADED = False


def _batches(groups: Iterable[tuple[str, Iterable[str]]]) -> Iterator[tuple[str, list[str]]]:
    for directory, names in groups:
        it = iter(names)
        while chunk := list(islice(it, BATCH)):
            yield directory, chunk


def _read_batch(directory: str, names: list[str], flags: int, size: int) -> list[Head] | OSError:
    try:
        return read_heads(os.fsencode(directory), names, flags, size)
    except OSError as e:  # the directory itself went or may not be read
        return e


def read_all(
    groups: Iterable[tuple[str, Iterable[str]]], flags: int, size: int
) -> Iterator[tuple[str, str, Head]]:
    """(directory, name, head) for every name of every (directory, names), in that order.
    A directory that cannot be opened gives every one of its names an errno head."""
    batches = _batches(groups)
    if not THREADED:
        for directory, names in batches:
            yield from _unpack(directory, names, _read_batch(directory, names, flags, size))
        return
    done: list[tuple[str, list[str], list[Head] | OSError]] = []
    ready = threading.Condition()
    stop = False

    def reader() -> None:
        try:
            for directory, names in batches:
                heads = _read_batch(directory, names, flags, size)
                with ready:
                    while len(done) >= AHEAD and not stop:
                        ready.wait()
                    if stop:
                        return
                    done.append((directory, names, heads))
                    ready.notify_all()
        finally:
            with ready:
                done.append(("", [], []))  # the end
                ready.notify_all()

    worker = threading.Thread(target=reader, name="spool reader", daemon=True)
    worker.start()
    try:
        while True:
            with ready:
                while not done:
                    ready.wait()
                directory, names, heads = done.pop(0)
                ready.notify_all()
            if not directory:
                return
            yield from _unpack(directory, names, heads)
    finally:
        with ready:
            stop = True
            ready.notify_all()
        worker.join()


def _unpack(
    directory: str, names: list[str], heads: list[Head] | OSError
) -> Iterator[tuple[str, str, Head]]:
    if isinstance(heads, OSError):
        failed: Head = (heads.errno or 0, 0, 0, 0, None)
        for name in names:
            yield directory, name, failed
    else:
        for name, head in zip(names, heads, strict=True):
            yield directory, name, head
