"""End to end in a real browser: Debian's chromium driven by Playwright (no browser download).

Starts the app on a free port over the fake contract store of tests/test_app_pages.py (written by tests/fake_run.py)
(tiny model, so the prompt inspector is fast), opens a feature deep link, checks the contexts are
shaded and that `<script>alert(1)</script>` and `<b>bold</b>` tokens render as literal text (no
dialog, no bold), walks prev/next and a neighbour link, runs a prompt in the inspector and checks
the per-token features; saves a label on the feature page and finds it after a reload; saves screenshots (see `shoot`: docs/screenshots/ with
FEATURE_EXPLORER_UPDATE_SCREENSHOTS=1).
When the demo store exists (data/demo), it also shoots the demo's feature page for the README.

`tests/browser_setup.sh` installs chromium and playwright when missing; the test runs it itself
when they are absent and skips, saying why, only if that fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
DOC_SHOTS = REPO / "docs" / "screenshots"
UPDATE_SHOTS = os.environ.get("FEATURE_EXPLORER_UPDATE_SCREENSHOTS") == "1"
DEMO = Path(os.environ.get("FEATURE_EXPLORER_DEMO") or REPO / "data" / "demo")  # run folder for the README picture

pytestmark = [pytest.mark.browser, pytest.mark.slow]


# ------------------------------------------------------------------ harness (bench/bench_ui.py uses it too)


def ensure_browser() -> str | None:
    """None when chromium and playwright are usable, else the reason they are not (after trying to install)."""
    def missing() -> str | None:
        if not Path(CHROMIUM).is_file():
            return f"{CHROMIUM} not found"
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            return "playwright (Python) not installed"
        return None

    if missing() is None:
        return None
    subprocess.run(["bash", str(REPO / "tests" / "browser_setup.sh")], env=dict(os.environ, PYTHON=sys.executable),
                   check=False, timeout=900)
    import importlib

    importlib.invalidate_caches()
    why = missing()
    return None if why is None else f"{why} and tests/browser_setup.sh could not install it"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(data_root: Path, log: Path | None = None, timeout: float = 90.0) -> Iterator[str]:
    """Run the explorer on a free port over `data_root`; yield its base URL; always stop it."""
    port = free_port()
    env = dict(os.environ, FEATURE_EXPLORER_DATA=str(data_root), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(REPO / "explorer" / "app.py"),
                             "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
                             "--browser.gatherUsageStats", "false"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with code {proc.returncode}" + (f"; see {log}" if log else ""))
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"streamlit did not become healthy in {timeout:.0f} s")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if log:
            out.close()


@contextlib.contextmanager
def browser(width: int = 1500, height: int = 1000):
    """A headless Debian chromium page (yields (page, dialogs): dialogs collects any alert that fires)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = b.new_page(viewport={"width": width, "height": height})
            dialogs: list[str] = []

            def on_dialog(d):
                dialogs.append(f"{d.type}: {d.message}")
                d.dismiss()

            page.on("dialog", on_dialog)
            yield page, dialogs
        finally:
            b.close()


def wait_idle(page, timeout: float = 60_000) -> None:
    """Wait until Streamlit has finished the current script run (its 'running' widget is gone)."""
    page.wait_for_timeout(150)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout)


def header_text(page) -> str:
    return page.locator("h2").first.inner_text()


def shoot(page, name: str, scratch: Path) -> Path:
    """Save a screenshot: into $FEATURE_EXPLORER_SCREENSHOTS when set; into docs/screenshots/ when
    FEATURE_EXPLORER_UPDATE_SCREENSHOTS=1 or the picture is not there yet; else into `scratch`, so an
    ordinary test run leaves the committed pictures (and the git tree) alone."""
    if os.environ.get("FEATURE_EXPLORER_SCREENSHOTS"):
        folder = Path(os.environ["FEATURE_EXPLORER_SCREENSHOTS"])
    elif UPDATE_SHOTS or not (DOC_SHOTS / name).is_file():
        folder = DOC_SHOTS
    else:
        folder = scratch
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / name), full_page=False)
    print(f"screenshot: {folder / name}")
    return folder / name


# ------------------------------------------------------------------ the test


