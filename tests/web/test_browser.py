"""The search page in a real browser: `rar serve` as its own process, headless Chromium
(tests/browser.py says which, and when a missing one fails instead of skipping)."""

from __future__ import annotations

import functools
import http.server
import os
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from rar_pipeline.core.evaluation.evaluate import load_test_queries
from rar_pipeline.core.layout import ArtifactLayout
from rar_pipeline.stack.processes import free_port, server_process
from tests.browser import browser_page, chromium, screenshot
from tests.projects import PROJECT_VARS

# an 8 x 8 PNG no other test uploads
PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFElEQVR4nGPk"
    "OSHPgA0wYRUdtBIAwucBA+UpdBMAAAAASUVORK5CYII="
)


@pytest.fixture
def server(demo_project, tmp_path):
    """`rar serve` on a free port, in its own session, stopped with its process group."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in PROJECT_VARS}
    env |= {"RAR_PROJECT_DIR": str(demo_project.root), "HF_HUB_OFFLINE": "1",
            "DAGSTER_HOME": str(demo_project.root / "dagster_home")}  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as answer:
            return answer.status == 200

    command = [sys.executable, "-m", "rar_pipeline.cli", "serve", "--port", str(port)]
    with server_process(command, ready, env=env, log=tmp_path / "serve.log", start_timeout=180):
        yield url


def test_a_question_about_an_uploaded_photo_finds_its_answer(demo_project, server, tmp_path):
    executable = chromium()
    paths = ArtifactLayout(demo_project.artifacts)
    tasks = sorted(p.stem for p in paths.enhanced_queries("x").parent.glob("*.parquet"))
    queries = load_test_queries(paths, tasks)
    qa = queries[queries["query_type"] == "qa"]
    # a question whose labelled answer the full config ranks in its top 5 (per evaluation)
    run = paths.run_file("full", qa.iloc[0]["task"])
    ranked = {}
    for line in run.read_text().splitlines():
        qid, _, did, rank, _, _ = line.split()
        ranked.setdefault(qid, {})[did] = int(rank)
    row = next(
        r for r in qa.itertuples() if any(ranked[r.qid].get(p, 99) <= 5 for p in r.positives)
    )
    image = Path(demo_project.data / row.img_path)

    with browser_page(executable) as page:
        page.goto(server)
        page.fill("#q", row.txt)
        page.set_input_files("#image", str(image))
        page.select_option("#config", "full")
        page.fill("#k", "10")
        page.click("#go")
        page.wait_for_selector("#results tr.hit")
        found = page.eval_on_selector_all("tr.hit", "rows => rows.map(r => r.dataset.did)")
        assert set(row.positives) & set(found[:10]), (row.txt, found)
        assert page.inner_text("#searched") == row.enhanced_txt
        assert "ms" in page.inner_text("#latency")
        # every thumbnail (the query's and the hits') decoded in the browser
        page.wait_for_function(
            "() => [...document.images].every(i => i.complete && i.naturalWidth > 0)"
        )
        assert page.locator("#query-image").count() == 1
        assert page.locator("tr.hit td.thumb img").count() >= 1
        screenshot(page, tmp_path / "search_page.png", full_page=True)


def test_a_page_on_another_origin_cannot_make_the_browser_search_or_upload(
    demo_project, server, tmp_path
):
    # a page elsewhere made the operator's Chromium upload five files (fetch, no-cors)
    executable = chromium()
    attack = tmp_path / "attack"
    attack.mkdir()
    (attack / "index.html").write_text(f"""<!doctype html><body><script>
    const png = Uint8Array.from(atob("{PNG_BASE64}"), c => c.charCodeAt(0));
    const form = new FormData();
    form.append("q", "from elsewhere");
    form.append("image", new Blob([png], {{type: "image/png"}}), "x.png");
    Promise.allSettled([
      fetch("{server}/api/search", {{method: "POST", mode: "no-cors", body: form}}),
      fetch("{server}/", {{method: "POST", mode: "no-cors", body: form}}),
      fetch("{server}/api/search?q=from+elsewhere", {{mode: "no-cors"}}),
    ]).then(() => document.title = "done");
    </script></body>""")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(attack))
    uploads = ArtifactLayout(demo_project.artifacts).search_uploads
    before = set(uploads.iterdir()) if uploads.is_dir() else set()
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as site:
        threading.Thread(target=site.serve_forever, daemon=True).start()
        with browser_page(executable) as page:
            sent, blocked = [], []
            page.on("request", lambda r: sent.append(r.url))
            page.on("requestfailed", lambda r: blocked.append(r.failure))
            page.goto(f"http://localhost:{site.server_address[1]}/")
            page.wait_for_function("() => document.title === 'done'")
        site.shutdown()
    assert len([url for url in sent if url.startswith(server)]) == 3
    # the server refused them (403, tests/web/test_guard.py), and the browser let the page
    # read nothing of its answers (Cross-Origin-Resource-Policy: same-origin)
    assert blocked == ["net::ERR_BLOCKED_BY_RESPONSE.NotSameOrigin"] * 3
    after = set(uploads.iterdir()) if uploads.is_dir() else set()
    assert after == before  # nothing was stored
