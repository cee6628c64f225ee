"""Explanations of features: a deterministic summary that always works, and an LLM explainer.

Both read only what a feature page shows: the analysed contexts (`contexts.parquet`: top and quantile
groups) and the logit effects in `features.parquet`. The held-out windows of `backend.labels.heldout` are
never shown to an explainer; `backend.labels.score` tests the explanations on them.

Deterministic (`deterministic_explanation`): the tokens the feature peaks on (a token class such as
digits or punctuation when most peaks share one), the token most often just before the peak, and the
tokens it promotes. Offline, instant, reproducible.

LLM (`llm_explanation_prompt` + a `backend.labels.llm` back-end): the interpreter prompt of Bills et al. 2023
("Language models can explain neurons in language models") as EleutherAI's delphi uses it (Paulo et
al. 2024, "Automatically interpreting millions of features in LLMs"): top activating contexts with the
firing tokens marked `<<like this>>` and their activations, plus the top promoted logits, asking for
one sentence.

`explain_features` runs either over many features in batches, caches LLM replies on disk
(`dictionaries/<d>/explain_cache/`), and appends each explanation to the label store as a new version
with source `auto-deterministic` or `auto-llm`. A feature whose current label is human-written is
skipped unless `overwrite_human`, and an explanation identical to the current label is not saved again,
so a rerun adds nothing.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from tqdm.auto import tqdm

from backend.common.errors import UserError
from backend.common.layout import FEATURES
from backend.labels import heldout
from backend.labels.llm import LLMConfig
from backend.store import query as store

Explainer = Literal["deterministic", "local-llm", "openai"]
EXPLAINERS = get_args(Explainer)
CACHE_DIR = "explain_cache"
EXPLAIN_GROUPS = ("top", "q1", "q2", "q3", "q4", "q5")  # every analysed context: peaks and the activation range
LLM_EXAMPLES = 8  # contexts shown to an LLM (the strongest ones)
LLM_BEFORE, LLM_AFTER = 10, 3  # shorter windows than the page shows: the prompt stays ~400 tokens, which a
# 135M model on 2 CPU cores reads in about a second (a 775-token prompt took 4x longer)
LLM_MAX_TOKENS = 32  # one sentence
LLM_PREFILL = "This feature fires on"  # a local model continues this (SmolLM2-135M otherwise echoes the instructions)

SYSTEM_PROMPT = (
    "You are a meticulous AI researcher studying the features of a language model. Each feature fires on some "
    "tokens of a text. You are shown text excerpts where the feature fires; the tokens it fires on are marked "
    "<<like this>>, followed by the activation values. You are also shown the tokens the feature makes more "
    "likely to come next. Say in one short sentence what the feature detects: the common pattern of the marked "
    "tokens and their context. Answer with the explanation only, no preamble."
)


# --------------------------------------------------------------------------- token classes

@dataclass
class ExplainConfig(LLMConfig):
    """What `python -m backend explain` explains, and with what (the defaults of `explain_features` too)."""

    features: list[int] | None = None
    """Feature ids to explain; None = every alive feature (or the --top ones)."""
    top: int | None = None
    """Explain only the N most frequently firing alive features; None = no such limit."""
    explainer: Explainer = "deterministic"
    """deterministic (offline, instant, reproducible: so explaining needs no model by default) | local-llm (a local
    HF instruct model) | openai (any OpenAI-compatible endpoint)."""
    author: str = "explainer"
    """Author recorded with each label version, so machine labels are told from people's."""
    batch_size: int = 8
    """Prompts per local generation batch."""
    overwrite_human: bool = False
    """Also explain features whose current label is human-written (off: people's labels are kept)."""
    index: bool = True
    """Refresh the label-search embeddings after saving, so the app need not (~1-2 min for 4.6k labels on 2 CPU
    cores)."""

    def __post_init__(self):
        if self.features is not None and self.top is not None:
            raise UserError("pass --features or --top, not both")


