"""backend.analysis.analyze on a tiny synthetic run with a planted feature, a stand-in dictionary and a tiny random Llama.

Feature 0 of the stand-in reads activation dimension 0, which is zero everywhere except on planted
tokens, so its density, max, mean, histogram, top contexts and quantile samples are known exactly.
The other features are random ReLU units; feature 1 is dead.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from backend.analysis.analyze import AnalyzeConfig, analyze
from backend.common.errors import UserError
from tests.fake_run import write_run

N_SEQS, CTX, D_IN, D_SAE, VOCAB = 40, 16, 64, 48, 256
# planted firings of feature 0: one per sequence 0..27 (value 1.03 + 0.1 s), plus three high ones in
# sequence 5 (so the per-sequence cap of the top list is visible), plus one at position 0 (ignored)
PLANTED = {s * CTX + (s % (CTX - 1)) + 1: 1.03 + 0.1 * s for s in range(28)}
PLANTED.update({5 * CTX + 12: 10.0, 5 * CTX + 13: 9.0, 5 * CTX + 14: 8.0})
POS0 = 7 * CTX  # planted at position 0 of sequence 7: must not count


def token_text(i: int) -> str:
    return {1: "<s>", 2: " it's", 3: "<b>", 4: " & ", 5: "'; DROP TABLE t; --"}.get(i, f" w{i}")


def make_run(root: Path, n_seqs: int = N_SEQS, ctx_len: int = CTX, d_in: int = D_IN, seed: int = 0,
             planted: dict[int, float] | None = None, shard_seqs: int = 16) -> Path:
    """A run folder (run.json, tokens.parquet, float32 activation shards): random activations with dimension 0
    zero except at the planted tokens (and POS0), random token ids with a few hostile-looking strings."""
    rng = np.random.default_rng(seed)
    n = n_seqs * ctx_len
    x = rng.normal(size=(n, d_in)).astype(np.float32)
    x[:, 0] = 0.0
    for t, v in (PLANTED if planted is None else planted).items():
        if t < n:
            x[t, 0] = v
    if POS0 < n:
        x[POS0, 0] = 50.0
    ids = rng.integers(6, VOCAB, n)
    ids[::ctx_len] = 1  # BOS
    if n_seqs > 3 and ctx_len >= 10:
        ids[3 * ctx_len + 4: 3 * ctx_len + 9] = [2, 3, 4, 5, 2]  # quotes, markup, an injection-looking token
    sources = ["prose" if s % 3 else "code" for s in range(n_seqs)]
    return write_run(root, ids.reshape(n_seqs, ctx_len), [token_text(i) for i in range(VOCAB)], sources,
                     acts=x.reshape(n_seqs, ctx_len, d_in), shard_seqs=shard_seqs, dtype="float32",
                     heldout_from=n_seqs - 4, model="tiny-test", hook="blocks.1.hook_resid_post", bos_token_id=1,
                     seed=seed, tokens_row_group=100)  # several row groups: queries must not assume one


class StandIn(torch.nn.Module):
    """The Dictionary interface: f = relu(x @ W_enc + b_enc), x_hat = f @ W_dec; W_dec rows unit norm.
    Feature 0 = relu(x[:, 0]) (the planted one), feature 1 is dead, the rest are random units."""

    def __init__(self, d_in: int = D_IN, d_sae: int = D_SAE, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        W_enc = torch.randn(d_in, d_sae, generator=g) / d_in ** 0.5
        W_enc[0, :] = 0
        W_enc[:, 0] = 0
        W_enc[0, 0] = 1.0
        W_enc[:, 1] = 0
        b_enc = torch.full((d_sae,), -0.8)
        b_enc[0] = 0.0
        b_enc[1] = -1.0
        self.W_enc = torch.nn.Parameter(W_enc)
        self.b_enc = torch.nn.Parameter(b_enc)
        self.W_dec = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=g), dim=1))
        self.d_in, self.d_sae, self.cfg = d_in, d_sae, {"d_in": d_in, "d_sae": d_sae, "architecture": "standard"}

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # [B, d_in] -> [B, d_sae]
        return torch.relu(x @ self.W_enc + self.b_enc)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def make_lm(d_model: int = D_IN, seed: int = 0):
    """A tiny random Llama (final norm perturbed, so folding it matters) and a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from backend.model.loading import LoadedModel

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=d_model, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.model.norm.weight.copy_(torch.rand(d_model) + 0.5)
    vocab = {f"tok{i}": i for i in range(VOCAB)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab=vocab, unk_token="tok0")),
                                  unk_token="tok0")
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return LoadedModel(model=model, tokenizer=tok, name="tiny", source="memory", device=torch.device("cpu"))


