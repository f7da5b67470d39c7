"""Getting bounces in (Maildir, mbox, stdin for pipe(8), the command line) and hostile input."""

from __future__ import annotations

import base64
import io
import json
import mailbox
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from mailpulse.bounce import dsn
from mailpulse.bounce.intake import (
    EX_OK,
    EX_TEMPFAIL,
    MailItem,
    VerpSettings,
    analyse,
    pipe_delivery,
    process_maildir,
    read_paths,
)
from mailpulse.bounce.verp import make_address

from mailpulse.exits import PARTIAL as EX_PARTIAL

KEY = b"k"


def postfix_dsn(rcpt: str, verp: str, status: str = "5.1.1", text: str = "User unknown") -> bytes:
    """A DSN as Postfix writes it (shape from RFC 3464), written out by this test."""
    return (
        f"From: MAILER-DAEMON@mx.example (Mail Delivery System)\r\n"
        f"To: {verp}\r\nDelivered-To: {verp}\r\n"
        f"Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        f"--B\r\nContent-Type: text/plain\r\n\r\nThe mail system\r\n\r\n"
        f"<{rcpt}>: host mx.example said: 550 {status} {text}\r\n\r\n"
        f"--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.example\r\n\r\n"
        f"Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; 550 {status} {text}\r\n\r\n--B--\r\n"
    ).encode()


NOT_A_BOUNCE = b"From: friend@example.org\r\nTo: bounce-1@b.example\r\nSubject: hi\r\n\r\nhello\r\n"


def make_maildir(root: Path, messages: list[bytes]) -> None:
    for sub in ("new", "cur", "tmp"):
        (root / sub).mkdir(parents=True)
    for i, raw in enumerate(messages):
        (root / "new" / f"17000000{i:02d}.M1P1.host").write_bytes(raw)


def test_maildir_moves_each_message_once_and_a_crash_does_not_count_twice(tmp_path: Path) -> None:
    msgs = [
        postfix_dsn(f"u{i}@example.com", make_address(str(i), "b.example", KEY)) for i in range(6)
    ]
    make_maildir(tmp_path, [*msgs, NOT_A_BOUNCE])
    store: dict[str, list[dict[str, Any]]] = {}  # a consumer that stores by key, as documented
    calls = 0

    def crashing(item: MailItem, records: list[dict[str, Any]]) -> None:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise OSError("store went away")
        store[item.key] = records

    with pytest.raises(OSError):
        process_maildir(tmp_path, crashing, VerpSettings(KEY))
    left = sorted(p.name for p in (tmp_path / "new").iterdir())
    assert len(left) == 4  # three done and moved; the failed one and the rest stay

    assert process_maildir(tmp_path, crashing, VerpSettings(KEY)) == 4
    assert not any((tmp_path / "new").iterdir())
    assert len(list((tmp_path / ".processed").iterdir())) == 7
    records = [r for recs in store.values() for r in recs]
    assert sorted(r["recipient"] for r in records) == [f"u{i}@example.com" for i in range(6)]
    assert all(r["user_id"] == r["recipient"][1] and r["verp_verified"] for r in records)


def test_mbox_and_plain_directory(tmp_path: Path) -> None:
    box = mailbox.mbox(str(tmp_path / "bounces.mbox"))
    for i in range(3):
        box.add(postfix_dsn(f"m{i}@example.com", f"bounce-{i}@b.example"))
    box.close()
    items = list(read_paths([tmp_path / "bounces.mbox"]))
    assert [i.source for i in items] == [f"{tmp_path / 'bounces.mbox'}:{n}" for n in range(3)]
    assert [dsn.parse_message(i.raw)[0].recipient for i in items] == [
        f"m{i}@example.com" for i in range(3)
    ]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.eml").write_bytes(postfix_dsn("a@example.com", "bounce-1@b.example"))
    assert [i.source for i in read_paths([tmp_path / "d"])] == [str(tmp_path / "d" / "a.eml")]


