"""The OpenAI-compatible backend against a real, scripted HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from rar_pipeline.core.enhance.vlm.base import VLM, SamplingParams, VLMRequest
from rar_pipeline.core.enhance.vlm.config import OpenAIConfig
from rar_pipeline.core.enhance.vlm.openai import MAX_RETRY_DELAY_S, OpenAIVLM

KEY_ENV = "RAR_TEST_VLM_KEY"
SECRET = "sk-test-0123456789abcdef"


@dataclass
class Seen:
    """One request as the server received it."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def user_text(self) -> str:
        parts = self.body["messages"][1]["content"]
        return next(part["text"] for part in parts if part["type"] == "text")


@dataclass
class Reply:
    """What the server sends back; `delay_s` is slept before answering."""

    status: int = 200
    body: bytes | dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


def completion(content: Any) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
    }


def echo(seen: Seen, attempt: int) -> Reply:
    return Reply(body=completion(f"caption for {seen.user_text}"))


class ScriptedServer:
    """A chat-completions server whose replies a test scripts through `respond`.

    `respond(seen, attempt)` gets the request and its 1-based arrival number overall.
    """

    def __init__(self) -> None:
        self.respond: Callable[[Seen, int], Reply] = echo
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd = _QuietServer(("127.0.0.1", 0), _handler_for(self))
        # a short poll interval: shutdown() waits for the loop to notice, 0.5 s by default
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def attempts(self) -> int:
        return len(self.seen)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ScriptedServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def openai_settings(self) -> dict[str, str]:
        """The environment that points the `openai` backend here, one request at a time."""
        return {
            "RAR_VLM_BACKEND": "openai",
            "RAR_VLM_MODEL": "fake-vlm",
            "RAR_VLM_BASE_URL": self.base_url,
            "RAR_VLM_OPENAI_MAX_CONCURRENCY": "1",
        }

    def handle(self, seen: Seen) -> Reply:
        with self._lock:
            self.seen.append(seen)
            number = len(self.seen)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            reply = self.respond(seen, number)
            if reply.delay_s:
                time.sleep(reply.delay_s)
            return reply
        finally:
            with self._lock:
                self.in_flight -= 1


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # type: ignore[no-untyped-def]
        pass  # clients that timed out hang up on purpose; their broken pipes are expected


def _handler_for(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length))
            reply = server.handle(Seen(self.path, dict(self.headers.items()), body))
            payload = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body)
            data = payload if isinstance(payload, bytes) else payload.encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(autouse=True)
def direct_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """Talk to the local server directly even where the environment configures a proxy."""
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as scripted:
        yield scripted


@pytest.fixture
def png(tmp_path: Path) -> Path:
    path = tmp_path / "red.png"
    Image.new("RGB", (8, 6), (200, 30, 30)).save(path, format="PNG")
    return path


def make_vlm(server: ScriptedServer, **overrides: Any) -> OpenAIVLM:
    model_id = overrides.pop("model_id", "test-vlm")
    extra_body = overrides.pop("extra_body", None)
    options: dict[str, Any] = {
        "base_url": server.base_url,
        "api_key_env": KEY_ENV,
        "timeout_s": 5.0,
        "max_retries": 3,
        "backoff_s": 0.01,
        **overrides,
    }
    return OpenAIVLM(model_id=model_id, config=OpenAIConfig(**options), extra_body=extra_body)


def request(user: str = "a red cube", image_path: Path | None = None, **kw: Any) -> VLMRequest:
    return VLMRequest(
        prompt="corpus_caption",
        system="Describe the item in at most 20 words.",
        user=user,
        image_path=image_path,
        **kw,
    )


# --- the backend's identity -------------------------------------------------------------


def test_is_a_vlm_named_openai_with_the_model_as_its_id(server: ScriptedServer) -> None:
    vlm = make_vlm(server)
    assert isinstance(vlm, VLM)
    assert vlm.backend == "openai"
    assert vlm.model_id == "test-vlm"


def test_an_empty_batch_sends_nothing(server: ScriptedServer) -> None:
    assert make_vlm(server).generate([]) == []
    assert server.attempts == 0


# --- 1. the request contract ------------------------------------------------------------


