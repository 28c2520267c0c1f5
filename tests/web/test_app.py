"""The search page over a project after `rar demo`, through Starlette's test client."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import shutil
import threading
from pathlib import Path

import pytest
from PIL import Image
from starlette.testclient import TestClient

from rar_pipeline.cli import parse_args
from rar_pipeline.core.evaluation.evaluate import load_test_queries
from rar_pipeline.core.layout import ArtifactLayout
from rar_pipeline.core.search.query import SearchPageConfig, SearchQuery
from rar_pipeline.core.search.searcher import SearchResult
from rar_pipeline.core.settings import load_settings
from rar_pipeline.defs.searchers import Searchers
from rar_pipeline.web.app import create_app
from rar_pipeline.web.guard import is_loopback

BASE = "http://127.0.0.1:8765"  # the guard answers loopback host names only


@pytest.fixture(scope="module")
def app(demo_project):
    settings = load_settings({"RAR_PROJECT_DIR": str(demo_project.root)})
    return create_app(Searchers.from_settings(settings), SearchPageConfig(max_upload_mb=1))


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, base_url=BASE) as client:
        yield client


@pytest.fixture(scope="module")
def qa_query(demo_project):
    paths = ArtifactLayout(demo_project.artifacts)
    tasks = sorted(p.stem for p in paths.enhanced_queries("x").parent.glob("*.parquet"))
    queries = load_test_queries(paths, tasks)
    return queries[queries["query_type"] == "qa"].iloc[0]


def dids(html: str) -> list[str]:
    return re.findall(r'<tr class="hit" data-did="([^"]+)"', html)


def test_the_empty_form(client):
    page = client.get("/")
    assert page.status_code == 200
    assert 'name="q"' in page.text and 'type="file" name="image"' in page.text
    assert all(f'<option value="{c}"' in page.text for c in ("none", "full", "inference-only"))
    assert 'id="results"' not in page.text


def test_a_question_with_an_uploaded_image(client, app, demo_project, qa_query):
    image = (demo_project.data / qa_query.img_path).read_bytes()
    page = client.post(
        "/",
        data={"q": qa_query.txt, "config": "full", "k": "5"},
        files={"image": ("photo.png", image, "image/png")},
    )
    assert page.status_code == 200
    # the query as enhanced, from the cache the pipeline filled
    searched = re.search(r'<span id="searched">([^<]*)</span>', page.text).group(1)
    assert searched == qa_query.enhanced_txt.replace("'", "&#x27;").replace('"', "&quot;")
    assert "enhancement: cached" in page.text and re.search(r"request \d+ ms", page.text)
    # the same hits the API gives for the same query
    expected = app.state.search.searchers.get("full").search(
        SearchQuery(qa_query.txt, demo_project.data / qa_query.img_path), 5
    )
    assert dids(page.text) == [h.did for h in expected.hits]
    # the query image and every thumbnail are served as PNGs
    urls = re.findall(r'<img src="([^"]+)"', page.text)
    assert urls[0].startswith("/media/upload/") and len(urls) > 1
    for url in urls:
        media = client.get(url)
        assert media.status_code == 200 and media.headers["content-type"] == "image/png"
        assert media.content.startswith(b"\x89PNG")


def test_the_json_api(client):
    answer = client.get("/api/search", params={"q": "a brown circle", "k": 3, "hybrid": "1"})
    assert answer.status_code == 200
    body = answer.json()
    assert len(body["hits"]) == 3 and body["hybrid"] and body["request_ms"] > 0
    assert "Server-Timing" in answer.headers
    bad = client.get("/api/search", params={"q": "hat", "config": "nope"})
    assert bad.status_code == 400 and "unknown config 'nope'" in bad.json()["error"]
    assert client.get("/api/search").status_code == 400


def test_models_are_loaded_once_not_per_request(client, app):
    searchers = app.state.search.searchers
    client.get("/api/search", params={"q": "a red square"})
    before = searchers.loads
    for _ in range(3):
        assert client.get("/api/search", params={"q": "a red square"}).status_code == 200
    assert searchers.loads == before


@pytest.mark.parametrize(
    "url",
    [
        "/media/data/%2e%2e/%2e%2e/etc/passwd",
        "/media/data/..%2f..%2fetc%2fpasswd",
        "/media/data/%2fetc%2fpasswd",
        "/media/upload/..%2f..%2fx.png",
        "/media/upload/photo.png",
        "/media/data/query/test",  # a folder
    ],
)
def test_nothing_outside_the_data_root_or_the_uploads_is_served(client, url):
    assert client.get(url).status_code == 404


def test_only_images_are_served_from_the_data_root(client, demo_project):
    jsonl = next(demo_project.data.glob("query/test/*.jsonl")).relative_to(demo_project.data)
    assert client.get(f"/media/data/{jsonl}").status_code == 404


def test_bad_uploads_are_refused_on_the_page(client, demo_project):
    big = client.post("/", data={"q": "x"}, files={"image": ("b.png", b"x" * 1_200_000)})
    assert big.status_code == 413 and "limited to 1,048,576" in big.text
    assert 'id="search"' in big.text  # the form, to try again
    junk = client.post("/", data={"q": "x"}, files={"image": ("j.png", b"GIF89a junk")})
    assert junk.status_code == 400 and "not usable (image unreadable: " in junk.text
    assert "/uploads" not in junk.text  # the server's own paths are never shown
    page = client.post("/", data={"q": "x", "k": "1000"})
    assert page.status_code == 400 and "between 1 and 100" in page.text


def test_the_server_binds_to_this_machine_by_default():
    assert parse_args(["serve"]).host == "127.0.0.1"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


def test_an_upload_is_answered_by_its_page_url_never_its_server_path(client, demo_project):
    image = next(demo_project.data.glob("mbeir_images/**/*.png")).read_bytes()
    answer = client.post("/api/search", data={"q": "who made this?"},
                         files={"image": ("p.png", image, "image/png")})  # fmt: skip
    assert answer.status_code == 200
    assert re.fullmatch(r"/media/upload/[0-9a-f]{32}\.png", answer.json()["query"]["image"])
    assert str(demo_project.root) not in answer.text


def test_a_chunked_upload_is_refused_as_it_arrives(app):
    # a 2 GB chunked upload was read whole and spooled to disk (1.85 GB) before its 400
    boundary = b"xyz"
    head = (b"--xyz\r\nContent-Disposition: form-data; name=\"image\"; filename=\"b.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n")  # fmt: skip
    chunk, pulled, sent = 64 * 1024, 0, []

    async def receive() -> dict:
        nonlocal pulled
        body = head if pulled == 0 else b"\0" * chunk
        pulled += len(body)
        return {"type": "http.request", "body": body, "more_body": pulled < 2**31}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = http_scope("POST", "/", [(b"content-type", b"multipart/form-data; boundary=" +
                                      boundary), (b"transfer-encoding", b"chunked")])  # fmt: skip
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert b"limited to 1,048,576" in b"".join(m.get("body", b"") for m in sent[1:])
    assert pulled <= 2**20 + 64 * 1024 + chunk


def http_scope(method: str, path: str, headers=(), query: bytes = b"") -> dict:
    return {
        "type": "http", "http_version": "1.1", "method": method, "path": path,
        "raw_path": path.encode(), "query_string": query, "scheme": "http", "root_path": "",
        "server": ("127.0.0.1", 8765), "client": ("127.0.0.1", 5000),
        "headers": [(b"host", b"127.0.0.1:8765"), *headers],
    }  # fmt: skip


@pytest.fixture
def copied_project(demo_project, tmp_path) -> Path:
    """A copy of the demo project that a test may damage."""
    root = tmp_path / "project"
    shutil.copytree(demo_project.root, root, ignore=shutil.ignore_patterns("dagster_home"))
    return root


def test_storage_errors_are_answered_with_the_asset_to_materialize(copied_project):
    artifacts = copied_project / "artifacts" / "demo"
    for data in (artifacts / "lancedb" / "query.lance" / "data").iterdir():
        data.unlink()  # a half-copied table: LanceDB raised RuntimeError, a plain-text 500
    (artifacts / "checkpoints" / "corpus" / "checkpoint.json").unlink()  # was served untrained
    settings = load_settings({"RAR_PROJECT_DIR": str(copied_project)})
    with TestClient(create_app(Searchers.from_settings(settings)), base_url=BASE) as client:
        table = client.get("/api/search", params={"q": "a red hat", "config": "query"})
        assert table.status_code == 409 and table.json()["asset"] == "lancedb_index_query"
        assert "query index cannot be read" in table.json()["error"]
        page = client.get("/", params={"q": "a red hat", "config": "query"})
        assert page.status_code == 409 and "materialize lancedb_index_query" in page.text
        checkpoint = client.get("/api/search", params={"q": "a red hat", "config": "corpus"})
        assert checkpoint.status_code == 409
        assert checkpoint.json()["asset"] == "retriever_checkpoint_corpus"
        assert "no checkpoint.json" in checkpoint.json()["error"]
        # the server is still there for everything else
        assert client.get("/api/search", params={"q": "a red hat"}).status_code == 200


def test_uploads_are_kept_under_a_quota_oldest_out_first(copied_project):
    settings = load_settings({"RAR_PROJECT_DIR": str(copied_project)})
    searchers = Searchers.from_settings(settings)
    page = SearchPageConfig(upload_quota_mb=1)
    images = []
    for _ in range(4):
        buffer = io.BytesIO()
        Image.effect_noise((370, 370), 60).convert("RGB").save(buffer, "PNG")  # ~410 kB
        images.append(buffer.getvalue())
    with TestClient(create_app(searchers, page), base_url=BASE) as client:
        names = []
        for image in images:
            answer = client.post("/api/search", data={"q": "this", "config": "none"},
                                 files={"image": ("i.png", image)})  # fmt: skip
            names.append(answer.json()["query"]["image"].rsplit("/", 1)[1])
            os.utime(searchers.uploads / names[-1], ns=(len(names) * 10**9,) * 2)  # in order
    kept = sorted(p.name for p in searchers.uploads.iterdir())
    assert sum(p.stat().st_size for p in searchers.uploads.iterdir()) <= 2**20
    assert names[-1] in kept and names[0] not in kept


class SlowSearchers:
    """Searchers whose searches wait for the test to let them finish."""

    def __init__(self, root: Path) -> None:
        self.uploads, self.data_root, self.strict_paths = root, root, False
        self.started: list[str] = []
        self.release = threading.Event()

    def get(self, config: str):
        return self

    def search(self, query: SearchQuery, k: int, **options) -> SearchResult:
        self.started.append(query.text)
        self.release.wait(30)
        return SearchResult(query, "none", "none@x", "text", query.text, "not used", False,
                            [], {"total": 0.0})  # fmt: skip


def test_work_for_a_client_that_has_gone_is_dropped_before_it_runs(tmp_path):
    # three clients that gave up after 2 s each still cost the next query 19 s
    searchers = SlowSearchers(tmp_path)
    app = create_app(searchers)  # type: ignore[arg-type]

    async def request(q: str, gives_up: bool) -> int:
        sent, asked = [], 0

        async def receive() -> dict:
            nonlocal asked
            asked += 1
            if asked == 1:
                return {"type": "http.request", "body": b"", "more_body": False}
            if gives_up:
                await asyncio.sleep(0.05)
                return {"type": "http.disconnect"}
            await asyncio.Event().wait()  # a patient client: waits for its answer

        async def send(message: dict) -> None:
            sent.append(message)

        await app(http_scope("GET", "/api/search", query=f"q={q}".encode()), receive, send)
        return sent[0]["status"]

    async def scenario() -> list[int]:
        first = asyncio.ensure_future(request("first", gives_up=False))
        while searchers.started != ["first"]:
            await asyncio.sleep(0.01)
        gone = await asyncio.gather(*(request(f"gone{i}", gives_up=True) for i in range(3)))
        searchers.release.set()
        return [await first, *gone, await request("after", gives_up=False)]

    assert asyncio.run(scenario()) == [200, 499, 499, 499, 200]
    assert searchers.started == ["first", "after"]


def test_a_client_that_disconnects_mid_upload_is_let_go_quietly(tmp_path, caplog):
    app = create_app(SlowSearchers(tmp_path))  # type: ignore[arg-type]
    parts = [b"--xyz\r\nContent-Disposition: form-data; name=\"image\"; filename=\"b.png\"\r\n\r\n",
             b"\0" * 1000]  # fmt: skip
    sent = []

    async def receive() -> dict:
        if parts:
            return {"type": "http.request", "body": parts.pop(0), "more_body": True}
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    headers = [(b"content-type", b"multipart/form-data; boundary=xyz")]
    with caplog.at_level(logging.WARNING):
        asyncio.run(app(http_scope("POST", "/api/search", headers), receive, send))
    assert sent[0]["status"] == 499
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
