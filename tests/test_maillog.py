"""The log parser and correlator on single lines: the shared grok corpus, both timestamp
styles, instance names, the dsn rewrite, content filters, the bounded table, and garbage."""

from __future__ import annotations

import io
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from mailpulse.collectors import maillog, scanner
from mailpulse.collectors.maillog import Correlator, events_from_lines, parse_line

# grok field -> our LogRecord field (fields[] or attribute)
GROK_TO_OURS = {
    "postfix_queueid": "queue_id",
    "postfix_client_hostname": "client_name",
    "postfix_client_ip": "client_ip",
    "postfix_client_port": "client_port",
    "postfix_relay_hostname": "relay_host",
    "postfix_relay_ip": "relay_ip",
    "postfix_relay_port": "relay_port",
    "postfix_relay_service": "relay_service",
    "postfix_status": "status",
    "postfix_smtp_response": "reply",
    "postfix_error_response": "reply",
    "postfix_local_response": "reply",
    "postfix_pipe_response": "reply",
    "postfix_smtp_stage": "stage",
    "postfix_smtp_lostconn_reason": "stage",
    "postfix_status_code": "reply_code",
    "postfix_status_code_enhanced": "dsn",
    "postfix_proxy_status_code": "reply_code",
    "postfix_proxy_status_code_enhanced": "dsn",
    "postfix_proxy_smtp_stage": "stage",
    "postfix_action": "action",
    "postfix_message_level": "level",
    "postfix_message": "message",
    "postfix_from": "from",
    "postfix_version": "version",
    "postfix_config_path": "config",
    "postfix_bounce_queueid": "notification_queue_id",
    "postfix_command_counter_data": "commands",
    "postfix_postsuper_summary_action": "action",
    "postfix_postsuper_summary_count": "count",
    "postfix_postsuper_action": "action",
    "postfix_message-id": "message_id",
    "postfix_bounce_recipient": "notification_to",
    "postfix_bounce_reason": "notification_reason",
    "postfix_postscreen_access": "action",
    "postfix_postscreen_violation": "action",
    "postfix_postscreen_violation_time": "after",
    "postfix_postscreen_dnsbl_rank": "dnsbl_rank",
    "postfix_postscreen_toobusy_data": "reply",
    "postfix_server_ip": "server_ip",
    "postfix_server_port": "server_port",
    "postfix_client_ip_unknown": "client_ip",
    "postfix_termination_signal": "signal",
    "postfix_proxy_result": "action",
    "postfix_proxy_message": "reply",
}
# grok fields we do not give a field of their own, and why.
UNMAPPED = {
    "postfix_keyvalue_data": "the raw key=value run: we split it into its keys (to, relay, ...)",
    "postfix_status_data": "the rejected address or host: inside reply, kept whole",
    "postfix_status_message": "the refusal's words: inside reply, kept whole with its codes",
    "postfix_milter_result": "action says it with the milter's name (milter-reject)",
    "postfix_milter_message": "stage, client and reply hold its parts",
    "postfix_smtp_lostconn_data": "the kind says it (lost_connection, connect_failed)",
    "postfix_smtpd_lostconn_data": "the kind says it (lost_connection, timeout)",
    **{
        f"postfix_delay_{p}": "delays keeps the four parts whole; the event splits them"
        for p in ("before_qmgr", "in_qmgr", "conn_setup", "transmission")
    },
    **{
        f"postfix_cmd_{c}": "commands keeps the session's counters whole (ehlo=2 ...)"
        for c in [
            "auth",
            "auth_accepted",
            "count",
            "count_accepted",
            "data",
            "data_accepted",
            "ehlo",
            "ehlo_accepted",
            "helo",
            "mail",
            "quit",
            "rcpt",
            "rcpt_accepted",
            "rset",
            "starttls",
            "unknown",
            "unknown_accepted",
        ]
    },
}
# Corpus cases read as not ours to take apart: counted as understood, fields not compared.
IGNORED = {
    "anvil_0001": "connection statistics",
    "anvil_0002": "connection statistics",
    "anvil_0003": "connection statistics",
    "anvil_0004": "connection statistics",
    "anvil_0005": "connection statistics",
    "anvil_0006": "connection statistics",
    "anvil_0007": "connection statistics",
    "anvil_0008": "connection statistics",
    "anvil_0009": "connection statistics",
    "cleanup_0003": "header or body check action",
    "cleanup_0009": "header or body check action",
    "dnsblog_0001": "DNSBL lookup detail",
    "dnsblog_0002": "DNSBL lookup detail",
    "postscreen_0001": "cache cleanup statistics",
    "qmgr_0006": "message still being delivered",
    "scache_0001": "connection cache statistics",
    "scache_0002": "connection cache statistics",
    "scache_0003": "connection cache statistics",
    "scache_0004": "connection cache statistics",
    "smtp_0003": "TLS session detail",
    "smtp_0004": "TLS session detail",
    "smtp_0015": "TLS session detail",
    "smtp_0016": "TLS session detail",
    "smtp_0027": "TLS session detail",
    "smtp_0028": "TLS session detail",
    "smtp_0029": "TLS session detail",
    "smtp_0030": "TLS session detail",
    "smtp_0031": "PIX workaround notice",
    "smtp_0035": "TLS session detail",
    "smtp_0036": "TLS session detail",
    "smtpd_0010": "session detail",
    "smtpd_0015": "session detail",
    "smtpd_0037": "session detail",
    "smtpd_0039": "session detail",
    "tls_features_0007": "a bare tls= value: only ever part of a delivery line",
    "tls_features_0008": "a bare tls= value: only ever part of a delivery line",
    "tls_features_0009": "a bare tls= value: only ever part of a delivery line",
    "tls_features_0010": "a bare tls= value: only ever part of a delivery line",
    "tls_features_0011": "a bare tls= value: only ever part of a delivery line",
    "tls_features_0012": "a bare tls= value: only ever part of a delivery line",
    "tlsproxy_0001": "TLS proxy session detail",
    "tlsproxy_0002": "TLS proxy session detail",
    "verify_0001": "address verification cache",
    "verify_0002": "address verification cache",
}

