"""What every request to the search page passes before it reaches a route.

`RequestGuard` is an ASGI middleware. It refuses:

- a `Host` that is not this machine's loopback names or one the operator allowed (400):
  a DNS-rebinding page that resolves its own name to 127.0.0.1 sends its own name;
- a request another site's page makes (403): a POST whose `Origin` is not the page's own,
  and any cross-site request a browser marks with `Sec-Fetch-Site` except a person
  following a link to the page (a top-level navigation, GET);
- a body over the limit (413): counted as it arrives, chunked uploads included, so no
  header can make the server read or spool more than the limit. A route that reads a
  body answers it itself (the page shows its form with the error); the guard answers for
  any other.

It adds anti-framing and content-security headers to every response. The page has no
script and one inline style, which the policy allows by its hash.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
from collections.abc import Iterable
from typing import Any

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class BodyTooLarge(Exception):
    """A request body grew past the limit while it was being read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request is over the limit of {limit:,} bytes")
        self.limit = limit


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine only (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def host_name(header: str) -> str:
    """The name in a `Host` header, without its port (`[::1]:8765` -> `::1`)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def content_security_policy(inline_styles: Iterable[str]) -> str:
    """A policy for a page with no script: its own images and forms, these styles only."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in inline_styles
    )
    return (
        f"default-src 'none'; img-src 'self'; style-src {hashes}; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )


class RequestGuard:
    """ASGI middleware: host and origin checks, a streamed body limit, security headers.

    Args:
        app: the app it guards.
        max_body_bytes: the most bytes a request body may have.
        allowed_hosts: host names accepted besides the loopback ones.
        csp: the Content-Security-Policy of every response.
    """

    def __init__(
        self, app: Any, *, max_body_bytes: int, allowed_hosts: Iterable[str] = (), csp: str
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.allowed = {h.strip().lower().strip("[]") for h in allowed_hosts if h.strip()}
        self.headers = [
            (b"content-security-policy", csp.encode()),
            (b"x-frame-options", b"DENY"),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"same-origin"),  # "no-referrer" makes form posts say Origin: null
            (b"cross-origin-resource-policy", b"same-origin"),
            (b"cross-origin-opener-policy", b"same-origin"),
        ]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self.refusal(scope, headers)
        if refusal is not None:
            await self._answer(send, *refusal)
            return
        started = False

        async def send_with_headers(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        try:
            await self.app(scope, self._limited(receive), send_with_headers)
        except BodyTooLarge as exc:  # a route that did not answer it itself
            if not started:
                await self._answer(send, 413, str(exc))

    def refusal(self, scope: dict, headers: dict[str, str]) -> tuple[int, str] | None:
        """(status, why) when the request must be refused before any route sees it."""
        host = host_name(headers.get("host", ""))
        if not (is_loopback(host) or host in self.allowed):
            return 400, f"this server does not answer to the host name {host!r}"
        method = scope["method"]
        origin = headers.get("origin")
        own = f"{scope.get('scheme', 'http')}://{headers['host'].strip().lower()}"
        if method not in SAFE_METHODS and origin is not None and origin.lower() != own:
            return 403, f"requests from {origin} are not accepted; use the page at {own}"
        site = headers.get("sec-fetch-site", "")
        navigation = method == "GET" and headers.get("sec-fetch-mode") == "navigate"
        if site in ("cross-site", "same-site") and not navigation:
            return 403, "requests from other sites are not accepted"
        return None

    def _limited(self, receive: Any) -> Any:
        """`receive`, raising `BodyTooLarge` once the body passes the limit."""
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        return limited

    async def _answer(self, send: Any, status: int, message: str) -> None:
        body = json.dumps({"error": message, "status": status}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                    *self.headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
