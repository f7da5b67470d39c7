"""Log shapes seen in real mail logs from elsewhere, each line written here in the shape Postfix
(or the syslog daemon in front of it) writes, read on every road (the C block scanner, its
Python twin and the general parser: tests.test_scanner_fuzz.all_roads checks they agree), and
what `mailpulse logs report` says it could not read, with its exit code.

Expected values are read off the lines by hand, never from the parser.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from mailpulse.collectors import maillog, scanner
from mailpulse.collectors.maillog import Correlator

from mailpulse.catalogue import CATALOGUE
from mailpulse.series import stats_series
from tests.test_maillog import _case_line
from tests.test_scanner_fuzz import all_roads

EX_DATAERR = 65  # as the README's exit codes say

# The tail of a usual smtp delivery line, after "QID: ".
SENT = (
    "to=<ann@example.org>, relay=mx.example.org[192.0.2.7]:25, delay=1.2, "
    "delays=0.1/0/0.5/0.6, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 4XyZ)"
)


@pytest.fixture(params=["C", "Python"])
def scan_road(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test once with the C block scanner, once with its pure-Python twin."""
    if request.param == "Python":
        monkeypatch.setattr(maillog, "scan", scanner.scan)
    elif maillog.scan is scanner.scan:
        pytest.skip("the C block scanner is not built (pip install -e . builds it with gcc)")
    return str(request.param)


def events(*lines: str | bytes) -> list[dict[str, Any]]:
    """The events of these lines (as `logs parse --json` gives them), once every road is
    checked to give the same; a line cut short at the end stays held (no flush)."""
    data = [x.encode() if isinstance(x, str) else x for x in lines]
    all_roads(data)
    return [e.to_json() for e in Correlator().feed_lines(data)]


def stats(*lines: str) -> dict[str, int]:
    c = Correlator()
    list(c.feed_lines([x.encode() for x in lines]))
    c.flush()
    return dict(c.stats)


def one(line: str, **want: Any) -> dict[str, Any]:
    evs = events(line)
    assert len(evs) == 1, (line, evs)
    for k, v in want.items():
        assert evs[0][k] == v, (k, evs[0][k], v, line)
    return evs[0]


@pytest.mark.usefixtures("scan_road")
@pytest.mark.parametrize(
    "head, node",
    [
        ("Mar  7 04:05:06 mx1 postfix/smtp[311]", "mx1"),  # one-digit day, padded
        ("Jun 04 04:05:06 mx1 postfix/smtp[311]", "mx1"),  # two digits, leading zero
        ("Mar 7 04:05:06 mx1 postfix/smtp[311]", "mx1"),  # one digit, no padding
        ("Mar  7 04:05:06.250 mx1 postfix/smtp[311]", "mx1"),  # fractions of a second
        ("Mar  7 04:05:06  postfix/smtp[311]", ""),  # an empty host name
        ("Mar  7 04:05:06 postfix/smtp[311]", ""),  # no host at all
        ("Mar 7 04:05:06 postfix/smtp[311]", ""),
        ("2026-03-07T04:05:06+05:30 mx1 postfix/smtp[311]", "mx1"),
    ],
)
def test_every_header_layout_gives_the_delivery(head: str, node: str) -> None:
    one(f"{head}: 3F2A1B9C0D: {SENT}", node=node, queue_id="3F2A1B9C0D", status="sent",
        recipient="ann@example.org", program="smtp", instance="postfix", dsn="2.0.0")  # fmt: skip


@pytest.mark.usefixtures("scan_road")
def test_rfc3339_stamps_with_any_offset_mixed_with_bsd_ones_read_their_own_time() -> None:
    def zone(minutes: int) -> timezone:
        return timezone(timedelta(minutes=minutes))

    stamps = {
        "2026-03-07T04:05:06+05:30": datetime(2026, 3, 7, 4, 5, 6, tzinfo=zone(330)),
        "2026-03-07T04:05:06.5-08:00": datetime(2026, 3, 7, 4, 5, 6, 500000, zone(-480)),
        "2026-03-07T04:05:06Z": datetime(2026, 3, 7, 4, 5, 6, tzinfo=zone(0)),
        "2026-03-07T04:05:06-0330": datetime(2026, 3, 7, 4, 5, 6, tzinfo=zone(-210)),
    }
    lines = [f"{s} mx1 postfix/smtp[311]: 3F2A1B9C0D: {SENT}" for s in stamps]
    lines.insert(2, f"Mar  7 04:05:06 mx1 postfix/smtp[311]: 3F2A1B9C0D: {SENT}")
    evs = events(*lines)
    assert len(evs) == 5
    times = [e["time"] for i, e in enumerate(evs) if i != 2]
    assert times == [d.timestamp() for d in stamps.values()]
    local = datetime(datetime.now().year, 3, 7, 4, 5, 6).timestamp()
    assert evs[2]["time"] in (local, datetime(datetime.now().year - 1, 3, 7, 4, 5, 6).timestamp())


