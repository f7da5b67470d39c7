"""Bounce emails -> one record per recipient they speak of.

Three shapes are read, in this order:
- RFC 3464/6533 delivery status reports (message/delivery-status, message/global-delivery-status,
  or the same fields pasted into a text part by MTAs that do not build the MIME report);
- the plain-text notices of MTAs that send no report (Exim, qmail, Sendmail v5, Gmail, Yahoo,
  OpenSMTPD, Exchange 2003, Domino, ...): an address, then the error text that follows it;
- ARF feedback reports (complaints) and RFC 3834 auto-replies, said as such, never as bounces.

Anything else (ordinary mail) gives nothing. Parsing is pure: bytes in, records out. Work per
message is bounded (size, MIME parts, nesting depth, decoded bytes) whatever the input.
"""

from __future__ import annotations

import email
import email.header
import email.policy
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from email.utils import getaddresses
from functools import lru_cache
from typing import TypeVar

from mailpulse.bounce.classify import (
    Verdict,
    classify,
    is_hard,
    pseudo_status,
    verdict_of,
    without_addresses,
)

MAX_MESSAGE_BYTES = 8 << 20  # the rest of a larger message is not read
MAX_PARTS = 200
MAX_DEPTH = 12
MAX_DECODED_BYTES = 1 << 20  # per text part, after base64/quoted-printable
MAX_NOTICE_CHARS = 64 << 10
MAX_RECIPIENTS = 1000  # per message, whatever its shape; the rest are counted, not reported
MAX_DIAGNOSTIC_CHARS = 2000  # one recipient's error text: its part of the notice, or an excerpt
MAX_BOUNDARIES = 32  # multipart declarations read; deeper or later ones are not followed
BOUNDARY_DECL_RE = re.compile(
    rb"boundary\s*=", re.I
)  # the human-readable part scanned for addresses and errors

T = TypeVar("T")

KIND_BOUNCE = "bounce"
KIND_COMPLAINT = "complaint"
KIND_AUTOREPLY = "autoreply"
KIND_DELIVERY = "delivery"  # a positive report (Action: delivered, relayed, expanded, ...)


@dataclass(frozen=True, slots=True)
class Bounce:
    """One recipient named by a bounce, complaint or auto-reply."""

    recipient: str
    status: str  # enhanced code ("5.1.1"); Sisimai's 5.0.9xx code when the mail has none
    reply_code: str  # SMTP reply ("550"), "" when the mail does not give one
    action: str  # failed, delayed, delivered, relayed, expanded; complaint; autoreply
    diagnostic: str
    reason: str
    scope: str
    hard: bool
    kind: str = KIND_BOUNCE
    remote_mta: str = ""


@dataclass(frozen=True, slots=True)
class Parsed:
    """What one message says, and what of it was left out."""

    records: list[Bounce]
    omitted: int = 0  # recipients named beyond MAX_RECIPIENTS: counted, not reported
    truncated: bool = False  # larger than MAX_MESSAGE_BYTES: only the first part was read


