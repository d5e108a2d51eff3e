"""A token bucket: stay under an API's documented request rate. Pure (time is passed in)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; one token per request.

    `reserve(now)` takes a token and returns how long to wait before using it (0 when
    one is available). Reservations queue: a waiting caller's token is already spent,
    so the next caller waits behind it.
    """

    rate: float
    burst: float
    tokens: float = -1.0  # -1: start full
    updated: float | None = None

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        if self.tokens < 0:
            self.tokens = self.burst

    def _refill(self, now: float) -> None:
        if self.updated is not None and now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        if self.updated is None or now > self.updated:
            self.updated = now

    def reserve(self, now: float) -> float:
        """Take one token; seconds to wait before the request may go."""
        self._refill(now)
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate
