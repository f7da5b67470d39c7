"""A real HAProxy in front of two lab nodes, weighing them through the agents' agent-check port:
the node whose receivers block its IP is drained, the other keeps a weight from its queue."""

from __future__ import annotations

import csv
import io
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from lab.campaign import make_plan, run_campaign
from lab.postfix import Lab, free_port
from tests.agent_support import AgentProcess, scrape, wait_for, write_agent_config
from tests.conftest import require_programs


def haproxy_stat(sock: Path) -> dict[str, dict[str, str]]:
    """server name -> its row of `show stat`, read from HAProxy's own admin socket."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(sock))
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    text = data.decode().lstrip("# ")
    return {
        row["svname"]: row
        for row in csv.DictReader(io.StringIO(text))
        if row["pxname"] == "mailout" and row["svname"] not in ("BACKEND", "FRONTEND")
    }


def agent_answer(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        return s.recv(100).decode().strip()


@pytest.mark.lab
@pytest.mark.slow
def test_haproxy_drains_the_blocked_node_and_weighs_the_other(
    make_lab: Callable[..., Lab], tmp_path: Path
) -> None:
    require_programs("haproxy")
    blocked_node = make_lab(node="bulk1", mx_base_ip=10)
    healthy_node = make_lab(node="bulk2", mx_base_ip=40)
    agents = []
    check_ports, metric_ports = {}, {}
    # The load of a shared test machine must not decide weights here: its limit is set far away.
    common = "  load_high_per_cpu: 1000000\n  growth_high_per_min: 1000000\n"
    # The first node's campaign, planned ahead: the remote MX refuses every `dnsbl` recipient
    # with Spamhaus's 554 5.7.1, which an operator calls "blocked".
    planned = make_plan(300, bounce_domain=blocked_node.bounce_domain, seed=31)
    blocked = sum(1 for p in planned if p.kind == "dnsbl")
    assert blocked == 10  # the lab's seeded plan; a change of the plan shows here
    settings = {
        # The bar for "blocked" on the first node is exactly its refusals: it drains only once
        # the agent has counted every one of them (one fewer, and it stays up).
        "bulk1": f"  block_min_failures: {blocked}\n  block_share: 0.01\n  queue_high: 100000\n",
        # The second never drains (no reason of its lists occurs), its weight follows its queue.
        "bulk2": "  block_reasons: [virusdetected]\n  queue_high: 100\n",
    }
    try:
        for lab in (blocked_node, healthy_node):
            port, check_ports[lab.node] = free_port(), free_port()
            metric_ports[lab.node] = port
            config = write_agent_config(
                tmp_path / f"{lab.node}.yaml",
                [lab],
                port,
                f"agent_check:\n  listen: 127.0.0.1:{check_ports[lab.node]}\n"
                + common
                + settings[lab.node],
            )
            agents.append(
                AgentProcess(
                    config, tmp_path / f"state-{lab.node}", port, tmp_path / f"{lab.node}.log"
                ).start()
            )
        assert agent_answer(check_ports["bulk1"]) == "up 100%"

        sock = tmp_path / "haproxy.sock"
        cfg = tmp_path / "haproxy.cfg"
        front = free_port()
        cfg.write_text(
            f"global\n  stats socket {sock} mode 600 level admin\n"
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n"
            "  timeout server 30s\n"
            f"frontend smtp\n  bind 127.0.0.1:{front}\n  default_backend mailout\n"
            "backend mailout\n  balance roundrobin\n"
            + "".join(
                f"  server {lab.node} 127.0.0.1:{lab.smtp_port} weight 100 check inter 1s"
                f" agent-check agent-port {check_ports[lab.node]} agent-inter 300ms\n"
                for lab in (blocked_node, healthy_node)
            )
        )
        subprocess.run(["haproxy", "-c", "-f", str(cfg)], check=True, capture_output=True)
        haproxy = subprocess.Popen(
            ["haproxy", "-db", "-f", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "haproxy.log").open("wb"),
        )
        try:
            wait_for(lambda: sock.exists() and len(haproxy_stat(sock)) == 2, 30, "HAProxy")
            wait_for(
                lambda: all(r["weight"] == "100" for r in haproxy_stat(sock).values()),
                30,
                "both nodes at full weight",
            )

            plan, _ = run_campaign(blocked_node, 300, "blocked", seed=31)
            assert plan == planned
            wait_for(
                lambda: haproxy_stat(sock)["bulk1"]["status"].startswith("DRAIN"),
                60,
                "HAProxy to drain the blocked node",
                lambda: haproxy_stat(sock)["bulk1"],
            )
            counted = sum(
                v
                for (name, labels), v in scrape(metric_ports["bulk1"]).items()
                if name == "mailpulse_deliveries_total" and ("reason", "blocked") in labels
            )
            assert counted == blocked

            plan2, _ = run_campaign(healthy_node, 150, "healthy", seed=32)
            assert not any(p.reason == "virusdetected" for p in plan2)
            waiting = sum(
                healthy_node.queue_files(q) for q in ("maildrop", "incoming", "active", "deferred")
            )
            assert 0 < waiting < 100
            want = str(100 - waiting)  # queue_high 100: one point of weight per waiting message
            wait_for(
                lambda: haproxy_stat(sock)["bulk2"]["weight"] == want,
                60,
                f"HAProxy to weigh the healthy node {want}",
                lambda: haproxy_stat(sock)["bulk2"],
            )
            assert haproxy_stat(sock)["bulk2"]["status"] == "UP"
            assert haproxy_stat(sock)["bulk1"]["status"].startswith("DRAIN")
        finally:
            haproxy.terminate()
            haproxy.wait(30)
    finally:
        for a in agents:
            a.stop()