ADDR = r"(?<![\w.!#$%&'*+/=?^`{|}~-])[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+"
ADDR_RE = re.compile(ADDR)
ENHANCED_RE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.]*\d)")
REPLY_RE = re.compile(
    r"(?<![\w.\-#=])([245][0-5]\d)(?:[ ,:;-]|$)(?!\s*(?:bytes|seconds|days|hours))"
)
DAEMON_RE = re.compile(
    r"^(mailer-daemon|postmaster|mail-?daemon|mailerdaemon|mdaemon|"
    r"mail\.?delivery|maildelivery|bounce[s]?|nobody|root|daemon|noreply|no-reply)@",
    re.I,
)
BOUNCE_FROM_RE = re.compile(
    r"mailer-daemon|post_?master|mail delivery (system|subsystem)|mail administrator|"
    r"mail ?delivery|mdaemon|microsoftexchange",
    re.I,
)
BOUNCE_SUBJECT_RE = re.compile(
    r"undeliver|undelivered|delivery (status|fail|has failed|notification|problem|report)|"
    r"returned mail|returning message|failure notice|failed mail|mail delivery failed|"
    r"delivery failure|failure delivery|could not be delivered|non.?delivery|"
    r"mail system error|returned to sender|nondeliverable|"
    r"unable to deliver|error sending|delivery status|^fwd?: returned|"
    r"loop alert|mail could not|permanent error|warning: could not send",
    re.I,
)
# Where a notice stops and the returned message (or its headers) begins.
ORIGINAL_MARK_RE = re.compile(
    r"^[ \t]*+(?:(?:-{2,}|\*{2,}|={2,}|_{2,})[ \t]*+)?("
    r"this is a copy of the message|below this line is a copy|original message|"
    r"copy of the original|a copy of the original|returned message|message headers follow|"
    r"the original message (?:headers )?follows|original message (?:follows|headers)|"
    r"headers of your message|content-type: message/rfc822|undelivered message|"
    r"below is a copy|unsent message below|your message reads|"
    r"the header of the original|--- original message|received: from"
    r").*$",
    re.I | re.M,
)
AUTOREPLY_SUBJECT_RE = re.compile(
    r"^\s*(auto(matic)?[ -]?(reply|response|antwort)|out of (the )?office|away until|"
    r"away from (my |the )?(mail|e-?mail|office|desk)|"
    r"vacation|abwesenheit|r[ée]ponse automatique|autoreply|on leave)",
    re.I,
)
DSN_TYPES = ("message/delivery-status", "message/global-delivery-status")
# "in reply to RCPT TO command" (Postfix), "after RCPT TO:" (Exim), "failed after I sent the
# message" (qmail), "did not like our RCPT TO" (DragonFly), "SMTP:RCPT host" (X3), "[RCPT_TO]"
# (Yahoo), "(DATA)", "does not like recipient" (qmail): which SMTP command the remote refused.
STAGE_RE = re.compile(
    r"(?:in reply to|after|error from remote mail server after|did not like our|smtp:|[(\[])\s*"
    r"(end of data|data|rcpt|mail from|mail|sent the message|ehlo|helo)(?![a-z])"
    r"|for (text|data) command|does not like (recipient)",
    re.I,
)
# Sendmail's session transcript: ">>> DATA" then "<<< 550 ...".
TRANSCRIPT_STAGE_RE = re.compile(
    r">>> (data|rcpt|mail)\b[^\n]*\n(?:.*\n){0,3}?\s*(?:<<< )?[45]\d\d", re.I
)
# Sendmail's way (and its imitators', McAfee's among them) of answering for one address: the
# address echoed, three dots, the verdict. A sender refusal says "sender" in its words; any
# other is the answer to RCPT TO.
ECHOED_ADDRESS_RE = re.compile(
    r"\b[45]\d\d[ -](?:[45]\.\d{1,3}\.\d{1,3} )?<?[^<>\s]*@[^<>\s]*>?\.\.\. "
)
# Postfix's smtpd says this only in answer to RCPT TO (its recipient restrictions).
RCPT_ANSWER_RE = re.compile(r"recipient address rejected", re.I)
# A final failure whose last try timed out or was refused: the MTA stopped retrying.
GAVE_UP_RE = re.compile(r"^(connect to \S+: )?connection (timed out|refused)", re.I)
DELAY_RE = re.compile(
    r"warning message only|will be retried|\(delay\)|delivery (has been |is )?delayed|"
    r"delayed mail|not yet been delivered|still trying|will (continue to )?(re)?try|"
    r"no action is required on your part|message is delayed for|only a temporary failure report",
    re.I,
)
# A notice that the message arrived (a delivery report asked for, or a relay's success notice).
SUCCESS_RE = re.compile(
    r"(successfully delivered|was relayed|has been delivered) to (these|the following) recipients"
    r"|delivery to the following recipients? (was |has been )?(succeeded|successful)",
    re.I,
)
DNS_TROUBLE_RE = re.compile(r"name server|host name lookup|host not found|dns", re.I)
FIELD_RE = re.compile(r"^([A-Za-z][\w-]*)[ \t]*:[ \t]*(.*)$")
# PowerMTA writes its own verdict per recipient (X-PowerMTA-BounceCategory): it has read the
# whole reply, so it wins over the words alone.
POWERMTA_CATEGORIES = {
    "bad-mailbox": "userunknown",
    "bad-domain": "hostunknown",
    "inactive-mailbox": "suspend",
    "message-expired": "expired",
    "no-answer-from-host": "networkerror",
    "policy-related": "policyviolation",
    "quota-issues": "mailboxfull",
    "routing-errors": "systemerror",
    "spam-related": "spamdetected",
    "virus-related": "virusdetected",
}


def _decode_header(value: object) -> str:
    if value is None:
        return ""
    try:
        parts = email.header.decode_header(str(value))
        return "".join(
            p.decode(c or "latin-1", "replace") if isinstance(p, bytes) else p for p, c in parts
        )
    except (LookupError, ValueError, TypeError):
        return str(value)


def _walk(msg: Message) -> Iterator[tuple[int, Message]]:
    """Parts, depth first, bounded in count and depth (deep nesting is cut, not followed)."""
    stack: list[tuple[int, Message]] = [(0, msg)]
    seen = 0
    while stack and seen < MAX_PARTS:
        depth, part = stack.pop()
        seen += 1
        yield depth, part
        if depth >= MAX_DEPTH:
            continue
        payload = part.get_payload()
        if isinstance(payload, list):
            stack.extend((depth + 1, p) for p in reversed(payload) if isinstance(p, Message))


def _text_of(part: Message) -> str:
    """The decoded text of one leaf part, at most MAX_DECODED_BYTES, never an exception."""
    payload = part.get_payload()
    if isinstance(payload, list):
        # A delivery-status part comes parsed into one header block per recipient.
        texts: list[str] = []
        size = 0
        for p in payload:
            if size >= MAX_DECODED_BYTES:
                break
            if isinstance(p, Message):
                # Fields as written: as_string() would refold them, quadratic in a long field.
                block = "\n".join(f"{k}: {v}" for k, v in p.items())
                texts.append(block[: MAX_DECODED_BYTES - size])
                size += len(texts[-1]) + 2
        return "\n\n".join(texts)
    raw = payload if isinstance(payload, str) else ""
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if cte in ("base64", "quoted-printable"):
        # base64 shrinks by a quarter and quoted-printable never grows: cutting the input bounds
        # the output.
        raw = raw[: MAX_DECODED_BYTES * 2]
        try:
            data = part.get_payload(decode=True)
        except Exception:  # noqa: BLE001 - the stdlib decoders raise a zoo of types
            data = raw.encode("ascii", "replace")
        if not isinstance(data, bytes):
            data = raw.encode("ascii", "replace")
    else:
        data = raw[:MAX_DECODED_BYTES].encode("utf-8", "surrogateescape")
    data = data[:MAX_DECODED_BYTES]
    charset = part.get_content_charset() or "utf-8"
    try:
        return data.decode(charset, "replace")
    except (LookupError, ValueError):
        return data.decode("utf-8", "replace")


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:  # noqa: BLE001 - a malformed header must not stop the parse
        return "text/plain"


