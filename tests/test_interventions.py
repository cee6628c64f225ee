"""Interventions on the tiny random Llama: the splice keeps the clean logits with no edit (every kind), a silent
feature's ablation and a zero steer change nothing, a planted feature's ablation moves the logits by its
decoder direction, batching and cached starts give the same numbers, bad inputs are one clear error each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.common.errors import UserError
from backend.dictionaries import KINDS
from backend.dictionaries.sae_ito import SaeItoDictionary
from backend.interventions import Edit, core, text_effects, top_context_effects
from backend.interventions.edits import edit_delta, resolve, special_mask
from backend.interventions.effects import Row, effects_of_rows
from backend.interventions.steer import Sampling, generate_rows, steer, sweep
from backend.model import hooks

REPO = Path(__file__).resolve().parent.parent
HOOK = "blocks.1.hook_resid_post"
D, N = 64, 96  # the tiny model's width, features of the test dictionaries
TEXT = "the cat sat on the mat and the dog sat on the rug"


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    from backend.model.loading import load_model

    return load_model(str(tiny_model_dir), device="cpu")


def make(kind: str, seed: int = 0, **cfg):
    """A dictionary of `kind` over the tiny model's residual stream, with the hook it was 'made' at."""
    g = torch.Generator().manual_seed(seed)
    meta = {"metadata": {"hook_name": HOOK}}
    if kind == "sae-ito":
        base = make("relu-l1", seed)
        d = SaeItoDictionary({"d_in": D, "d_sae": N, "base_cfg": {**base.cfg, "kind": "relu-l1"}, "method": cfg.get("method", "gp"),
                              "target_l0": 6, "pool": 12, "n_iter": 10, "fista_l1": 0.01, **meta})
        d.base.load_state_dict(base.state_dict())
        return d.eval()
    d = KINDS[kind]({"d_in": D, "d_sae": N, **cfg, **meta})
    d.init_weights_(b_dec=torch.randn(D, generator=g) * 0.1, enc_norm=0.5, generator=g)
    return d.eval()


KINDS_CASES = [("relu-l1", {}), ("topk", {"k": 6}), ("batchtopk", {"k": 6}), ("mlp", {"hidden": 32}),
               ("sparse-coding", {"fista_l1": 0.01, "n_iter": 10, "pool": 12}), ("sae-ito", {"method": "gp"}),
               ("sae-ito", {"method": "fista"})]


def _ids(lm, text=TEXT) -> torch.Tensor:
    from backend.interventions.inputs import tokenize_text

    return torch.tensor([tokenize_text(lm.tokenizer, text)])


def _pair(lm, hp, act, delta):
    """(clean, edited) logits [1, T, V] through the engine's passes: clean once, edited from its first change."""
    from backend.model.forward import unembed

    h, cache = core.clean_pass(lm.model, hp, act)
    first = int(core.first_changed(delta)[0])
    edited = h
    if first < act.shape[1]:
        tail = core.edited_pass(lm.model, hp, cache, torch.tensor([0]), first, (act + delta)[:, first:])
        edited = torch.cat([h[:, :first], tail], 1)
    return unembed(lm.model, h), unembed(lm.model, edited)


def _delta(lm, d, act, ids, edit, error_term=True):
    r = resolve(edit, d.d_sae, None)
    sp = special_mask(ids[0], set(lm.tokenizer.all_special_ids))
    from backend.interventions.edits import position_mask

    at = position_mask(ids.shape[1], edit, sp) & ~sp
    return edit_delta(d, act, r, at[None], (~sp)[None], error_term)


