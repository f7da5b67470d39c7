"""A sampler in its own thread: outputs read the last good snapshot and never wait on it."""

from __future__ import annotations

import threading
from typing import Protocol

from mailpulse.events import QueueSnapshot


class Sampler(Protocol):
    def sample(self, deadline_s: float | None = None) -> QueueSnapshot: ...


class BackgroundQueueSampler:
    """Samples every interval_s in a thread; outputs read latest() and never wait on the spool."""

    def __init__(
        self, sampler: Sampler, interval_s: float = 60.0, deadline_s: float | None = None
    ) -> None:
        self.sampler = sampler
        self.interval_s = interval_s
        self.deadline_s = deadline_s if deadline_s is not None else max(1.0, interval_s * 0.8)
        self.failures = 0
        self.last_error = ""
        self._latest: QueueSnapshot | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="queue-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def latest(self) -> QueueSnapshot | None:
        """The last good snapshot (its age is time.time() - taken_at), None before the first."""
        with self._lock:
            return self._latest

    def sample_once(self) -> QueueSnapshot | None:
        try:
            snap = self.sampler.sample(self.deadline_s)
        except Exception as e:  # whatever went wrong, outputs keep serving the last good one
            # a stopped Postfix, an unreadable spool...: counted and said, never a dead thread
            self.failures += 1
            self.last_error = f"{type(e).__name__}: {e}"
            return None
        with self._lock:
            self._latest = snap
        return snap

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(self.interval_s)
