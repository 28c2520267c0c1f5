"""The search page in a real browser: `rar serve` as its own process, headless Chromium.

Chromium is Debian's (`apt-get install chromium`; `.ci/run` installs it), driven by
Playwright pointed at that binary: Playwright's own browser downloads are impossible here.
Without a Chromium this test is skipped, except in CI (`RAR_REQUIRE_BROWSER=1`), where a
missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
import sys
import urllib.request
from pathlib import Path

import pytest

from rar_pipeline.core.evaluation.evaluate import load_test_queries
from rar_pipeline.core.layout import ArtifactLayout
from tests.projects import PROJECT_VARS
from tests.servers import free_port, server_process


def chromium() -> str:
    found = os.environ.get("RAR_CHROMIUM") or shutil.which("chromium")
    if found:
        return found
    if os.environ.get("RAR_REQUIRE_BROWSER"):
        pytest.fail("no chromium binary: apt-get install -y chromium (or set RAR_CHROMIUM)")
    pytest.skip("no chromium binary: apt-get install -y chromium to run the browser test")


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
    from playwright.sync_api import sync_playwright

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

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
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
            shot = tmp_path / "search_page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("RAR_SCREENSHOT_DIR"):
                shutil.copy(shot, Path(os.environ["RAR_SCREENSHOT_DIR"]) / shot.name)
        finally:
            browser.close()