def _fields(block: str) -> dict[str, str]:
    """RFC 822 style fields of one DSN block, unfolded; the first occurrence of a name wins."""
    out: dict[str, str] = {}
    name = ""
    for line in block.splitlines():
        if line[:1] in (" ", "\t") and name:
            out[name] += " " + line.strip()
            continue
        m = FIELD_RE.match(line)
        if m:
            name = m.group(1).lower()
            if name in out:
                name = name + "#dup"
            out.setdefault(name, m.group(2).strip())
        else:
            name = ""
    return {k: v for k, v in out.items() if not k.endswith("#dup")}


def _typed_address(value: str) -> str:
    """`rfc822; a@b` -> a@b; also `<a@b>` and a bare address; '' when there is none.

    The address must open the field: in `foo bar@b`, `a@b@c` or `x(y)z@b` the recipient is
    not bar@b, b@c or z@b, and listing those would list somebody else."""
    value = value.split(";", 1)[1] if ";" in value else value
    m = ADDR_RE.search(value)
    lead = value[: m.start()].strip(" \t<") if m else ""
    if not m or (lead and not lead.startswith("|")):  # a pipe command names its user
        return ""
    return m.group(0).strip(".").lower()


# A host name or address literal as a Remote-MTA field gives it ("dns; mx.example.org",
# "dns; [192.0.2.1]", "smtp; mx.example.org (192.0.2.1)").
HOST_RE = re.compile(r"\[?([A-Za-z0-9](?:[A-Za-z0-9.:-]{0,252}[A-Za-z0-9])?)\.?\]?")


def _typed_host(value: str) -> str:
    """`dns; mx.example.org` -> mx.example.org; '' when the field names no host."""
    value = (value.split(";", 1)[1] if ";" in value else value).strip()
    m = HOST_RE.match(value)
    return m.group(1).lower() if m else ""


def _dsn_blocks(text: str) -> list[dict[str, str]]:
    blocks = re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n"))
    return [f for f in (_fields(b) for b in blocks) if f]


def _reply_code(text: str, klass: str = "") -> str:
    for m in REPLY_RE.finditer(text):
        if not klass or m.group(1)[0] == klass:
            return m.group(1)
    return ""


# An enhanced code that follows a reply code is the remote's own ("550-'5.7.1 ...", "550 5.1.1").
REPLIED_ENHANCED_RE = re.compile(r"\b[245]\d\d[ -]['\"]?([245]\.\d{1,3}\.\d{1,3})(?![\d.]*\d)")


def _enhanced(text: str, klass: str = "") -> str:
    for m in ENHANCED_RE.finditer(text):
        if not klass or m.group(1) == klass:
            return ".".join(m.groups())
    return ""


JIS_ESCAPE_RE = re.compile(r"\x1b\$[@B]")


def _jis(text: str) -> str:
    """Japanese MTAs write ISO-2022-JP (7-bit, escape sequences) into fields that declare no
    charset, such as Diagnostic-Code."""
    if not JIS_ESCAPE_RE.search(text):
        return text
    return text.encode("ascii", "ignore").decode("iso-2022-jp", "replace")


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


# Gmail's older notices end the remote's reply with the session state it failed in.
GMAIL_STATE_RE = re.compile(r"\(state (\d{1,2})\)")
GMAIL_STATES = {"6": "mail", "13": "ehlo", "14": "rcpt", "15": "data", "17": "data", "18": "data"}


def _stage(text: str) -> str:
    m = STAGE_RE.search(text) or TRANSCRIPT_STAGE_RE.search(text)
    if not m:
        state = GMAIL_STATE_RE.search(text)
        return GMAIL_STATES.get(state.group(1), "") if state else ""
    if m.re is STAGE_RE and m.group(3):
        return "rcpt"  # qmail: "<host> does not like recipient."
    word = (m.group(1) or "data").lower()  # "for TEXT command" is the DATA stage
    return "data" if word in ("data", "end of data", "sent the message") else word.split()[0]


@lru_cache(maxsize=4)
def _context_facts(context: str) -> tuple[str, str, str, str]:
    """Stage, text to classify, reply code and enhanced code of a message's notice, worked out
    once for all its recipients."""
    clean = _clean(context)
    return _stage(context), without_addresses(clean), _reply_code(clean), _enhanced(clean)


