"""The agent's start-up, through its real command line: whatever on this host keeps it from
starting (a port in use, an address not on the host, a state directory it cannot write, a TLS
key it cannot read) is one line naming it and an exit at once, and --check-config finds it
first without starting anything. Then the HAProxy agent-check port under a burst."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from lab.postfix import free_port
from mailpulse.config import instances_to_watch, load_config
from tests.agent_support import AgentProcess
from tests.conftest import require_programs, require_root

NOT_HERE = "192.0.2.1"  # TEST-NET-1 (RFC 5737): on no host


def write_config(tmp_path: Path, extra: str = "") -> Path:
    """A config for a node whose Postfix keeps no spool (nothing waits) and whose log is empty."""
    require_programs("postconf")
    etc = tmp_path / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "main.cf").write_text(f"queue_directory = {tmp_path / 'no-spool'}\n")
    (tmp_path / "mail.log").touch()
    f = tmp_path / "mailpulse.yaml"
    f.write_text(
        f"postfix:\n  config_dirs: [{etc}]\nlogs:\n  files: [{tmp_path / 'mail.log'}]\n" + extra
    )
    return f


def agent(*argv: str, without_root_rights: bool = False) -> subprocess.CompletedProcess[str]:
    """`mailpulse agent ...`; optionally as root without the rights to read or write others'
    files (CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped), as the service's own user is."""
    cmd = [sys.executable, "-m", "mailpulse", "agent", *argv]
    if without_root_rights:
        require_root("only root can drop root's rights")
        require_programs("setpriv")
        caps = "-dac_override,-dac_read_search"
        cmd = ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", "--", *cmd]
    # The timeout only stops a hang: every case here must end at once.
    return subprocess.run(
        cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120
    )


def check_and_start(config: Path, state: Path, *extra: str, **kw: bool) -> list[str]:
    """What --check-config and a real start each say; both must refuse with one line, exit 1."""
    said = []
    for check in (["--check-config"], []):
        r = agent("--config", str(config), "--state-dir", str(state), *extra, *check, **kw)
        assert r.returncode == 1, (check, r.stdout, r.stderr)
        assert r.stdout == "" and r.stderr.count("\n") == 1, (check, r.stderr)
        said.append(r.stderr.rstrip("\n"))
    return said


def test_a_port_in_use_names_the_address_and_the_process_holding_it(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    port = free_port()
    with socket.socket() as holder:  # bad input: another program already listens there
        holder.bind(("127.0.0.1", port))
        holder.listen()
        comm = Path("/proc/self/comm").read_text().strip()  # what ps calls this process
        said = check_and_start(
            config, tmp_path / "state", "--web.listen-address", f"127.0.0.1:{port}"
        )
    want = f"mailpulse agent: listen 127.0.0.1:{port}: address already in use by pid"
    assert said == [f"{want} {os.getpid()} ({comm})"] * 2
    assert not (tmp_path / "state").exists()  # neither the check nor the refused start made it


def test_the_agent_check_port_in_use_and_the_same_port_twice(tmp_path: Path) -> None:
    port, check_port = free_port(), free_port()
    config = write_config(tmp_path, f"agent_check:\n  listen: 127.0.0.1:{check_port}\n")
    with socket.socket() as holder:  # bad input: the agent-check port is taken
        holder.bind(("127.0.0.1", check_port))
        holder.listen()
        said = check_and_start(
            config, tmp_path / "state", "--web.listen-address", f"127.0.0.1:{port}"
        )
    assert said[0].startswith(
        f"mailpulse agent: agent_check.listen 127.0.0.1:{check_port}: address already in use by"
    )
    # Bad input: /metrics and the agent-check on one port; each binds alone, not both.
    said = check_and_start(
        config, tmp_path / "state", "--web.listen-address", f"0.0.0.0:{check_port}"
    )
    assert (
        said
        == [f"mailpulse agent: agent_check.listen 127.0.0.1:{check_port}: the same port as listen"]
        * 2
    )


def test_an_address_not_on_this_host_is_named(tmp_path: Path) -> None:
    local = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}
    if NOT_HERE in local:
        pytest.skip(f"{NOT_HERE} is an address of this host")
    config = write_config(tmp_path)
    port = free_port()
    # Bad input: an address of another host (a config copied from another node).
    said = check_and_start(config, tmp_path / "state", "--web.listen-address", f"{NOT_HERE}:{port}")
    assert (
        said
        == [f"mailpulse agent: listen {NOT_HERE}:{port}: {NOT_HERE} is not an address of this host"]
        * 2
    )


