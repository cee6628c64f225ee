"""backend.store.query on a tiny analysed run (the planted run of test_analyze), with labels written in by hand."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from backend.analysis.analyze import analyze
from backend.common.errors import UserError
from backend.store import query as store
from tests.fake_run import write_dictionary
from tests.test_analyze import (
    CTX,
    D_SAE,
    N_SEQS,
    PLANTED,
    StandIn,
    all_codes,
    make_lm,
    make_run,
)

LABELS = {0: "planted feature", 2: "it's a quote", 3: "100% sure", 4: "snake_case names", 5: "Planted too",
          6: "'; DROP TABLE features; --"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    run = make_run(root / "runs" / "tiny")
    d = StandIn()
    out = analyze(run, "sae", lm=make_lm(), device="cpu", batch_tokens=64, dictionary=d, progress=False)
    t = pq.read_table(out / "features.parquet")
    labels = [LABELS.get(i, "") for i in range(t.num_rows)]
    t = t.set_column(t.schema.get_field_index("label"), "label", pa.array(labels, pa.string()))
    pq.write_table(t, out / "features.parquet", row_group_size=16)
    write_dictionary(run, "sae", 64, D_SAE, kind=None, metrics={"l0": 3.5, "fvu": 0.25, "explained_variance": 0.75})
    write_dictionary(run, "raw", 64, 10, kind=None, architecture="topk")  # trained but not analysed
    idx, f = all_codes(run, d)
    return {"root": root, "run": str(run), "feats": t.to_pandas(), "idx": idx, "codes": f,
            "tokens": pq.read_table(run / "tokens.parquet").to_pandas()}


def test_list_runs_and_info(env):
    runs = store.list_runs(env["root"])
    assert list(runs.columns) == ["run", "path", "model", "hook", "corpus", "n_tokens", "n_dicts"]
    assert runs.run.tolist() == ["runs/tiny"]
    assert runs.n_tokens[0] == N_SEQS * CTX and runs.n_dicts[0] == 2
    assert store.run_info(env["run"])["ctx_len"] == CTX
    assert store.list_runs(env["root"] / "nothing_here").empty
    with pytest.raises(UserError):
        store.run_info(env["root"] / "missing")


def test_list_dictionaries_and_metrics(env):
    d = store.list_dictionaries(env["run"])
    assert list(d.columns) == ["name", "architecture", "d_sae", "l0", "explained_variance", "fvu", "mse",
                               "dead_fraction", "ce_loss_score", "delta_ce", "kl_div", "analysed"]
    d = d.set_index("name")
    assert bool(d.loc["sae", "analysed"]) and not bool(d.loc["raw", "analysed"])
    assert d.loc["sae", "l0"] == 3.5 and np.isnan(d.loc["sae", "mse"]) and d.loc["raw", "architecture"] == "topk"
    assert store.dictionary_metrics(env["run"], "sae")["fvu"] == 0.25
    assert store.dictionary_metrics(env["run"], "raw") == {}
    with pytest.raises(UserError, match="no dictionary"):
        store.dictionary_metrics(env["run"], "nope")
    with pytest.raises(UserError, match="bad dictionary name"):
        store.dictionary_metrics(env["run"], "../tiny")
    with pytest.raises(UserError, match="not analysed"):
        store.list_features(env["run"], "raw")


def test_list_features_columns_and_default_page(env):
    page = store.list_features(env["run"], "sae")
    assert list(page.columns) == ["feature", "label", "density", "max_act", "mean_act", "top_logits"]
    assert page.feature.tolist() == list(range(min(50, D_SAE)))
    feats = env["feats"]
    assert page.top_logits[0] == ", ".join(feats.top_logit_tokens[0][:3])
    assert page.label[2] == "it's a quote"


def test_density_filters(env):
    feats = env["feats"]
    lo, hi = float(feats.density.quantile(0.3)), float(feats.density.quantile(0.8))
    got = store.list_features(env["run"], "sae", density_min=lo, density_max=hi, limit=1000)
    want = feats[(feats.density >= lo) & (feats.density <= hi)].feature.tolist()
    assert got.feature.tolist() == want and len(want) > 0
    assert store.count_features(env["run"], "sae", density_min=lo, density_max=hi) == len(want)


def test_alive_and_labelled_filters(env):
    feats = env["feats"]
    alive = store.list_features(env["run"], "sae", alive=True, limit=1000).feature.tolist()
    assert alive == feats[feats.n_fires > 0].feature.tolist() and 1 not in alive
    assert store.list_features(env["run"], "sae", alive=False, limit=1000).feature.tolist() == \
        feats[feats.n_fires == 0].feature.tolist()
    assert store.list_features(env["run"], "sae", labelled=True, limit=1000).feature.tolist() == sorted(LABELS)
    assert store.count_features(env["run"], "sae", labelled=False) == D_SAE - len(LABELS)


@pytest.mark.parametrize("query,expected", [
    ("planted", [0, 5]),  # case-insensitive substring
    ("it's", [2]),  # a quote character is text
    ("100%", [3]),  # LIKE wildcards are literal
    ("_", [4]),
    ("%", [3]),
    ("'; DROP TABLE features; --", [6]),
    ("x' OR '1'='1", []),
    ("nothing like this", []),
])
def test_label_text_filter(env, query, expected):
    got = store.list_features(env["run"], "sae", label_query=query, limit=1000)
    assert got.feature.tolist() == expected
    assert store.count_features(env["run"], "sae", label_query=query) == len(expected)
    assert pq.read_table(env["run"] + "/dictionaries/sae/features.parquet").num_rows == D_SAE  # nothing dropped


@pytest.mark.parametrize("col", ["feature", "density", "n_fires", "max_act", "mean_act", "label"])
@pytest.mark.parametrize("descending", [False, True])
def test_sort_matches_pandas(env, col, descending):
    got = store.list_features(env["run"], "sae", sort=col, descending=descending, limit=1000).feature.tolist()
    feats = env["feats"]
    want = feats.sort_values([col, "feature"], ascending=[not descending, True], kind="stable").feature.tolist()
    assert got == want


def test_bad_sort_column_rejected(env):
    for bad in ("token_str", "density; DROP TABLE x", "feature DESC", ""):
        with pytest.raises(ValueError):
            store.list_features(env["run"], "sae", sort=bad)
    with pytest.raises(ValueError):
        store.list_features(env["run"], "sae", limit=-1)


def test_pagination_covers_everything_once(env):
    kw = dict(sort="max_act", descending=True, alive=True)
    total = store.count_features(env["run"], "sae", alive=True)
    pages = [store.list_features(env["run"], "sae", limit=7, offset=o, **kw) for o in range(0, total + 7, 7)]
    ids = pd.concat(pages).feature.tolist()
    assert len(ids) == total and len(set(ids)) == total
    assert ids == store.list_features(env["run"], "sae", limit=1000, **kw).feature.tolist()
    assert store.list_features(env["run"], "sae", limit=7, offset=total + 100, **kw).empty


def test_feature_densities_and_random_feature(env):
    dens = store.feature_densities(env["run"], "sae")
    assert dens.shape == (D_SAE,) and np.allclose(dens, env["feats"].density)
    a = store.random_feature(env["run"], "sae", seed=3)
    assert a == store.random_feature(env["run"], "sae", seed=3)
    picks = {store.random_feature(env["run"], "sae", seed=s) for s in range(60)}
    assert 1 not in picks and len(picks) > 10
    assert all(0 <= p < D_SAE for p in picks)


def check_context(env, c: dict, feature: int, centre: int, before: int = 24, after: int = 8):
    toks = env["tokens"].set_index("token_index")
    ti = c["token_indices"]
    seq = centre // CTX
    assert ti == list(range(max(centre - before, seq * CTX), min(centre + after, seq * CTX + CTX - 1) + 1))
    assert all(t // CTX == seq for t in ti)  # never crosses a sequence
    assert c["tokens"] == toks.loc[ti, "token_str"].tolist()
    assert c["source"] == toks.loc[centre, "source"]
    assert ti[c["peak"]] == centre
    idx, f = env["idx"], env["codes"]
    ref = {int(t): float(v) for t, v in zip(idx, f[:, feature]) if v > 0}
    assert np.allclose(c["acts"], [ref.get(t, 0.0) for t in ti], rtol=1e-6)
    assert c["value"] == pytest.approx(ref.get(centre, 0.0), rel=1e-6)


def test_feature_dashboard_planted(env):
    dash = store.feature_dashboard(env["run"], "sae", 0)
    feats = env["feats"]
    for k in ("feature", "density", "max_act", "hist_counts", "top_logit_tokens", "neighbours", "label"):
        assert k in dash
    assert dash["feature"] == 0 and dash["label"] == "planted feature"
    assert dash["n_fires"] == 31 and dash["max_act"] == pytest.approx(10.0)
    assert dash["hist_counts"] == feats.hist_counts[0].tolist()
    assert isinstance(dash["top_logit_tokens"], list) and len(dash["top_logit_tokens"]) == 10
    assert set(dash["contexts"]) == {"top", "q1", "q2", "q3", "q4", "q5"}
    top = dash["contexts"]["top"]
    assert [c["token_index"] for c in top][:2] == [5 * CTX + 12, 5 * CTX + 13]
    assert [c["value"] for c in top] == sorted((c["value"] for c in top), reverse=True)
    assert [c["rank"] for c in top] == list(range(20))
    for c in top:
        check_context(env, c, 0, c["token_index"])
    # sequence 5 carries three planted peaks: the window of the first shows the others' activations
    c = top[0]
    assert c["acts"][c["token_indices"].index(5 * CTX + 14)] == pytest.approx(8.0)
    assert dash["contexts"]["q3"] == [] and len(dash["contexts"]["q5"]) == 2


def test_feature_dashboard_every_feature(env):
    for j in range(D_SAE):
        dash = store.feature_dashboard(env["run"], "sae", j)
        for g, ctxs in dash["contexts"].items():
            for c in ctxs:
                check_context(env, c, j, c["token_index"])
    assert all(v == [] for v in store.feature_dashboard(env["run"], "sae", 1)["contexts"].values())


def test_dashboard_without_token_cache_is_identical(env, monkeypatch):
    """Corpora too large for the token-id cache take the DuckDB path: same answers."""
    cached = [store.feature_dashboard(env["run"], "sae", j) for j in (0, 2, 7)]
    one = store.context(env["run"], "sae", 0, 5 * CTX + 12)
    monkeypatch.setattr(store, "TOKEN_CACHE_MAX", 0)
    store._token_cache.clear()
    try:
        assert [store.feature_dashboard(env["run"], "sae", j) for j in (0, 2, 7)] == cached
        assert store.context(env["run"], "sae", 0, 5 * CTX + 12) == one
    finally:
        store._token_cache.clear()


@pytest.mark.parametrize("centre,before,after", [
    (5 * CTX + 12, 24, 8),  # clipped at the sequence start
    (5 * CTX + 1, 3, 3),
    (6 * CTX - 1, 4, 8),  # last token of a sequence: nothing from the next
    (6 * CTX, 24, 8),  # position 0 of a sequence: nothing from the previous one
    (3 * CTX + 6, 2, 2),
])
def test_context_windows(env, centre, before, after):
    c = store.context(env["run"], "sae", 0, centre, before=before, after=after)
    check_context(env, c, 0, centre, before, after)
    w = store.tokens_window(env["run"], centre, before, after)
    assert list(w.columns) == ["token_index", "seq", "pos", "token_str", "source"]
    assert w.token_index.tolist() == c["token_indices"] and w.token_str.tolist() == c["tokens"]
    assert (w.seq == centre // CTX).all() and w.pos.tolist() == [t % CTX for t in c["token_indices"]]


def test_context_of_token_where_feature_is_silent(env):
    c = store.context(env["run"], "sae", 0, 9 * CTX + 3)
    assert c["value"] == 0.0
    check_context(env, c, 0, 9 * CTX + 3)


def test_injection_looking_tokens_are_text(env):
    w = store.tokens_window(env["run"], 3 * CTX + 6, 2, 2)
    assert w.token_str.tolist() == [" it's", "<b>", " & ", "'; DROP TABLE t; --", " it's"]


def test_missing_things_are_user_errors(env):
    run = env["run"]
    for bad in (D_SAE, -1, 10**9, "1; DROP TABLE x", 1.5):
        with pytest.raises(UserError, match="feature"):
            store.feature_dashboard(run, "sae", bad)
    with pytest.raises(UserError):
        store.context(run, "sae", 0, N_SEQS * CTX)
    with pytest.raises(UserError):
        store.tokens_window(run, -1, 2, 2)
    with pytest.raises(UserError, match="no dictionary"):
        store.feature_dashboard(run, "nope", 0)
    with pytest.raises(UserError):
        store.list_features(env["root"] / "missing_run", "sae")
    with pytest.raises(UserError, match="not analysed"):
        store.feature_dashboard(run, "raw", 0)
    for fn in (store.count_features, store.feature_densities, store.random_feature):
        with pytest.raises(UserError):
            fn(run, "nope")


def test_reanalysis_is_seen(env, tmp_path):
    """Rewritten files (new size/mtime) are read afresh, not from the per-process caches."""
    run = make_run(tmp_path / "run")
    out = analyze(run, "d", lm=make_lm(), device="cpu", dictionary=StandIn(seed=0), progress=False)
    a = store.feature_dashboard(str(run), "d", 0)
    time.sleep(0.01)
    planted = {t: v * 2 for t, v in PLANTED.items()}
    shutil.rmtree(run)
    run = make_run(tmp_path / "run", planted=planted, seed=1)
    analyze(run, "d", lm=make_lm(), device="cpu", dictionary=StandIn(seed=0), progress=False)
    b = store.feature_dashboard(str(run), "d", 0)
    assert b["max_act"] == pytest.approx(2 * a["max_act"])
    assert b["contexts"]["top"][0]["tokens"] == pq.read_table(run / "tokens.parquet").to_pandas().set_index(
        "token_index").loc[b["contexts"]["top"][0]["token_indices"], "token_str"].tolist()
    assert out.is_dir()


def test_threads_get_their_own_connections(env):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as ex:
        res = list(ex.map(lambda j: store.feature_dashboard(env["run"], "sae", j % D_SAE)["feature"], range(40)))
    assert res == [j % D_SAE for j in range(40)]


def test_public_building_blocks(env):
    """What backend.labels reads stores through: the same answers as context(), the same errors."""
    run = env["run"]
    assert store.check_feature(run, "sae", 7) == 7 and store.check_feature(run, "sae", np.int64(3)) == 3
    for bad in (D_SAE, -1, 1.5, "x"):
        with pytest.raises(UserError, match="feature"):
            store.check_feature(run, "sae", bad)
    with pytest.raises(UserError, match="not analysed"):
        store.store_file(run, "raw", store.FEATURES)
    acts = store.store_file(run, "sae", store.FEATURE_ACTS)
    assert store.file_key(acts)[1:] == (os.stat(acts).st_size, os.stat(acts).st_mtime_ns)
    got = store.query_numpy("SELECT token_index, value FROM read_parquet(?) WHERE feature = ? ORDER BY token_index",
                            [acts, 0])
    assert got["token_index"].tolist() == sorted(PLANTED)  # the planted firings; position 0 never counts
    assert np.allclose(got["value"], [PLANTED[t] for t in sorted(PLANTED)])
    n_rows = store.query_df("SELECT count(*) AS n FROM read_parquet(?)", [acts])["n"].iloc[0]
    assert n_rows == int((env["codes"] > 0).sum())  # one row per firing of the dense reference codes
    centres = np.array([5 * CTX + 12, 6 * CTX - 1, 3 * CTX + 6])
    lo, hi = store.window_bounds(centres, CTX, 24, 8)
    assert lo.tolist() == [5 * CTX, 5 * CTX, 3 * CTX] and hi.tolist() == [6 * CTX - 1, 6 * CTX - 1, 3 * CTX + 14]
    wins = store.token_windows(run, store.run_info(run), centres, 24, 8)
    for c, w in zip(centres.tolist(), wins):
        one = store.context(run, "sae", 0, c)
        assert w["token_indices"] == one["token_indices"] and w["tokens"] == one["tokens"]
        assert store.context_from_window(w, one["acts"], c, one["value"]) == one