def _record(
    recipient: str,
    status: str,
    diagnostic: str,
    action: str = "failed",
    remote_mta: str = "",
    context: str = "",
    mta_reason: str = "",
) -> Bounce:
    """Fill the reply code and status from the texts when missing, then classify."""
    context_stage, context, context_reply, context_status = _context_facts(context)
    # Cut before any pattern runs: the work per recipient stays bounded whatever the notice.
    diagnostic = diagnostic[: 4 * MAX_DIAGNOSTIC_CHARS]
    stage = _stage(diagnostic) or context_stage
    diagnostic = _clean(
        re.sub(r"^\s*(smtp|x-[\w-]+|x-unix|mta)\s*;", "", _jis(diagnostic), flags=re.I)
    )[:MAX_DIAGNOSTIC_CHARS]
    reply = _reply_code(diagnostic)
    replied = REPLIED_ENHANCED_RE.search(diagnostic)
    found = replied.group(1) if replied else _enhanced(diagnostic)
    # The code the remote gave in its reply is more precise than the one the reporting MTA
    # derived from it (often a generic x.0.0 or its own guess).
    if not status or (found and (found[0] == status[0] or found[0] == reply[:1])):
        status = found or status
    if not reply and not diagnostic:
        reply = context_reply
    if not status and not diagnostic:
        status = context_status
    positive = ("delivered", "relayed", "expanded", "deliverable")
    if not status and action in positive:
        status = "2.0.0"
    klass = status[:1] or reply[:1] or ("4" if action == "delayed" else "5")
    if (
        not stage
        and status[1:] in ("", ".0.0")
        and (ECHOED_ADDRESS_RE.search(diagnostic) or RCPT_ANSWER_RE.search(diagnostic))
    ):
        # A precise code (5.2.1: the mailbox exists) is more to go by than the form of the reply.
        stage = "rcpt"
    verdict = classify(status, reply, without_addresses(diagnostic) or context, stage=stage)
    kind = KIND_DELIVERY if action in positive else KIND_BOUNCE
    if verdict.reason in ("undefined", "onhold") and diagnostic and context:
        verdict = classify(status, reply, context, stage=stage)
    if verdict.reason == "userunknown" and status[1:3] != ".1" and context:
        # A bare "user unknown" under a generic code, while the system that wrote the notice
        # says the account is disabled: it knows its own users (EZweb answers both so).
        own = classify(status, reply, context, stage=stage)
        if own.reason == "suspend":
            verdict = own
    if verdict.reason == "networkerror" and action == "failed" and GAVE_UP_RE.search(diagnostic):
        verdict = Verdict("expired", "transport", False)
    if (
        klass == "4"
        and action in ("failed", "delayed")
        and verdict.reason in ("networkerror", "onhold", "undefined")
        # A delay report still retrying names the network trouble it meets: that stays.
        and not (action == "delayed" and verdict.reason == "networkerror")
        and (not status or status.endswith(".0"))  # a specific code (4.4.6 loop) stays
        and not DNS_TROUBLE_RE.search(diagnostic)
        and "lost connection" not in diagnostic.lower()
    ):
        # A temporary failure the MTA gave up on (or still retries) is a delivery that ran out
        # of time.
        verdict = Verdict("expired", "transport", False)
    if mta_reason and action in ("failed", "delayed"):
        verdict = verdict_of(mta_reason, klass)
    if not status:
        status = pseudo_status(verdict.reason, klass)
        verdict = Verdict(verdict.reason, verdict.scope, is_hard(verdict.reason, klass))
    if reply and status[:1] in "45" and reply[0] != status[0]:
        reply = ""  # a 5xx text under a 4.x.x status (or the reverse) is not the reply given
    return Bounce(
        recipient=recipient,
        status=status,
        reply_code=reply,
        action=action,
        diagnostic=diagnostic,
        reason=verdict.reason,
        scope=verdict.scope,
        hard=verdict.hard,
        kind=kind,
        remote_mta=remote_mta,
    )


def _from_reports(dsn_texts: list[str], notice: str) -> tuple[list[Bounce], int]:
    """Records of the report's recipient blocks, and how many blocks lay beyond MAX_RECIPIENTS."""
    out: list[Bounce] = []
    omitted = 0
    paragraph = _paragraphs(notice)
    for text in dsn_texts:
        for f in _dsn_blocks(text):
            rcpt = _typed_address(f.get("final-recipient", "")) or _typed_address(
                f.get("original-recipient", "")
            )
            if not rcpt or ("action" not in f and "status" not in f):
                # An address behind other text in the recipient field: named, not reported,
                # and no guess from the notice's text either (it would be somebody else).
                omitted += not rcpt and bool(ADDR_RE.search(f.get("final-recipient", "")))
                continue
            if len(out) >= MAX_RECIPIENTS:
                omitted += 1
                continue
            action = f.get("action", "failed").split()[0].lower() if f.get("action") else "failed"
            mta_reason = ""
            if action == "expired":
                # Not an RFC 3464 action, but some senders (SendGrid) say so: it failed for time.
                action, mta_reason = "failed", "expired"
            status_m = ENHANCED_RE.search(f.get("status", ""))
            status = ".".join(status_m.groups()) if status_m else ""
            diag = f.get("diagnostic-code", "")
            context = paragraph(rcpt)
            if not diag:
                diag = context
            category = f.get("x-powermta-bouncecategory", "").strip().lower()
            remote = _typed_host(f.get("remote-mta", ""))
            mta_reason = POWERMTA_CATEGORIES.get(category, mta_reason)
            out.append(_record(rcpt, status, diag, action, remote, notice, mta_reason))
    return out, omitted


def _paragraphs(notice: str) -> Callable[[str], str]:
    """rcpt -> the notice's lines about it: from its address to the next blank line, at most
    MAX_DIAGNOSTIC_CHARS. The notice is indexed once, so a notice naming thousands of
    recipients is not searched again for each."""
    low = notice.lower()
    first: dict[str, int] = {}
    for m in ADDR_RE.finditer(low):
        first.setdefault(m.group(0), m.start())
    size = MAX_DIAGNOSTIC_CHARS

    def paragraph(rcpt: str) -> str:
        i = first.get(rcpt, -1)
        if i < 0:
            # Not where the address pattern starts (a quoted or odd local part): a bounded look.
            i = low.find(rcpt, 0, MAX_NOTICE_CHARS) if rcpt else -1
            if i < 0:
                return ""
        start = low.rfind("\n", max(0, i - size), i) + 1
        end = low.find("\n\n", i, start + size)
        para = notice[start : end if end > 0 else start + size]
        if len(_clean(para.replace(rcpt, "").strip("<>: \n"))) < 4:
            # The address sits alone on its line: the error is the next paragraph.
            nxt = low.find("\n\n", end + 2, start + size) if end > 0 else -1
            para = notice[start : nxt if nxt > 0 else start + size]
        return para

    return paragraph


