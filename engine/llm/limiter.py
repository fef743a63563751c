"""Rate limits: one limiter per (base URL, model), shared by every request to that model.

Every request `LLMClient.complete` sends (a step, a `foreach` item, a tool-loop turn, the
decomposer) first waits for its model's limiter, then reports how the answer went. The
limiters belong to the event loop, so runs and decomposer calls that overlap in one process
share them (`Limiters`); a run's LLM calls stay in its coordinating process, also with
`--executor dask`.

- Requests and tokens per minute are token buckets that refill continuously and hold about one
  second's worth (`BURST_SECONDS`), as providers enforce per-minute limits in short intervals. A
  request costs one request and its estimated tokens (`estimate_tokens`: the characters of its
  instructions, conversation, tools and output format divided by 4, plus `max_output_tokens`);
  the usage the answer reports corrects the token bucket afterwards.
- Limits come from what was declared (`limits: {MODEL: {rpm: N, tpm: N}}` in the pipeline, or
  the `STEPCHAIN_LIMITS` environment variable in the same JSON shape), and are learned from the
  `x-ratelimit-limit-*`, `x-ratelimit-remaining-*` and `x-ratelimit-reset-*` headers of every
  answer (the lower of declared and learned wins; the remaining count seeds a bucket once).
- A 429 pauses every request to the model for its `retry-after-ms`/`Retry-After` (else the
  reset the headers announced, else a backoff), and halves the number of requests allowed in
  flight; each answer adds back `1/window` (AIMD), so concurrency converges on what the limit
  sustains.
- Waiting is not a failure. The step attempt's deadline (`budget`) bounds it: a wait known to
  pass the deadline fails at once with `RateLimitTimeout`; `Budget.waiting` tells the scheduler
  that a timeout struck while waiting for a limiter.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from stepchain.errors import RateLimitTimeout
from stepchain.llm.limits import Limits, declared_limits, limits_from_env, lower

__all__ = [
    "Budget",
    "Limiters",
    "Limits",
    "ModelLimiter",
    "budget",
    "declared_limits",
    "estimate_tokens",
    "limits_from_env",
]

BURST_SECONDS = 1.0
INITIAL_WINDOW = 64.0  # requests in flight per model before any 429 (the scheduler caps it too)
MAX_WINDOW = 1024.0
RESET = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


@dataclass
class Budget:
    """One step attempt's deadline (event-loop time) and the limiter it is waiting for."""

    deadline: float | None
    timeout: float | None = None
    waiting: str | None = None  # the limiter's name while waiting for it
    notify: Callable[[str | None], None] | None = None  # hears waiting start (name) and end

    def wait_for(self, name: str | None) -> None:
        self.waiting = name
        if self.notify is not None:
            self.notify(name)


budget: ContextVar[Budget | None] = ContextVar("stepchain_llm_budget", default=None)


def estimate_tokens(
    system: str | None, messages: list[Any], extra: list[Any], max_output_tokens: int | None
) -> int:
    """Characters / 4 of everything sent, plus the answer's token allowance."""
    chars = len(system or "")
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else message
        chars += len(content) if isinstance(content, str) else len(json.dumps(content, default=str))
    for part in extra:
        chars += len(json.dumps(part, default=str)) if part else 0
    return math.ceil(chars / 4) + (max_output_tokens or 0)


