"""The search page over a project after `rar demo`, through Starlette's test client."""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

from rar_pipeline.cli import parse_args
from rar_pipeline.core.evaluation.evaluate import load_test_queries
from rar_pipeline.core.layout import ArtifactLayout
from rar_pipeline.core.search.query import SearchQuery
from rar_pipeline.core.settings import load_settings
from rar_pipeline.defs.searchers import Searchers
from rar_pipeline.web.app import create_app, is_loopback


@pytest.fixture(scope="module")
def app(demo_project):
    settings = load_settings({"RAR_PROJECT_DIR": str(demo_project.root)})
    return create_app(Searchers.from_settings(settings), max_upload_bytes=200_000)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as client:
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
    big = client.post("/", data={"q": "x"}, files={"image": ("b.png", b"x" * 300_000)})
    assert big.status_code == 400 and "limited to 200,000" in big.text
    junk = client.post("/", data={"q": "x"}, files={"image": ("j.png", b"GIF89a junk")})
    assert junk.status_code == 400 and "not usable (image unreadable)" in junk.text
    page = client.post("/", data={"q": "x", "k": "1000"})
    assert page.status_code == 400 and "between 1 and 100" in page.text


def test_the_server_binds_to_this_machine_by_default():
    assert parse_args(["serve"]).host == "127.0.0.1"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
