"""The command line of DESIGN.md. Each subcommand lives with the module that does the work."""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mailpulse import __version__
from mailpulse.exits import MEANINGS, USAGE

Handler = Callable[[argparse.Namespace], int]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the YAML config file (default /etc/mailpulse/mailpulse.yml when it exists, "
        "else every setting at its default)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="where SQLite, checkpoints and snapshots live (default: the config's state_dir, "
        "/var/lib/mailpulse)",
    )


def _json(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"one JSON object per {what}")


def _bounce_parse(args: argparse.Namespace) -> int:
    from mailpulse.bounce.cli import run_parse

    return run_parse(args)


def _agent(args: argparse.Namespace) -> int:
    from mailpulse.agent import main as agent_main

    return agent_main(args)


def _logs(name: str) -> Handler:
    def run(args: argparse.Namespace) -> int:
        from mailpulse import report

        return report.run_parse(args) if name == "parse" else report.run_report(args)

    return run


def _queue(args: argparse.Namespace) -> int:
    from mailpulse.collectors.queue_report import main as queue_main

    return queue_main(args)




def _snmp(args: argparse.Namespace) -> int:
    from mailpulse.exporters import snmp

    if args.mode == "pass-persist":
        return snmp.run_pass_persist(args)
    if args.mode == "oids":
        return snmp.run_oids(args)
    from mailpulse.exporters.extend import main as extend_main

    options = [(o, v) for o, v in (("--state-dir", args.state_dir), ("--config", args.config)) if v]
    return extend_main([args.name or "", *(str(x) for pair in options for x in pair)])


def _graph(args: argparse.Namespace) -> int:
    from mailpulse.exporters.rrd import run_graph

    return run_graph(args)


def _postfix_check(args: argparse.Namespace) -> int:
    from mailpulse.profile import run_check

    return run_check(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mailpulse",
        description="Watch Postfix mass-mailing nodes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes:\n"
        + "\n".join(f"  {code:>2}  {meaning}" for code, meaning in MEANINGS.items()),
    )
    p.add_argument("--version", action="version", version=f"mailpulse {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    agent = sub.add_parser(
        "agent",
        help="the node agent: log, queue and host -> /metrics",
        description="Follow the mail log, sample the queue and the host, serve /metrics.",
    )
    _common(agent)
    agent.add_argument(
        "--check-config",
        action="store_true",
        help="say what would be watched (instances, queues, logs) and whether it can start "
        "(ports free, state directory writable), then exit without starting",
    )
    agent.add_argument(
        "--web.config.file",
        dest="web_config_file",
        type=Path,
        metavar="FILE",
        help="TLS and basic auth for /metrics (exporter-toolkit format); overrides the "
        "config's web_config_file",
    )
    agent.add_argument(
        "--web.listen-address",
        dest="listen",
        metavar="HOST:PORT",
        help="where /metrics listens; overrides the config's listen (127.0.0.1:9154)",
    )
    agent.set_defaults(run=_agent)

    logs = sub.add_parser("logs", help="parse and summarise Postfix logs")
    logs_sub = logs.add_subparsers(dest="logs_command", required=True, metavar="ACTION")
    for name, what in (
        ("parse", "one line per event of the log"),
        ("report", "a pflogsumm-style summary: status, reason, domain group, node"),
    ):
        lp = logs_sub.add_parser(name, help=what, description=what)
        _common(lp)
        lp.add_argument(
            "files",
            nargs="*",
            type=Path,
            metavar="FILE",
            help="log files, plain or .gz, in order (none or -: standard input)",
        )
        _json(lp, "event" if name == "parse" else "report")
        lp.set_defaults(run=_logs(name))

    queue = sub.add_parser(
        "queue",
        help="qshape-style view of the queue",
        description="Messages by domain and age per queue, depth, bytes and why deferred "
        "mail waits, for every instance the config watches.",
    )
    _common(queue)
    _json(queue, "instance")
    queue.add_argument(
        "-c",
        "--postfix-config",
        type=Path,
        metavar="DIR",
        help="one Postfix config directory (as postfix -c) instead of the config's instances",
    )
    queue.add_argument(
        "--source",
        choices=["auto", "spool", "showq"],
        default="auto",
        help="read queue files from the spool, ask Postfix's showq, or auto: the spool when "
        "this user may read it (default)",
    )
    queue.add_argument("--sender", action="store_true", help="sender domains, as qshape -s")
    queue.set_defaults(run=_queue)

    bounce = sub.add_parser("bounce", help="read bounce emails")
    bounce_sub = bounce.add_subparsers(dest="bounce_command", required=True, metavar="ACTION")
    what = "one line per failed recipient of bounce mails: reason, scope, hard, VERP user"
    bp = bounce_sub.add_parser("parse", help=what, description=what)
    _common(bp)
    bp.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help=".eml files, directories, Maildirs, mbox files, - for one message on stdin",
    )
    _json(bp, "recipient")
    bp.set_defaults(run=_bounce_parse)

    what = "compare this node's Postfix settings with a shipped profile"
    pf = sub.add_parser("postfix", help=what, description=what)
    pf_sub = pf.add_subparsers(dest="postfix_command", required=True, metavar="ACTION")
    what = (
        "list each setting: the node's value, the profile's and why it matters; "
        "exit 0 as the profile, 1 settings differ, 2 could not check"
    )
    pc = pf_sub.add_parser("check", help=what, description=what)
    _common(pc)
    pc.add_argument(
        "--profile",
        choices=["bulk", "transactional"],
        help="the profile to compare with (default: the config's role)",
    )
    pc.add_argument(
        "-c",
        "--postfix-config",
        type=Path,
        metavar="DIR",
        help="check only this Postfix config directory (default: every instance watched)",
    )
    _json(pc, "setting")
    pc.set_defaults(run=_postfix_check)

    from mailpulse.bounce.blacklist_cli import add_parser as add_blacklist

    add_blacklist(sub, _common)

    snmp = sub.add_parser(
        "snmp",
        help="values for net-snmp: extend NAME, pass-persist, oids",
        description="Values for net-snmp's extend and pass_persist, read from the agent's "
        "snapshot; `oids` lists every OID.",
    )
    _common(snmp)
    snmp.add_argument(
        "mode", choices=["extend", "pass-persist", "oids"], help="how snmpd asks for values"
    )
    snmp.add_argument("name", nargs="?", help="extend: the value to print")
    snmp.set_defaults(run=_snmp)

    graph = sub.add_parser(
        "graph",
        help="draw PNG graphs from the agent's RRD archives",
        description="Draw day, week, month and year PNG graphs from the agent's RRD archives.",
    )
    _common(graph)
    graph.add_argument("--out", type=Path, metavar="DIR", help="where the PNG graphs go")
    graph.set_defaults(run=_graph)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["snmp", "extend"]:
        # snmpd runs this on every poll: straight to the one module it needs, nothing else.
        from mailpulse.exporters.extend import main as extend_main

        return extend_main(argv[2:])
    args = build_parser().parse_args(argv)
    run: Handler = args.run
    # Addresses read from queue files keep their bytes that are not UTF-8 (surrogateescape):
    # printed, they are those bytes again, as qshape prints them, whatever the locale.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="surrogateescape")
    try:
        return run(args)
    except BrokenPipeError:
        # The reader went away (`| head`): not an error. Point stdout at /dev/null so the
        # interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:
        # Imported only on the way out, so a command that reads no config file never loads it.
        from mailpulse.config import ConfigError

        if not isinstance(e, ConfigError):
            raise
        print(f"mailpulse: {e}", file=sys.stderr)  # one line naming the file and the key
        return USAGE