def test_posts_model_messages_and_sampling_to_chat_completions(
    server: ScriptedServer, png: Path
) -> None:
    sampling = SamplingParams(temperature=0.0, top_p=0.9, max_tokens=77, seed=5)
    vlm = make_vlm(server, extra_body={"top_k": 20})

    [result] = vlm.generate([request("the item text", png, sampling=sampling)])

    assert result.ok and result.text == "caption for the item text"
    [seen] = server.seen
    assert seen.path == "/v1/chat/completions"
    assert seen.body["model"] == "test-vlm"
    assert seen.body["temperature"] == 0
    assert seen.body["top_p"] == 0.9
    assert seen.body["max_tokens"] == 77
    assert seen.body["seed"] == 5
    assert seen.body["top_k"] == 20
    system, user = seen.body["messages"]
    assert system["role"] == "system"
    assert system["content"] == "Describe the item in at most 20 words."
    assert user["role"] == "user"
    assert seen.user_text == "the item text"


def test_the_image_is_sent_as_a_data_url_of_the_files_exact_bytes(
    server: ScriptedServer, png: Path
) -> None:
    make_vlm(server).generate([request(image_path=png)])

    parts = server.seen[0].body["messages"][1]["content"]
    [image_part] = [part for part in parts if part["type"] == "image_url"]
    url = image_part["image_url"]["url"]
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    assert base64.b64decode(url[len(prefix) :]) == png.read_bytes()


def test_a_request_without_an_image_sends_no_image_part(server: ScriptedServer) -> None:
    make_vlm(server).generate([request(image_path=None)])

    parts = server.seen[0].body["messages"][1]["content"]
    assert [part["type"] for part in parts] == ["text"]


def test_extra_body_may_not_override_what_each_request_sets(server: ScriptedServer) -> None:
    with pytest.raises(ValueError, match="temperature"):
        make_vlm(server, extra_body={"temperature": 0.7})


# --- 2. authorization -------------------------------------------------------------------


def test_sends_a_bearer_token_from_the_configured_env_var(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)

    [result] = make_vlm(server).generate([request()])

    assert result.ok
    assert server.seen[0].headers["Authorization"] == f"Bearer {SECRET}"


def test_sends_no_authorization_header_when_the_env_var_is_unset(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)

    [result] = make_vlm(server).generate([request()])

    assert result.ok
    assert "Authorization" not in server.seen[0].headers


def test_the_key_never_appears_in_errors_or_the_repr(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)

    def echo_the_header_back(seen: Seen, attempt: int) -> Reply:
        status = 401 if seen.user_text == "unauthorised" else 503
        return Reply(status=status, body={"error": f"bad header {seen.headers['Authorization']}"})

    server.respond = echo_the_header_back
    vlm = make_vlm(server, max_retries=1)

    results = vlm.generate([request("unauthorised"), request("unavailable")])

    assert "401" in results[0].error and "503" in results[1].error
    for result in results:
        assert result.text is None
        assert SECRET not in result.error
    assert SECRET not in repr(vlm)


# --- 3. retries -------------------------------------------------------------------------


def test_a_5xx_is_retried_until_the_server_recovers(server: ScriptedServer) -> None:
    server.respond = lambda seen, n: echo(seen, n) if n == 3 else Reply(status=500)

    [result] = make_vlm(server).generate([request("x")])

    assert result.ok and result.text == "caption for x"
    assert server.attempts == 3


def test_a_429_is_retried_after_the_retry_after_delay(server: ScriptedServer) -> None:
    throttled = Reply(status=429, headers={"Retry-After": "0"})
    server.respond = lambda seen, n: echo(seen, n) if n == 2 else throttled

    [result] = make_vlm(server, backoff_s=30.0).generate([request("x")])

    assert result.ok
    assert server.attempts == 2


