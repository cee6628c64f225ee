"""The feature page's server-drawn histograms (explorer/html_charts.py) and its lighter context markup."""

from __future__ import annotations

import html
import re

import pytest

from explorer import components, html_charts


def bars(chart: str) -> list[dict]:
    """Each bar's place, size (percent of the plot) and hover text."""
    out = []
    for m in re.finditer(r'<div class="fx-bar" style="left:([\d.]+)%;width:calc\(([\d.]+)% - 0.5px\);height:([\d.]+)%" '
                         r'title="([^"]*)"></div>', chart):
        out.append(dict(x=float(m[1]), w=float(m[2]), h=float(m[3]), title=html.unescape(m[4])))
    return out


@pytest.mark.parametrize("lo, hi, want", [
    (0, 83, [0, 20, 40, 60, 80]),
    (-0.6, 1.2, [-0.5, 0, 0.5, 1]),
    (0, 4000, [0, 1000, 2000, 3000, 4000]),
    (0, 3, [0, 1, 2, 3]),
    (2, 2, [2]),  # an empty range: the one value
])
def test_nice_ticks(lo, hi, want):
    assert html_charts.nice_ticks(lo, hi) == pytest.approx(want)


def test_histogram_bars_match_the_bins():
    chart = html_charts.histogram([0.0, 1.0, 2.0, 4.0, 5.0], [30, 0, 70, 10], "Activations, density 0.2%", "#ff7f0e",
                                  height=200, xtitle="activation")
    got = bars(chart)
    assert len(got) == 3  # the empty bin draws nothing
    assert [b["title"] for b in got] == ["0.5: 30", "3: 70", "4.5: 10"]  # bin centre: count
    assert [b["x"] for b in got] == [0.0, 40.0, 80.0] and [b["w"] for b in got] == [20.0, 40.0, 20.0]
    assert got[1]["h"] == 100.0 and got[0]["h"] == pytest.approx(100 * 30 / 70, abs=0.01)  # y runs to the top tick
    grid = [float(b) for b in re.findall(r'class="fx-hist-grid" style="bottom:([\d.]+)%"', chart)]
    labels = re.findall(r'class="fx-hist-grid" style="bottom:[\d.]+%"><span>(\d+)</span>', chart)
    assert labels == ["0", "20", "40", "60"] and grid[-1] == pytest.approx(100 * 60 / 70, abs=0.01)
    xticks = re.findall(r'<span style="left:([\d.]+)%">([^<]+)</span>', chart)
    assert [t for _, t in xticks] == ["0", "1", "2", "3", "4", "5"] and float(xticks[-1][0]) == 100.0
    assert "Activations, density 0.2%" in chart and 'class="fx-hist-xtitle">activation<' in chart
    assert "--c:#ff7f0e" in chart and "<svg" not in chart  # st.html's sanitiser drops SVG


def test_histogram_escapes_and_handles_bad_bins():
    svg = html_charts.histogram([0, 1], [1, 2], "<script>x</script>", "#000")  # edges/counts mismatch
    assert not bars(svg) and "no data" in svg
    assert "<script" not in svg and "&lt;script&gt;" in svg
    assert not bars(html_charts.histogram([], [], "empty", "#000"))
    assert "−0.5" in html_charts.histogram([-0.6, 0.0, 1.2], [5, 9], "logits", "#777")  # a minus sign, as Plotly


def test_context_rows_leave_silent_tokens_as_text():
    """Only the firing tokens and the peak get a span; the text of the context is unchanged and escaped."""
    toks = [" a", " <b>x</b>", " fires", " peak", " after"]
    rows = components.context_rows([{"tokens": toks, "acts": [0, 0, 1.5, 3.0, 0], "peak": 3, "value": 3.0}], vmax=3.0)
    assert rows.count('class="fx-tok') == 2 and rows.count("fx-peak") == 1
    assert "<b>" not in rows and "&lt;b&gt;x&lt;/b&gt;" in rows
    assert html.unescape(re.sub(r"<span class=\"fx-val\">[^<]*</span>|<[^>]+>", "", rows)) == "".join(toks)
    # the prompt inspector keeps a span per token (it shades any feature chosen later)
    assert components.token_spans(toks, [0] * 5).count('class="fx-tok"') == 5
