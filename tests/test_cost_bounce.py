"""Bounded cost of a bounce message, whatever its size or shape.

Each shape is parsed at two sizes eight times apart: peak memory (tracemalloc, deterministic)
stays under MEMORY_PER_BYTE per input byte plus a fixed allowance, and the time grows at most
like the size (a ratio well under the 64 of quadratic growth), with a ceiling only a hang or a
blow-up would pass. The command line gets the largest of each, read by the real program.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from mailpulse.bounce import dsn

from tests.conftest import require_programs

MEMORY_PER_BYTE = 16  # peak bytes allocated per input byte, over FIXED
FIXED = 4 << 20
GROWTH = 8  # the larger input is GROWTH times the smaller
MAX_RATIO = 20  # linear is 8; quadratic 64
CEILING_S = 60.0
CLI_BASE_RSS = 48 << 20  # the interpreter and its imports
CLI_RSS_PER_BYTE = 32  # resident memory counts the allocator's slack too


def failed_header(n: int) -> bytes:
    # Bad input: n addresses in X-Failed-Recipients, 50 of them explained in the text.
    addrs = ", ".join(f"user{i}@example{i % 97}.org" for i in range(n))
    explained = "".join(
        f"  user{i}@example{i % 97}.org\n    550 5.1.1 User unknown\n\n" for i in range(min(n, 50))
    )
    return (
        "From: Mail Delivery System <Mailer-Daemon@mx.example.net>\nTo: bounce-7@b.example\n"
        "Subject: Mail delivery failed: returning message to sender\n"
        f"X-Failed-Recipients: {addrs}\n\nThe following address(es) failed:\n\n{explained}"
    ).encode()


def report(blocks: str, notice: str = "The mail system") -> bytes:
    return (
        "From: MAILER-DAEMON@mx.example\nTo: bounce-1@b.example\n"
        "Subject: Undelivered Mail Returned to Sender\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n\n'
        f"--B\nContent-Type: text/plain\n\n{notice}\n\n"
        "--B\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example\n\n"
        f"{blocks}--B--\n"
    ).encode()


def report_blocks(n: int) -> bytes:
    # Bad input: one delivery-status part with n recipient blocks.
    return report(
        "".join(
            f"Final-Recipient: rfc822; u{i}@example.com\nAction: failed\nStatus: 5.1.1\n"
            f"Diagnostic-Code: smtp; 550 5.1.1 <u{i}@example.com>: User unknown\n\n"
            for i in range(n)
        )
    )


def huge_diagnostic(n: int) -> bytes:
    # Bad input: one recipient whose error text (in the notice and in Diagnostic-Code) is n
    # words long; the stdlib's header refolding once made this quadratic.
    words = "".join(f"word{i % 1000} " for i in range(n))
    return report(
        "Final-Recipient: rfc822; u@example.com\nAction: failed\nStatus: 5.1.1\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 {words}\n\n",
        f"<u@example.com>: 550 5.1.1 {words}",
    )


def many_parts(n: int) -> bytes:
    # Bad input: n MIME parts, each a notice of its own.
    parts = "".join(
        f"--B\nContent-Type: text/plain\n\n<u{i}@example.com>: 550 5.1.1 User unknown\n\n"
        for i in range(n)
    )
    return (
        "From: MAILER-DAEMON@mx.example\nTo: bounce-1@b.example\n"
        "Subject: Undelivered Mail Returned to Sender\nMIME-Version: 1.0\n"
        f'Content-Type: multipart/mixed; boundary="B"\n\n{parts}--B--\n'
    ).encode()


def deep_nesting(n: int) -> bytes:
    # Bad input: n multiparts nested one in another.
    body = "Content-Type: text/plain\n\n<u@example.com>: 550 5.1.1 User unknown\n"
    for i in range(n):
        body = f'Content-Type: multipart/mixed; boundary="b{i}"\n\n--b{i}\n{body}\n--b{i}--\n'
    return (
        "From: MAILER-DAEMON@mx.example\nTo: bounce-1@b.example\n"
        f"Subject: Undelivered Mail Returned to Sender\nMIME-Version: 1.0\n{body}"
    ).encode()


SHAPES: dict[str, tuple[Callable[[int], bytes], int]] = {
    # shape: (builder, smaller size); the larger one is GROWTH times it.
    "failed_header": (failed_header, 5_000),  # 40,000 addresses at the larger size, 1 MB
    "report_blocks": (report_blocks, 3_000),  # 24,000 blocks, 3.4 MB
    "huge_diagnostic": (huge_diagnostic, 60_000),  # 480,000 words, 7.6 MB
    "many_parts": (many_parts, 4_000),  # 32,000 parts, 2.4 MB
    "deep_nesting": (deep_nesting, 400),  # 3,200 levels
}


def measure(raw: bytes) -> tuple[int, float]:
    """Peak bytes allocated and CPU seconds for one parse."""
    tracemalloc.start()
    try:
        dsn.parse(raw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    start = time.process_time()
    dsn.parse(raw)
    return peak, time.process_time() - start


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_memory_per_byte_and_linear_time(shape: str) -> None:
    build, n = SHAPES[shape]
    small, large = build(n), build(n * GROWTH)
    assert len(large) <= dsn.MAX_MESSAGE_BYTES  # all of it is read
    dsn.parse(small[:2000])  # rules compiled and cached before measuring
    results = []
    for raw in (small, large):
        peak, seconds = measure(raw)
        assert peak <= MEMORY_PER_BYTE * len(raw) + FIXED, (shape, len(raw), peak)
        assert seconds < CEILING_S, (shape, len(raw), seconds)
        results.append(seconds)
    # Small times are floored so that timer noise on a fast parse cannot fail the ratio.
    assert results[1] <= MAX_RATIO * max(results[0], 0.02), (shape, results)


def run_cli(raw: bytes) -> tuple[int, int, float, bytes]:
    """Exit code, peak RSS and CPU seconds of `mailpulse bounce parse --json` over one file.

    Measured by GNU time, a small parent: a child forked from this test process would report
    the test process's own peak (Linux carries it over exec)."""
    require_programs("/usr/bin/time")
    with tempfile.TemporaryDirectory() as d:
        f, out, usage = Path(d) / "in.eml", Path(d) / "out", Path(d) / "usage"
        f.write_bytes(raw)
        with out.open("wb") as sink:
            proc = subprocess.run(
                ["/usr/bin/time", "-f", "%M %U %S", "-o", str(usage), sys.executable]
                + ["-m", "mailpulse", "bounce", "parse", "--json", str(f)],
                stdout=sink,
                stderr=subprocess.PIPE,
            )
        kib, user, system = usage.read_text().split()[-3:]
        assert out.stat().st_size <= dsn.MAX_RECIPIENTS * 3 * dsn.MAX_DIAGNOSTIC_CHARS
    return proc.returncode, int(kib) * 1024, float(user) + float(system), proc.stderr


@pytest.mark.parametrize(
    ("shape", "n"),
    [("failed_header", 100_000), ("report_blocks", 56_000), ("huge_diagnostic", 480_000)],
)
def test_the_command_line_stays_bounded(shape: str, n: int) -> None:
    # The largest inputs (up to the 8 MiB read limit) through the real program.
    raw = SHAPES[shape][0](n)
    code, rss, seconds, err = run_cli(raw)
    assert code in (0, 3), err  # 3: recipients past the limit, said on stderr
    assert rss <= CLI_BASE_RSS + CLI_RSS_PER_BYTE * len(raw), (shape, rss)
    assert seconds < CEILING_S
