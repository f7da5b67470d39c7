"""The scripted remote MX: an aiosmtpd server on loopback that answers by local part.

Run as its own process (`python -m lab.remote_mx ...`) so that taking it down is what it is
for Postfix: connection refused. A control file (JSON) switches domains into outage; every
answer given is appended to an answers file, the lab's record of what it told Postfix.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from lab.behaviours import BEHAVIOURS, OUTAGE, Behaviour, kind_of


class Control:
    """Outage switches, re-read whenever the control file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime = -1.0
        self.outage: frozenset[str] = frozenset()

    def refresh(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self.outage, self._mtime = frozenset(), -1.0
            return
        if mtime != self._mtime:
            data = json.loads(self.path.read_text() or "{}")
            self.outage = frozenset(d.lower() for d in data.get("outage", []))
            self._mtime = mtime


class ScriptedHandler:
    def __init__(self, control: Control, answers: Any) -> None:
        self.control = control
        self.answers = answers

    def behaviour(self, rcpt: str) -> Behaviour:
        local, _, domain = rcpt.rpartition("@")
        self.control.refresh()
        if domain.lower() in self.control.outage:
            return OUTAGE
        return BEHAVIOURS.get(kind_of(local), BEHAVIOURS["ok"])

    def record(self, rcpt: str, stage: str, reply: str) -> None:
        self.answers.write(json.dumps({"recipient": rcpt, "stage": stage, "reply": reply}) + "\n")
        self.answers.flush()

    async def handle_RCPT(  # noqa: N802 (aiosmtpd's hook name)
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        b = self.behaviour(address)
        if b.stage == "rcpt" and b.code >= 400:
            reply = b.reply(address)
            self.record(address, "rcpt", reply)
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        for rcpt in envelope.rcpt_tos:
            b = self.behaviour(rcpt)
            if b.stage == "data" and b.code >= 400:
                reply = b.reply(rcpt)
                for r in envelope.rcpt_tos:
                    self.record(r, "data", reply)
                return reply
        reply = "250 2.0.0 Ok: queued"
        for rcpt in envelope.rcpt_tos:
            self.record(rcpt, "data", reply)
        return reply


async def serve(hosts: list[str], port: int, control: Path, answers_path: Path) -> None:
    loop = asyncio.get_running_loop()
    with answers_path.open("a", encoding="utf-8") as answers:
        handler = ScriptedHandler(Control(control), answers)
        server = await loop.create_server(
            lambda: SMTP(handler, hostname="mx.remote.lab.test", data_size_limit=50 * 1024 * 1024),
            host=hosts,
            port=port,
            reuse_address=True,
        )
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with server:
            await stop.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.remote_mx")
    p.add_argument("--hosts", required=True, help="comma-separated loopback addresses")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--control", type=Path, required=True)
    p.add_argument("--answers", type=Path, required=True)
    p.add_argument("--pidfile", type=Path)
    a = p.parse_args(argv)
    if a.pidfile:
        a.pidfile.write_text(f"{os.getpid()}\n")
    try:
        asyncio.run(serve(a.hosts.split(","), a.port, a.control, a.answers))
    finally:
        if a.pidfile:
            with contextlib.suppress(FileNotFoundError):
                a.pidfile.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
