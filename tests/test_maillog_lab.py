"""`mailpulse logs parse --json` against a real Postfix: what the lab planned is what we read.

The ground truth is the campaign plan (status, dsn, reason per recipient) and, for counts, a
regex of this test's own over the raw log; never mailpulse's parser.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from lab.campaign import run_campaign
from lab.postfix import Lab, wait_until
from tests.test_maillog import assert_block_road_equals_general_road, fast_road, general_road


def logs_parse(*files: Path) -> list[dict[str, object]]:
    out = subprocess.run(
        [sys.executable, "-m", "mailpulse", "logs", "parse", "--json", *map(str, files)],
        capture_output=True,
        check=True,
        timeout=300,
    )
    return [json.loads(line) for line in out.stdout.splitlines()]


def last_by_recipient(events: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {str(e["recipient"]): e for e in events}


@pytest.mark.lab
@pytest.mark.slow
def test_campaign_of_5000_parses_to_the_plan(lab: Lab) -> None:
    plan, _ = run_campaign(lab, 5000, "c5000", seed=13)
    events = logs_parse(lab.maillog)
    last = last_by_recipient(events)
    wrong = {
        p.recipient: ((p.status, p.dsn, p.reason), last.get(p.recipient))
        for p in plan
        if p.recipient not in last
        or (last[p.recipient]["status"], last[p.recipient]["dsn"], last[p.recipient]["reason"])
        != (p.status, p.dsn, p.reason)
    }
    assert not wrong, f"{len(wrong)} differ from the plan, e.g. {list(wrong.items())[:3]}"
    # Every VERP sender and reply code came through as well.
    for p in plan:
        e = last[p.recipient]
        assert e["sender"] == p.sender and e["reply_code"] == p.reply_code, (p, e)
        assert e["node"] == lab.node and e["instance"] == lab.instance
    # One event per status= line of the log, counted by this test's own regex.
    raw = Counter(re.findall(rb" status=(sent|deferred|bounced) ", lab.maillog.read_bytes()))
    assert Counter(str(e["status"]).encode() for e in events) == raw
    # The fast road for common lines and the general parser agree on this real log.
    lines = lab.maillog.read_bytes().splitlines(keepends=True)
    assert fast_road(lines) == general_road(lines)
    assert_block_road_equals_general_road(lines)


@pytest.mark.lab
def test_remote_down_counts_error_agent_deferrals(lab: Lab) -> None:
    lab.mx_down()
    plan, _ = run_campaign(lab, 300, "down", seed=5)
    events = logs_parse(lab.maillog)
    last = last_by_recipient(events)
    assert all(
        (last[p.recipient]["status"], last[p.recipient]["reason"]) == ("deferred", "networkerror")
        for p in plan
    )
    text = lab.maillog.read_bytes()
    deferral = rb"postfix/(smtp|error)\[\d+\]: \w+: to=<([^>]+)>,.* status=deferred "
    by_agent = Counter(agent for agent, _ in re.findall(deferral, text))
    # Every planned recipient deferred exactly once, by the smtp agent while it still tried
    # the MX, by the error agent once Postfix held the site down. How many smtp tried first is
    # Postfix's timing; their sum is the plan, and the error agent's share is all but those.
    assert Counter(r.decode() for _, r in re.findall(deferral, text)) == Counter(
        p.recipient for p in plan
    )
    own = len(plan) - by_agent[b"smtp"]
    assert by_agent[b"error"] == own and by_agent[b"smtp"] >= 1
    assert own >= 1, "Postfix never held the site down: no error agent deferral to count"
    suspended = [e for e in events if e["program"] == "error"]
    assert len(suspended) == own
    assert all(
        e["status"] == "deferred" and "delivery temporarily suspended" in str(e["reply_text"])
        for e in suspended
    )
    # The report counts them with the others.
    out = subprocess.run(
        [sys.executable, "-m", "mailpulse", "logs", "report", "--json", str(lab.maillog)],
        capture_output=True,
        check=True,
        timeout=300,
    )
    report = json.loads(out.stdout)
    all_deferred = len(re.findall(rb" status=deferred ", text))
    assert report["status"]["deferred"] == all_deferred
    assert report["reason"]["networkerror"]["deferred"] == all_deferred


@pytest.mark.lab
def test_expired_mail_names_each_recipient_still_deferred(make_lab) -> None:  # type: ignore[no-untyped-def]
    lab = make_lab(main_cf_extra={"maximal_queue_lifetime": "5s", "bounce_queue_lifetime": "5s"})
    plan, _ = run_campaign(lab, 200, "expiry", seed=21)
    deferred = [p for p in plan if p.status == "deferred"]
    assert deferred
    time.sleep(6)
    lab.flush()
    wait_until(
        lambda: lab.queue_files("deferred") == 0 and lab.queue_settled(), 300, "mail to expire"
    )
    text = lab.maillog.read_bytes()
    own = len(re.findall(rb"postfix/qmgr\[\d+\]: \w+: from=<[^>]*>, status=expired, ", text))
    assert own == len(deferred)  # one recipient per message in a campaign
    last = last_by_recipient(logs_parse(lab.maillog))
    for p in deferred:
        e = last[p.recipient]
        assert (e["status"], e["reason"], e["sender"]) == ("expired", "expired", p.sender), e
        assert e["dsn"] == p.dsn and e["extra"] == {"last_reason": p.reason}, e
    for p in plan:
        if p.status != "deferred":
            assert last[p.recipient]["status"] == p.status
