"""Run a typed prompt through the model and a dictionary: which features fire on which token.

    ids   = [BOS] + tokenizer(text)            # [T], BOS only when the model has one (as the cache does)
    acts  = capture(model, hook, ids)          # [1, T, d_in], forward stopped after the hooked module
    f     = dictionary.encode(acts[0])         # [T, d_sae]

Position 0 is excluded from the feature results, as it is from training and analysis: with a BOS
token it is the BOS itself, whose activation is an outlier that no feature is trained to explain.
The prompt inspector page calls `inspect_prompt` with a model and dictionary it keeps cached, so
only this forward pass runs per prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from backend.common.errors import UserError
from backend.corpus.contexts import bos_id, token_strings
from backend.model import hooks
from backend.model.forward import HOOK_LOCK  # the one lock for passes on the shared model (~0.1 s per prompt on a CPU)


@dataclass
class PromptInspection:
    """Everything the inspector draws for one prompt."""

    tokens: list[str]  # [T] decoded text of each token, BOS included at position 0 when prepended
    token_ids: list[int]  # [T]
    top: pd.DataFrame  # [pos, token_str, feature, activation, rank]: top_k features of each token, pos >= 1
    active: pd.DataFrame  # [pos, feature, activation]: every non-zero activation (sparse), pos >= 1
    has_bos: bool  # position 0 is a BOS the tokenizer prepended
    truncated: bool  # the prompt was cut to max_tokens
    seconds: float  # wall time of tokenise + forward + encode

    def feature_acts(self, feature: int) -> np.ndarray:
        """Activation of one feature on every token [T] (0 where it does not fire and at position 0)."""
        out = np.zeros(len(self.tokens), dtype=np.float32)
        rows = self.active[self.active["feature"] == feature]
        out[rows["pos"].to_numpy()] = rows["activation"].to_numpy()
        return out

    def feature_summary(self) -> pd.DataFrame:
        """[feature, max_activation, n_tokens, peak_pos]: features of the prompt by their largest activation."""
        if self.active.empty:
            return pd.DataFrame({"feature": pd.Series(dtype="int64"), "max_activation": pd.Series(dtype="float32"),
                                 "n_tokens": pd.Series(dtype="int64"), "peak_pos": pd.Series(dtype="int64")})
        a = self.active.sort_values("activation", ascending=False)
        g = a.groupby("feature", sort=False)
        out = pd.DataFrame({
            "max_activation": g["activation"].first(),
            "n_tokens": g.size(),
            "peak_pos": g["pos"].first(),
        }).reset_index()
        return out.sort_values(["max_activation", "feature"], ascending=[False, True], ignore_index=True)


def tokenize_prompt(tokenizer, text: str, max_tokens: int) -> tuple[list[int], bool, bool]:
    """(ids with BOS prepended like the cache does, has_bos, truncated)."""
    if not text or not text.strip():
        raise UserError("the prompt is empty: type or paste some text")
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = bos_id(tokenizer)
    has_bos = bos is not None
    if has_bos:
        ids = [int(bos)] + ids
    truncated = len(ids) > max_tokens
    ids = ids[:max_tokens]
    if len(ids) < 2:
        raise UserError("the prompt gives no token after position 0 (which is left out); type a longer text")
    return ids, has_bos, truncated


@torch.no_grad()
def inspect_prompt(lm, dictionary, hook_name: str, text: str, top_k: int = 5, max_tokens: int = 512) -> PromptInspection:
    """Top `top_k` features of every token of `text` (a `LoadedModel` and a `Dictionary`)."""
    import time

    t0 = time.perf_counter()
    limit = getattr(lm.model.config, "max_position_embeddings", None) or max_tokens
    ids, has_bos, truncated = tokenize_prompt(lm.tokenizer, text, min(max_tokens, int(limit)))
    hp = hooks.parse_hook(hook_name, hooks.n_layers(lm.model))
    if dictionary.d_in != lm.model.config.hidden_size:
        raise UserError(f"dictionary d_in {dictionary.d_in} does not match the model's width {lm.model.config.hidden_size}")
    input_ids = torch.tensor([ids], dtype=torch.long, device=lm.device)
    with HOOK_LOCK:
        acts = hooks.capture(lm.model, hp, input_ids)[0]  # [T, d_in]
    dev = next(iter(dictionary.parameters()), torch.empty(0)).device
    f = dictionary.encode(acts.float().to(dev)).float().cpu()  # [T, d_sae]
    f[0] = 0.0  # position 0 is excluded, as in training and analysis

    T = f.shape[0]
    k = min(top_k, f.shape[1])
    vals, idx = f.topk(k, dim=1)  # [T, k]
    pos = np.repeat(np.arange(T), k)
    strs = token_strings(lm.tokenizer, np.asarray(ids))
    top = pd.DataFrame({
        "pos": pos,
        "token_str": np.asarray(strs, dtype=object)[pos],
        "feature": idx.reshape(-1).numpy().astype(np.int64),
        "activation": vals.reshape(-1).numpy().astype(np.float32),
        "rank": np.tile(np.arange(1, k + 1), T),
    })
    top = top[(top["pos"] > 0) & (top["activation"] > 0)].reset_index(drop=True)

    nz = f.nonzero()  # [n, 2] (pos, feature)
    active = pd.DataFrame({
        "pos": nz[:, 0].numpy().astype(np.int64),
        "feature": nz[:, 1].numpy().astype(np.int64),
        "activation": f[nz[:, 0], nz[:, 1]].numpy().astype(np.float32),
    })
    return PromptInspection(tokens=strs, token_ids=ids, top=top, active=active, has_bos=has_bos,
                            truncated=truncated, seconds=time.perf_counter() - t0)