# Corpus files that hold a fragment of a line (what a grok sub-pattern matches), and the
# whole line we put it in to check our reading of that fragment.
FRAGMENTS = {
    "relay": "7EE668039: to=<a@b.example>, relay={data}, delay=1, delays=1/0/0/0, dsn=2.0.0, "
    "status=sent (250 ok)",
    "delays": "7EE668039: to=<a@b.example>, relay=local, delay=1, delays={data}, dsn=2.0.0, "
    "status=sent (delivered)",
    "command_counter_data": "disconnect from unknown[192.0.2.1] {data}",
}
SERVICE_OF = {"trivial_rewrite": "trivial-rewrite", "script": "postfix-script"}


def _case_line(name: str, data: str) -> tuple[str, str]:
    family = name.rsplit("_", 1)[0]
    if family in FRAGMENTS:
        return "smtpd" if family.startswith("command") else "smtp", FRAGMENTS[family].format(
            data=data
        )
    if family == "tls_features":
        family = "smtp"
    return SERVICE_OF.get(family, family), data


def test_every_grok_corpus_case_parses_into_its_fields(shared_corpus: Path) -> None:
    cases = sorted((shared_corpus / "postfix-lines" / "grok-tests").glob("*.yaml"))
    assert len(cases) == 191
    wrong: list[str] = []
    ignored: list[str] = []
    unmapped: set[str] = set()
    compared = 0
    for path in cases:
        case = yaml.safe_load(path.read_text())
        data, results = str(case["data"]), case.get("results") or {}
        if path.stem.startswith("tls_features") and not data[:1].isdigit():
            if not data[:1].isalnum():
                wrong.append(f"{path.stem}: unexpected fragment {data!r}")
            ignored.append(path.stem)
            continue
        service, message = _case_line(path.stem, data)
        line = f"Nov 28 17:33:59 mx1 postfix/{service}[4242]: {message}".encode()
        rec = parse_line(line)
        if rec is None or rec.kind == "unknown":
            wrong.append(f"{path.stem}: not understood: {rec!r}")
            continue
        if rec.kind == "ignored":
            assert rec.fields["reason"] == IGNORED.get(path.stem), path.stem
            ignored.append(path.stem)
            continue
        if path.stem.startswith("delays"):
            assert rec.fields["delays"] == data
            compared += 1
        for grok, value in results.items():
            ours = GROK_TO_OURS.get(grok)
            if ours is None:
                unmapped.add(grok)
                continue
            got = rec.get(ours)
            want = str(value).strip()
            if grok == "postfix_message" and want == rec.kind:
                got = rec.kind  # "removed" is a kind of its own here
            if got.strip() != want:
                wrong.append(f"{path.stem}: {grok}={want!r}, we have {ours}={got!r}")
            compared += 1
    assert not wrong, "\n".join(wrong)
    assert sorted(ignored) == sorted(IGNORED)
    assert unmapped == set(UNMAPPED)
    # every field of every case not ignored was compared: as many as the corpus names
    assert compared == sum(
        sum(1 for g in (yaml.safe_load(p.read_text()).get("results") or {}) if g in GROK_TO_OURS)
        + p.stem.startswith("delays")
        for p in cases
        if p.stem not in IGNORED
    )


def _bsd(dt: datetime, frac: str = "") -> str:
    return f"{dt:%b} {dt.day:2d} {dt:%H:%M:%S}{frac}"