def test_pipe_exit_codes_for_postfix() -> None:
    seen: list[list[dict[str, Any]]] = []
    raw = postfix_dsn("p@example.com", "bounce-5@b.example")
    assert pipe_delivery(io.BytesIO(raw), lambda i, r: seen.append(r), VerpSettings()) == EX_OK
    assert seen[0][0]["recipient"] == "p@example.com" and seen[0][0]["user_id"] == "5"

    def broken(item: MailItem, records: list[dict[str, Any]]) -> None:
        raise OSError("database is locked")

    # The store fails: Postfix must keep the message and retry (EX_TEMPFAIL), not bounce it.
    assert pipe_delivery(io.BytesIO(raw), broken, VerpSettings()) == EX_TEMPFAIL
    # Empty input and ordinary mail are accepted and produce nothing.
    assert pipe_delivery(io.BytesIO(b""), broken, VerpSettings()) == EX_OK
    seen.clear()
    assert pipe_delivery(io.BytesIO(NOT_A_BOUNCE), lambda i, r: seen.append(r), VerpSettings()) == 0
    assert seen == [[]]
    # The envelope recipient given by the transport names the user when headers do not.
    no_headers = raw.replace(b"Delivered-To: bounce-5@b.example\r\n", b"").replace(
        b"To: bounce-5@b.example", b"To: postmaster@b.example"
    )
    seen.clear()
    pipe_delivery(
        io.BytesIO(no_headers), lambda i, r: seen.append(r), VerpSettings(), "bounce-8@b.example"
    )
    assert seen[0][0]["user_id"] == "8"


def run_cli(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "mailpulse", "bounce", "parse", *args],
        input=stdin,
        capture_output=True,
        env={**os.environ, **(env or {})},
    )


def test_cli_json_fields_stdin_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "one.eml"
    f.write_bytes(postfix_dsn("c@example.com", make_address("31", "b.example", KEY)))
    out = run_cli("--json", str(f), env={"MAILPULSE_VERP_KEY": "k"})
    assert out.returncode == 0, out.stderr
    (obj,) = [json.loads(line) for line in out.stdout.splitlines()]
    want = {"file": str(f), "recipient": "c@example.com", "status": "5.1.1", "reply_code": "550"}
    want |= {"reason": "userunknown", "scope": "recipient", "hard": True, "action": "failed"}
    want |= {"user_id": "31", "verp_verified": True}
    want |= {"diagnostic": "550 5.1.1 User unknown", "recipients_omitted": 0}
    assert {k: obj[k] for k in want} == want

    piped = run_cli("--json", "-", stdin=f.read_bytes())
    assert json.loads(piped.stdout)["verp_verified"] is False  # no key given this time

    missing = run_cli(str(tmp_path / "nope.eml"), str(f))
    assert missing.returncode == 66 and b"nope.eml: no such file" in missing.stderr
    # The good file is still read: its one recipient below the two lines of the header.
    header, legend, line = missing.stdout.decode().splitlines()
    assert header.split("\t")[:3] == ["# file", "user_id", "recipient"]
    assert line.split("\t")[:3] == [str(f), "31?", "c@example.com"]  # no key: "?"
    assert legend.startswith("# user_id?: ") and "did not verify" in legend


# Hostile input: each case says what it tries; all must end with a result, not an exception.


def wrap(body_headers: str, body: bytes) -> bytes:
    return (
        b"From: MAILER-DAEMON@mx.example\r\nTo: bounce-1@b.example\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
        + body_headers.encode()
        + b"\r\n\r\n"
        + body
    )


def test_deep_multipart_nesting_is_cut_not_followed() -> None:
    # 3000 nested multiparts would overflow the stdlib parser's recursion.
    body = b"Content-Type: text/plain\r\n\r\n<u@example.com>: 550 5.1.1 User unknown\r\n"
    for i in range(3000):
        body = (
            b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n%s\r\n--b%d--\r\n'
            % (
                i,
                i,
                body,
                i,
            )
        )
    assert dsn.parse_message(wrap("X-Test: nesting", body)) == []


