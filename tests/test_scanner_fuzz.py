"""Differential fuzzing of the log roads: the C block scanner and its pure-Python twin must
give the same items for every line, and the block road (Correlator.feed_block, with either
scanner), the line road (Correlator.feed_lines) and the general parser (Correlator.feed_line)
the same events, with the same type for every field, and the same stats, for realistic
Postfix lines and for the same lines damaged.

The lines are generated from a seed, so a failure is reproduced by running the test again.
Field values are drawn from one pool shared by every field (a delay of 250 next to a reply
code 250, a relay named like a dsn, a domain equal to a relay...), since a value read as one
field's type must never come back as another's. `python -m tests.test_scanner_fuzz FILE
[LINES]` runs the same corpus with the scanner built in FILE (the sanitizer test does that).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import random
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mailpulse.collectors import maillog, scanner
from mailpulse.collectors.logparse import MAX_LINE
from mailpulse.collectors.maillog import Correlator

from mailpulse.events import DeliveryEvent

SEED = 20240
LINES = 24_000  # about ten seconds for the three roads
BATCH = 400  # lines per Correlator: queue ids recur within a batch, so lines correlate

# Values every field draws from now and then, chosen to look like another field's value.
POOL = [
    "250", "550", "452", "421", "0", "1", "10", "1.5", "0.13", "250.0", "-1", "1e3", "nan",
    "inf", "2.0.0", "5.1.1", "4.2.2", "5.0.0", "4.0.0", "sent", "deferred", "bounced",
    "expired", "none", "local", "127.0.0.1", "192.0.2.1", "gmail.com", "GMAIL.COM", "g@x",
    "0.1/0/0/1", "1/2/3", "1/0/0/0/0", "01A9120F4DC", "4RzD1k0bXHz9rwN", "", " ", "<>",
    "a, b", "x=y", "(250 ok)", "250 2.0.0 OK", "mx[192.0.2.5]:25", "Dec 01 06:59:15",
    "\u00e9", "\u00b2", "1_0", "٣",
]  # fmt: skip
STAMPS = ["Dec 01 06:59:15", "Nov 28 17:34:00", "Nov  3 01:02:03", "2026-11-28T17:34:01+01:00",
          "2026-11-28T17:34:01.000123Z", "Dec 01 06:59:15.250"]  # fmt: skip
NODES = ["node1", "mx1", "250", "5.1.1", ""]  # "": a line without its host
# A few processes, as on a node: the block road reads a line itself only once its header
# ("node postfix/smtp[pid]") is known, so a new pid on every line would test the general road
PIDS = [42, 1100, 12364, 45475]
INSTANCES = ["postfix", "postfix-bulk1", "postfix/amavis", "postfix/10025"]
AGENTS = ["smtp", "smtp", "smtp", "lmtp", "virtual", "local", "error", "relay", "qmgr", "pipe"]
DOMAINS = ["gmail.com", "web.de", "Outlook.COM", "x.example", "mail.ru"]
REPLIES = [
    "250 2.0.0 Ok: queued",
    "host {relay} said: 421 4.7.0 Too many messages, try again later (in reply to RCPT TO command)",
    "host {relay} said: 452 4.2.2 <{rcpt}>: Recipient address rejected: Mailbox full (in reply "
    "to RCPT TO command)",
    "host {relay} said: 554 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using "
    "zen.spamhaus.org (in reply to RCPT TO command)",
    "host {relay} said: 550 5.1.1 <{rcpt}>: user unknown (in reply to RCPT TO command)",
    "host {relay} said: 550 5.7.1 Message rejected as spam (in reply to end of DATA command)",
    "550 5.0.0 no",
    "450-4.0.0 busy",
    "host {relay} said: 550 {code} odd",
    "{code} {dsn} {code}",
    "{code}",
    "delivered to mailbox",
    "delivered via dovecot service",
    "connect to {relay}: Connection refused",
    "mail transport unavailable",
    "x refused to talk to me: 450 4.3.2 busy",
    "{code}-{dsn} {rcpt}",
]


def pick(rng: random.Random, usual: str, p: float = 0.12) -> str:
    """The usual value, or now and then one from the shared pool."""
    return rng.choice(POOL) if rng.random() < p else usual


def qid(rng: random.Random, ids: list[str]) -> str:
    if ids and rng.random() < 0.8:
        return rng.choice(ids)
    if rng.random() < 0.05:  # an id rewritten before the log was shared
        new = "".join(rng.choice("0123456789ABCDEF") for _ in range(8)) + "xq"
    elif rng.random() < 0.25:  # a long queue id (enable_long_queue_ids)
        alphabet = "0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz"
        new = "".join(rng.choice(alphabet) for _ in range(rng.randint(10, 16)))
    else:
        new = "".join(rng.choice("0123456789ABCDEF") for _ in range(rng.randint(8, 12)))
    ids.append(new)
    return new


def realistic(rng: random.Random, ids: list[str]) -> str:
    """One Postfix line of a shape the fast roads read (or a near one)."""
    head = "{} {} {}/{{}}[{}]: {}: ".format(
        rng.choice(STAMPS),
        rng.choice(NODES) if rng.random() < 0.2 else "node1",
        rng.choice(INSTANCES),
        rng.choice(PIDS),
        pick(rng, qid(rng, ids), 0.05),
    )
    shape = rng.random()
    if shape < 0.45:
        user = f"{rng.choice(['ok', 'full', 'unknown', 'spam'])}-u{rng.randint(1, 9999)}"
        rcpt = pick(rng, f"{user}@{rng.choice(DOMAINS)}")
        host = rng.choice(["127.0.0.16", "mx.example", "gmail-smtp-in.l.google.com"])
        relay = pick(rng, rng.choice([f"{host}[{host}]:25", "none", "local", "dovecot"]))
        code = pick(rng, rng.choice(["250", "421", "452", "550", "554"]))
        dsn = pick(rng, rng.choice(["2.0.0", "4.7.0", "4.2.2", "5.1.1", "5.0.0", "4.0.0"]))
        delay = pick(rng, rng.choice(["0.16", "0.04", "1.5", "12", "250", "550", "0"]), 0.3)
        delays = pick(rng, rng.choice(["0.01/0.09/0/0.06", "0.1/0/0/1", "250/0/0/0"]))
        status = pick(rng, rng.choice(["sent", "deferred", "bounced", "expired"]), 0.05)
        if rng.random() < 0.03:  # an address verification probe
            status = "deliverable"
        reply = rng.choice(REPLIES).format(relay=relay, rcpt=rcpt, code=code, dsn=dsn)
        parts = [f"to=<{rcpt}>"]
        if rng.random() < 0.15:
            parts.append(f"orig_to=<{pick(rng, 'alias@x.example')}>")
        parts.append(f"relay={relay}")
        if rng.random() < 0.1:
            parts.append(f"conn_use={pick(rng, '2')}")
        parts += [f"delay={delay}", f"delays={delays}"]
        if rng.random() < 0.05:
            parts.append("tls=dane")
        parts += [f"dsn={dsn}", f"status={status} ({reply})"]
        if rng.random() < 0.05:  # Postfix before 2.3: no delays= nor dsn=
            parts = [p for p in parts if not p.startswith(("delays=", "dsn="))]
        end = "\r" if rng.random() < 0.03 else ""  # CRLF line endings
        return head.format(rng.choice(AGENTS)) + ", ".join(parts) + end
    if shape < 0.6:
        sender = pick(rng, f"bounce-{rng.randint(1, 9999999)}@bounces.lab.test")
        size, nrcpt = pick(rng, str(rng.randint(300, 90000))), pick(rng, "1")
        return head.format("qmgr") + f"from=<{sender}>, size={size}, nrcpt={nrcpt} (queue active)"
    if shape < 0.7:
        return head.format("qmgr") + "removed"
    if shape < 0.78:
        mid = pick(rng, f"<{rng.randint(1, 10**9)}.campaign@lab.test>")
        return head.format("cleanup") + f"message-id={mid}"
    if shape < 0.86:
        ip = pick(rng, "127.0.0.1")
        more = rng.choice(["", "", ", orig_queue_id=1F2E3D4C5B, orig_client=b[192.0.2.9]",
                           f", client_ip={pick(rng, '192.0.2.9')}", "x"])  # fmt: skip
        return head.format("smtpd") + f"client={pick(rng, 'unknown')}[{ip}]{more}"
    if shape < 0.92:
        sender = pick(rng, f"bounce-{rng.randint(1, 9999999)}@bounces.lab.test")
        return head.format("qmgr") + f"from=<{sender}>, status=expired, returned to sender"
    return head.format("bounce") + "sender non-delivery notification: " + pick(rng, "20F5820F502")


SPECIAL = b"\x00\n\r,<>= ()/@.:[]\xff\x80\xc3"


def mutate(rng: random.Random, line: bytes) -> bytes:
    """The line damaged once: a byte changed, cut, a separator doubled or lost, a NUL,
    non-ASCII, a huge field."""
    how = rng.randrange(9)
    i = rng.randrange(len(line) + 1)
    if how == 0:  # one byte changed
        new = rng.choice(SPECIAL) if rng.random() < 0.7 else rng.randrange(256)
        return line[:i] + bytes([new]) + line[i + 1 :]
    if how == 1:  # cut short (a writer killed mid-line)
        return line[:i]
    if how in (2, 3):  # a separator doubled, or lost
        seps = [m for m in range(len(line) - 1) if line[m : m + 2] == b", "]
        if seps:
            m = rng.choice(seps)
            return line[:m] + (b", , " if how == 2 else b" ") + line[m + 2 :]
        return line
    if how == 4:  # a NUL
        return line[:i] + b"\x00" + line[i:]
    if how == 5:  # non-ASCII text, valid or not
        return line[:i] + rng.choice(["\u00e9".encode(), b"\xe2\x82", "\u00b2".encode()]) + line[i:]
    if how == 6:  # a huge field: past the scanner's cache keys, or past the longest line
        n = rng.choice([97, 200, 70_000])
        eq = line.find(b"=", i)
        return line if eq < 0 else line[: eq + 1] + b"9" * n + line[eq + 1 :]
    if how == 7:  # a field given twice
        m = line.rfind(b", ", 0, i)
        e = line.find(b", ", i)
        return line if m < 0 or e < 0 else line[:e] + line[m:e] + line[e:]
    return line.replace(b", ", b",", 1)  # a separator without its space


def corpus(seed: int = SEED, n: int = LINES) -> Iterator[list[bytes]]:
    """Batches of lines: realistic ones, and a third of them damaged (some twice)."""
    rng = random.Random(seed)
    for _ in range(0, n, BATCH):
        ids: list[str] = []
        batch = []
        for _ in range(BATCH):
            line = realistic(rng, ids).encode()
            while rng.random() < 0.33:
                line = mutate(rng, line)
            batch.append(line)
        yield batch


def typed(value: Any) -> Any:
    """A value with the type of everything in it, so 250 (int), 250.0 and "250" differ, and
    NaN equals NaN."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [typed(v) for v in value])
    return (type(value).__name__, repr(value))