def _show(tok: str) -> str:
    """A token as an explanation quotes it: a plain word or number bare, anything else in quotes with
    whitespace made visible (bare text reads better and embeds closer to the contexts it describes)."""
    t = tok.strip()
    if t and t.replace("_", "").isalnum():
        return t
    return '"' + tok.replace("\n", "\\n").replace("\t", "\\t") + '"'


def _shown(tokens: list[str], k: int) -> str:
    """The first k distinct renderings of tokens, comma-separated (" 9" and "9" both show as 9)."""
    out: list[str] = []
    for t in tokens:
        s = _show(t)
        if s not in out:
            out.append(s)
    return ", ".join(out[:k])


TOKEN_CLASSES = [  # (name, predicate on the stripped token text, phrase), first match wins
    ("digits", lambda s: s.isdigit(), "digits in numbers"),
    ("newline", lambda s: s == "", "whitespace and line breaks"),
    ("punctuation", lambda s: bool(s) and all(not c.isalnum() for c in s), "punctuation"),
    ("capitalised", lambda s: s[:1].isupper() and s[1:].islower(), "capitalised words"),
]


def _token_class(tokens: list[str]) -> str | None:
    """The class most peak tokens share (>= 80% of them), if any."""
    if not tokens:
        return None
    for name, pred, _ in TOKEN_CLASSES:
        if sum(pred(t.strip()) for t in tokens) >= 0.8 * len(tokens):
            return name
    return None


def deterministic_explanation(row: dict, contexts: list[dict], max_tokens: int = 4) -> str:
    """One line from the feature's contexts (dicts as `store.context` returns) and its logit effects (features row).

    "<what it fires on>[; often after X][; promotes A, B, C]", e.g. `digits in numbers (9, 4, 1); promotes 0, 1, 2`."""
    peaks = [c["tokens"][c["peak"]] for c in contexts if c.get("tokens")]
    if not peaks:
        return "never fires in the analysed corpus"
    counts = Counter(peaks)
    ranked = [t for t, _ in counts.most_common()]
    cls = _token_class(peaks)
    top, top_n = counts.most_common(1)[0]
    if cls is not None:
        phrase = dict((n, p) for n, _, p in TOKEN_CLASSES)[cls]
        what = f"{phrase} ({_shown(ranked, max_tokens)})"
    elif top_n >= 0.6 * len(peaks):
        what = f"the token {_show(top)}" if _show(top).startswith('"') else f'the token "{_show(top)}"'
        others = _shown([t for t in ranked if _show(t) != _show(top)], 2)
        if others:
            what += f" (also {others})"
    else:
        # a word stem shared by most peaks ("import", " imports", "Import")
        stems = Counter(t.strip().lower()[:5] for t in peaks if len(t.strip()) >= 3)
        stem, stem_n = stems.most_common(1)[0] if stems else ("", 0)
        if stem and stem_n >= 0.6 * len(peaks):
            what = f"words starting with {_show(stem)} ({_shown(ranked, max_tokens)})"
        else:
            what = f"tokens such as {_shown(ranked, max_tokens)}"
    parts = [what]
    before = Counter(c["tokens"][c["peak"] - 1] for c in contexts if c.get("tokens") and c["peak"] > 0)
    if before:
        prev, prev_n = before.most_common(1)[0]
        same_class = cls is not None and _token_class([prev]) == cls  # "1" before "9" is just a longer number
        if prev_n >= 0.3 * len(peaks) and prev.strip() != "" and not same_class:
            parts.append(f"often after {_show(prev)}")
    promoted = [t for t in (row.get("top_logit_tokens") or [])[:3] if str(t).strip()]
    if promoted:
        parts.append("promotes " + _shown(promoted, 3))
    return "; ".join(parts)


# --------------------------------------------------------------------------- LLM prompt