def test_very_large_message_is_read_up_to_the_limit() -> None:
    # 30 MB of returned message after a valid report: the report is found, the rest not kept.
    raw = postfix_dsn("big@example.com", "bounce-1@b.example") + b"x" * (30 << 20)
    assert [b.recipient for b in dsn.parse_message(raw)] == ["big@example.com"]
    assert len(dsn.bounded(raw)) == dsn.MAX_MESSAGE_BYTES


def test_base64_part_is_decoded_only_up_to_the_limit() -> None:
    # A text part that decodes to 6 MB: only MAX_DECODED_BYTES of it are ever decoded and kept.
    payload = base64.encodebytes(b"A" * (6 << 20))
    raw = wrap(
        'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: base64', payload
    )
    msg = dsn.email.message_from_bytes(raw, policy=dsn.email.policy.compat32)
    assert len(dsn._text_of(msg)) <= dsn.MAX_DECODED_BYTES
    assert dsn.parse_message(raw) == []


TEXT = "Content-Type: text/plain"
ERR = b"<u@example.com>: 550 5.1.1 User unknown\r\n"
CTE = "\r\nContent-Transfer-Encoding: "


@pytest.mark.parametrize(
    ("what", "headers", "body"),
    [
        ("unknown charset", TEXT + '; charset="x-no-such"', ERR),
        ("bytes invalid in the charset", TEXT + '; charset="utf-8"', ERR[:-2] + b"\xff\xfe\r\n"),
        ("broken base64", TEXT + CTE + "base64", base64.b64encode(ERR)[:-4] + b"!!!=\r\n"),
        ("broken quoted-printable", TEXT + CTE + "quoted-printable", ERR[:-2] + b"=ZZ=\r\n"),
        ("unknown transfer encoding", TEXT + CTE + "x-uuencode-ish", ERR),
        ("NUL bytes, malformed Content-Type", TEXT + ";;; charset", ERR[:-2] + b"\x00\r\n"),
    ],
)
def test_broken_encodings_still_give_the_recipient(what: str, headers: str, body: bytes) -> None:
    got = dsn.parse_message(wrap(headers, body))
    assert [b.recipient for b in got] == ["u@example.com"], what


def test_garbage_is_not_a_bounce() -> None:
    # Random bytes, an empty message, a header-only message: nothing, and no exception.
    for raw in (os.urandom(4096), b"", b"Subject: x\r\n", b"\r\n\r\n\r\n"):
        assert dsn.parse_message(raw) == []


def report_of(n: int) -> bytes:
    """A delivery-status report with one block per recipient u0..u(n-1), written out here."""
    blocks = "".join(
        f"Final-Recipient: rfc822; u{i}@example.com\nAction: failed\nStatus: 5.1.1\n\n"
        for i in range(n)
    )
    return wrap(
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"',
        b"--B\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; x\n\n"
        + blocks.encode()
        + b"--B--\n",
    )


def exim_notice(addrs: list[str], explained: int) -> bytes:
    """Exim's wording: every address in X-Failed-Recipients, the first `explained` of them also
    in the text with their own error paragraph."""
    paragraphs = "".join(
        f"  {a}\n    SMTP error from remote mail server after RCPT TO:<{a}>:\n"
        f"    550 5.1.1 <{a}>: Recipient address rejected: User unknown\n\n"
        for a in addrs[:explained]
    )
    return (
        "From: Mail Delivery System <Mailer-Daemon@mx.example.net>\n"
        "To: bounce-7@b.example\nSubject: Mail delivery failed: returning message to sender\n"
        f"X-Failed-Recipients: {', '.join(addrs)}\n\n"
        "A message that you sent could not be delivered to one or more of its\n"
        "recipients. This is a permanent error. The following address(es) failed:\n\n" + paragraphs
    ).encode()


