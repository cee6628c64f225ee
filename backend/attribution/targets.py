"""What an attribution explains: a prompt, its continuations packed in one row, and a scalar metric of them.

    row      = [BOS] + prompt + choice_1 + ... + choice_k          # one packed row, tree mask (tasks/scoring.py)
    L_j      = sum_{t in choice j} log p(ids[t] | prompt, choice j's earlier tokens)    # [k] summed log-probs
    metric   = "logprob":  L_0                                     # a target continuation (a next token or more)
               "diff":     L_0 - L_1                               # target against a contrast (two answer choices)
               "choice":   L_y - logsumexp_j L_j = log p(y | x)    # the correct choice, normalised over the choices

"choice" is the task suite's scoring: p(y|x) = softmax_j(L_j)[y], the probability of the correct choice among the
item's choices. Its log is what gradients are taken of; since d p = p d log p, the ranking of features or tokens by
attribution is the same for p and log p, and comprehensiveness/sufficiency are measured in p itself (faithfulness).
Only the prompt's positions are attributed or edited; the choices are the output being explained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from backend.common.errors import UserError
from backend.tasks.scoring import EncodedItem, pack, tree_mask

METRICS = ("logprob", "diff", "choice")


@dataclass(frozen=True)
class Target:
    """Which scalar of the choices' summed log-probabilities L [R, k] is explained."""

    kind: str = "choice"  # logprob | diff | choice (see the module docstring)
    index: int = 0  # the target continuation (choice: the correct choice)

    def __post_init__(self):
        if self.kind not in METRICS:
            raise ValueError(f"unknown metric {self.kind!r}")

    def metric(self, L: torch.Tensor) -> torch.Tensor:
        """[R] the metric of each row of L [R, k]."""
        if self.kind == "logprob":
            return L[:, self.index]
        if self.kind == "diff":
            return L[:, 0] - L[:, 1]
        return L[:, self.index] - torch.logsumexp(L, dim=-1)

    def describe(self) -> str:
        return {"logprob": "log p(target)", "diff": "log p(target) - log p(contrast)",
                "choice": "log p(correct choice | x), normalised over the choices"}[self.kind]


@dataclass
class Packed:
    """One item as one row: the prompt, then every choice; where the choices' tokens are predicted."""

    ids: torch.Tensor  # [T] int64 token ids
    pos: torch.Tensor  # [T] int64 position ids (each choice restarts after the prompt)
    seg: torch.Tensor  # [T] int64 segment: 0 the prompt, j + 1 choice j
    n_prompt: int  # P: positions 0 .. P-1 are the prompt (BOS first)
    n_choices: int
    pred_idx: torch.Tensor  # [S] row positions whose next-token distributions score a choice token
    pred_tok: torch.Tensor  # [S] the choice token each predicts
    owner: torch.Tensor  # [S] which choice it belongs to

    @property
    def T(self) -> int:
        return int(self.ids.shape[0])

    def mask(self, dtype: torch.dtype, rows: int = 1) -> torch.Tensor:
        """Additive tree attention mask [rows, 1, T, T]."""
        return tree_mask(self.seg[None].expand(rows, -1), dtype)


def pack_item(item: EncodedItem) -> Packed:
    """The packed row of an encoded item (`backend.tasks.scoring.encode_item` checked its tokens and length)."""
    ids, pos, seg, predictors = pack(item)
    pred_idx, pred_tok, owner = [], [], []
    for j, (pred, choice) in enumerate(zip(predictors, item.choices)):
        pred_idx += pred
        pred_tok += choice
        owner += [j] * len(pred)
    as_long = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return Packed(as_long(ids), as_long(pos), as_long(seg), len(item.prompt), len(item.choices), as_long(pred_idx),
                  as_long(pred_tok), as_long(owner))


def choice_logprobs(model: torch.nn.Module, hidden: torch.Tensor, packed: Packed) -> torch.Tensor:
    """Summed log-probabilities L [R, k] of every choice from final-norm hidden states [R, T, d] (differentiable)."""
    dev = hidden.device
    h = hidden[:, packed.pred_idx.to(dev)]  # [R, S, d]
    logits = model.get_output_embeddings()(h).float()  # [R, S, vocab]
    lp = torch.log_softmax(logits, dim=-1).gather(-1, packed.pred_tok.to(dev)[None, :, None].expand(h.shape[0], -1, 1))[..., 0]
    out = torch.zeros(h.shape[0], packed.n_choices, dtype=lp.dtype, device=dev)
    return out.index_add(1, packed.owner.to(dev), lp)  # [R, k]


def continuation_ids(tokenizer, text: str, what: str, vocab_size: int) -> list[int]:
    """Token ids of a target or contrast continuation; empty, unknown-token or out-of-vocabulary is a UserError."""
    ids = [int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
    if not ids:
        raise UserError(f"the {what} {text.strip()!r} has no tokens: type a word or a token")
    unk = getattr(tokenizer, "unk_token_id", None)
    bad = [t for t in ids if (unk is not None and t == unk) or not 0 <= t < vocab_size]
    if bad:
        raise UserError(f"the {what} {text.strip()!r} is not in the model's vocabulary"
                        + (" (the tokenizer maps it to its unknown token)" if bad[0] == unk else f" (token id {bad[0]})"))
    return ids


def prompt_positions(packed: Packed, special_ids: set[int]) -> torch.Tensor:
    """[P] bool: the prompt positions that are attributed and edited (not position 0, not special tokens)."""
    ids = packed.ids[:packed.n_prompt]
    keep = ~torch.isin(ids, torch.tensor(sorted(special_ids), dtype=torch.long)) if special_ids else torch.ones_like(ids, dtype=torch.bool)
    keep[0] = False
    return keep
