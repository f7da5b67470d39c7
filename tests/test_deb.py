"""The Debian package, on this machine: `make deb` builds it with Debian's tooling, dpkg installs
it, the agent runs from it as the mailpulse user with only what the unit grants, an upgrade keeps
the config and the state, and purge leaves no file of ours behind (dpkg's own list says which)."""

from __future__ import annotations

import grp
import os
import pwd
import re
import shlex
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from lab.postfix import Lab, free_port
from tests.agent_support import scrape, wait_for
from tests.conftest import REPO, require_programs, require_root

pytestmark = [pytest.mark.lab, pytest.mark.slow]

UNIT = Path("/lib/systemd/system/mailpulse-agent.service")
CONFIG = Path("/etc/mailpulse/mailpulse.yml")
STATE = Path("/var/lib/mailpulse")


def run(*argv: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    # From /, so that python3 imports the installed package, not this checkout.
    r = subprocess.run(
        argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900, cwd="/"
    )
    if ok:
        assert r.returncode == 0, f"{argv}: {r.stdout[-3000:]}{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_root("dpkg installs and purges the package")
    require_programs("dpkg-buildpackage", "dh", "systemd-analyze", "setpriv", "runuser", "make")
    out = tmp_path_factory.mktemp("deb")
    run("make", "-s", "-C", str(REPO), "deb", f"DEB_DIR={out}")
    (package,) = out.glob("mailpulse_*.deb")
    return package


@pytest.fixture(scope="module")
def newer_deb(deb: Path) -> Path:
    """The same package one version on, built from make deb's copy of the tree, for a real
    upgrade."""
    tree = deb.parent / "mailpulse"
    changelog = tree / "debian" / "changelog"
    first, rest = changelog.read_text().split("\n", 1)
    version = re.search(r"\((.*?)\)", first).group(1)  # type: ignore[union-attr]
    changelog.write_text(first.replace(f"({version})", f"({version}+upgrade1)") + "\n" + rest)
    env = {**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    subprocess.run(
        ["dpkg-buildpackage", "--build=binary", "--no-sign"],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
        timeout=900,
    )
    (package,) = deb.parent.glob("mailpulse_*+upgrade1_*.deb")
    return package


def sources(port: int) -> dict[tuple[str, ...], float]:
    return {
        tuple(sorted(dict(labels).values())): v
        for (name, labels), v in scrape(port).items()
        if name == "mailpulse_source_up"
    }


def all_sources_up(port: int) -> bool:
    up = sources(port)
    return len(up) >= 3 and all(v == 1 for v in up.values())  # host, log, queue


def unit_settings() -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in UNIT.read_text().splitlines() if re.match(r"^\w+=", line)
    )


def as_the_unit(*argv: str, with_capabilities: bool = True) -> list[str]:
    """argv run as the unit runs ExecStart: its user and groups, its capabilities only (or
    none), no new privileges."""
    unit = unit_settings()
    caps = ",".join(
        "+" + c.removeprefix("CAP_").lower() for c in unit["AmbientCapabilities"].split()
    )
    if not with_capabilities:
        caps = ""
    user = unit["User"]
    cmd = ["setpriv", f"--reuid={user}", f"--regid={unit['Group']}", "--init-groups"]
    cmd += [f"--bounding-set=-all{',' + caps if caps else ''}"]
    if caps:
        cmd += [f"--inh-caps={caps}", f"--ambient-caps={caps}"]
    return [*cmd, "--no-new-privs", "--", *argv]


def test_the_package_installs_runs_upgrades_and_purges_clean(
    deb: Path, newer_deb: Path, lab: Lab
) -> None:
    run("dpkg", "-i", "--force-confold", str(deb))
    try:
        listed = run("dpkg-query", "-L", "mailpulse").stdout.split("\n")
        ours = [Path(p) for p in listed if p.strip() and p != "/."]
        conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", "mailpulse").stdout
        assert str(CONFIG) in conffiles  # dpkg keeps the operator's edits on upgrade
        # Every setting commented at its default: uncommented, nothing would change.
        assert all(not line or line.startswith("#") for line in CONFIG.read_text().splitlines())

        # The system user, in the groups that read the log and the journal.
        user = pwd.getpwnam("mailpulse")
        groups = {g.gr_name for g in grp.getgrall() if "mailpulse" in g.gr_mem}
        assert {"adm", "systemd-journal"} <= groups
        assert user.pw_dir == str(STATE) and user.pw_uid < 1000  # a system user
        st = STATE.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (user.pw_uid, 0o750)
        st = CONFIG.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, user.pw_gid, 0o640)

        # The C block scanner was built for the target's python3.
        run("/usr/bin/python3", "-c", "import mailpulse.collectors._fastlog")
        assert run("systemd-analyze", "verify", str(UNIT)).stderr == ""
        unit = unit_settings()
        assert unit["ExecStart"].startswith("/usr/bin/mailpulse agent --config " + str(CONFIG))
        # Remove stops the service before its files go.
        prerm = Path("/var/lib/dpkg/info/mailpulse.prerm").read_text()
        assert "deb-systemd-invoke stop 'mailpulse-agent.service'" in prerm

        # The operator points the config at this node's Postfix (the lab's instance).
        port = free_port()
        CONFIG.write_text(
            CONFIG.read_text() + f"listen: 127.0.0.1:{port}\npostfix:\n  config_dirs: [{lab.etc}]\n"
        )
        r = run(*as_the_unit("/usr/bin/mailpulse", "agent", "--check-config"))
        assert f"config ok: {CONFIG}" in r.stdout
        assert f"instance postfix: {lab.etc}, queue {lab.spool}" in r.stdout
        assert f"logs: {lab.maillog}" in r.stdout
        # With the unit's one capability the spool's files are read; without it, they are not.
        spool = ["/usr/bin/mailpulse", "queue", "-c", str(lab.etc), "--source", "spool"]
        r = run(*as_the_unit(*spool))
        assert "(read from spool)" in r.stdout and "unreadable" not in r.stdout
        r = run(*as_the_unit(*spool, with_capabilities=False))
        assert "unreadable" in r.stdout

        # The unit's own command, as the unit runs it, reading the log as Debian keeps
        # /var/log/mail.log (root:adm 0640) and the spool with its one capability.
        os.chown(lab.maillog, 0, grp.getgrnam("adm").gr_gid)
        os.chmod(lab.maillog, 0o640)
        agent = subprocess.Popen(
            as_the_unit(*shlex.split(unit["ExecStart"])),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd="/",
        )
        try:
            wait_for(lambda: all_sources_up(port), 60, "every source up", lambda: sources(port))
            lines = [v for (n, _), v in scrape(port).items() if n == "mailpulse_log_lines_total"]
            assert lines and lines[0] > 0  # the lab Postfix's own log lines, read
        finally:
            agent.terminate()
            _, err = agent.communicate(timeout=60)
        assert agent.returncode == 0, err
        assert b"Traceback" not in err

        # Upgrade to the next version: the edited config and the state stay.
        state = (STATE / "state.sqlite").read_bytes()
        edited = CONFIG.read_text()
        run("dpkg", "-i", "--force-confold", str(newer_deb))
        assert "+upgrade1" in run("dpkg-query", "-W", "-f=${Version}", "mailpulse").stdout
        assert CONFIG.read_text() == edited
        assert (STATE / "state.sqlite").read_bytes() == state
        st = CONFIG.stat()
        assert (st.st_gid, st.st_mode & 0o777) == (user.pw_gid, 0o640)

        # Remove keeps the config, the state and the user (purge is for that).
        run("dpkg", "-r", "mailpulse")
        assert CONFIG.exists() and STATE.exists()
        pwd.getpwnam("mailpulse")
    finally:
        run("dpkg", "-P", "mailpulse")

    left = []
    for path in ours:
        if os.path.lexists(path):
            # Directories like /etc or /usr/share/doc belong to other packages too.
            owners = run("dpkg-query", "-S", str(path), ok=False)
            if not (path.is_dir() and owners.returncode == 0):
                left.append(path)
    assert left == []
    assert not CONFIG.parent.exists() and not STATE.exists()
    with pytest.raises(KeyError):
        pwd.getpwnam("mailpulse")
    with pytest.raises(KeyError):
        grp.getgrnam("mailpulse")


