"""Shared fixtures: the lab, the shared corpus, and the CI rule that a missing part is a failure.

With MAILPULSE_REQUIRE_ALL=1 (set by .ci/run) every skip is turned into a failure: in CI every
real component (Postfix, snmpd, Prometheus, Redis, ...) must be there and every test must run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_CORPUS = REPO.parent / "shared" / "corpus"
REQUIRE_ALL = os.environ.get("MAILPULSE_REQUIRE_ALL") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, but MAILPULSE_REQUIRE_ALL=1 forbids skips: {reason}"


def require_programs(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (make deps installs them)")


def require_root(why: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"needs root: {why}")


@pytest.fixture(scope="session")
def shared_corpus() -> Path:
    if not SHARED_CORPUS.is_dir():
        pytest.skip(f"shared reference corpus not found at {SHARED_CORPUS}")
    return SHARED_CORPUS


@pytest.fixture
def make_lab() -> Iterator[Callable[..., object]]:
    """Start private lab nodes on free loopback ports; each is torn down after the test."""
    require_root("the lab runs a private Postfix instance")
    require_programs("postfix", "postconf", "postqueue")
    pytest.importorskip("aiosmtpd", reason="the lab's remote MX needs aiosmtpd")
    from lab.postfix import Lab, free_port

    labs: list[Lab] = []

    def make(**kw: object) -> Lab:
        # Not under pytest's tmp_path: its parents are private to root, and Postfix's own
        # processes must reach their data directory.
        root = Path(tempfile.mkdtemp(prefix="mailpulse-lab-"))
        os.chmod(root, 0o755)
        lab = Lab(root, smtp_port=free_port(), mx_port=0, **kw)  # type: ignore[arg-type]
        lab.mx_port = free_port(lab.mx_addresses())
        labs.append(lab)
        lab.start()
        return lab

    yield make
    for lab in labs:
        lab.destroy()


@pytest.fixture
def lab(make_lab: Callable[..., object]) -> object:
    return make_lab()
