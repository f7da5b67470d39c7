"""A full Cacti-style SNMP poll of one node, next to the LibreNMS-style poll that runs
pflogsumm and qshape on every poll.

    python -m bench.snmp [--messages 2000] [--log-copies 20] [--polls 10]   (as root)

A lab node sends a campaign (deliveries, deferrals, bounces); its log is then repeated
`--log-copies` times into one file, so the log read on every poll is a busy node's day rather
than a few seconds of it, and the mailpulse agent follows that file and the lab's queue. A
private snmpd runs the shipped snmpd.conf snippet.

Timed, each `--polls` times (the median counts), every one a whole poll of the node:
- mailpulse, as Cacti's cmd.php polls: one SNMP get per data source, every OID any shipped
  template reads, from one client session (easysnmp);
- mailpulse, as spine polls: the same OIDs, 10 to a request; and in one `snmpget` process;
- `mailpulse snmp extend NAME` run as snmpd runs it (a process per graph), beside the bare
  start of the same Python interpreter (`python -c pass`), most of what it costs;
- Cacti itself, when it is installed: its cmd.php polling a device on "Postfix mail node"
  (a private Cacti on a private MariaDB), as a whole process, the PHP start included;
- LibreNMS-style: `pflogsumm` over the log file, and `qshape` of the incoming, active and
  deferred queues, as its postfix application script does on every poll.
The target for ours is a full poll under 200 ms, and an extend under 100 ms.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lab.campaign import run_campaign  # noqa: E402
from lab.postfix import Lab, free_port, wait_until  # noqa: E402
from lab.snmpd import COMMUNITY, Snmpd, mailpulse_command  # noqa: E402

SNIPPET = REPO / "cacti_templates" / "snmpd.conf.d" / "mailpulse.conf"
OID_LINE = re.compile(r"^#\s+(\.[\d.]+)\s+(\.[\d.]+)\s+(\w+) (\S+)$", re.M)


def median_s(run: Callable[[], object], times: int) -> float:
    spent = []
    for _ in range(times):
        t = time.perf_counter()
        run()
        spent.append(time.perf_counter() - t)
    return statistics.median(spent)


CACTI_CLI = "/usr/share/cacti/cli/import_template.php"


def real_cacti(root: Path, port: int) -> Callable[[], object]:
    """A private Cacti with the device template and a device on this snmpd: its poll."""
    from lab.cacti import DATABASE, Cacti

    cacti = Cacti(root / "cacti").start()
    cacti.import_template(REPO / "cacti_templates" / "cacti_host_postfix_mail_node.xml")
    template = cacti.sql("SELECT id FROM host_template", DATABASE).strip()
    cacti.php(
        "cli/add_device.php", "--description=bench1", "--ip=127.0.0.1",
        f"--template={template}", "--version=2", f"--community={COMMUNITY}",
        f"--port={port}", "--avail=none",
    )  # fmt: skip
    host = cacti.sql("SELECT id FROM host", DATABASE).strip()
    items = cacti.sql("SELECT COUNT(*) FROM poller_item", DATABASE).strip()
    print(f"Cacti: device {host} with {items} data sources", flush=True)
    CLEANUP.append(cacti.stop)

    def poll() -> None:
        r = cacti.php("site/cmd.php", "--poller=1", f"--first={host}", f"--last={host}")
        if r.returncode:
            raise SystemExit(f"bench: Cacti's poll failed: {r.stdout}{r.stderr}")

    poll()
    polled = cacti.sql("SELECT COUNT(DISTINCT local_data_id) FROM poller_output", DATABASE)
    if polled.strip() != items:
        raise SystemExit(f"bench: Cacti polled {polled.strip()} of its {items} data sources")
    return poll


CLEANUP: list[Callable[[], object]] = []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--log-copies", type=int, default=20)
    ap.add_argument("--polls", type=int, default=10)
    args = ap.parse_args()
    for prog in ("postfix", "snmpd", "snmpget", "pflogsumm", "qshape"):
        if shutil.which(prog) is None:
            print(f"bench: {prog} is not installed (make deps)", file=sys.stderr)
            return 2
    import easysnmp

    root = Path(tempfile.mkdtemp(prefix="mailpulse-bench-snmp-"))
    os.chmod(root, 0o755)
    lab = Lab(root / "lab", smtp_port=free_port(), mx_port=free_port(), node="bench1")
    agent: subprocess.Popen[bytes] | None = None
    snmpd: Snmpd | None = None
    try:
        lab.start()
        print(f"campaign of {args.messages} ...", flush=True)
        run_campaign(lab, args.messages, "bench", seed=7)
        day = root / "mail.log"
        one = lab.maillog.read_bytes()
        day.write_bytes(one * args.log_copies)
        lines = day.read_bytes().count(b"\n")
        print(f"log: {lines} lines, {day.stat().st_size >> 20} MiB", flush=True)

        state = root / "state"
        port = free_port()
        cfg = root / "mailpulse.yaml"
        cfg.write_text(
            f"node: bench1\nlisten: 127.0.0.1:{port}\npostfix:\n  config_dirs: [{lab.etc}]\n"
            f"logs:\n  files: [{day}]\nsnmp:\n  snapshot_interval: 5\n"
        )
        agent = subprocess.Popen(
            [sys.executable, "-m", "mailpulse", "agent", "--config", str(cfg)]
            + ["--state-dir", str(state)],
            stdout=subprocess.DEVNULL,
            stderr=(root / "agent.log").open("wb"),
        )
        wait_until(lambda: (state / "snapshot.json").exists(), 120, "the first snapshot")
        snmpd = Snmpd(root / "snmpd", state).start()

        listed = OID_LINE.findall(SNIPPET.read_text())
        oids = [oid for oid, _, _, _ in listed]
        session = easysnmp.Session(
            hostname=f"127.0.0.1:{snmpd.port}", community=COMMUNITY, version=2,
            timeout=5, retries=0, use_numeric=True,
        )  # fmt: skip
        target = f"127.0.0.1:{snmpd.port}"

        def cmd_php() -> None:
            for oid in oids:
                if session.get(oid).value in ("NOSUCHOBJECT", "NOSUCHINSTANCE"):
                    raise SystemExit(f"bench: {oid} unanswered")

        def spine() -> None:
            for i in range(0, len(oids), 10):
                session.get(oids[i : i + 10])

        def snmpget() -> None:
            subprocess.run(
                ["snmpget", "-v2c", "-c", COMMUNITY, "-On", "-Oq", target, *oids],
                check=True, capture_output=True, env={**os.environ, "MIBS": ""},
            )  # fmt: skip

        graphs = sorted({g for _, _, g, _ in listed})
        command = mailpulse_command()

        def extend_one() -> None:
            subprocess.run(
                [command, "snmp", "extend", graphs[0], "--state-dir", str(state)],
                check=True, capture_output=True,
            )  # fmt: skip

        def interpreter() -> None:
            subprocess.run([sys.executable, "-c", "pass"], check=True, capture_output=True)

        def librenms() -> None:
            subprocess.run(["pflogsumm", str(day)], check=True, capture_output=True)
            for queue in ("incoming", "active", "deferred"):
                subprocess.run(
                    ["qshape", "-c", str(lab.etc), queue], check=True, capture_output=True
                )

        cmd_php()  # warm: snmpd starts pass_persist on the first request
        cacti_poll = real_cacti(root, snmpd.port) if Path(CACTI_CLI).exists() else None
        results = {
            f"mailpulse, cmd.php-style ({len(oids)} gets)": median_s(cmd_php, args.polls),
            "mailpulse, spine-style (10 OIDs a request)": median_s(spine, args.polls),
            "mailpulse, one snmpget process, every OID": median_s(snmpget, args.polls),
            "mailpulse snmp extend (one graph)": median_s(extend_one, args.polls * 2),
            "  (python -c pass, the interpreter's start)": median_s(interpreter, args.polls * 2),
            "LibreNMS-style: pflogsumm + qshape x3": median_s(librenms, args.polls),
        }
        if cacti_poll is not None:
            results["Cacti's own cmd.php, the whole device"] = median_s(cacti_poll, args.polls)
        print()
        for name, seconds in results.items():
            print(f"{name:48s} {seconds * 1000:9.1f} ms")
        base = results["LibreNMS-style: pflogsumm + qshape x3"]
        full = results[f"mailpulse, cmd.php-style ({len(oids)} gets)"]
        print()
        print(f"LibreNMS-style poll / mailpulse full poll (cmd.php-style): {base / full:.1f}x")
        print(
            f"LibreNMS-style poll / mailpulse full poll (spine-style): "
            f"{base / results['mailpulse, spine-style (10 OIDs a request)']:.1f}x"
        )
        real = results.get("Cacti's own cmd.php, the whole device")
        if real is not None:
            print(f"LibreNMS-style poll / Cacti's own cmd.php poll of the node: {base / real:.1f}x")
        extend = results["mailpulse snmp extend (one graph)"]
        print(f"full poll under 200 ms: {'yes' if full < 0.2 else 'NO'};"
              f" extend under 100 ms: {'yes' if extend < 0.1 else 'NO'}")  # fmt: skip
        return 0
    finally:
        for stop in CLEANUP:
            stop()
        if snmpd is not None:
            snmpd.stop()
        if agent is not None:
            agent.terminate()
            agent.wait(60)
        lab.destroy()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