def test_timestamp_styles_and_node() -> None:
    # Expected instants from datetime, never from the parser: local time for BSD stamps
    # (mktime's rules), the offset for RFC 3339; fractions to the microsecond.
    tail = "postfix/qmgr[7]: 0F5383D: removed"
    local = datetime(2026, 11, 28, 17, 33, 59).timestamp()  # naive: the machine's local time
    cases: dict[str, float] = {
        f"Nov 28 2026 17:33:59 mx1 {tail}": local,
        f"Nov 28 2026 17:33:59.5 mx1 {tail}": local + 0.5,
        f"2026 Nov 28 17:33:59 mx1 {tail}": local,
        f"2026 Nov 28 17:33:59.000001 mx1 {tail}": local + 1e-6,
        f"2026-11-28T17:33:59.123456+01:00 mx1 {tail}": datetime(
            2026, 11, 28, 16, 33, 59, 123456, tzinfo=UTC
        ).timestamp(),
        f"2026-11-28T17:33:59.5-05:30 mx1 {tail}": datetime(
            2026, 11, 28, 23, 3, 59, 500000, tzinfo=UTC
        ).timestamp(),
        f"2026-11-28T17:33:59.987654321Z mx1 {tail}": datetime(
            2026, 11, 28, 17, 33, 59, tzinfo=UTC
        ).timestamp()
        + 0.987654321,
        f"2026-11-28T17:33:59Z mx1 {tail}": datetime(
            2026, 11, 28, 17, 33, 59, tzinfo=UTC
        ).timestamp(),
        f"2026-11-28T17:33:59.75 mx1 {tail}": local + 0.75,  # no zone: local time
        f"2026-03-01T00:00:00.1+14:00 mx1 {tail}": datetime(
            2026, 2, 28, 10, 0, 0, 100000, tzinfo=UTC
        ).timestamp(),
    }
    # No year on the line: the year whose date is not in the future (two days' grace for
    # clocks apart): last month's date is this year, tomorrow's too, a date a week or months
    # ahead was a year ago. At 12:34:56, so no daylight-saving change is near.
    now = datetime.now().replace(microsecond=0)
    year_back_in_this_year = 0
    for days in (-40, -1, 1, 4, 9, 40, 200):
        d = (now + timedelta(days=days)).replace(hour=12, minute=34, second=56)
        if d.month == 2 and d.day == 29:
            d = d.replace(day=28)  # a date every year has
        if days == 1 and d.year != now.year:
            continue  # tomorrow is New Year's Day: a line from the future, nothing to read
        future = d > now + timedelta(days=2)
        assert future == (days > 2), (days, d, now)
        read_as = d.replace(year=d.year - 1) if future else d
        year_back_in_this_year += future and d.year == now.year
        cases[f"{_bsd(d, '.031250')} mx1 {tail}"] = read_as.timestamp() + 0.03125
        cases[f"{_bsd(d)} mx1 {tail}"] = read_as.timestamp()
    # a date ahead in this very year must be read as last year's (none after December 22)
    assert year_back_in_this_year or (now.month, now.day) > (12, 22)
    nov = datetime(now.year, 11, 28, 17, 33, 59)
    if nov > now + timedelta(days=2):
        nov = nov.replace(year=now.year - 1)
    cases[f"Nov 28 17:33:59.250 mx1 {tail}"] = nov.timestamp() + 0.25
    for line, want in cases.items():
        rec = parse_line(line.encode())
        assert rec is not None, line
        assert rec.node == "mx1" and rec.kind == "removed" and rec.queue_id == "0F5383D"
        assert rec.time == pytest.approx(want, abs=1e-7), (line, rec.time - want)


def test_instance_and_program_split() -> None:
    rec = parse_line(
        b"Nov 28 17:33:59 n2 postfix-bulk1/smtp[1]: 8A1C0: to=<u@x.example>, "
        b"relay=none, delay=1, delays=1/0/0/0, dsn=4.4.1, status=deferred (x)"
    )
    assert rec is not None
    assert (rec.instance, rec.program, rec.service, rec.pid) == (
        "postfix-bulk1",
        "smtp",
        "smtp",
        "1",
    )
    rec = parse_line(b"Nov 28 17:33:59 n2 postfix/submission/smtpd[99]: connect from a[192.0.2.9]")
    assert rec is not None
    assert (rec.instance, rec.program, rec.service) == ("postfix", "submission/smtpd", "smtpd")
    assert rec.kind == "connect" and rec.fields["client_ip"] == "192.0.2.9"
    # Not Postfix's: another daemon, or a syslog line without a program.
    assert parse_line(b"Nov 28 17:33:59 n2 dovecot[5]: imap-login: Login: user=<a>") is None
    assert parse_line(b"Nov 28 17:33:59 n2 kernel: eth0 link up") is None


def test_long_queue_ids_and_delivery_fields() -> None:
    line = (
        b"2026-11-28T17:33:59.5+00:00 mx1 postfix/smtp[9]: 4RzD1k0bXHz9rwN: to=<A@Gmail.COM>, "
        b"orig_to=<list@ours.example>, relay=gmail-smtp-in.l.google.com[2a00:1450::1b]:25, "
        b"conn_use=3, delay=2.5, delays=0.1/0.2/1.1/1.1, dsn=2.0.0, status=sent (250 2.0.0 OK)"
    )
    (ev,) = events_from_lines([line])
    assert ev.queue_id == "4RzD1k0bXHz9rwN" and ev.recipient == "A@Gmail.COM"
    assert ev.domain == "gmail.com" and ev.orig_recipient == "list@ours.example"
    assert ev.relay == "gmail-smtp-in.l.google.com[2a00:1450::1b]:25"
    assert (ev.status, ev.dsn, ev.reply_code, ev.reason) == ("sent", "2.0.0", "250", "delivered")
    assert ev.delay == 2.5 and ev.delays == (0.1, 0.2, 1.1, 1.1)


def test_x00_dsn_rewrite_keeps_the_remote_codes() -> None:
    # The remote said 550 with a 4.x.x enhanced code: Postfix logs dsn=5.0.0.
    line = (
        b"Nov 28 17:33:59 mx1 postfix/smtp[9]: 1A2B3C4D: to=<u@x.example>, relay=mx.x.example"
        b"[192.0.2.5]:25, delay=1, delays=0/0/0/1, dsn=5.0.0, status=bounced (host mx.x.example"
        b"[192.0.2.5] said: 550 4.2.2 <u@x.example>: mailbox full (in reply to RCPT TO command))"
    )
    (ev,) = events_from_lines([line])
    assert (ev.dsn, ev.reply_code, ev.extra["logged_dsn"]) == ("4.2.2", "550", "5.0.0")
    assert ev.reason == "mailboxfull"
    # No enhanced code at all: Postfix's X.0.0 is all there is.
    (ev,) = events_from_lines([line.replace(b"550 4.2.2 <u@x.example>: mailbox full", b"550 no")])
    assert (ev.dsn, ev.reply_code) == ("5.0.0", "550") and "logged_dsn" not in ev.extra


def _line(qid: str, rcpt: str, relay: str, status: str, dsn: str, text: str) -> bytes:
    return (
        f"Nov 28 17:33:59 mx1 postfix/smtp[9]: {qid}: to=<{rcpt}>, relay={relay}, delay=1, "
        f"delays=0/0/0/1, dsn={dsn}, status={status} ({text})"
    ).encode()


