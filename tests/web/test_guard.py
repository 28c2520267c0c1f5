"""`RequestGuard`: what a request must pass before any route of the search page sees it.

A tiny app behind the guard echoes how many body bytes it read, so each test shows what
the guard let through, and how much of a body it pulled before refusing it.
"""

from __future__ import annotations

import asyncio

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from rar_pipeline.web.guard import RequestGuard, content_security_policy, host_name, is_loopback

LIMIT = 100_000
CSP = content_security_policy(["body{color:red}"])


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"read": len(body)})


def guarded(allowed_hosts=()) -> Starlette:
    guard = Middleware(RequestGuard, max_body_bytes=LIMIT, allowed_hosts=allowed_hosts, csp=CSP)
    return Starlette(routes=[Route("/", echo, methods=["GET", "POST"])], middleware=[guard])


@pytest.fixture
def client():
    return TestClient(guarded(), base_url="http://127.0.0.1:8765")


class TestHosts:
    @pytest.mark.parametrize("host", ["127.0.0.1:8765", "localhost:8765", "[::1]:8765",
                                      "127.0.0.1", "LOCALHOST"])  # fmt: skip
    def test_loopback_names_are_answered(self, client, host):
        assert client.get("/", headers={"host": host}).status_code == 200

    @pytest.mark.parametrize("host", ["evil.example", "evil.example:8765", "10.0.0.5:8765", ""])
    def test_any_other_name_is_refused(self, client, host):
        # a DNS-rebinding page resolves its own name to 127.0.0.1 and sends that name
        answer = client.get("/", headers={"host": host})
        assert answer.status_code == 400 and "host name" in answer.json()["error"]

    def test_a_name_the_operator_allowed_is_answered(self):
        client = TestClient(guarded(["search.example.org"]), base_url="http://x")
        assert client.get("/", headers={"host": "search.example.org:80"}).status_code == 200
        assert client.get("/", headers={"host": "evil.example"}).status_code == 400

    def test_host_names_parse_with_and_without_ports(self):
        assert host_name("[::1]:8765") == "::1" and host_name("::1") == "::1"
        assert host_name("Example.org:80") == "example.org"
        assert is_loopback("[::1]") and is_loopback("127.0.0.2") and is_loopback("localhost")
        assert not is_loopback("0.0.0.0") and not is_loopback("evil.example")


class TestOrigins:
    def test_a_post_from_another_site_is_refused(self, client):
        # what a page elsewhere makes the operator's browser send (fetch, no-cors)
        answer = client.post("/", content=b"x", headers={"origin": "https://evil.example"})
        assert answer.status_code == 403 and "evil.example" in answer.json()["error"]
        null = client.post("/", content=b"x", headers={"origin": "null"})
        assert null.status_code == 403

    def test_the_page_s_own_posts_and_clients_without_a_browser_are_answered(self, client):
        own = client.post("/", content=b"x", headers={"origin": "http://127.0.0.1:8765"})
        assert own.status_code == 200
        assert client.post("/", content=b"x").json() == {"read": 1}  # curl sends no Origin

    def test_cross_site_requests_are_refused_but_a_link_to_the_page_is_followed(self, client):
        fetch = {"sec-fetch-site": "cross-site", "sec-fetch-mode": "no-cors"}
        assert client.get("/", headers=fetch).status_code == 403
        link = {"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"}
        assert client.get("/", headers=link).status_code == 200
        assert client.get("/", headers={"sec-fetch-site": "same-origin"}).status_code == 200


class TestBodies:
    def test_a_body_over_the_limit_is_refused(self, client):
        answer = client.post("/", content=b"x" * (LIMIT + 1))
        assert answer.status_code == 413 and "100,000" in answer.json()["error"]
        assert client.post("/", content=b"x" * LIMIT).json() == {"read": LIMIT}

    def test_a_chunked_body_is_counted_as_it_arrives(self):
        # a 2 GB chunked upload was read whole and spooled to disk before its 400
        chunk, pulled, sent = 64 * 1024, 0, []

        async def receive() -> dict:
            nonlocal pulled
            pulled += chunk
            return {"type": "http.request", "body": b"\0" * chunk, "more_body": pulled < 2**31}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {
            "type": "http", "method": "POST", "path": "/", "raw_path": b"/", "query_string": b"",
            "scheme": "http", "root_path": "", "server": ("127.0.0.1", 8765),
            "headers": [(b"host", b"127.0.0.1:8765"), (b"transfer-encoding", b"chunked")],
        }  # fmt: skip
        asyncio.run(guarded()(scope, receive, send))
        assert sent[0]["status"] == 413
        assert pulled <= LIMIT + chunk


def test_every_answer_carries_anti_framing_and_content_security_headers(client):
    for answer in (client.get("/"), client.get("/", headers={"host": "evil.example"})):
        headers = answer.headers
        assert headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "default-src 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["cross-origin-resource-policy"] == "same-origin"
    # the page's one inline style is allowed by its hash, nothing else inline
    assert "'sha256-" in CSP and "unsafe-inline" not in CSP and "script-src" not in CSP