def test_thousands_of_recipients_are_capped_and_counted() -> None:
    # Bad input: 20000 failed recipients in a notice, and 20000 report blocks. Exactly the first
    # MAX_RECIPIENTS (1000) are reported, in order, and the other 19000 are counted.
    lines = "".join(f"<user{i}@example.com>: 550 5.1.1 User unknown\n" for i in range(20000))
    got = dsn.parse(wrap("X-Test: many", lines.encode()))
    assert dsn.MAX_RECIPIENTS == 1000
    # The notice is read up to MAX_NOTICE_CHARS; the lines after it are counted, not lost.
    assert [b.recipient for b in got.records] == [f"user{i}@example.com" for i in range(1000)]
    assert got.omitted == 19000
    assert all(
        (b.status, b.reply_code, b.reason) == ("5.1.1", "550", "userunknown") for b in got.records
    )
    report = dsn.parse(report_of(20000))
    assert [b.recipient for b in report.records] == [f"u{i}@example.com" for i in range(1000)]
    assert report.omitted == 19000 and not report.truncated
    assert all(b.status == "5.1.1" and b.reason == "userunknown" for b in report.records)


def test_a_report_of_100k_recipients_says_what_it_cut(tmp_path: Path) -> None:
    # Bad input: one DSN naming 100,000 recipients (7 MB, under the read limit). The output says
    # how many were left out: in every record, on stderr, and in the exit code.
    f = tmp_path / "huge.eml"
    f.write_bytes(report_of(100_000))
    out = run_cli("--json", str(f))
    assert out.returncode == EX_PARTIAL == 3, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["recipient"] for r in records] == [f"u{i}@example.com" for i in range(1000)]
    assert {r["recipients_omitted"] for r in records} == {99000}
    assert out.stderr.decode() == (
        f"mailpulse: {f}: names 100000 recipients; 99000 past the first 1000 not shown\n"
    )
    text = run_cli(str(f))
    assert text.returncode == 3
    assert text.stdout.decode().splitlines()[-1] == f"# {f}: 99000 more recipients not shown"
    # Under the limit nothing is said and the exit code is 0.
    f.write_bytes(report_of(1000))
    fine = run_cli("--json", str(f))
    assert fine.returncode == 0 and fine.stderr == b""
    assert {json.loads(line)["recipients_omitted"] for line in fine.stdout.splitlines()} == {0}


def test_failed_recipients_header_flood_is_capped_and_each_diagnostic_is_its_own() -> None:
    # Bad input: 8,000 addresses in X-Failed-Recipients, the first 300 also explained in the
    # text (anyone can mail the bounce address). Once each record carried the whole notice.
    addrs = [f"user{i:05d}@example.org" for i in range(8000)]
    got = dsn.parse(exim_notice(addrs, explained=300))
    assert [b.recipient for b in got.records] == addrs[:1000]
    assert got.omitted == 7000
    for a, b in zip(addrs[:300], got.records[:300], strict=True):
        # Its own paragraph, nothing of the others'.
        assert b.diagnostic == (
            f"SMTP error from remote mail server after RCPT TO:<{a}>: "
            f"550 5.1.1 <{a}>: Recipient address rejected: User unknown"
        )
        assert (b.status, b.reply_code, b.reason, b.hard) == ("5.1.1", "550", "userunknown", True)
    # Not in the text: no other recipient's error is taken as evidence about them.
    for b in got.records[300:]:
        assert b.diagnostic == "" and not b.hard


@pytest.mark.parametrize(
    "filler",
    ["\n" * 60000, " \n" * 30000, "\t" * 60000, "-" * 60000, "@" * 60000, "<a@b.c>" * 9000],
)
def test_floods_of_blank_lines_tabs_dashes_or_at_signs_still_parse(filler: str) -> None:
    # Whitespace and punctuation floods once made the notice patterns backtrack for hours.
    body = "<u@example.com>: 550 5.1.1 User unknown\n" + filler + "\nfailed\n"
    got = dsn.parse_message(wrap("X-Test: flood", body.encode()))
    assert got and got[0].recipient == "u@example.com" and got[0].status == "5.1.1"


