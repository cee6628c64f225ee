"""Checks on what a user hands an intervention: the dictionary against the model and hook, and the text.

Each bad input is one `UserError` with a one-line message (the CLI prints it and exits 2; the app shows it).
"""

from __future__ import annotations

from backend.common.errors import UserError
from backend.corpus.contexts import bos_id
from backend.model import hooks

MAX_PROMPT_TOKENS = 512  # a prompt longer than this is refused, not cut: an intervention on half a text misleads
MAX_NEW_TOKENS = 256  # generation length cap: the UI streams it, a CPU writes ~20 tokens/s


def check_dictionary(dictionary, model, hook: str) -> hooks.HookPoint:
    """The hook point, after checking the dictionary fits the model and was made at this hook."""
    hp = hooks.parse_hook(hook, hooks.n_layers(model))
    width = int(model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd)
    if int(dictionary.d_in) != width:
        raise UserError(f"the dictionary reads {dictionary.d_in}-wide activations but the model's width is {width}")
    made_at = (getattr(dictionary, "cfg", None) or {}).get("metadata", {}).get("hook_name")
    if made_at and made_at != hp.name:
        raise UserError(f"the dictionary was trained at {made_at}, not at {hp.name}: it cannot be spliced there")
    return hp


def special_ids(tokenizer) -> set[int]:
    return {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])}


def tokenize_text(tokenizer, text: str, max_tokens: int = MAX_PROMPT_TOKENS) -> list[int]:
    """Token ids of `text` with the BOS prepended as the run's contexts have it; empty or over-long is an error."""
    if not isinstance(text, str) or not text.strip():
        raise UserError("the prompt is empty: type or paste some text")
    ids = [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
    bos = bos_id(tokenizer)
    if bos is not None:
        ids = [int(bos)] + ids
    if len(ids) > max_tokens:
        raise UserError(f"the prompt has {len(ids)} tokens; at most {max_tokens} are allowed: shorten it")
    if len(ids) < 2:
        raise UserError("the prompt gives no token after position 0 (which is left alone); type a longer text")
    return ids


def check_new_tokens(n: int, n_prompt: int, model) -> int:
    try:
        n = int(n)
    except (TypeError, ValueError):
        raise UserError(f"the number of new tokens must be an integer, not {n!r}") from None
    if not 1 <= n <= MAX_NEW_TOKENS:
        raise UserError(f"generate between 1 and {MAX_NEW_TOKENS} new tokens, not {n}")
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if limit and n_prompt + n > int(limit):
        raise UserError(f"prompt ({n_prompt} tokens) + {n} new tokens exceed the model's {limit}-token context")
    return n
