"""Attribute one typed prompt's prediction to dictionary features and to its tokens (the app's attribution view).

    target given       m = log p(target | prompt)                        summed over the target's tokens
    target + contrast  m = log p(target | prompt) - log p(contrast | prompt)     two answer choices
    no target          the model's most likely next token is the target

The target and contrast are scored as the task suite scores a choice (backend/tasks/prompts.py): a trailing space of
the prompt moves onto them and they get one leading space unless the prompt ends with a newline ("The capital of
France is" + "Paris" scores " Paris"). Pairs are listed by |attribution| (supporters and opponents alike); the exact
zero-ablation effect is measured for the `top_n` first. IG runs over the prompt's embeddings (BOS kept).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from backend.attribution.features import attribute_features, exact_effects
from backend.attribution.integrated_gradients import IG_STEPS, integrated_gradients
from backend.attribution.targets import Target, continuation_ids, pack_item, prompt_positions
from backend.common.errors import UserError
from backend.corpus.contexts import token_strings
from backend.interventions.inputs import check_dictionary, special_ids, tokenize_text
from backend.model.forward import HOOK_LOCK
from backend.tasks.prompts import split_whitespace
from backend.tasks.scoring import EncodedItem, context_limit

TOP_N = 20  # pairs whose exact ablation effect is measured: one downstream row each
MAX_TOP_N = 200


@dataclass
class PromptAttribution:
    """What the attribution view draws for one prompt and target."""

    tokens: list[str]  # [P] the prompt's tokens, BOS first
    token_ids: list[int]
    target: str  # the scored continuation, as scored (leading space included)
    contrast: str | None
    metric_name: str
    metric: float  # m of the clean pass
    target_prob: float  # p(target | prompt), the product over its tokens
    pairs: pd.DataFrame  # pos, token, feature, act, grad, attribution, exact_effect (NaN past top_n), rank
    ig: pd.DataFrame  # pos, token, attribution (NaN at BOS and special tokens)
    ig_check: dict  # metric, metric_baseline, sum, completeness_error, steps
    seconds: dict = field(default_factory=dict)  # features, exact, ig

    def features(self) -> pd.DataFrame:
        """Per feature over the prompt's positions: attribution summed, positions active, largest activation."""
        if self.pairs.empty:
            return pd.DataFrame(columns=["feature", "attribution", "n_positions", "max_act"])
        g = self.pairs.groupby("feature")
        out = pd.DataFrame({"attribution": g["attribution"].sum(), "n_positions": g.size(), "max_act": g["act"].max()})
        out = out.reset_index()
        return out.iloc[np.argsort(-out["attribution"].abs().to_numpy(), kind="stable")].reset_index(drop=True)


def _top_next_token(lm, ids: list[int]) -> int:
    with HOOK_LOCK, torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([ids], device=lm.device), use_cache=False).logits[0, -1]
    return int(logits.argmax())


def _encode(lm, text: str, target: str | None, contrast: str | None) -> tuple[EncodedItem, list[str]]:
    """(prompt + continuations, their texts as scored); every bad input is one UserError."""
    tok = lm.tokenizer
    vocab = int(lm.model.get_output_embeddings().weight.shape[0])
    if contrast and not (target or "").strip():
        raise UserError("a contrast needs a target: give both answer choices")
    if not (target or "").strip():
        ids = tokenize_text(tok, text)
        top = _top_next_token(lm, ids)
        return EncodedItem(ids, [[top]]), [tok.decode([top])]
    conts = [target] + ([contrast] if contrast else [])
    prompt, conts = split_whitespace(text, conts)
    ids = tokenize_text(tok, prompt)
    choice_ids = [continuation_ids(tok, c, what, vocab) for c, what in zip(conts, ("target", "contrast"))]
    if contrast and choice_ids[0] == choice_ids[1]:
        raise UserError("the target and the contrast are the same tokens")
    limit = context_limit(lm.model)
    if len(ids) + max(len(c) for c in choice_ids) > limit:
        raise UserError(f"the prompt and target have {len(ids) + max(len(c) for c in choice_ids)} tokens, more than "
                        f"the model's context length {limit}")
    return EncodedItem(ids, choice_ids), conts