def test_content_filter_relays_are_counted_apart() -> None:
    c = Correlator(content_filters=["127.0.0.1:10025"])
    lines = [
        _line(
            "AAAA1",
            "u@x.example",
            "127.0.0.1[127.0.0.1]:10025",
            "sent",
            "2.0.0",
            "250 2.0.0 Ok: queued as BBBB2",
        ),
        _line("BBBB2", "u@x.example", "mx.x.example[192.0.2.5]:25", "sent", "2.0.0", "250 ok"),
    ]
    events = list(events_from_lines(lines, c))
    assert [e.queue_id for e in events] == ["BBBB2"]
    assert c.stats["content_filter_relays"] == 1 and c.stats["events.sent"] == 1


def test_error_agent_deferrals_and_expiry() -> None:
    c = Correlator()
    lines = [
        b"Nov 28 17:33:59 mx1 postfix/qmgr[3]: 5E6F7A8B: from=<bounce-42@ours.example>, "
        b"size=1234, nrcpt=2 (queue active)",
        b"Nov 28 17:34:00 mx1 postfix/error[9]: 5E6F7A8B: to=<a@yahoo.com>, relay=none, delay=63,"
        b" delays=60/3/0/0, dsn=4.4.2, status=deferred (delivery temporarily suspended: lost "
        b"connection with mta7.am0.yahoodns.net[98.136.216.22] while sending RCPT TO)",
        b"Nov 28 17:34:00 mx1 postfix/error[9]: 5E6F7A8B: to=<b@yahoo.com>, relay=none, delay=63,"
        b" delays=60/3/0/0, dsn=4.7.0, status=deferred (delivery temporarily suspended: host "
        b"mta7.am0.yahoodns.net[98.136.216.22] said: 421 4.7.0 [TSS04] Messages from 192.0.2.1 "
        b"temporarily deferred (in reply to MAIL FROM command))",
        b"Nov 29 17:34:00 mx1 postfix/qmgr[3]: 5E6F7A8B: from=<bounce-42@ours.example>, "
        b"status=expired, returned to sender",
        b"Nov 29 17:34:00 mx1 postfix/qmgr[3]: 5E6F7A8B: removed",
    ]
    events = list(events_from_lines(lines, c))
    deferred = [e for e in events if e.status == "deferred"]
    assert [e.program for e in deferred] == ["error", "error"]
    assert deferred[0].reason == "networkerror" and deferred[0].sender == "bounce-42@ours.example"
    assert (deferred[1].reply_code, deferred[1].dsn) == ("421", "4.7.0")
    expired = [e for e in events if e.status == "expired"]
    assert sorted(e.recipient for e in expired) == ["a@yahoo.com", "b@yahoo.com"]
    assert all(e.reason == "expired" and e.size == 1234 for e in expired)
    assert c.stats["events.deferred"] == 2 and c.stats["events.expired"] == 2
    assert not c.messages  # removed: the table forgets the message


def test_queue_id_table_is_bounded_and_counts_evictions() -> None:
    c = Correlator(max_messages=10)
    for i in range(100):
        c.feed_line(
            f"Nov 28 17:33:59 mx1 postfix/qmgr[3]: {i + 0xA0000:X}: from=<s@x>, size=1, "
            "nrcpt=1 (queue active)"
        )
    assert len(c.messages) == 10 and c.stats["evictions"] == 90


def test_other_record_kinds_are_counted() -> None:
    c = Correlator()
    lines = [
        b"Nov 28 17:33:59 mx1 postfix/smtpd[5]: NOQUEUE: reject: RCPT from x[192.0.2.7]: 554 "
        b"5.7.1 <a@b>: Relay access denied; from=<s@x> to=<a@b> proto=ESMTP helo=<x>",
        b"Nov 28 17:33:59 mx1 postfix/smtp[5]: warning: no MX host for x.example has a valid "
        b"address record",
        b"Nov 28 17:33:59 mx1 postfix/master[1]: daemon started -- version 3.7.11, configuration "
        b"/etc/postfix",
        b"Nov 28 17:33:59 mx1 postfix/smtpd[5]: something new in Postfix 9.9",
        b"Nov 28 17:33:59 mx1 postfix/smtpd[5]: another thing nobody parses yet",
        b"Nov 28 17:33:59 mx1 sshd[5]: Accepted publickey for root",
    ]
    assert list(events_from_lines(lines, c)) == []
    s = c.stats
    assert s["lines"] == 6 and s["not_postfix"] == 1
    assert s["records.reject"] == 1 and s["rejects.reject"] == 1
    assert s["records.warning"] == 1 and s["records.master"] == 1
    assert s["unparsed.smtpd"] == 2
    assert c.samples["smtpd"] == ["something new in Postfix 9.9", "another thing nobody parses yet"]


GOOD = _line(
    "C0FFEE1",
    "u@x.example",
    "mx[192.0.2.5]:25",
    "bounced",
    "5.1.1",
    "host mx[192.0.2.5] said: 550 5.1.1 <u@x.example>: user unknown (in reply to RCPT TO command)",
)


def test_cut_lines_never_crash_and_never_invent_an_outcome() -> None:
    # Bad input: the same delivery line cut at every byte (a writer killed mid-line).
    for i in range(len(GOOD)):
        rec = parse_line(GOOD[:i])
        assert rec is None or rec.kind in ("unknown", "delivery", "verify")
        if rec is not None and rec.kind == "delivery":
            # cut inside the reply text: the outcome is there, the text shorter
            assert rec.fields["status"] == "bounced"