def all_codes(run: Path, d: StandIn) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes of every non-position-0 token (reference computation): (token_index [N], f [N, d_sae])."""
    x = np.concatenate([np.load(p) for p in sorted((run / "activations").glob("*.npy"))])  # [n_seqs, T, d_in]
    n_seqs, T, _ = x.shape
    idx = (np.arange(n_seqs)[:, None] * T + np.arange(1, T)[None, :]).reshape(-1)
    with torch.no_grad():
        f = d.encode(torch.from_numpy(x[:, 1:].reshape(-1, x.shape[2]))).numpy()
    return idx, f


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("an") / "run")
    d = StandIn()
    lm = make_lm()
    out = analyze(run, "standin", lm=lm, device="cpu", batch_tokens=50, dictionary=d, progress=False)
    return run, out, d, lm


def test_writes_the_four_files(analysed):
    run, out, d, lm = analysed
    assert out == run / "dictionaries" / "standin"
    for name in ("features.parquet", "feature_acts.parquet", "contexts.parquet", "analysis.json"):
        assert (out / name).is_file(), name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    info = json.loads((out / "analysis.json").read_text())
    assert info["tokens"]["n_tokens"] == N_SEQS * (CTX - 1)
    assert info["windows"] == {"before": 24, "after": 8}
    assert set(info["timings_s"]) >= {"encode", "feature_stats", "logits", "neighbours", "total"}


def test_features_schema(analysed):
    _, out, _, _ = analysed
    t = pq.read_table(out / "features.parquet")
    s = t.schema
    assert s.field("feature").type == pa.int32() and s.field("density").type == pa.float64()
    assert s.field("n_fires").type == pa.int64() and s.field("max_act").type == pa.float32()
    assert s.field("hist_edges").type == pa.list_(pa.float64()) and s.field("hist_counts").type == pa.list_(pa.int64())
    assert s.field("top_logit_ids").type == pa.list_(pa.int32()) and s.field("top_logit_tokens").type == pa.list_(pa.string())
    assert s.field("bottom_logit_values").type == pa.list_(pa.float32())
    assert s.field("neighbours").type == pa.list_(pa.int32()) and s.field("neighbour_cos").type == pa.list_(pa.float32())
    for name in ("logit_hist_edges", "logit_hist_counts", "label", "label_source", "mean_act"):
        assert name in s.names
    assert t.num_rows == D_SAE and t.column("feature").to_pylist() == list(range(D_SAE))
    assert set(t.column("label").to_pylist()) == {""} and set(t.column("label_source").to_pylist()) == {""}
    assert all(len(e) == 51 for e in t.column("hist_edges").to_pylist())
    assert all(len(c) == 50 for c in t.column("hist_counts").to_pylist())
    assert all(len(c) == 10 for c in t.column("top_logit_ids").to_pylist())
    assert all(len(c) == 5 for c in t.column("neighbours").to_pylist())


def feature_row(out: Path, f: int) -> dict:
    return pq.read_table(out / "features.parquet").slice(f, 1).to_pylist()[0]


def test_planted_feature_statistics(analysed):
    _, out, _, _ = analysed
    r = feature_row(out, 0)
    vals = np.array(list(PLANTED.values()), dtype=np.float32)
    n_tokens = N_SEQS * (CTX - 1)
    assert r["n_fires"] == len(PLANTED) == 31  # the position-0 plant (value 50) is not counted
    assert r["density"] == pytest.approx(31 / n_tokens)
    assert r["max_act"] == pytest.approx(10.0)
    assert r["mean_act"] == pytest.approx(vals.astype(np.float64).mean(), rel=1e-6)
    edges = np.linspace(0, 10.0, 51)
    assert np.allclose(r["hist_edges"], edges)
    assert r["hist_counts"] == np.histogram(vals, bins=edges)[0].tolist()


def test_dead_feature(analysed):
    _, out, _, _ = analysed
    r = feature_row(out, 1)
    assert r["n_fires"] == 0 and r["density"] == 0 and r["max_act"] == 0 and r["mean_act"] == 0
    assert sum(r["hist_counts"]) == 0
    ctx = pq.read_table(out / "contexts.parquet").to_pandas()
    assert not (ctx.feature == 1).any()


def test_all_features_match_dense_reference(analysed):
    run, out, d, _ = analysed
    idx, f = all_codes(run, d)
    t = pq.read_table(out / "features.parquet").to_pandas()
    fires = f > 0
    assert np.array_equal(t.n_fires.to_numpy(), fires.sum(0))
    assert np.allclose(t.density.to_numpy(), fires.mean(0))
    assert np.allclose(t.max_act.to_numpy(), f.max(0), rtol=1e-6)
    mean = np.where(fires.any(0), (f * fires).sum(0) / np.maximum(fires.sum(0), 1), 0)
    assert np.allclose(t.mean_act.to_numpy(), mean, rtol=1e-5)
    for j in range(D_SAE):
        assert sum(t.hist_counts[j]) == fires[:, j].sum()


def test_feature_acts_sorted_and_complete(analysed):
    run, out, d, _ = analysed
    acts = pq.read_table(out / "feature_acts.parquet")
    assert acts.schema.field("feature").type == pa.int32()
    assert acts.schema.field("token_index").type == pa.int64() and acts.schema.field("value").type == pa.float32()
    a = acts.to_pandas()
    key = a.feature.to_numpy().astype(np.int64) * 10**9 + a.token_index.to_numpy()
    assert np.all(np.diff(key) > 0)  # sorted by (feature, token_index), no duplicates
    idx, f = all_codes(run, d)
    tok, feat = np.nonzero(f > 0)
    ref = np.sort(feat.astype(np.int64) * 10**9 + idx[tok])
    assert np.array_equal(key, ref)
    f0 = a[a.feature == 0]
    assert f0.token_index.tolist() == sorted(PLANTED)
    assert np.allclose(f0.value, [PLANTED[t] for t in sorted(PLANTED)])
    assert (a.token_index % CTX != 0).all()


def test_top_contexts_are_the_highest_planted_tokens(analysed):
    _, out, _, _ = analysed
    ctx = pq.read_table(out / "contexts.parquet").to_pandas()
    top = ctx[(ctx.feature == 0) & (ctx.group == "top")].sort_values("rank")
    assert top["rank"].tolist() == list(range(20))
    # sequence 5 holds 10, 9, 8 and 1.53: at most two per sequence, so 8 gives way to the next sequences
    singles = sorted((t for t in PLANTED if t // CTX != 5), key=lambda t: -PLANTED[t])
    expected = [5 * CTX + 12, 5 * CTX + 13] + singles[:18]
    assert top.token_index.tolist() == expected
    assert np.allclose(top.value, [PLANTED[t] for t in expected])
    assert np.all(np.diff(top.value.to_numpy()) < 0)


def test_top_contexts_fill_up_past_the_sequence_cap(tmp_path):
    planted = {3 * CTX + p: float(p) for p in range(1, 9)}  # eight firings, all in sequence 3
    run = make_run(tmp_path / "run", planted=planted)
    out = analyze(run, "s", lm=make_lm(), device="cpu", dictionary=StandIn(), progress=False)
    ctx = pq.read_table(out / "contexts.parquet").to_pandas()
    top = ctx[(ctx.feature == 0) & (ctx.group == "top")].sort_values("rank")
    assert top.token_index.tolist() == sorted(planted, key=lambda t: -planted[t])


def test_quantile_groups_lie_in_their_intervals(analysed):
    run, out, d, _ = analysed
    ctx = pq.read_table(out / "contexts.parquet").to_pandas()
    feats = pq.read_table(out / "features.parquet").to_pandas()
    idx, f = all_codes(run, d)
    for j in range(D_SAE):
        mx = float(feats.max_act[j])
        if mx == 0:
            continue
        col = f[:, j]
        for k in range(1, 6):
            lo, hi = (k - 1) * mx / 5, k * mx / 5
            g = ctx[(ctx.feature == j) & (ctx.group == f"q{k}")]
            assert ((g.value > lo * (1 - 1e-6)) & (g.value <= hi * (1 + 1e-6))).all(), (j, k)
            n_in = int(((col > lo) & (col <= hi)).sum())
            assert len(g) == min(5, n_in) or abs(len(g) - min(5, n_in)) <= 1  # boundary rounding
            assert g.token_index.is_unique
            assert g["rank"].tolist() == list(range(len(g)))
            assert np.allclose(g.value, col[np.searchsorted(idx, g.token_index)])
    f0 = ctx[ctx.feature == 0]
    assert f0[f0.group == "q5"].token_index.tolist() == [5 * CTX + 12, 5 * CTX + 13]  # 10, 9 in (8, 10]
    assert f0[f0.group == "q4"].token_index.tolist() == [5 * CTX + 14]  # 8 in (6, 8]
    assert (f0.group != "q3").all()
    assert len(f0[f0.group == "q1"]) == 5 and len(f0[f0.group == "q2"]) == 5


def test_contexts_sorted_by_feature(analysed):
    _, out, _, _ = analysed
    c = pq.read_table(out / "contexts.parquet")
    assert c.schema.field("rank").type == pa.int16() and c.schema.field("group").type == pa.string()
    fe = c.column("feature").to_numpy()
    assert np.all(np.diff(fe) >= 0)


def test_logit_effects_match_hand_computation(analysed):
    _, out, d, lm = analysed
    W_U = lm.model.model.norm.weight.detach()[:, None] * lm.model.lm_head.weight.detach().T  # [d_in, vocab]
    L = (d.W_dec.detach() @ W_U).numpy()  # [d_sae, vocab]
    t = pq.read_table(out / "features.parquet").to_pandas()
    for j in range(D_SAE):
        order = np.argsort(-L[j])
        assert t.top_logit_ids[j].tolist() == order[:10].tolist()
        assert np.allclose(t.top_logit_values[j], L[j, order[:10]], atol=1e-5)
        low = np.argsort(L[j])
        assert t.bottom_logit_ids[j].tolist() == low[:10].tolist()
        assert np.allclose(t.bottom_logit_values[j], L[j, low[:10]], atol=1e-5)
        assert list(t.top_logit_tokens[j]) == [lm.tokenizer.decode([i]) for i in order[:10]]
        assert sum(t.logit_hist_counts[j]) == VOCAB
        assert t.logit_hist_edges[j][0] == pytest.approx(L[j].min(), abs=1e-5)
        assert t.logit_hist_edges[j][-1] == pytest.approx(L[j].max(), abs=1e-5)
        assert t.logit_hist_counts[j].tolist() == np.histogram(L[j], bins=50)[0].tolist() or \
            np.abs(t.logit_hist_counts[j] - np.histogram(L[j], bins=50)[0]).sum() <= 2  # float32 edge rounding


def test_neighbours_match_brute_force_cosine(analysed):
    _, out, d, _ = analysed
    W = torch.nn.functional.normalize(d.W_dec.detach(), dim=1).numpy()
    C = W @ W.T
    np.fill_diagonal(C, -np.inf)
    t = pq.read_table(out / "features.parquet").to_pandas()
    for j in range(D_SAE):
        order = np.argsort(-C[j])[:5]
        assert t.neighbours[j].tolist() == order.tolist()
        assert np.allclose(t.neighbour_cos[j], C[j, order], atol=1e-5)


def test_spilling_gives_identical_files(analysed, tmp_path):
    run, out, d, lm = analysed
    cfg = AnalyzeConfig(spill_rows=100, acts_row_group=64)
    out2 = analyze(run, "spilled", lm=lm, device="cpu", batch_tokens=40, dictionary=d, cfg=cfg, progress=False)
    assert json.loads((out2 / "analysis.json").read_text())["spilled"] is True
    for name in ("features.parquet", "feature_acts.parquet", "contexts.parquet"):
        assert pq.read_table(out / name).equals(pq.read_table(out2 / name)), name
    assert not list(out2.glob(".analyze_spill_*"))
    # small row groups: each holds a contiguous, non-decreasing feature range
    meta = pq.ParquetFile(out2 / "feature_acts.parquet").metadata
    assert meta.num_row_groups > 1
    bounds = [(meta.row_group(i).column(0).statistics.min, meta.row_group(i).column(0).statistics.max)
              for i in range(meta.num_row_groups)]
    assert all(a[1] <= b[0] for a, b in zip(bounds, bounds[1:]))


def test_reanalysis_replaces_files(analysed):
    run, out, d, lm = analysed
    before = pq.read_table(out / "features.parquet")
    analyze(run, "standin", lm=lm, device="cpu", dictionary=d, progress=False)
    assert pq.read_table(out / "features.parquet").equals(before)


def test_missing_dictionary_is_a_user_error(tmp_path):
    run = make_run(tmp_path / "run", n_seqs=4)
    with pytest.raises(UserError, match="no dictionary"):
        analyze(run, "nope", lm=make_lm(), device="cpu", progress=False)
    with pytest.raises(UserError):
        analyze(tmp_path / "missing", "nope", device="cpu", progress=False)


@pytest.mark.slow
def test_speed_demo_scale(tmp_path):
    """200k tokens x d_sae 4608 over d_in 576 finishes well under two minutes on 2 CPU cores."""
    n_seqs, T, d_in, d_sae = 1563, 128, 576, 4608
    run = make_run(tmp_path / "run", n_seqs=n_seqs, ctx_len=T, d_in=d_in, planted={}, shard_seqs=256)
    g = torch.Generator().manual_seed(0)

    class Big(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.W_enc = torch.randn(d_in, d_sae, generator=g) / d_in ** 0.5
            self.b_enc = torch.full((d_sae,), -2.0)  # about L0 ~ 100 on unit-normal inputs
            self.W_dec = torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=g), dim=1)

        def encode(self, x):
            return torch.relu(x @ self.W_enc + self.b_enc)

    t0 = time.perf_counter()
    out = analyze(run, "big", lm=make_lm(d_model=d_in), device="cpu", dictionary=Big(), progress=False)
    elapsed = time.perf_counter() - t0
    info = json.loads((out / "analysis.json").read_text())
    print(f"demo-scale analyze: {elapsed:.1f}s, {info['feature_acts_rows']:,} rows, timings {info['timings_s']}")
    assert elapsed < 120


def reference_top(tok: np.ndarray, val: np.ndarray, ctx_len: int, n_top: int, max_per_seq: int) -> list[int]:
    """Brute force: by value, at most max_per_seq per sequence first, then the rest; listed by value."""
    order = sorted(range(len(val)), key=lambda i: (-val[i], i))
    seen: dict[int, int] = {}
    first, rest = [], []
    for i in order:
        s = int(tok[i]) // ctx_len
        (first if seen.get(s, 0) < max_per_seq else rest).append(i)
        seen[s] = seen.get(s, 0) + 1
    picks = (first[:n_top] + rest[:max(0, n_top - len(first))])
    return [int(tok[i]) for i in sorted(picks, key=lambda i: (-val[i], i))]


@pytest.mark.parametrize("n_top", [3, 20])
def test_top_context_pruning_matches_brute_force(n_top):
    """block_stats prunes to each feature's top rows; bursty dense features force the full fallback."""
    from backend.analysis.analyze import block_stats

    rng = np.random.default_rng(1)
    T, n_seqs, nb = 64, 50, 40
    feats, toks, vals = [], [], []
    for j in range(nb):
        kind = j % 4
        if kind == 0:  # rare
            t = rng.choice(n_seqs * T, rng.integers(0, 30), replace=False)
        elif kind == 1:  # dense everywhere
            t = rng.choice(n_seqs * T, rng.integers(500, 2000), replace=False)
        elif kind == 2:  # bursty: a few sequences, all high, plus a low tail elsewhere
            hot = rng.choice(n_seqs, 2, replace=False)
            t = np.concatenate([(hot[:, None] * T + np.arange(1, T)[None, :]).ravel(),
                                rng.choice(n_seqs * T, 300, replace=False)])
        else:  # one sequence only
            t = 7 * T + rng.choice(np.arange(1, T), rng.integers(1, T - 1), replace=False)
        t = np.unique(t[t % T != 0])
        v = rng.random(len(t)).astype(np.float32) + 0.01
        if kind == 2:
            v[np.isin(t // T, hot)] += 5.0
        feats.append(np.full(len(t), j, np.int32))
        toks.append(t.astype(np.int64))
        vals.append(v)
    feat, tok, val = np.concatenate(feats), np.concatenate(toks), np.concatenate(vals)
    cfg = AnalyzeConfig(n_top=n_top)
    _, ctx = block_stats(0, nb, feat, tok, val, T, cfg, np.random.default_rng(0))
    for j in range(nb):
        got = ctx["token_index"][(ctx["feature"] == j) & (ctx["group"] == 0)].tolist()
        assert got == reference_top(toks[j], vals[j], T, n_top, cfg.max_per_seq), j


def relu_sae_like(standin: StandIn):
    """The stand-in's weights in the real ReLU SAE class (b_dec = 0 makes the two encoders equal)."""
    from backend.dictionaries import ReluL1SAE

    d = ReluL1SAE({"d_in": standin.d_in, "d_sae": standin.d_sae})
    with torch.no_grad():
        d.W_enc.copy_(standin.W_enc)
        d.b_enc.copy_(standin.b_enc)
        d.W_dec.copy_(standin.W_dec)
        d.b_dec.zero_()
    return d


def test_dictionary_saved_and_loaded_through_the_real_folder_format(analysed):
    """analyze without `dictionary=`: load_dictionary(dictionaries/<name>) as the CLI does; same results."""
    from backend.dictionaries import save_dictionary

    run, out, d, lm = analysed
    save_dictionary(relu_sae_like(d), run / "dictionaries" / "relu")
    out2 = analyze(run, "relu", lm=lm, device="cpu", progress=False)
    assert (out2 / "cfg.json").is_file() and (out2 / "features.parquet").is_file()
    a = pq.read_table(out / "features.parquet").to_pandas()
    b = pq.read_table(out2 / "features.parquet").to_pandas()
    assert a.n_fires.tolist() == b.n_fires.tolist()
    assert np.allclose(a.max_act, b.max_act, rtol=1e-5) and np.allclose(a.mean_act, b.mean_act, rtol=1e-5)
    assert [list(x) for x in a.neighbours] == [list(x) for x in b.neighbours]
    assert b.n_fires[0] == 31


def test_helper_run_float16_shards(tmp_path):
    """A run from tests/fake_run.py (float16 shards, BOS outliers) with a real ReLU SAE."""
    from backend.dictionaries import ReluL1SAE, save_dictionary
    from tests.fake_run import make_synthetic_run

    run = make_synthetic_run(tmp_path, n_seqs=24, ctx_len=16, d_in=D_IN, seed=2)
    d = ReluL1SAE({"d_in": D_IN, "d_sae": 32})
    d.init_weights_(generator=torch.Generator().manual_seed(0))
    save_dictionary(d, run / "dictionaries" / "relu")
    out = analyze(run, "relu", lm=make_lm(), device="cpu", progress=False)
    t = pq.read_table(out / "features.parquet").to_pandas()
    acts = pq.read_table(out / "feature_acts.parquet").to_pandas()
    assert len(t) == 32 and t.n_fires.sum() == len(acts) > 0
    assert (acts.token_index % 16 != 0).all()  # the BOS outliers never count
    assert np.allclose(t.density, t.n_fires / (24 * 15))
