"""Daily quotas and the usage ledger shared by every router through Redis (FNSERVE_REDIS_URL).

**Daily quotas.** One counter per subject × UTC day; a request is taken by one Lua script that checks
and increments atomically, so routers together admit exactly the quota. The counter expires at the
day's end plus an hour of grace, and every router copies the counters it touched into the database
each second (their value, not an increment: copying twice is harmless). A counter Redis has lost (a
restart without persistence) starts again from that copy.

**Usage.** Each invocation adds its tally to one Redis hash (a pipeline of HINCRBY, one round trip)
*before* the last byte of its answer is sent, so an answer a client saw is on record even if the
router dies a moment later. Any router merges the hash into the database every second: a script
renames it to a batch of its own (atomically, so no increment is lost or counted twice), the batch is
merged with its id in one database transaction (a batch merged once is never merged again), and only
then deleted. A router that dies holding a batch leaves it behind; another merges it once it is 2 s
old (its owner takes milliseconds; were it only slow, the batch id keeps the second merge out).

When Redis cannot be reached both fall back to this router's own counting (fnserve/router/quota.py's
DailyCounters, the in-memory ledger), flushed to the database every second like a router without
Redis — the same fail-soft stance as the rate limits (redis_quota.py).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from datetime import date

import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from fnserve.accounting import Tally, bucket_of, utc_day
from fnserve.router.quota import DailyCounters
from fnserve.router.redis_quota import RedisOutage
from fnserve.state import StateStore

log = logging.getLogger("fnserve.router")

GRACE_SECONDS = 3600
ORPHAN_SECONDS = 2.0
_PENDING = "fnserve:usage:pending"
_CLAIMS = "fnserve:usage:claims"

_TAKE = """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[3], 'EXAT', ARGV[4], 'NX')
  v = redis.call('GET', KEYS[1])
end
v = tonumber(v)
local cost = tonumber(ARGV[2])
if v + math.max(cost, 1) > tonumber(ARGV[1]) then return {0, v} end
return {1, redis.call('INCRBY', KEYS[1], cost)}
"""

# a settled reservation: the counter moves by the difference, recreated from the database's copy (and
# given its expiry) if Redis lost it meanwhile
_ADD = """
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], ARGV[2], 'EXAT', ARGV[3]) end
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""