def attribute_prompt(lm, dictionary, hook: str, text: str, target: str | None = None, contrast: str | None = None,
                     top_n: int = TOP_N, ig_steps: int = IG_STEPS, ig: bool = True) -> PromptAttribution:
    """Attribution patching of every active pair of `text`, the exact effect of the top_n, and IG over its tokens."""
    if not 0 <= int(top_n) <= MAX_TOP_N:
        raise UserError(f"the number of exactly ablated pairs must be in 0..{MAX_TOP_N}, not {top_n}")
    if ig and not 1 <= int(ig_steps) <= 1000:
        raise UserError(f"IG steps must be in 1..1000, not {ig_steps}")
    hp = check_dictionary(dictionary, lm.model, hook)
    item, conts = _encode(lm, text, target, contrast)
    packed = pack_item(item)
    tgt = Target("diff" if contrast else "logprob", 0)
    special = special_ids(lm.tokenizer)

    t0 = time.perf_counter()
    fa = attribute_features(lm, dictionary, hp, packed, tgt, special)
    t1 = time.perf_counter()
    order = np.argsort(-np.abs(fa.attribution), kind="stable")
    exact = np.full(fa.n_pairs, np.nan)
    exact[order[:top_n]] = exact_effects(lm, hp, packed, tgt, fa, order[:top_n])
    t2 = time.perf_counter()
    strs = token_strings(lm.tokenizer, np.asarray(item.prompt))
    pairs = pd.DataFrame({"pos": fa.pos, "token": [strs[p] for p in fa.pos], "feature": fa.feature, "act": fa.act,
                          "grad": fa.grad, "attribution": fa.attribution, "exact_effect": exact})
    pairs = pairs.iloc[order].reset_index(drop=True)
    pairs.insert(0, "rank", np.arange(1, len(pairs) + 1))

    ig_table = pd.DataFrame({"pos": np.arange(len(strs)), "token": strs, "attribution": np.nan})
    check: dict = {}
    if ig:
        ta = integrated_gradients(lm, packed, tgt, prompt_positions(packed, special), steps=ig_steps)
        ig_table.loc[ta.positions, "attribution"] = ta.attribution
        check = {"metric": ta.metric, "metric_baseline": ta.metric_baseline, "sum": float(ta.attribution.sum()),
                 "completeness_error": ta.completeness_error, "steps": ig_steps}
    t3 = time.perf_counter()
    return PromptAttribution(
        tokens=strs, token_ids=list(item.prompt), target=conts[0], contrast=conts[1] if contrast else None,
        metric_name=tgt.describe(), metric=fa.metric, target_prob=float(np.exp(fa.logprobs[0])), pairs=pairs,
        ig=ig_table, ig_check=check, seconds={"features": t1 - t0, "exact": t2 - t1, "ig": t3 - t2})


@dataclass
class AttributeOptions:
    """What `python -m backend attribute` explains (beside --run/--dict/--prompt/--device)."""

    target: str | None = None
    """The continuation explained (default: the model's most likely next token); one leading space is added unless
    the prompt ends with a newline, as the task suite scores choices."""
    contrast: str | None = None
    """A second answer: the metric becomes log p(target) - log p(contrast)."""
    top: int = TOP_N
    """Pairs (by |attribution|) whose exact zero-ablation effect is measured: one downstream pass each."""
    ig_steps: int = IG_STEPS
    """Gauss-Legendre nodes of integrated gradients over the prompt's embeddings."""


def format_attribution(a: PromptAttribution, n: int = 15) -> str:
    """What `attribute` prints: the metric, the top pairs with their exact effect, IG per token."""
    show = lambda t: repr(t)[1:-1][:14]  # noqa: E731
    lines = [f"{a.metric_name}: {a.metric:+.4f}  (target {a.target!r}"
             + (f", contrast {a.contrast!r}" if a.contrast else "") + f"; p(target) {a.target_prob:.4f})",
             f"{len(a.pairs)} active (feature, position) pairs; attribution = f * dm/df (> 0 supports the target), "
             "exact = m(clean) - m(pair zero-ablated)",
             f"{'rank':>4} {'pos':>4} {'token':<15}{'feature':>8}{'act':>9}{'attribution':>13}{'exact':>10}"]
    for _, r in a.pairs.head(n).iterrows():
        ex = "" if pd.isna(r["exact_effect"]) else f"{r['exact_effect']:+.4f}"
        lines.append(f"{r['rank']:>4} {r['pos']:>4} {show(r['token']):<15}{r['feature']:>8}{r['act']:>9.3f}"
                     f"{r['attribution']:>+13.4f}{ex:>10}")
    if a.ig_check:
        c = a.ig_check
        lines.append(f"integrated gradients ({c['steps']} Gauss-Legendre nodes, zero-embedding baseline): sum "
                     f"{c['sum']:+.4f} vs m(x) - m(baseline) {c['metric'] - c['metric_baseline']:+.4f}, completeness "
                     f"error {c['completeness_error']:.2%}")
        lines.append("  " + " ".join(f"{show(t)}[{v:+.3f}]" for t, v in zip(a.ig["token"], a.ig["attribution"]) if pd.notna(v)))
    s = a.seconds
    lines.append(f"features {s['features']:.2f} s, exact effects {s['exact']:.2f} s, IG {s['ig']:.2f} s")
    return "\n".join(lines)


def run_attribute(run: str, dict_name: str, prompt: str, opts: AttributeOptions | None = None,
                  device: str = "auto") -> PromptAttribution:
    """The CLI: load the run's model and dictionary, attribute, print."""
    from backend.tasks.evaluate import load_for_eval

    opts = opts or AttributeOptions()
    if not prompt.strip():
        raise UserError("the prompt is empty: type or paste some text")
    lm, dictionary, hook = load_for_eval(None, run, dict_name, device)
    a = attribute_prompt(lm, dictionary.to(lm.device), hook, prompt, opts.target, opts.contrast, top_n=opts.top,
                         ig_steps=opts.ig_steps)
    print(format_attribution(a))
    return a
