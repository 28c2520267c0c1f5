"""Backend for any OpenAI-compatible chat-completions server.

`vllm serve`, SGLang, the llama.cpp server and hosted APIs all speak the same
`POST {base_url}/chat/completions` protocol, so one small client covers them all. It uses the
standard library only (urllib and a thread pool): bounded concurrent POSTs need nothing more,
and the pipeline gains no HTTP dependency for it.

Longer than most modules (~440 lines) on purpose: the client, its retry policy, its deadline
and size cap and its circuit breaker decide together what one request costs, and read best
side by side.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import logging
import math
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.client import HTTPException
from typing import Any

from rar_pipeline.core.corpus.images import image_data_url
from rar_pipeline.core.enhance.vlm.base import VLMRequest, VLMResult, chat_messages, image_error
from rar_pipeline.core.enhance.vlm.config import OpenAIConfig

logger = logging.getLogger(__name__)

# Retry-After may legally say "come back in an hour"; holding a worker that long per item is
# worse than failing the item and letting the enhancer retry it on a later run.
MAX_RETRY_DELAY_S = 60.0
# A chat completion for one item is a few KB; anything this large is a misbehaving server.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
# Consecutive connection failures (refused, reset, timed out) at every server of the fleet
# after which the rest of a batch fails fast instead of paying each item's backoff.
CIRCUIT_BREAKER_FAILURES = 5
# Enough of an error body to show the server's reason without flooding logs and result tables.
ERROR_SNIPPET_CHARS = 300
# 408 and 429 are the only 4xx a retry can fix; every other 4xx means the request is wrong.
RETRYABLE_4XX = frozenset({408, 429})
# Body keys that come from each request. Model and sampling are part of the cache key, so
# extra_body silently overriding them would make cached text lie about how it was produced.
RESERVED_BODY_KEYS = frozenset({"model", "messages", "temperature", "top_p", "max_tokens", "seed"})


@dataclass(frozen=True)
class _Failure:
    """One failed attempt: why, whether another attempt may succeed, and when to make it."""

    reason: str
    retryable: bool
    retry_after: float | None = None
    connection: bool = False  # the server could not be reached or did not answer in time


class _TooLarge(Exception):
    """A response body over `MAX_RESPONSE_BYTES`."""


@dataclass
class _Call:
    """What every request of one `generate` call shares, including the circuit breaker."""

    opener: urllib.request.OpenerDirector
    headers: dict[str, str]
    api_key: str
    servers: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)
    down: dict[str, int] = field(default_factory=dict)  # url -> consecutive failures

    def record(self, url: str, failure: _Failure | None) -> None:
        with self.lock:
            if failure is not None and failure.connection:
                self.down[url] = self.down.get(url, 0) + 1
            else:
                self.down.pop(url, None)

    def open_circuit(self) -> str | None:
        """Why to stop sending, once every server failed too often in a row; else None."""
        with self.lock:
            tripped = [u for u, n in self.down.items() if n >= CIRCUIT_BREAKER_FAILURES]
            if len(tripped) < self.servers:
                return None
            return (
                f"server unreachable: {CIRCUIT_BREAKER_FAILURES} or more consecutive connection "
                f"failures at {', '.join(sorted(tripped))}; not sent"
            )


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects.

    urllib would replay the Authorization header to wherever a redirect points (possibly
    another host) and turn the POST into a body-less GET; an API endpoint that redirects is
    misconfigured, so surfacing the 3xx as an error is more useful.
    """

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