_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('RENAME', KEYS[1], KEYS[2])
local t = redis.call('TIME')
redis.call('ZADD', KEYS[3], tonumber(t[1]), KEYS[2])
return 1
"""


_EPOCH = date(1970, 1, 1).toordinal()


def _expires_at(day_number: int) -> int:
    """When a day's counter may go (unix seconds): the day's end plus the grace; days counted from 1970."""
    return (day_number + 1) * 86400 + GRACE_SECONDS


class RedisDailyCounters(DailyCounters):
    """Daily counts in Redis, shared by every router; this router's own counting when Redis is down."""

    def __init__(self, state: StateStore, client: aioredis.Redis, sync_client: redis.Redis,
                 failed_open: Callable[[str], None] = lambda limit: None) -> None:
        """``failed_open("daily")`` is told of every quota check counted here because Redis was unreachable."""
        super().__init__(state)
        self.failed_open = failed_open
        self.client = client
        self.sync_client = sync_client
        self._take = client.register_script(_TAKE)
        self._add_script = client.register_script(_ADD)
        self._seen: dict[tuple[str, str], int] = {}
        """The last count Redis gave for each counter: where this router's own counting starts in an outage."""
        self._stored: dict[tuple[str, str], int] = {}
        """The database's copy of each counter this router touched: where a lost counter starts again."""
        self._touched: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._outage = RedisOutage("daily quotas are counted by each router on its own until it is back")

    @staticmethod
    def _key(subject: str, day: str) -> str:
        return f"fnserve:daily:{day}:{subject}"

    async def take(self, subject: str, limit: int, now: float, cost: int = 1) -> tuple[bool, int]:
        day = utc_day(now)
        row = (subject, day)
        if row not in self._stored:
            self._stored[row] = await self._count(subject, day)  # the database's copy, read once
        if not self._outage.down():
            try:
                allowed, count = await self._take(keys=[self._key(subject, day)],
                                                  args=[limit, cost, self._stored[row],
                                                        _expires_at(int(now // 86400))])
                with self._lock:
                    self._touched.add(row)
                self._seen[row] = int(count)
                return bool(allowed), max(0, limit - int(count))
            except (RedisError, OSError) as exc:
                self._outage.failed(exc)
        self.failed_open("daily")
        self._from_last_count(row)
        return await super().take(subject, limit, now, cost)

    async def used(self, subject: str, now: float) -> int:
        day = utc_day(now)
        if not self._outage.down():
            try:
                value = await self.client.get(self._key(subject, day))
                if value is not None:
                    return int(value)
            except (RedisError, OSError) as exc:
                self._outage.failed(exc)
        return max(await super().used(subject, now), self._seen.get((subject, day), 0))

    def _from_last_count(self, row: tuple[str, str]) -> None:
        """This router's own count continues from the highest it knows (Redis's last, the database's)."""
        known = max(self._seen.get(row, 0), self._stored.get(row, 0))
        if self._counts.get(row, 0) < known:
            self._counts[row] = known

    async def add(self, subject: str, day: str, delta: int) -> None:
        if not delta:
            return
        row = (subject, day)
        if not self._outage.down():
            try:
                expires_at = _expires_at(date.fromisoformat(day).toordinal() - _EPOCH)
                self._seen[row] = int(await self._add_script(keys=[self._key(subject, day)],
                                                             args=[delta, self._stored.get(row, 0), expires_at]))
                with self._lock:
                    self._touched.add(row)
                return
            except (RedisError, OSError) as exc:
                self._outage.failed(exc)
        self._from_last_count(row)
        await super().add(subject, day, delta)

    def flush(self) -> None:
        """Copy the counters touched since the last flush into the database (and flush the fallback's)."""
        super().flush()
        with self._lock:
            touched, self._touched = self._touched, set()
        if not touched:
            return
        rows = sorted(touched)
        try:
            values = self.sync_client.mget([self._key(subject, day) for subject, day in rows])
        except (RedisError, OSError) as exc:
            with self._lock:
                self._touched |= touched
            self._outage.failed(exc)
            return
        copied = {row: int(value) for row, value in zip(rows, values, strict=True) if value is not None}
        if copied:
            try:
                self.state.set_daily_counts(copied)
            except Exception:
                with self._lock:
                    self._touched |= touched
                raise
            self._stored.update(copied)


def _fields(tally_row: tuple[str, str, str], status: int, ms: float, predictor_ms: float, prompt_tokens: int,
            completion_tokens: int) -> list[tuple[str, float | int]]:
    prefix = "|".join(tally_row) + "|"
    fields: list[tuple[str, float | int]] = [(prefix + "requests", 1), (prefix + "total_ms", ms),
                                             (prefix + "predictor_ms", predictor_ms),
                                             (prefix + f"h{bucket_of(ms)}", 1)]
    if 400 <= status < 500:
        fields.append((prefix + "client_errors", 1))
    elif status >= 500:
        fields.append((prefix + "server_errors", 1))
    if prompt_tokens:
        fields.append((prefix + "prompt_tokens", prompt_tokens))
    if completion_tokens:
        fields.append((prefix + "completion_tokens", completion_tokens))
    return fields


def tallies_of(fields: Mapping[bytes | str, bytes | str]) -> dict[tuple[str, str, str], Tally]:
    """A batch's hash as tallies per key × function × day."""
    tallies: dict[tuple[str, str, str], Tally] = {}
    for raw_name, raw_value in fields.items():
        name = raw_name.decode() if isinstance(raw_name, bytes) else raw_name
        key_id, function, day, field = name.split("|")
        tally = tallies.setdefault((key_id, function, day), Tally())
        value = float(raw_value)
        if field.startswith("h"):
            index = int(field[1:])
            tally.histogram[index] = tally.histogram.get(index, 0) + int(value)
        elif field in ("total_ms", "predictor_ms"):
            setattr(tally, field, getattr(tally, field) + value)
        else:
            setattr(tally, field, getattr(tally, field) + int(value))
    return tallies


class RedisUsage:
    """The usage hash in Redis and its exactly-once merge into the database."""

    def __init__(self, state: StateStore, client: aioredis.Redis, sync_client: redis.Redis,
                 fallback: Callable[..., None]) -> None:
        self.state = state
        self.client = client
        self.sync_client = sync_client
        self.fallback = fallback
        self._claim = sync_client.register_script(_CLAIM)
        self._outage = RedisOutage("usage is kept by each router and merged every second until it is back")
        self._pruned_at = float("-inf")

    async def record(self, key_id: str, function: str, status: int, ms: float, predictor_ms: float, now: float,
                     prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        if not self._outage.down():
            pipe = self.client.pipeline(transaction=False)
            for name, value in _fields((key_id, function, utc_day(now)), status, ms, predictor_ms, prompt_tokens,
                                       completion_tokens):
                if isinstance(value, float):
                    pipe.hincrbyfloat(_PENDING, name, value)
                else:
                    pipe.hincrby(_PENDING, name, value)
            try:
                await pipe.execute()
                return
            except (RedisError, OSError) as exc:
                self._outage.failed(exc)
        self.fallback(key_id, function, status, ms, predictor_ms, now, prompt_tokens, completion_tokens)

    def merge(self) -> None:
        """Move what every router recorded into the database (blocking: a worker thread)."""
        if self._outage.down():
            return
        if time.monotonic() - self._pruned_at > 60:
            self._pruned_at = time.monotonic()
            self.state.forget_usage_batches(time.time() - 3600)
        try:
            batch = f"fnserve:usage:batch:{secrets.token_hex(8)}"
            if self._claim(keys=[_PENDING, batch, _CLAIMS]):
                self._merge_batch(batch)
            now = float(self.sync_client.time()[0])
            for orphan in self.sync_client.zrangebyscore(_CLAIMS, "-inf", now - ORPHAN_SECONDS):
                self._merge_batch(orphan.decode() if isinstance(orphan, bytes) else str(orphan))
        except (RedisError, OSError) as exc:
            self._outage.failed(exc)

    def _merge_batch(self, batch: str) -> None:
        fields = self.sync_client.hgetall(batch)
        if fields:
            self.state.merge_usage(tallies_of(fields), batch=batch)
        self.sync_client.delete(batch)
        self.sync_client.zrem(_CLAIMS, batch)