@pytest.fixture(scope="module")
def browser_ready():
    why = ensure_browser()
    if why:
        pytest.skip(f"browser test needs Debian chromium + playwright: {why}")


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory, tiny_model_dir) -> Path:
    from tests.test_app_pages import make_fake_store

    return make_fake_store(tmp_path_factory.mktemp("browser_data"), model_dir=str(tiny_model_dir))


def test_browser_end_to_end(browser_ready, fake_root, tmp_path):
    from tests.test_app_pages import (
        D_SAE,
        DEAD_FEATURE,
        FAKE_DICT,
        FAKE_RUN,
        SCRIPT_FEATURE,
    )

    log = tmp_path / "streamlit.log"
    with serve(fake_root, log) as url, browser() as (page, dialogs):
        # the bare deep link lands on the feature page
        page.goto(f"{url}/?run={FAKE_RUN}&dict={FAKE_DICT}&feature={SCRIPT_FEATURE}")
        page.wait_for_selector(".fx-ctx", timeout=60_000)
        wait_idle(page)
        assert "/feature?" in page.url and f"feature={SCRIPT_FEATURE}" in page.url
        assert header_text(page).startswith(f"Feature {SCRIPT_FEATURE}")
        shaded = page.evaluate("""() => [...document.querySelectorAll('.fx-contexts .fx-tok')]
            .filter(e => getComputedStyle(e).backgroundColor !== 'rgba(0, 0, 0, 0)').length""")
        assert shaded > 20, "contexts are not shaded by activation"
        assert page.locator(".fx-contexts .fx-peak").count() >= 10  # one outlined peak per context
        title = page.locator(".fx-contexts .fx-peak").first.get_attribute("title")
        assert title and title.startswith("act "), title  # the activation on hover
        # hostile tokens are literal text: no script element, no alert, no bold
        text = page.locator(".fx-contexts").first.inner_text()  # silent tokens are text, firing ones spans
        assert "<script>alert(1)</script>" in text and "<b>bold</b>" in text
        assert page.evaluate("() => document.querySelectorAll('.stHtml script, [data-testid=\"stHtml\"] script').length") == 0
        assert page.evaluate("() => document.querySelectorAll('.fx-contexts b, .fx-contexts strong').length") == 0
        weight = page.evaluate("""() => { const e = [...document.querySelectorAll('.fx-ctx')]
            .find(e => e.textContent.includes('<b>bold</b>')); return parseInt(getComputedStyle(e).fontWeight); }""")
        assert weight < 600
        # activation + logit histograms, drawn on the server as HTML: they survive st.html's sanitiser, with bars
        # that have a size and a hover value
        page.wait_for_function("() => document.querySelectorAll('.fx-hist .fx-bar').length >= 2", timeout=60_000)
        bar = page.evaluate("""() => { const r = document.querySelector('.fx-hist .fx-bar'); const b = r.getBoundingClientRect();
            return {w: b.width, h: b.height, title: r.title, bg: getComputedStyle(r).backgroundColor}; }""")
        assert bar["w"] > 0.5 and bar["h"] > 0 and re.fullmatch(r"[-\d.e+]+: [\d,]+", bar["title"]), bar
        assert bar["bg"] == "rgb(255, 127, 14)", bar  # the activation colour, from the chart's --c
        shoot(page, "feature_page.png", tmp_path)
        # a quantile tab is drawn when opened
        page.get_by_role("tab", name="Q5 (highest)").click()
        page.wait_for_function("() => [...document.querySelectorAll('.fx-contexts')].some(e => e.offsetParent !== null"
                               " && e.closest('[role=tabpanel]') && !e.closest('[hidden]'))", timeout=30_000)
        wait_idle(page)
        assert page.get_by_text("random contexts with peak activation in").first.is_visible()
        page.get_by_role("tab", name="Top 20").click()
        wait_idle(page)

        # next / prev keep the URL in step
        page.get_by_role("button", name="next").click()
        page.wait_for_function(f"() => location.search.includes('feature={SCRIPT_FEATURE + 1}')")
        wait_idle(page)
        assert header_text(page).startswith(f"Feature {SCRIPT_FEATURE + 1}")
        # a neighbour link opens that feature's page (the fake store's first neighbour of f is f + 1; wait for
        # this page's link by its text: right after `next` the previous page's links may still be on screen)
        target = (SCRIPT_FEATURE + 2) % D_SAE
        link = page.locator("[data-testid='stPageLink'] a", has_text=f"#{target} ").first
        link.wait_for(timeout=60_000)
        link.click()
        page.wait_for_function(f"() => location.search.includes('feature={target}')")
        wait_idle(page)
        page.wait_for_selector(".fx-ctx")
        assert header_text(page).startswith(f"Feature {target}")

        # a dead feature says so plainly
        page.goto(f"{url}/feature?run={FAKE_RUN}&dict={FAKE_DICT}&feature={DEAD_FEATURE}")
        page.wait_for_selector("text=a dead feature has no token on which it fires", timeout=60_000)

        # prompt inspector: type, submit, per-token features appear
        page.goto(f"{url}/inspect?run={FAKE_RUN}&dict={FAKE_DICT}")
        box = page.get_by_label("Text", exact=True)
        box.wait_for(timeout=60_000)
        prompt = "the cat sat on the mat and <script>alert(1)</script> and <b>bold</b> are literal tokens here"
        box.fill(prompt)
        page.get_by_role("button", name="Inspect").click()
        page.wait_for_selector(".fx-prompt-table", timeout=120_000)
        wait_idle(page)
        rows = page.locator(".fx-prompt-table tr.fx-prow")
        assert rows.count() == len(prompt.split())  # one row per token, BOS left out
        assert page.locator(".fx-prompt-table a.fx-flink").count() >= len(prompt.split())
        assert page.locator(".fx-prompt .fx-tok").count() == len(prompt.split())
        assert page.evaluate("() => document.querySelectorAll('.fx-prompt-table b, .fx-prompt b').length") == 0
        page.locator("[data-testid='stDataFrame']").wait_for(timeout=30_000)  # features in this text
        page.wait_for_timeout(500)
        shoot(page, "prompt_inspector.png", tmp_path)

        # the features page and the overview render
        page.goto(f"{url}/features?run={FAKE_RUN}&dict={FAKE_DICT}")
        page.wait_for_selector("[data-testid='stDataFrame']", timeout=60_000)
        wait_idle(page)
        shoot(page, "features.png", tmp_path)
        page.goto(f"{url}/?run={FAKE_RUN}&dict={FAKE_DICT}")
        page.wait_for_selector(".js-plotly-plot", timeout=60_000)
        wait_idle(page)
        shoot(page, "overview.png", tmp_path)
        assert not dialogs, f"a dialog fired: {dialogs}"
        assert not page.locator("[data-testid='stException']").count()