@pytest.mark.usefixtures("scan_road")
def test_crlf_endings_change_nothing() -> None:
    plain = events(f"Mar  7 04:05:06 mx1 postfix/smtp[311]: 3F2A1B9C0D: {SENT}")
    crlf = events(f"Mar  7 04:05:06 mx1 postfix/smtp[311]: 3F2A1B9C0D: {SENT}\r")
    assert crlf == plain
    assert crlf[0]["reply_text"] == "250 2.0.0 Ok: queued as 4XyZ"


@pytest.mark.usefixtures("scan_road")
@pytest.mark.parametrize(
    "tag, instance, program",
    [
        ("[postfix/smtp]", "postfix", "smtp"),  # bracketed, no pid
        ("postfix[311]", "postfix", "postfix"),  # a bare postfix
        ("postfix/amavis/smtp[311]", "postfix", "amavis/smtp"),  # nested service names
        ("postfix/10025/smtp[311]", "postfix", "10025/smtp"),
        ("postfix-bulk1/slow[311]", "postfix-bulk1", "slow"),  # syslog_name of its own
    ],
)
def test_program_names_postfix_writes_under_other_syslog_names(
    tag: str, instance: str, program: str
) -> None:
    one(f"Mar  7 04:05:06 mx1 {tag}: 3F2A1B9C0D: {SENT}", instance=instance, program=program,
        status="sent", queue_id="3F2A1B9C0D")  # fmt: skip


@pytest.mark.usefixtures("scan_road")
def test_nested_smtpd_and_qmgr_lines_correlate_with_the_delivery() -> None:
    evs = events(
        "Mar  7 04:05:05 mx1 postfix/10025/smtpd[9]: 3F2A1B9C0D: client=localhost[127.0.0.1]",
        "Mar  7 04:05:05 mx1 postfix/qmgr[8]: 3F2A1B9C0D: from=<bounce-42@news.example>, "
        "size=2048, nrcpt=1 (queue active)",
        f"Mar  7 04:05:06 mx1 postfix/amavis/smtp[311]: 3F2A1B9C0D: {SENT}",
    )
    assert [(e["sender"], e["size"]) for e in evs] == [("bounce-42@news.example", 2048)]


@pytest.mark.usefixtures("scan_road")
def test_a_solaris_syslog_id_tag_is_skipped() -> None:
    one(
        "Mar  7 04:05:06 mx1 postfix/local[13410]: [ID 197553 mail.info] C589E3780: "
        "to=<ann@mx1.example>, relay=local, delay=1, status=sent (delivered to mailbox)",
        queue_id="C589E3780", program="local", status="sent", recipient="ann@mx1.example",
        reply_text="delivered to mailbox",
    )  # fmt: skip


@pytest.mark.usefixtures("scan_road")
def test_lines_without_dsn_or_delays_take_the_codes_from_the_reply() -> None:
    # Postfix before 2.3: no dsn=, no delays=; a relay without a port.
    ev = one(
        "Mar  7 04:05:06 mx1 postfix/smtp[311]: 3F2A1B9C0D: to=<bob@example.org>, "
        "relay=mx.example.org[192.0.2.7], delay=3, status=bounced (host mx.example.org"
        "[192.0.2.7] said: 550 5.1.1 <bob@example.org>: Recipient address rejected: User "
        "unknown (in reply to RCPT TO command))",
        status="bounced", dsn="5.1.1", reply_code="550", relay="mx.example.org[192.0.2.7]",
        delay=3.0, delays=None, reason="userunknown", hard=True,
    )  # fmt: skip
    assert "logged_dsn" not in ev.get("extra", {})
    one(
        "Mar  7 04:05:06 mx1 postfix/smtp[311]: 3F2A1B9C0D: to=<ann@example.org>, "
        "relay=mx.example.org, delay=0.5, status=sent (250 Ok)",
        status="sent", dsn="", reply_code="250", relay="mx.example.org",
    )  # fmt: skip


