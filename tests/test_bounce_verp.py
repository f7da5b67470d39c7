"""Signed VERP addresses: made, read back, verified; and which header names the user."""

from __future__ import annotations

import base64
import email
import hashlib
import hmac
import subprocess
import sys

import pytest
from mailpulse.bounce.verp import find_user, make_address, parse_address

KEY = b"s3cret"


def expected_sig(uid: str, key: bytes) -> str:
    # Written out here from the documented scheme, independently of the module.
    mac = hmac.new(key, uid.encode(), hashlib.sha256).digest()
    return base64.b32encode(mac).decode().lower()[:10]


def test_signed_address_has_the_documented_shape() -> None:
    addr = make_address("12345", "bounces.example.com", KEY)
    assert addr == f"bounce-12345-{expected_sig('12345', KEY)}@bounces.example.com"
    assert make_address("12345", "bounces.example.com") == "bounce-12345@bounces.example.com"


@pytest.mark.parametrize("transform", [str, str.lower, str.upper])
def test_signed_address_survives_case_changes(transform) -> None:  # type: ignore[no-untyped-def]
    addr = transform(make_address("42", "b.example", KEY))
    got = parse_address(addr, KEY)
    assert got is not None and (got.user_id, got.verified) == ("42", True)


def test_wrong_missing_or_forged_signature_is_unverified_but_named() -> None:
    signed = make_address("42", "b.example", KEY)
    got = parse_address(signed, b"other key")
    assert got is not None and (got.user_id, got.verified) == ("42", False)
    unsigned = parse_address("bounce-42@b.example", KEY)
    assert unsigned is not None and (unsigned.user_id, unsigned.verified) == ("42", False)
    forged = parse_address("bounce-42-aaaaaaaaaa@b.example", KEY)
    assert forged is not None and (forged.user_id, forged.verified) == ("42", False)
    # A signature for another user does not carry over.
    other = f"bounce-43-{expected_sig('42', KEY)}@b.example"
    got = parse_address(other, KEY)
    assert got is not None and (got.user_id, got.verified) == ("43", False)


@pytest.mark.parametrize(
    "address", ["news@b.example", "bouncer-1@b.example", "bounce@b.example", "bounce-@b.example"]
)
def test_other_addresses_are_not_ours(address: str) -> None:
    assert parse_address(address, KEY) is None


def test_plus_delimiter_and_bad_user_ids() -> None:
    got = parse_address("bounce+77@b.example", KEY)
    assert got is not None and got.user_id == "77"
    for bad in ("", "a b", "x@y", "1-2"):
        with pytest.raises(ValueError):
            make_address(bad, "b.example", KEY)


def test_user_comes_from_envelope_then_delivered_to_then_original_to_then_to() -> None:
    msg = email.message_from_string(
        "Delivered-To: bounce-2@b.example\nX-Original-To: bounce-3@b.example\n"
        "To: bounce-4@b.example\nFrom: MAILER-DAEMON@x.example\n\nbody\n"
    )
    assert find_user(msg, "bounce-1@b.example").user_id == "1"  # type: ignore[union-attr]
    assert find_user(msg).user_id == "2"  # type: ignore[union-attr]
    del msg["Delivered-To"]
    assert find_user(msg).user_id == "3"  # type: ignore[union-attr]
    del msg["X-Original-To"]
    assert find_user(msg).user_id == "4"  # type: ignore[union-attr]
    del msg["To"]
    assert find_user(msg) is None


def test_helper_command_for_the_mailing_software() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mailpulse.bounce.verp", "9001", "b.example"],
        capture_output=True,
        text=True,
        env={"MAILPULSE_VERP_KEY": KEY.decode(), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert out.stdout.strip() == f"bounce-9001-{expected_sig('9001', KEY)}@b.example"
    bad = subprocess.run(
        [sys.executable, "-m", "mailpulse.bounce.verp", "no good", "b.example"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "must be" in bad.stderr


def test_helper_command_warns_when_it_has_no_key() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mailpulse.bounce.verp", "9001", "b.example"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert out.stdout == "bounce-9001@b.example\n"  # still printed: the user is named
    assert out.stderr.count("\n") == 1 and "MAILPULSE_VERP_KEY is not set" in out.stderr
