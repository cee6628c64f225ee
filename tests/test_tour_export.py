"""The tour (`<run>/tour.json`, with history) and the self-contained HTML export, on the fake contract store."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser

import pytest

from backend.common.errors import UserError
from backend.store import tour
from tests.test_app_pages import FAKE_DICT, FAKE_RUN, SCRIPT_FEATURE, make_fake_store

HOSTILE_LABEL = "<script>alert(1)</script> & <b>bold</b>"


@pytest.fixture
def run(tmp_path):
    root = make_fake_store(tmp_path / "data")
    return root / FAKE_RUN


def test_tour_add_move_remove_keeps_history(run):
    assert tour.load_tour(run) == {"stops": [], "history": [], "version": 0}
    assert tour.add_stop(run, FAKE_DICT, 3, "digits", "Ada") == 0
    assert tour.add_stop(run, FAKE_DICT, SCRIPT_FEATURE, "html tags", "Ada") == 1
    assert tour.add_stop(run, FAKE_DICT, 7, "", "Bea") == 2
    assert [s["feature"] for s in tour.stops(run)] == [3, SCRIPT_FEATURE, 7]
    tour.move_stop(run, 2, -1, "Bea")  # 7 one place earlier
    assert [s["feature"] for s in tour.stops(run)] == [3, 7, SCRIPT_FEATURE]
    tour.move_stop(run, 0, -1, "Bea")  # already first: stays
    tour.move_stop(run, 0, +5, "Bea")  # clamped to the end
    assert [s["feature"] for s in tour.stops(run)] == [7, SCRIPT_FEATURE, 3]
    tour.set_note(run, 2, "the digits feature", "Cy")
    tour.remove_stop(run, 0, "Cy")
    t = tour.load_tour(run)
    assert [(s["feature"], s["note"]) for s in t["stops"]] == [(SCRIPT_FEATURE, "html tags"), (3, "the digits feature")]
    assert t["stops"][1]["added_by"] == "Ada" and t["version"] == 8 and len(t["history"]) == 8
    assert [h["action"] for h in t["history"]][:2] == ["add relu-l1/3", f"add relu-l1/{SCRIPT_FEATURE}"]
    assert t["history"][-1]["by"] == "Cy" and [s["feature"] for s in t["history"][-1]["stops"]] == [7, SCRIPT_FEATURE, 3]
    # restore the version that had three stops: nothing was lost
    tour.restore(run, 4, "Dee")  # history[i] is the version before change i+1
    assert [s["feature"] for s in tour.stops(run)] == [3, 7, SCRIPT_FEATURE]
    assert json.loads((run / "tour.json").read_text())["version"] == 9


def test_tour_refuses_bad_input_with_one_line(run):
    tour.add_stop(run, FAKE_DICT, 3, "", "Ada")
    with pytest.raises(UserError, match="already stop 1"):
        tour.add_stop(run, FAKE_DICT, 3, "again", "Ada")
    with pytest.raises(UserError, match="no dictionary 'nope'"):
        tour.add_stop(run, "nope", 1, "", "Ada")
    with pytest.raises(UserError, match="say who you are"):
        tour.add_stop(run, FAKE_DICT, 4, "", "  ")
    with pytest.raises(UserError, match="no stop 5"):
        tour.move_stop(run, 4, 1, "Ada")
    with pytest.raises(UserError, match="at most 2000"):
        tour.set_note(run, 0, "x" * 2001, "Ada")
    (run / "tour.json").write_text("{not json")
    with pytest.raises(UserError, match="not a readable tour file"):
        tour.stops(run)


class _Text(HTMLParser):
    """The text a browser shows (script and style bodies left out) and the tags it builds."""

    def __init__(self):
        super().__init__()
        self.text, self.tags, self._skip = [], [], 0

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag):
        self._skip -= tag in ("script", "style")

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)


def test_export_tour_is_self_contained_and_escaped(run, tmp_path):
    from backend.html_export import export_html
    from backend.store.label_store import LabelStore

    LabelStore(run).save(FAKE_DICT, SCRIPT_FEATURE, HOSTILE_LABEL, "Ada")
    tour.add_stop(run, FAKE_DICT, SCRIPT_FEATURE, "note with </script><script>alert(2)</script>", "Ada")
    tour.add_stop(run, FAKE_DICT, 3, "digits", "Ada")
    out = export_html(run, tmp_path / "tour.html", tour=True)
    page = out.read_text()
    parser = _Text()
    parser.feed(page)
    text = "".join(parser.text)
    # the label, the note and the hostile context tokens are text, never markup
    assert HOSTILE_LABEL in text and "note with </script><script>alert(2)</script>" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    assert "<script>alert(1)</script>" in text  # a context token, shown as text
    # scripts: plotly.js once in the head, then one Plotly.newPlot per chart (2 per stop), nothing else
    scripts = re.findall(r"<script>(.*?)</script>", page, flags=re.S)
    assert len(scripts) == 1 + 2 * 2 and all(s.startswith("Plotly.newPlot(") for s in scripts[1:])
    assert len(scripts[0]) > 1_000_000 and "Plotly" in scripts[0][:5000]  # plotly.js itself, inline
    for s in scripts[1:]:  # chart data cannot close its script or open another
        assert "</" not in s and "<script" not in s.lower() and "<!--" not in s
    outside = page.replace(scripts[0], "")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", outside)  # nothing fetched from the network
    assert parser.tags.count("section") == 2 and "Tour of fake" in text
    assert text.index("1. Feature 0") < text.index("2. Feature 3")  # the tour's order
    assert text.count("Top 10 contexts") == 2 and page.count('class="fx-ctx"') == 20


def test_export_features_and_cli(run, tmp_path, capsys):
    from backend.cli import main

    assert main(["export", "--run", str(run), "--dict", FAKE_DICT, "--features", "3,5", "--out",
                 str(tmp_path / "f.html"), "--contexts", "3"]) == 0
    assert "exported:" in capsys.readouterr().out
    page = (tmp_path / "f.html").read_text()
    assert page.count('<section class="stop"') == 2 and page.count('class="fx-ctx"') == 6 and "numbers in math" in page
    for argv, msg in ((["--tour"], "tour of .* is empty"), (["--dict", FAKE_DICT, "--features", "999"], "feature"),
                      ([], "say what to export")):
        assert main(["export", "--run", str(run), "--out", str(tmp_path / "x.html"), *argv]) == 2
        assert re.search(msg, capsys.readouterr().err)
    assert not (tmp_path / "x.html").exists()
    shutil.rmtree(run / "dictionaries")
    assert main(["export", "--run", str(run), "--dict", FAKE_DICT, "--features", "1", "--out", str(tmp_path / "y.html")]) == 2
