"""The blacklist in Redis, for a fleet: one analyser decides, every node follows.

Keys (all under the configured prefix, "mailpulse:" by default):
- `bl:e:<key>`   an entry's JSON, with Redis's own expiry at the entry's end (none: until lifted)
- `bl:index`     sorted set of the keys, scored by expiry (+inf: until lifted): the table
- `bl:strikes`   hash "<kind>\\t<key>" -> entries it had, kept after they expire
- `bl:soft:<key>` set of days with a soft failure, expiring on its own
- `bl:quarantine` hash key -> JSON of the held entry
- `bl:mail:<key>` a bounce mail already recorded (expires after 30 days)
- `bl:counters`  hash "<name>\\t<label>" -> count; "version\\t" grows with every change
- `outcomes`     the stream every node's agent adds its outcomes to; the analysers read it as
  the consumer group `analysers` and acknowledge each entry once recorded.
"""

from __future__ import annotations

import json
import math
from typing import Any

from mailpulse.bounce.policy import (
    ADD,
    CLEAR_SOFT,
    CONFIRM,
    QUARANTINE,
    SOFT,
    Decision,
    Entry,
    Evidence,
)
from mailpulse.bounce.store import (
    EVERYTHING,
    PURGE_AFTER_S,
    Filter,
    entry_json,
    entry_of_json,
    merge_evidence,
)

SOFT_KEEP_S = 90 * 86_400
MAIL_KEEP_S = 30 * 86_400
STREAM = "outcomes"
GROUP = "analysers"


