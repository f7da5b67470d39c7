"""A private Postfix instance and the remote MX it delivers to, started and stopped from Python.

The instance lives entirely under one directory (config, queue, data, log, mailboxes), listens
on loopback only, and routes each campaign domain to its own loopback address where the
scripted remote MX answers, so that Postfix keeps a separate destination queue per domain as it
would on the Internet. Anything not routed there is bounced locally: no mail leaves the host.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pty
import pwd
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from lab.behaviours import DOMAINS

QUEUES = ("maildrop", "incoming", "active", "deferred", "hold", "corrupt")
VMAIL_USER = "nobody"  # owner of the bounce Maildir; virtual(8) refuses root


class LabError(RuntimeError):
    """The lab cannot do what was asked; the message says why and what to do."""


def port_owner(host: str, port: int) -> str:
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections("inet"):
            laddr = conn.laddr
            if conn.status != psutil.CONN_LISTEN or not conn.pid or not laddr:
                continue
            if laddr.port == port and laddr.ip in (host, "0.0.0.0"):  # noqa: S104
                with contextlib.suppress(psutil.Error):
                    # One line, whatever the arguments hold.
                    cmdline = " ".join(" ".join(psutil.Process(conn.pid).cmdline()).split())[:80]
                    return f"pid {conn.pid} ({cmdline})"
                return f"pid {conn.pid}"
    return "another process"


def port_free_soon(host: str, port: int, grace_s: float = 5.0) -> bool:
    """Free now or within a short grace: a process that was just killed may still be exiting."""
    deadline = time.monotonic() + grace_s
    while not port_free(host, port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def free_port(hosts: Iterable[str] = ("127.0.0.1",)) -> int:
    """A port free on all these loopback addresses, for labs that run beside each other.

    Taken below the kernel's ephemeral range (32768 and up), so that no outgoing connection
    can grab it between this choice and the bind.
    """
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        if all(port_free(h, port) for h in hosts):
            return port
    raise LabError("no free loopback port found between 20000 and 32000")


def wait_until(pred: Callable[[], bool], timeout: float, what: str, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(step)


def run_in_pty(
    argv: list[str], timeout: float, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run a command with a terminal as stdio: Postfix only says why it failed to start there."""
    master_fd, slave_fd = pty.openpty()
    try:
        proc = subprocess.Popen(
            argv, stdin=slave_fd, stdout=slave_fd, stderr=slave_fd, env=env, start_new_session=True
        )
    finally:
        os.close(slave_fd)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                chunk = os.read(master_fd, 4096)
            except OSError:  # EIO: the terminal closed, the command is done
                break
            if not chunk:
                break
            out += chunk
            if time.monotonic() > deadline:
                proc.kill()
                break
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = -9
    finally:
        os.close(master_fd)
    return rc, out.decode("utf-8", "replace").replace("\r\n", "\n")


class _UnderRoot:
    """A path under the lab's root, read as an attribute (lab.spool, lab.maillog, ...)."""

    def __init__(self, *parts: str) -> None:
        self.parts = parts

    def __get__(self, lab: Lab, owner: type | None = None) -> Path:
        return lab.root.joinpath(*self.parts)