@pytest.mark.parametrize("kind,cfg", KINDS_CASES, ids=[f"{k}-{c.get('method', '')}" for k, c in KINDS_CASES])
def test_no_edit_splice_equals_clean_and_edits_match_saelens_form(lm, kind, cfg):
    d = make(kind, **cfg)
    hp = hooks.parse_hook(HOOK)
    ids = _ids(lm)
    with torch.no_grad():
        clean_full = lm.model(ids).logits  # [1, T, V]
    act = core.capture_acts(lm.model, hp, ids)
    # no edit: x' = decode(f) + (x - decode(f)) is x, so the logits are the model's own
    delta, _ = _delta(lm, d, act, ids, Edit((0, 1, 2), "scale", 1.0))
    assert delta.abs().max() == 0
    clean, edited = _pair(lm, hp, act, delta)
    torch.testing.assert_close(clean, clean_full, atol=1e-4, rtol=0)
    torch.testing.assert_close(edited, clean_full, atol=1e-4, rtol=0)
    # a real edit (ablate the most active feature) equals SAELens' form decode(edit(f)) + (x - decode(f))
    with torch.no_grad():
        f = int(d.encode(act[0, 1:]).sum(0).argmax())
    delta, _ = _delta(lm, d, act, ids, Edit((f,), "zero"))
    _, edited = _pair(lm, hp, act, delta)
    with torch.no_grad():
        x = act[0, 1:]
        codes_all = d.encode(x)
        ablated = codes_all.clone()
        ablated[:, f] = 0
        saelens = act.clone()
        saelens[0, 1:] = d.decode(ablated) + (x - d.decode(codes_all))
        with hooks.splice(lm.model, hp, lambda a: saelens):
            want = lm.model(ids).logits
    assert (codes_all[:, f] > 0).any(), "the test needs a feature that fires"
    assert (edited - clean_full).abs().max() > 1e-4
    torch.testing.assert_close(edited, want, atol=1e-4, rtol=0)
    # without the error term: x' = decode(edit(f)) wherever the dictionary is spliced (position 0 kept)
    delta, _ = _delta(lm, d, act, ids, Edit((f,), "zero"), error_term=False)
    _, edited = _pair(lm, hp, act, delta)
    bare = act.clone()
    with torch.no_grad():
        bare[0, 1:] = d.decode(ablated)
        with hooks.splice(lm.model, hp, lambda a: bare):
            want = lm.model(ids).logits
    torch.testing.assert_close(edited, want, atol=1e-4, rtol=0)


def test_zero_ablating_a_silent_feature_changes_nothing(lm):
    d = make("relu-l1")
    with torch.no_grad():
        d.b_enc[7] = -1e4  # feature 7 never fires
    eff = text_effects(lm, d, HOOK, TEXT, Edit((7,), "zero"))
    assert (eff.table["act"] == 0).all()
    assert (eff.table["loss_change"].fillna(0) == 0).all() and (eff.table["kl"] == 0).all()
    assert all(len(p) == 0 for p in eff.table["promoted_logit"])  # nothing moved, nothing promoted


def test_steering_with_zero_strength_is_clean(lm):
    d = make("relu-l1")
    eff = text_effects(lm, d, HOOK, TEXT, Edit((3,), "steer", 0.0))
    assert (eff.table["loss_change"].fillna(0) == 0).all() and (eff.table["kl"] == 0).all()
    for s in (Sampling(), Sampling(temperature=1.0, top_p=0.95, seed=4)):
        r = steer(lm, d, HOOK, "the cat sat on the", Edit((3,), "steer", 0.0), n_new=8, sampling=s)
        assert r.clean == r.steered and r.kl_first == 0.0 and r.n_new >= 1
    strong = steer(lm, d, HOOK, "the cat sat on the", Edit((3,), "steer", 30.0), n_new=8)
    assert strong.kl_first > 1e-3 and strong.clean != strong.steered


