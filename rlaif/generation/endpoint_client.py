"""An HTTP client for one declared OpenAI-compatible endpoint that survives a real service.

- bounded concurrency: `post_many` runs at most `max_concurrency` requests at once (a thread pool over one
  httpx connection pool of that size);
- rate limits: `requests_per_minute` and `tokens_per_minute` (prompt tokens + max_tokens x n, counted before
  sending) with the `limits` library's moving window; a request waits until its window has room. The windows are
  per process: with several workers on one endpoint, divide the service's limits between them;
- timeouts (`timeout_s`) and retries with jittered exponential backoff on 429, 5xx and connection errors,
  honouring Retry-After; when they run out, `EndpointUnavailable` (a worker retries the whole task later); any
  other status fails at once with the server's message (`EndpointError.status`);
- a result cache: each response is stored under the SHA-256 of what was sent (base URL, path, body), so a
  redelivered shard or a repeated call pays nothing twice;
- usage: requests, cache hits, retries and tokens are summed in `usage` and, with a `usage_dir`, appended one
  JSON line per request to a ledger that the stage result reads (rlaif.endpoints.read_usage).

The API key is read from the environment variable the endpoint names (`api_key_env`) and lives only in the
request headers: it is never logged, put in an error message, hashed into a cache key or written to a file.

    from rlaif.generation.endpoint_client import EndpointClient
    client = EndpointClient.for_spec("endpoint:big-judge", role="judge")
    client.post("/completions", {"model": client.cfg.model, "prompt": "Hi", "max_tokens": 1})
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import httpx
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from tqdm.auto import tqdm

from rlaif.endpoints import ENDPOINT_PREFIX, EndpointConfig, endpoint_name
from rlaif.settings import settings

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
RETRY_AFTER_MAX_S = 300.0
RETRIED_STATUS = {408, 409, 425, 429}  # plus every 5xx


class EndpointError(RuntimeError):
    """An endpoint refused or kept failing a request; `status` is the HTTP status (None: no response)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class EndpointUnavailable(EndpointError):
    """The endpoint kept answering 429 or 5xx, or kept refusing or dropping connections, for all of its retries.
    The server is down or overloaded, not wrong: a service task retries later (workers/policy.py counts this as
    transient), where a refusal (401, 400...) fails the run at once."""


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    with contextlib.suppress(ValueError):  # delta-seconds; else an HTTP date
        return max(0.0, float(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_seconds(attempt: int, retry_after: float | None = None) -> float:
    """Full-jitter exponential backoff (0.5 s, 1 s, 2 s ... up to 30 s, times a uniform draw), at least Retry-After."""
    jittered = random.uniform(0.5, 1.0) * min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**attempt)
    if retry_after is None:
        return jittered
    return min(retry_after, RETRY_AFTER_MAX_S) + random.uniform(0.0, 0.1 * jittered)


def request_key(base_url: str, path: str, body: Mapping[str, Any]) -> str:
    """SHA-256 of what is sent: where, and the exact JSON body (the key is a header, never part of it)."""
    payload = json.dumps({"base_url": base_url, "path": path, "body": body}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class EndpointClient:
    """Requests to one endpoint for one role (feedback, judge): limits, retries, cache and usage."""

    def __init__(
        self,
        name: str,
        cfg: EndpointConfig,
        *,
        role: str,
        cache_dir: Path | None = None,
        usage_dir: Path | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        self.name = name
        self.cfg = cfg
        self.role = role
        self.cache_dir = cache_dir
        self.usage_dir = usage_dir
        headers = {}
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise EndpointError(
                    f"endpoint {name!r}: the environment variable {cfg.api_key_env} that holds its API key is not set"
                )
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(
            base_url=cfg.base_url,
            headers=headers,
            timeout=cfg.timeout_s,
            limits=httpx.Limits(max_connections=cfg.max_concurrency, max_keepalive_connections=cfg.max_concurrency),
            transport=transport,
        )
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._rpm = RateLimitItemPerMinute(cfg.requests_per_minute) if cfg.requests_per_minute else None
        self._tpm = RateLimitItemPerMinute(cfg.tokens_per_minute) if cfg.tokens_per_minute else None
        self._lock = threading.Lock()
        self._ledger = (
            usage_dir / f"{role}.{os.getpid()}.{uuid.uuid4().hex[:8]}.jsonl" if usage_dir is not None else None
        )
        self.usage: dict[str, Any] = {
            "endpoint": name,
            "requests": 0,
            "cached": 0,
            "retries": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cost": None,
        }

    @classmethod
    def for_spec(
        cls,
        spec: str,
        *,
        role: str,
        cache_dir: Path | None = None,
        usage_dir: Path | None = None,
        endpoints: Mapping[str, EndpointConfig] | None = None,
    ) -> EndpointClient:
        """The client of `endpoint:<name>`, declared in `endpoints` (default: the settings' RLAIF_ENDPOINTS)."""
        name = endpoint_name(spec)
        if name is None:
            raise ValueError(f"{spec!r} is not an endpoint spec ({ENDPOINT_PREFIX}<name>)")
        declared = settings.endpoints if endpoints is None else endpoints
        if name not in declared:
            raise EndpointError(
                f"unknown endpoint {name!r}: RLAIF_ENDPOINTS declares {sorted(declared) or 'none'} on this machine"
            )
        return cls(name, declared[name], role=role, cache_dir=cache_dir, usage_dir=usage_dir)

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ one request

    def post(self, path: str, body: Mapping[str, Any], *, tokens: int = 0) -> dict[str, Any]:
        """The JSON response to POST `path` (relative to base_url), from the cache when the same body was sent
        before. `tokens` (prompt + max_tokens x n) is what the request costs against tokens_per_minute."""
        key = request_key(self.cfg.base_url, path, body)
        cached = self._read_cache(key)
        if cached is not None:
            self._record(cached=1)
            return cached
        for attempt in range(self.cfg.max_retries + 1):
            self._wait(self._rpm, 1)
            self._wait(self._tpm, tokens)
            retry_after, status = None, None
            try:
                response = self._http.post(path.lstrip("/"), json=body)
            except httpx.TransportError as exc:  # refused, reset, timed out
                why = f"{type(exc).__name__}"
            else:
                if response.status_code == 200:
                    data = self._json(response, path)
                    self._write_cache(key, data)
                    usage = data.get("usage") or {}
                    self._record(
                        requests=1,
                        retries=attempt,
                        prompt_tokens=int(usage.get("prompt_tokens") or 0),
                        completion_tokens=int(usage.get("completion_tokens") or 0),
                    )
                    return data
                status = response.status_code
                if status not in RETRIED_STATUS and status < 500:
                    self._record(requests=1, retries=attempt)
                    raise EndpointError(
                        f"endpoint {self.name!r} refused POST {path}: HTTP {status}: {response.text[:500]}", status
                    )
                why = f"HTTP {status}"
                retry_after = retry_after_seconds(response.headers.get("retry-after"))
            if attempt == self.cfg.max_retries:
                self._record(requests=1, retries=attempt)
                raise EndpointUnavailable(
                    f"endpoint {self.name!r}: POST {path} failed {attempt + 1} times, last with {why} "
                    f"(max_retries {self.cfg.max_retries}, timeout_s {self.cfg.timeout_s})",
                    status,
                )
            delay = backoff_seconds(attempt, retry_after)
            log.warning(
                "endpoint %s: POST %s got %s; retrying in %.1f s (%d of %d)",
                self.name, path, why, delay, attempt + 1, self.cfg.max_retries,
            )  # fmt: skip
            time.sleep(delay)
        raise AssertionError("unreachable")

    def post_many(
        self,
        path: str,
        bodies: Sequence[Mapping[str, Any]],
        *,
        tokens: Sequence[int] | None = None,
        progress: bool = False,
        desc: str = "",
    ) -> list[dict[str, Any]]:
        """Responses in input order, at most max_concurrency in flight; the first error cancels the rest."""
        costs = list(tokens) if tokens is not None else [0] * len(bodies)
        if len(costs) != len(bodies):
            raise ValueError(f"{len(costs)} token counts for {len(bodies)} requests")
        results: list[dict[str, Any] | None] = [None] * len(bodies)
        bar = tqdm(total=len(bodies), desc=desc or f"{self.role} {self.name}", unit="req", disable=not progress)
        pool = ThreadPoolExecutor(max_workers=min(self.cfg.max_concurrency, max(1, len(bodies))))
        try:
            futures = {
                pool.submit(self.post, path, body, tokens=cost): index
                for index, (body, cost) in enumerate(zip(bodies, costs, strict=True))
            }
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update(1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
        return [r for r in results if r is not None]

    # ------------------------------------------------------------------ limits, cache, usage

    def _wait(self, item: RateLimitItem | None, cost: int) -> None:
        """Block until the moving window of `item` has room for `cost` (a request bigger than the whole limit
        waits for an empty window)."""
        if item is None:
            return
        cost = max(1, min(cost, item.amount))
        while not self._limiter.hit(item, self.name, self.role, cost=cost):
            stats = self._limiter.get_window_stats(item, self.name, self.role)
            time.sleep(min(60.0, max(0.05, stats.reset_time - time.time())))

    def _json(self, response: httpx.Response, path: str) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            raise EndpointError(f"endpoint {self.name!r}: POST {path} answered 200 with no JSON body", 200) from None
        if not isinstance(data, dict):
            raise EndpointError(f"endpoint {self.name!r}: POST {path} answered 200 with {type(data).__name__}", 200)
        return data

    def _cache_path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / key[:2] / f"{key}.json"

    def _read_cache(self, key: str) -> dict[str, Any] | None:
        path = self._cache_path(key)
        if path is None or not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):  # (cut by a crash: ask again)
            return None

    def _write_cache(self, key: str, data: dict[str, Any]) -> None:
        path = self._cache_path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, path)

    def _record(self, **counts: int) -> None:
        """Add one request's counts to `usage` and, with a usage_dir, one line to the ledger."""
        cost = None
        if self.cfg.price_per_prompt_token is not None or self.cfg.price_per_completion_token is not None:
            cost = counts.get("prompt_tokens", 0) * (self.cfg.price_per_prompt_token or 0.0) + counts.get(
                "completion_tokens", 0
            ) * (self.cfg.price_per_completion_token or 0.0)
        with self._lock:
            for name, value in counts.items():
                self.usage[name] += value
            if cost is not None:
                self.usage["cost"] = (self.usage["cost"] or 0.0) + cost
            if self._ledger is not None:
                self._ledger.parent.mkdir(parents=True, exist_ok=True)
                line = json.dumps({"role": self.role, "endpoint": self.name, **counts, "cost": cost})
                with self._ledger.open("a", encoding="utf-8") as handle:
                    handle.write(line + "\n")
