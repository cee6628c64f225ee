"""Log-likelihood of each choice after its prompt, in batched forward passes.

    ids(row)   = [BOS] + tok(prompt) + tok(continuation)           # one row per (item, choice)
    logp(row)  = sum_{t in continuation} log p(ids[t] | ids[<t])   # summed over the choice's tokens
    pred       = argmax_choice logp            (summed, the BIG-bench / lm-eval `acc`)
    pred_norm  = argmax_choice logp / n_tokens (length-normalised, per token)

BOS is prepended as the activation cache does (contexts.bos_id), unless the prompt already starts
with it (a chat template). Rows are sorted by length and packed into batches of at most
`batch_tokens` padded tokens, right-padded so positions need no shifting; only the hidden states
that predict choice tokens go through the unembedding, which saves the [B, T, vocab] logits.
With `act_fn`, the activation at `hook` is replaced by act_fn(act) in every pass (the splice).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from backend.analysis.prompt_inspect import HOOK_LOCK
from backend.common.errors import UserError
from backend.corpus.contexts import bos_id
from backend.model.hooks import HookPoint, splice


@dataclass
class EncodedItem:
    prompt: list[int]  # token ids of the prompt, BOS included
    choices: list[list[int]]  # token ids of each continuation


@dataclass
class ChoiceScores:
    logprob: np.ndarray  # [n_choices] summed log-probability of each continuation (nats)
    n_tokens: np.ndarray  # [n_choices] tokens in each continuation

    @property
    def pred(self) -> int:
        return int(np.argmax(self.logprob))

    @property
    def pred_norm(self) -> int:
        return int(np.argmax(self.logprob / self.n_tokens))


def context_limit(model: torch.nn.Module) -> int:
    """The longest sequence the model was built for (max_position_embeddings or n_positions)."""
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if getattr(cfg, key, None):
            return int(getattr(cfg, key))
    return 2048


def encode_item(tokenizer, prompt: str, continuations: list[str], *, where: str, vocab_size: int, max_len: int) -> EncodedItem:
    """Token ids of one item; a choice with no token or a token outside the model's vocabulary, and an
    item longer than `max_len`, are one-line UserErrors naming `where` (task and item)."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    bos = bos_id(tokenizer)
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    unk = getattr(tokenizer, "unk_token_id", None)
    conts = []
    for text in continuations:
        c = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not c:
            raise UserError(f"{where}: choice {text.strip()!r} has no tokens")
        bad = [t for t in c if (unk is not None and t == unk) or not 0 <= t < vocab_size]
        if bad:
            raise UserError(f"{where}: choice {text.strip()!r} has a token not in the model's vocabulary "
                            f"(id {bad[0]}{' = unknown token' if bad[0] == unk else f', vocabulary size {vocab_size}'})")
        conts.append(c)
    if any(not 0 <= t < vocab_size for t in ids):
        raise UserError(f"{where}: the prompt has a token id outside the model's vocabulary (size {vocab_size})")
    longest = len(ids) + max(len(c) for c in conts)
    if longest > max_len:
        raise UserError(f"{where}: {longest} tokens, more than the model's context length {max_len}")
    return EncodedItem(ids, conts)


def _batches(lengths: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Row indices grouped longest first so that rows x longest <= batch_tokens (at least one row each)."""
    order = np.argsort(-lengths, kind="stable")
    out, start = [], 0
    while start < len(order):
        longest = int(lengths[order[start]])
        n = max(1, batch_tokens // max(longest, 1))
        out.append(order[start:start + n])
        start += n
    return out


def _choice_logprobs(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                     starts: list[int], targets: list[list[int]]) -> list[float]:
    """Summed log p of targets[r] at positions starts[r].. of row r (one forward pass, ids [B, T])."""
    hidden = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state  # [B, T, d]
    rows = torch.cat([torch.full((len(t),), r) for r, t in enumerate(targets)])
    pos = torch.cat([torch.arange(s - 1, s - 1 + len(t)) for s, t in zip(starts, targets)])  # the states predicting them
    tgt = torch.tensor([x for t in targets for x in t], device=ids.device)
    logits = model.get_output_embeddings()(hidden[rows.to(ids.device), pos.to(ids.device)]).float()  # [n_tgt, vocab]
    lp = torch.log_softmax(logits, dim=-1).gather(-1, tgt[:, None])[:, 0]
    sums = torch.zeros(len(targets), dtype=torch.float64, device=ids.device).index_add_(0, rows.to(ids.device), lp.double())
    return sums.cpu().tolist()


def _check_plain_head(model: torch.nn.Module) -> None:
    cfg = model.config
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None) not in (None, 1, 1.0):
        raise UserError(f"{type(model).__name__} scales its logits after the unembedding; task scoring does not support it yet")


@torch.no_grad()
def score_items(model: torch.nn.Module, items: list[EncodedItem], *, hook: HookPoint | None = None, act_fn=None,
                batch_tokens: int = 2048, pad_id: int = 0, progress=None) -> list[ChoiceScores]:
    """ChoiceScores of every item; `progress(n_rows)` is called after each batch (e.g. a tqdm update)."""
    _check_plain_head(model)
    dev = next(model.parameters()).device
    rows = [(i, j) for i, it in enumerate(items) for j in range(len(it.choices))]
    lengths = np.array([len(items[i].prompt) + len(items[i].choices[j]) for i, j in rows])
    out = [np.zeros(len(it.choices)) for it in items]
    for batch in _batches(lengths, batch_tokens):
        T = int(lengths[batch].max())
        ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), T), dtype=torch.long)
        starts, targets = [], []
        for r, k in enumerate(batch):
            i, j = rows[k]
            seq = items[i].prompt + items[i].choices[j]
            ids[r, :len(seq)] = torch.tensor(seq)
            mask[r, :len(seq)] = 1
            starts.append(len(items[i].prompt))
            targets.append(items[i].choices[j])
        with HOOK_LOCK:
            if act_fn is None:
                sums = _choice_logprobs(model, ids.to(dev), mask.to(dev), starts, targets)
            else:
                with splice(model, hook, act_fn):
                    sums = _choice_logprobs(model, ids.to(dev), mask.to(dev), starts, targets)
        for k, s in zip(batch, sums):
            i, j = rows[k]
            out[i][j] = s
        if progress is not None:
            progress(len(batch))
    return [ChoiceScores(lp, np.array([len(c) for c in it.choices])) for lp, it in zip(out, items)]