def test_planted_feature_ablation_moves_logits_by_its_decoder_direction(lm):
    """Feature 5 reads and writes direction u; at the last layer the downstream pass is norm + lm_head, so ablating
    it must give exactly lm_head(norm(x - f5 u)), and to first order the logit change is -f5 * (u @ W_U)."""
    g = torch.Generator().manual_seed(1)
    d = make("relu-l1")
    u = torch.randn(D, generator=g)
    u /= u.norm()
    hook = "blocks.3.hook_resid_post"
    ids = _ids(lm)
    hp = hooks.parse_hook(hook)
    act = core.capture_acts(lm.model, hp, ids)
    with torch.no_grad():
        d.W_enc.zero_()
        d.b_enc.fill_(-1.0)  # only feature 5 fires
        d.W_dec[5] = u
        d.W_enc[:, 5] = u
        d.b_dec.zero_()
        d.b_enc[5] = 0.05 * float(act[0, 1:].norm(dim=-1).mean()) - float((act[0, 1:] @ u).min())  # fires everywhere
    d.cfg["metadata"] = {"hook_name": hook}
    eff = text_effects(lm, d, hook, TEXT, Edit((5,), "zero"))
    a5 = torch.tensor(eff.table["act"].to_numpy()[1:], dtype=torch.float32)  # the planted feature's value
    assert (a5 > 0).all()
    x = act[0, 1:]
    with torch.no_grad():
        norm, W_U = lm.model.model.norm, lm.model.get_output_embeddings()
        want = W_U(norm(x - a5[:, None] * u))
        have = W_U(norm(x))
        lp = lambda z: torch.log_softmax(z, -1)  # noqa: E731
        kl_want = (lp(have).exp() * (lp(have) - lp(want))).sum(-1)
    np.testing.assert_allclose(eff.table["kl"].to_numpy()[1:], kl_want.numpy(), rtol=1e-3, atol=1e-6)
    # first order: the change of the logits is -a5 * (u scaled by the norm) @ W_U, up to the norm's radial part
    with torch.no_grad():
        rms = x.pow(2).mean(-1, keepdim=True).add(norm.variance_epsilon).sqrt()
        lin = -(a5[:, None] * (u * norm.weight)[None, :] / rms) @ W_U.weight.T
        dlog = want - have
    cos = torch.nn.functional.cosine_similarity(dlog - dlog.mean(-1, keepdim=True), lin - lin.mean(-1, keepdim=True), dim=-1)
    assert (cos > 0.9).all(), cos


def test_positions_and_special_tokens(lm):
    d = make("relu-l1")
    hp = hooks.parse_hook(HOOK)
    ids = _ids(lm)
    act = core.capture_acts(lm.model, hp, ids)
    delta, _ = _delta(lm, d, act, ids, Edit((3,), "steer", 5.0, positions=(4, 6)))
    moved = (delta[0].abs().amax(-1) > 0).nonzero()[:, 0].tolist()
    assert moved == [4, 6]
    delta, _ = _delta(lm, d, act, ids, Edit((3,), "steer", 5.0))
    assert delta[0, 0].abs().max() == 0 and (delta[0, 1:].abs().amax(-1) > 0).all()  # BOS left alone
    eff = text_effects(lm, d, HOOK, TEXT, Edit((3,), "steer", 5.0, positions=(4,)))
    lc = eff.table["loss_change"].to_numpy()
    assert (lc[:4] == 0).all() and abs(lc[4]) > 0  # nothing before the first edited position changes
    with_bos = text_effects(lm, d, HOOK, TEXT, Edit((3,), "steer", 5.0, positions=(0,), include_special=True))
    assert with_bos.table["kl"].iloc[0] > 0
    with pytest.raises(UserError, match="past the end"):
        text_effects(lm, d, HOOK, TEXT, Edit((3,), "steer", 5.0, positions=(99,)))


def test_batched_rows_equal_rows_alone(lm):
    """Rows sharing a batch (and a clean prefix cut at the batch's first change) give each row's own numbers."""
    d = make("relu-l1")
    hp = hooks.parse_hook(HOOK)
    texts = [TEXT, "for i in range ( 10 ) : print ( i * 2 )", "3 + 4 = 7 and 7 * 2 = 14 so the answer is 14"]
    rows = []
    for j, t in enumerate(texts):
        ids = _ids(lm, t)[0].numpy()
        e = Edit((3 + j,), "steer", 4.0, positions=(2 + 3 * j,))
        rows.append(Row(ids, np.arange(1, len(ids)), resolve(e, N, None)))
    together = effects_of_rows(lm, d, hp, rows, batch_seqs=8, group_rows=2)
    alone = [effects_of_rows(lm, d, hp, [r])[0] for r in rows]
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a["loss_change"], b["loss_change"], atol=2e-5, equal_nan=True)
        np.testing.assert_allclose(a["kl"], b["kl"], atol=2e-6)
        assert (a["promoted_logit_ids"][a["kl"] > 1e-3] == b["promoted_logit_ids"][b["kl"] > 1e-3]).all()