def test_nul_bytes_invalid_utf8_and_huge_lines() -> None:
    # Bad input: NUL bytes, bytes that are not UTF-8, a 64 KiB reply text, random bytes.
    rec = parse_line(GOOD.replace(b"user unknown", b"us\x00er \xff\xfe unknown"))
    assert rec is not None and rec.kind == "delivery" and "\ufffd" in rec.fields["reply"]
    huge = GOOD.replace(b"user unknown", b"x" * 70_000)
    rec = parse_line(huge)
    assert rec is not None and rec.kind == "delivery" and rec.fields.get("cut") == "1"
    assert rec.fields["status"] == "bounced"
    rng = random.Random(5)
    for _ in range(3000):
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        parse_line(blob)
        parse_line(GOOD[: rng.randrange(len(GOOD))] + blob)
    c = Correlator()
    events = list(events_from_lines([huge, b"\x00" * 100, b"", b"\xff" * 70_000, GOOD], c))
    assert [e.status for e in events] == ["bounced", "bounced"]
    # both lines over MAX_LINE are counted cut, the Postfix one and the garbage
    assert c.stats["lines"] == 5 and c.stats["cut_lines"] == 2


def general_road(lines: list[bytes]) -> tuple[list[dict[str, object]], dict[str, int]]:
    c = Correlator()
    events = [e.to_json() for line in lines for e in c.feed_line(line)]
    return events, dict(c.stats)


def fast_road(lines: list[bytes]) -> tuple[list[dict[str, object]], dict[str, int]]:
    c = Correlator()
    events = [e.to_json() for e in c.feed_lines(lines)]
    return events, dict(c.stats)


def block_road(data: bytes, block: int) -> tuple[list[dict[str, object]], dict[str, int]]:
    """feed_stream over `data`, read `block` bytes at a time."""
    c = Correlator()
    events = [e.to_json() for e in c.feed_stream(io.BytesIO(data), block)]
    return events, dict(c.stats)