class RedisStore:
    def __init__(self, url: str, prefix: str = "mailpulse:", timeout: float = 5.0) -> None:
        import redis

        self.r: Any = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True
        )
        self.p = prefix

    def k(self, *parts: str) -> str:
        return self.p + ":".join(parts)

    def close(self) -> None:
        self.r.close()

    # -- what the policy reads ---------------------------------------------------------
    def entry(self, key: str) -> Entry | None:
        body = self.r.get(self.k("bl", "e", key))
        return entry_of_json(json.loads(str(body))) if body else None

    def strikes(self, key: str, kind: str) -> int:
        return int(self.r.hget(self.k("bl", "strikes"), f"{kind}\t{key}") or 0)

    def soft_days(self, key: str) -> list[int]:
        return sorted(int(d) for d in self.r.smembers(self.k("bl", "soft", key)))

    def held(self, key: str) -> bool:
        return bool(self.r.hexists(self.k("bl", "quarantine"), key))

    # -- writes -------------------------------------------------------------------------
    def _put(self, pipe: Any, e: Entry) -> None:
        name = self.k("bl", "e", e.key)
        pipe.set(name, json.dumps(entry_json(e)))
        if e.expires is not None:
            pipe.expireat(name, math.ceil(e.expires))
        pipe.zadd(self.k("bl", "index"), {e.key: e.expires if e.expires is not None else math.inf})

    def _add(self, pipe: Any, e: Entry) -> None:
        e.hold = ""
        self._put(pipe, e)
        pipe.hincrby(self.k("bl", "strikes"), f"{e.kind}\t{e.key}", 1)
        pipe.delete(self.k("bl", "soft", e.key))
        pipe.hdel(self.k("bl", "quarantine"), e.key)
        pipe.hincrby(self.k("bl", "counters"), f"additions\t{e.reason}", 1)
        pipe.hincrby(self.k("bl", "counters"), "version\t", 1)

    def apply(self, d: Decision, ev: Evidence | None) -> bool:
        pipe = self.r.pipeline(transaction=True)
        changed = False
        if d.action == ADD and d.entry is not None:
            self._add(pipe, d.entry)
            changed = True
        elif d.action == QUARANTINE and d.entry is not None:
            pipe.hsetnx(self.k("bl", "quarantine"), d.key, json.dumps(entry_json(d.entry)))
        elif d.action == CONFIRM and d.entry is not None and ev is not None:
            if merge_evidence(d.entry, ev):
                pipe.set(self.k("bl", "e", d.key), json.dumps(entry_json(d.entry)), keepttl=True)
        elif d.action == SOFT:
            pipe.sadd(self.k("bl", "soft", d.key), d.soft_day)
            pipe.expire(self.k("bl", "soft", d.key), SOFT_KEEP_S)
        elif d.action == CLEAR_SOFT:
            pipe.delete(self.k("bl", "soft", d.key))
        pipe.execute()
        return changed

    def put(self, e: Entry) -> None:
        pipe = self.r.pipeline(transaction=True)
        self._add(pipe, e)
        pipe.execute()

    # -- reading and bulk changes ---------------------------------------------------------
    def keys_in_force(self, now: float) -> list[str]:
        return list(self.r.zrangebyscore(self.k("bl", "index"), f"({now}", "+inf"))

    def in_force(self, now: float) -> int:
        return int(self.r.zcount(self.k("bl", "index"), f"({now}", "+inf"))

    def entries(self, now: float, f: Filter = EVERYTHING) -> list[Entry]:
        keys = sorted(self.keys_in_force(now))
        out: list[Entry] = []
        for i in range(0, len(keys), 1000):
            chunk = keys[i : i + 1000]
            bodies = self.r.mget([self.k("bl", "e", k) for k in chunk])
            out += [entry_of_json(json.loads(b)) for b in bodies if b]
        return [e for e in out if f.matches(e)]

    def lift(self, now: float, f: Filter) -> int:
        keys = [e.key for e in self.entries(now, f)]
        if keys:
            pipe = self.r.pipeline(transaction=True)
            pipe.delete(*[self.k("bl", "e", k) for k in keys])
            pipe.zrem(self.k("bl", "index"), *keys)
            pipe.hincrby(self.k("bl", "counters"), "version\t", 1)
            pipe.execute()
        return len(keys)

    def quarantined(self, f: Filter = EVERYTHING) -> list[Entry]:
        held = self.r.hgetall(self.k("bl", "quarantine"))
        entries = [entry_of_json(json.loads(v)) for _, v in sorted(held.items())]
        return [e for e in entries if f.matches(e)]

    def release(self, now: float, f: Filter) -> int:
        held = self.quarantined(f)
        pipe = self.r.pipeline(transaction=True)
        for e in held:
            if e.expires is not None:
                e.expires = now + (e.expires - e.added)
            e.added = now
            self._add(pipe, e)
        pipe.execute()
        return len(held)

    def drop(self, f: Filter) -> int:
        keys = [e.key for e in self.quarantined(f)]
        if keys:
            self.r.hdel(self.k("bl", "quarantine"), *keys)
        return len(keys)

    def purge(self, now: float, keep_s: float = PURGE_AFTER_S) -> int:
        """Drop index members whose entry expired more than keep_s ago (Redis dropped the
        entries themselves when they expired; the strikes stay)."""
        return int(self.r.zremrangebyscore(self.k("bl", "index"), "-inf", f"({now - keep_s}"))

    def seen_mail(self, key: str) -> bool:
        return bool(self.r.exists(self.k("bl", "mail", key)))

    def mark_mail(self, key: str) -> None:
        self.r.set(self.k("bl", "mail", key), 1, ex=MAIL_KEEP_S)

    def count(self, name: str, label: str = "", by: int = 1) -> None:
        self.r.hincrby(self.k("bl", "counters"), f"{name}\t{label}", by)

    def counters(self) -> dict[tuple[str, str], int]:
        raw = self.r.hgetall(self.k("bl", "counters"))
        out: dict[tuple[str, str], int] = {}
        for field, v in raw.items():
            name, _, label = str(field).partition("\t")
            out[(name, label)] = int(v)
        return out

    def version(self) -> int:
        return int(self.r.hget(self.k("bl", "counters"), "version\t") or 0)

    # -- the outcome stream ---------------------------------------------------------------
    def send(self, events: list[tuple[str, str]]) -> None:
        """(event id, outcome JSON) pairs onto the stream, in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for event_id, body in events:
            pipe.xadd(self.k(STREAM), {"id": event_id, "o": body})
        pipe.execute()

    def ensure_group(self) -> None:
        import redis

        try:
            self.r.xgroup_create(self.k(STREAM), GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def receive(
        self, consumer: str, pending: bool, block_ms: int = 1000
    ) -> list[tuple[str, str, str]]:
        """(stream id, event id, outcome JSON): this consumer's unacknowledged entries when
        pending (after a restart), else new ones."""
        got = self.r.xreadgroup(
            GROUP, consumer, {self.k(STREAM): "0" if pending else ">"}, count=500,
            block=None if pending else block_ms,
        )  # fmt: skip
        out = []
        for _stream, items in got or []:
            for sid, fields in items:
                out.append((sid, fields.get("id", ""), fields.get("o", "")))
        return out

    def first_time(self, event_id: str) -> bool:
        """True the first time an event id is seen (a node that resent after an outage)."""
        return bool(self.r.set(self.k("seen", event_id), 1, nx=True, ex=7 * 86_400))

    def ack(self, stream_ids: list[str]) -> None:
        if stream_ids:
            self.r.xack(self.k(STREAM), GROUP, *stream_ids)
