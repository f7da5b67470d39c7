"""The command line of DESIGN.md. Each subcommand lives with the module that does the work."""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mailpulse import __version__

Handler = Callable[[argparse.Namespace], int]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML config file")
    p.add_argument("--state-dir", type=Path, help="where SQLite, checkpoints and snapshots live")


def _not_built(what: str) -> Handler:
    def run(_args: argparse.Namespace) -> int:
        print(f"mailpulse: {what} is not part of this version yet", file=sys.stderr)
        return 2

    return run


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mailpulse", description="Watch Postfix mass-mailing nodes.")
    p.add_argument("--version", action="version", version=f"mailpulse {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    agent = sub.add_parser("agent", help="the node agent")
    _common(agent)
    agent.add_argument("--check-config", action="store_true")
    agent.add_argument("--web.config.file", dest="web_config_file", type=Path)
    agent.add_argument("--web.listen-address", dest="listen", metavar="HOST:PORT")
    agent.set_defaults(run=_agent)

    logs = sub.add_parser("logs", help="parse and summarise Postfix logs")
    logs_sub = logs.add_subparsers(dest="logs_command", required=True)
    for name in ("parse", "report"):
        lp = logs_sub.add_parser(name)
        _common(lp)
        lp.add_argument("files", nargs="*", type=Path)
        lp.add_argument("--json", action="store_true")
        lp.set_defaults(run=_logs(name))

    queue = sub.add_parser("queue", help="qshape-style view of the queue")
    _common(queue)
    queue.add_argument("--json", action="store_true")
    queue.add_argument("-c", "--postfix-config", type=Path, help="Postfix config directory")
    queue.add_argument("--source", choices=["auto", "spool", "showq"], default="auto")
    queue.add_argument("--sender", action="store_true", help="sender domains, as qshape -s")
    queue.set_defaults(run=_queue)

    bounce = sub.add_parser("bounce", help="read bounce emails")
    bounce_sub = bounce.add_subparsers(dest="bounce_command", required=True)
    bp = bounce_sub.add_parser("parse")
    _common(bp)
    bp.add_argument("paths", nargs="+", type=Path)
    bp.add_argument("--json", action="store_true")
    bp.set_defaults(run=_bounce_parse)

    from mailpulse.bounce.blacklist_cli import add_parser as add_blacklist

    add_blacklist(sub, _common)

    snmp = sub.add_parser("snmp", help="net-snmp extend and pass_persist")
    _common(snmp)
    snmp.add_argument("mode", choices=["extend", "pass-persist", "oids"])
    snmp.add_argument("name", nargs="?")
    snmp.set_defaults(run=_not_built("snmp"))

    graph = sub.add_parser("graph", help="RRD graphs")
    _common(graph)
    graph.add_argument("--out", type=Path)
    graph.set_defaults(run=_not_built("graph"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
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
        return 2