@dataclass
class Lab:
    """One lab node: a private Postfix instance plus the remote MX it talks to."""

    root: Path
    smtp_port: int = 2525
    mx_port: int = 2526
    node: str = "node1"
    instance: str = "postfix"  # syslog_name; "postfix-bulk1" for a second instance
    bounce_domain: str = "bounces.lab.test"
    mx_base_ip: int = 10  # domains get 127.0.0.<base+i>
    main_cf_extra: dict[str, str] = field(default_factory=dict)
    master_cf_extra: str = ""  # appended to master.cf (a profile's services)
    domain_transports: dict[str, str] = field(default_factory=dict)  # domain -> transport name

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()

    # -- paths ---------------------------------------------------------------
    etc = _UnderRoot("etc")
    spool = _UnderRoot("spool")
    maillog = _UnderRoot("log", "maillog")
    maildir = _UnderRoot("mail", "bounce")  # the DSNs sent to bounce-<uid>@<bounce_domain>
    mx_control = _UnderRoot("mx", "control.json")
    mx_answers = _UnderRoot("mx", "answers.jsonl")
    mx_pidfile = _UnderRoot("mx", "remote_mx.pid")

    def mx_addresses(self) -> list[str]:
        return [self.mx_address(d) for d in DOMAINS]

    def nexthop(self, domain: str) -> str:
        return f"[{self.mx_address(domain)}]:{self.mx_port}"

    def mx_address(self, domain: str) -> str:
        i = list(DOMAINS).index(domain)
        return f"127.0.0.{self.mx_base_ip + i}"

    # -- configuration -------------------------------------------------------
    def main_cf(self) -> dict[str, str]:
        r = self.root
        cf = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.spool),
            "data_directory": str(r / "data"),
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(r / "log"),
            "syslog_name": self.instance,
            "myhostname": f"{self.node}.lab.test",
            "mydomain": "lab.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_peername_lookup": "no",
            "smtp_host_lookup": "native",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "recipient_delimiter": "-",
            "transport_maps": f"texthash:{self.etc / 'transport'}",
            # Whatever the transport map does not route stays on this host.
            "default_transport": "error:5.1.2 the lab routes only its campaign domains",
            "virtual_mailbox_domains": self.bounce_domain,
            "virtual_mailbox_base": str(r / "mail"),
            "virtual_mailbox_maps": f"texthash:{self.etc / 'vmailbox'}",
            "virtual_uid_maps": f"static:{pwd.getpwnam(VMAIL_USER).pw_uid}",
            "virtual_gid_maps": f"static:{pwd.getpwnam(VMAIL_USER).pw_gid}",
            "smtp_connect_timeout": "5s",
            "smtp_helo_timeout": "10s",
        }
        cf.update(self.main_cf_extra)
        return cf

    def master_cf(self) -> str:
        services = [
            (f"127.0.0.1:{self.smtp_port}", "inet", "n", "-", "n", "-", "-", "smtpd"),
            ("pickup", "unix", "n", "-", "n", "60", "1", "pickup"),
            ("cleanup", "unix", "n", "-", "n", "-", "0", "cleanup"),
            ("qmgr", "unix", "n", "-", "n", "300", "1", "qmgr"),
            ("tlsmgr", "unix", "-", "-", "n", "1000?", "1", "tlsmgr"),
            ("rewrite", "unix", "-", "-", "n", "-", "-", "trivial-rewrite"),
            ("bounce", "unix", "-", "-", "n", "-", "0", "bounce"),
            ("defer", "unix", "-", "-", "n", "-", "0", "bounce"),
            ("trace", "unix", "-", "-", "n", "-", "0", "bounce"),
            ("verify", "unix", "-", "-", "n", "-", "1", "verify"),
            ("flush", "unix", "n", "-", "n", "1000?", "0", "flush"),
            ("proxymap", "unix", "-", "-", "n", "-", "-", "proxymap"),
            ("proxywrite", "unix", "-", "-", "n", "-", "1", "proxymap"),
            ("smtp", "unix", "-", "-", "n", "-", "-", "smtp"),
            ("relay", "unix", "-", "-", "n", "-", "-", "smtp"),
            ("showq", "unix", "n", "-", "n", "-", "-", "showq"),
            ("error", "unix", "-", "-", "n", "-", "-", "error"),
            ("retry", "unix", "-", "-", "n", "-", "-", "error"),
            ("discard", "unix", "-", "-", "n", "-", "-", "discard"),
            ("local", "unix", "-", "n", "n", "-", "-", "local"),
            ("virtual", "unix", "-", "n", "n", "-", "-", "virtual"),
            ("lmtp", "unix", "-", "-", "n", "-", "-", "lmtp"),
            ("anvil", "unix", "-", "-", "n", "-", "1", "anvil"),
            ("scache", "unix", "-", "-", "n", "-", "1", "scache"),
            ("postlog", "unix-dgram", "n", "-", "n", "-", "1", "postlogd"),
        ]
        return "".join(" ".join(s) + "\n" for s in services) + self.master_cf_extra

    def write_config(self) -> None:
        vmail = pwd.getpwnam(VMAIL_USER)
        postfix_user = pwd.getpwnam("postfix")
        # Postfix's own processes (user postfix) must reach the data directory: a private parent
        # (mkdtemp makes them 0700) would fail the start with only "startup failed" to say.
        for parent in self.root.parents:
            if parent.exists() and not os.stat(parent).st_mode & stat.S_IXOTH:
                raise LabError(
                    f"{parent} is private (mode {os.stat(parent).st_mode & 0o777:o}): Postfix's"
                    f" processes cannot reach {self.root}; chmod o+x {parent} or pick another root"
                )
        for d in (self.etc, self.spool, self.root / "log", self.root / "mx"):
            d.mkdir(parents=True, exist_ok=True)
        data = self.root / "data"
        data.mkdir(exist_ok=True)
        os.chown(data, postfix_user.pw_uid, postfix_user.pw_gid)
        mail = self.root / "mail"
        for d in (mail, self.maildir, *(self.maildir / s for s in ("new", "cur", "tmp"))):
            d.mkdir(parents=True, exist_ok=True)
            os.chown(d, vmail.pw_uid, vmail.pw_gid)
        (self.etc / "main.cf").write_text(
            "".join(f"{k} = {v}\n" for k, v in self.main_cf().items())
        )
        (self.etc / "master.cf").write_text(self.master_cf())
        (self.etc / "transport").write_text(
            "".join(
                f"{d} {self.domain_transports.get(d, 'smtp')}:{self.nexthop(d)}\n" for d in DOMAINS
            )
        )
        (self.etc / "vmailbox").write_text(f"bounce@{self.bounce_domain} bounce/\n")

    # -- Postfix -------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["MAIL_CONFIG"] = str(self.etc)
        return env

    def postfix_running(self) -> bool:
        if not (self.etc / "main.cf").exists():
            return False
        r = subprocess.run(
            ["postfix", "-c", str(self.etc), "status"], capture_output=True, timeout=30
        )
        return r.returncode == 0

    def _instance_processes(self) -> list[psutil.Process]:
        """Processes of this instance, found by the MAIL_CONFIG master hands its children."""
        mine = []
        want = f"MAIL_CONFIG={self.etc}"
        for p in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error, OSError):
                env = Path(f"/proc/{p.pid}/environ").read_bytes().split(b"\0")
                if want.encode() in env:
                    mine.append(p)
        return mine

    def _reap_orphans(self) -> None:
        """After a crash of master, its children may still hold the listening socket."""
        for p in self._instance_processes():
            if p.pid != os.getpid():
                with contextlib.suppress(psutil.Error):
                    p.kill()

    def start_postfix(self) -> None:
        if self.postfix_running():
            return
        self._reap_orphans()
        if not port_free_soon("127.0.0.1", self.smtp_port):
            owner = port_owner("127.0.0.1", self.smtp_port)
            raise LabError(
                f"cannot start the lab's Postfix: 127.0.0.1:{self.smtp_port} is in use by {owner};"
                " stop it or pick another smtp port"
            )
        self.write_config()
        rc, out = run_in_pty(["postfix", "-c", str(self.etc), "start"], timeout=60, env=self._env())
        if rc != 0:
            raise LabError(f"postfix -c {self.etc} start failed ({rc}):\n{out.strip()}")
        wait_until(
            lambda: not port_free("127.0.0.1", self.smtp_port), 30, "Postfix's smtpd to listen"
        )

    def stop_postfix(self) -> None:
        if self.postfix_running():
            run_in_pty(["postfix", "-c", str(self.etc), "stop"], timeout=60, env=self._env())
            with contextlib.suppress(LabError):
                wait_until(lambda: not self.postfix_running(), 30, "Postfix to stop")
        self._reap_orphans()

    def postqueue(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["postqueue", "-c", str(self.etc), *args],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )

    def flush(self) -> None:
        """Ask Postfix to retry deferred mail now."""
        self.postqueue("-f")

    def queue_files(self, queue: str) -> int:
        """Messages in one queue, counted as files: the lab's own view, no parser involved."""
        n = 0
        for _dirpath, _dirs, files in os.walk(self.spool / queue):
            n += len(files)
        return n

    def queue_settled(self) -> bool:
        """Nothing waits for a delivery attempt: all is delivered, bounced or deferred."""
        return all(self.queue_files(q) == 0 for q in ("maildrop", "incoming", "active"))

    # -- remote MX -------------------------------------------------------------
    def _mx_pid(self) -> int | None:
        try:
            pid = int(self.mx_pidfile.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)  # ours: reap it
            elif "lab.remote_mx" in " ".join(proc.cmdline()):
                return pid
        self.mx_pidfile.unlink(missing_ok=True)  # stale: the MX died without cleaning up
        return None

    def mx_running(self) -> bool:
        return self._mx_pid() is not None

    def mx_up(self) -> None:
        if self.mx_running():
            return
        hosts = self.mx_addresses()
        for h in hosts:
            if not port_free_soon(h, self.mx_port):
                raise LabError(
                    f"cannot start the remote MX: {h}:{self.mx_port} is in use by"
                    f" {port_owner(h, self.mx_port)}; stop it or pick another mx port"
                )
        self.root.joinpath("mx").mkdir(parents=True, exist_ok=True)
        log = (self.root / "mx" / "remote_mx.log").open("ab")
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lab.remote_mx",
                "--hosts",
                ",".join(hosts),
                "--port",
                str(self.mx_port),
                "--control",
                str(self.mx_control),
                "--answers",
                str(self.mx_answers),
                "--pidfile",
                str(self.mx_pidfile),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        log.close()
        wait_until(lambda: not port_free(hosts[-1], self.mx_port), 30, "the remote MX to listen")

    def mx_down(self) -> None:
        pid = self._mx_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).wait(10)
        self.mx_pidfile.unlink(missing_ok=True)

    def set_outage(self, domains: Iterable[str]) -> None:
        """The remote answers 550 5.1.1 to every recipient of these domains (an outage)."""
        self.mx_control.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.mx_control.with_suffix(".tmp")
        tmp.write_text(json.dumps({"outage": sorted(domains)}))
        os.replace(tmp, self.mx_control)

    def outage(self) -> list[str]:
        try:
            return list(json.loads(self.mx_control.read_text()).get("outage", []))
        except FileNotFoundError:
            return []

    # -- the whole lab ---------------------------------------------------------
    def start(self) -> None:
        self.mx_up()
        self.start_postfix()

    def stop(self) -> None:
        self.stop_postfix()
        self.mx_down()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
