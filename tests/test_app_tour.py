"""AppTest of what issue 14 added to the app: the Overview's live build panel, the tour (add from a feature page,
reorder, remove, export) and demo mode (read-only, the tour first, no editing widgets)."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from backend.common import build_status as bs
from backend.store import tour
from tests.test_app_pages import APP, FAKE_DICT, FAKE_RUN, SCRIPT_FEATURE, make_fake_store, page_text


@pytest.fixture(scope="module")
def fake_store(tmp_path_factory, tiny_model_dir):
    return make_fake_store(tmp_path_factory.mktemp("fake_tour_data"), model_dir=str(tiny_model_dir))


@pytest.fixture
def root(fake_store, tmp_path, monkeypatch):
    """A private copy of the fake contract store (tour and labels written here stay here)."""
    root = tmp_path / "data"
    shutil.copytree(fake_store / FAKE_RUN, root / FAKE_RUN)
    monkeypatch.setenv("FEATURE_EXPLORER_DATA", str(root))
    monkeypatch.delenv("FEATURE_EXPLORER_DEMO_MODE", raising=False)
    return root


def make(page: str | None = None, **params):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update({k: str(v) for k, v in params.items()})
    return at.switch_page(page) if page else at


def write_status(out, state="running", ready=(), step="train topk", pid=None):
    """A build status as backend.common.build_status writes it: topk trained then analysed, relu-l1 waiting."""
    steps = [bs.Step("cache", "cache", "cache", prior=180, state="done", seconds=200)]
    for k in ("topk", "relu-l1"):
        for name in ("train", "metrics", "analyze", "explain"):
            key = f"{name} {k}"
            s = bs.Step(key, "dictionary", name, k, prior=100)
            if k in ready:
                s.state, s.seconds = "done", 100
            elif key == step:
                s.state, s.started = "running", time.time() - 30
            steps.append(s)
    rep = bs.BuildReporter(out, steps, log=str(bs.log_path(out)))
    rep.current = step if state == "running" else None
    rep.ready_dicts = list(ready)
    rep.state = state
    snap = rep.snapshot()
    snap["pid"] = os.getpid() if pid is None else pid
    bs.write_json(bs.status_path(out), snap)
    return snap


# ------------------------------------------------------------------ the Overview while the demo store builds


def test_overview_shows_a_build_before_the_run_exists(root):
    write_status(root / "demo", step="train topk")
    shutil.rmtree(root / FAKE_RUN)  # no run at all yet: the cache is still running
    at = make().run()
    assert not at.exception, at.exception
    text = page_text(at)
    assert "Building the demo store `demo` in the background" in text
    bar = at.get("progress")[0]
    assert "left" in bar.proto.text and "now: training **topk**" in bar.proto.text
    assert "The run appears here when its activations are cached" in text
    table = at.dataframe[0].value
    assert table.set_index("dictionary")["state"].to_dict() == {"topk": "building", "relu-l1": "waiting"}


def test_overview_lists_ready_dictionaries_and_keeps_the_run(root):
    snap = write_status(root / "demo", ready=("topk",), step="train relu-l1")
    assert 0 < snap["progress"] < 1 and snap["eta_seconds"] > 0
    at = make().run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value.set_index("dictionary")
    assert table.loc["topk", "state"] == "browsable" and table.loc["relu-l1", "state"] == "building"
    assert table.loc["relu-l1", "step"] == "training" and table.loc["topk", "steps done"] == "4 of 4"
    text = page_text(at)
    assert f"{snap['progress']:.0%} done" in at.get("progress")[0].proto.text
    assert f"Run {FAKE_RUN}" in text and len(at.metric) == 5  # the run below the panel, as before


def test_overview_says_a_killed_build_resumes(root):
    dead = write_status(root / "demo", pid=999_999)  # no such process
    assert dead["state"] == "running"
    at = make().run()
    assert not at.exception, at.exception
    assert any("stopped: its process is gone" in w.value and "./run.sh" in w.value for w in at.warning)
    assert not at.get("progress")


# ------------------------------------------------------------------ the tour: add from the feature page, edit, export


def _button(at, label):
    return next(b for b in at.button if b.label == label)


def test_add_to_tour_from_feature_page_then_reorder_and_remove(root):
    run = root / FAKE_RUN
    at = make("app_pages/feature.py", run=FAKE_RUN, dict=FAKE_DICT, feature=3).run()
    assert not at.exception, at.exception
    assert not at.text_area  # the popover is filled only once opened
    at.session_state["tour_box_3"] = True
    at.run()
    at.text_area(key=f"tour_add_note_{FAKE_DICT}_3").input("digits <b>only</b>")
    at.button(key="tour_add_3").click().run()
    assert any("Enter your name first" in e.value for e in at.error) and not tour.stops(run)
    at.text_input(key="tour_box_author").input("Ada").run()
    at.text_area(key=f"tour_add_note_{FAKE_DICT}_3").input("digits <b>only</b>")
    at.button(key="tour_add_3").click().run()
    assert not at.exception, at.exception
    assert any("is stop 1 of the tour" in s.value for s in at.success)
    assert [(s["feature"], s["note"], s["added_by"]) for s in tour.stops(run)] == [(3, "digits <b>only</b>", "Ada")]
    assert any("In the tour as stop 1" in p.proto.label for p in at.get("page_link"))
    tour.add_stop(run, FAKE_DICT, SCRIPT_FEATURE, "tags", "Ada")
    tour.add_stop(run, FAKE_DICT, 7, "", "Ada")

    at = make("app_pages/tour.py", run=FAKE_RUN)
    at.session_state["author"] = "Bea"
    at.run()
    assert not at.exception, at.exception
    assert "3 stops" in page_text(at)
    at.button(key="tour_down_0").click().run()  # feature 3 one later
    assert [s["feature"] for s in tour.stops(run)] == [SCRIPT_FEATURE, 3, 7]
    assert not at.button(key="tour_up_1").disabled and at.button(key="tour_up_0").disabled
    at.button(key="tour_remove_2").click().run()
    assert [s["feature"] for s in tour.stops(run)] == [SCRIPT_FEATURE, 3]
    key = f"tour_note_1_{tour.load_tour(run)['version']}"
    at.text_area(key=key).input("the digits").run()
    assert tour.stops(run)[1]["note"] == "the digits"
    assert [h["by"] for h in tour.load_tour(run)["history"]][-3:] == ["Bea", "Bea", "Bea"]
    # the HTML export: prepared, then offered for download
    _button(at, "Prepare the HTML export").click().run()
    assert not at.exception, at.exception
    assert at.get("download_button"), "no download button after preparing the export"


def test_tour_page_empty_is_explained(root):
    at = make("app_pages/tour.py").run()
    assert not at.exception, at.exception
    assert "The tour is empty" in page_text(at) and "Add to tour" in page_text(at)


# ------------------------------------------------------------------ demo mode: read-only, the tour first


def test_demo_mode_opens_the_tour_read_only(root):
    from backend.store.label_store import LabelStore

    run = root / FAKE_RUN
    LabelStore(run).save(FAKE_DICT, SCRIPT_FEATURE, "<script>alert(1)</script> tags", "Ada")
    tour.add_stop(run, FAKE_DICT, SCRIPT_FEATURE, "look at the <b>tags</b>", "Ada")
    tour.add_stop(run, FAKE_DICT, 3, "digits", "Ada")
    at = make(demo=1).run()  # the bare URL with ?demo=1: the tour is the first page
    assert not at.exception, at.exception
    text = page_text(at)
    assert "Tour of fake" in text and "1. Feature 0" in text
    html = "\n".join(h.proto.body for h in at.get("html"))
    assert "&lt;script&gt;alert(1)&lt;/script&gt; tags" in html and "<script>alert" not in html
    assert "fx-ctx" in html and "font-size:18px" in html  # contexts, large
    assert any("look at the \\<b\\>tags\\</b\\>" in i.value for i in at.info)  # the note, Markdown-escaped
    assert "not validated or scored yet" in text
    # no editing widgets anywhere: no text inputs or areas, no up/down/remove, no export
    assert not at.text_input and not at.text_area
    assert {b.key for b in at.button} == {"tour_prev", "tour_next"}
    assert at.button(key="tour_prev").disabled
    at.button(key="tour_next").click().run()
    assert "2. Feature 3" in page_text(at) and at.button(key="tour_next").disabled
    # the feature page in demo mode: the label, no editor, no add-to-tour
    at.switch_page("app_pages/feature.py").run()
    assert not at.exception, at.exception
    assert not at.text_input and not at.text_area and not at.get("popover")
    assert not any("Edit label" in (e.proto.label or "") for e in at.get("expandable"))


def test_demo_mode_from_the_server_hides_validate(root, monkeypatch):
    monkeypatch.setenv("FEATURE_EXPLORER_DEMO_MODE", "1")
    at = make().run()
    assert not at.exception, at.exception
    assert "This run has no tour yet." in page_text(at)
    at = make("app_pages/validate.py").run()  # not a page of the demo-mode app: the tour instead
    assert not at.exception, at.exception
    assert "This run has no tour yet." in page_text(at) and "Validate labels" not in page_text(at)
    assert not at.text_input


def test_sidebar_opens_the_dictionary_the_build_made_first(root):
    """Alphabetically relu-l1 < topk, but the demo built topk first: the sidebar opens topk."""
    run = root / FAKE_RUN
    shutil.copytree(run / "dictionaries" / FAKE_DICT, run / "dictionaries" / "topk")
    write_status(run, state="done", ready=("topk", FAKE_DICT))
    at = make().run()
    assert not at.exception, at.exception
    assert at.sidebar.selectbox[1].value == "topk"
    bs.status_path(run).unlink()
    at = make().run()
    assert at.sidebar.selectbox[1].value == FAKE_DICT  # no build record: the first analysed, as before
