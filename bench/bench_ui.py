"""Explorer latency in a real browser (Debian chromium + Playwright, as tests/test_browser.py).

    python -m bench.bench_ui [--data data] [--run demo] [--dict NAME] [--clicks 10]

Prints, on the chosen store:
1. click -> feature page: from a click on a row of the Features table until that feature's page has
   its contexts rendered, and until the whole page is (its last element, the Effects panel's button, drawn):
   medians over --clicks distinct alive features, target < 0.5 s (issue 16); the same for a neighbour link
   on a feature page (client-side navigation with no table in between). The first click of a session also
   reads the dictionary's feature tables into the server's memory and loads the page's scripts: it is the max.
2. prompt inspector: from pressing "Inspect" on a 100-token prompt until every token's features are
   drawn, with the model already cached (a first, short prompt loads it); the server-side time of
   tokenise + forward + encode is printed beside it.

Each feature is opened once, so no feature page comes from Streamlit's cache. The run's model
must be loadable for part 2 (skipped with --no-prompt or when the run's model is unavailable).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

from backend.store import query as store
from explorer.feature_charts_panel import ENV_PLOTLY
from tests.test_browser import browser, ensure_browser, serve, wait_idle

ROW_H = 35  # px: st.dataframe's default row height (header row included)
PROMPT = ("The history of the city begins in the twelfth century, when a small market grew up beside the river crossing. "
          "Merchants from the north brought wool and timber, and by 1350 the town had a charter, two churches and a "
          "stone bridge. In the nineteenth century the railway arrived, the population tripled, and factories replaced "
          "the old workshops along the water. Today the city is known for its university, its museums and its annual "
          "music festival, which draws visitors from across the country every summer. def add(a, b): return a + b")


def prompt_of(model: str, n_tokens: int) -> str:
    """The first `n_tokens` tokens of PROMPT (repeated as needed) under the run's tokenizer."""
    from transformers import AutoTokenizer

    from backend.model.loading import resolve_model

    where, gguf = resolve_model(model)
    tok = AutoTokenizer.from_pretrained(where, **({"gguf_file": gguf} if gguf else {}))
    ids = tok((PROMPT + " ") * 4, add_special_tokens=False)["input_ids"][:n_tokens]
    text = tok.decode(ids)
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    return text if n == n_tokens else tok.decode(ids[: n_tokens - (n - n_tokens)])


def wait_feature(page, f: int, timeout: float = 30_000) -> None:
    page.wait_for_selector(f".fx-contexts[data-feature='{f}']", timeout=timeout)


HISTOGRAMS_DRAWN = ("() => document.querySelectorAll('.fx-hist .fx-bar').length > 0 && document.querySelectorAll('.fx-hist').length >= 2"
                    " || document.querySelectorAll('.js-plotly-plot .main-svg .bars').length >= 2")


def wait_whole_page(page, f: int, timeout: float = 30_000) -> None:
    """The last element of a feature page drawn (the Effects panel's button, under everything else) and both
    histograms drawn, as HTML or, with --plotly-histograms, as Plotly bars (Plotly draws after the element arrives)."""
    page.get_by_role("button", name=f"Ablate feature {f} on its top 20 contexts").wait_for(timeout=timeout)
    page.wait_for_function(HISTOGRAMS_DRAWN, polling="raf", timeout=timeout)


def bench_table_clicks(page, url: str, run: str, d: str, alive: list[int], n: int) -> list[float]:
    """Click the row of feature f in the Features table (sorted by id, page 1) and time until f's contexts
    show; then back to the table through the sidebar, in the same session, as a reader would."""
    times = []
    page.goto(f"{url}/features?run={run}&dict={d}")
    for f in alive[:n]:
        grid = page.locator("[data-testid='stDataFrame']")
        grid.wait_for(timeout=60_000)
        wait_idle(page)
        page.wait_for_timeout(300)
        box = grid.bounding_box()
        y = box["y"] + ROW_H * (f + 1) + ROW_H / 2  # header row, then one row per feature id
        if y > box["y"] + box["height"] - 5:
            break
        t0 = time.perf_counter()
        page.mouse.click(box["x"] + 15, y)  # the row-selector column
        wait_feature(page, f)
        t1 = time.perf_counter()
        wait_whole_page(page, f)
        times.append((t1 - t0, time.perf_counter() - t0))
        wait_idle(page)
        page.locator("[data-testid='stSidebarNav'] a", has_text="Features").click()
        page.wait_for_function("() => location.pathname.endsWith('/features')")
    return times


def bench_neighbour_clicks(page, url: str, run: str, d: str, start: int, n: int) -> list[float]:
    """From a feature page, follow the first not-yet-seen neighbour link, n times."""
    times, seen = [], {start}
    page.goto(f"{url}/feature?run={run}&dict={d}&feature={start}")
    wait_feature(page, start, 60_000)
    wait_idle(page)
    for _ in range(n):
        links = page.locator("[data-testid='stPageLink'] a")
        # the neighbour links come after the contexts: a busy machine can report the run idle before they are drawn
        links.first.wait_for(timeout=60_000)
        target, link = None, None
        for i in range(links.count()):
            m = re.match(r"#(\d+)\s", links.nth(i).inner_text())
            if m is None:  # another page link ("In the tour as stop N")
                continue
            cand = int(m.group(1))
            if cand not in seen:
                target, link = cand, links.nth(i)
                break
        if link is None:
            break
        dash = store.feature_dashboard(run_path, d, target)
        if not dash["contexts"]["top"]:
            seen.add(target)
            continue
        t0 = time.perf_counter()
        link.click()
        wait_feature(page, target)
        t1 = time.perf_counter()
        wait_whole_page(page, target)
        times.append((t1 - t0, time.perf_counter() - t0))
        wait_idle(page)
        seen.add(target)
    return times


