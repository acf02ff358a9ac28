"""Rate and concurrency limits shared by several routers, in Redis, each check one atomic Lua script.

GCRA takes its clock from Redis (TIME), so routers with skewed clocks still share one bucket.
Concurrency is a sorted set of in-flight request ids scored by start time; entries older than the
longest possible request are pruned, so a router that died holding slots cannot leak them forever.

When Redis cannot be reached, fnserve fails open: the request is admitted, a warning is logged (at
most every 10 s), each check not made is counted (``failed_open``: fnserve_limiter_fail_open_total) and
Redis is not retried for a second, so an outage costs no latency. Keys are still
checked (SQLite) and daily quotas still hold; only rate and concurrency go unenforced. An inference
platform that stops serving because its limiter's store is down turns a degraded limiter into an outage;
Stripe and Kong chose the same.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from fnserve.router.quota import RateResult

log = logging.getLogger("fnserve.router")

_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = 1 / tonumber(ARGV[1])
local capacity = tonumber(ARGV[2]) * interval
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + tonumber(ARGV[3]) * interval
if new_tat - now > capacity + 1e-9 then
  local left = math.max(0, math.floor((capacity - (tat - now)) / interval + 1e-9))
  return {0, tostring(tat - now), tostring(left), tostring(new_tat - capacity - now)}
end
local remaining = math.floor((capacity - (new_tat - now)) / interval + 1e-9)
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
return {1, tostring(new_tat - now), tostring(remaining), '0'}
"""

# settling a reservation: the bucket moves by the difference; a refund never fills it beyond full
_ADJUST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now) + tonumber(ARGV[2]) / tonumber(ARGV[1])
if tat <= now then redis.call('DEL', KEYS[1]) return 0 end
redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
return 1
"""

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""

MAX_REQUEST_SECONDS = 3600  # the longest spec.timeout


class RedisOutage:
    """Remembers that Redis failed, so it is not retried for a second (an outage costs no latency) and
    is warned about at most every 10 s, saying ``what`` goes unenforced meanwhile."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.until = 0.0
        self.warned_at = 0.0

    def down(self) -> bool:
        return time.monotonic() < self.until

    def failed(self, exc: Exception) -> None:
        now = time.monotonic()
        self.until = now + 1.0
        if now - self.warned_at > 10:
            self.warned_at = now
            log.warning("Redis is unreachable (%s): %s", exc, self.what)


class RedisStore:
    def __init__(self, url: str, timeout: float = 0.25,
                 failed_open: Callable[[str], None] = lambda limit: None) -> None:
        """``failed_open(limit)`` is told of every "rate" or "concurrency" check admitted without Redis."""
        self.failed_open = failed_open
        self.client = aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._gcra = self.client.register_script(_GCRA)
        self._acquire = self.client.register_script(_ACQUIRE)
        self._adjust = self.client.register_script(_ADJUST)
        self._outage = RedisOutage("rate and concurrency limits are not enforced until it is back (failing open)")

    async def rate(self, subject: str, rate: float, burst: int, cost: float = 1) -> RateResult:
        if not self._outage.down():
            try:
                allowed, reset, remaining, retry = await self._gcra(keys=[f"fnserve:rate:{subject}"],
                                                                    args=[rate, burst, cost])
                return RateResult(bool(allowed), 0.0, int(remaining), float(reset), float(retry))
            except (RedisError, OSError) as exc:
                self._outage.failed(exc)
        self.failed_open("rate")
        return RateResult(True, 0.0, burst, 0.0, 0.0)

    async def adjust(self, subject: str, rate: float, delta: float) -> None:
        if not delta or self._outage.down():
            return
        try:
            await self._adjust(keys=[f"fnserve:rate:{subject}"], args=[rate, delta])
        except (RedisError, OSError) as exc:
            self._outage.failed(exc)

    async def acquire(self, subject: str, limit: int) -> str | None:
        token = secrets.token_hex(8)
        if not self._outage.down():
            try:
                got = await self._acquire(keys=[f"fnserve:inflight:{subject}"],
                                          args=[limit, token, MAX_REQUEST_SECONDS])
                return token if got else None
            except (RedisError, OSError) as exc:
                self._outage.failed(exc)
        self.failed_open("concurrency")
        return "open"

    async def release(self, subject: str, token: str) -> None:
        if token == "open" or self._outage.down():
            return
        try:
            await self.client.zrem(f"fnserve:inflight:{subject}", token)
        except (RedisError, OSError) as exc:
            self._outage.failed(exc)

    async def close(self) -> None:
        await self.client.aclose()