def _marked(ctx: dict) -> str:
    """The context text with every firing token wrapped in << >> (adjacent firing tokens share one pair)."""
    out, open_ = [], False
    for tok, a in zip(ctx["tokens"], ctx["acts"]):
        if a > 0 and not open_:
            out.append("<<")
            open_ = True
        elif a <= 0 and open_:
            out.append(">>")
            open_ = False
        out.append(tok)
    if open_:
        out.append(">>")
    return "".join(out).replace("\n", "\\n")


def _trim(ctx: dict, before: int, after: int) -> dict:
    lo, hi = max(0, ctx["peak"] - before), ctx["peak"] + after + 1
    return {**ctx, "tokens": ctx["tokens"][lo:hi], "acts": ctx["acts"][lo:hi], "peak": ctx["peak"] - lo}


def llm_explanation_prompt(row: dict, contexts: list[dict], n_examples: int = LLM_EXAMPLES) -> list[dict]:
    """Chat messages asking for a one-sentence explanation (the delphi/Bills et al. interpreter prompt)."""
    lines = []
    for i, c in enumerate(contexts[:n_examples], 1):
        c = _trim(c, LLM_BEFORE, LLM_AFTER)
        firing = [(t, a) for t, a in zip(c["tokens"], c["acts"]) if a > 0]
        acts = ", ".join(f"{_show(t)} {a:.2f}" for t, a in sorted(firing, key=lambda x: -x[1])[:3])
        lines.append(f"Example {i}: {_marked(c)}\nActivations: {acts}")
    promoted = _shown(row.get("top_logit_tokens") or [], 6)
    user = "\n\n".join(lines) + f"\n\nTop promoted tokens: {promoted}\n\nExplanation:"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def clean_reply(text: str, limit: int = 200) -> str:
    """The first sentence of a reply, without a leading "Explanation:" or quotes; empty replies say so."""
    t = str(text or "").strip()
    t = re.sub(r"^(explanation|answer)\s*:\s*", "", t, flags=re.I).strip().strip('"').strip()
    t = t.splitlines()[0].strip() if t else ""
    m = re.search(r"(?<=[.!?])\s", t)
    if m:
        t = t[:m.start()]
    if len(t) > limit:
        t = t[:limit].rsplit(" ", 1)[0] + "..."
    return t or "(the model gave no explanation)"


# --------------------------------------------------------------------------- running over features

def _feature_rows(run_dir, dict_name: str, features: list[int] | None) -> list[dict]:
    """features.parquet rows (feature, n_fires, top_logit_tokens) of the requested or all features, ordered by id."""
    path = store.store_file(run_dir, dict_name, FEATURES)
    df = store.query_df("SELECT feature, n_fires, top_logit_tokens FROM read_parquet(?) ORDER BY feature", [path])
    if features is not None:
        n = len(df)
        bad = [f for f in features if not 0 <= int(f) < n]
        if bad:
            raise UserError(f"no feature {bad[0]} (this dictionary has features 0..{n - 1})")
        df = df.set_index("feature").loc[sorted(set(int(f) for f in features))].reset_index()
    return [{"feature": int(r.feature), "n_fires": int(r.n_fires),
             "top_logit_tokens": [str(t) for t in (r.top_logit_tokens if r.top_logit_tokens is not None else [])]}
            for r in df.itertuples(index=False)]


def select_features(run_dir, dict_name: str, features: list[int] | None = None, top: int | None = None) -> list[int]:
    """Requested features, or the `top` most frequently firing alive ones, or every alive feature."""
    if features is not None:
        return [r["feature"] for r in _feature_rows(run_dir, dict_name, features)]
    rows = [r for r in _feature_rows(run_dir, dict_name, None) if r["n_fires"] > 0]
    if top is not None:
        if int(top) < 1:
            raise UserError(f"--top must be >= 1, not {top}")
        rows = sorted(rows, key=lambda r: (-r["n_fires"], r["feature"]))[: int(top)]
    return sorted(r["feature"] for r in rows)


