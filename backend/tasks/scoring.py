"""Log-likelihood of each choice after its prompt, in batched forward passes.

    ids(row)   = [BOS] + tok(prompt) + tok(continuation)           # one row per (item, choice)
    logp(row)  = sum_{t in continuation} log p(ids[t] | ids[<t])   # summed over the choice's tokens
    pred       = argmax_choice logp            (summed, the BIG-bench / lm-eval `acc`)
    pred_norm  = argmax_choice logp / n_tokens (length-normalised, per token)

BOS is prepended as the activation cache does (contexts.bos_id), unless the prompt already starts
with it (a chat template). The prompt is run once per item, not once per choice: an item is one
row [prompt, choice_1, ..., choice_k] with a tree attention mask (each choice sees the prompt and
its own earlier tokens, never another choice) and position ids that restart after the prompt for
every choice, so each choice is scored exactly as in its own sequence (tests check this against
plain forward passes). Rows are sorted by length into batches of at most `batch_tokens` padded
tokens; only the hidden states that predict choice tokens go through the unembedding, which
saves the [B, T, vocab] logits. With `act_fn`, the activation at `hook` is replaced by
act_fn(act) in every pass (the splice; position 0 is the BOS of every row).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from backend.common.errors import UserError
from backend.corpus.contexts import bos_id
from backend.model.forward import HOOK_LOCK
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


def pack(item: EncodedItem) -> tuple[list[int], list[int], list[int], list[list[int]]]:
    """One row for an item: prompt then every choice; (ids, positions, segments, predictor index lists).

    segment 0 is the prompt, j + 1 choice j; choice j's positions restart after the prompt, and
    predictors[j] are the row indices whose hidden states predict its tokens (the prompt's last
    token, then the choice's own tokens but its last).
    """
    P = len(item.prompt)
    ids, pos, seg, predictors = list(item.prompt), list(range(P)), [0] * P, []
    for j, c in enumerate(item.choices):
        start = len(ids)
        predictors.append([P - 1] + list(range(start, start + len(c) - 1)))
        ids += c
        pos += range(P, P + len(c))
        seg += [j + 1] * len(c)
    return ids, pos, seg, predictors


def tree_mask(seg: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention mask [B, 1, T, T] from segments [B, T] (-1 = padding): a token sees the
    earlier tokens of the prompt (segment 0) and of its own segment; padding sees only itself."""
    T = seg.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=seg.device).tril()  # [T, T] key <= query
    q, k = seg[:, :, None], seg[:, None, :]  # [B, T, 1], [B, 1, T]
    allowed = causal & (k == 0) & (q >= 0) | causal & (k == q)
    allowed |= torch.eye(T, dtype=torch.bool, device=seg.device)
    return torch.zeros(allowed.shape, dtype=dtype, device=seg.device).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def _packed_logprobs(model: torch.nn.Module, items: list[EncodedItem], pad_id: int) -> list[np.ndarray]:
    """Summed log p of every choice of every item, the items packed one per row (one forward pass)."""
    dev = next(model.parameters()).device
    packed = [pack(it) for it in items]
    T = max(len(p[0]) for p in packed)
    ids = torch.full((len(items), T), pad_id, dtype=torch.long)
    pos = torch.zeros((len(items), T), dtype=torch.long)
    seg = torch.full((len(items), T), -1, dtype=torch.long)
    b_idx, t_idx, tgt, owner = [], [], [], []  # one entry per scored token
    for b, ((r_ids, r_pos, r_seg, predictors), it) in enumerate(zip(packed, items)):
        n = len(r_ids)
        ids[b, :n], pos[b, :n], seg[b, :n] = torch.tensor(r_ids), torch.tensor(r_pos), torch.tensor(r_seg)
        for j, (pred, choice) in enumerate(zip(predictors, it.choices)):
            b_idx += [b] * len(pred)
            t_idx += pred
            tgt += choice
            owner += [(b, j)] * len(pred)
    mask = tree_mask(seg, next(model.parameters()).dtype).to(dev)
    hidden = model.base_model(input_ids=ids.to(dev), attention_mask=mask, position_ids=pos.to(dev),
                              use_cache=False).last_hidden_state  # [B, T, d]
    logits = model.get_output_embeddings()(hidden[torch.tensor(b_idx), torch.tensor(t_idx)]).float()  # [n_tgt, vocab]
    lp = torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(tgt, device=dev)[:, None])[:, 0]
    out = [np.zeros(len(it.choices)) for it in items]
    for (b, j), v in zip(owner, lp.double().cpu().numpy()):
        out[b][j] += v
    return out


def _check_plain_head(model: torch.nn.Module) -> None:
    cfg = model.config
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None) not in (None, 1, 1.0):
        raise UserError(f"{type(model).__name__} scales its logits after the unembedding; task scoring does not support it yet")


@torch.no_grad()
def score_items(model: torch.nn.Module, items: list[EncodedItem], *, hook: HookPoint | None = None, act_fn=None,
                batch_tokens: int = 2048, pad_id: int = 0, progress=None) -> list[ChoiceScores]:
    """ChoiceScores of every item; `progress(n_choices)` is called after each batch (e.g. a tqdm update)."""
    _check_plain_head(model)
    lengths = np.array([len(it.prompt) + sum(len(c) for c in it.choices) for it in items])
    out: list[np.ndarray] = [np.zeros(0)] * len(items)
    for batch in _batches(lengths, batch_tokens):
        chunk = [items[i] for i in batch]
        with HOOK_LOCK:
            if act_fn is None:
                sums = _packed_logprobs(model, chunk, pad_id)
            else:
                with splice(model, hook, act_fn):
                    sums = _packed_logprobs(model, chunk, pad_id)
        for i, s in zip(batch, sums):
            out[i] = s
        if progress is not None:
            progress(sum(len(it.choices) for it in chunk))
    return [ChoiceScores(lp, np.array([len(c) for c in it.choices])) for lp, it in zip(out, items)]
