"""A small, polite HTTP GET client for survey web services (cutouts, coadd PSFs).

:class:`CachedHttpClient` adds to ``requests``:

- a timeout on every request (connect and read, ``timeout_s``);
- retries with exponential backoff (``backoff_s * 2**attempt``) on 5xx responses, 429,
  timeouts, dropped connections and truncated bodies (fewer bytes than Content-Length);
  other 4xx responses fail at once;
- a polite rate limit: at least ``min_interval_s`` between the starts of two requests of one
  client (thread-safe);
- an on-disk cache keyed by the request (base URL, path and sorted parameters): a hit costs no
  request; only bodies that pass the caller's ``validate`` are stored, written atomically.

Failures raise :class:`HttpRequestError` (an :class:`~dhs_spark.errors.InputDataError`) naming
the URL, the attempts made and the last status or exception.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlencode

from dhs_spark.errors import InputDataError

log = logging.getLogger(__name__)


class HttpRequestError(InputDataError):
    """A request that failed after its retries; ``status`` is the last HTTP status (None if none)."""

    def __init__(self, url: str, message: str, status: int | None = None, attempts: int = 0):
        self.url = url
        self.status = status
        self.attempts = attempts
        self.message = message
        super().__init__(f"GET {url}: {message} (after {attempts} attempt(s))")

    def __reduce__(self):
        return (type(self), (self.url, self.message, self.status, self.attempts))


class CachedHttpClient:
    """GET ``base_url/path?params`` with timeouts, retries, a rate limit and an on-disk cache.

    ``cache_dir=None`` disables the cache. ``max_retries`` counts retries after the first try.
    ``sleep`` is injectable so tests need not wait through backoffs.
    """

    def __init__(
        self,
        base_url: str,
        cache_dir=None,
        timeout_s: float = 30.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        min_interval_s: float = 0.5,
        user_agent: str = "dark-halo-scope/0.1 (+survey access)",
        sleep: Callable[[float], None] = time.sleep,
    ):
        if timeout_s <= 0 or max_retries < 0 or backoff_s < 0 or min_interval_s < 0:
            raise ValueError(f"CachedHttpClient: timeout_s > 0, max_retries/backoff_s/min_interval_s >= 0 (got {timeout_s}, {max_retries}, {backoff_s}, {min_interval_s})")
        self.base_url = base_url.rstrip("/")
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.min_interval_s = float(min_interval_s)
        self.user_agent = user_agent
        self._sleep = sleep
        self._lock = threading.Lock()
        self._last_start = 0.0
        self._session = None
        self.n_requests = 0  # network requests made (cache hits excluded)
        self.n_cache_hits = 0

    # pickling (Spark ships clients to executors): the session and lock are rebuilt there
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_session"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def url(self, path: str, params: dict | None = None) -> str:
        """The full URL of a request (parameters sorted, so equal requests have equal URLs)."""
        query = urlencode(sorted((params or {}).items()))
        full = f"{self.base_url}/{path.lstrip('/')}" if path else self.base_url
        return f"{full}?{query}" if query else full

    def cache_path(self, path: str, params: dict | None = None) -> Path | None:
        """Where the body of this request is cached (None without a cache)."""
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(self.url(path, params).encode()).hexdigest()
        return self.cache_dir / key[:2] / f"{key}.bin"

    def _wait_turn(self) -> None:
        with self._lock:
            wait = self._last_start + self.min_interval_s - time.monotonic()
            if wait > 0:
                self._sleep(wait)
            self._last_start = time.monotonic()

    def _get_session(self):
        if self._session is None:
            import requests

            self._session = requests.Session()
            self._session.headers["User-Agent"] = self.user_agent
        return self._session

    def get_bytes(self, path: str, params: dict | None = None, validate: Callable[[bytes], None] | None = None) -> bytes:
        """The body of GET ``path`` with ``params``, from the cache or the network.

        ``validate(body)`` raises (any exception) on an unusable body: such a body is never
        cached; it is retried like a truncated body, and re-raised after the last attempt.
        """
        import requests

        url = self.url(path, params)
        cached = self.cache_path(path, params)
        if cached is not None and cached.exists():
            body = cached.read_bytes()
            try:
                if validate is not None:
                    validate(body)
                self.n_cache_hits += 1
                return body
            except Exception:
                log.warning("cached body of %s is invalid; fetching again", url)
                cached.unlink(missing_ok=True)

        last_status, last_problem = None, "no attempt"
        validation_error: Exception | None = None
        attempts = 0
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._sleep(self.backoff_s * 2 ** (attempt - 1))
            self._wait_turn()
            attempts += 1
            self.n_requests += 1
            try:
                resp = self._get_session().get(url, timeout=self.timeout_s)
                body = resp.content
            except requests.Timeout as exc:
                last_status, last_problem = None, f"timeout ({exc.__class__.__name__})"
                log.info("GET %s: %s; retrying", url, last_problem)
                continue
            except requests.RequestException as exc:  # dropped connection, truncated chunked/length body
                last_status, last_problem = None, f"{exc.__class__.__name__}: {exc}"
                log.info("GET %s: %s; retrying", url, last_problem)
                continue
            last_status = resp.status_code
            if resp.status_code >= 500 or resp.status_code == 429:
                last_problem = f"HTTP {resp.status_code}"
                log.info("GET %s: %s; retrying", url, last_problem)
                continue
            if resp.status_code != 200:
                raise HttpRequestError(url, f"HTTP {resp.status_code}: {body[:200]!r}", resp.status_code, attempts)
            expected = resp.headers.get("Content-Length")
            if expected is not None and expected.isdigit() and int(expected) != len(body):
                last_problem = f"truncated body ({len(body)} of {expected} bytes)"
                continue
            if validate is not None:
                try:
                    validate(body)
                except Exception as exc:
                    validation_error = exc
                    last_problem = f"invalid body: {exc}"
                    log.info("GET %s: %s; retrying", url, last_problem)
                    continue
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
                tmp.write_bytes(body)
                os.replace(tmp, cached)
                meta = {"url": url, "bytes": len(body), "fetched_unix": round(time.time())}
                cached.with_suffix(".json").write_text(json.dumps(meta))
            return body
        if validation_error is not None and last_problem.startswith("invalid body"):
            raise validation_error
        raise HttpRequestError(url, last_problem, last_status, attempts)