def test_browser_label_survives_reload(browser_ready, fake_root, tmp_path):
    """Save a label on the feature page (name asked once), reload the page: the label is there, as literal text."""
    import shutil

    from tests.test_app_pages import FAKE_DICT, FAKE_RUN

    root = tmp_path / "data"  # a private copy: the label file must not leak into the other browser test
    shutil.copytree(fake_root / FAKE_RUN, root / FAKE_RUN)
    label = "closing <b>tags</b> & <script>alert(1)</script> [x](javascript:alert(2))"
    with serve(root, tmp_path / "streamlit.log") as url, browser() as (page, dialogs):
        page.goto(f"{url}/feature?run={FAKE_RUN}&dict={FAKE_DICT}&feature=5")
        page.wait_for_selector(".fx-ctx", timeout=60_000)
        wait_idle(page)
        assert "No label yet" in page.inner_text("body")
        page.get_by_text("Edit label").click()
        name = page.get_by_label("Your name", exact=False)
        name.fill("Ada")
        name.press("Enter")
        page.wait_for_selector("text=for this session", timeout=30_000)
        wait_idle(page)
        page.get_by_label("Label", exact=True).fill(label)
        page.get_by_role("button", name="Save label").click()
        page.wait_for_selector("text=Saved version 1", timeout=30_000)
        wait_idle(page)
        page.reload()
        page.wait_for_selector(".fx-label-text", timeout=60_000)
        wait_idle(page)
        assert page.locator(".fx-label-text").inner_text() == label
        assert "v1 · Ada · human" in page.locator(".fx-label").inner_text()
        assert page.evaluate("() => document.querySelectorAll('.fx-label b, .fx-label script, .fx-label a').length") == 0
        assert not dialogs, f"a dialog fired: {dialogs}"
        assert not page.locator("[data-testid='stException']").count()


