"""Rate limits per user and per IP, from ``SPOTEX_RATE_LIMITS`` (``user=50/s,ip=200/s`` or ``off``).

Two implementations of one small interface, ``await limiter.hit(key) -> retry_after | None``:

- ``LocalLimiter``: in-process token buckets (capacity = the rate, refilled continuously), for
  the embedded default where one process serves every request;
- ``RedisLimiter``: a token bucket per key kept in Redis by one Lua script (atomic, so api
  replicas share the budget), used when ``SPOTEX_REDIS_URL`` is set or the broker is Redis.

A limit is ``N/s``, ``N/m`` or ``N/h``. Keys are ``user:<id>`` and ``ip:<address>``.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_LIMIT = re.compile(r"^\s*(user|ip)\s*=\s*(\d+)\s*/\s*([smh])\s*$")


@dataclass(frozen=True, slots=True)
class Rate:
    count: int
    period: float

    @property
    def per_second(self) -> float:
        return self.count / self.period


def parse_limits(text: str) -> dict[str, Rate]:
    """``"user=50/s,ip=200/s"`` → ``{"user": Rate(50, 1.0), "ip": Rate(200, 1.0)}``; ``off`` → {}."""
    text = text.strip()
    if text.lower() in ("off", "none", ""):
        return {}
    out: dict[str, Rate] = {}
    for part in text.split(","):
        m = _LIMIT.match(part)
        if m is None:
            raise ValueError(f"SPOTEX_RATE_LIMITS: cannot read {part!r} (expected e.g. user=50/s,ip=200/s)")
        kind, count, unit = m.groups()
        if int(count) <= 0:
            raise ValueError(f"SPOTEX_RATE_LIMITS: {part!r} must allow at least 1")
        out[kind] = Rate(int(count), PERIODS[unit])
    return out


class Limiter(Protocol):
    async def hit(self, kind: str, key: str) -> float | None:
        """Take one token; None when allowed, else seconds until a token is there."""


class NoLimiter:
    async def hit(self, kind: str, key: str) -> float | None:
        return None


class LocalLimiter:
    """Token buckets in this process; old buckets are dropped when they would be full again."""

    def __init__(self, rates: dict[str, Rate], clock: Callable[[], float] = time.monotonic) -> None:
        self.rates = rates
        self.clock = clock
        self._buckets: dict[str, list[float]] = {}  # key → [tokens, last time]
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    async def hit(self, kind: str, key: str) -> float | None:
        return self.take(kind, key)

    def take(self, kind: str, key: str) -> float | None:
        rate = self.rates.get(kind)
        if rate is None:
            return None
        now = self.clock()
        full, per_second = float(rate.count), rate.per_second
        with self._lock:
            if now >= self._next_sweep:
                self._sweep(now)
            bucket = self._buckets.get(f"{kind}:{key}")
            if bucket is None:
                bucket = self._buckets[f"{kind}:{key}"] = [full, now]
            tokens = min(full, bucket[0] + (now - bucket[1]) * per_second)
            bucket[1] = now
            if tokens >= 1.0:
                bucket[0] = tokens - 1.0
                return None
            bucket[0] = tokens
            return (1.0 - tokens) / per_second

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + 60.0
        stale = [k for k, (_, last) in self._buckets.items() if now - last > 3600.0]
        for k in stale:
            del self._buckets[k]


# KEYS[1] bucket key; ARGV: capacity, tokens per second. Time is the Redis server's clock, so
# replicas with skewed clocks share one budget correctly.
_BUCKET_LUA = """
local cap = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(b[1]) or cap
local ts = tonumber(b[2]) or now
tokens = math.min(cap, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(cap / rate) + 1)
return tostring(wait)
"""


class RedisLimiter:
    """The same buckets in Redis, shared by api replicas."""

    def __init__(self, rates: dict[str, Rate], url: str) -> None:
        import redis.asyncio as aioredis

        self.rates = rates
        self.url = url
        self._client: Any = aioredis.Redis.from_url(url)
        self._script: Any = self._client.register_script(_BUCKET_LUA)

    async def hit(self, kind: str, key: str) -> float | None:
        rate = self.rates.get(kind)
        if rate is None:
            return None
        wait = float(
            await self._script(keys=[f"spotex:rl:{kind}:{key}"], args=[rate.count, rate.per_second])
        )
        return wait if wait > 0 else None

    async def close(self) -> None:
        await self._client.aclose()


def build_limiter(text: str, redis_url: str | None) -> Limiter:
    rates = parse_limits(text)
    if not rates:
        return NoLimiter()
    if redis_url:
        return RedisLimiter(rates, redis_url)
    return LocalLimiter(rates)


def retry_after_header(wait: float) -> str:
    return str(max(1, math.ceil(wait)))