@pytest.mark.usefixtures("scan_road")
def test_continuation_codes_and_nested_parentheses_in_the_reply() -> None:
    reply = (
        "host mx.example.org[192.0.2.7] said: 550-5.1.1 The email account (bob (at) "
        "example.org) does not exist (see https://help.example/(kb)) (in reply to RCPT TO command)"
    )
    one(
        "Mar  7 04:05:06 mx1 postfix/smtp[311]: 3F2A1B9C0D: to=<bob@example.org>, "
        "relay=mx.example.org[192.0.2.7]:25, delay=1, delays=0/0/0.5/0.5, dsn=5.1.1, "
        f"status=bounced ({reply})",
        dsn="5.1.1", reply_code="550", reply_text=reply, status="bounced", hard=True,
    )  # fmt: skip


@pytest.mark.usefixtures("scan_road")
def test_a_delivery_split_over_two_lines_is_one_event() -> None:
    first = (
        "Mar  7 04:05:06 mx1 postfix/smtp[311]: 3F2A1B9C0D: to=<bob@example.org>, "
        "relay=mx.example.org[192.0.2.7]:25, delay=1, delays=0/0/0.5/0.5, dsn=4.2.2, "
        "status=deferred (host mx.example.org[192.0.2.7] said: 452 4.2.2 Mailbox "
    )
    rest = "full, try again later (in reply to RCPT TO command))"
    after = f"Mar  7 04:05:07 mx1 postfix/smtp[311]: 4B3C2D1E0F: {SENT}"
    evs = events(first, rest, after)
    assert [(e["queue_id"], e["status"]) for e in evs] == [
        ("3F2A1B9C0D", "deferred"),
        ("4B3C2D1E0F", "sent"),
    ]
    assert evs[0]["reply_text"].endswith(rest[:-1])
    assert evs[0]["reason"] == "mailboxfull"
    # cut before its status: the rest brings it
    cut = first.index(", status=")
    evs = events(first[:cut], first[cut:] + rest)
    assert [(e["queue_id"], e["status"], e["dsn"]) for e in evs] == [
        ("3F2A1B9C0D", "deferred", "4.2.2")
    ]
    s = stats(first, rest, after)
    assert (s["joined_lines"], s["lines"], s["not_postfix"]) == (1, 3, 0)


@pytest.mark.usefixtures("scan_road")
def test_a_cut_delivery_line_followed_by_another_log_line_is_read_as_it_is() -> None:
    first = (
        "Mar  7 04:05:06 mx1 postfix/smtp[311]: 3F2A1B9C0D: to=<bob@example.org>, "
        "relay=mx.example.org[192.0.2.7]:25, delay=1, delays=0/0/0.5/0.5, dsn=5.1.1, "
        "status=bounced (host mx.example.org[192.0.2.7] said: 550 5.1.1 no such"
    )
    other = "Mar  7 04:05:06 mx1 dovecot: imap-login: Login: user=<ann>"
    evs = events(first, other)
    assert [(e["status"], e["dsn"]) for e in evs] == [("bounced", "5.1.1")]
    # the last line of the input, cut short: read as it is once the input ends
    assert [e["status"] for e in events(first)] == []  # held by the roads until flushed
    c = Correlator()
    assert list(c.feed_lines([first.encode()])) == []
    assert [e.status for e in c.flush()] == ["bounced"]


@pytest.mark.usefixtures("scan_road")
def test_anonymised_queue_ids_are_read_where_the_line_shape_says_so() -> None:
    evs = events(
        "Mar  7 04:05:05 mx1 postfix/qmgr[8]: 9BECF3F19Dxq: from=<bounce-7@news.example>, "
        "size=999, nrcpt=1 (queue active)",
        f"Mar  7 04:05:06 mx1 postfix/smtp[311]: 9BECF3F19Dxq: {SENT}",
        f"Mar  7 04:05:06 mx1 postfix/smtp[311]: QUEUEID01: {SENT}",
        "Mar  7 04:05:06 mx1 postfix/smtp[311]: warning: 9BECF3F19D: TLS is required, "
        "but was not offered by host mx.example.org[192.0.2.7]",
        "Mar  7 04:05:07 mx1 postfix/bounce[9]: 9BECF3F19Dxq: sender non-delivery "
        "notification: 2C0FFEE0zz",
        "Mar  7 04:05:07 mx1 postfix/qmgr[8]: 9BECF3F19Dxq: removed",
    )
    assert [(e["queue_id"], e["sender"]) for e in evs] == [
        ("9BECF3F19Dxq", "bounce-7@news.example"),
        ("QUEUEID01", ""),
    ]
    s = stats(
        "Mar  7 04:05:07 mx1 postfix/bounce[9]: 9BECF3F19Dxq: sender non-delivery "
        "notification: 2C0FFEE0zz",
        "Mar  7 04:05:07 mx1 postfix/cleanup[9]: 9BECF3F19Dxq: message-id=<a@b>",
        "Mar  7 04:05:07 mx1 postfix/qmgr[8]: 9BECF3F19Dxq: removed",
    )
    kinds = ("records.notification", "records.message_id", "records.removed")
    assert [s[k] for k in kinds] == [1, 1, 1]
    s = stats(
        "Mar  7 04:05:06 mx1 postfix/smtp[311]: warning: 9BECF3F19D: TLS is required, but "
        "was not offered by host mx.example.org[192.0.2.7]",
        "Mar  7 04:05:06 mx1 postfix/smtp[311]: warning: something odd: x",
    )
    # a warning is a warning: no message of its own, no delivery, nothing unread
    assert s["records.warning"] == 2
    assert not [k for k in s if k.startswith(("unparsed.", "left_out.", "events."))]