class OpenAIVLM:
    """A VLM served behind an OpenAI-compatible `/chat/completions` endpoint.

    Requests of a batch are sent concurrently, at most `max_concurrency` at a time, and
    each is retried on its own: one item's failure never fails or delays the others beyond
    the worker it holds. Items never raise; they come back as `VLMResult` with `error` set.

    The API key is read from the environment on every `generate` call (so a rotated key is
    picked up without rebuilding the backend) and is never stored, logged or put in errors.

    Args:
        model_id: the model name the server knows.
        config: the backend's settings (`OpenAIConfig`). `base_url` is the API root, e.g.
            "http://127.0.0.1:8000/v1": requests go to `{base_url}/chat/completions`, and
            several roots separated by commas form a fleet (requests are spread
            round-robin, and a retry goes to the next root, so one server down or
            overloaded only costs its share of attempts). `api_key_env` names the variable
            holding the API key (unset or empty: no Authorization header). `timeout_s` is
            the deadline of one attempt, from sending to the last byte of the reply (a
            server that trickles bytes is cut off at it). `max_retries` further attempts
            follow timeouts, connection errors, HTTP 408, 429 and 5xx, after `backoff_s`,
            doubled every attempt with jitter and capped at `MAX_RETRY_DELAY_S` (a
            `Retry-After` header in seconds replaces it).
        extra_body: merged into every request's JSON body, for server-specific options
            (e.g. `{"chat_template_kwargs": {...}}`, `{"top_k": 20}`). It must not set the
            keys each request provides (`RESERVED_BODY_KEYS`).

    Raises:
        ValueError: on a non-HTTP(S) base_url, an empty model id, or an extra_body that
            sets a reserved key or is not JSON-serialisable.
    """

    def __init__(
        self,
        *,
        model_id: str,
        config: OpenAIConfig | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        config = config or OpenAIConfig()
        roots = [u.strip() for u in config.base_url.split(",") if u.strip()]
        # Only HTTP(S): urllib would otherwise happily "POST" to file:// or ftp:// URLs.
        bad = [u for u in roots if not u.lower().startswith(("http://", "https://"))]
        if not roots or bad:
            raise ValueError(f"base_url must be http(s) URLs, got {config.base_url!r}")
        if not model_id:
            raise ValueError("model_id must be a non-empty model name")
        extra = copy.deepcopy(dict(extra_body or {}))
        clash = sorted(RESERVED_BODY_KEYS & extra.keys())
        if clash:
            raise ValueError(f"extra_body must not set {clash}: they come from each request")
        try:
            json.dumps(extra)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"extra_body is not JSON-serialisable: {exc}") from exc

        self.config = config
        self._urls = [f"{u.rstrip('/')}/chat/completions" for u in roots]
        self._next = itertools.count()  # next() on a count is atomic under the GIL
        self._model_id = model_id
        self._extra_body = extra
        self.requests_sent = 0  # HTTP requests, retries included (the enhancer reports them)
        self._count_lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(base_url={self.config.base_url!r}, "
            f"model_id={self._model_id!r}, api_key_env={self.config.api_key_env!r}, "
            f"max_concurrency={self.config.max_concurrency})"
        )

    @property
    def backend(self) -> str:
        return "openai"

    @property
    def model_id(self) -> str:
        return self._model_id

    def generate(self, requests: Sequence[VLMRequest]) -> list[VLMResult]:
        """Send every request to the server and collect the replies.

        Args:
            requests: the requests; each is sent (and retried) independently.

        Returns:
            One result per request, in request order. Failures (unreadable image, HTTP
            error, timeout, malformed reply) are results with `error` set, never raised.
        """
        if not requests:
            return []
        api_key = os.environ.get(self.config.api_key_env, "").strip()
        if api_key and not (api_key.isascii() and api_key.isprintable()):
            # http.client would reject it per request with the key's repr in the message.
            error = f"the API key in ${self.config.api_key_env} is not printable ASCII"
            return [VLMResult(text=None, error=error) for _ in requests]
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "rar_pipeline-openai-vlm",
        }
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        call = _Call(
            urllib.request.build_opener(_NoRedirect), headers, api_key, servers=len(self._urls)
        )
        workers = min(self.config.max_concurrency, len(requests))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-vlm") as pool:
            return list(pool.map(lambda request: self._one(request, call), requests))

    def _one(self, request: VLMRequest, call: _Call) -> VLMResult:
        try:
            result = self._send(request, call)
        except Exception as exc:  # a bug or surprise in one item must not sink the batch
            result = VLMResult(text=None, error=f"{type(exc).__name__}: {exc}")
        if result.error is not None:
            result = dataclasses.replace(result, error=_redact(result.error, call.api_key))
        return result

    def _send(self, request: VLMRequest, call: _Call) -> VLMResult:
        if request.image_path is not None:
            try:
                image = image_data_url(request.image_path)
            except Exception as exc:  # missing, truncated, refused or not an image
                return image_error(request, exc)
            messages = chat_messages(request, image)
        else:
            messages = chat_messages(request)
        sampling = request.sampling
        body = {
            **self._extra_body,
            "model": self._model_id,
            "messages": messages,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            "seed": sampling.seed,
        }
        return self._post(json.dumps(body).encode("utf-8"), call)

    def _post(self, data: bytes, call: _Call) -> VLMResult:
        attempts = self.config.max_retries + 1
        reason = "not attempted"
        first = next(self._next)
        for attempt in range(1, attempts + 1):
            url = self._urls[(first + attempt - 1) % len(self._urls)]
            if (circuit := call.open_circuit()) is not None:
                return VLMResult(text=None, error=circuit, retryable=False)
            with self._count_lock:
                self.requests_sent += 1
            outcome = self._attempt(data, call, url)
            call.record(url, outcome if isinstance(outcome, _Failure) else None)
            if isinstance(outcome, VLMResult):
                return outcome
            reason = outcome.reason
            if not outcome.retryable:
                return VLMResult(text=None, error=f"{reason} (not retried)", retryable=False)
            if attempt == attempts:
                break
            delay = _retry_delay(attempt, self.config.backoff_s, outcome.retry_after)
            logger.debug(
                "%s: attempt %d/%d failed (%s); retrying in %.2f s",
                url,
                attempt,
                attempts,
                _redact(reason, call.api_key),
                delay,
            )
            time.sleep(delay)
        plural = "s" if attempts > 1 else ""
        # This backend retried already: the enhancer must not multiply the waits.
        error = f"{reason}; gave up after {attempts} attempt{plural}"
        return VLMResult(text=None, error=error, retryable=False)

    def _attempt(self, data: bytes, call: _Call, url: str) -> VLMResult | _Failure:
        http_request = urllib.request.Request(url, data=data, headers=call.headers, method="POST")
        timeout = f"timeout (no complete response within {self.config.timeout_s:g} s)"
        deadline = time.monotonic() + self.config.timeout_s
        try:
            with call.opener.open(http_request, timeout=self.config.timeout_s) as response:
                payload = _read_body(response, deadline)
        except _TooLarge:
            return _Failure(f"response over {MAX_RESPONSE_BYTES:,} bytes", retryable=False)
        except urllib.error.HTTPError as exc:
            status = exc.code
            body = _read_error_body(exc)
            reason = f"HTTP {status}: {_snippet(body)}" if body else f"HTTP {status}"
            retryable = status in RETRYABLE_4XX or status >= 500
            retry_after = _retry_after(exc.headers) if retryable else None
            return _Failure(reason, retryable, retry_after)
        except TimeoutError:
            return _Failure(timeout, retryable=True, connection=True)
        except urllib.error.URLError as exc:
            # urllib wraps errors raised while connecting and sending, timeouts included.
            if isinstance(exc.reason, TimeoutError):
                return _Failure(timeout, retryable=True, connection=True)
            reason = f"connection error ({_describe(exc.reason)})"
            return _Failure(reason, retryable=True, connection=True)
        except (OSError, HTTPException) as exc:
            # Raised unwrapped while reading the reply: reset, closed early, truncated body.
            reason = f"connection error ({_describe(exc)})"
            return _Failure(reason, retryable=True, connection=True)
        return _parse_completion(payload)


