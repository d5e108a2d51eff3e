"""Amazon MSK IAM: SASL OAUTHBEARER tokens for aiokafka and Faust.

Apart from `streams.kafka.security` so that reading the configuration never imports
aiokafka: only a client that uses MSK IAM loads this module.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka.abc import AbstractTokenProvider

from streams.config import ConfigError


class MskIamTokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    """SASL OAUTHBEARER tokens for Amazon MSK IAM, signed (SigV4, offline) with the
    default AWS credential chain; one token is reused until a minute before it expires."""

    REFRESH_BEFORE_S = 60.0

    def __init__(self, region: str) -> None:
        self.region = region
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock: asyncio.Lock | None = None

    async def token(self) -> str:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._token is None or time.time() >= self._expires_at - self.REFRESH_BEFORE_S:
                # Loading credentials may call the instance metadata service: a thread.
                self._token, expiry_ms = await asyncio.to_thread(self._generate)
                self._expires_at = expiry_ms / 1000
            return str(self._token)

    def _generate(self) -> tuple[str, int]:
        from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

        try:
            token, expiry_ms = MSKAuthTokenProvider.generate_auth_token(self.region)
        except Exception as exc:
            raise ConfigError(f"MSK IAM: cannot sign a token in {self.region}: "
                         f"{type(exc).__name__}: {' '.join(str(exc).split())}") from None
        return str(token), int(expiry_ms)

    def __repr__(self) -> str:
        return f"<MskIamTokenProvider {self.region}>"