@pytest.mark.usefixtures("scan_road")
def test_sendmail_lines_and_verify_probes_are_counted_apart_not_as_errors() -> None:
    lines = [
        "Mar  7 04:05:06 mx1 sm-mta[411]: r27C56x1012345: to=<ann@example.org>, "
        "delay=00:00:01, xdelay=00:00:01, mailer=esmtp, pri=120, relay=mx.example.org. "
        "[192.0.2.7], dsn=2.0.0, stat=Sent (Ok)",
        "Mar  7 04:05:06 mx1 sendmail[412]: r27C56x1012345: from=<root@mx1>, size=12, "
        "class=0, nrcpts=1, relay=root@localhost",
        "Mar  7 04:05:06 mx1 postfix/smtp[311]: 3F2A1B9C0D: to=<ann@example.org>, "
        "relay=mx.example.org[192.0.2.7]:25, delay=0.2, delays=0/0/0.1/0.1, dsn=2.1.5, "
        "status=deliverable (250 2.1.5 Ok)",
        "Mar  7 04:05:06 mx1 postfix/smtp[311]: 3F2A1B9C0E: to=<bob@example.org>, "
        "relay=mx.example.org[192.0.2.7]:25, delay=0.2, delays=0/0/0.1/0.1, dsn=5.1.1, "
        "status=undeliverable (host mx.example.org[192.0.2.7] said: 550 5.1.1 no such user "
        "(in reply to RCPT TO command))",
    ]
    assert events(*lines) == []
    s = stats(*lines)
    assert (s["records.other_mta"], s["records.verify"]) == (2, 2)
    assert not [k for k in s if k.startswith(("unparsed.", "left_out."))]


# -- what logs report says it could not read ---------------------------------------------------
def report(path: Path) -> tuple[int, dict[str, Any], str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "mailpulse", "logs", "report", "--json", str(path)],
        capture_output=True,
        timeout=120,
    )
    text = subprocess.run(
        [sys.executable, "-m", "mailpulse", "logs", "report", str(path)],
        capture_output=True,
        timeout=120,
    )
    assert b"Traceback" not in out.stderr + text.stderr, out.stderr.decode()
    assert text.returncode == out.returncode
    return out.returncode, json.loads(out.stdout), text.stdout.decode(), out.stderr.decode()