def bench_prompt(page, url: str, run: str, d: str, text: str) -> float:
    page.goto(f"{url}/inspect?run={run}&dict={d}")
    box = page.get_by_label("Text", exact=True)
    box.wait_for(timeout=60_000)
    box.fill("Warm up: load the model once.")
    page.get_by_role("button", name="Inspect").click()
    page.wait_for_selector(".fx-prompt-table", timeout=300_000)  # the first load of the model
    wait_idle(page, 300_000)
    before = page.locator(".fx-prompt-table tr.fx-prow").count()
    box.fill(text)
    t0 = time.perf_counter()
    page.get_by_role("button", name="Inspect").click()
    page.wait_for_function(f"() => document.querySelectorAll('.fx-prompt-table tr.fx-prow').length !== {before}",
                           timeout=120_000)
    dt = time.perf_counter() - t0
    wait_idle(page)
    return dt


def main() -> None:
    global run_path
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO / "data"), help="data root the app serves")
    ap.add_argument("--run", default="demo", help="run name under --data (as the sidebar shows it)")
    ap.add_argument("--dict", default=None, help="dictionary (default: the first analysed one)")
    ap.add_argument("--clicks", type=int, default=10)
    ap.add_argument("--prompt-tokens", type=int, default=100)
    ap.add_argument("--no-prompt", action="store_true", help="skip the prompt-inspector timing")
    ap.add_argument("--plotly-histograms", action="store_true",
                    help="serve the feature page with its two histograms in Plotly (FEATURE_EXPLORER_PLOTLY_HISTOGRAMS=1), "
                         "to measure what drawing them as HTML saves")
    args = ap.parse_args()
    if args.plotly_histograms:
        os.environ[ENV_PLOTLY] = "1"  # the served app inherits it

    why = ensure_browser()
    if why:
        sys.exit(f"error: {why}")
    runs = store.list_runs(args.data)
    hit = runs[runs["run"] == args.run]
    if hit.empty:
        sys.exit(f"error: no run {args.run!r} under {args.data} (runs: {', '.join(runs['run']) or 'none'}); "
                 "`python -m backend demo` builds the demo")
    run_path = str(hit["path"].iloc[0])
    dicts = store.list_dictionaries(run_path)
    dicts = dicts[dicts["analysed"]]
    if dicts.empty:
        sys.exit(f"error: run {args.run} has no analysed dictionary")
    d = args.dict or str(dicts["name"].iloc[0])
    alive = store.list_features(run_path, d, alive=True, limit=12, offset=0)["feature"].astype(int).tolist()
    alive = [f for f in alive if store.feature_dashboard(run_path, d, f)["contexts"]["top"]]
    info = store.run_info(run_path)
    print(f"store: {run_path} dict {d} ({int(dicts.loc[dicts['name'] == d, 'd_sae'].iloc[0]):,} features, "
          f"{int(info['n_tokens']):,} tokens)")

    log = REPO / "bench" / "results" / "bench_ui_streamlit.log"
    log.parent.mkdir(parents=True, exist_ok=True)  # bench/results/ is not in a fresh clone
    with serve(Path(args.data), log) as url, browser() as (page, _):
        table = bench_table_clicks(page, url, args.run, d, alive, args.clicks)
        start = store.list_features(run_path, d, alive=True, sort="density", descending=True, limit=1)["feature"].iloc[0]
        neigh = bench_neighbour_clicks(page, url, args.run, d, int(start), args.clicks)
        for name, ts in (("features table click -> feature page", table), ("neighbour link -> feature page", neigh)):
            if not ts:
                print(f"{name}: no alive feature to click")
                continue
            ctx, whole = [c for c, _ in ts], [w for _, w in ts]
            print(f"{name}: contexts drawn median {statistics.median(ctx) * 1000:.0f} ms (max {max(ctx) * 1000:.0f}), "
                  f"whole page median {statistics.median(whole) * 1000:.0f} ms (max {max(whole) * 1000:.0f}) "
                  f"over {len(ts)} clicks (target < 500 ms)")
        if not args.no_prompt:
            text = prompt_of(info["model"], args.prompt_tokens)
            dt = bench_prompt(page, url, args.run, d, text)
            server = page.locator("[data-testid='stCaptionContainer']", has_text="forward + encode").first.inner_text()
            print(f"prompt inspector, {args.prompt_tokens} tokens, model cached: {dt * 1000:.0f} ms in the browser "
                  f"({server.split('·')[-1].strip()} of it on the server)")


run_path = ""
if __name__ == "__main__":
    main()
