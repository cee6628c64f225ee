"""Attribution of a prediction on the tiny random Llama: attribution patching against exact edits (every kind, the
iterative encoders included), integrated gradients' completeness, the packed row against plain passes, and the
prompt API's table and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.attribution import attribute_prompt
from backend.attribution.features import attribute_features, exact_effects, hook_acts
from backend.attribution.integrated_gradients import gauss_legendre, integrated_gradients, token_logprobs
from backend.attribution.occlusion import occlusion
from backend.attribution.targets import Target, continuation_ids, pack_item, prompt_positions
from backend.common.errors import UserError
from backend.interventions.inputs import special_ids, tokenize_text
from backend.model import hooks
from backend.tasks.scoring import EncodedItem
from tests.test_interventions import HOOK, KINDS_CASES, make

PROMPT = "the cat sat on the"


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    from backend.model.loading import load_model

    return load_model(str(tiny_model_dir), device="cpu")


def item(lm, prompt=PROMPT, choices=("mat", "rug")) -> EncodedItem:
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    return EncodedItem(tokenize_text(lm.tokenizer, prompt), [continuation_ids(lm.tokenizer, c, "target", vocab) for c in choices])


def test_packed_row_scores_each_choice_as_its_own_sequence(lm):
    """L_j from the packed row (tree mask, restarting positions) equals a plain pass over prompt + choice j."""
    from backend.attribution.features import forward_from_hook
    from backend.attribution.targets import choice_logprobs

    it = item(lm, choices=("mat", "rug", "sky"))
    packed = pack_item(it)
    hp = hooks.parse_hook(HOOK)
    with torch.no_grad():
        L = choice_logprobs(lm.model, forward_from_hook(lm.model, hp, hook_acts(lm.model, hp, packed), packed), packed)[0]
        for j, c in enumerate(it.choices):
            ids = torch.tensor([it.prompt + c])
            lp = torch.log_softmax(lm.model(input_ids=ids).logits[0, len(it.prompt) - 1:-1].float(), -1)
            assert float(L[j]) == pytest.approx(float(lp[torch.arange(len(c)), torch.tensor(c)].sum()), abs=1e-4)


@pytest.mark.parametrize("kind, cfg", KINDS_CASES[:2] + KINDS_CASES[4:6], ids=lambda v: v if isinstance(v, str) else "")
def test_attribution_patching_agrees_with_exact_small_edits(lm, kind, cfg):
    """Scaling one pair's code by 1 - eps changes m by eps * attribution to first order: measured on the 8 pairs of
    largest |attribution|, for SAEs and the iterative encoders (their codes are inputs to the linear decode)."""
    d = make(kind, **cfg)
    hp = hooks.parse_hook(HOOK)
    packed = pack_item(item(lm))
    tgt = Target("diff")
    fa = attribute_features(lm, d, hp, packed, tgt, special_ids(lm.tokenizer))
    assert fa.n_pairs > 10 and (fa.pos >= 1).all()  # position 0 (BOS) is never attributed
    top = np.argsort(-np.abs(fa.attribution))[:8]
    eps = 1e-2
    exact = exact_effects(lm, hp, packed, tgt, fa, top, scale=1 - eps) / eps
    np.testing.assert_allclose(exact, fa.attribution[top], rtol=0.05, atol=2e-3 * np.abs(fa.attribution[top]).max())
    # the whole zero-ablation is no longer first order, but on this near-linear model it keeps the sign and ranking
    zero = exact_effects(lm, hp, packed, tgt, fa, top)
    assert np.corrcoef(zero, fa.attribution[top])[0, 1] > 0.9


@pytest.mark.parametrize("kind, choices", [("logprob", ("mat",)), ("choice", ("mat", "rug", "sky"))])
def test_integrated_gradients_complete_within_one_percent(lm, kind, choices):
    packed = pack_item(item(lm, choices=choices))
    keep = prompt_positions(packed, special_ids(lm.tokenizer))
    ta = integrated_gradients(lm, packed, Target(kind, 0), keep, steps=20)
    assert list(ta.positions) == list(range(1, packed.n_prompt))  # BOS kept out
    gap = ta.metric - ta.metric_baseline
    assert abs(gap) > 1e-3  # a real difference to explain
    assert abs(ta.attribution.sum() - gap) <= 0.01 * abs(gap)
    assert ta.completeness_error < 0.01


def test_occlusion_is_the_measured_single_removal(tiny_model_dir):
    """Planted: the embedding row of "cat" is zero (already the baseline), so removing it changes nothing and
    scores 0; every other score equals m(x) - m(x with that token removed), each measured by its own pass."""
    from backend.attribution.integrated_gradients import embeddings
    from backend.model.loading import load_model

    lm = load_model(str(tiny_model_dir), device="cpu")  # its own copy: an embedding row is changed
    packed = pack_item(item(lm, choices=("mat", "rug", "sky")))
    cat = continuation_ids(lm.tokenizer, " cat", "target", 10**9)
    assert len(cat) == 1 and int((packed.ids[:packed.n_prompt] == cat[0]).sum()) == 1
    with torch.no_grad():
        lm.model.get_input_embeddings().weight[cat[0]] = 0.0
    keep = prompt_positions(packed, special_ids(lm.tokenizer))
    tgt = Target("choice", 1)
    oc = occlusion(lm, packed, tgt, keep, batch_rows=3)  # several batches
    assert list(oc.positions) == list(range(1, packed.n_prompt))
    e = embeddings(lm.model, packed)
    with torch.no_grad():
        m0 = float(tgt.metric(token_logprobs(lm.model, e, packed))[0])
        single = []
        for t in oc.positions:
            one = e.clone()
            one[0, t] = 0.0
            single.append(m0 - float(tgt.metric(token_logprobs(lm.model, one, packed))[0]))
    assert oc.metric == pytest.approx(m0, abs=1e-6)
    np.testing.assert_allclose(oc.attribution, single, atol=1e-6)
    at_cat = int(np.flatnonzero(packed.ids[oc.positions].numpy() == cat[0])[0])
    assert oc.attribution[at_cat] == 0.0
    others = np.delete(oc.attribution, at_cat)
    assert np.abs(others).min() > 1e-4  # the other tokens matter: the planted zero is not the model's indifference


def test_gauss_legendre_is_exact_for_polynomials():
    a, w = gauss_legendre(3)  # exact up to degree 5
    assert w.sum() == pytest.approx(1.0)
    assert float((w * a ** 5).sum()) == pytest.approx(1 / 6, abs=1e-12)
    assert ((a > 0) & (a < 1)).all()


def test_attribute_prompt_table_and_default_target(lm):
    d = make("relu-l1")
    a = attribute_prompt(lm, d, HOOK, PROMPT, target="mat", top_n=5)
    assert a.target == " mat" and a.contrast is None and a.metric < 0  # a log-probability
    assert a.target_prob == pytest.approx(np.exp(a.metric), rel=1e-5)
    assert a.pairs["exact_effect"].notna().sum() == 5 and a.pairs["exact_effect"].head(5).notna().all()
    assert (np.diff(a.pairs["attribution"].abs().to_numpy()) <= 1e-7).all()  # ranked by |attribution|
    assert a.pairs["rank"].tolist() == list(range(1, len(a.pairs) + 1))
    assert np.isnan(a.ig["attribution"].iloc[0]) and a.ig["attribution"].iloc[1:].notna().all()
    assert a.ig_check["completeness_error"] < 0.01
    feats = a.features()
    assert feats["attribution"].sum() == pytest.approx(a.pairs["attribution"].sum(), rel=1e-5)
    # no target: the model's own most likely next token
    b = attribute_prompt(lm, d, HOOK, PROMPT, top_n=0, ig=False)
    with torch.no_grad():
        top = int(lm.model(input_ids=torch.tensor([tokenize_text(lm.tokenizer, PROMPT)])).logits[0, -1].argmax())
    assert b.target == lm.tokenizer.decode([top]) and b.ig_check == {} and b.pairs["exact_effect"].isna().all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(target="zebra"), "not in the model's vocabulary"),
    (dict(target="mat", contrast="zebra"), "contrast 'zebra' is not in the model's vocabulary"),
    (dict(contrast="rug"), "a contrast needs a target"),
    (dict(target="mat", contrast="mat"), "the same tokens"),
    (dict(target="mat", top_n=1000), "exactly ablated pairs"),
    (dict(target="mat", ig_steps=0), "IG steps"),
])
def test_bad_targets_are_one_clear_error(lm, kwargs, message):
    with pytest.raises(UserError, match=message):
        attribute_prompt(lm, make("relu-l1"), HOOK, PROMPT, **kwargs)


def test_prompt_too_long_for_the_context(lm):
    with pytest.raises(UserError, match="at most 512 are allowed"):
        attribute_prompt(lm, make("relu-l1"), HOOK, " ".join(["the"] * 600), target="mat")