def test_report_names_what_it_could_not_read_and_fails_on_left_out_deliveries(
    tmp_path: Path,
) -> None:
    odd_status = (
        "Mar  7 04:05:07 mx1 postfix/smtp[311]: 3F2A1B9C0E: to=<bob@example.org>, "
        "relay=mx.example.org[192.0.2.7]:25, delay=1, delays=0/0/0.5/0.5, dsn=2.0.0, "
        "status=relayed (250 Ok)"
    )
    no_qid = (
        "Mar  7 04:05:07 mx1 postfix/local[312]: to=<carl@mx1.example>, relay=local, "
        "delay=0, status=sent (delivered to mailbox)"
    )
    lines = [
        f"Mar  7 04:05:06 mx1 postfix/smtp[311]: 3F2A1B9C0D: {SENT}",
        odd_status,
        no_qid,
        "Mar  7 04:05:08 mx1 postfix/smtpd[313]: something new in smtpd",
        "Mar  7 04:05:08 mx1 sm-mta[411]: r27C56x1012345: to=<ann@example.org>, stat=Sent",
    ]
    log = tmp_path / "mail.log"
    log.write_text("\n".join(lines) + "\n")
    rc, data, text, err = report(log)
    assert rc == EX_DATAERR
    assert data["status"]["sent"] == 1
    assert data["not_read"] == {
        "smtp": {"count": 1, "sample": odd_status.split(": ", 1)[1]},
        "local": {"count": 1, "sample": no_qid.split(": ", 1)[1]},
        "smtpd": {"count": 1, "sample": "something new in smtpd"},
    }
    assert data["left_out"] == {"unknown_status": 1, "no_queue_id": 1}
    assert (data["lines"], data["postfix_lines"], data["other_mta_lines"]) == (5, 4, 1)
    assert "Not read, per program" in text and "something new in smtpd" in text
    assert "Delivery lines left out, per reason" in text and "unknown_status" in text
    assert "delivery lines left out" in err

    # the same log without the two left-out lines: understood or not, nothing is lost: exit 0
    log.write_text("\n".join(lines[:1] + lines[3:]) + "\n")
    rc, data, _, _ = report(log)
    assert rc == 0
    assert data["not_read"] == {"smtpd": {"count": 1, "sample": "something new in smtpd"}}
    assert data["left_out"] == {}


def test_report_fails_on_input_with_no_postfix_line(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/bin/false\n")
    rc, data, _, err = report(passwd)
    assert rc == EX_DATAERR
    assert (data["lines"], data["postfix_lines"]) == (2, 0)
    assert "no Postfix line" in err
    only_sendmail = tmp_path / "sendmail.log"
    only_sendmail.write_text("Mar  7 04:05:08 mx1 sm-mta[411]: r27C5: to=<a@b>, stat=Sent\n")
    assert report(only_sendmail)[0] == EX_DATAERR
    empty = tmp_path / "empty.log"  # a log just rotated: nothing to say, nothing wrong
    empty.write_text("")
    assert report(empty)[0] == 0


def test_the_agent_exports_left_out_delivery_lines_per_reason() -> None:
    assert stats_series("left_out.no_queue_id", set()) == (
        "mailpulse_log_unread_delivery_lines_total",
        ("no_queue_id",),
    )
    assert stats_series("unparsed.smtp", set()) == ("mailpulse_log_parse_errors_total", ("smtp",))
    metric = {m.name: m for m in CATALOGUE}["mailpulse_log_unread_delivery_lines_total"]
    assert metric.labels == ("reason",)


# -- every Postfix line of the grok corpus, in every header shape --------------------------------
HEADER_SHAPES = [
    "Mar  7 04:05:06 mx1 postfix/{service}[4242]: {message}",
    "Mar 7 04:05:06 postfix/{service}[4242]: {message}",
    "Mar  7 04:05:06  postfix/{service}[4242]: {message}\r",
    "2026-03-07T04:05:06.123-03:30 mx1 postfix/{service}[4242]: {message}",
    "Mar  7 04:05:06 mx1 [postfix/{service}]: {message}",
    "Mar  7 04:05:06 mx1 postfix/amavis/{service}[4242]: {message}",
    "Mar  7 04:05:06 mx1 postfix/{service}[4242]: [ID 197553 mail.info] {message}",
]


@pytest.mark.usefixtures("scan_road")
def test_grok_corpus_lines_read_alike_in_every_header_shape(shared_corpus: Path) -> None:
    cases = []
    for path in sorted((shared_corpus / "postfix-lines" / "grok-tests").glob("*.yaml")):
        data = str(yaml.safe_load(path.read_text())["data"])
        if path.stem.startswith("tls_features") and not data[:1].isdigit():
            continue  # a fragment of a line, not a line
        cases.append(_case_line(path.stem, data))
    assert len(cases) > 150
    kinds = []
    for shape in HEADER_SHAPES:
        lines = [shape.format(service=s, message=m) for s, m in cases]
        # a case holding "\r\n" is two lines for every road alike
        data = "\n".join(lines).encode().split(b"\n")
        all_roads(data)
        c = Correlator()
        evs = list(c.feed_lines(data)) + c.flush()
        s = c.stats
        kinds.append(
            (
                sorted((e.queue_id, e.recipient, e.status, e.dsn, e.reason) for e in evs),
                dict(s),
            )
        )
        assert not [k for k in s if k.startswith(("unparsed.", "left_out."))], (shape, s)
    assert len(kinds[0][0]) > 10
    assert kinds[0][1]["not_postfix"] == 11  # the lines after a newline inside two cases
    assert all(k == kinds[0] for k in kinds), "a header shape changed what the lines say"