@pytest.fixture(params=["C scanner", "Python"])
def block_scanner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the C block scanner, then with the pure-Python road it falls back to."""
    if request.param == "Python":
        monkeypatch.setattr(maillog, "scan", scanner.scan)
    elif maillog.scan is scanner.scan:
        pytest.skip("the C block scanner is not built (pip install -e . builds it with gcc)")
    return str(request.param)


def assert_block_road_equals_general_road(lines: list[bytes]) -> None:
    data = b"\n".join(lines) + b"\n"
    general = general_road(data.split(b"\n")[:-1])
    # blocks cut anywhere (a line split between reads) and the usual size; no final newline
    for block in (7, 4096, maillog.BLOCK):
        assert block_road(data, block) == general, block
    tail = data[:-1]  # the last line without its newline (unless it had one of its own)
    tail_lines = tail.split(b"\n")
    if tail.endswith(b"\n"):
        tail_lines.pop()
    assert block_road(tail, 4096) == general_road(tail_lines)


VARIANTS = [
    b"Nov 28 17:33:59 mx1 postfix/smtpd[5]: 1A2B3C4D5E: client=a.example[192.0.2.7]",
    b"Nov 28 17:33:59 mx1 postfix/cleanup[6]: 1A2B3C4D5E: message-id=<x@a.example>",
    b"Nov 28 17:33:59 mx1 postfix/qmgr[3]: 1A2B3C4D5E: from=<s@ours.example>, size=1200, nrcpt=3 "
    b"(queue active)",
    _line(
        "1A2B3C4D5E",
        "u@x.example",
        "mx[192.0.2.5]:25",
        "deferred",
        "4.2.2",
        "host mx[192.0.2.5] said: 452 4.2.2 <u@x.example>: full (in reply to RCPT TO command)",
    ),
    b"Nov 28 17:34:00 mx1 postfix/smtp[9]: 1A2B3C4D5E: to=<v@x.example>, orig_to=<w@x.example>, "
    b"relay=mx[192.0.2.5]:25, conn_use=2, delay=1.5, delays=0.1/0/0.4/1, dsn=5.0.0, "
    b"status=bounced (host mx[192.0.2.5] said: 550 4.1.1 no (in reply to RCPT TO command))",
    b"Nov 28 17:34:00 mx1 postfix/smtp[9]: 1A2B3C4D5E: to=<t@x.example>, relay=mx[192.0.2.5]:25,"
    b" delay=3.6, delays=0.08/0.02/0.85/0.14, tls=dane, dsn=2.1.5, status=sent (250 2.0.0 Ok)",
    b"Nov 28 17:34:00 mx1 postfix/local[9]: 1A2B3C4D5E: to=root@mx1, orig_to=postmaster, "
    b"relay=local, delay=0.07, delays=0.04/0/0/0.03, dsn=2.0.0, status=sent (delivered to "
    b"mailbox)",
    b"Nov 28 17:34:00 mx1 postfix/smtp[9]: 1A2B3C4D5E: to=<c@x.example>, relay=127.0.0.1"
    b"[127.0.0.1]:10025, delay=1, delays=1/0/0/0, dsn=2.0.0, status=sent (250 queued as 9F)",
    b"Nov 28 17:34:00 mx1 postfix/smtp[9]: 1A2B3C4D5E: to=<q@x.example>, relay=none, delay=1, "
    b"delays=1/0/0/0, dsn=2.0.0, status=deliverable (probe)",
    b"2026-11-28T17:34:01.000123+01:00 mx2 postfix-bulk1/smtp[9]: 4RzD1k0bXHz9rwN: "
    b"to=<g@gmail.com>, relay=gmail-smtp-in.l.google.com[2a00:1450::1b]:25, delay=2, "
    b"delays=1/0/0/1, dsn=4.7.0, status=deferred (host gmail-smtp-in.l.google.com[2a00:1450::1b]"
    b" said: 421-4.7.0 rate limited (in reply to end of DATA command))",
    b"Nov 28 17:34:00 mx1 postfix/bounce[7]: 1A2B3C4D5E: sender non-delivery notification: 0F1E",
    b"Nov 28 17:34:00 mx1 postfix/qmgr[3]: 1A2B3C4D5E: removed",
    b"Nov 28 17:34:00 mx1 postfix/qmgr[3]: 1A2B3C4D5E: removed extra",
    b"Nov 28 17:34:00 mx1 postfix/qmgr[3]: 4RzD1k0bXHz9rwN: from=<s@ours.example>, "
    b"status=expired, returned to sender",
    b"Nov 28 17:34:00 mx1 postfix/smtp[9]: 1A2B\x00C: to=<n@x.example>, relay=none, delay=1, "
    b"delays=1/0/0/0, dsn=4.4.1, status=deferred (connect to x: Connection refused)",
    b"Nov 28 17:34:00 mx1 postfix/smtp[9]: 1A2B3C4D5E: to=<bad\xff@x.example>, relay=none, "
    b"delay=1, delays=1/0/0/0, dsn=4.4.1, status=deferred (x)",
    b"Nov 28 17:34:00 mx1 postfix/smtp[9]: 1A2B3C4D5E: to=<cut@x.example>, relay=none, dela",
    b"garbage",
    b"",
]


# What VARIANTS hold, read off the lines (by index), not from the parser: deliveries 3, 9, 14
# (its NUL dropped) and 15 deferred, 5 and 6 sent, 4 bounced, 7 to a content filter; 8 a
# verify probe; the expiry 13 names no deferred recipient (those were on mx2): one event;
# 12 and 16 Postfix's but not understood, 16 a delivery line cut short before its status
# (left out, named), which takes 17 (no time stamp) for its rest; 18 not Postfix's.
VARIANT_STATS = {
    "lines": 19,
    "not_postfix": 1,
    "joined_lines": 1,
    "left_out.no_status": 1,
    "events.deferred": 4,
    "events.sent": 2,
    "events.bounced": 1,
    "events.expired": 1,
    "content_filter_relays": 1,
    "records.delivery": 8,
    "records.verify": 1,
    "records.client": 1,
    "records.message_id": 1,
    "records.queued": 1,
    "records.notification": 1,
    "records.removed": 1,
    "records.expired": 1,
    "records.unknown": 2,
    "unparsed.qmgr": 1,
    "unparsed.smtp": 1,
}


def test_fast_road_equals_general_road_on_variants_and_garbage() -> None:
    rng = random.Random(9)
    lines = list(VARIANTS)
    for _ in range(2000):  # the same lines cut short or with a byte changed
        line = rng.choice(VARIANTS)
        if rng.random() < 0.5:
            line = line[: rng.randrange(len(line) + 1)]
        elif line:
            i = rng.randrange(len(line))
            line = line[:i] + bytes([rng.randrange(256)]) + line[i + 1 :]
        lines.append(line)
    fast, general = fast_road(lines), general_road(lines)
    assert fast[0] == general[0]
    assert fast[1] == general[1]
    assert fast_road(VARIANTS)[1] == VARIANT_STATS


def test_block_road_equals_general_road_on_variants_and_garbage(block_scanner: str) -> None:
    # Bad input tried: the variants cut short, a byte changed (NUL, CR, newline, not UTF-8,
    # a "," inside a field), lines over 64 KiB, empty lines.
    rng = random.Random(11)
    lines = list(VARIANTS)
    for _ in range(3000):
        line = rng.choice(VARIANTS)
        if rng.random() < 0.4:
            line = line[: rng.randrange(len(line) + 1)]
        elif line:
            i = rng.randrange(len(line))
            line = (
                line[:i]
                + bytes([rng.choice((0, 10, 13, 44, 60, 62, 0xFF, rng.randrange(256)))])
                + line[i + 1 :]
            )
        lines.append(line)
    big = VARIANTS[3].replace(b"full (in", b"full " + b"x" * 70000 + b" (in")
    lines += [big, b"", VARIANTS[0] + b"\r", b"\xef\xbb\xbf" + VARIANTS[1]]
    assert_block_road_equals_general_road(lines)
    events, stats = block_road(b"\n".join(lines) + b"\n", maillog.BLOCK)
    assert block_road(b"\n".join(VARIANTS) + b"\n", maillog.BLOCK)[1] == VARIANT_STATS
    # changing or cutting a line never makes one longer: `big` is the one line cut
    assert stats["cut_lines"] == 1


def test_block_road_equals_general_road_on_shapes_it_reads(block_scanner: str) -> None:
    # Each shape the scanner reads, next to near misses that must go to the general parser.
    head = b"Nov 28 17:34:00 mx1 postfix/"
    q = b"1A2B3C4D5E: "
    lines = [
        head + b"qmgr[3]: " + q + b"from=<>, size=12, nrcpt=1 (queue active)",
        head + b"qmgr[3]: " + q + b"from=<a b@x>, size=12, nrcpt=1 (queue active)",
        head + b"qmgr[3]: " + q + b"from=<a@x>, size=99999999999999999999, nrcpt=1 (queue active)",
        head + b"qmgr[3]: " + q + b"from=<a@x>, size=12, nrcpt=1 (queue deferred)",
        head + b"smtpd[5]: " + q + b"client=[192.0.2.1]",
        head + b"smtpd[5]: " + q + b"client=a b[192.0.2.1]",
        head + b"smtpd[5]: " + q + b"client=a[192.0.2.1], orig_queue_id=1F, orig_client=b[1.2.3.4]",
        head + b"smtpd[5]: " + q + b"client=a[192.0.2.1",
        head + b"cleanup[6]: " + q + b"message-id=",
        head + b"cleanup[6]: " + q + b"message-id=<a,b@c>",
        head + b"smtpd[6]: " + q + b"message-id=<a@c>",
        head + b"bounce[7]: " + q + b"postmaster non-delivery notification: 0F1E",
        head + b"smtp[7]: " + q + b"postmaster non-delivery notification: 0F1E",
        head + b"smtp[7]: " + q + b"removed",
        head + b"smtp[9]: " + q + b"to=<d@x>, relay=r, delay=1, delays=1/0/0/0, dsn=4.2.2, "
        b"status=deferred (452 4.2.2 full)",
        head + b"qmgr[3]: " + q + b"from=<s@ours>, status=expired, returned to sender",
        head + b"qmgr[3]: " + q + b"from=<>, status=expired, returned to sender",
        head + b"qmgr[3]: " + q + b"from=<a b@x>, status=expired, returned to sender",
        head + b"smtp[3]: " + q + b"from=<s@ours>, status=expired, returned to sender",
        head + b"qmgr[7]: " + q + b"to=<a@x>, relay=none, delay=1, delays=1/0/0/0, dsn=4.3.0, "
        b"status=deferred (mail transport unavailable)",
        head + b"smtp[9]: " + q + b"to=<a@x>, orig_to=b@x, relay=r, conn_use=12, delay=, "
        b"delays=a/b, dsn=5.0.0, status=bounced (550 5.1.1 <a@x>: no)",
        head + b"smtp[9]: " + q + b"to=<a@x>, orig_to=<>, relay=r, delay=1, delays=1/0/0/0, "
        b"dsn=2.0.0, status=sent",
        # the reply code and the recipient's domain as the scanner gives them, and replies
        # whose codes event_of must read itself (an X.0.0 dsn the reply does not confirm)
        *(
            head + b"smtp[9]: " + q + b"to=<" + to + b">, relay=r, delay=1, delays=1/0/0/0, "
            b"dsn=" + dsn + b", status=bounced (" + reply + b")"
            for to, dsn, reply in (
                (b"a@Mixed.EXAMPLE", b"5.0.0", b"550 5.0.0"),
                (b"noat", b"5.0.0", b"550 5.0.0 no"),
                (b"a@b@C.x", b"5.0.0", b"550 5.0.01 no"),
                (b"a@x", b"5.0.0", b"550 4.2.2 full"),
                (b"a@x", b"4.0.0", b"450-4.0.0 busy"),
                (b"a@x", b"5.0.0", b"550-5.0.0"),
                (b"a@x", b"5.1.1", b"550"),
                (b"a@x", b"5.1.1", b"25 short"),
                (b"a@x", b"5.1.1", b"2500 x"),
                (b"a@x", b"5.1.1", b"350 5.1.1 odd"),
                (b"a@x", b"5.0.0", b"host x[1.2.3.4] said: 550 5.7.1 no (in reply to RCPT TO)"),
                (b"a@x", b"5.0.0", b"host x said: 550 5.1.1234 no"),
                (b"a@x", b"5.0.0", b"host x said: 550 5.1234.1 no"),
                (b"a@x", b"5.0.0", b"host x said: 550 5.1.1_x"),
                (b"a@x", b"5.0.0", b"host x said: 550 5.1.1x"),
                (b"a@x", b"5.0.0", b"host x said: 550-5.1.1 no"),
                (b"a@x", b"5.0.0", b"host x said: 550 5.1.1."),
                (b"a@x", b"5.0.0", b"host x said: 550 5.1."),
                (b"a@x", b"5.0.0", b"host x said: 550 5..1"),
                (b"a@x", b"5.0.0", b"host x said: 550 5.0.0 same"),
                (b"a@x", b"5.0.0", b"host x said: 550"),
                (b"a@x", b"5.0.0", b"host x said: 55"),
                (b"a@x", b"5.0.0", b"host x said: 650 5.1.1"),
                (b"a@x", b"5.0.0", b"host x said: 550 6.1.1"),
                (b"a@x", b"5.1.1", b"host x said: 550 5.2.2 other"),
                (b"a@x", b"4.0.0", b"x refused to talk to me: 450 4.3.2 busy"),
                (b"a@x", b"4.0.0", b"123 x said: 450 4.3.2 busy"),
                (b"a@x", b"4.0.0", b"connect to x[1.2.3.4]:25: Connection refused"),
                (b"a@x", b"2.0.0", b"delivered to maildir"),
                (b"a@x", b"5.0.0", b"550 5.1.1 said: 550 5.2.2"),
            )
        ),
        # delay and delays as float() reads them, odd ones included
        *(
            head
            + b"smtp[9]: "
            + q
            + b"to=<a@x>, relay=r, delay="
            + d
            + b", delays="
            + ds
            + b", dsn=2.0.0, status=sent (250 2.0.0 ok)"
            for d, ds in (
                (b"1_0", b" 1/0/0/0"),
                (b"inf", b"1/2/3/4/5"),
                (b"12.", b"1e3/0/0/.5"),
                (b"0.00000000000000000000000000000000001", b"1//0/0"),
                (b"99999999999999999999999999999999999", b"1/0/0/0/"),
                (b"-1", b"1e400/-0/0/0"),
            )
        ),
        head + b"smtp[9]: " + q + b"to=<a@x>, relay=r, conn_use=, delay=1, delays=1/0/0/0, "
        b"dsn=2.0.0, status=sent (250 ok)",
        head + b"smtp[9]: " + q + b"to=<a@x>, relay=r, delay=1, delays=1/0/0/0, dsn=2.0.0, "
        b"status=sentx (250 ok)",
        head + b"smtp[9]: 1a2b3c4d5e: to=<a@x>, relay=r, delay=1, delays=1/0/0/0, dsn=2.0.0, "
        b"status=sent (250 ok)",
        b"Nov 28 17:34:00 mx1 postfix/smtp: " + q + b"removed",
        b"Nov 28 17:34:00 mx1 foo: bar postfix/qmgr[3]: " + q + b"removed",
        b"2026-11-28T17:34:01.000123+01:00 mx2 postfix/qmgr[3]: " + q + b"removed",
        b"2026-11-28T17:34:01 mx2 postfix/qmgr[3]: " + q + b"removed",
        b"2026-11-28T17:34:01Z postfix/qmgr[3]: " + q + b"removed",
        b"Nov 28 17:34:00.123 mx1 postfix/qmgr[3]: " + q + b"removed",
        b"2026 Nov 28 17:34:00 mx1 postfix/qmgr[3]: " + q + b"removed",
        b"Nov 28 2026 17:34:00 mx1 postfix/qmgr[3]: " + q + b"removed",
        b"Nov 28 7:34:00 h postfix/qmgr[3]: " + q + b"removed",
        b"Nov 28 17:34:00 mx1 sendmail[3]: " + q + b"removed",
        b"Nov 28 17:34:00 mx1 postfix-bulk1/qmgr[3]: " + q + b"removed",
        b"Nov 28 17:34:00 mx1 postfix/qmgr[3]:  " + q + b"removed",
        b"Nov 31 17:34:00 mx1 postfix/qmgr[3]: " + q + b"removed",
        b"Nov 28 17:34:00 mx1 postfix/qmgr[3]: " + q + b"removed",
        b"Nov 28 17:34:00 mx1 postfix/qmgr[3]: " + q + b"removed",
    ]
    assert_block_road_equals_general_road(lines)


def test_fast_road_equals_general_road_on_grok_corpus(shared_corpus: Path) -> None:
    lines = []
    for path in sorted((shared_corpus / "postfix-lines" / "grok-tests").glob("*.yaml")):
        case = yaml.safe_load(path.read_text())
        service, message = _case_line(path.stem, str(case["data"]))
        lines.append(f"Nov 28 17:33:59 mx1 postfix/{service}[4242]: {message}".encode())
    assert fast_road(lines) == general_road(lines)
    assert_block_road_equals_general_road(lines)


def test_more_real_world_shapes() -> None:
    head = "Nov 28 17:33:59 mx1 postfix/"
    cases = {
        # qmgr logs a recipient's outcome itself when a transport is unavailable
        "qmgr[3]: 3A4B5C6D7E: to=<u@x.example>, relay=none, delay=0.1, delays=0.1/0/0/0, "
        "dsn=4.3.0, status=deferred (mail transport unavailable)": (
            "delivery",
            "status",
            "deferred",
        ),
        "cleanup[4]: 3A4B5C6D7E: reject: header Subject: win big from x[192.0.2.1]; from=<a@x> "
        "to=<b@y> proto=ESMTP helo=<x>: 5.7.1 message content rejected": ("reject", "dsn", "5.7.1"),
        "cleanup[4]: 3A4B5C6D7E: resent-message-id=<a@b>": (
            "ignored",
            "reason",
            "resent message id",
        ),
        "smtpd[5]: too many errors after RCPT from unknown[192.0.2.1]": (
            "lost_connection",
            "client_ip",
            "192.0.2.1",
        ),
        "smtpd[5]: NOQUEUE: reject: MAIL from x[192.0.2.1]: 452 4.3.1 Insufficient system storage;"
        " proto=ESMTP helo=<x>": ("reject", "reply", "452 4.3.1 Insufficient system storage"),
        "smtp[6]: setting up TLS connection to mx.x.example[192.0.2.5]:25": (
            "ignored",
            "reason",
            "TLS session detail",
        ),
    }
    for message, (kind, field, value) in cases.items():
        rec = parse_line((head + message).encode())
        assert rec is not None and rec.kind == kind, (message, rec)
        assert rec.get(field) == value, (message, rec)


def test_reply_code_shortcut_agrees_with_the_regex() -> None:
    from mailpulse.collectors.logparse import delivery_codes
    from mailpulse.collectors.logparse import reply_codes as codes

    rng = random.Random(3)
    base = [
        "250 2.0.0 Ok",
        "550-5.7.1 spam",
        "421 4.7.0 later",
        "250Ok",
        "2.0.0 x",
        "",
        "5",
        "host a[1.2.3.4] said: 550 5.1.1 no",
        "25",
        "450-",
        "2\u00b23 x",
        "350 go ahead",
    ]
    for _ in range(3000):
        r = rng.choice(base)
        if r and rng.random() < 0.5:
            i = rng.randrange(len(r))
            r = r[:i] + rng.choice("0123456789 -.x\u0663") + r[i + 1 :]
        for dsn in ("2.0.0", "5.0.0", "4.0.0"):
            _dsn, reply_code, _logged = delivery_codes(dsn, r)
            assert reply_code == codes(r)[0], r