def test_retry_after_is_capped_and_backoff_grows_from_backoff_s(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    script = {
        1: Reply(status=502),
        2: Reply(status=502),
        3: Reply(status=429, headers={"Retry-After": "3600"}),
    }
    server.respond = lambda seen, n: script.get(n) or echo(seen, n)

    [result] = make_vlm(server, backoff_s=0.01).generate([request()])

    assert result.ok
    # backoff_s, then twice that, each with up to +-50% jitter; then Retry-After, capped
    assert 0.005 <= slept[0] <= 0.015
    assert 0.01 <= slept[1] <= 0.03
    assert slept[2] == MAX_RETRY_DELAY_S


def test_a_4xx_other_than_408_and_429_fails_at_once(server: ScriptedServer) -> None:
    server.respond = lambda seen, n: Reply(status=400, body={"error": "unknown field 'foo'"})

    [result] = make_vlm(server).generate([request()])

    assert result.text is None and not result.ok
    assert "400" in result.error and "unknown field" in result.error
    assert server.attempts == 1


def test_a_server_that_stays_unavailable_fails_after_max_retries_plus_one_attempts(
    server: ScriptedServer,
) -> None:
    server.respond = lambda seen, n: Reply(status=503, body=b"overloaded")

    [result] = make_vlm(server, max_retries=2).generate([request()])

    assert result.text is None
    assert "503" in result.error and "3 attempts" in result.error
    assert server.attempts == 3


def test_connection_errors_are_retried_then_reported() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # nothing listens on the port any more: every connect is refused
    vlm = OpenAIVLM(
        model_id="m",
        config=OpenAIConfig(base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, backoff_s=0),
    )

    [result] = vlm.generate([request()])

    assert result.text is None
    assert "connection error" in result.error and "2 attempts" in result.error


# --- 4. timeouts ------------------------------------------------------------------------


def test_a_slow_reply_times_out_without_affecting_the_rest_of_the_batch(
    server: ScriptedServer,
) -> None:
    def slow_for_one(seen: Seen, attempt: int) -> Reply:
        reply = echo(seen, attempt)
        reply.delay_s = 1.0 if seen.user_text == "slow" else 0.0
        return reply

    server.respond = slow_for_one
    vlm = make_vlm(server, timeout_s=0.3, max_retries=0)

    results = vlm.generate([request("fast 1"), request("slow"), request("fast 2")])

    assert results[0].text == "caption for fast 1"
    assert results[1].text is None and "timeout" in results[1].error
    assert results[2].text == "caption for fast 2"


# --- 5. bounded concurrency, ordered results --------------------------------------------


def test_at_most_max_concurrency_requests_are_in_flight_and_results_keep_order(
    server: ScriptedServer,
) -> None:
    def slow_echo(seen: Seen, attempt: int) -> Reply:
        reply = echo(seen, attempt)
        reply.delay_s = 0.1
        return reply

    server.respond = slow_echo
    texts = [f"item {i}" for i in range(8)]

    results = make_vlm(server, max_concurrency=2).generate([request(t) for t in texts])

    assert [r.text for r in results] == [f"caption for {t}" for t in texts]
    assert 1 < server.max_in_flight <= 2


# --- 6. parsing the reply ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "text"),
    [
        ("  a red cube\n", "a red cube"),
        ([{"type": "text", "text": "a red "}, {"type": "text", "text": "cube "}], "a red cube"),
        ("", ""),
    ],
    ids=["string-stripped", "list-of-parts-joined", "empty"],
)
def test_message_content_becomes_the_text(server: ScriptedServer, content: Any, text: str) -> None:
    server.respond = lambda seen, n: Reply(body=completion(content))

    [result] = make_vlm(server).generate([request()])

    assert result.error is None
    assert result.text == text
    assert result.ok is bool(text)


@pytest.mark.parametrize(
    "body",
    [b"not json {", {"choices": []}, {"error": {"message": "boom"}}, completion(None)],
    ids=["not-json", "no-choices", "error-object", "null-content"],
)
def test_a_malformed_reply_is_an_error_result(
    server: ScriptedServer, body: bytes | dict[str, Any]
) -> None:
    server.respond = lambda seen, n: Reply(body=body)

    [result] = make_vlm(server).generate([request()])

    assert result.text is None and result.error
    assert server.attempts == 1


# --- 7. unreadable images ---------------------------------------------------------------


