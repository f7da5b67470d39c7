"""The lab's own Postfix DSNs, read back by mailpulse: every bounced recipient of the plan comes
out with its user id, address, status and reason; nothing comes out for the others."""

from __future__ import annotations

from pathlib import Path

import pytest
from mailpulse.bounce.intake import VerpSettings, analyse, process_maildir, read_paths
from mailpulse.bounce.verp import make_address

from lab.campaign import inject, make_plan, run_campaign, wait_settled
from lab.postfix import Lab

KEY = b"lab-verp-key"


def parsed(maildir: Path, verp: VerpSettings) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for item in read_paths([maildir]):
        for r in analyse(item, verp):
            assert r["recipient"] not in out, f"{r['recipient']} reported twice"
            out[str(r["recipient"])] = r
    return out


@pytest.mark.lab
def test_lab_dsns_match_the_plan(lab: Lab) -> None:
    plan, _ = run_campaign(lab, 400, "dsn", seed=17)
    got = parsed(lab.maildir, VerpSettings())
    bounced = [p for p in plan if p.status == "bounced"]
    assert bounced
    for p in bounced:
        r = got.get(p.recipient)
        assert r is not None, f"no record for {p}"
        want = (p.user_id, p.recipient, p.dsn, p.reply_code, p.reason, "failed", "bounce")
        have = (r["user_id"], r["recipient"], r["status"], r["reply_code"], r["reason"])
        assert have + (r["action"], r["kind"]) == want, p
        assert r["verp_verified"] is False  # unsigned addresses never verify
        assert r["hard"] is (p.reason == "userunknown")
    assert set(got) == {p.recipient for p in bounced}


@pytest.mark.lab
def test_lab_signed_verp_verifies_and_maildir_is_drained_once(lab: Lab) -> None:
    plan = make_plan(
        150,
        bounce_domain=lab.bounce_domain,
        seed=23,
        sender_for=lambda uid, domain: make_address(uid, domain, KEY),
    )
    bounced = [p for p in plan if p.status == "bounced"]
    inject(lab, plan, "signed")
    wait_settled(lab, len(bounced))

    seen: dict[str, list[dict[str, object]]] = {}
    n = process_maildir(
        lab.maildir, lambda item, recs: seen.setdefault(item.key, recs), VerpSettings(KEY)
    )
    assert n == len(bounced) == len(seen)
    assert not any((lab.maildir / "new").iterdir())  # every message moved out once processed
    records = {str(r["recipient"]): r for recs in seen.values() for r in recs}
    for p in bounced:
        r = records[p.recipient]
        assert (r["user_id"], r["verp_verified"], r["status"]) == (p.user_id, True, p.dsn)
    # A second run finds nothing left to do.
    assert process_maildir(lab.maildir, lambda item, recs: None, VerpSettings(KEY)) == 0
    # With the wrong key the same bounces still name the user, unverified.
    other = parsed(lab.maildir / ".processed", VerpSettings(b"another key"))
    assert set(other) == {p.recipient for p in bounced}
    for p in bounced:
        assert (other[p.recipient]["user_id"], other[p.recipient]["verp_verified"]) == (
            p.user_id,
            False,
        )