Outcome = tuple[list[Any], Any]
Road = Callable[[list[bytes]], Outcome]


def outcome(c: Correlator, events: Iterable[DeliveryEvent]) -> Outcome:
    """The events, then the stats and what the Correlator remembers of each message."""
    out = [typed(e.to_json()) for e in events]
    # a list, not a dict: the table's order decides which message is evicted first
    table = [(key, typed(dataclasses.asdict(m))) for key, m in c.messages.items()]
    return out, (dict(c.stats), table)


def general_road(lines: list[bytes]) -> Outcome:
    c = Correlator()
    return outcome(c, [e for line in lines for e in c.feed_line(line)])


def fast_road(lines: list[bytes]) -> Outcome:
    c = Correlator()
    return outcome(c, list(c.feed_lines(lines)))


def block_road(lines: list[bytes]) -> Outcome:
    c = Correlator()
    return outcome(c, c.feed_block(b"\n".join(lines) + b"\n"))


def run(road: Road, lines: list[bytes]) -> Outcome:
    """What the road gives, or the exception it raised (any is a failure)."""
    try:
        return road(lines)
    except Exception as e:  # noqa: BLE001 - reported with the line that raised it
        return [], f"raised {e!r}"


def first_difference(lines: list[bytes], road: Road) -> str:
    """The first line after which the road and the general parser part ways."""
    for n in range(1, len(lines) + 1):
        got, want = run(road, lines[:n]), run(general_road, lines[:n])
        if got != want:
            events = next(
                (f"event {i}, field: (this road, general parser) "
                 f"{ {k: (g[k], w[k]) for k in w if g.get(k) != w[k]} }"
                 for i, (g, w) in enumerate(zip(got[0], want[0], strict=False)) if g != w),
                f"{len(got[0])} events, general parser {len(want[0])}; stats and table "
                f"{got[1]}\n  general parser: {want[1]}",
            )  # fmt: skip
            return f"line {lines[n - 1]!r}\n  {events}"
    return "only when the lines come as one batch"


