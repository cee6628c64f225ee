"""The README's pictures of the causal views, taken in Chromium on the real demo store (skipped without it).

The features are the README's examples (see "Interventions" and "Diagnosis" there): each test first checks that
the demo's feature is still the one the README describes (its top contexts peak on the token it names) and skips,
saying so, when a rebuilt demo numbered its features differently: $FEATURE_EXPLORER_EFFECTS_FEATURE and
$FEATURE_EXPLORER_STEER_FEATURE choose others. Pictures go where tests/test_browser.py's `shoot` puts them.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

from tests import test_browser
from tests.test_browser import DEMO, browser, serve, shoot, wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not (DEMO / "run.json").is_file(), reason=f"no demo store in {DEMO}")]

DICT = "topk"
EFFECTS = (int(os.environ.get("FEATURE_EXPLORER_EFFECTS_FEATURE", 3465)), "equ")  # P[equ]od: the Pequod
STEER = (int(os.environ.get("FEATURE_EXPLORER_STEER_FEATURE", 3834)), " search")  # fires on " search"
STEER_PROMPT = "Last summer we went on holiday to"
browser_ready = test_browser.browser_ready  # the fixture: chromium + playwright, or skip


def _peak_token(feature: int) -> str:
    from backend.store import query as store

    top = store.feature_dashboard(DEMO, DICT, feature)["contexts"]["top"]
    return Counter(c["tokens"][c["peak"]] for c in top).most_common(1)[0][0] if top else ""


def _check(feature: int, token: str | None) -> None:
    from backend.common.layout import dict_dir

    if not (dict_dir(DEMO, DICT) / "features.parquet").is_file():
        pytest.skip(f"the demo has no analysed {DICT}")
    if token is not None and _peak_token(feature) != token:
        pytest.skip(f"feature {feature} of this demo does not peak on {token!r}: not the README's example")


def _open_feature(page, url: str, feature: int) -> None:
    page.goto(f"{url}/feature?run={DEMO.name}&dict={DICT}&feature={feature}")
    page.wait_for_selector(".fx-ctx", timeout=120_000)
    wait_idle(page)


def test_browser_demo_effects_panel(browser_ready, tmp_path):
    feature, token = EFFECTS
    _check(feature, token)
    with serve(DEMO.parent, tmp_path / "streamlit.log") as url, browser(1500, 1100) as (page, dialogs):
        _open_feature(page, url, feature)
        page.get_by_role("button", name=f"Ablate feature {feature} on its top 20 contexts").click()
        page.wait_for_selector(".fx-effects .fx-effect", timeout=180_000)
        wait_idle(page)
        page.locator(".fx-effects").scroll_into_view_if_needed()
        shoot(page, "effects_panel_demo.png", tmp_path)
        assert page.locator(".fx-effects .fx-effect").count() == 20 and not dialogs


def test_browser_demo_steering_side_by_side(browser_ready, tmp_path):
    feature, token = STEER
    _check(feature, token)
    with serve(DEMO.parent, tmp_path / "streamlit.log") as url, browser(1500, 1100) as (page, dialogs):
        _open_feature(page, url, feature)
        page.get_by_role("radio", name="Steer", exact=True).click()
        box = page.get_by_label("Prompt", exact=True)
        box.wait_for(timeout=30_000)
        box.fill(STEER_PROMPT)
        strength = page.get_by_role("slider").first  # 1.0 x max activation, steps of 0.25
        strength.focus()
        for _ in range(4):
            strength.press("ArrowRight")
        page.locator("[data-testid='stFormSubmitButton'] button", has_text="Steer").click()
        page.get_by_text("tokens/s each").wait_for(timeout=180_000)  # the caption under both texts, once done
        wait_idle(page, timeout=180_000)
        assert page.get_by_text(f"Steered: #{feature} +2 x max act").first.is_visible()
        page.locator(".fx-gen").first.scroll_into_view_if_needed()
        shoot(page, "steering_demo.png", tmp_path)
        texts = [page.locator(".fx-gen").nth(i).inner_text() for i in range(2)]
        assert texts[0] != texts[1] and all(t.startswith(STEER_PROMPT) for t in texts) and not dialogs


DIAGNOSE_TASK = os.environ.get("FEATURE_EXPLORER_DIAGNOSE_TASK", "math_operators")
DIAGNOSE_ITEM = int(os.environ.get("FEATURE_EXPLORER_DIAGNOSE_ITEM", 4))  # "What is |2 - 4|?"


def test_browser_demo_diagnose_page(browser_ready, tmp_path):
    from backend.common.layout import DOMAINS, dict_dir
    from backend.tasks.suite import load_task, split_items

    if not (dict_dir(DEMO, DICT) / DOMAINS).is_file():
        pytest.skip(f"the demo's {DICT} has no domains (python -m backend domains)")
    items = split_items(load_task(DIAGNOSE_TASK), 100).items  # as the page lists them (explorer.data.task_items)
    question = items[DIAGNOSE_ITEM].input
    with serve(DEMO.parent, tmp_path / "streamlit.log") as url, browser(1500, 1250) as (page, dialogs):
        page.goto(f"{url}/diagnose?run={DEMO.name}&dict={DICT}")
        page.get_by_text("tokens flagged").first.wait_for(timeout=180_000)
        wait_idle(page, timeout=180_000)
        page.get_by_label("Task", exact=True).click()
        page.get_by_role("option", name=DIAGNOSE_TASK, exact=True).click()
        wait_idle(page, timeout=180_000)
        page.get_by_text(f"Item (0-{len(items) - 1})", exact=True).wait_for(timeout=60_000)  # the task's own input
        item = page.get_by_label(f"Item (0-{len(items) - 1})", exact=True)
        item.fill(str(DIAGNOSE_ITEM))
        item.press("Enter")
        page.get_by_text(f"Question: {question}", exact=True).wait_for(timeout=180_000)
        page.get_by_text("Answer probabilities before and after").wait_for(timeout=180_000)  # under the rewrite
        wait_idle(page, timeout=180_000)
        page.wait_for_timeout(1000)
        shoot(page, "diagnose_demo.png", tmp_path)
        assert not dialogs and not page.locator("[data-testid='stException']").count()
