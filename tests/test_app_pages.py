"""AppTest for every explorer page, on two small stores:

* `fake`: a contract run from tests/fake_run.py with planted firings (`make_fake_store`, no training), so
  the pages are tested against the documented format, including a context with `<script>` and `<b>` tokens;
* `tiny`: the shared `tiny_store` fixture, built by the real pipeline (cache -> train -> analyze).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.fake_run import write_analysis, write_dictionary, write_run
from tests.tiny import GENRES, make_tokenizer

APP = str(Path(__file__).resolve().parent.parent / "explorer" / "app.py")
FAKE_RUN = "fake"
FAKE_DICT = "relu-l1"
D_IN, D_SAE, CTX = 64, 48, 32
SCRIPT_FEATURE = 0  # fires on `<script>alert(1)</script>` and `<b>bold</b>`: its top contexts hold them
DEAD_FEATURE = D_SAE - 1
GROUPS = ("top", "q1", "q2", "q3", "q4", "q5")


def _tokens(n_seqs: int, seed: int):
    """(ids [n_seqs, CTX], token strings, sources): BOS + word-level tokens, one genre per sequence."""
    tok = make_tokenizer()
    rng = np.random.default_rng(seed)
    genres = sorted(GENRES)
    ids, sources = [], []
    for s in range(n_seqs):
        g = genres[s % len(genres)] if s != 1 else "math"  # sequence 1 is math: it holds the script text
        words: list[int] = []
        while len(words) < CTX - 1:
            texts = GENRES[g]
            t = texts[2] if (g == "math" and s == 1 and not words) else texts[rng.integers(len(texts))]
            words += tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids.append([tok.bos_token_id] + words[: CTX - 1])
        sources.append(g)
    ids = np.asarray(ids, dtype=np.int32)
    vocab = {i: w for w, i in tok.get_vocab().items()}
    return ids, [vocab[int(i)] for i in ids.reshape(-1)], sources


def make_fake_store(root: Path, model_dir: str | None = None, n_seqs: int = 24, seed: int = 0) -> Path:
    """Write data root `root` with run `fake` and an analysed dictionary `relu-l1` (48 features, loadable weights)."""
    import torch

    from backend.analysis.analyze import AnalyzeConfig

    rng = np.random.default_rng(seed)
    ids, strs, sources = _tokens(n_seqs, seed)
    words = make_tokenizer().get_vocab()
    vocab = np.full(max(words.values()) + 1, "", dtype=object)  # token text by id
    vocab[list(words.values())] = list(words)
    run = write_run(root / FAKE_RUN, ids, vocab, sources, d_in=D_IN, dtype="float32",
                    heldout_from=n_seqs - 2, model=model_dir or "tiny-random-llama", hook="blocks.1.hook_resid_post",
                    corpus="tests/tiny.py genres",
                    bos_token_id=1, source_counts={g: sources.count(g) for g in sorted(set(sources))})
    W_dec = rng.standard_normal((D_SAE, D_IN)).astype(np.float32)
    W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)  # SAELens layout: unit-norm decoder rows
    write_dictionary(run, FAKE_DICT, D_IN, D_SAE, tensors={"W_enc": W_dec.T, "b_enc": np.zeros(D_SAE), "W_dec": W_dec,
                                                          "b_dec": np.zeros(D_IN)},
                     metrics={"l0": 6.5, "explained_variance": 0.81, "fvu": 0.19, "mse": 0.01, "dead_fraction": 1 / D_SAE,
                              "ce_loss_score": 0.9, "delta_ce": 0.05, "kl_div": 0.03})
    firings = _firings(strs, rng)
    W_U = rng.standard_normal((D_IN, len(vocab))).astype(np.float32)
    # neighbours of f: f+1, f+2, f+3, f+5, f+8 (mod D_SAE), so a page's links are known (the browser test follows one)
    neighbours = (np.array([[(f + k) % D_SAE for k in (1, 2, 3, 5, 8)] for f in range(D_SAE)], np.int32),
                  -np.sort(-rng.uniform(0.1, 0.6, (D_SAE, 5)), axis=1).astype(np.float32))
    labels = ["html tags <b>" if f == SCRIPT_FEATURE else "numbers in math" if f == 3 else "" for f in range(D_SAE)]
    write_analysis(run, FAKE_DICT, firings, D_SAE, W_dec=torch.from_numpy(W_dec), W_U=torch.from_numpy(W_U),
                   vocab=vocab.tolist(), neighbours=neighbours, labels=labels,
                   label_sources=["human" if t else "" for t in labels],
                   cfg=AnalyzeConfig(max_per_seq=20))  # top contexts by value alone
    return root


def _firings(strs: list[str], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every feature fires on ~8% / (1 + f % 4) of the non-position-0 tokens with gamma values; the script
    feature fires hardest (9-10) on every token holding `<` or `>`; the dead feature never fires."""
    flat = np.asarray(strs, dtype=object)
    n_tok = len(flat)
    special = np.flatnonzero([("<" in s or ">" in s) for s in flat])
    special = special[special % CTX != 0]
    candidates = np.flatnonzero(np.arange(n_tok) % CTX != 0)
    rows_f, rows_t, rows_v = [], [], []
    for f in range(D_SAE):
        if f == DEAD_FEATURE:
            continue
        t = np.sort(rng.choice(candidates, size=max(2, int(0.08 * len(candidates)) // (1 + f % 4)), replace=False))
        v = rng.gamma(2.0, 1.0 + f % 5, size=len(t)).astype(np.float32)
        if f == SCRIPT_FEATURE:
            t = np.union1d(t, special)
            v = rng.gamma(1.5, 0.5, size=len(t)).astype(np.float32)
            v[np.isin(t, special)] = 9.0 + rng.random(np.isin(t, special).sum()).astype(np.float32)
        rows_f.append(np.full(len(t), f, np.int32))
        rows_t.append(t.astype(np.int64))
        rows_v.append(v)
    return np.concatenate(rows_f), np.concatenate(rows_t), np.concatenate(rows_v)


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def fake_store(tmp_path_factory, tiny_model_dir) -> Path:
    return make_fake_store(tmp_path_factory.mktemp("fake_data"), model_dir=str(tiny_model_dir))


@pytest.fixture(scope="session", params=["fake", "tiny"])
def store_root(request) -> Path:
    if request.param == "fake":
        return request.getfixturevalue("fake_store")
    for mod in ("backend.training.trainer", "backend.analysis.analyze", "backend.dictionaries"):
        pytest.importorskip(mod, reason=f"{mod} not in this checkout yet")
    return request.getfixturevalue("tiny_store")


def _run_name(root: Path) -> str:
    from backend.store import query as store
    return str(store.list_runs(root)["run"].iloc[0])


def _dict_name(root: Path) -> str:
    return FAKE_DICT  # both stores name their dictionary relu-l1


@pytest.fixture
def app(store_root, monkeypatch):
    """An AppTest of the whole app (frame + navigation) reading `store_root`."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FEATURE_EXPLORER_DATA", str(store_root))
    at = AppTest.from_file(APP, default_timeout=120)
    return at


def page_text(at) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [t.value for t in at.title]
    parts += [h.proto.body for h in at.get("html")]
    parts += [e.value for e in at.info] + [e.value for e in at.warning] + [e.value for e in at.error]
    return "\n".join(str(p) for p in parts)


# ------------------------------------------------------------------ pages


def test_overview(app, store_root):
    at = app.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    labels = [m.label for m in at.metric]
    for key in ("l0", "explained_variance", "dead_fraction", "ce_loss_score", "kl_div"):
        assert key in labels
    captions = [c.value for c in at.caption]
    for key in ("Model", "Hook point", "Corpus", "Tokens"):
        assert key in captions
    assert "blocks.1.hook_resid_post" in page_text(at)
    assert at.sidebar.selectbox[0].label == "Run"
    assert at.sidebar.selectbox[1].value == _dict_name(store_root)
    assert at.query_params["run"] == [_run_name(store_root)] or at.query_params["run"] == _run_name(store_root)
    assert len(at.get("plotly_chart")) == 1  # the density histogram


def test_no_runs_is_explained(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FEATURE_EXPLORER_DATA", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    text = page_text(at)
    assert "No runs" in text and "python -m backend cache" in text


def test_features_table_filters_and_random(app, store_root):
    at = app.switch_page("app_pages/features.py").run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    df = at.dataframe[0].value
    assert list(df.columns) == ["feature", "label", "density", "max_act", "top_logits"]
    assert len(df) > 0
    assert "matching features" in page_text(at)
    # dead only
    at.radio(key="f_alive").set_value("dead").run()
    assert not at.exception
    if at.dataframe:
        assert (at.dataframe[0].value["density"] == 0).all()
    at.radio(key="f_alive").set_value("all").run()
    # sort by density, descending
    at.selectbox(key="f_sort").set_value("density").run()
    at.toggle(key="f_desc").set_value(True).run()
    dens = at.dataframe[0].value["density"].to_numpy()
    assert (np.diff(dens) <= 0).all()
    # jump to a feature by id opens the feature page
    at.number_input(key="f_jump").set_value(2)
    next(b for b in at.button if b.label == "Open").click().run()
    assert not at.exception, at.exception
    assert "Feature 2 " in page_text(at)


def test_features_random_button(app):
    at = app.switch_page("app_pages/features.py").run()
    next(b for b in at.button if "Random" in b.label).click().run()
    assert not at.exception, at.exception
    assert "## Feature " in page_text(at) and at.query_params.get("feature")


def test_features_label_filter(app, store_root):
    at = app.switch_page("app_pages/features.py").run()
    at.radio(key="f_labelled").set_value("labelled").run()
    assert not at.exception, at.exception
    if store_root.name.startswith("fake"):
        assert set(at.dataframe[0].value["feature"]) == {SCRIPT_FEATURE, 3}
        at.text_input(key="f_label").set_value("math").run()
        assert list(at.dataframe[0].value["feature"]) == [3]


def _alive_feature(root: Path) -> int:
    """The densest feature with a successor and predecessor (so prev/next stay in range)."""
    from backend.store import query as store
    run = store.list_runs(root)["path"].iloc[0]
    df = store.list_features(run, _dict_name(root), alive=True, sort="density", descending=True, limit=10)
    return int(df[df["feature"] > 0]["feature"].iloc[0])


def test_feature_page_deep_link(app, store_root):
    f = _alive_feature(store_root)
    app.query_params["run"] = _run_name(store_root)
    app.query_params["dict"] = _dict_name(store_root)
    app.query_params["feature"] = str(f)
    at = app.run()  # the bare /?...&feature=N lands on the feature page
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    text = page_text(at)
    assert f"Feature {f} " in text
    assert "fx-ctx" in text and "fx-peak" in text  # contexts rendered with the peak marked
    assert "Positive logits" in text and "Negative logits" in text
    left = [h.proto.body for h in at.get("html") if "fx-left" in h.proto.body]
    assert len(left) == 1  # histograms and logit tables: one element
    assert left[0].count('<div class="fx-hist"') == 2  # activation + logit-effect histograms, drawn on the server
    assert "Activations, density" in left[0] and left[0].count('class="fx-bar"') >= 2
    assert not at.get("plotly_chart")  # Plotly's layout pass was a third of a click (issue 16)
    assert len(at.tabs) == 6  # top 20 + 5 quantile groups
    assert len(at.get("page_link")) >= 5  # nearest features
    # next / previous
    at.button(key="next").click().run()
    assert f"Feature {f + 1} " in page_text(at)
    assert at.query_params["feature"] in (str(f + 1), [str(f + 1)])
    at.button(key="prev").click().run()
    at.button(key="prev").click().run()
    assert f"Feature {f - 1} " in page_text(at)


def test_feature_page_histograms_in_plotly_on_request(app, store_root, monkeypatch):
    """FEATURE_EXPLORER_PLOTLY_HISTOGRAMS=1 (bench_ui --plotly-histograms) draws the same two histograms with Plotly."""
    monkeypatch.setenv("FEATURE_EXPLORER_PLOTLY_HISTOGRAMS", "1")
    f = _alive_feature(store_root)
    app.query_params.update({"run": _run_name(store_root), "dict": _dict_name(store_root), "feature": str(f)})
    at = app.run()
    assert not at.exception, at.exception
    charts = at.get("plotly_chart")
    assert [c.key for c in charts] == ["act_hist", "logit_hist"]
    assert "Activations, density" in str(charts[0].proto.spec) and "Logit effects" in str(charts[1].proto.spec)
    assert not [h for h in at.get("html") if 'class="fx-hist"' in h.proto.body]
    assert "Positive logits" in page_text(at)


def test_feature_page_escapes_tokens(fake_store, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FEATURE_EXPLORER_DATA", str(fake_store))
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update({"run": FAKE_RUN, "dict": FAKE_DICT, "feature": str(SCRIPT_FEATURE)})
    at = at.switch_page("app_pages/feature.py").run()
    assert not at.exception, at.exception
    html = "\n".join(h.proto.body for h in at.get("html"))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html
    assert "<script" not in html and "<b>" not in html
    # the label (which holds "<b>") is escaped too
    assert "<b>" not in "\n".join(m.value for m in at.markdown)


def test_feature_page_dead_feature(fake_store, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FEATURE_EXPLORER_DATA", str(fake_store))
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update({"run": FAKE_RUN, "dict": FAKE_DICT, "feature": str(DEAD_FEATURE)})
    at = at.run()
    assert not at.exception, at.exception
    text = page_text(at)
    assert "dead" in text and "No contexts" in text


def test_a_dictionary_being_trained_beside_does_not_hide_the_others(fake_store, tmp_path, monkeypatch):
    """A build trains the next dictionary into dictionaries/<name>.partial/ (a checkpoint, no cfg.json) while the
    app shows the finished ones: the sidebar and the pages keep working."""
    import shutil

    from streamlit.testing.v1 import AppTest

    root = tmp_path / "data"
    shutil.copytree(fake_store, root)
    partial = root / FAKE_RUN / "dictionaries" / "next-kind.partial"
    partial.mkdir()
    (partial / "checkpoint.safetensors").write_bytes(b"\0" * 64)
    monkeypatch.setenv("FEATURE_EXPLORER_DATA", str(root))
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update({"run": FAKE_RUN, "dict": FAKE_DICT, "feature": str(SCRIPT_FEATURE)})
    at = at.switch_page("app_pages/feature.py").run()
    assert not at.exception, at.exception
    assert not at.sidebar.error, [e.value for e in at.sidebar.error]
    assert f"Feature {SCRIPT_FEATURE} " in page_text(at)


def test_feature_page_bad_feature_number(fake_store, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FEATURE_EXPLORER_DATA", str(fake_store))
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update({"run": FAKE_RUN, "dict": FAKE_DICT, "feature": "99999"})
    at = at.run()
    assert not at.exception, at.exception
    assert any("does not exist" in w.value for w in at.warning)


def test_unknown_run_in_link_is_a_message(fake_store, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FEATURE_EXPLORER_DATA", str(fake_store))
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update({"run": "no-such-run", "dict": FAKE_DICT})
    at = at.run()
    assert not at.exception, at.exception
    assert any("not found" in w.value for w in at.sidebar.warning)


@pytest.mark.slow
def test_prompt_inspector(app, store_root):
    pytest.importorskip("backend.dictionaries", reason="backend.dictionaries not in this checkout yet")
    at = app.switch_page("app_pages/inspect.py").run()
    assert not at.exception, at.exception
    at.text_area[0].input("the cat sat on the mat and <b>bold</b> are literal tokens here")
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    html = "\n".join(h.proto.body for h in at.get("html"))
    if not store_root.name.startswith("fake") and "No feature fires" in page_text(at):
        return  # a nearly dead tiny dictionary: the empty state is said plainly, nothing more to check
    assert "fx-prompt-table" in html and "fx-flink" in html, page_text(at)
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "<b>" not in html
    assert "fx-tok" in html
    feats = at.dataframe[0].value["feature"].tolist()
    assert feats
    at.selectbox(key="p_feature").set_value(feats[-1]).run()
    assert not at.exception, at.exception


def test_prompt_inspector_model_error_is_a_message(tmp_path, monkeypatch):
    """A run whose model cannot load (a hub id, offline) gives a one-line error, not a traceback."""
    from streamlit.testing.v1 import AppTest

    root = make_fake_store(tmp_path / "data", model_dir=None)
    monkeypatch.setenv("FEATURE_EXPLORER_DATA", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    at = AppTest.from_file(APP, default_timeout=120).switch_page("app_pages/inspect.py").run()
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert at.error and "cannot load model" in at.error[0].value


def test_prompt_inspect_backend(tiny_model_dir):
    """inspect_prompt on the tiny model with an identity-like ReLU dictionary: BOS first, position 0 excluded."""
    import torch

    from backend.analysis.prompt_inspect import inspect_prompt
    from backend.model.loading import load_model

    class Relu(torch.nn.Module):
        d_in, d_sae = 64, 128

        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.W = torch.nn.Parameter(torch.randn(64, 128, generator=g))

        def encode(self, x):
            return torch.relu(x @ self.W)

    lm = load_model(str(tiny_model_dir), device="cpu")
    res = inspect_prompt(lm, Relu(), "blocks.1.hook_resid_post", "the cat sat on the mat", top_k=5)
    assert res.has_bos and res.tokens[0] == "<bos>" and res.tokens[1:] == ["the", "cat", "sat", "on", "the", "mat"]
    assert set(res.top.columns) == {"pos", "token_str", "feature", "activation", "rank"}
    assert res.top["pos"].min() >= 1 and res.active["pos"].min() >= 1
    assert res.top.groupby("pos").size().max() <= 5
    assert (res.top["activation"] > 0).all()
    f = int(res.top.iloc[0]["feature"])
    acts = res.feature_acts(f)
    assert acts.shape == (7,) and acts[0] == 0 and acts[int(res.top.iloc[0]["pos"])] == pytest.approx(res.top.iloc[0]["activation"])
    s = res.feature_summary()
    assert s["max_activation"].is_monotonic_decreasing
    from backend.common.errors import UserError

    with pytest.raises(UserError):
        inspect_prompt(lm, Relu(), "blocks.1.hook_resid_post", "   ")


def test_token_html_escapes_and_shades():
    from explorer import components

    toks = ["<bos>", "<script>alert(1)</script>", "and", "<b>bold</b>"]
    html = components.token_spans(toks, [0, 2.0, 0, 4.0], peak=3)
    assert "<script" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    assert html.count("fx-peak") == 1 and "rgba(255,127,14,1.00)" in html and "rgba(255,127,14,0.50)" in html
    assert 'title="act 4.000' in html
    # BPE tokens carry their own spaces: no separator is added, and the space sits outside the shaded span
    import re

    spans = components.token_spans([" the", " cat", "  "], [1, 0, 0])
    assert re.sub(r"<[^>]+>", "", spans) == " the cat  "
    assert '"> the<' not in spans and ">the<" in spans
    rows = components.context_rows([{"tokens": toks, "acts": [0, 1, 0, 2], "peak": 3, "value": 2.0, "source": "<i>x</i>"}], vmax=2)
    assert "<i>" not in rows and "&lt;i&gt;" in rows


def test_feature_page_figures_and_side_by_side_markup():
    """The histograms are built from one dict (fast) and hold the bins; two tables go out as one flex element."""
    from explorer import components

    fig = components.hist_from_bins([0.0, 1.0, 2.0, 4.0], [3, 5, 7], "Activations", "#ff7f0e", height=200, xtitle="act")
    bar = fig.data[0]
    assert list(bar.x) == [0.5, 1.5, 3.0] and list(bar.y) == [3, 5, 7] and list(bar.width) == [1.0, 1.0, 2.0]
    assert fig.layout.title.text == "Activations" and fig.layout.height == 200 and fig.layout.xaxis.title.text == "act"
    assert fig.layout.yaxis.type is None
    assert components.hist_from_bins([0, 1, 10], [1, 100], "t", "#000", log_y=True).layout.yaxis.type == "log"
    assert not components.hist_from_bins([0, 1], [1, 2], "bad bins", "#000").data  # edges/counts mismatch: no bars
    html = components.side_by_side("<table>neg</table>", "<table>pos</table>")
    assert html.count('class="fx-side"') == 1 and html.count("flex:1 1 0") == 2
    assert html.index("neg") < html.index("pos")


def test_prompt_inspect_threads_share_one_model(tiny_model_dir):
    """Sessions run on threads over one cached model: concurrent prompts must not see each other's hooks."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from backend.analysis.prompt_inspect import inspect_prompt
    from backend.model.loading import load_model

    class Ident(torch.nn.Module):
        d_in, d_sae = 64, 64

        def encode(self, x):
            return torch.relu(x)

    lm = load_model(str(tiny_model_dir), device="cpu")
    texts = ["the cat sat on the mat", "a quiet river ran past the old mill under a grey sky"] * 8
    alone = {t: inspect_prompt(lm, Ident(), "blocks.1.hook_resid_post", t).active for t in set(texts)}
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda t: (t, inspect_prompt(lm, Ident(), "blocks.1.hook_resid_post", t).active), texts))
    for t, active in got:  # the same firings; values equal up to float summation order
        ref = alone[t]
        assert active[["pos", "feature"]].equals(ref[["pos", "feature"]])
        assert np.allclose(active["activation"], ref["activation"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("page", ["app_pages/overview.py", "app_pages/features.py", "app_pages/feature.py", "app_pages/inspect.py",
                                  "app_pages/validate.py"])
def test_run_without_dictionary_is_explained(tmp_path, monkeypatch, page):
    import shutil

    from streamlit.testing.v1 import AppTest

    root = make_fake_store(tmp_path / "data")
    shutil.rmtree(root / FAKE_RUN / "dictionaries")
    monkeypatch.setenv("FEATURE_EXPLORER_DATA", str(root))
    at = AppTest.from_file(APP, default_timeout=60).switch_page(page).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert "no dictionary yet" in page_text(at)
    assert "python -m backend train" in "\n".join(c.value for c in at.code)


def test_unanalysed_dictionary_is_explained(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    root = make_fake_store(tmp_path / "data")
    (root / FAKE_RUN / "dictionaries" / FAKE_DICT / "features.parquet").unlink()
    monkeypatch.setenv("FEATURE_EXPLORER_DATA", str(root))
    for page in ("app_pages/overview.py", "app_pages/feature.py", "app_pages/validate.py"):
        at = AppTest.from_file(APP, default_timeout=60).switch_page(page).run()
        assert not at.exception, at.exception
        assert not at.error, [e.value for e in at.error]
        assert "not analysed" in page_text(at)


def test_deep_link_by_run_path(fake_store, tmp_path, monkeypatch):
    """`?run=` may name a run folder by path, even outside the data root."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FEATURE_EXPLORER_DATA", str(tmp_path))  # an empty root
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update({"run": str(fake_store / FAKE_RUN), "dict": FAKE_DICT, "feature": "3"})
    at = at.run()
    assert not at.exception, at.exception
    assert "Feature 3 " in page_text(at) and "numbers in math" in page_text(at)


# ------------------------------------------------------------------ labels: editor, history, restore, Validate


@pytest.fixture
def label_app(fake_store, tmp_path, monkeypatch):
    """(AppTest factory, run folder) over a private copy of the contract store, so saved labels stay in this test."""
    import shutil

    from streamlit.testing.v1 import AppTest

    root = tmp_path / "data"
    shutil.copytree(fake_store / FAKE_RUN, root / FAKE_RUN)
    monkeypatch.setenv("FEATURE_EXPLORER_DATA", str(root))

    def make(page: str, **params) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=120)
        at.query_params.update({"run": FAKE_RUN, "dict": FAKE_DICT, **{k: str(v) for k, v in params.items()}})
        return at.switch_page(page)

    return make, root / FAKE_RUN


def _button(at, label: str):
    return next(b for b in at.button if b.label == label)


def _label_line(at) -> str:
    return "\n".join(h.proto.body for h in at.get("html") if "fx-label" in h.proto.body)


def test_label_editor_save_history_restore(label_app):
    from backend.store import query as store
    from backend.store.label_store import LabelStore

    make, run = label_app
    f = 3  # labelled "numbers in math" in features.parquet
    at = make("app_pages/feature.py", feature=f).run()
    assert not at.exception, at.exception
    assert "numbers in math" in _label_line(at) and "from the analysis" in _label_line(at)
    # the editor is drawn only once opened (a feature page sends less); it stays open across saves
    assert not any(t.key == f"label_text_{f}" for t in at.text_input)
    at.session_state[f"label_editor_{f}"] = True
    at.run()
    # the name is asked once; saving without it is refused with a message
    at.text_input(key=f"label_text_{f}").input("digits")
    _button(at, "Save label").click().run()
    assert any("Enter your name first" in e.value for e in at.error)
    assert not LabelStore(run).exists()
    at.text_input(key="author_box").input("Ada").run()
    assert "Ada" in page_text(at) and not any(t.key == "author_box" for t in at.text_input)  # not asked again
    hostile = "digits <b>x</b> [link](javascript:alert(1))"
    at.text_input(key=f"label_text_{f}").input(hostile)
    at.text_area(key=f"label_notes_{f}").input("first try")
    _button(at, "Save label").click().run()
    assert not at.exception, at.exception
    assert any("Saved version 1" in s.value for s in at.success)
    line = _label_line(at)
    assert "digits &lt;b&gt;x&lt;/b&gt; [link](javascript:alert(1))" in line and "<b>x" not in line  # escaped text
    assert "v1 · Ada · human" in line
    at.text_input(key=f"label_text_{f}").input("digit characters")
    _button(at, "Save label").click().run()
    assert "digit characters" in _label_line(at) and "v2 · Ada" in _label_line(at)
    # history: newest first, one restore button per version (disabled on the current one)
    texts = [t.value for t in at.text]
    assert texts.index("v2") < texts.index("v1") and hostile + "\n(first try)" in texts
    assert at.button(key=f"restore_{f}_2").disabled and not at.button(key=f"restore_{f}_1").disabled
    at.button(key=f"restore_{f}_1").click().run()
    assert not at.exception, at.exception
    assert any("Restored version 1 as version 3" in s.value for s in at.success)
    assert "v3 · Ada" in _label_line(at) and "digits &lt;b&gt;" in _label_line(at)
    assert at.text_input(key=f"label_text_{f}").value == hostile  # the edit box holds the restored text
    h = LabelStore(run).history(FAKE_DICT, f)
    assert h["text"].tolist() == [hostile, "digit characters", hostile]
    assert h["notes"].tolist()[0] == "restored v1; first try" and set(h["author"]) == {"Ada"}
    # the feature list reads the new current label
    assert store.list_features(run, FAKE_DICT, label_query="digits <b>", limit=10)["feature"].tolist() == [f]
    # a fresh session (page reload) shows the saved label
    at2 = make("app_pages/feature.py", feature=f).run()
    assert "v3 · Ada" in _label_line(at2)


def test_validate_without_labels_is_explained(label_app):

    make, run = label_app
    path = run / "dictionaries" / FAKE_DICT / "features.parquet"
    t = pq.read_table(path)
    pq.write_table(t.set_column(t.schema.get_field_index("label"), "label", pa.array([""] * t.num_rows)), path)
    at = make("app_pages/validate.py")
    at.session_state["author"] = "Bea"
    at.run()
    assert not at.exception, at.exception
    assert "has a label yet" in page_text(at)


def test_validate_flow(label_app):
    from backend.store.label_store import LabelStore

    make, run = label_app
    at = make("app_pages/validate.py").run()
    assert not at.exception, at.exception
    assert "Enter your name to start" in page_text(at)
    at.text_input(key="val_author").input("Bea").run()
    assert not at.exception, at.exception
    dealt = int(next(m.value for m in at.markdown if m.value.startswith("#### Feature ")).split()[-1])
    assert dealt in (SCRIPT_FEATURE, 3)  # only labelled features are dealt
    html = "\n".join(h.proto.body for h in at.get("html") if "fx-plain" in h.proto.body)
    assert "fx-peak" not in html and "background:rgba" not in html and "title=" not in html  # nothing tells
    radios = [r for r in at.radio if (r.key or "").startswith(f"val_{dealt}_")]
    assert len(radios) >= 2
    # submitting with a context unmarked is refused
    for r in radios[:-1]:
        r.set_value("fits")
    _button(at, "Submit verdicts").click().run()
    assert any("Mark every context first (1 left)" in e.value for e in at.error)
    assert not LabelStore(run).exists() or LabelStore(run).verdicts().empty
    radios = [r for r in at.radio if (r.key or "").startswith(f"val_{dealt}_")]
    for r in radios:
        r.set_value("fits")  # everything fits: recall 1, precision = share of activating contexts
    at.text_input(key=f"val_prop_{dealt}").input("html and <b>tags</b>")
    _button(at, "Submit verdicts").click().run()
    assert not at.exception, at.exception
    v = LabelStore(run).verdicts(FAKE_DICT)
    assert len(v) == len(radios) and set(v["annotator"]) == {"Bea"} and v["fits"].all()
    assert v["feature"].unique().tolist() == [dealt] and v["label_version"].unique().tolist() == [0]
    share = float(v["activating"].mean())
    assert 0 < share < 1
    msg = next(s.value for s in at.success if f"Feature {dealt}: saved" in s.value)
    assert f"precision {share:.2f}" in msg and "recall 1.00" in msg
    # progress: one validated feature, its human precision/recall in the table, the proposal listed
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["validated"] == "1" and metrics["verdicts"] == str(len(radios))
    table = next(df.value for df in at.dataframe if "status" in df.value.columns)
    row = table.set_index("feature").loc[dealt]
    assert row["precision"] == pytest.approx(share) and row["recall"] == 1.0 and row["status"] == "validated"
    assert LabelStore(run).proposals(FAKE_DICT)["text"].tolist() == ["html and <b>tags</b>"]
    # the next feature dealt is another one (or none is left): never the one just judged
    nxt = [m.value for m in at.markdown if m.value.startswith("#### Feature ")]
    assert nxt != [f"#### Feature {dealt}"]
    # a second annotator on the same feature gives a kappa for the pair
    at2 = make("app_pages/validate.py").run()
    at2.text_input(key="val_author").input("Cy").run()
    dealt2 = int(next(m.value for m in at2.markdown if m.value.startswith("#### Feature ")).split()[-1])
    if dealt2 == dealt:  # Cy may get the other labelled feature first; skip it to reach Bea's
        pass
    else:
        _button(at2, "Skip this feature").click().run()
        assert int(next(m.value for m in at2.markdown if m.value.startswith("#### Feature ")).split()[-1]) == dealt
    radios = [r for r in at2.radio if (r.key or "").startswith(f"val_{dealt}_")]
    for r in radios:
        r.set_value("does not fit")
    _button(at2, "Submit verdicts").click().run()
    assert not at2.exception, at2.exception
    pairs = next(df.value for df in at2.dataframe if "Cohen's kappa" in df.value.columns)
    assert pairs.iloc[0]["shared items"] == len(radios) and pairs.iloc[0]["agreement"] == 0.0
    assert {m.label: m.value for m in at2.metric}["disputed"] == "1"


def test_plain_context_underlines_the_token_to_judge_and_escapes():
    from explorer.components import plain_context

    html = plain_context(["a", "<script>", "b"], number=3, marked=1)
    assert '<u style="font-weight:600">&lt;script&gt;</u>' in html and "<script>" not in html
    assert html.count("<u ") == 1 and "3." in html
    assert "<u " not in plain_context(["a", "b"])  # nothing marked: plain text
