"""Postfix log lines -> LogRecord: pure functions over bytes, no I/O.

One syslog header split (both timestamp styles), one dispatch on the service name, then str
methods; regexes only for the few shapes that need them. Never raises on any input: a line that
is not Postfix's gives None, a Postfix line nobody understands gives kind "unknown".
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mailpulse.events import DELIVERY_AGENTS, STATUSES

# Longest line we look at: a longer one is cut there and flagged, not read into memory twice.
MAX_LINE = 64 * 1024

# Postfix daemons and tools, by the name they log under (the last part of the syslog name).
SERVICES = frozenset(
    [
        "smtp",
        "lmtp",
        "local",
        "virtual",
        "pipe",
        "error",
        "retry",
        "discard",
        "relay",
        "qmgr",
        "nqmgr",
        "oqmgr",
        "cleanup",
        "pickup",
        "smtpd",
        "postscreen",
        "dnsblog",
        "tlsproxy",
        "anvil",
        "scache",
        "bounce",
        "defer",
        "trace",
        "master",
        "postfix-script",
        "postsuper",
        "postqueue",
        "postdrop",
        "sendmail",
        "postmap",
        "postalias",
        "postlog",
        "postlogd",
        "tlsmgr",
        "trivial-rewrite",
        "verify",
        "showq",
        "flush",
        "proxymap",
        "spawn",
        "qmqpd",
        "postconf",
        "postmulti",
        "script",
        "postfix",  # a bare "postfix[123]"
    ]
)
# Sendmail's own programs: their lines ("stat=Sent") are counted apart, never read as Postfix's.
OTHER_MTAS = frozenset({"sendmail", "sm-mta", "sm-msp-queue"})
LEVELS = ("warning", "fatal", "panic", "error", "info")

_MONTHS = {
    m: i
    for i, m in enumerate(
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"], 1
    )
}
# Short ids are hex; long ids (enable_long_queue_ids) use a vowel-free base-52 alphabet.
QID_HEX = "0123456789ABCDEF"
QID_LONG = "0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz"
_QID = re.compile(f"([{QID_HEX}]{{5,24}}|[{QID_LONG}]{{10,24}}): ")
_REPLY = re.compile(r"([245]\d\d)(?:[ -]([245]\.\d{1,3}\.\d{1,3})\b)?")
_IN_REPLY = re.compile(r" \(in reply to (.+?)(?: command)?\)$")
_CLIENT = re.compile(r"(\S*?)\[([^\]]*)\](?::(\d+))?")


@dataclass(slots=True, repr=False, eq=False)
class LogRecord:
    """One parsed Postfix line. `fields` holds what its kind carries (see the handlers)."""

    time: float
    node: str
    instance: str
    program: str
    service: str
    pid: str
    kind: str
    queue_id: str
    fields: dict[str, str]

    def get(self, name: str, default: str = "") -> str:
        v = getattr(self, name, None) if name in self.__slots__ else None
        if v is not None and name != "fields":
            return str(v)
        return self.fields.get(name, default)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k) for k in self.__slots__ if k != "fields"}
        d.update(self.fields)
        return d

    def __repr__(self) -> str:
        return f"LogRecord({self.to_json()!r})"


# -- timestamps ------------------------------------------------------------------------------
# Lines come in bursts within one second: a one-entry cache per style makes conversion cheap.
_last_classic: list[Any] = [None, 0.0]
_FRACTION = re.compile(r"\.\d+")
_last_iso: list[Any] = [None, 0.0]


def _classic_time(mon: str, day: str, clock: str, year: str = "") -> float | None:
    """`Nov 28 17:33:59[.123]` in local time; the year is guessed when the line has none."""
    dot = clock.find(".")
    frac = 0.0
    if dot > 0:
        try:
            frac = float(clock[dot:])
        except ValueError:
            return None
        clock = clock[:dot]
    key = (mon, day, clock, year)
    if _last_classic[0] == key:
        return float(_last_classic[1]) + frac
    m = _MONTHS.get(mon)
    try:
        hh, mm, ss = clock.split(":")
        d, h, mi, s = int(day), int(hh), int(mm), int(ss)
        now = time.time()
        y = int(year) if year else time.localtime(now).tm_year
        t = time.mktime((y, m or 0, d, h, mi, s, 0, 0, -1))
        if not year and t > now + 86400 * 2:  # a December line read in January
            t = time.mktime((y - 1, m or 0, d, h, mi, s, 0, 0, -1))
    except (ValueError, OverflowError, TypeError):
        return None
    if not m:
        return None
    _last_classic[0], _last_classic[1] = key, t
    return t + frac


def _iso_time(stamp: str) -> float | None:
    """RFC 3339 as rsyslog writes it: `2026-11-28T17:33:59.123456+01:00` (zone optional)."""
    base, rest = stamp[:19], stamp[19:]
    frac = 0.0
    if rest.startswith("."):
        m = _FRACTION.match(rest)
        if m is None:
            return None
        frac = float(m.group())
        rest = rest[m.end() :]
    key = (base, rest)
    if _last_iso[0] == key:
        return float(_last_iso[1]) + frac
    try:
        dt = datetime.fromisoformat(base + (rest if rest != "Z" else "+00:00"))
        t = dt.timestamp()
    except (ValueError, OverflowError):
        return None
    _last_iso[0], _last_iso[1] = key, t
    return t + frac


# -- the line --------------------------------------------------------------------------------
def parse_line(line: bytes | str) -> LogRecord | None:
    """One log line -> LogRecord, or None when it is not a Postfix line. Never raises."""
    try:
        return _parse(line)
    except Exception:  # noqa: BLE001 - garbage must be counted by the caller, never crash it
        return _broken(line)


def _broken(line: bytes | str) -> LogRecord | None:
    return LogRecord(0.0, "", "", "", "", "", "unknown", "", {"reason": "parser error"})


def _parse(line: bytes | str) -> LogRecord | None:
    if isinstance(line, bytes):
        cut = len(line) > MAX_LINE
        s = (line[:MAX_LINE] if cut else line).decode("utf-8", "replace")
    else:
        cut = len(line) > MAX_LINE
        s = line[:MAX_LINE] if cut else line
    if "\x00" in s:
        s = s.replace("\x00", "")
    if s[-1:] == "\n" or s[-1:] == "\r":  # CRLF endings too
        s = s.rstrip("\r\n")
    # Fast path: the two usual timestamp layouts, then "host tag: " looked up in a cache
    # (a busy node logs from a few hundred processes: the same few hundred headers).
    t, j = _stamp(s)
    i = -1 if t is None else s.find(": ", j)
    if t is None or i < 0:
        return _parse_slow(s, cut)
    return _record(t, _tag(s[j + 1 : i]), s[i + 2 :], cut)


def _record(t: float, hdr: tuple[Any, ...], msg: str, cut: bool) -> LogRecord | None:
    """The record of a line whose header is read: its handler reads the message."""
    if not hdr:
        return None
    node, instance, program, service, pid, handler = hdr
    if msg[:4] == "[ID " and "] " in msg:  # Solaris: "[ID 197553 mail.info] C589E3780: ..."
        msg = msg[msg.find("] ") + 2 :]
    rec = LogRecord(t, node, instance, program, service, pid, "unknown", "", {})
    handler(rec, msg)
    if rec.kind == "unknown":
        rec.fields["message"] = msg[:500]
        if "to=<" in msg and ("status=" in msg or "relay=" in msg):
            # a delivery line never vanishes unnamed
            rec.fields["left_out"] = _left_out(rec, msg)
    if cut:
        rec.fields["cut"] = "1"
    return rec


# What a line's syslog header says: time, node, instance, program, service, pid (LogRecord's).
Header = tuple[float, str, str, str, str, str]


def parse_header(prefix: str) -> Header | None:
    """ "Nov 28 17:33:59 host postfix/smtp[123]" (a line up to the ": " after its tag) ->
    its Header as the general parser reads it, or None when the general parser would read the
    line another way or not at all (another time stamp layout, a program that is not
    Postfix's). Never raises."""
    t, j = _stamp(prefix)
    if t is None or prefix.find(": ", j) >= 0:  # the line's first ": " must end the tag
        return None
    hdr = _tag(prefix[j + 1 :])
    return (t, *hdr[:5]) if hdr else None


def _stamp(s: str) -> tuple[float | None, int]:
    """The time of a line in one of the two usual layouts and where its stamp ends."""
    if s[9:10] == ":" and s[3:4] == " ":  # "Nov 28 17:33:59[.fff] host tag: msg"
        j = s.find(" ", 15)
        return (_classic_stamp(s[:j]) if j > 0 else None), j
    if s[4:5] == "-" and s[10:11] == "T":  # RFC 3339
        j = s.find(" ")
        return (_iso_time(s[:j]) if j > 0 else None), j
    return None, -1


def _tag(text: str) -> tuple[Any, ...]:
    """ "host postfix/smtp[123]", remembered: see _header."""
    hdr = _HEADERS.get(text)
    if hdr is None:
        hdr = _header(text.split(None, 1))
        if len(_HEADERS) > 4096:
            _HEADERS.clear()
        _HEADERS[text] = hdr
    return hdr


_HEADERS: dict[str, tuple[Any, ...]] = {}
_last_stamp: list[Any] = ["", None]


def _classic_stamp(stamp: str) -> float | None:
    if stamp == _last_stamp[0]:
        t: float | None = _last_stamp[1]
        return t
    parts = stamp.split()
    if len(parts) != 3:
        return None
    t = _classic_time(*parts)
    _last_stamp[0], _last_stamp[1] = stamp, t
    return t


def _header(parts: list[str]) -> tuple[Any, ...]:
    """ "host postfix/smtp[123]" -> (node, instance, program, service, pid, handler), or ()
    when the program is not Postfix's. The host may be missing ("postfix/smtp[123]"), the
    name bracketed without pid ("[postfix/smtpd]"); Sendmail's own programs get a handler
    that counts their lines apart."""
    if len(parts) == 1:
        parts = ["", parts[0]]
    if len(parts) != 2:
        return ()
    node, name = parts
    if " " in name:
        return ()
    if name[:1] == "[" and name[-1:] == "]":
        name = name[1:-1]
    pid = ""
    if name[-1:] == "]":
        b = name.rfind("[")
        if b < 0:
            return ()
        pid, name = name[b + 1 : -1], name[:b]
    instance, slash, program = name.partition("/")
    service = program.rpartition("/")[2] if slash else instance
    if not slash and service in OTHER_MTAS:
        return (node, instance, instance, service, pid, _other_mta)
    if service not in SERVICES and not (slash and instance.startswith("postfix")):
        return ()
    return (node, instance, program or instance, service, pid, _HANDLERS.get(service, _generic))


def _parse_slow(s: str, cut: bool) -> LogRecord | None:
    """Other layouts: a year before or after the date, and anything odd."""
    year_first = s[:1].isdigit()
    if year_first:  # RFC 3339, or "2026 Nov 28 17:33:59 host tag: msg" (a template)
        n = 4 if s[4:5] == "-" else 7
    else:  # "Nov 28 17:33:59 host tag: msg", or "Nov 28 2026 17:33:59 host tag: msg"
        words = s.split(None, 5)
        if len(words) < 6:
            return None
        n = 6 if ":" in words[2] else 7
    # the stamp's words, then "host tag: msg" (the host may be missing)
    parts = s.split(None, n - 3)
    if len(parts) < n - 2:
        return None
    if n == 4:
        t = _iso_time(parts[0])
    elif n == 6:
        mon, day, clock = parts[:3]
        t = _classic_time(mon, day, clock)
    else:
        if year_first:
            year, mon, day, clock = parts[:4]
        else:
            mon, day, year, clock = parts[:4]
        t = _classic_time(mon, day, clock, year)
    rest = parts[-1]
    i = rest.find(": ")
    if t is None or i < 0:
        return None
    return _record(t, _tag(rest[:i]), rest[i + 2 :], cut)


_STAMP = re.compile(
    rb"(?:[A-Z][a-z]{2} [ 0-9]?[0-9] |[0-9]{4} [A-Z][a-z]{2} |[0-9]{4}-[0-9]{2}-[0-9]{2}T)"
)


def has_stamp(line: bytes | str) -> bool:
    """Whether a line starts with a syslog time stamp (else it may be the rest of the line
    before it, as loggers that split long lines write it)."""
    head = line[:16] if isinstance(line, bytes) else line[:16].encode("utf-8", "replace")
    return _STAMP.match(head) is not None


# -- pieces shared by the handlers -----------------------------------------------------------
def _ignore(rec: LogRecord, why: str) -> None:
    """A line understood that carries no delivery fact: counted, not read."""
    rec.kind = "ignored"
    rec.fields["reason"] = why


def _level(rec: LogRecord, msg: str) -> bool:
    """`warning: ...` and friends: kind is the level, fields message."""
    colon = msg.find(": ")
    if 0 < colon < 8 and msg[:colon] in LEVELS:
        rec.kind = msg[:colon]
        rec.fields["level"] = msg[:colon]
        rest = msg[colon + 2 :]
        m = _QID.match(rest)  # "warning: 9BECF3F19D: ..." names a message
        if m and rec.kind != "info":
            rec.queue_id = m.group(1)
            rest = rest[m.end() :]
        rec.fields["message"] = rest
        return True
    return False


# What follows a queue id on the lines of a message: where a line reads "ID: to=<...", any
# alphanumeric ID is its queue id (logs anonymised before sharing rewrite them), never a level.
_RECORD_HEADS = (
    "to=<",
    "from=<",
    "message-id=",
    "resent-message-id=",
    "client=",
    "removed",
    "uid=",
    "orig_to=<",
    "sender non-delivery notification: ",
    "sender delay notification: ",
    "sender delivery status notification: ",
    "postmaster non-delivery notification: ",
    "reject: ",
    "milter-reject: ",
    "discard: ",
    "hold: ",
    "skipped, still being delivered",
    "requeued",
    "placed on hold",
    "released from hold",
)


def _queue_id(rec: LogRecord, msg: str) -> str | None:
    """Strip a leading queue id (or NOQUEUE) and return the rest, or None if there is none."""
    k = msg.find(": ", 5, 26)
    if k > 0:
        qid = msg[:k]
        # str.strip is a cheap test for "only hex digits"; long ids go through the regex
        if (
            not qid.strip(QID_HEX)
            or (k >= 10 and _QID.match(msg))
            or (
                qid.isascii()
                and qid.isalnum()
                and qid not in LEVELS
                and msg.startswith(_RECORD_HEADS, k + 2)
            )
        ):
            rec.queue_id = qid
            return msg[k + 2 :]
    if msg.startswith("NOQUEUE: "):
        rec.queue_id = "NOQUEUE"
        return msg[9:]
    return None


def _client(fields: dict[str, str], text: str, prefix: str = "client") -> None:
    m = _CLIENT.match(text)
    if m:
        name = "client_name" if prefix == "client" else prefix + "_host"
        fields[name], fields[prefix + "_ip"] = m.group(1), m.group(2)
        if m.group(3):
            fields[prefix + "_port"] = m.group(3)


def _relay(fields: dict[str, str], relay: str) -> None:
    fields["relay"] = relay
    b = relay.find("[")
    if b < 0:
        fields["relay_host"] = relay
        return
    e = relay.find("]", b)
    fields["relay_host"] = relay[:b]
    inside = relay[b + 1 : e]
    if "/" in inside:  # a UNIX-domain socket: "host[private/dovecot-lmtp]"
        fields["relay_service"] = inside
    else:
        fields["relay_ip"] = inside
    if relay[e + 1 : e + 2] == ":":
        fields["relay_port"] = relay[e + 2 :]


def reply_codes(text: str) -> tuple[str, str]:
    """(reply code, enhanced code) as the remote sent them, from a reply text; "" if none."""
    if text[:3].isdigit():
        pos = 0
    else:
        pos = text.find(" said: ")
        if pos < 0:
            pos = text.find("talk to me: ")  # "refused to talk to me: 450 4.3.2 ..."
            if pos < 0:
                return "", ""
            pos += 12
        else:
            pos += 7
    m = _REPLY.match(text, pos)
    if not m:
        return "", ""
    return m.group(1), m.group(2) or ""


def delay_of(text: str) -> float:
    """delay=: its float, 0.0 when it is empty or not a number."""
    try:
        return float(text)
    except ValueError:
        return 0.0


def delays_of(text: str) -> tuple[float, float, float, float] | None:
    """delays=a/b/c/d: a tuple of four floats, None when it is not that."""
    try:
        a, b, c, d = map(float, text.split("/"))
    except ValueError:
        return None
    return (a, b, c, d)


def delivery_codes(logged_dsn: str, reply: str) -> tuple[str, str, str | None]:
    """A delivery line's (dsn, reply code, logged dsn): the remote's own codes where Postfix
    logged X.0.0 for them, with the dsn it logged then (else None)."""
    c0 = reply[:1]
    if c0 and c0 in "245" and reply[1:3].isdecimal() and reply[3:4] in (" ", "-"):
        code, remote = reply[:3], ""  # the usual "250 2.0.0 ...": no regex needed
        # When the reply starts with the logged code itself (not followed by a digit) they
        # agree; else the remote's enhanced code is read below.
        n = len(logged_dsn)
        agree = n and reply.startswith(logged_dsn, 4) and not reply[4 + n : 5 + n].isdecimal()
        if (not n or logged_dsn.endswith(".0.0")) and not agree:
            remote = reply_codes(reply)[1]
    else:
        code, remote = reply_codes(reply)
        if logged_dsn and not logged_dsn.endswith(".0.0"):
            remote = ""
    # Postfix logs X.0.0 when the remote's enhanced code disagrees with its reply code's
    # class (or is missing), and before 2.3 no dsn= at all; the remote's own codes are what
    # the analysis must see.
    if remote and remote != logged_dsn:
        return remote, code, logged_dsn or None
    return logged_dsn, code, None


def _keyvalues(fields: dict[str, str], text: str, sep: str) -> None:
    for item in text.split(sep):
        k, eq, v = item.partition("=")
        if eq:
            if v[:1] == "<" and v[-1:] == ">":
                v = v[1:-1]
            fields[k.strip()] = v


# -- handlers, one per service group ---------------------------------------------------------
def _delivery(rec: LogRecord, msg: str) -> None:
    rest = _queue_id(rec, msg)
    if rest is None:
        _smtp_other(rec, msg)
        return
    if rest.startswith("to="):
        i = rest.find(", status=")
        if i > 0:
            f = rec.fields
            head, tail = rest[:i], rest[i + 9 :]
            sp = tail.find(" ")
            status = tail if sp < 0 else tail[:sp]
            reply = "" if sp < 0 else tail[sp + 1 :]
            if reply[:1] == "(" and reply[-1:] == ")":
                reply = reply[1:-1]
            # to=<a>, orig_to=<b>, relay=h[ip]:port, conn_use=2, delay=1, delays=a/b/c/d, dsn=x
            if head.startswith("to=<"):
                e = head.find(">, ", 4)
                if e > 0:
                    f["to"] = head[4:e]
                    head = head[e + 3 :]
            _keyvalues(f, head, ", ")
            relay = f.get("relay")
            if relay is not None:
                _relay(f, relay)
            f["status"] = status
            f["reply"] = reply
            if status in STATUSES:
                rec.kind = "delivery"
            elif status.startswith(("deliverable", "undeliverable")):  # verify(8) probes
                # ("undeliverable-but-not-cached" too)
                rec.kind = "verify"
            return
    _smtp_trouble(rec, rest)


_TROUBLE_HEADS = (("lost connection with ", "lost_connection"), ("conversation with ", "timeout"))


def _smtp_trouble(rec: LogRecord, rest: str) -> None:
    """Per-message lines of smtp/lmtp that are not a recipient's status (no outcome)."""
    f = rec.fields
    if _level(rec, rest):
        return
    said = rest.find(" said: ")
    if rest.startswith("host ") and said > 0:
        rec.kind = "remote_reply"
        _client(f, rest[5:said], "relay")
        text = rest[said + 7 :]
        m = _IN_REPLY.search(text)
        if m:
            f["stage"] = m.group(1)
            text = text[: m.start()]
        f["reply"] = text
        f["reply_code"], f["dsn"] = reply_codes(text)
        return
    if rest.startswith("host ") and " refused to talk to me: " in rest:
        rec.kind = "remote_reply"
        host, _, text = rest[5:].partition(" refused to talk to me: ")
        _client(f, host, "relay")
        f["reply"] = text
        f["reply_code"], f["dsn"] = reply_codes(text)
        return
    for head, kind in _TROUBLE_HEADS:
        if rest.startswith(head):
            rec.kind = kind
            host, _, why = rest[len(head) :].partition(" while ")
            if kind == "timeout":
                host = host.removesuffix(" timed out")
            _client(f, host, "relay")
            f["stage"] = why
            return
    if rest.startswith("SASL authentication failed"):
        rec.kind = "auth_failed"
        server, _, text = rest.partition(" said: ")
        _client(f, server.rpartition(" ")[2], "relay")
        f["reply"] = text
        f["reply_code"], f["dsn"] = reply_codes(text)
        return
    if rest.startswith("enabling PIX workarounds"):
        return _ignore(rec, "PIX workaround notice")
    if rest.startswith(("Cannot start TLS", "TLS is required", "Server certificate not")):
        return _ignore(rec, "TLS session detail")
    rec.kind = "unknown"


def _smtp_other(rec: LogRecord, msg: str) -> None:
    f = rec.fields
    if _level(rec, msg):
        return
    if msg.startswith("connect to "):
        rec.kind = "connect_failed"
        host, _, why = msg[11:].partition(": ")
        _client(f, host, "relay")
        f["message"] = why
        return
    if " TLS connection established " in msg or msg.startswith(
        (
            "certificate verification failed",
            "SSL_connect error",
            "server certificate",
            "setting up TLS connection",
            "Host offered STARTTLS",
            "TLS ",
        )
    ):
        return _ignore(rec, "TLS session detail")
    rec.kind = "unknown"


def _qmgr(rec: LogRecord, msg: str) -> None:
    rest = _queue_id(rec, msg)
    f = rec.fields
    if rest is None:
        if not _level(rec, msg):
            rec.kind = "unknown"
        return
    if rest.startswith("to="):  # qmgr defers or bounces itself ("mail transport unavailable")
        _delivery(rec, msg)
        return
    if rest.startswith("from="):
        if ", status=expired" in rest:
            rec.kind = "expired"
            f["from"] = rest[6 : rest.find(">,")] if rest[5:6] == "<" else rest[5:].split(",")[0]
            f["status"] = "expired"
            f["reply"] = rest.partition(", status=expired, ")[2]
            return
        rec.kind = "queued"
        body, _, state = rest.partition(" (")
        _keyvalues(f, body, ", ")
        f["queue"] = state.rstrip(")").removeprefix("queue ")
        return
    if rest == "removed":
        rec.kind = "removed"
        return
    if rest.startswith("skipped"):
        return _ignore(rec, "message still being delivered")
    if not _level(rec, rest):
        rec.kind = "unknown"


def _cleanup(rec: LogRecord, msg: str) -> None:
    if _level(rec, msg):
        return
    rest = _queue_id(rec, msg)
    f = rec.fields
    if rest is None:
        rec.kind = "unknown"
        return
    if rest.startswith("message-id="):
        rec.kind = "message_id"
        mid = rest[11:]
        f["message_id"] = mid[1:-1] if mid[:1] == "<" and mid[-1:] == ">" else mid
        return
    if rest.startswith(("reject: header ", "reject: body ", "discard: header ", "discard: body ")):
        # "reject: header Subject: x from host[ip]; from=<a> to=<b> proto=ESMTP helo=<h>: 5.7.1 y"
        rec.kind = "reject"
        f["action"], _, what = rest.partition(": ")
        f["stage"] = what.split(" ", 1)[0]
        head, _, kv = what.partition("; from=")
        kv, _, text = kv.partition(": ")
        _keyvalues(f, "from=" + kv, " ")
        f["reply"] = text
        f["reply_code"], f["dsn"] = reply_codes(text)
        if not f["dsn"] and text[:1] in "245" and text[1:2] == ".":
            f["dsn"] = text.split(" ", 1)[0]
        return
    if rest.startswith(("milter-reject: ", "reject: ", "discard: ", "hold: ")):
        _reject(rec, rest)
        return
    if _level(rec, rest):
        # header/body checks: "QID: warning: header Subject: ... from host[ip]; from=<> to=<>"
        message = f["message"]
        text, _, kv = message.partition("; from=")
        f["message"] = text
        if kv:
            _keyvalues(f, "from=" + kv.partition(": ")[0], " ")
        return
    if rest.startswith(("milter-", "prepend: ", "replace: ", "redirect: ", "filter: ")):
        return _ignore(rec, "header or body check action")
    if rest.startswith("resent-message-id="):
        return _ignore(rec, "resent message id")
    rec.kind = "unknown"


# smtpd/postscreen "NOQUEUE: reject: RCPT from host[ip]:port: 550 5.1.1 <x>: text; from=<..>"
_REJECT = re.compile(
    r"(reject|reject_warning|discard|filter|hold|milter-reject|redirect): (\S+) from "
    r"(\S*?\[[^\]]*\](?::\d+)?): (.*)$"
)


def _reject(rec: LogRecord, rest: str) -> None:
    f = rec.fields
    m = _REJECT.match(rest)
    if not m:
        rec.kind = "unknown"
        return
    rec.kind = "reject"
    f["action"], f["stage"] = m.group(1), m.group(2)
    _client(f, m.group(3))
    text = m.group(4)
    semi = text.rfind("; from=")
    if semi < 0:
        semi = text.rfind("; to=")
    if semi < 0:
        semi = text.rfind("; proto=")
    if semi >= 0:
        kv = text[semi + 2 :]
        text = text[:semi]
        _keyvalues(f, kv, ", " if ">, " in kv else " ")
    f["reply"] = text
    f["reply_code"], f["dsn"] = reply_codes(text)


def _smtpd(rec: LogRecord, msg: str) -> None:
    f = rec.fields
    if msg.startswith("connect from "):
        rec.kind = "connect"
        _client(f, msg[13:])
        return
    if msg.startswith("disconnect from "):
        rec.kind = "disconnect"
        host, _, counters = msg[16:].partition(" ")
        _client(f, host)
        if counters:
            f["commands"] = counters
        return
    rest = _queue_id(rec, msg)
    if rest is not None:
        if rest.startswith("client="):
            rec.kind = "client"
            client, _, more = rest[7:].partition(", ")
            _client(f, client)
            if more:
                _keyvalues(f, more, ", ")
            return
        if rest.startswith(("reject", "discard: ", "filter: ", "hold: ", "milter-", "redirect: ")):
            _reject(rec, rest)
            return
        if _level(rec, rest):
            return
        rec.kind = "unknown"
        return
    if _level(rec, msg):
        # "warning: host[ip]: SASL LOGIN authentication failed: ..." names the client
        message = f["message"]
        m = _CLIENT.match(message)
        if m and message[m.end() : m.end() + 2] == ": ":
            _client(f, message[: m.end()])
            f["message"] = message[m.end() + 2 :]
        return
    for head in ("lost connection after ", "timeout after "):
        if msg.startswith(head):
            rec.kind = "lost_connection" if head[0] == "l" else "timeout"
            stage, _, client = msg[len(head) :].partition(" from ")
            f["stage"] = stage.split(" (", 1)[0]
            _client(f, client)
            return
    if msg.startswith(("SSL_accept error from ", "bare <LF> received after ")):
        rec.kind = "lost_connection"
        if msg[0] == "S":
            client, _, why = msg[22:].partition(": ")
            f["message"] = why
        else:
            f["stage"], _, client = msg[25:].partition(" from ")
        _client(f, client)
        return
    if msg.startswith(("proxy-accept: ", "proxy-reject: ")):
        rec.kind = "proxy"
        f["action"] = msg[6:12]
        body = msg[14:]
        f["stage"], _, text = body.partition(": ")
        text, _, kv = text.partition("; ")
        f["reply"] = text
        f["reply_code"], f["dsn"] = reply_codes(text)
        _keyvalues(f, kv, " ")
        return
    if msg.startswith("too many errors after "):
        rec.kind = "lost_connection"
        stage, _, client = msg[22:].partition(" from ")
        f["stage"] = stage
        f["message"] = "too many errors"
        _client(f, client)
        return
    if (
        "TLS connection established" in msg
        or msg.startswith(("improper command pipelining", "discarding EHLO keywords"))
        or msg.startswith(("setting up TLS connection", "TLS SNI"))
        or msg.startswith(("Anonymous TLS", "Untrusted TLS", "Trusted TLS", "Verified TLS"))
    ):
        return _ignore(rec, "session detail")
    rec.kind = "unknown"


_PS_ACTIONS = (
    "PASS NEW",
    "PASS OLD",
    "WHITELIST VETO",
    "ALLOWLIST VETO",
    "WHITELISTED",
    "ALLOWLISTED",
    "BLACKLISTED",
    "DENYLISTED",
    "DISCONNECT",
    "CONNECT from",
    "PREGREET",
    "DNSBL rank",
    "HANGUP",
    "COMMAND TIME LIMIT",
    "COMMAND COUNT LIMIT",
    "COMMAND LENGTH LIMIT",
    "COMMAND PIPELINING",
    "NON-SMTP COMMAND",
    "BARE NEWLINE",
)
_PS_CLIENT = re.compile(r"\[([^\]]*)\]:(\d+)")
_AFTER = re.compile(r" after (\S+)")
_PS_SECONDS = re.compile(r" after (\d+(?:\.\d+)?) from ")


def _postscreen(rec: LogRecord, msg: str) -> None:
    f = rec.fields
    if msg.startswith("NOQUEUE: "):
        rec.queue_id = "NOQUEUE"
        body = msg[9:]
        if body.startswith("reject: CONNECT from "):
            rec.kind = "reject"
            f["action"], f["stage"] = "reject", "CONNECT"
            m = _PS_CLIENT.search(body)
            if m:
                f["client_ip"], f["client_port"] = m.group(1), m.group(2)
            f["reply"] = body[body.find("]:") :].partition(": ")[2]
            return
        _reject(rec, body)
        return
    if _level(rec, msg):
        return
    for action in _PS_ACTIONS:
        if msg.startswith(action):
            rec.kind = "postscreen"
            f["action"] = action.removesuffix(" from").removesuffix(" rank")
            m = _PS_CLIENT.search(msg)
            if m:
                f["client_ip"], f["client_port"] = m.group(1), m.group(2)
                if action == "CONNECT from":  # "... to [server]:25": which listener
                    to = _PS_CLIENT.search(msg, m.end())
                    if to:
                        f["server_ip"], f["server_port"] = to.group(1), to.group(2)
            if action == "DNSBL rank":
                f["dnsbl_rank"] = msg[11:].split(" ", 1)[0]
            elif action in ("PREGREET", "HANGUP"):
                t = _PS_SECONDS.search(msg)  # seconds into the session
                if t:
                    f["after"] = t.group(1)
            if action.startswith(("COMMAND", "NON-SMTP", "BARE")):
                a = _AFTER.search(msg, m.end() if m else 0)
                if a:
                    f["stage"] = a.group(1).rstrip(":")
            return
    if msg.startswith("cache "):
        return _ignore(rec, "cache cleanup statistics")
    rec.kind = "unknown"


def _bounce(rec: LogRecord, msg: str) -> None:
    rest = _queue_id(rec, msg)
    f = rec.fields
    if rest is not None and " notification: " in rest:
        rec.kind = "notification"
        what, _, qid = rest.partition(" notification: ")
        f["notification"] = what  # "sender non-delivery", "sender delay", "postmaster ..."
        # who is told (sender, postmaster) and of what (non-delivery, delay, delivery status)
        f["notification_to"], _, f["notification_reason"] = what.partition(" ")
        f["notification_queue_id"] = qid
        return
    if not _level(rec, msg if rest is None else rest):
        rec.kind = "unknown"


def _master(rec: LogRecord, msg: str) -> None:
    f = rec.fields
    for head, action in (("daemon started", "start"), ("reload", "reload")):
        if msg.startswith(head + " -- version "):
            rec.kind = "master"
            f["action"] = action
            version, _, conf = msg[len(head) + 12 :].partition(", configuration ")
            f["version"], f["config"] = version, conf
            return
    if msg.startswith("terminating on signal "):
        rec.kind = "master"
        f["action"] = "stop"
        f["signal"] = msg[22:]
        return
    if not _level(rec, msg):
        rec.kind = "unknown"


def _pickup(rec: LogRecord, msg: str) -> None:
    rest = _queue_id(rec, msg)
    if rest is not None and rest.startswith("uid="):
        rec.kind = "pickup"
        _keyvalues(rec.fields, rest, " ")
        return
    _generic(rec, msg)


def _postsuper(rec: LogRecord, msg: str) -> None:
    rest = _queue_id(rec, msg)
    f = rec.fields
    if rest is not None:
        f["action"] = rest
        if rest == "removed":
            rec.kind = "removed"
            return
        rec.kind = "admin"
        return
    head, sep, count = msg.partition(": ")
    if sep and count.split(" ", 1)[0].isdigit():
        rec.kind = "admin"
        f["action"], f["count"] = head, count.split(" ", 1)[0]
        return
    _generic(rec, msg)


# Daemons whose informational lines carry no delivery fact: understood, counted, not read.
_IGNORED = {
    "anvil": "connection statistics",
    "scache": "connection cache statistics",
    "dnsblog": "DNSBL lookup detail",
    "tlsproxy": "TLS proxy session detail",
    "verify": "address verification cache",
    "tlsmgr": "TLS session cache",
    "postfix-script": "start/stop script message",
}


def _generic(rec: LogRecord, msg: str) -> None:
    if _level(rec, msg):
        return
    rest = _queue_id(rec, msg)
    if rest is not None and rest.startswith("to=<") and ", status=" in rest:
        # a delivery agent under a name of its own (syslog_name=postfix/slow, bare postfix)
        _delivery(rec, msg)
        return
    why = _IGNORED.get(rec.service)
    if why:
        rec.kind = "ignored"
        rec.fields["reason"] = why
        if rec.service == "postfix-script":
            rec.kind = "master"
            rec.fields["action"] = msg
        return
    if rest is not None and _level(rec, rest):
        return
    rec.kind = "unknown"


def _other_mta(rec: LogRecord, msg: str) -> None:
    """Sendmail's lines in a Postfix log: not ours, counted apart (never as unread)."""
    rec.kind = "other_mta"


def _left_out(rec: LogRecord, msg: str) -> str:
    """Why a line with to=<...> and status= gave no delivery: its named reason."""
    if not rec.queue_id:
        return "no_queue_id"
    if ", status=" not in msg:
        return "no_status"
    status = msg.partition(", status=")[2].partition(" ")[0]
    if status not in STATUSES:
        return "unknown_status"
    return "unread_shape"


_HANDLERS = {s: _delivery for s in DELIVERY_AGENTS}
_HANDLERS.update(
    qmgr=_qmgr,
    nqmgr=_qmgr,
    oqmgr=_qmgr,
    cleanup=_cleanup,
    smtpd=_smtpd,
    postscreen=_postscreen,
    bounce=_bounce,
    defer=_bounce,
    trace=_bounce,
    master=_master,
    pickup=_pickup,
    postsuper=_postsuper,
)
