"""`mailpulse queue` over addresses that are not UTF-8, on a node whose locale makes Python's
stdout strict (LANG=en_US.UTF-8, here PYTHONIOENCODING=utf-8): its table must equal qshape's,
which prints such a domain as the bytes the queue file holds."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import require_programs
from tests.test_queue_files import put, queue_file


def rows(table: bytes) -> dict[bytes, list[int]]:
    """A qshape-style table: domain -> [total, bucket counts...]."""
    out = {}
    for line in table.splitlines():
        parts = line.split()
        if len(parts) == 12 and all(p.isdigit() for p in parts[1:]):
            out[parts[0]] = [int(p) for p in parts[1:]]
    return out


@pytest.mark.parametrize("sender", [False, True])
def test_queue_table_prints_an_eight_bit_domain_as_qshape_does(
    tmp_path: Path, sender: bool
) -> None:
    # Bad input: a deferred message whose sender and recipient domains hold a byte that is not
    # UTF-8 (anyone may submit one with sendmail); the table once ended in a traceback
    # (UnicodeEncodeError: surrogates not allowed) when stdout was strict UTF-8.
    require_programs("qshape", "postconf")
    spool = tmp_path / "spool"
    for q in ("incoming", "active", "deferred", "hold", "maildrop"):
        (spool / q).mkdir(parents=True)
    now = int(time.time())
    data = queue_file(now - 1200, "s@x.example", ["a@y.example", "b@gmail.com"])
    data = data.replace(b"x.example", b"x.ex\xffmple").replace(b"y.example", b"y.ex\xe9mple")
    put(spool, "deferred", "ABCDE0001", data)
    cfg = tmp_path / "etc"
    cfg.mkdir()
    (cfg / "main.cf").write_text(f"queue_directory = {spool}\n")
    flag = ["-s"] if sender else []
    want = subprocess.run(
        ["qshape", "-w", "200", *flag, str(spool / "deferred")], capture_output=True, check=True
    ).stdout
    got = subprocess.run(
        [sys.executable, "-m", "mailpulse", "queue", "-c", str(cfg),
         *(["--sender"] if sender else [])],
        capture_output=True, env={**os.environ, "PYTHONIOENCODING": "utf-8"}, check=False,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr.decode(errors="replace")
    expected = rows(want)
    assert (b"x.ex\xffmple" if sender else b"y.ex\xe9mple") in expected
    assert rows(got.stdout) == expected
