"""Bounded cost of one queue file, whatever its size: the limits stated in the README.

Every case grows a queue file fourfold and requires the parser's time to grow about fourfold
too (a quadratic cost would grow sixteenfold), its peak memory (tracemalloc, deterministic) to
stay within MEMORY_PER_BYTE of the file's size, and a very generous absolute time that only a
hang or a blow-up would pass.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable

import pytest
from mailpulse.collectors.qfile import (
    MAX_JUMPS,
    MAX_RECORD,
    Envelope,
    QueueFileError,
    parse_queue_bytes,
)

from tests.test_queue_files import rec

MEMORY_PER_BYTE = 24  # the README's limit: the recipients a file names, as Python strings
MEMORY_SLACK = 64 * 1024
CEILING_S = 30.0  # for the largest file of a case, a few MB: only a hang comes near it


def many_recipients(n: int) -> bytes:
    rcpts = b"".join(rec(b"R", b"user%d@example.com" % i) for i in range(n))
    return (
        rec(b"C", b"%d 0 %d" % (0, n))
        + rec(b"T", b"1 0")
        + rec(b"S", b"a@b")
        + rcpts
        + rec(b"E", b"")
    )


def short_recipients(n: int) -> bytes:
    """The most memory per byte: a two-byte recipient is a whole Python string."""
    return (
        rec(b"S", b"a@b")
        + b"".join(rec(b"R", b"%02d" % (i % 100)) for i in range(n))
        + rec(b"E", b"")
    )


def huge_records(n: int) -> bytes:
    """An attribute (stepped over) and a recipient of n bytes each."""
    return (
        rec(b"S", b"a@b")
        + rec(b"A", b"x=" + b"y" * n)
        + rec(b"R", b"r@" + b"d" * n)
        + rec(b"E", b"")
    )


def long_numbers(n: int) -> bytes:
    """Bad input: n-digit size, time and pointer (garbage at the first of them)."""
    return rec(b"C", b"9" * n) + rec(b"T", b"9" * n) + rec(b"p", b"9" * n) + rec(b"E", b"")


def body_without_size(n: int) -> bytes:
    """No C record: the content cannot be jumped over and is walked record by record."""
    lines = b"".join(rec(b"N", b"a line of the message, number %d" % i) for i in range(n))
    extracted = rec(b"X", b"") + rec(b"R", b"bcc@d")
    return rec(b"S", b"a@b") + rec(b"M", b"") + lines + extracted + rec(b"E", b"")


def pointer_chain(n: int) -> bytes:
    """n records each reached by a pointer from the one after it: every jump goes backwards,
    so every one reads the file again from its target."""
    pointer = len(rec(b"p", b"%15d" % 0))
    head = rec(b"S", b"a@b")
    at = len(head) + pointer
    records, offsets = [rec(b"E", b"")], [at]
    at += len(records[0])
    for i in range(1, n):
        records.append(rec(b"R", b"r%d@d" % (i % 10)) + rec(b"p", b"%15d" % offsets[-1]))
        offsets.append(at)
        at += len(records[-1])
    return head + rec(b"p", b"%15d" % offsets[-1]) + b"".join(records)


# case: (file of size parameter n, recipients it holds; None: garbage), first n
CASES: dict[str, tuple[Callable[[int], bytes], Callable[[int], int | None], int]] = {
    "many recipients": (many_recipients, lambda n: n, 25_000),
    "short recipients": (short_recipients, lambda n: n, 50_000),
    "huge records": (huge_records, lambda n: 1, MAX_RECORD // 64),
    "long numbers": (long_numbers, lambda n: None, 1_000_000),
    "body without size": (body_without_size, lambda n: 1, 25_000),
    "pointer chain": (pointer_chain, lambda n: n - 1, MAX_JUMPS // 8),
}


def parse(data: bytes) -> Envelope | None:
    try:
        return parse_queue_bytes(data)
    except QueueFileError:  # long numbers: garbage, which costs the same to find
        return None


def best_time(data: bytes, runs: int) -> float:
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(runs):
            parse(data)
        best = min(best, time.perf_counter() - t)
    return best


@pytest.mark.parametrize("case", CASES)
def test_one_queue_file_costs_linear_time_and_bounded_memory(case: str) -> None:
    make, recipients, n = CASES[case]
    small, large = make(n), make(4 * n)

    tracemalloc.start()
    try:
        env = parse(large)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= MEMORY_PER_BYTE * len(large) + MEMORY_SLACK, (case, peak / len(large))
    # the whole file was read, not given up on
    assert (None if env is None else len(env.recipients)) == recipients(4 * n)

    # Enough runs that the small file takes some 20 ms: a ratio of two tiny times is noise.
    t = time.perf_counter()
    parse(small)
    runs = max(1, int(0.02 / max(time.perf_counter() - t, 1e-6)))
    t_small, t_large = best_time(small, runs), best_time(large, runs)
    assert t_large / runs < CEILING_S
    assert t_large / t_small < 8, (case, t_small, t_large)  # linear: 4, quadratic: 16


def test_a_pointer_chain_past_the_jump_limit_is_garbage() -> None:
    # bad input: more backward jumps than any queue file has; the work stops at MAX_JUMPS
    with pytest.raises(QueueFileError) as e:
        parse_queue_bytes(pointer_chain(MAX_JUMPS + 2))
    assert e.value.kind == "garbage" and "pointer" in str(e.value)


def test_the_largest_record_is_read_within_the_memory_limit_and_a_larger_one_refused() -> None:
    payload = MAX_RECORD - len(b"r@")
    data = huge_records(payload)
    tracemalloc.start()
    try:
        env = parse_queue_bytes(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(env.recipients[0]) == MAX_RECORD
    assert peak <= MEMORY_PER_BYTE * len(data) + MEMORY_SLACK
    # bad input: a record one byte longer than any Postfix writes
    with pytest.raises(QueueFileError) as e:
        parse_queue_bytes(huge_records(payload + 1))
    assert e.value.kind == "garbage" and "record of" in str(e.value)
