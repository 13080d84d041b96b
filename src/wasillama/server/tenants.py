"""Tenants: API keys, and the limits each tenant is held to (concurrency, tokens per minute,
request sizes). Thread-safe: the event loop and the job runner share them."""

from __future__ import annotations

import hmac
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from .config import ANONYMOUS, ServerConfig, TenantConfig
from .errors import ApiError, bad_request, not_found, rate_limited, unauthorized

WINDOW_S = 60.0


class Tenant:
    """A tenant's limits and what it is using now."""

    def __init__(self, config: TenantConfig) -> None:
        self.config = config
        self.name = config.name
        self._lock = threading.Lock()
        self._running = 0
        self._spent: deque[tuple[float, int]] = deque()  # (when, tokens) over the last minute

    def _spent_now(self, now: float) -> int:
        while self._spent and now - self._spent[0][0] >= WINDOW_S:
            self._spent.popleft()
        return sum(n for _, n in self._spent)

    def check_sizes(self, model: str, prompt_tokens: int | None, max_tokens: int | None) -> None:
        """400 or 404 when a request is larger than this tenant may send, or names a model it may not use."""
        c = self.config
        if c.models and model not in c.models:
            raise not_found(f"the model {model!r} does not exist or you do not have access to it",
                            code="model_not_found")
        if max_tokens is not None and max_tokens > c.max_tokens:
            raise bad_request(f"max_tokens is {max_tokens}, more than this key's limit of {c.max_tokens}",
                              param="max_tokens")
        if prompt_tokens is not None and c.max_prompt_tokens is not None and prompt_tokens > c.max_prompt_tokens:
            raise bad_request(f"the prompt has {prompt_tokens} tokens, more than this key's limit of "
                              f"{c.max_prompt_tokens}", param="messages", code="context_length_exceeded")

    @contextmanager
    def slot(self, planned_tokens: int) -> Iterator[None]:
        """Hold one of the tenant's concurrent slots while a request runs; 429 when none is free,
        or when the tokens it plans (prompt plus max_tokens) would exceed tokens_per_minute."""
        c = self.config
        now = time.monotonic()
        with self._lock:
            if self._running >= c.max_concurrent:
                raise rate_limited(f"this key already has {self._running} requests running (its limit)", 1.0)
            if c.tokens_per_minute is not None:
                spent = self._spent_now(now)
                if spent + planned_tokens > c.tokens_per_minute:
                    wait = WINDOW_S - (now - self._spent[0][0]) if self._spent else WINDOW_S
                    if self.never_fits(planned_tokens):
                        raise rate_limited(f"the request may use {planned_tokens} tokens, more than this key's "
                                           f"{c.tokens_per_minute} per minute", WINDOW_S, code="tokens")
                    raise rate_limited(f"this key used {spent} of its {c.tokens_per_minute} tokens per minute",
                                       wait, code="tokens")
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1

    def never_fits(self, planned_tokens: int) -> bool:
        """Whether a request planning this many tokens exceeds tokens_per_minute on its own."""
        tpm = self.config.tokens_per_minute
        return tpm is not None and planned_tokens > tpm

    def spend(self, tokens: int) -> None:
        """Count tokens a request used against tokens_per_minute."""
        if tokens > 0:
            with self._lock:
                self._spent.append((time.monotonic(), tokens))

    @property
    def running(self) -> int:
        return self._running


class Tenants:
    """API key -> Tenant."""

    def __init__(self, config: ServerConfig) -> None:
        self.auth_required = config.auth_required
        self._all = {t.name: Tenant(t) for t in config.tenants}
        if not self.auth_required:
            self._all.setdefault(ANONYMOUS, Tenant(TenantConfig(name=ANONYMOUS)))
        self._by_key = [(k.encode(), t) for t in self._all.values() for k in t.config.keys]

    def __iter__(self) -> Iterator[Tenant]:
        return iter(self._all.values())

    def get(self, name: str) -> Tenant | None:
        return self._all.get(name)

    def authenticate(self, authorization: str | None) -> Tenant:
        """The tenant of an `Authorization: Bearer KEY` header (401 without a known key)."""
        if not self.auth_required:
            return self._all[ANONYMOUS]
        if not authorization or not authorization.lower().startswith("bearer "):
            raise unauthorized("you did not provide an API key: send 'Authorization: Bearer YOUR_KEY'")
        given = authorization[7:].strip().encode()
        found = None
        for key, tenant in self._by_key:  # compare every key in constant time: no timing oracle
            if hmac.compare_digest(key, given):
                found = tenant
        if found is None:
            raise unauthorized("incorrect API key provided")
        return found


__all__ = ["ApiError", "Tenant", "Tenants"]