def test_a_missing_image_fails_only_its_own_request(
    server: ScriptedServer, png: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "gone.png"
    batch = [request("one", png), request("two", missing), request("three")]

    results = make_vlm(server).generate(batch)

    assert results[0].text == "caption for one"
    assert results[1].text is None and "gone.png" in results[1].error
    assert results[2].text == "caption for three"
    assert sorted(seen.user_text for seen in server.seen) == ["one", "three"]


# --- fleets: several servers behind one backend ---------------------------------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_fleet_shares_the_requests_round_robin(server: ScriptedServer) -> None:
    other = ScriptedServer()
    other.start()
    try:
        vlm = make_vlm(server, base_url=f"{server.base_url}, {other.base_url}")
        results = vlm.generate([request(f"item {i}") for i in range(8)])
    finally:
        other.stop()
    assert [r.text for r in results] == [f"caption for item {i}" for i in range(8)]
    assert server.attempts == other.attempts == 4


def test_a_retry_goes_to_the_next_server_of_the_fleet(server: ScriptedServer) -> None:
    down = f"http://127.0.0.1:{_closed_port()}/v1"
    vlm = make_vlm(server, base_url=f"{down},{server.base_url}", max_retries=1)
    results = vlm.generate([request(f"item {i}") for i in range(6)])
    assert all(r.ok for r in results)  # every request that hit the dead server failed over
    assert server.attempts == 6


def test_a_fleet_of_non_http_urls_is_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        OpenAIVLM(
            model_id="m", config=OpenAIConfig(base_url="http://127.0.0.1:1/v1,file:///etc/passwd")
        )


# --- 8. a dying or hostile server costs little ------------------------------------------


class _Trickle(BaseHTTPRequestHandler):
    """Answers 200 with a long body, one byte at a time, forever (until the client leaves)."""

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        try:
            for _ in range(200):  # bounded: stops by itself after ~10 s
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_trickling_server_is_cut_off_at_the_total_deadline() -> None:
    httpd = _QuietServer(("127.0.0.1", 0), _Trickle)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        vlm = OpenAIVLM(
            model_id="m",
            config=OpenAIConfig(
                base_url=f"http://127.0.0.1:{httpd.server_address[1]}/v1",
                timeout_s=0.5,
                max_retries=0,
            ),
        )
        started = time.monotonic()
        [result] = vlm.generate([request()])
        elapsed = time.monotonic() - started
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
    assert result.text is None and "timeout" in result.error
    assert elapsed < 5  # not the ~10 s the trickle would take


def test_an_oversized_response_fails_without_being_read_whole(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rar_pipeline.core.enhance.vlm import openai

    monkeypatch.setattr(openai, "MAX_RESPONSE_BYTES", 1000)
    server.respond = lambda seen, n: Reply(body=completion("x" * 5000))
    [result] = make_vlm(server).generate([request()])
    assert result.text is None and "over 1,000 bytes" in result.error
    assert not result.retryable and server.attempts == 1


def test_a_dead_server_trips_the_breaker_and_the_rest_fail_fast() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    vlm = OpenAIVLM(
        model_id="m",
        config=OpenAIConfig(
            base_url=f"http://127.0.0.1:{port}/v1", max_retries=3, backoff_s=0.05, max_concurrency=1
        ),
    )
    results = vlm.generate([request(f"item {i}") for i in range(40)])
    assert all(r.text is None and not r.retryable for r in results)
    assert "server unreachable" in results[-1].error
    # 5 failures trip it; the other 38 items send nothing
    assert vlm.requests_sent <= 8


def test_the_breaker_resets_with_each_batch() -> None:
    """A server that comes back is used again by the next batch (the next run's retry)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    vlm = OpenAIVLM(
        model_id="m",
        config=OpenAIConfig(
            base_url=f"http://127.0.0.1:{port}/v1", max_retries=0, backoff_s=0, max_concurrency=1
        ),
    )
    down = vlm.generate([request(f"item {i}") for i in range(10)])
    assert "server unreachable" in down[-1].error
    scripted = ScriptedServer()
    scripted._httpd.server_close()  # rebind its handler on the port the fleet names
    scripted._httpd = _QuietServer(("127.0.0.1", port), _handler_for(scripted))
    scripted._thread = threading.Thread(
        target=scripted._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    scripted.start()
    try:
        up = vlm.generate([request("a"), request("b")])
    finally:
        scripted.stop()
    assert [r.text for r in up] == ["caption for a", "caption for b"]


def test_requests_sent_counts_every_http_attempt(server: ScriptedServer) -> None:
    server.respond = lambda seen, n: Reply(status=503) if n <= 2 else echo(seen, n)
    vlm = make_vlm(server, max_retries=3)
    [result] = vlm.generate([request()])
    assert result.text == "caption for a red cube"
    assert vlm.requests_sent == server.attempts == 3


def test_the_enhancer_does_not_retry_what_the_backend_already_retried(
    server: ScriptedServer, tmp_path: Path
) -> None:
    """4 HTTP attempts x 3 enhancer attempts would be 12: it is 4."""
    from rar_pipeline.core.corpus.records import Candidate, Modality
    from rar_pipeline.core.enhance.cache import EnhancementCache
    from rar_pipeline.core.enhance.engine import EnhanceOptions, plan_candidate, run_enhancement

    server.respond = lambda seen, n: Reply(status=503, body=b"down")
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    items = [plan_candidate(Candidate("d", Modality.IMAGE, None, "a.png"), tmp_path)]
    outputs, stats = run_enhancement(
        items,
        make_vlm(server, max_retries=3),
        EnhancementCache(tmp_path / "c.sqlite"),
        EnhanceOptions(max_attempts=3),
    )
    assert outputs["d"].status == "failed" and "4 attempts" in outputs["d"].error
    assert server.attempts == 4 and stats.requests_sent == 4 and stats.backend_calls == 1