SHIPPED_CONFIG = REPO / "debian" / "mailpulse.yml"
SETTING_LINE = re.compile(r"^#( *)(\w+):(.*)$")


def test_the_shipped_config_names_every_setting_at_its_default() -> None:
    from mailpulse.config import Config, _keys, parse_config

    text = SHIPPED_CONFIG.read_text()
    named, uncommented, section = set(), [], ""
    for line in text.splitlines():
        m = SETTING_LINE.match(line)
        if not m:
            continue
        indent, key, rest = m.groups()
        section = key if not indent else section
        named.add(f"{section}.{key}" if indent else key)
        if "(example)" not in rest:
            uncommented.append(line[1:])
    want = set()
    for name, f in _keys(Config).items():
        record = f.metadata.get("section")
        # A reserved section (no key yet) is said in words only.
        want |= {f"{name}.{k}" for k in _keys(record)} if record else {name}
    assert want - named == set()  # a setting the file does not name
    # Uncommented (but for the examples), the file says what the defaults say.
    data = yaml.safe_load("\n".join(uncommented))
    # A section whose only key is an example (postfix:) is left empty by uncommenting.
    got = parse_config({k: v for k, v in data.items() if v is not None})
    assert replace(got, source=None, other={}) == Config()


def test_pip_builds_without_a_warning_from_setuptools(tmp_path: Path) -> None:
    """`pip install` as the README says: no warning about the unit's folder not being a
    package, nor about an experimental ext-modules table, on every install."""

    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    said = r.stdout + r.stderr
    (wheel,) = tmp_path.glob("mailpulse-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("mailpulse/collectors/_fastlog.") for n in names)  # the C scanner
    assert "mailpulse/systemd/mailpulse-agent.service" in names
    for warning in ("SetuptoolsWarning", "SetuptoolsDeprecationWarning", "experimental"):
        assert warning not in said
    assert "absent from the `packages`" not in said