def demo_feature(run: Path, dict_name: str) -> int:
    """A readable feature of the demo for the README: $FEATURE_EXPLORER_DEMO_FEATURE, or the alive feature,
    among mid-density ones, whose top contexts most often peak on the same token."""
    from collections import Counter

    from backend.store import query as store
    if os.environ.get("FEATURE_EXPLORER_DEMO_FEATURE"):
        return int(os.environ["FEATURE_EXPLORER_DEMO_FEATURE"])
    cand = store.list_features(run, dict_name, density_min=2e-3, density_max=3e-2, sort="max_act", descending=True, limit=150)
    best, best_score = int(cand["feature"].iloc[0]), -1.0
    for f in cand["feature"].tolist():
        top = store.feature_dashboard(run, dict_name, int(f))["contexts"]["top"]
        peaks = [c["tokens"][c["peak"]].strip().lower() for c in top]
        if len(peaks) < 10:
            continue
        token, n = Counter(peaks).most_common(1)[0]
        score = n / len(peaks) + (0.5 if len(token) > 2 and token.isalpha() else 0.0)
        if score > best_score:
            best, best_score = int(f), score
    return best


@pytest.mark.skipif(not (DEMO / "run.json").is_file(), reason=f"no demo store in {DEMO} (python -m backend demo builds it)")
def test_browser_demo_screenshot(browser_ready, tmp_path):
    """The README's picture: the feature page of a readable feature of the real demo store."""
    from backend.store import query as store
    dicts = store.list_dictionaries(DEMO)
    dicts = dicts[dicts["analysed"]]
    if dicts.empty:
        pytest.skip("the demo store has no analysed dictionary yet")
    names = dicts["name"].tolist()
    name = "topk" if "topk" in names else str(names[0])  # the demo's best for browsing (README: kinds side by side)
    f = demo_feature(DEMO, name)
    with serve(DEMO.parent, tmp_path / "streamlit.log") as url, browser(1500, 1050) as (page, dialogs):
        page.goto(f"{url}/feature?run={DEMO.name}&dict={name}&feature={f}")
        page.wait_for_selector(".fx-ctx", timeout=120_000)
        wait_idle(page)
        page.wait_for_selector(".fx-hist .fx-bar", timeout=60_000)  # the histogram drawn, not a blank box
        page.wait_for_timeout(1500)
        shoot(page, "feature_page_demo.png", tmp_path)
        assert not dialogs


def test_browser_steer_shows_clean_and_steered(browser_ready, fake_root, tmp_path):
    """The feature page's Steer box: generate, see the clean and the steered continuation side by side (escaped)."""
    from tests.test_app_pages import FAKE_DICT, FAKE_RUN

    with serve(fake_root, tmp_path / "streamlit.log") as url, browser() as (page, dialogs):
        page.goto(f"{url}/feature?run={FAKE_RUN}&dict={FAKE_DICT}&feature=3")
        page.wait_for_selector(".fx-ctx", timeout=60_000)
        wait_idle(page)
        page.get_by_role("radio", name="Steer", exact=True).click()  # the view switch (a segmented control)
        box = page.get_by_label("Prompt", exact=True)
        box.wait_for(timeout=30_000)
        box.fill("the cat sat on the <b>mat</b>")
        page.locator("[data-testid='stFormSubmitButton'] button", has_text="Steer").click()
        page.wait_for_function("() => document.querySelectorAll('.fx-gen').length === 2", timeout=120_000)
        wait_idle(page)
        gens = page.locator(".fx-gen")
        texts = [gens.nth(i).inner_text() for i in range(2)]
        assert all(t.startswith("the cat sat on the <b>mat</b>") for t in texts), texts  # literal, not bold
        assert all(len(t) > len("the cat sat on the <b>mat</b>") for t in texts), texts  # both continued
        assert page.get_by_text("Clean", exact=True).is_visible()
        assert page.get_by_text("Steered: #3").first.is_visible()
        assert page.evaluate("() => document.querySelectorAll('.fx-gen b').length") == 0
        assert not dialogs and not page.locator("[data-testid='stException']").count()