ADDRESS_LINE_RE = re.compile(
    # An address opening a line, bare, <bracketed>, "quoted" or after a short display name.
    r"^[ \t]*(?:\"[^\"\n]*\"\s*(?=<)|[^<>@\n:\"]{0,60}(?=<))?[<\"]?("
    + ADDR
    + r")[>\"]?(?:\.\.\.|:|,)?[ \t]*(.*)$",
    re.M,
)


def _from_notice(
    notice: str, exclude: set[str], action: str = "failed"
) -> tuple[list[Bounce], int]:
    """Plain-text notices: each line that starts with an address opens that recipient's error.

    Addresses of the bounce's own headers are skipped at first (they name the sender), but
    taken when nothing else is there (mail sent to oneself bounces too). Also returns how many
    addresses lay beyond MAX_RECIPIENTS.
    """
    found = _notice_recipients(notice, exclude, action)
    return found if found[0] else _notice_recipients(notice, set(), action)


# Sendmail's session transcript (V5 and later): "While talking to <host>:", the command sent
# (">>> RCPT To:<a@b>"), the remote's reply ("<<< 550 ..."), then Sendmail's verdict per
# recipient ("550 <a@b>... User unknown") or per other host ("550 host (smtp)... 550 Host
# unknown", a host it never talked to).
SESSION_RE = re.compile(r"^[\s.]*while talking to ([\w.-]+)", re.I)
HOST_VERDICT_RE = re.compile(r"^\d{3} ([\w.-]+) \(\w+\)\.\.\. (.*)$")
RECIPIENT_VERDICT_RE = re.compile(r"^\d{3}[ -](?:\d\.\d{1,3}\.\d{1,3} )?<?(" + ADDR + r")>?\.\.\. ")


def _notice_recipients(notice: str, exclude: set[str], action: str) -> tuple[list[Bounce], int]:
    lines = notice.splitlines()
    found: list[tuple[str, list[str]]] = []
    bodies: dict[str, list[str]] = {}
    beyond: set[str] = set()
    current: list[str] | None = None
    session = command = said = ""  # the transcript's state at this line
    for line in lines:
        if session_m := SESSION_RE.match(line):
            session, command, said = session_m.group(1).lower().rstrip("."), "", ""
        elif line.startswith(">>> "):
            command, said = line, ""
        elif line.startswith("<<< "):
            said = said or line
        elif (host_m := HOST_VERDICT_RE.match(line)) and host_m.group(1).lower() != session:
            command, said = "", host_m.group(2)
        # In a transcript, "550 a@b... User unknown" names its recipient without brackets too.
        verdict = RECIPIENT_VERDICT_RE.match(line) if session else None
        m = verdict or ADDRESS_LINE_RE.match(line)
        addr = m.group(1).lower().strip(".") if m else ""
        if m and addr and addr not in exclude and not DAEMON_RE.match(addr):
            if addr in bodies:
                current = bodies[addr]
                current.append(line)
                continue
            if len(found) >= MAX_RECIPIENTS:
                beyond.add(addr)
                current = None
                continue
            if verdict:
                # A transcript's verdict: its own line, after what the remote said to the
                # command; the lines that follow are about other recipients.
                found.append((addr, [command, said, line]))
                bodies[addr] = found[-1][1]
                current = None
                continue
            # The whole line but the address: "550 5.1.1 <a@b>... User unknown" keeps its codes.
            current = [line[: m.start(1)].rstrip('<"') + " " + m.group(2)]
            found.append((addr, current))
            bodies[addr] = current
            continue
        if current is not None:
            if not line.strip() and any(x.strip() for x in current):
                current = None
                continue
            current.append(line)
    if not found:
        m = RCPT_LINE_RE.search(notice)
        if m and m.group(1).lower() not in exclude:
            found.append((m.group(1).lower(), [_error_lines(notice)]))
    if not found:
        # No address opens a line: take the first foreign address anywhere in the notice.
        for m in ADDR_RE.finditer(notice):
            addr = m.group(0).lower().strip(".")
            if addr not in exclude and not DAEMON_RE.match(addr):
                found.append((addr, [_error_lines(notice)]))
                break
    if len(found) == 1 and not any(_has_code(x) for x in found[0][1]):
        # One recipient, and its error sits further down (Gmail, DragonFly): add the notice's
        # lines that carry a code.
        found[0][1].append(_error_lines(notice))
    records = [_record(addr, "", "\n".join(body), action, "", notice) for addr, body in found]
    return records, len(beyond)


RCPT_LINE_RE = re.compile(
    r"^[ \t]*(?:rcpt to|recipient|original recipient|failed recipient|intended recipient)"
    r"[ \t]*:[ \t]*<?(" + ADDR + ")",
    re.I | re.M,
)


def _has_code(line: str) -> bool:
    return bool(ENHANCED_RE.search(line) or REPLY_RE.search(line))


