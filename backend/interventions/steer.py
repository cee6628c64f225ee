"""Steering and generation: clean and edited continuations of one prompt, side by side, with a KV cache.

All rows (row 0 clean, then one per edit) run as one batch through the full model; at every step the
edit is spliced into its row at the hook (edits.edit_delta on the new positions: the prompt at step 0,
then one token) and the model's own KV cache carries the edited past. Sampling is coupled across rows:
one uniform number per step, shared by every row, picks each row's token by inverse CDF, so rows whose
next-token distributions agree pick the same token (a steer of strength 0 reproduces the clean text
exactly, greedy or sampled), and a divergence is the edit's doing, not the dice's.

    greedy      temperature == 0
    sampling    p = softmax((logits - frequency_penalty * count) / temperature), cut to the top-p nucleus
                (count: how often the token was generated so far in that row, as OpenAI's frequency_penalty)

A strength sweep (`sweep`) steers 5 strengths at once and reports the KL(clean || steered) of the first
generated token's distribution, the quickest sign of where the text starts to change (KL ~0.1-1 nats)
and where it breaks (KL of several nats, repeated tokens).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pandas as pd
import torch

from backend.common.errors import UserError
from backend.interventions.edits import Edit, FeatureStats, ResolvedEdit, edit_delta, position_mask, resolve, special_mask
from backend.interventions.inputs import check_dictionary, check_new_tokens, special_ids, tokenize_text
from backend.model import hooks
from backend.model.forward import HOOK_LOCK

SWEEP_MULTIPLES = (0.25, 0.5, 1.0, 2.0, 4.0)  # default sweep, x max activation: 1x already derails many features


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen (the same for every row)."""

    temperature: float = 0.0
    """0: greedy, deterministic, what a comparison wants first."""
    top_p: float = 0.9
    """Nucleus cut when sampling: drops the long tail that makes small-model text derail."""
    frequency_penalty: float = 0.0
    """Subtracted from a token's logit per earlier occurrence in the row."""
    seed: int = 0
    """One seed for all rows (the coupling above)."""

    def __post_init__(self):
        for name, lo, hi in (("temperature", 0.0, 5.0), ("top_p", 1e-6, 1.0), ("frequency_penalty", -2.0, 2.0)):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
                raise UserError(f"{name} must be a number in [{lo:g}, {hi:g}], not {v!r}")


@dataclass
class GenStep:
    """What a step produced: each row's new token and its whole continuation so far."""

    step: int  # 0-based
    token_ids: list[int]  # [R] the token each row chose
    texts: list[str]  # [R] decoded continuation of each row
    done: list[bool]  # [R] the row has produced EOS
    kl_first: list[float] = field(default_factory=list)  # [R] step 0 only: KL(clean || row) of the first token
    seconds: float = 0.0  # since the start


def _choose(logits: torch.Tensor, counts: torch.Tensor, s: Sampling, gen: torch.Generator) -> torch.Tensor:
    """[R] next tokens from logits [R, V] (coupled across rows, see the module docstring)."""
    logits = logits.float() - s.frequency_penalty * counts
    if s.temperature == 0:
        return logits.argmax(-1)
    p = torch.softmax(logits / s.temperature, -1)
    sp, order = p.sort(-1, descending=True)
    cum = sp.cumsum(-1)
    sp = torch.where(cum - sp < s.top_p, sp, 0.0)  # the nucleus: tokens until top_p is reached, the first always
    cum = sp.cumsum(-1)
    u = torch.rand((), generator=gen) * cum[:, -1:]  # one uniform for all rows
    pick = torch.searchsorted(cum, u).clamp_max(p.shape[-1] - 1)
    return order.gather(-1, pick)[:, 0]


class _RowSplice:
    """The hook function of a batch of rows: row j gets edit j (None: clean) at the positions its Edit names."""

    def __init__(self, dictionary, edits: list[ResolvedEdit | None], special: set[int], n_prompt: int, error_term: bool):
        self.dictionary, self.edits, self.special = dictionary, edits, special
        self.n_prompt, self.error_term = n_prompt, error_term
        self.ids: torch.Tensor | None = None  # [R, t] the ids of this step's positions
        self.offset = 0  # absolute position of the step's first token

    def __call__(self, act: torch.Tensor) -> torch.Tensor:  # act [R, t, d]
        out = act
        for j, r in enumerate(self.edits):
            if r is None:
                continue
            t = act.shape[1]
            sp = special_mask(self.ids[j], self.special) if self.offset == 0 else \
                torch.isin(self.ids[j], torch.tensor(sorted(self.special) or [-1], dtype=self.ids.dtype))
            splice_at = torch.ones_like(sp) if r.edit.include_special else ~sp
            at = position_mask(t, r.edit, sp, n_prompt=self.n_prompt, offset=self.offset) & splice_at
            delta, _ = edit_delta(self.dictionary, act[j:j + 1], r, at[None], splice_at[None], self.error_term)
            if out is act:
                out = act.clone()
            out[j] = act[j] + delta[0].to(act.dtype)
        return out


