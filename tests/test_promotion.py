"""A busy destination promoted to its own domain_group label keeps every series continuous,
over the real agent's /metrics: its series are first served at 0 while its deliveries still
count in `other`, then count under its name; `other` never falls, nothing is counted twice or
lost, and the promotion holds across a restart."""

from __future__ import annotations

from pathlib import Path

from lab.postfix import free_port
from tests.agent_support import AgentProcess, Series, scrape, spoolless_postfix, wait_for
from tests.conftest import require_programs

LINE = (
    "Nov 28 10:00:{s:02d} mx1 postfix/smtp[4242]: 5B{i:06X}C: to=<user{i}@busy.example>,"
    " relay=mx.busy.example[192.0.2.7]:25, delay=1.2, delays=0.1/0.1/0.5/0.5,"
    " dsn=2.0.0, status=sent (250 2.0.0 OK)\n"
)
PROMOTE_AT = 5  # top_k_min_count


def by_group(samples: dict[Series, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for (name, labels), v in samples.items():
        if name == "mailpulse_deliveries_total":
            group = dict(labels)["domain_group"]
            out[group] = out.get(group, 0) + v
    return out


def test_promotion_is_born_at_zero_then_counts_and_holds_across_a_restart(
    tmp_path: Path,
) -> None:
    require_programs("postconf")
    log = tmp_path / "mail.log"
    log.touch()
    port = free_port()
    config = tmp_path / "mailpulse.yml"
    config.write_text(
        f"node: mx1\nlisten: 127.0.0.1:{port}\ntop_k: 3\ntop_k_min_count: {PROMOTE_AT}\n"
        f"postfix:\n  config_dirs: [{spoolless_postfix(tmp_path)}]\n"
        f"logs:\n  files: [{log}]\n  poll_interval: 0.1\nqueue:\n  interval: 5\n"
    )
    agent = AgentProcess(config, tmp_path / "state", port, tmp_path / "agent.log")
    written = 0
    seen: list[dict[str, float]] = []  # every scrape, in order

    def write(n: int) -> None:
        nonlocal written
        with log.open("a") as f:
            f.writelines(LINE.format(s=i % 60, i=i) for i in range(written, written + n))
        written += n

    def counted_all() -> bool:
        seen.append(by_group(scrape(port)))
        return sum(seen[-1].values()) == written

    agent.start()
    try:
        write(PROMOTE_AT - 1)  # not yet busy enough
        wait_for(counted_all, 30, "the first deliveries")
        assert seen[-1] == {"other": PROMOTE_AT - 1}
        write(1)  # the one that promotes it
        wait_for(counted_all, 30, "the promoting delivery")
        assert seen[-1] == {"other": PROMOTE_AT, "busy.example": 0}  # born at 0
        write(3)
        wait_for(counted_all, 30, "deliveries after the promotion")
        assert seen[-1] == {"other": PROMOTE_AT, "busy.example": 3}
        agent.terminate()
        agent.start()
        write(2)
        wait_for(counted_all, 30, "deliveries after a restart")
        assert seen[-1] == {"other": PROMOTE_AT, "busy.example": 5}  # still promoted
    finally:
        agent.stop()
    # Over every scrape: no series ever fell, and the promoted one first showed as 0.
    for before, after in zip(seen, seen[1:], strict=False):
        assert all(after.get(g, 0) >= v for g, v in before.items()), (before, after)
    first = next(s for s in seen if "busy.example" in s)
    assert first["busy.example"] == 0