def _error_lines(notice: str) -> str:
    keep = [ln for ln in notice.splitlines() if _has_code(ln)]
    return "\n".join(keep) or notice


def _addresses(value: object) -> set[str]:
    return {a.lower() for _, a in getaddresses([_decode_header(value)]) if "@" in a}


def _original_recipients(parts: list[Message], notice_tail: str) -> list[str]:
    """To/Cc of the returned message: the recipient when the notice names none."""
    for p in parts:
        ct = _content_type(p)
        if ct in ("message/rfc822", "message/global"):
            inner = p.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                found = _addresses(inner[0].get("To")) | _addresses(inner[0].get("Cc"))
                if found:
                    return sorted(found)
        if ct == "text/rfc822-headers":
            hdrs = email.message_from_string(_text_of(p), policy=email.policy.compat32)
            found = _addresses(hdrs.get("To"))
            if found:
                return sorted(found)
    m = re.search(r"^To:[ \t]*(.*(?:\n[ \t].*)*)", notice_tail, re.M | re.I)
    return sorted(_addresses(m.group(1))) if m else []


def _google_group_refusal(failed: set[str], notice: str) -> bool:
    """Google Groups refuses a post (no such group, or not allowed to post) in the sender's
    language, with no code: known by the group address and the signature."""
    return (
        bool(failed)
        and all(a.endswith("@googlegroups.com") for a in failed)
        and ("Google Groups" in notice or "googlegroups.com" in notice)
    )


def _from_ses_notification(text: str) -> list[Bounce] | None:
    """Amazon SES notifications relayed by SNS as e-mail: a JSON document, not a DSN."""
    start = text.find('{"notificationType"')
    if start < 0:
        return None
    body = text[start:]
    try:
        doc, _ = json.JSONDecoder().raw_decode(body)
    except ValueError:
        # Some relays wrap the long JSON line: the document ends at the first blank line.
        try:
            doc, _ = json.JSONDecoder().raw_decode(body.split("\n\n", 1)[0].replace("\n", ""))
        except ValueError:
            return None
    if not isinstance(doc, dict):
        return None
    kind = str(doc.get("notificationType", "")).lower()
    if kind == "bounce":
        out = []
        for r in (doc.get("bounce") or {}).get("bouncedRecipients") or []:
            rcpt = _typed_address(str(r.get("emailAddress", "")))
            if rcpt:
                status = str(r.get("status") or "")
                diag = str(r.get("diagnosticCode") or "")
                out.append(_record(rcpt, status, diag, str(r.get("action") or "failed")))
        return out
    if kind == "complaint":
        recipients = (doc.get("complaint") or {}).get("complainedRecipients") or []
        return [
            Bounce(a, "", "", "complaint", "", "feedback", "recipient", False, KIND_COMPLAINT)
            for a in (_typed_address(str(r.get("emailAddress", ""))) for r in recipients)
            if a
        ]
    if kind == "delivery":
        delivery = doc.get("delivery") or {}
        reply = str(delivery.get("smtpResponse") or "250")
        return [
            _record(a, "", reply, "delivered")
            for a in (_typed_address(str(x)) for x in delivery.get("recipients") or [])
            if a
        ]
    return None


def _is_feedback(msg: Message, parts: list[Message]) -> bool:
    if any(_content_type(p) == "message/feedback-report" for p in parts):
        return True
    if msg.get_param("report-type", header="content-type") == "feedback-report":
        return True
    subject = _decode_header(msg.get("Subject"))
    return bool(re.search(r"complaint about message|abuse report|feedback loop", subject, re.I))


def _feedback(msg: Message, parts: list[Message], texts: list[str]) -> list[Bounce]:
    rcpts: list[str] = []
    for p in parts:
        if _content_type(p) == "message/feedback-report":
            # Original-Rcpt-To may repeat, once per complaining recipient.
            for m in ARF_RCPT_RE.finditer(_text_of(p)):
                a = _typed_address(m.group(1))
                if a and a not in rcpts:
                    rcpts.append(a)
    if not rcpts:
        rcpts = _original_recipients(parts, "\n".join(texts))
    if not rcpts:
        # Many providers redact the complainant: the report still counts, for no address.
        rcpts = [""]
    return [
        Bounce(r, "", "", "complaint", "", "feedback", "recipient", False, KIND_COMPLAINT)
        for r in rcpts
    ]


ARF_RCPT_RE = re.compile(r"^(?:original-rcpt-to|removal-recipient)[ \t]*:(.*)$", re.I | re.M)


def _is_read_receipt(msg: Message, parts: list[Message]) -> bool:
    """RFC 8098's disposition notification ("displayed", "deleted"): says nothing of delivery,
    though it names a final recipient and comes back to a null return path as a bounce does."""
    if msg.get_param("report-type", header="content-type") == "disposition-notification":
        return True
    return any(_content_type(p) == "message/disposition-notification" for p in parts)


def _is_autoreply(msg: Message) -> bool:
    """RFC 3834's marks of an automatic reply (Exim marks its bounces so too), or its subject."""
    auto = str(msg.get("Auto-Submitted", "")).strip().lower()
    if auto.startswith("auto-replied"):
        return True
    if any(h in msg for h in ("X-Autoreply", "X-Autorespond", "X-Autoresponse")):
        return True
    if str(msg.get("Precedence", "")).strip().lower() == "auto_reply":
        return True
    return bool(AUTOREPLY_SUBJECT_RE.search(_decode_header(msg.get("Subject"))))