def test_an_unreadable_message_does_not_stop_the_maildir_as_a_user_without_rights() -> None:
    # Bad input: one message of a Maildir at mode 000, read by the CLI as nobody (not root, who
    # reads everything). The others are still read; the one is named, with exit 77 (EX_NOPERM).
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the command as nobody")
    root = Path(tempfile.mkdtemp(prefix="mailpulse-maildir-"))
    try:
        root.chmod(0o755)
        make_maildir(
            root, [postfix_dsn(f"u{i}@example.com", "bounce-1@b.example") for i in range(3)]
        )
        bad = sorted((root / "new").iterdir())[1]
        bad.chmod(0)
        out = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
            + [sys.executable, "-m", "mailpulse", "bounce", "parse", "--json", str(root)],
            capture_output=True,
            cwd="/",
        )
    finally:
        shutil.rmtree(root)
    assert out.returncode == 77, out.stderr
    assert [json.loads(x)["recipient"] for x in out.stdout.splitlines()] == [
        "u0@example.com",
        "u2@example.com",
    ]
    assert out.stderr.decode() == f"mailpulse: {bad}: permission denied\n"


def test_an_unreadable_message_is_left_in_place_by_the_collector(tmp_path: Path) -> None:
    # Bad input: a Maildir entry that cannot be opened (here a dangling link, which even root
    # cannot read): the collector names it, leaves it, and hands on the others.
    make_maildir(
        tmp_path, [postfix_dsn(f"u{i}@example.com", "bounce-1@b.example") for i in range(2)]
    )
    (tmp_path / "new" / "1700000099.M1P1.host").symlink_to(tmp_path / "gone")
    seen: list[str] = []
    n = process_maildir(
        tmp_path, lambda item, recs: seen.append(recs[0]["recipient"]), VerpSettings()
    )
    assert (n, seen) == (2, ["u0@example.com", "u1@example.com"])
    assert (tmp_path / "new" / "1700000099.M1P1.host").is_symlink()


def test_a_symlink_loop_is_called_a_loop(tmp_path: Path) -> None:
    # Bad input: a link loop given on the command line and one inside a directory; each is said
    # to be a loop (not "no such file"), exit 66, and the good file beside it is still read.
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    d = tmp_path / "d"
    d.mkdir()
    (d / "good.eml").write_bytes(postfix_dsn("g@example.com", "bounce-1@b.example"))
    (d / "loop.eml").symlink_to(d / "loop.eml")
    out = run_cli("--json", str(tmp_path / "a"), str(d))
    assert out.returncode == 66
    assert out.stderr.decode() == (
        f"mailpulse: {tmp_path / 'a'}: symbolic link loop\n"
        f"mailpulse: {d / 'loop.eml'}: symbolic link loop\n"
    )
    assert [json.loads(x)["recipient"] for x in out.stdout.splitlines()] == ["g@example.com"]


def test_endless_stdin_is_cut_at_the_size_limit() -> None:
    # Bad input: `yes | mailpulse bounce parse -`, a stdin that never ends. It is read up to the
    # same 8 MiB as a file, said so, exit 3; the timeout only catches a hang.
    yes = subprocess.Popen(["yes"], stdout=subprocess.PIPE)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "mailpulse", "bounce", "parse", "-"],
            stdin=yes.stdout,
            capture_output=True,
            timeout=120,
        )
    finally:
        yes.kill()
        yes.wait()
    assert out.returncode == EX_PARTIAL
    assert out.stderr == b"mailpulse: -: larger than 8 MiB; only its first 8 MiB read\n"
    assert out.stdout == b""


def test_a_signed_bounce_naming_many_recipients_vouches_for_none(tmp_path: Path) -> None:
    # A subscriber's own signed bounce address, and a forged report naming strangers with it.
    verp = make_address("5", "b.example", KEY)
    one = postfix_dsn("gone@example.com", verp)
    block = b"Final-Recipient: rfc822; gone@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n"
    strangers = b"".join(
        block.replace(b"gone@", f"stranger{i}@".encode()) + b"\r\n" for i in range(3)
    )
    many = one.replace(b"\r\n--B--", b"\r\n" + strangers + b"--B--")
    settings = VerpSettings(KEY)
    [alone] = analyse(MailItem("one", "k1", one), settings)
    assert alone["verp_verified"] is True
    found = analyse(MailItem("many", "k2", many), settings)
    assert len(found) == 4 and {r["user_id"] for r in found} == {"5"}
    assert not any(r["verp_verified"] for r in found)
