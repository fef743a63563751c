"""Request and token buckets for the fake OpenAI server, answering as OpenAI does.

Per model, a bucket of `rpm` requests and one of `tpm` tokens per minute, each holding
`window` seconds' worth (providers enforce per-minute limits over short intervals). A request
costs one request and ``ceil(characters / 4) + max_output_tokens`` tokens. Every answer carries
``x-ratelimit-limit|remaining|reset-requests|tokens``; a request over a limit gets a 429 with
``retry-after-ms`` and ``Retry-After`` and is not counted.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field


def token_cost(text: str, max_output_tokens: int | None) -> int:
    return math.ceil(len(text) / 4) + (max_output_tokens or 0)


@dataclass
class _Bucket:
    per_minute: float
    window: float
    level: float = -1.0
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.level = self.capacity

    @property
    def capacity(self) -> float:
        return max(1.0, self.per_minute / 60.0 * self.window)

    def refill(self, now: float) -> None:
        rate = self.per_minute / 60.0
        self.level = min(self.capacity, self.level + (now - self.stamp) * rate)
        self.stamp = now

    def wait(self, cost: float) -> float:
        need = min(cost, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / (self.per_minute / 60.0)

    def reset(self) -> float:
        return (self.capacity - self.level) / (self.per_minute / 60.0)


class RateBuckets:
    """Thread-safe buckets per model; `admit` decides and gives the headers to send."""

    def __init__(self, rpm: float | None, tpm: float | None, window: float = 1.0) -> None:
        self.rpm, self.tpm, self.window = rpm, tpm, window
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self.admitted = 0
        self.rejected = 0

    def admit(self, model: str, cost: int) -> tuple[bool, list[tuple[str, str]]]:
        """(admitted, headers): counted when admitted; a 429's headers say when to retry."""
        now = time.monotonic()
        with self._lock:
            kinds = [(k, self._bucket(model, k, now)) for k in ("requests", "tokens")]
            kinds = [(k, b) for k, b in kinds if b is not None]
            for _, bucket in kinds:
                bucket.refill(now)
            costs = {"requests": 1, "tokens": cost}
            wait = max((b.wait(costs[k]) for k, b in kinds), default=0.0)
            if wait == 0:
                for kind, bucket in kinds:
                    bucket.level -= costs[kind]
                self.admitted += 1
            else:
                self.rejected += 1
            headers = []
            for kind, bucket in kinds:
                headers += [
                    (f"x-ratelimit-limit-{kind}", f"{bucket.per_minute:g}"),
                    (f"x-ratelimit-remaining-{kind}", str(max(0, math.floor(bucket.level)))),
                    (f"x-ratelimit-reset-{kind}", f"{max(0.0, bucket.reset()) * 1000:.0f}ms"),
                ]
            if wait > 0:
                headers += [
                    ("retry-after-ms", str(math.ceil(wait * 1000))),
                    ("Retry-After", str(math.ceil(wait))),
                ]
            return wait == 0, headers

    def _bucket(self, model: str, kind: str, now: float) -> _Bucket | None:
        per_minute = self.rpm if kind == "requests" else self.tpm
        if per_minute is None:
            return None
        key = (model, kind)
        if key not in self._buckets:
            self._buckets[key] = _Bucket(per_minute, self.window, stamp=now)
        return self._buckets[key]