def test_a_state_directory_under_a_file_is_named(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    afile = tmp_path / "a-file"
    afile.write_text("x")
    port = free_port()
    # Bad input: a state directory whose parent is a plain file.
    said = check_and_start(config, afile / "state", "--web.listen-address", f"127.0.0.1:{port}")
    assert said == [f"mailpulse agent: state_dir {afile / 'state'}: {afile} is not a directory"] * 2


def test_a_state_directory_the_agent_cannot_write_is_named(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    nobody = 65534
    os.chown(theirs, nobody, nobody)  # bad input: a directory of another user, mode 0755
    said = check_and_start(
        config,
        theirs / "state",
        "--web.listen-address",
        f"127.0.0.1:{free_port()}",
        without_root_rights=True,
    )
    assert (
        said
        == [
            f"mailpulse agent: state_dir {theirs / 'state'}: cannot write in {theirs}:"
            " Permission denied"
        ]
        * 2
    )
    assert list(theirs.iterdir()) == []


def test_a_state_file_the_agent_cannot_write_is_named_and_left_alone(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    from mailpulse.state import State

    s = State(state / "state.sqlite")
    s.inc("mailpulse_log_lines_total", (), 42)
    s.commit()
    s.close()
    before = (state / "state.sqlite").read_bytes()
    # Bad input: the state file belongs to another user (a run as root left it behind), 0644.
    for f in state.iterdir():
        os.chown(f, 65534, 65534)
    said = check_and_start(
        config, state, "--web.listen-address", f"127.0.0.1:{free_port()}", without_root_rights=True
    )
    assert (
        said
        == [
            f"mailpulse agent: state_dir {state}: cannot write {state / 'state.sqlite'}:"
            " Permission denied"
        ]
        * 2
    )
    # Not taken for a corrupt file and moved aside: the counters are still there.
    assert sorted(p.name for p in state.iterdir()) == ["state.sqlite"]
    assert (state / "state.sqlite").read_bytes() == before


def make_key_pair(dir: Path, passphrase: str | None = None) -> tuple[Path, Path]:
    require_programs("openssl")
    cert, key = dir / "cert.pem", dir / "key.pem"
    protect = ["-passout", f"pass:{passphrase}"] if passphrase else ["-nodes"]
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-days", "2", "-subj", "/CN=n1"]
        + ["-keyout", str(key), "-out", str(cert), *protect],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_a_tls_key_the_agent_cannot_read_is_named(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    cert, key = make_key_pair(tmp_path)
    os.chown(key, 65534, 65534)  # bad input: a key readable by another user only (0600)
    key.chmod(0o600)
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n")
    r = agent(
        "--config", str(config), "--web.config.file", str(web), "--check-config",
        without_root_rights=True,
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr == (
        f"mailpulse agent: {web}: tls_server_config.key_file: cannot read {key}:"
        " Permission denied\n"
    )


def test_an_encrypted_tls_key_is_named_and_never_prompts(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    cert, key = make_key_pair(tmp_path, passphrase="hunter2")  # bad input: a protected key
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n")
    r = agent("--config", str(config), "--web.config.file", str(web), "--check-config")
    assert r.returncode == 2
    assert r.stderr == (
        f"mailpulse agent: {web}: tls_server_config.key_file: the key is encrypted; the agent"
        " needs it without a passphrase (readable by its user only)\n"
    )


def test_a_web_config_not_in_utf8_is_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    web = tmp_path / "web.yml"
    web.write_bytes(b"basic_auth_users:\n  ren\xe9: x\n")  # bad input: a Latin-1 user name
    r = agent("--config", str(config), "--web.config.file", str(web), "--check-config")
    assert r.returncode == 2
    assert r.stderr == (
        f"mailpulse agent: {web}: line 2: not UTF-8 (byte 0xe9 after 'ren');"
        " save the file as UTF-8\n"
    )


def test_check_config_passes_a_startable_node_and_starts_nothing(tmp_path: Path) -> None:
    port, check_port = free_port(), free_port()
    config = write_config(tmp_path, f"agent_check:\n  listen: 127.0.0.1:{check_port}\n")
    state = tmp_path / "new" / "state"
    r = agent("--config", str(config), "--state-dir", str(state), "--check-config")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.startswith(f"config ok: {config}\n")
    assert not (tmp_path / "new").exists()  # nothing created
    for p in (port, check_port):  # nothing left bound
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_a_port_taken_after_the_check_is_the_same_one_line(tmp_path: Path) -> None:
    from mailpulse.agent import Agent, StartupError

    port = free_port()
    cfg = load_config(write_config(tmp_path, f"listen: 127.0.0.1:{port}\n"))
    with socket.socket() as holder:  # bad input: taken between the check and the start
        holder.bind(("127.0.0.1", port))
        holder.listen()
        with pytest.raises(StartupError) as e:
            Agent(cfg.__class__(**{**cfg.__dict__, "state_dir": tmp_path / "state"}),
                  instances_to_watch(cfg), [tmp_path / "mail.log"])  # fmt: skip
    assert str(e.value).startswith(f"listen 127.0.0.1:{port}: address already in use by pid")


# -- the agent-check port under a burst -------------------------------------------------------
def connected(socks: list[socket.socket], deadline: float) -> int:
    """How many of these non-blocking connects completed their handshake by the deadline."""
    pending, done = list(socks), 0
    while pending and time.monotonic() < deadline:
        _, writable, _ = select.select([], pending, [], 0.2)
        for s in writable:
            pending.remove(s)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                done += 1
    return done


def read_answer(s: socket.socket) -> bytes:
    s.settimeout(60)  # only a hang waits this long
    data = b""
    while chunk := s.recv(100):
        data += chunk
    return data


def test_fifty_checks_at_once_each_get_their_answer(tmp_path: Path) -> None:
    port, check_port = free_port(), free_port()
    config = write_config(
        tmp_path,
        f"listen: 127.0.0.1:{port}\n"
        # The load of a shared test machine must not decide the weight here.
        f"agent_check:\n  listen: 127.0.0.1:{check_port}\n  load_high_per_cpu: 1000000\n",
    )
    proc = AgentProcess(config, tmp_path / "state", port, tmp_path / "agent.log").start()
    assert proc.proc is not None
    burst: list[socket.socket] = []
    slow: list[socket.socket] = []
    try:
        # Bad input: three clients that send and never read nor close hold no one else up.
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", check_port), timeout=60)
            s.sendall(b"hello from a stuck client\n")
            slow.append(s)
        # The agent is stopped while 50 checks arrive at once: all the kernel can do is queue
        # them, so the accept queue alone decides how many are taken (a backlog of 5: 3 of 50).
        os.kill(proc.proc.pid, signal.SIGSTOP)
        try:
            for _ in range(50):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", check_port))
                burst.append(s)
            assert connected(burst, time.monotonic() + 20) == 50
        finally:
            os.kill(proc.proc.pid, signal.SIGCONT)
        for s in burst:
            s.setblocking(True)
        answers = [read_answer(s) for s in burst]
        assert answers == [b"up 100%\n"] * 50
        # The stuck clients had their answer too, and were closed after the short timeout.
        assert [read_answer(s) for s in slow] == [b"up 100%\n"] * 3
    finally:
        for s in burst + slow:
            s.close()
        proc.stop()
