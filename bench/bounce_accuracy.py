"""Bounce parsing accuracy over the shared corpus: mailpulse against flufl.bounce.

Setup, once:   .venv/bin/pip install -e '.[bench]'      (installs flufl.bounce)
Run:           .venv/bin/python bench/bounce_accuracy.py [CORPUS_DIR]

Prints mailpulse's recipient, status, reply code, reason and hard-flag accuracy against the
corpus's expected.jsonl (Sisimai's expectations), its false bounces on the emails that are not
bounces, and the same recipient measure for flufl.bounce (the library GNU Mailman uses), which
only finds addresses: a recipient counts as found when it is among the addresses returned for
its file. Both tools read the same bytes in the same run; the time ratio is printed too.
"""

from __future__ import annotations

import email
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from mailpulse.bounce.dsn import parse_message

DEFAULT_CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus" / "bounces"
FIELDS = ("recipient", "status", "reply_code", "reason", "hard")


def load(corpus: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, bytes], list[str]]:
    expected: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with (corpus / "expected.jsonl").open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            expected[Path(row["file"]).name].append(row)
    raw = {p.name: p.read_bytes() for p in sorted((corpus / "emails").glob("*.eml"))}
    not_bounces = [n for n in raw if n.startswith("is-not-bounce")]
    return expected, raw, not_bounces


def mailpulse_scores(
    expected: dict[str, list[dict[str, Any]]], raw: dict[str, bytes], not_bounces: list[str]
) -> tuple[dict[str, float], float, int, float]:
    right = dict.fromkeys(FIELDS, 0)
    found = total = 0
    t0 = time.perf_counter()
    results = {name: parse_message(data) for name, data in raw.items()}
    elapsed = time.perf_counter() - t0
    for name, rows in expected.items():
        got = results[name]
        addresses = {b.recipient for b in got}
        for row in rows:
            total += 1
            found += (row["recipient"] or "") in addresses
            if len(got) < row["index"]:
                continue
            b = got[row["index"] - 1]
            have = (b.recipient, b.status, b.reply_code, b.reason, b.hard)
            want = (row["recipient"] or "", row["status"], row["reply_code"])
            want += (row["sisimai_reason"], row["hard_bounce"])
            for field, h, w in zip(FIELDS, have, want, strict=True):
                right[field] += h == w
    false_bounces = sum(1 for n in not_bounces if results[n])
    return {f: right[f] / total for f in FIELDS}, found / total, false_bounces, elapsed


def flufl_scores(
    expected: dict[str, list[dict[str, Any]]], raw: dict[str, bytes], not_bounces: list[str]
) -> tuple[float, int, float] | None:
    try:
        from flufl.bounce import all_failures
    except ImportError:
        return None
    found = total = 0
    results: dict[str, set[str]] = {}
    t0 = time.perf_counter()
    for name, data in raw.items():
        msg = email.message_from_bytes(data)
        try:
            permanent, temporary = all_failures(msg)
        except Exception:  # noqa: BLE001 - a crash on one file is a miss, not the end of the run
            permanent, temporary = set(), set()
        addrs = {
            a.decode("utf-8", "replace") if isinstance(a, bytes) else str(a)
            for a in permanent | temporary
        }
        results[name] = {a.lower() for a in addrs}
    elapsed = time.perf_counter() - t0
    for name, rows in expected.items():
        for row in rows:
            total += 1
            found += (row["recipient"] or "").lower() in results[name]
    false_bounces = sum(1 for n in not_bounces if results[n])
    return found / total, false_bounces, elapsed


def main(argv: list[str]) -> int:
    corpus = Path(argv[1]) if len(argv) > 1 else DEFAULT_CORPUS
    if not (corpus / "expected.jsonl").is_file():
        print(f"no corpus at {corpus} (expected.jsonl and emails/)", file=sys.stderr)
        return 2
    expected, raw, not_bounces = load(corpus)
    n_rows = sum(len(v) for v in expected.values())
    print(
        f"corpus: {len(raw)} emails, {n_rows} expected recipients, {len(not_bounces)} non-bounces"
    )
    acc, found, false_mp, t_mp = mailpulse_scores(expected, raw, not_bounces)
    print("mailpulse   " + "  ".join(f"{f} {acc[f]:.1%}" for f in FIELDS))
    print(f"mailpulse   recipient found (any order) {found:.1%}  false bounces {false_mp}")
    flufl = flufl_scores(expected, raw, not_bounces)
    if flufl is None:
        print("flufl.bounce not installed: pip install -e '.[bench]'")
        return 0
    f_found, false_fl, t_fl = flufl
    print(f"flufl.bounce recipient found (any order) {f_found:.1%}  false bounces {false_fl}")
    print(f"recipient found, mailpulse / flufl.bounce: {found / f_found:.2f}x")
    print(f"time for the corpus: mailpulse {t_mp:.2f}s, flufl.bounce {t_fl:.2f}s")
    print(f"time ratio, mailpulse / flufl.bounce: {t_mp / t_fl:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