def test_top_contexts_start_from_the_cache(lm, tiny_store, monkeypatch):
    """Contexts in the run run only the layers after the hook (no upstream pass), and agree with one."""
    from backend.dictionaries import load_dictionary
    from backend.store import query as store

    run = tiny_store / "runs" / "tiny"
    d = load_dictionary(run / "dictionaries" / "relu-l1")
    f = int(store.list_features(run, "relu-l1", alive=True, sort="density", descending=True, limit=1)["feature"].iloc[0])
    calls = []
    real = hooks.capture
    monkeypatch.setattr(hooks, "capture", lambda *a, **k: calls.append(1) or real(*a, **k))
    fe = top_context_effects(lm, d, run, "relu-l1", f)
    assert not calls and fe.from_cache and len(fe.contexts) == 20
    dash = store.feature_dashboard(run, "relu-l1", f)
    assert [c.token_index for c in fe.contexts] == [c["token_index"] for c in dash["contexts"]["top"]]
    c0, w0 = fe.contexts[0], dash["contexts"]["top"][0]
    assert c0.table["token"].tolist() == w0["tokens"] and c0.peak == w0["peak"]  # the feature page's window
    np.testing.assert_allclose(c0.table["act"].to_numpy(), np.asarray(w0["acts"]), atol=2e-3)
    assert np.isfinite(fe.at_peak) and np.isfinite(fe.after_peak)
    # the same contexts from token ids (upstream pass): equal up to the cache's float16 rounding
    from backend.interventions.run_data import RunData

    data = RunData(run, "relu-l1")
    monkeypatch.setattr(data, "seq_acts", lambda s, stop=None: None)
    from backend.interventions.effects import context_rows

    r = resolve(Edit((f,), "zero"), d.d_sae, None)
    rows = context_rows(data, np.array([c.token_index for c in fe.contexts]), r, 24, 8)
    fresh = effects_of_rows(lm, d, hooks.parse_hook(HOOK), rows)
    assert calls
    np.testing.assert_allclose(fresh[0]["loss_change"], c0.table["loss_change"].to_numpy(), atol=2e-2, equal_nan=True)