def _looks_like_bounce(msg: Message, notice: str) -> bool:
    if "X-Failed-Recipients" in msg:
        return True
    sender = _decode_header(msg.get("From"))
    return_path = str(msg.get("Return-Path", "")).strip()
    subject = _decode_header(msg.get("Subject"))
    if BOUNCE_SUBJECT_RE.search(subject):
        return True
    # A null return path is what every automatic reply carries too (RFC 3834): with the
    # marks of one, only a mail system's own sender name makes it a bounce.
    null_sender = return_path in ("<>", "<MAILER-DAEMON>") and not _is_autoreply(msg)
    if BOUNCE_FROM_RE.search(sender) or null_sender:
        return bool(re.search(r"deliver|fail|undeliver|error|reject|unknown", notice, re.I))
    return False


# What every notice of a failure (or a delay) says in some words, when it carries no code, no
# list of failed recipients and no returned message (a shop's "delivery status of your order"
# says none).
FAILURE_WORDS_RE = re.compile(
    r"(could|can)(no|n.)t be delivered|(was|were) not delivered|undeliverable|undelivered|"
    r"delivery (to the following [^\n]{0,40})?(has )?failed|failed permanently|"
    r"permanent (error|failure)|unable to deliver|did not reach|could not reach|"
    r"did not receive|returned mail|non-?delivery|delivery (failure|errors?|problems?)|"
    r"failure notice|mail system error|unknown (user|recipient)|user unknown|"
    r"(user|recipient|address|mailbox)[^.\n]{0,30}(not found|does not exist|rejected)",
    re.I,
)


def _says_it_failed(msg: Message, parts: list[Message], notice: str, rest: str) -> bool:
    if rest or "X-Failed-Recipients" in msg or _has_code(notice):
        return True
    returned = ("message/rfc822", "message/global", "text/rfc822-headers")
    if any(_content_type(p) in returned for p in parts):
        return True
    said = _decode_header(msg.get("Subject")) + "\n" + notice
    return bool(FAILURE_WORDS_RE.search(said) or DELAY_RE.search(said))


def _unquote(text: str) -> str:
    """A bounce forwarded inline ("> " before every line) read as the original."""
    lines = text[:MAX_NOTICE_CHARS].splitlines()
    quoted = sum(1 for ln in lines if ln.startswith(">"))
    if lines and quoted > len(lines) // 2:
        return "\n".join(re.sub(r"^(> ?)+", "", ln) for ln in lines)
    return text


def _notice_split(text: str) -> tuple[str, str]:
    """(notice, rest): the human-readable report and the returned message after it."""
    head = text[:MAX_NOTICE_CHARS]
    m = ORIGINAL_MARK_RE.search(head)
    if m and m.start() > 0:
        return head[: m.start()], text[m.start() :]
    return head, ""


class BounceParseError(ValueError):
    """A message that cannot be read at all (it is counted and skipped, never fatal)."""


def bounded(raw: bytes) -> bytes:
    """The part of a message that is read: MAX_MESSAGE_BYTES, and no more than MAX_BOUNDARIES
    multipart declarations (the stdlib parser recurses once per nesting level)."""
    raw = raw[:MAX_MESSAGE_BYTES]
    for i, m in enumerate(BOUNDARY_DECL_RE.finditer(raw)):
        if i == MAX_BOUNDARIES:
            return raw[: raw.rfind(b"\n", 0, m.start()) + 1]
    return raw


def parse_message(raw: bytes) -> list[Bounce]:
    """Every recipient a bounce, complaint or auto-reply speaks of; [] for ordinary mail."""
    return parse(raw).records


def parse(raw: bytes) -> Parsed:
    """parse_message, and what was left out: recipients past MAX_RECIPIENTS, bytes past
    MAX_MESSAGE_BYTES."""
    try:
        msg = email.message_from_bytes(bounded(raw), policy=email.policy.compat32)
        records, omitted = _parse(msg, 0)
    except RecursionError as e:  # defence in depth: bounded() should make this unreachable
        raise BounceParseError("message nested too deeply") from e
    return Parsed(records, omitted, len(raw) > MAX_MESSAGE_BYTES)


def _forwarded_bounce(parts: list[Message]) -> Message | None:
    """A bounce forwarded as an attachment (by a relay or a person): the report inside."""
    for p in parts:
        if _content_type(p) in ("message/rfc822", "message/global"):
            inner = p.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                m = inner[0]
                if _content_type(m) == "multipart/report" or BOUNCE_FROM_RE.search(
                    _decode_header(m.get("From"))
                ):
                    return m
            return None
    return None


def _cap(items: list[T]) -> tuple[list[T], int]:
    """The first MAX_RECIPIENTS items, and how many more there were."""
    return items[:MAX_RECIPIENTS], max(0, len(items) - MAX_RECIPIENTS)


def _recipient_blocks(part: Message) -> int:
    """Recipient blocks of a delivery-status part as the stdlib parsed it (0 when it did not)."""
    payload = part.get_payload()
    if not isinstance(payload, list):
        return 0
    return sum(
        1
        for p in payload
        if isinstance(p, Message) and ("final-recipient" in p or "original-recipient" in p)
    )


def _beyond_notice(text: str, found: list[Bounce], exclude: set[str]) -> int:
    """Addresses opening a line past MAX_NOTICE_CHARS of a notice that never ended."""
    known = {b.recipient for b in found} | exclude
    extra = {m.group(1).lower().strip(".") for m in ADDRESS_LINE_RE.finditer(text)}
    return len({a for a in extra if a not in known and not DAEMON_RE.match(a)})


