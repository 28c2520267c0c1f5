"""A headless Chromium for tests: Debian's (`apt-get install chromium`; `.ci/run` installs
it), driven by Playwright pointed at that binary, since Playwright's own browser downloads
are impossible here. Without one, browser checks are skipped, except in CI
(`RAR_REQUIRE_BROWSER=1`), where a missing browser is a failure. `RAR_SCREENSHOT_DIR` keeps
a copy of each screenshot a test takes (how the README's images are made)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

MISSING = "no chromium binary: apt-get install -y chromium (or set RAR_CHROMIUM)"


def chromium(*, required: bool = True) -> str | None:
    """The browser binary; without one: skip the test (or None when not `required`),
    but fail under RAR_REQUIRE_BROWSER."""
    found = os.environ.get("RAR_CHROMIUM") or shutil.which("chromium")
    if found:
        return found
    if os.environ.get("RAR_REQUIRE_BROWSER"):
        pytest.fail(MISSING)
    if required:
        pytest.skip(MISSING)
    return None


# Buttons that close a dialog a fresh browser profile meets at any moment (Dagster's
# newsletter prompt appears a while after the first page load, over whatever is there;
# MLflow 3.17's feature tours, e.g. "Detect Issues in Your Traces", end in "Got it").
FIRST_VISIT_DIALOGS = ("Skip", "Got it")


@contextlib.contextmanager
def browser_page(executable: str, width: int = 1280, height: int = 1000) -> Iterator:
    """A Playwright page in headless Chromium, closed afterwards.

    First-visit dialogs are dismissed whenever they appear: Playwright clicks their close
    button before any action or assertion they would block (`add_locator_handler`).
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            for name in FIRST_VISIT_DIALOGS:
                button = page.get_by_role("button", name=name, exact=True)
                page.add_locator_handler(button, lambda found: found.click())
            yield page
        finally:
            browser.close()


def screenshot(page, path: Path, **options) -> Path:
    """Save a screenshot of `page` at `path` (and a copy under RAR_SCREENSHOT_DIR).

    A first-visit dialog open now is closed first: a screenshot is not an action, so the
    page's locator handlers do not run for it.
    """
    for name in FIRST_VISIT_DIALOGS:
        button = page.get_by_role("button", name=name, exact=True)
        if button.is_visible():
            button.click()
            button.wait_for(state="hidden")
    page.screenshot(path=str(path), **options)
    assert path.stat().st_size > 10_000, f"{path} is nearly empty"
    if os.environ.get("RAR_SCREENSHOT_DIR"):
        shutil.copy(path, Path(os.environ["RAR_SCREENSHOT_DIR"]) / path.name)
    return path
