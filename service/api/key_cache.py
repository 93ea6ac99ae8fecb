"""Verified API keys, remembered for a few seconds: polls repeat the same key many times a second."""

import hashlib
import time

from starlette.concurrency import run_in_threadpool

from workers.core.store.keys import ApiKey, KeyStore, well_formed

KEY_CACHE_S = 5.0  # a key revoked in another process stops working within this long
_CAPACITY = 10_000


class KeyCache:
    """Answers of ``KeyStore.verify`` by token, each for ``ttl_s`` seconds."""

    def __init__(self, keys: KeyStore, ttl_s: float = KEY_CACHE_S) -> None:
        self.keys, self.ttl_s = keys, ttl_s
        self._verified: dict[str, tuple[ApiKey | None, float]] = {}

    async def verify(self, token: str) -> ApiKey | None:
        """Tokens that cannot be keys are refused before the cache: a client cannot fill it with junk."""
        if not well_formed(token):
            return None
        digest = hashlib.sha256(token.encode()).hexdigest()
        cached = self._verified.get(digest)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        key = await run_in_threadpool(self.keys.verify, token)
        if len(self._verified) > _CAPACITY:
            self._verified.clear()
        self._verified[digest] = (key, now + self.ttl_s)
        return key

    def forget(self) -> None:
        """After a revocation through this process: effective at once here."""
        self._verified.clear()
