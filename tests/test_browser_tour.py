"""Issue 14 in a real browser (Debian chromium through Playwright, as tests/test_browser.py):

* the app opened while a build runs shows its progress, then the dictionary appears without a reload
  (a fake builder, tests/fake_builder.py, reports through the real status writer and writes the fake store
  in the real build's order: run, then the analysed dictionary, then labels);
* demo mode (`?demo=1`) opens the tour as a stepper, with no editing widget;
* the exported HTML file, opened from disk with the network off, shows the contexts, the charts, and a
  `<script>` label as text.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, REPO, browser, serve, shoot, wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.slow]
HOSTILE = "<script>alert(1)</script> & <b>tags</b>"


@pytest.fixture(scope="module")
def browser_ready():
    from tests.test_browser import ensure_browser

    why = ensure_browser()
    if why:
        pytest.skip(f"browser test needs Debian chromium + playwright: {why}")


def test_browser_sees_the_build_then_the_dictionary(browser_ready, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    with serve(root, tmp_path / "streamlit.log") as url, browser() as (page, dialogs):
        builder = subprocess.Popen([sys.executable, "-m", "tests.fake_builder", str(root), "6"], cwd=REPO, env=env,
                                   stdout=open(tmp_path / "builder.log", "w"), stderr=subprocess.STDOUT)
        try:
            page.goto(url)
            page.wait_for_selector("text=Building the demo store", timeout=60_000)
            bar = page.locator("[data-testid='stProgress']").first
            bar.wait_for(timeout=30_000)
            assert "left" in page.inner_text("body")
            # the run appears (cache done), still with no dictionary: said plainly, no error
            page.wait_for_selector("text=The first dictionary is being trained", timeout=60_000)
            # then the dictionary: the page redraws by itself, the density histogram and the sidebar picker appear
            page.wait_for_selector(".js-plotly-plot", timeout=90_000)
            wait_idle(page)
            assert "Feature density, 48 features" in page.inner_text("body")
            shoot(page, "overview_building.png", tmp_path)
            page.locator("[data-testid='stSidebar'] [data-testid='stSelectbox']").nth(1).wait_for(timeout=30_000)
            assert "dict=relu-l1" in page.url  # the sidebar picked it, and the URL says so
            page.wait_for_selector("text=is complete", timeout=90_000)  # the build's end, told once
            assert builder.wait(30) == 0
            assert not dialogs and not page.locator("[data-testid='stException']").count()
        finally:
            if builder.poll() is None:
                builder.kill()
                builder.wait()


@pytest.fixture(scope="module")
def fake_store(tmp_path_factory, tiny_model_dir):
    from tests.test_app_pages import make_fake_store

    return make_fake_store(tmp_path_factory.mktemp("browser_tour_data"), model_dir=str(tiny_model_dir))


def test_browser_demo_mode_and_offline_export(browser_ready, fake_store, tmp_path):
    from backend.html_export import export_html
    from backend.store import tour
    from backend.store.label_store import LabelStore
    from tests.test_app_pages import FAKE_DICT, FAKE_RUN, SCRIPT_FEATURE

    root = tmp_path / "data"
    shutil.copytree(fake_store / FAKE_RUN, root / FAKE_RUN)
    run = root / FAKE_RUN
    LabelStore(run).save(FAKE_DICT, SCRIPT_FEATURE, HOSTILE, "Ada")
    tour.add_stop(run, FAKE_DICT, SCRIPT_FEATURE, "the tags </div><script>alert(2)</script>", "Ada")
    tour.add_stop(run, FAKE_DICT, 3, "digits", "Ada")

    with serve(root, tmp_path / "streamlit.log") as url, browser() as (page, dialogs):
        page.goto(f"{url}/?demo=1")
        page.wait_for_selector(".fx-ctx", timeout=60_000)
        wait_idle(page)
        assert "Stop 1 of 2" in page.inner_text("body")
        assert page.locator(".fx-label-text").first.inner_text() == HOSTILE
        assert page.evaluate("() => parseFloat(getComputedStyle(document.querySelector('.fx-contexts')).fontSize)") >= 18
        main = page.locator("[data-testid='stMainBlockContainer']")
        assert main.locator("textarea, input").count() == 0  # read-only: nothing to type into (the sidebar pickers aside)
        assert page.locator("[data-testid='stSidebarNav']").get_by_text("Validate labels").count() == 0
        page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 1", timeout=30_000)
        page.wait_for_timeout(500)
        shoot(page, "tour_demo_mode.png", tmp_path)
        page.get_by_role("button", name="Next").click()
        page.wait_for_selector("text=Stop 2 of 2", timeout=30_000)
        assert not dialogs

    out = export_html(run, tmp_path / "tour.html", tour=True)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            ctx = b.new_context(offline=True, viewport={"width": 1300, "height": 1000})
            asked = []
            ctx.route("**/*", lambda r: (asked.append(r.request.url), r.abort()) if r.request.url.startswith("http")
                      else r.continue_())
            page = ctx.new_page()
            dialogs = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(out.resolve().as_uri())
            page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length == 4", timeout=30_000)
            assert page.locator(".stop").count() == 2 and page.locator(".fx-ctx").count() == 20
            assert page.locator(".label-text").first.inner_text() == HOSTILE  # the label is text
            assert "the tags </div><script>alert(2)</script>" in page.locator(".note").first.inner_text()
            toks = page.evaluate("() => [...document.querySelectorAll('.fx-tok')].map(e => e.textContent)")
            assert "<script>alert(1)</script>" in toks  # a context token, as text
            assert page.evaluate("() => document.querySelectorAll('.stop script:not([src])').length") == 4  # charts only
            assert page.evaluate("() => document.querySelectorAll('.label-text *, .note *, .fx-tok *').length") == 0
            page.screenshot(path=str(tmp_path / "tour_export.png"))
            assert not dialogs and not asked, (dialogs, asked)
        finally:
            b.close()