class _Bucket:
    """A token bucket of `per_minute`, holding BURST_SECONDS' worth; the level may go negative
    (a request larger than the bucket is let through when it is full, and repaid)."""

    def __init__(self, per_minute: float, now: float) -> None:
        self.per_minute = per_minute
        self.level = self.capacity
        self.stamp = now

    @property
    def rate(self) -> float:
        return self.per_minute / 60.0

    @property
    def capacity(self) -> float:
        return max(1.0, self.rate * BURST_SECONDS)

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def delay(self, cost: float, now: float) -> float:
        self.refill(now)
        need = min(cost, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate


class ModelLimiter:
    """The limiter of one (base URL, model)."""

    def __init__(self, name: str, declared: Limits, now: float) -> None:
        self.name = name
        self.declared = declared
        self.requests = _Bucket(declared.rpm, now) if declared.rpm else None
        self.tokens = _Bucket(declared.tpm, now) if declared.tpm else None
        self.paused_until = 0.0
        self.window = INITIAL_WINDOW
        self.in_flight = 0
        self.strikes = 0  # pauses in a row (429s after a pause ended) since the last answer
        self.waiting = 0  # requests waiting for this limiter now
        self.rate_limited = 0  # 429s in all
        self._last_cut = -math.inf
        self._queue = asyncio.Lock()  # FIFO: only the head of the queue watches the clock
        self._released: asyncio.Future[None] | None = None
        self.sent: deque[tuple[float, int, int]] = deque()  # (time, requests, tokens)

    # -- waiting ----------------------------------------------------------------------------
    async def acquire(self, cost: int) -> None:
        """Wait until a request of `cost` tokens may be sent, and count it as sent.

        Raises:
            RateLimitTimeout: the wait would pass the step attempt's deadline.
        """
        loop = asyncio.get_running_loop()
        if not self._queue.locked() and self._delay(cost, loop.time()) == 0:
            self._take(cost, loop.time())
            return
        current = budget.get()
        if current is not None:
            current.wait_for(self.name)
        self.waiting += 1
        try:
            async with self._queue:
                while True:
                    now = loop.time()
                    delay = self._delay(cost, now)
                    if delay == 0:
                        break
                    if current is not None and self._past(current, now + delay):
                        raise self._too_long(delay, current)
                    if delay == math.inf:  # the window is full: wait for an answer
                        self._released = loop.create_future()
                        await self._released
                    else:
                        await asyncio.sleep(delay)
                self._take(cost, loop.time())
        finally:
            self.waiting -= 1
            if current is not None:
                current.wait_for(None)

    def _delay(self, cost: int, now: float) -> float:
        """Seconds until a request may go; inf while the window is full."""
        delay = max(0.0, self.paused_until - now)
        if self.requests is not None:
            delay = max(delay, self.requests.delay(1, now))
        if self.tokens is not None:
            delay = max(delay, self.tokens.delay(cost, now))
        if delay == 0 and self.in_flight >= max(1, int(self.window)):
            return math.inf
        return delay

    def _take(self, cost: int, now: float) -> None:
        self.in_flight += 1
        if self.requests is not None:
            self.requests.level -= 1
        if self.tokens is not None:
            self.tokens.level -= cost
        self.sent.append((now, 1, cost))
        while self.sent and self.sent[0][0] < now - 60:
            self.sent.popleft()

    @staticmethod
    def _past(current: Budget, when: float) -> bool:
        return current.deadline is not None and when != math.inf and when > current.deadline

    def _too_long(self, delay: float, current: Budget) -> RateLimitTimeout:
        timeout = f" ({current.timeout:g}s)" if current.timeout is not None else ""
        return RateLimitTimeout(
            f"rate limited: the rate limit of {self.name} asks for a {delay:.1f}s wait, past "
            f"the step's timeout{timeout}",
            "raise the step's timeout:, lower --max-concurrent, or declare the account's "
            "limits (limits: {MODEL: {rpm: N, tpm: N}}) so requests are spread out",
        )

    def _wake(self) -> None:
        if self._released is not None and not self._released.done():
            self._released.set_result(None)

    def declare(self, limits: Limits, now: float) -> None:
        """Also hold the limits another owner declared: the lower of each wins."""
        merged = Limits(lower(self.declared.rpm, limits.rpm), lower(self.declared.tpm, limits.tpm))
        if merged == self.declared:
            return
        self.declared = merged
        for kind, per_minute in (("requests", merged.rpm), ("tokens", merged.tpm)):
            if per_minute is None:
                continue
            bucket = self.requests if kind == "requests" else self.tokens
            if bucket is None:
                setattr(self, kind, _Bucket(per_minute, now))
            else:
                bucket.refill(now)
                bucket.per_minute = min(bucket.per_minute, per_minute)
                bucket.level = min(bucket.level, bucket.capacity)

    # -- outcomes -----------------------------------------------------------------------------
    def answered(self, cost: int, used: int | None, headers: Mapping[str, str], now: float) -> None:
        """An answer came: learn from its headers, correct the token estimate, widen."""
        self.in_flight -= 1
        self.strikes = 0
        if used:
            if self.tokens is not None:
                self.tokens.level += cost - used
            self.sent.append((now, 0, used - cost))
        self.learn(headers, now, self.in_flight)
        self.window = min(MAX_WINDOW, self.window + 1.0 / self.window)
        self._wake()

    def failed(self) -> None:
        """The request failed otherwise (the scheduler decides about retrying)."""
        self.in_flight -= 1
        self._wake()

    def throttled(self, retry_after: float | None, headers: Mapping[str, str], now: float) -> None:
        """A 429: pause every request to the model, and halve the window (once per pause)."""
        self.in_flight -= 1
        if now >= self.paused_until:
            # a 429 of a request sent before the current pause began belongs to the same herd:
            # only a 429 after a pause ended makes the next pause longer
            self.strikes += 1
        self.rate_limited += 1
        self.learn(headers, now, 0)  # a 429's remaining already counts those ahead of it
        pause = retry_after
        if pause is None:
            resets = [
                _seconds(headers.get(f"x-ratelimit-reset-{k}")) for k in ("requests", "tokens")
            ]
            known = [r for r in resets if r is not None]
            pause = max(known) if known else min(30.0, 0.5 * 2 ** (self.strikes - 1))
        # a server that keeps answering 429 with "retry after 0" must not be asked in a tight
        # loop: consecutive 429s wait at least a growing floor
        pause = max(pause, min(30.0, 0.05 * 2 ** (self.strikes - 1)))
        if now >= self._last_cut:
            self.window = max(1.0, self.window / 2)
            self._last_cut = now + pause
        self.paused_until = max(self.paused_until, now + pause)
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.refill(now)
                bucket.level = min(bucket.level, 0.0)
        self._wake()

    def learn(self, headers: Mapping[str, str], now: float, others: int) -> None:
        """Limits from `x-ratelimit-limit-*`; when one is first learned, its bucket starts from
        `x-ratelimit-remaining-*` less the other requests in flight (a later answer's remaining
        is stale by its latency, and the bucket's own count is better)."""
        for kind, declared in (("requests", self.declared.rpm), ("tokens", self.declared.tpm)):
            limit = _number(headers.get(f"x-ratelimit-limit-{kind}"))
            if not limit:
                continue
            per_minute = min(limit, declared) if declared else limit
            bucket = self.requests if kind == "requests" else self.tokens
            if bucket is None:
                bucket = _Bucket(per_minute, now)
                setattr(self, kind, bucket)
                remaining = _number(headers.get(f"x-ratelimit-remaining-{kind}"))
                if remaining is not None:
                    sent = others if kind == "requests" else 0
                    bucket.level = min(bucket.capacity, remaining - sent)
            bucket.refill(now)
            bucket.per_minute = per_minute

    # -- reporting ------------------------------------------------------------------------------
    def per_minute(self, now: float) -> tuple[int, int]:
        """Requests and tokens sent in the last minute (read-only: a display thread may ask)."""
        recent = [entry for entry in list(self.sent) if entry[0] >= now - 60]
        return sum(n for _, n, _ in recent), max(0, sum(tokens for _, _, tokens in recent))

    def summary(self, now: float) -> str:
        """One line: requests and tokens in the last minute against the limits, waits, 429s."""
        requests, tokens = self.per_minute(now)
        parts = [f"{requests:,}" + (f"/{self.requests.per_minute:,.0f}" if self.requests else "")]
        parts[0] += " requests/min"
        parts.append(f"{tokens:,}" + (f"/{self.tokens.per_minute:,.0f}" if self.tokens else ""))
        parts[1] += " tokens/min"
        if self.waiting:
            parts.append(f"{self.waiting} waiting")
        if self.rate_limited:
            parts.append(f"{self.rate_limited} × 429")
        return f"{self.name}: " + ", ".join(parts)


class Limiters:
    """One run's (or one decomposer call's) view of the limiters, with what it declared.

    The limiters themselves belong to the event loop: every run, `foreach` item, tool-loop turn
    and decomposer request in one loop that talks to the same (base URL, model) shares one
    limiter (`_loop_limiters`), so two runs of an `asyncio.gather` never double the rate. A
    limiter made by one owner also holds the limits another owner declares (the lower wins).
    """

    def __init__(
        self,
        declared: Mapping[str, Limits] | None = None,
        declared_at: Mapping[tuple[str, str], Limits] | None = None,
    ) -> None:
        self.declared = dict(declared or {})  # model -> limits, at any base URL
        self.declared_at = dict(declared_at or {})  # (base URL, model) -> a provider's limits
        self._used: dict[tuple[str, str], ModelLimiter] = {}  # the ones this owner used

    def get(self, base_url: str, model: str) -> ModelLimiter:
        key = (base_url, model)
        limiter = self._used.get(key)
        if limiter is None:
            now = asyncio.get_running_loop().time()
            anywhere = self.declared.get(model, Limits())
            here = self.declared_at.get(key, Limits())
            declared = Limits(lower(anywhere.rpm, here.rpm), lower(anywhere.tpm, here.tpm))
            shared = _loop_limiters()
            limiter = shared.get(key)
            if limiter is None:
                limiter = shared[key] = ModelLimiter(model, declared, now)
            else:
                limiter.declare(declared, now)
            self._used[key] = limiter
        return limiter

    def all(self) -> list[ModelLimiter]:
        return list(self._used.values())

    def summary(self) -> list[str]:
        """A line per model used so far (see ModelLimiter.summary); safe from another thread."""
        now = time.monotonic()  # the event loop's clock
        return [limiter.summary(now) for limiter in list(self._used.values())]


# The limiters of each live event loop. A limiter's lock and futures belong to its loop, so
# limiters are shared within a loop (the process's runs and decomposer calls that can overlap),
# and a closed loop's are dropped when a new loop registers.
_BY_LOOP: dict[int, tuple[asyncio.AbstractEventLoop, dict[tuple[str, str], ModelLimiter]]] = {}


def _loop_limiters() -> dict[tuple[str, str], ModelLimiter]:
    loop = asyncio.get_running_loop()
    entry = _BY_LOOP.get(id(loop))
    if entry is None or entry[0] is not loop:
        for key in [k for k, (other, _) in _BY_LOOP.items() if other.is_closed()]:
            del _BY_LOOP[key]
        entry = _BY_LOOP[id(loop)] = (loop, {})
    return entry[1]


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _seconds(value: str | None) -> float | None:
    """A reset duration as OpenAI writes it (`1s`, `6m0s`, `20ms`), or plain seconds."""
    if not value:
        return None
    plain = _number(value)
    if plain is not None:
        return plain
    parts = RESET.findall(value)
    if not parts:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[unit] for n, unit in parts)
