"""VERP bounce addresses: `bounce-<uid>@domain`, or signed `bounce-<uid>-<sig>@domain`.

The signature is an HMAC-SHA256 of the user id under a configured key, truncated and written
in lowercase base32, so a receiver that lowercases the address does not break it. A bounce to an
unsigned address, or one whose signature does not verify, still names a user but is marked
unverified: it can be counted, never blacklist anyone on its own (anyone can forge a bounce).

Bounces go to the envelope sender (Return-Path, MAIL FROM), never to Reply-To or From: the
mailing software must put the VERP address in the envelope.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from email.utils import getaddresses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from email.message import Message

SIGNATURE_CHARS = 10  # 50 bits of base32: forging one takes ~10^15 tries against the MX
DEFAULT_PREFIX = "bounce"
# Postfix's default recipient_delimiter is "+"; mass-mailing setups use "-" as DESIGN.md does.
DEFAULT_DELIMITERS = "-+"
_USER_ID_RE = re.compile(r"^[A-Za-z0-9_.=]+$")


@dataclass(frozen=True, slots=True)
class VerpId:
    user_id: str
    verified: bool  # signed with the configured key and the signature matches
    address: str  # the VERP address it was read from


@dataclass(frozen=True, slots=True)
class VerpSettings:
    """How our VERP addresses are written: the config file's bounce: section."""

    key: bytes | None = None
    prefix: str = DEFAULT_PREFIX
    delimiters: str = DEFAULT_DELIMITERS

    def user_of(self, address: str) -> VerpId | None:
        return parse_address(address, self.key, self.prefix, self.delimiters)


def signature(user_id: str, key: bytes) -> str:
    digest = hmac.new(key, user_id.lower().encode("utf-8"), hashlib.sha256).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:SIGNATURE_CHARS]


def make_address(
    user_id: str,
    domain: str,
    key: bytes | None = None,
    prefix: str = DEFAULT_PREFIX,
    delimiter: str = "-",
) -> str:
    """The envelope sender for a mail to user_id: signed when a key is given."""
    if not _USER_ID_RE.match(user_id) or delimiter in user_id:
        raise ValueError(f"user id {user_id!r} must be letters, digits, '_', '.' or '='")
    local = f"{prefix}{delimiter}{user_id}"
    if key:
        local += f"{delimiter}{signature(user_id, key)}"
    return f"{local}@{domain}"


def parse_address(
    address: str,
    key: bytes | None = None,
    prefix: str = DEFAULT_PREFIX,
    delimiters: str = DEFAULT_DELIMITERS,
) -> VerpId | None:
    """The user id in a VERP address, or None when the address is not one of ours."""
    local = address.strip().strip("<>").rsplit("@", 1)[0]
    if len(local) <= len(prefix) + 1 or local[: len(prefix)].lower() != prefix.lower():
        return None
    delim = local[len(prefix)]
    if delim not in delimiters:
        return None
    rest = local[len(prefix) + 1 :]
    user_id, sig = rest, ""
    if delim in rest:
        head, tail = rest.rsplit(delim, 1)
        if len(tail) == SIGNATURE_CHARS:
            user_id, sig = head, tail
    if not user_id or not _USER_ID_RE.match(user_id):
        return None
    verified = bool(key and sig) and hmac.compare_digest(
        sig.lower(), signature(user_id, key or b"")
    )
    return VerpId(user_id, verified, address.strip().strip("<>"))


def find_user(
    msg: Message,
    envelope_recipient: str = "",
    key: bytes | None = None,
    prefix: str = DEFAULT_PREFIX,
    delimiters: str = DEFAULT_DELIMITERS,
) -> VerpId | None:
    """The VERP id of the address a bounce was delivered to.

    Tried in order: the envelope recipient given by the delivery agent, Delivered-To (Postfix
    adds one per local delivery), X-Original-To, then To.
    """
    candidates = [envelope_recipient] if envelope_recipient else []
    for header in ("Delivered-To", "X-Original-To", "To"):
        values = [str(v) for v in msg.get_all(header, [])]
        candidates += [a for _, a in getaddresses(values) if a]
    for address in candidates:
        found = parse_address(address, key, prefix, delimiters)
        if found:
            return found
    return None


def main(argv: list[str] | None = None) -> int:
    """`python -m mailpulse.bounce.verp UID DOMAIN`: print the envelope sender for a user.

    The key is read from the environment variable MAILPULSE_VERP_KEY (unsigned without it).
    """
    import argparse
    import os
    import sys

    p = argparse.ArgumentParser(
        prog="python -m mailpulse.bounce.verp",
        description="Print the VERP envelope sender for one user, signed with the key in "
        "MAILPULSE_VERP_KEY.",
    )
    p.add_argument("user_id", help="the user's id (letters, digits, _ and .)")
    p.add_argument("domain", help="the bounce domain, e.g. bounces.example.com")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="the local part's prefix (bounce)")
    args = p.parse_args(argv)
    key = os.environ.get("MAILPULSE_VERP_KEY", "").encode() or None
    if key is None:
        print(
            "mailpulse: MAILPULSE_VERP_KEY is not set: the address is unsigned; bounces to it"
            " name the user but are unverified and never blacklist anyone on their own",
            file=sys.stderr,
        )
    try:
        address = make_address(args.user_id, args.domain, key, args.prefix)
    except ValueError as e:
        print(f"mailpulse: {e}", file=sys.stderr)
        return 2
    print(address)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