def _named_failed(
    failed: set[str], found: list[Bounce], notice: str, action: str
) -> tuple[list[Bounce], int]:
    """Exim and Gmail name the failed recipients in a header: trust it over the text. Returns
    the records and how many named recipients lay beyond MAX_RECIPIENTS."""
    found = [b for b in found if b.recipient in failed]
    named = {b.recipient for b in found}
    others = sorted(failed - named)[: MAX_RECIPIENTS - len(found)]
    omitted = len(failed) - len(found) - len(others)
    paragraph = _paragraphs(notice)
    # Error lines that name another failed recipient are not evidence about this one.
    errors = "\n".join(
        ln
        for ln in _error_lines(notice).splitlines()
        if not any(x.group(0).lower() in failed for x in ADDR_RE.finditer(ln))
    )
    # Nor is the notice as a whole, when it speaks of several.
    context = notice if len(failed) == 1 else errors
    return found + [
        _record(a, "", paragraph(a) or errors, action, "", context) for a in others
    ], omitted


def _texts(parts: list[Message]) -> tuple[list[str], list[str], int]:
    """The delivery-status parts' texts, the readable text parts before the returned message,
    and how many recipient blocks the status parts hold."""
    dsn_texts: list[str] = []
    texts: list[str] = []
    listed = 0
    for p in parts:
        ct = _content_type(p)
        if ct in DSN_TYPES:
            dsn_texts.append(_text_of(p))
            listed += _recipient_blocks(p)
        elif ct.startswith("text/") and ct not in ("text/rfc822-headers", "text/html"):
            texts.append(_text_of(p))
        elif ct.startswith("multipart/") and isinstance(p.get_payload(), str):
            # A multipart whose boundary did not parse (missing or folded badly): read as text.
            texts.append(_text_of(p))
        if p.is_multipart() and ct in ("message/rfc822", "message/global"):
            break  # parts after here belong to the returned message
    if not texts and not dsn_texts:
        for p in parts:
            if _content_type(p) == "text/html":
                texts.append(re.sub(r"<[^>]*>", " ", _text_of(p)))
                break
    return dsn_texts, texts, listed


def _parse(msg: Message, nesting: int) -> tuple[list[Bounce], int]:
    parts = [p for _, p in _walk(msg)]
    dsn_texts, texts, listed = _texts(parts)
    if _is_feedback(msg, parts):
        return _cap(_feedback(msg, parts, texts))
    if not dsn_texts and _is_read_receipt(msg, parts):
        return [], 0
    if texts and texts[0].lstrip().startswith("{"):
        ses = _from_ses_notification(texts[0])
        if ses is not None:
            return _cap(ses)

    first_text = _unquote(texts[0]) if texts else ""
    notice, rest = _notice_split(first_text)
    # Some MTAs paste the report's fields into the text part.
    if not dsn_texts and re.search(r"^(final|original)-recipient:", first_text, re.I | re.M):
        dsn_texts = [first_text]
    if dsn_texts:
        found, omitted = _from_reports(dsn_texts, notice)
        if found or omitted:
            # Blocks past the decoded-text limit were not read, but the parser counted them.
            return found, max(omitted, listed - len(found))

    if _is_autoreply(msg) and not _looks_like_bounce(msg, notice):
        sender = sorted(_addresses(msg.get("From")))
        return [
            Bounce(a, "", "", "autoreply", "", "vacation", "recipient", False, KIND_AUTOREPLY)
            for a in sender[:1]
        ], 0
    if not _looks_like_bounce(msg, notice) or not _says_it_failed(msg, parts, notice, rest):
        return [], 0

    exclude = _addresses(msg.get("To")) | _addresses(msg.get("From"))
    exclude |= _addresses(msg.get("Delivered-To")) | _addresses(msg.get("Return-Path"))
    # A warning that the MTA is still trying is a delay, not a failure.
    said = _decode_header(msg.get("Subject")) + "\n" + notice[:4000]
    action = (
        "delivered" if SUCCESS_RE.search(said) else "delayed" if DELAY_RE.search(said) else "failed"
    )
    found, omitted = _from_notice(notice, exclude, action)
    if len(first_text) > MAX_NOTICE_CHARS and not rest:
        omitted += _beyond_notice(first_text[MAX_NOTICE_CHARS:], found, exclude)
    # Candidates in the domains the returned message was addressed to are the recipients; the
    # others are helpdesk or relay addresses quoted in the text.
    domains = {a.rsplit("@", 1)[1] for a in _original_recipients(parts, rest)}
    found = [b for b in found if b.recipient.rsplit("@", 1)[1] in domains] or found
    failed = _addresses(msg.get("X-Failed-Recipients"))
    if _google_group_refusal(failed, notice):
        diag = _clean(notice)[:500]
        status = pseudo_status("rejected")
        return _cap(
            [
                Bounce(a, status, "", "failed", diag, "rejected", "sender", False)
                for a in sorted(failed)
            ]
        )
    if failed:
        found, omitted = _named_failed(failed, found, notice, action)
    if found:
        return found, omitted
    inner = _forwarded_bounce(parts)
    if inner is not None and nesting < 2:
        found, omitted = _parse(inner, nesting + 1)
        if found:
            return found, omitted
    rcpts, omitted = _cap([a for a in _original_recipients(parts, rest) if a not in exclude])
    errors = _error_lines(notice)
    return [_record(a, "", errors, action, "", notice) for a in rcpts], omitted