def differences(batches: Iterator[list[bytes]], roads: dict[str, Road]) -> list[str]:
    found = []
    for batch in batches:
        # a line holding "\n" after damage is two lines for every road alike
        lines = b"\n".join(batch).split(b"\n")
        want = run(general_road, lines)
        for name, road in roads.items():
            if run(road, lines) != want:
                found.append(f"{name}: {first_difference(lines, road)}")
        if len(found) >= 3:
            break
    return found


def all_roads(lines: list[bytes]) -> Outcome:
    """The general parser's outcome, once every other road is checked to give the same."""
    want = general_road(lines)
    roads = {"Python fast road": fast_road, "block road": block_road}
    for name, road in roads.items():
        assert road(lines) == want, f"{name}: {first_difference(lines, road)}"
    return want


def test_logs_parse_keeps_a_delay_a_number_and_a_reply_code_a_str(tmp_path: Path) -> None:
    # Bad input: none, an ordinary log where Postfix writes a delay of 250 s as "delay=250"
    # and replies begin "250": the scanner once gave the delay as the str "250" (and, the
    # other way round, a reply code 550 as 550.0).
    line = (
        "Nov 28 10:00:0{0} mx1 postfix/smtp[42]: 4A2B3C0{0}ABCD: to=<u{0}@gmail.com>, "
        "relay=g[192.0.2.1]:25, delay={1}, delays=0.1/0/0/1, dsn={2}, status={3} ({4})\n"
    )
    log = tmp_path / "mail.log"
    log.write_text(
        line.format(1, "1.1", "2.0.0", "sent", "250 2.0.0 OK")
        + line.format(2, "1.2", "2.0.0", "sent", "250 2.0.0 OK")
        + line.format(3, "250", "2.0.0", "sent", "250 2.0.0 OK")
        + line.format(4, "550", "4.2.2", "deferred", "452 4.2.2 full")
        + line.format(5, "1", "5.1.1", "bounced", "550 5.1.1 unknown")
        + line.format(6, "2", "1.1", "sent", "250 ok")  # a dsn equal to a delay: it crashed
    )
    r = subprocess.run(
        [sys.executable, "-m", "mailpulse", "logs", "parse", "--json", "--state-dir",
         str(tmp_path), str(log)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    events = list(map(json.loads, r.stdout.splitlines()))
    got = [(e["delay"], e["reply_code"], e["dsn"]) for e in events]
    assert got == [
        (1.1, "250", "2.0.0"),
        (1.2, "250", "2.0.0"),
        (250.0, "250", "2.0.0"),
        (550.0, "452", "4.2.2"),
        (1.0, "550", "5.1.1"),
        (2.0, "250", "1.1"),
    ]
    assert [type(d) for d, _, _ in got] == [float] * 6


def test_malformed_separators_read_alike_on_every_road() -> None:
    # Bad input: a sender holding ", ", "relay=<>", "delay=1.5, ,", a field given twice, a
    # size in brackets, a client line with a later client_ip= field.
    head = b"Nov 28 17:34:00 mx1 postfix/"
    q = b"1A2B3C4D5E: "
    tail = b"delays=1/0/0/0, dsn=2.0.0, status=sent (250 2.0.0 ok)"
    lines = [
        head + b"smtpd[5]: " + q + b"client=a[192.0.2.1], client_ip=192.0.2.9",
        head + b"qmgr[3]: " + q + b"from=<a, b@x>, size=12, nrcpt=1 (queue active)",
        head + b"qmgr[3]: " + q + b"from=<a@x>, size=<12>, nrcpt=1 (queue active)",
        head + b"smtp[9]: " + q + b"to=<a@x>, relay=<>, delay=1, " + tail,
        head + b"smtp[9]: " + q + b"to=<b@x>, relay=r, delay=1.5, , " + tail,
        head + b"smtp[9]: " + q + b"to=<c@x>, relay=r, delay=1, delay=2, " + tail,
    ]
    events, (stats, table) = all_roads(lines)
    # what the general parser reads there, field by field
    assert [(e["relay"], e["delay"]) for e in events] == [
        (("str", "''"), ("float", "1.0")),
        (("str", "'r'"), ("float", "1.5")),
        (("str", "'r'"), ("float", "2.0")),
    ]
    assert stats["records.queued"] == 2 and stats["records.client"] == 1
    message = dict(table)[("1A2B3C4D5E", "mx1", "postfix")]
    assert message["client"] == ("str", "'192.0.2.9'") and message["size"] == ("int", "12")


def test_sizes_that_are_no_number_are_none_not_a_traceback() -> None:
    # Bad input: a size of 70,000 digits (past int()'s limit), a superscript digit that
    # str.isdigit takes for a digit, Arabic-Indic digits.
    head = b"Nov 28 17:34:00 mx1 postfix/qmgr[3]: 1A2B3C4D5E: from=<a@x>, size="
    for size in (b"9" * 70_000, "\u00b2".encode(), "\u0663".encode(), b"1" * 19):
        _, (stats, table) = all_roads([head + size + b", nrcpt=1 (queue active)"])
        assert stats["records.queued"] == 1, size[:20]
        assert [m["size"] for _, m in table] == [("NoneType", "None")], size[:20]


def test_corpus_holds_the_collisions_and_damage_it_is_meant_to() -> None:
    # The generator itself: values that collide across fields, and each kind of damage.
    lines = [line for batch in corpus(n=4000) for line in batch]
    text = b"\n".join(lines)
    assert b"delay=250," in text and b"(250 " in text  # a delay equal to a reply code
    assert b"relay=5.1.1," in text and b"dsn=5.1.1," in text
    assert b"\x00" in text and b"\xff" in text and b", , " in text and b"9" * 70_000 in text
    kinds = Correlator()
    kinds.feed_block(text + b"\n")
    assert kinds.stats["records.delivery"] > 1000 and kinds.stats["cut_lines"] > 0


def test_c_scanner_python_road_and_general_parser_agree_on_fuzzed_lines() -> None:
    # Bad input: realistic lines whose fields take each other's values, then damaged (bytes
    # changed, cut, separators doubled or lost, NULs, non-ASCII, fields of 97 B to 70 KB).
    c_scan()
    found = differences(corpus(), {"C scanner": block_road, "line road": fast_road})
    assert not found, "\n".join(found)


def test_python_block_road_agrees_where_the_scanner_is_not_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Bad input: as above, through feed_block when the C scanner is missing.
    monkeypatch.setattr(maillog, "scan", scanner.scan)
    found = differences(corpus(n=LINES // 4), {"Python block road": block_road})
    assert not found, "\n".join(found)


def c_scan() -> Callable[..., list[tuple[Any, ...]]]:
    try:
        from mailpulse.collectors._fastlog import scan
    except ImportError:
        pytest.skip("the C block scanner is not built (pip install -e . builds it with gcc)")
    return scan


def item_differences(c: Callable[..., Any], batches: Iterable[list[bytes]]) -> list[str]:
    """Where the two scanners' items differ, line by line, for a batch as one block: cut at
    various ends (in a line, after it, past the block) and with various longest lines."""
    found = []
    rng = random.Random(SEED)
    for batch in batches:
        data = b"\n".join(batch) + b"\n"
        for end, max_line in ((len(data) - 1, MAX_LINE), (-1, MAX_LINE),
                              (rng.randrange(len(data)), rng.choice([0, 40, 120, MAX_LINE])),
                              (len(data) + 5, 200)):  # fmt: skip
            want, got = c(data, max_line, end), scanner.scan(data, max_line, end)
            if typed(got) != typed(want):  # types too, and NaN equal to NaN
                pairs = enumerate(zip(got, want, strict=False))
                i = next((i for i, (g, w) in pairs if typed(g) != typed(w)), len(want))
                line = data[want[i][1] : want[i][2]] if i < len(want) else b"(past the end)"
                shown = [(it[:1] + it[3:]) if it else None for it in (got[i:i + 1] or [()]) +
                         (want[i:i + 1] or [()])]  # fmt: skip
                found.append(f"end {end}, max_line {max_line}: line {line!r}\n"
                             f"  Python {shown[0]}\n  C      {shown[1]}")  # fmt: skip
        if len(found) >= 3:
            break
    return found


# Lines at the edge of each shape: one character either side of what the scanners take.
EDGES = [
    *(f"{q}: removed" for q in ("1234", "12345", "1" * 24, "1" * 25, "bcdfghjkl", "bcdfghjklm",
                                "b" * 24, "b" * 25, "ABCDE", "abcde12345", "12345:x")),
    *(f"1A2B3C4D5E: to=<a@x>, relay=r, delay=1, delays=1/0/0/0, dsn=2.0.0, status={st}"
      for st in ("sent", "sent ", "sentx", "sent(250 ok)", "sent  (250 ok)", "sent ()",
                 "sent (", "sent (250 ok", "expired (x)", "verify (x)")),
    *(f"1A2B3C4D5E: to=<a@x>, {ot}relay=r, {cu}delay=1, delays=1/0/0/0, dsn=2.0.0, status=sent"
      for ot in ("", "orig_to=<>, ", "orig_to=b, ", "orig_to=<b, c>, ", "orig_to=<b>,", "orig_to=")
      for cu in ("", "conn_use=2, ", "conn_use=, ", "conn_use=x, ", "conn_use=2,")),
    *(f"1A2B3C4D5E: from=<a@x>, size={n}, nrcpt={r} (queue active){t}"
      for n in ("1" * 18, "1" * 19, "", "1 ") for r in ("1", "1" * 19) for t in ("", " ")),
    *(f"1A2B3C4D5E: from=<{a}>, status=expired{t}"
      for a in ("", "a b", "a,b", "a@x") for t in ("", ", returned to sender")),
    *(f"1A2B3C4D5E: client={c}"
      for c in ("a[1.2.3.4]", "a,b[1.2.3.4]", "a b[1.2.3.4]", "a\x1cb[1.2.3.4]", "[1,2]",
                "a[1.2.3.4], client_ip=9", "a[1.2.3.4]x client_ip=", "a[1.2.3.4", "a", "")),
    *(f"1A2B3C4D5E: message-id={m}" for m in ("<>", "<", ">", "", "<a@b>", "a@b>", "<<a>>")),
    "1A2B3C4D5E: removedx", "1A2B3C4D5E:  removed", "1A2B3C4D5E: sender notification: x",
    "1A2B3C4D5E: to=<a@x>, relay=r, sender non-delivery notification: x",
    "1A2B3C4D5E: notification: x", "1A2B3C4D5E:  notification: ", "1A2B3C4D5E: notification:",
]  # fmt: skip


def test_python_scanner_gives_the_c_scanners_items_on_fuzzed_lines() -> None:
    # Bad input: the fuzz corpus (fields taking each other's values, bytes changed, cut,
    # separators doubled or lost, NULs, non-ASCII, huge fields), cut at odd ends and read with
    # small longest lines; lines one character either side of each shape; an empty block and
    # blocks of newlines only.
    c = c_scan()
    edges = [
        f"Nov 28 17:34:00 mx1 postfix/{s}[3]: {e}".encode() for e in EDGES for s in ("smtp", "qmgr")
    ] + [
        b"x]: 1A2B3C4D5E: removed",
        b"x] 1A2B3C4D5E: removed",
        b"x]:1A2B3C4D5E: removed",
        b"]: 1A2B3C4D5E: removed",
    ]
    found = item_differences(c, [edges, *corpus()])  # fmt: skip
    assert not found, "\n".join(found)
    for data in (b"", b"\n", b"\n\n\n", b"\r\n", b"\x00"):
        assert typed(scanner.scan(data, MAX_LINE)) == typed(c(data, MAX_LINE)), data


def test_line_kinds_are_the_c_scanners_constants() -> None:
    # Bad input: none; the two producers must name the kinds alike, value for value.
    from mailpulse.collectors import _fastlog

    names = {n: getattr(_fastlog, n) for n in dir(_fastlog) if n.isupper()}
    assert names == {k.name: k.value for k in scanner.LineKind}
    # the values themselves: what the C source's comment and the tests above read as numbers
    assert [k.value for k in scanner.LineKind] == list(range(8))


def main(path: str, lines: int = LINES) -> int:
    """The corpus through the scanner built at `path` (the sanitizer test's build)."""
    spec = importlib.util.spec_from_file_location("mailpulse.collectors._fastlog", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    maillog.scan = module.scan
    found = differences(corpus(n=lines), {"C scanner": block_road})
    found += item_differences(module.scan, corpus(n=lines))
    print("\n".join(found) or f"{lines} lines, no difference")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], *map(int, sys.argv[2:3])))