def test_effects_parquet_and_sorting(lm, tiny_store, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    from backend.dictionaries import load_dictionary
    from backend.interventions.effects_store import EffectsConfig, chosen_features, write_effects
    from backend.interventions.run_data import RunData
    from backend.store import query as store

    run = tmp_path / "tiny"
    shutil.copytree(tiny_store / "runs" / "tiny", run)
    ddir = run / "dictionaries" / "relu-l1"
    feats = chosen_features(RunData(run, "relu-l1"), 6)
    # a chunk left by an interrupted run with the same settings is reused as it is
    cfg = EffectsConfig(top=6, features_per_chunk=3)
    out = write_effects(run, "relu-l1", cfg, lm=lm, progress=False)
    first = pq.read_table(out).to_pandas()
    assert list(first.columns) == ["feature", "loss_change_peak", "loss_change_after", "n_contexts"]
    assert sorted(first["feature"]) == sorted(feats.tolist()) and (first["n_contexts"] == 20).all()
    fe = top_context_effects(lm, load_dictionary(ddir), run, "relu-l1", int(feats[0]))
    row = first.set_index("feature").loc[int(feats[0])]
    assert row["loss_change_peak"] == pytest.approx(fe.at_peak, abs=1e-4)
    assert row["loss_change_after"] == pytest.approx(fe.after_peak, abs=1e-4)
    assert not (ddir / "effects.partial").exists() and (ddir / "effects.json").is_file()
    # resume: a planted chunk 0 is kept, chunk 1 is computed
    from backend.common.atomic import write_json
    from backend.interventions.effects_store import PARTIAL_DIR, _settings, _table

    part = ddir / PARTIAL_DIR
    part.mkdir()
    write_json(part / "settings.json", _settings(cfg, ddir))
    planted = first[first["feature"].isin(feats[:3])].assign(loss_change_peak=123.0)
    pq.write_table(_table(planted), part / "chunk_00000.parquet")
    again = pq.read_table(write_effects(run, "relu-l1", cfg, lm=lm, progress=False)).to_pandas().set_index("feature")
    assert (again.loc[feats[:3].tolist(), "loss_change_peak"] == 123.0).all()
    assert (again.loc[feats[3:].tolist(), "loss_change_peak"] != 123.0).all()
    # the feature list sorts by it (features without effects last) and shows the columns
    page = store.list_features(run, "relu-l1", sort="loss_change_peak", descending=True, limit=10)
    assert page["feature"].tolist()[:3] == sorted(feats[:3].tolist())
    assert {"loss_change_peak", "loss_change_after"} <= set(page.columns)
    assert page["loss_change_peak"].iloc[6:].isna().all()


def test_sweep_table(lm):
    d = make("relu-l1")
    df = sweep(lm, d, HOOK, "the cat sat on the", 3, strengths=[0, 1, 4, 16, 64], relative=False, n_new=4)
    assert df["strength"].tolist() == [0.0, 0.0, 1.0, 4.0, 16.0, 64.0]
    assert df["kl_first"].iloc[0] == 0 and df["kl_first"].iloc[1] == 0 and df["text"].iloc[1] == df["text"].iloc[0]
    assert df["kl_first"].iloc[5] > df["kl_first"].iloc[2]


def test_generation_streams_every_step(lm):
    d = make("relu-l1")
    steps = list(generate_rows(lm, d, HOOK, "the cat sat", [None, Edit((3,), "steer", 10.0)], n_new=5))
    assert [s.step for s in steps] == list(range(len(steps))) and 1 <= len(steps) <= 5
    assert len(steps[0].kl_first) == 2 and all(len(s.texts) == 2 for s in steps)
    assert all(b.texts[0].startswith(a.texts[0].rstrip()) for a, b in zip(steps, steps[1:]))


@pytest.mark.parametrize("call,message", [
    (lambda lm, d: text_effects(lm, d, HOOK, TEXT, Edit((N,), "zero")), "no feature 96"),
    (lambda lm, d: text_effects(lm, d, HOOK, TEXT, Edit((1,), "steer", float("nan"))), "finite"),
    (lambda lm, d: text_effects(lm, d, HOOK, TEXT, Edit((1,), "steer", 1e9)), "absurd"),
    (lambda lm, d: text_effects(lm, d, HOOK, TEXT, Edit((1,), "steer", 5e3, relative=True)), "absurd"),
    (lambda lm, d: text_effects(lm, d, HOOK, "   ", Edit((1,), "zero")), "empty"),
    (lambda lm, d: text_effects(lm, d, HOOK, "the " * 600, Edit((1,), "zero")), "at most 512"),
    (lambda lm, d: text_effects(lm, d, "blocks.2.hook_resid_post", TEXT, Edit((1,), "zero")), "trained at"),
    (lambda lm, d: text_effects(lm, d, HOOK, TEXT, Edit((1,), "mean")), "analysis"),
    (lambda lm, d: text_effects(lm, d, HOOK, TEXT, Edit((1,), "blur")), "unknown edit"),
    (lambda lm, d: steer(lm, d, HOOK, TEXT, Edit((1,), "steer", 1.0), n_new=0), "between 1 and"),
    (lambda lm, d: steer(lm, d, HOOK, TEXT, Edit((1,), "steer", 1.0), sampling=Sampling(temperature=-1)), "temperature"),
])
def test_bad_inputs_are_one_clear_error(lm, call, message):
    with pytest.raises(UserError, match=message):
        call(lm, make("relu-l1"))


def test_cli_errors_are_one_line(tiny_store, capsys):
    from backend.cli import main

    run = str(tiny_store / "runs" / "tiny")
    cases = [
        (["text", "--run", run, "--dict", "relu-l1", "--features", "100000", "--text", TEXT], "no feature 100000"),
        (["steer", "--run", run, "--dict", "relu-l1", "--features", "1", "--value", "nan", "--prompt", "the cat"], "finite"),
        (["steer", "--run", run, "--dict", "relu-l1", "--features", "1", "--value", "1", "--prompt", ""], "empty"),
        (["contexts", "--run", run, "--dict", "nope", "--feature", "1"], "no dictionary"),
        (["text", "--run", run, "--dict", "relu-l1", "--features", "1", "--text", "the " * 600], "at most 512"),
        (["steer", "--run", run, "--dict", "relu-l1", "--features", "1", "--value", "1", "--prompt", "the cat",
          "--tokens", "9999"], "between 1 and"),
    ]
    for args, message in cases:
        assert main(["intervene", *args]) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
    # and as a process: exit status 2, one line
    env = {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-m", "backend", "intervene", *cases[0][0]], capture_output=True, text=True,
                         env=env, timeout=300, cwd=REPO)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert [line for line in res.stderr.splitlines() if line.startswith("error:")] == \
        ["error: no feature 100000 (this dictionary has features 0..127)"]


def test_cli_text_contexts_and_steer_print(tiny_store, capsys):
    import re

    from backend.cli import main

    run = str(tiny_store / "runs" / "tiny")
    assert main(["intervene", "text", "--run", run, "--dict", "relu-l1", "--features", "1,2", "--text", TEXT]) == 0
    out = capsys.readouterr().out
    assert "zero on #1, #2" in out and "'mat'" in out and "mean loss change" in out
    assert main(["intervene", "contexts", "--run", run, "--dict", "relu-l1", "--feature", "1", "--n", "3"]) == 0
    out = capsys.readouterr().out
    assert "on the top 3 contexts of feature 1" in out and len(re.findall(r"#\d+ +[+-]\d", out)) == 3
    assert main(["intervene", "steer", "--run", run, "--dict", "relu-l1", "--features", "1", "--relative",
                 "--sweep", "0,1,2,4,8", "--prompt", "the cat sat", "--tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"KL +\d", out)) == 6 and "clean" in out
    assert main(["intervene", "steer", "--run", run, "--dict", "relu-l1", "--features", "1", "--value", "3",
                 "--prompt", "the cat sat", "--tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "clean:" in out and "steered:" in out


def test_edit_from_leaves_earlier_positions_alone(lm):
    """A row edited from position k equals the same edit restricted to positions k.. (the top-context window)."""
    d = make("relu-l1")
    hp = hooks.parse_hook(HOOK)
    ids = _ids(lm, TEXT)[0].numpy()
    keep, k = np.arange(1, len(ids)), 5
    everywhere = Edit((3,), "steer", 4.0)
    windowed = effects_of_rows(lm, d, hp, [Row(ids, keep, resolve(everywhere, N, None), edit_from=k)])[0]
    explicit = Edit((3,), "steer", 4.0, positions=tuple(range(k, len(ids))))
    expected = effects_of_rows(lm, d, hp, [Row(ids, keep, resolve(explicit, N, None))])[0]
    np.testing.assert_allclose(windowed["loss_change"], expected["loss_change"], atol=1e-6, equal_nan=True)
    assert (windowed["kl"][keep < k] == 0).all() and windowed["kl"][keep >= k].max() > 1e-3
    full = effects_of_rows(lm, d, hp, [Row(ids, keep, resolve(everywhere, N, None))])[0]
    assert full["kl"][keep < k].max() > 1e-3  # without edit_from the earlier positions do change