def explain_features(run_dir: str | Path, dict_name: str, features: list[int] | None = None, top: int | None = None,
                     explainer: str = ExplainConfig.explainer, author: str = ExplainConfig.author,
                     llm_model: str | None = None, llm_base_url: str | None = None,
                     llm_api_key_env: str | None = None, device: str = "auto",
                     batch_size: int = ExplainConfig.batch_size, overwrite_human: bool = False, progress: bool = True,
                     chat=None,
                     save: bool = True) -> dict:
    """Explain features and append the explanations to the label store; returns a summary dict
    (n_features, n_saved, n_unchanged, n_skipped_human, n_dead, seconds, explanations {feature: text})."""
    from backend.common.layout import dict_dir
    from backend.labels.llm import make_chat
    from backend.store.label_store import LabelStore

    if explainer not in EXPLAINERS:
        raise UserError(f"unknown explainer {explainer!r}; choose one of {', '.join(EXPLAINERS)}")
    t0 = time.perf_counter()
    ids = select_features(run_dir, dict_name, features, top)
    rows = {r["feature"]: r for r in _feature_rows(run_dir, dict_name, ids)}
    labels = LabelStore(run_dir)
    cur = labels.current(dict_name, ids) if labels.exists() else None
    current = {} if cur is None else {int(f): (str(t), str(s)) for f, t, s in zip(cur["feature"], cur["text"], cur["source"])}
    skipped_human = [f for f in ids if not overwrite_human and current.get(f, ("", ""))[1] == "human"]
    todo = [f for f in ids if f not in set(skipped_human)]
    if explainer != "deterministic" and chat is None and todo:
        chat = make_chat(explainer, model=llm_model, base_url=llm_base_url, key_env=llm_api_key_env,
                         cache_dir=dict_dir(run_dir, dict_name) / CACHE_DIR, device=device, batch_size=batch_size)
    source = "auto-deterministic" if explainer == "deterministic" else "auto-llm"
    model_note = "" if explainer == "deterministic" else f"{explainer}:{getattr(chat, 'model_name', llm_model)}"
    out: dict[int, str] = {}
    n_saved = n_same = n_dead = 0
    bar = tqdm(total=len(todo), desc=f"explain ({explainer})", unit="feature", disable=not progress)
    step = max(1, int(batch_size)) * (1 if explainer == "deterministic" else 4)
    for a in range(0, len(todo), step):
        batch = todo[a:a + step]
        ctxs = {f: heldout.explain_contexts(run_dir, dict_name, f, groups=EXPLAIN_GROUPS) for f in batch}
        live = [f for f in batch if ctxs[f]]
        n_dead += len(batch) - len(live)
        if explainer == "deterministic":
            texts = [deterministic_explanation(rows[f], ctxs[f]) for f in live]
        else:
            convs = [llm_explanation_prompt(rows[f], [c for c in ctxs[f]][:LLM_EXAMPLES]) for f in live]
            texts = [clean_reply(r) for r in chat.complete(convs, max_tokens=LLM_MAX_TOKENS, prefill=LLM_PREFILL)]
        new = []
        for f, text in zip(live, texts):
            out[f] = text
            if current.get(f, ("", ""))[0] == text:
                n_same += 1
                continue
            new.append({"dict_name": dict_name, "feature": f, "text": text, "author": author, "source": source,
                        "notes": f"explain {explainer}" + (f" ({model_note})" if model_note else "")})
        if new and save:
            n_saved += labels.save_many(new)  # one transaction per batch: an interrupted run keeps what it did
        bar.update(len(batch))
    bar.close()
    return {"dictionary": dict_name, "explainer": explainer, "model": model_note or None, "n_features": len(ids),
            "n_saved": n_saved, "n_unchanged": n_same, "n_skipped_human": len(skipped_human), "n_dead": n_dead,
            "cache_hits": getattr(getattr(chat, "cache", None), "hits", 0), "seconds": time.perf_counter() - t0,
            "explanations": out}