def _read_body(response: Any, deadline: float) -> bytes:
    """The reply's body, read against a total deadline and a size cap.

    Each read waits at most the time left (a server trickling a byte a second is cut off
    at the deadline, not after one socket timeout per byte).

    Raises:
        TimeoutError: the deadline passed before the body was complete.
        _TooLarge: the body passed `MAX_RESPONSE_BYTES`.
    """
    sock = getattr(getattr(getattr(response, "fp", None), "raw", None), "_sock", None)
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed while reading the reply")
        if sock is not None:
            sock.settimeout(remaining)
        chunk = response.read1(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise _TooLarge
        chunks.append(chunk)


def _parse_completion(payload: bytes) -> VLMResult:
    """The text of `choices[0].message.content`, or an error saying why there is none."""
    try:
        data = json.loads(payload)
        message = data["choices"][0]["message"]
        content = message["content"]
    except (ValueError, LookupError, TypeError) as exc:
        return VLMResult(
            text=None, error=f"malformed response ({_describe(exc)}): {_snippet(payload)}"
        )
    if content is None:
        # Refusals and reasoning models that spent the token budget thinking land here.
        finish = data["choices"][0].get("finish_reason")
        return VLMResult(text=None, error=f"response has no content (finish_reason={finish!r})")
    if isinstance(content, str):
        return VLMResult(text=content.strip())
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, dict) and "text" not in part:
                continue  # a non-text part (an image, say) carries no caption text
            else:
                return VLMResult(text=None, error=f"malformed content part: {_snippet(repr(part))}")
        return VLMResult(text="".join(texts).strip())
    return VLMResult(text=None, error=f"malformed response: content is a {type(content).__name__}")


def _retry_delay(attempt: int, backoff_s: float, retry_after: float | None) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based)."""
    if retry_after is not None:
        return min(retry_after, MAX_RETRY_DELAY_S)
    # Jitter spreads out the retries of many workers that failed together (a server restart).
    return min(backoff_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.5), MAX_RETRY_DELAY_S)


def _retry_after(headers: Any) -> float | None:
    """A `Retry-After` header in seconds; None when absent or not a number of seconds."""
    value = headers.get("Retry-After") if headers is not None else None
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP-date: rare from API servers, and the backoff is a fine fallback
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def _read_error_body(exc: urllib.error.HTTPError) -> bytes:
    try:
        return exc.read()
    except (OSError, HTTPException):
        return b""
    finally:
        exc.close()


def _snippet(body: bytes | str) -> str:
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    if len(text) > ERROR_SNIPPET_CHARS:
        text = text[:ERROR_SNIPPET_CHARS] + "..."
    return text


def _describe(exc: object) -> str:
    if isinstance(exc, BaseException):
        detail = str(exc)
        return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return str(exc)


def _redact(message: str, secret: str) -> str:
    # A server may echo request headers in its error body; the key must not reach our errors.
    return message.replace(secret, "***") if secret else message