@torch.no_grad()
def generate_rows(lm, dictionary, hook: str, prompt: str, edits: list[Edit | None], n_new: int = 40,
                  sampling: Sampling = Sampling(), stats: FeatureStats | None = None,
                  error_term: bool = True) -> Iterator[GenStep]:
    """Continue `prompt` once per row (edits[j] None: clean), yielding every step as it is made."""
    model, tok = lm.model, lm.tokenizer
    hp = check_dictionary(dictionary, model, hook)
    resolved = [None if e is None else resolve(e, dictionary.d_sae, stats) for e in edits]
    ids = tokenize_text(tok, prompt)
    P, R = len(ids), len(edits)
    n_new = check_new_tokens(n_new, P, model)
    fn = _RowSplice(dictionary, resolved, special_ids(tok), P, error_term)
    gen = torch.Generator().manual_seed(int(sampling.seed))
    eos = getattr(tok, "eos_token_id", None)
    step_ids = torch.tensor([ids] * R, dtype=torch.long, device=lm.device)
    counts = torch.zeros(R, model.config.vocab_size, device=lm.device)
    out_ids: list[list[int]] = [[] for _ in range(R)]
    done = [False] * R
    cache = None
    t0 = time.perf_counter()
    for step in range(n_new):
        fn.ids, fn.offset = step_ids.cpu(), (0 if step == 0 else P + step - 1)
        with HOOK_LOCK, hooks.splice(model, hp, fn):
            res = model(input_ids=step_ids, past_key_values=cache, use_cache=True)
        cache, logits = res.past_key_values, res.logits[:, -1]  # [R, V]
        kl = []
        if step == 0:
            lp = torch.log_softmax(logits.float(), -1)
            kl = [float((lp[0].exp() * (lp[0] - lp[j])).sum().clamp_min(0)) for j in range(R)]
        nxt = _choose(logits, counts, sampling, gen)
        for j in range(R):
            if done[j]:
                nxt[j] = eos if eos is not None else nxt[j]
                continue
            out_ids[j].append(int(nxt[j]))
            counts[j, nxt[j]] += 1
            done[j] = eos is not None and int(nxt[j]) == eos
        texts = [tok.decode(o, skip_special_tokens=True) for o in out_ids]
        yield GenStep(step, nxt.tolist(), texts, list(done), kl, time.perf_counter() - t0)
        if all(done):
            return
        step_ids = nxt[:, None]


@dataclass
class SteerResult:
    prompt: str
    edit: str
    clean: str
    steered: str
    kl_first: float  # KL(clean || steered) of the first generated token
    n_new: int  # tokens generated per row
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        """New tokens per second of each row (clean and steered are made together, one batch per step)."""
        return self.n_new / self.seconds if self.seconds > 0 else float("nan")


def steer(lm, dictionary, hook: str, prompt: str, edit: Edit, n_new: int = 40, sampling: Sampling = Sampling(),
          stats: FeatureStats | None = None, error_term: bool = True) -> SteerResult:
    """Clean and steered continuations of `prompt` (the whole generation; `generate_rows` streams it)."""
    last = None
    for last in generate_rows(lm, dictionary, hook, prompt, [None, edit], n_new, sampling, stats, error_term):
        if last.step == 0:
            kl = last.kl_first[1]
    return SteerResult(prompt, edit.describe(), last.texts[0], last.texts[1], kl, last.step + 1, last.seconds)


def sweep_edits(feature: int, strengths, relative: bool = True, positions="all") -> list[Edit]:
    vals = [float(v) for v in strengths]
    if len(vals) != 5:
        raise UserError(f"a sweep takes 5 strengths, not {len(vals)}")
    return [Edit((int(feature),), "steer", v, relative=relative, positions=positions) for v in vals]


def sweep(lm, dictionary, hook: str, prompt: str, feature: int, strengths=SWEEP_MULTIPLES, relative: bool = True,
          n_new: int = 20, sampling: Sampling = Sampling(), stats: FeatureStats | None = None,
          error_term: bool = True) -> pd.DataFrame:
    """DataFrame[strength, kl_first, text]: the clean row (strength 0) then one row per strength."""
    edits = sweep_edits(feature, strengths, relative)
    last = None
    for last in generate_rows(lm, dictionary, hook, prompt, [None, *edits], n_new, sampling, stats, error_term):
        if last.step == 0:
            kl = last.kl_first
    return pd.DataFrame({"strength": [0.0] + [e.value for e in edits], "kl_first": np.asarray(kl, dtype=np.float64),
                         "text": last.texts})
