"""Detection scoring: does a feature's label predict where it fires on contexts the label was not made from?

For each labelled feature, `backend.labels.heldout.heldout_contexts` gives n activating windows (overlapping
no analysed context, held-out sequences first) and n windows where the feature is silent. A scorer
reads the label and says which windows activate; precision, recall and F1 of that call are the label's
detection score (Paulo et al. 2024, "Automatically interpreting millions of features in LLMs", the
detection scorer of EleutherAI's delphi). Scores go to the label store (`add_scores`) against the label
version they judged, and a per-dictionary summary (the fraction of labels with F1 >= threshold, which
is comparable between dictionaries scored with the same scorer, n and threshold) to
`dictionaries/<d>/label_scores.json` for the Overview page.

Scorers:
- `embedding` (no LLM): all-MiniLM-L6-v2 embeds the label and every chunk of `CHUNK` tokens (stride
  `STRIDE`, on a grid aligned to each sequence so chunks are shared between features) of a window; a
  window's score is its best chunk's cosine with the label (a feature fires on a few tokens, so the
  whole window's embedding would dilute them). Decision rule, fixed per feature
  before the held-out windows are seen: the threshold that maximises balanced accuracy (Youden's J) on the
  feature's *own training data*, its analysed contexts (positives) against as many silent windows from training sequences
  (negatives), n positives spread evenly over the value-sorted contexts and 2n negatives; ties go to the
  midpoint of the widest gap.
- `lexical` (no model): does the window hold, where the feature peaks, a token the label names? Terms
  (`lexical_terms`): for a deterministic label (backend.labels.explain's grammar) the tokens of its first clause
  (the parenthesised or quoted tokens, "the token X (also Y)", a "words starting with" prefix, and a token
  class such as "digits in numbers" as backend.labels.explain's own class test); its "often after" and
  "promotes" clauses are not used (they name the token before the firing one and the predicted next
  token). For free text, its quoted/backticked items and its content words (no stop words, no words
  about features such as "token" or "fires"). Decision rule (`lexical_match`), fixed in advance and the
  same for every feature, no calibration: a window activates iff one of its `REGION` = 3 tokens ending
  at its peak position (the peak token and the two before it; a silent window's "peak" is its centre,
  drawn at random, so it is tested at the same position) equals a named token (case-insensitive, stripped,
  Ġ/▁/Ċ markers made real), starts with a named prefix, is of a named class, or holds a named word. It
  measures whether the label names the tokens the feature fires on, which the embedding scorer cannot.
- `local-llm` / `openai`: the LLM is shown the label and one window, and asked Yes or No (local: the
  next-token logit of "Yes" against "No"; endpoint: the first word of a 3-token reply). No calibration.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from backend.common.errors import UserError
from backend.labels import heldout
from backend.labels.llm import LLMConfig

Scorer = Literal["embedding", "lexical", "local-llm", "openai"]
SCORERS = get_args(Scorer)
SUMMARY_FILE = "label_scores.json"
HOLD_F1 = 0.75  # a label "holds" at F1 >= this: saying yes to every window of the balanced set already scores 2/3
CHUNK, STRIDE = 6, 3  # tokens per embedded chunk and step between chunks
CAL_NEG = 2  # silent calibration windows per held-out pair: their upper tail sets the threshold, so more than n
CALIBRATION_GROUPS = ("top", "q1", "q2", "q3", "q4", "q5")  # the analysed contexts the label was written from

YES_NO_SYSTEM = ("You check explanations of language-model features. A feature fires on some tokens of a text. "
                 "Given the explanation of a feature and a text, answer Yes if the feature probably fires somewhere "
                 "in the text, and No otherwise. Answer with one word: Yes or No.")


@dataclass
class ScoreConfig(LLMConfig):
    """What `python -m backend score` scores, and how (the defaults of `run_scoring` too)."""

    scorer: Scorer = "embedding"
    """embedding (all-MiniLM-L6-v2, no LLM: offline, and calibrated on each feature's own training data) |
    lexical (the label's tokens at the peak, no model) | local-llm | openai."""
    n: int = 10
    """Held-out activating contexts per feature, and as many silent ones."""
    threshold: float = HOLD_F1
    """A label holds when its F1 is at least this (answering yes to everything scores 2/3)."""
    features: list[int] | None = None
    """Feature ids to score; None = every labelled feature."""
    sample: int | None = None
    """Score a random sample of this many labels (seeded); None = all of them."""
    sources: list[str] | None = field(default=None, metadata={"flag": "source"})
    """Only labels of these sources (human, auto-deterministic, auto-llm); None = every source."""
    seed: int = 0
    """Seed of the held-out context sampling and of --sample."""


def prf(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """(precision, recall, F1) of boolean predictions; 0 where undefined (nothing predicted or nothing true)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    tp = int((pred & truth).sum())
    p = tp / int(pred.sum()) if pred.any() else 0.0
    r = tp / int(truth.sum()) if truth.any() else 0.0
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return p, r, f


def best_threshold(scores: np.ndarray, truth: np.ndarray) -> float:
    """The threshold t (predict score >= t) with the best balanced accuracy (Youden's J = TPR - FPR) on
    (scores, truth); among equals, the midpoint of the widest gap between neighbouring scores.

    Not F1: on a balanced set, saying yes to everything already has F1 2/3, so an F1-optimal threshold
    turns an uninformative label into "always yes"; J of "always yes" is 0."""
    scores, truth = np.asarray(scores, np.float64), np.asarray(truth, bool)
    s = np.sort(np.unique(scores))
    if len(s) == 0 or truth.all() or not truth.any():
        return float("inf")
    cands = np.concatenate([[s[0] - 1e-6], (s[:-1] + s[1:]) / 2, [s[-1] + 1e-6]])
    gaps = np.concatenate([[0.0], np.diff(s), [0.0]])
    pred = scores[None, :] >= cands[:, None]  # [n_cands, n]
    j = pred[:, truth].mean(1) - pred[:, ~truth].mean(1)
    best = np.lexsort((-gaps, -j))[0]  # highest J, then the widest gap
    return float(cands[best])


def chunks(tokens: list[str], token_indices: list[int] | None = None, ctx_len: int | None = None,
           size: int | None = None, stride: int | None = None) -> list[str]:
    """Chunk texts of a window: `size` tokens every `stride`, on a grid aligned to the start of the window's
    sequence when token_indices and ctx_len are given (so overlapping windows of different features share
    chunks, and a run's chunks are embedded once), else to the window's start. The grid's last chunk ends at
    the sequence end, so a peak is always inside some chunk (it sits `after` tokens from a window's end
    unless the sequence ends first); at most stride-1 context tokens at a window's edges are left out.
    A window too short for a chunk is one chunk."""
    size, stride = size or CHUNK, stride or STRIDE
    n = len(tokens)
    if n <= size:
        return ["".join(tokens).strip() or " "]
    if token_indices is None or not ctx_len:
        starts = list(range(0, n - size + 1, stride))
        if starts[-1] != n - size:
            starts.append(n - size)
    else:
        lo, T = int(token_indices[0]), int(ctx_len)
        seq0 = lo - lo % T
        grid = set(range(seq0, seq0 + T - size + 1, stride)) | {seq0 + T - size}
        starts = sorted(g - lo for g in grid if g >= lo and g - lo + size <= n)
        if not starts:
            return ["".join(tokens).strip() or " "]
    return ["".join(tokens[a:a + size]).strip() or " " for a in starts]


class EmbeddingScorer:
    """Label-to-window similarity with all-MiniLM-L6-v2, thresholded on the feature's own training contexts."""

    name = "embedding"

    def __init__(self, device: str = "auto", model=None):
        from backend.labels.embeddings import load_embedder

        self.model = model or load_embedder(device)
        self._cache: dict[str, np.ndarray] = {}
        self.ctx_len: int | None = None  # set per run by score_features: chunks on the sequence grid

    def _embed(self, texts: list[str]) -> None:
        from backend.labels.embeddings import embed

        new = sorted({t for t in texts if t not in self._cache})
        if new:
            self._cache.update(zip(new, embed(new, self.model)))

    def window_scores(self, label: str, windows: list[dict]) -> np.ndarray:
        """Best-chunk cosine of each window with the label, float [len(windows)]."""
        per = [chunks(w["tokens"], w.get("token_indices"), self.ctx_len) for w in windows]
        self._embed([label] + [c for cs in per for c in cs])
        q = self._cache[label]
        return np.array([max(float(self._cache[c] @ q) for c in cs) for cs in per])

    def prepare(self, jobs: list[dict]) -> None:
        """Embed every text of many features at once (one big batch is much faster than many small ones)."""
        texts = []
        for j in jobs:
            texts.append(j["label"])
            for w in j["heldout"] + j.get("calibration", []):
                texts += chunks(w["tokens"], w.get("token_indices"), self.ctx_len)
        self._embed(texts)
        if len(self._cache) > 300_000:  # ~460 MB: bound memory on very large runs; later batches re-embed
            self._cache = {}

    def predict(self, job: dict) -> np.ndarray:
        cal = job["calibration"]
        t = best_threshold(self.window_scores(job["label"], cal), np.array([c["activating"] for c in cal]))
        job["threshold"] = t
        return self.window_scores(job["label"], job["heldout"]) >= t


class LLMScorer:
    """Yes/No per window from a chat back-end (`backend.labels.llm`)."""

    def __init__(self, chat):
        self.chat = chat
        self.name = chat.kind

    def prepare(self, jobs: list[dict]) -> None:
        pass

    def predict(self, job: dict) -> np.ndarray:
        convs = [[{"role": "system", "content": YES_NO_SYSTEM},
                  {"role": "user", "content": f"Explanation: {job['label']}\n\nText: "
                                              f"{''.join(w['tokens']).strip()}\n\nDoes the feature fire? Yes or No?"}]
                 for w in job["heldout"]]
        return np.array(self.chat.yes_no(convs), bool)


# --------------------------------------------------------------------------- lexical scorer

REGION = 3  # the lexical scorer looks at the peak token and the REGION - 1 tokens before it
_CLASS_PHRASES = {"digits in numbers": "digits", "whitespace and line breaks": "newline", "punctuation": "punctuation",
                  "capitalised words": "capitalised"}  # backend.labels.explain.TOKEN_CLASSES phrase -> class name
_ITEM = re.compile(r'"(.*?)"(?=, |\)|;|$)|([^,"()]+)')  # a quoted token (may hold commas) or a bare item
_META_WORDS = frozenset(  # words free-text labels use to talk about features, not about the text they fire on
    "feature features fires fire firing activates activation token tokens word words text texts phrase phrases "
    "detects detect related relating refers references mention mentions context contexts pattern patterns "
    "typically usually often mostly likely various specific particular especially including involving use used "
    "like such also sequence sequences character characters term terms".split())


def _norm(tok: str) -> str:
    """A token string as matched: byte-level BPE / sentencepiece space markers (Ġ, ▁) and newline markers (Ċ)
    made real, then stripped and lower-cased; a whitespace-only token keeps its whitespace so a label naming
    "\\n" does not match a space."""
    t = str(tok).replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\n").replace("ĉ", "\t")
    return t.strip().lower() or t


def _items(text: str) -> list[str]:
    """Items of a comma-separated list as backend.labels.explain._shown writes it: bare words, or quoted tokens
    with \\n and \\t escaped."""
    out = []
    for m in _ITEM.finditer(text):
        if m.group(1) is not None:
            out.append(m.group(1).replace("\\n", "\n").replace("\\t", "\t"))
        elif m.group(2).strip():
            out.append(m.group(2).strip())
    return out


def lexical_terms(label: str) -> dict:
    """What a label says the feature fires on: {"tokens": set of normalised token strings, "prefixes": set,
    "classes": set of backend.labels.explain token-class names, "words": set of lower-case words (free text)}.

    A deterministic label (backend.labels.explain grammar) gives the items of its first clause: the class phrase
    and the parenthesised tokens, "the token X (also Y, Z)", "words starting with S (...)" or "tokens such as
    A, B". Its "often after X" and "promotes A, B" clauses are left out: they say what comes before the
    firing token or what the model predicts next, not what the feature fires on. Any other label is free
    text: its quoted or backticked items are tokens, and its other words of 2+ letters or digits, less
    English stop words and words about features ("token", "fires", ...), are words."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    terms: dict = {"tokens": set(), "prefixes": set(), "classes": set(), "words": set()}
    label = str(label).strip()
    first = re.split(r';\s+(?=often after |promotes )', label)[0]
    m = re.fullmatch(r"(.+?) \((.*)\)", first)
    if m and m.group(1) in _CLASS_PHRASES:
        terms["classes"].add(_CLASS_PHRASES[m.group(1)])
        terms["tokens"] |= {_norm(t) for t in _items(m.group(2))}
        return terms
    m = re.fullmatch(r'the token (".*?"|\S+)(?: \(also (.*)\))?', first)
    if m:
        terms["tokens"] |= {_norm(t) for t in _items(m.group(1)) + _items(m.group(2) or "")}
        return terms
    m = re.fullmatch(r'words starting with (".*?"|\S+) \((.*)\)', first)
    if m:
        terms["prefixes"] |= {_norm(t) for t in _items(m.group(1))}
        terms["tokens"] |= {_norm(t) for t in _items(m.group(2))}
        return terms
    m = re.fullmatch(r"tokens such as (.*)", first)
    if m:
        terms["tokens"] |= {_norm(t) for t in _items(m.group(1))}
        return terms
    if label == "never fires in the analysed corpus":
        return terms
    quoted = re.findall(r'"([^"]+)"|`([^`]+)`|<<(.+?)>>|(?<![A-Za-z])\'([^\']+)\'(?![A-Za-z])', label)
    terms["tokens"] |= {_norm(next(g for g in q if g)) for q in quoted}
    rest = re.sub(r'"[^"]+"|`[^`]+`|<<.+?>>', " ", label)
    terms["words"] = {w for w in re.findall(r"[a-z0-9]+", rest.lower())
                      if len(w) >= 2 and w not in ENGLISH_STOP_WORDS and w not in _META_WORDS}
    return terms


def lexical_match(terms: dict, tokens: list[str], peak: int, region: int = REGION) -> bool:
    """Whether the `region` tokens ending at `peak` (tokens[peak - region + 1 .. peak]) hold a term: a token
    equal to a named token or starting with a named prefix, a token of a named class, or (free text) a named
    word as a whole word of the region's text."""
    from backend.labels.explain import TOKEN_CLASSES

    reg = tokens[max(0, peak - region + 1):peak + 1]
    normed = [_norm(t) for t in reg]
    if terms["tokens"] & set(normed):
        return True
    if any(n.startswith(p) for n in normed for p in terms["prefixes"]):
        return True
    preds = [pred for name, pred, _ in TOKEN_CLASSES if name in terms["classes"]]
    if any(pred(t.replace("Ġ", " ").replace("Ċ", "\n").strip()) for t in reg for pred in preds):
        return True
    if terms["words"]:
        text = set(re.findall(r"[a-z0-9]+", "".join(reg).replace("Ġ", " ").replace("▁", " ").lower()))
        return bool(terms["words"] & text)
    return False


class LexicalScorer:
    """Says "fires" when the window's peak region holds a token the label names; no model, no calibration."""

    name = "lexical"

    def __init__(self, region: int = REGION):
        self.region = int(region)

    def prepare(self, jobs: list[dict]) -> None:
        pass

    def predict(self, job: dict) -> np.ndarray:
        terms = lexical_terms(job["label"])
        return np.array([lexical_match(terms, w["tokens"], int(w["peak"]), self.region) for w in job["heldout"]], bool)


def make_scorer(kind: str, device: str = "auto", llm_model: str | None = None, llm_base_url: str | None = None,
                llm_api_key_env: str | None = None, cache_dir: str | Path | None = None, chat=None):
    if kind == "embedding":
        return EmbeddingScorer(device)
    if kind == "lexical":
        return LexicalScorer()
    if kind in ("local-llm", "openai"):
        from backend.labels.llm import make_chat

        return LLMScorer(chat or make_chat(kind, model=llm_model, base_url=llm_base_url, key_env=llm_api_key_env,
                                           cache_dir=cache_dir, device=device))
    raise UserError(f"unknown scorer {kind!r}; choose one of {', '.join(SCORERS)}")


def score_features(run_dir: str | Path, dict_name: str, labels: pd.DataFrame, scorer, n: int = 10, seed: int = 0,
                   batch: int = 32, progress: bool = True) -> pd.DataFrame:
    """Detection scores of the given labels (DataFrame[feature, version, text, source]):
    DataFrame[feature, version, source, label, precision, recall, f1, accuracy, n_pos, n_neg, threshold]. Features without a
    held-out activating window (too rare) or a silent one (too dense) are left out: they cannot be scored."""
    from backend.common.layout import load_run

    rows = []
    if hasattr(scorer, "ctx_len"):
        scorer.ctx_len = int(load_run(run_dir)["ctx_len"])
    items = list(labels[["feature", "version", "text", "source"]].itertuples(index=False))
    bar = tqdm(total=len(items), desc=f"score ({scorer.name})", unit="label", disable=not progress)
    for a in range(0, len(items), batch):
        jobs = []
        for f, v, text, src in items[a:a + batch]:
            ho = heldout.heldout_contexts(run_dir, dict_name, int(f), n=n, seed=seed)
            n_pos = sum(c["activating"] for c in ho)
            if n_pos == 0 or n_pos == len(ho):
                continue
            job = {"feature": int(f), "version": int(v), "label": str(text), "source": str(src), "heldout": ho}
            if isinstance(scorer, EmbeddingScorer):
                pos = heldout.explain_contexts(run_dir, dict_name, int(f), groups=CALIBRATION_GROUPS)
                pos = [pos[i] for i in np.unique(np.linspace(0, len(pos) - 1, min(n, len(pos))).astype(int))]
                neg = heldout.calibration_windows(run_dir, dict_name, int(f), n=CAL_NEG * n, seed=seed)
                job["calibration"] = pos + neg
            jobs.append(job)
        scorer.prepare(jobs)
        for job in jobs:
            truth = np.array([c["activating"] for c in job["heldout"]])
            pred = scorer.predict(job)
            p, r, f1 = prf(pred, truth)
            rows.append({"feature": job["feature"], "version": job["version"], "source": job["source"],
                         "label": job["label"], "precision": p, "recall": r, "f1": f1,
                         "accuracy": float((pred == truth).mean()), "n_pos": int(truth.sum()),
                         "n_neg": int((~truth).sum()), "threshold": job.get("threshold", np.nan)})
        bar.update(len(items[a:a + batch]))
    bar.close()
    cols = ["feature", "version", "source", "label", "precision", "recall", "f1", "accuracy", "n_pos", "n_neg", "threshold"]
    return pd.DataFrame(rows, columns=cols)


def summarise(df: pd.DataFrame, threshold: float) -> dict:
    """The fraction of labels that hold (F1 >= threshold) and mean P/R/F1/accuracy, overall and per label source.
    (Accuracy on the balanced set: 0.5 is chance, whatever the scorer's bias towards yes or no.)"""
    def one(d: pd.DataFrame) -> dict:
        return {"n_scored": int(len(d)), "n_hold": int((d["f1"] >= threshold).sum()),
                "fraction_hold": float((d["f1"] >= threshold).mean()) if len(d) else None,
                "mean_precision": float(d["precision"].mean()) if len(d) else None,
                "mean_recall": float(d["recall"].mean()) if len(d) else None,
                "mean_f1": float(d["f1"].mean()) if len(d) else None,
                "mean_accuracy": float(d["accuracy"].mean()) if len(d) else None}
    out = one(df)
    out["by_source"] = {s: one(g) for s, g in df.groupby("source")}
    return out


def run_scoring(run_dir: str | Path, dict_name: str, scorer: str = ScoreConfig.scorer, n: int = ScoreConfig.n,
                threshold: float = ScoreConfig.threshold, seed: int = ScoreConfig.seed, features: list[int] | None = None, sample: int | None = None, sources=None,
                device: str = "auto", llm_model: str | None = None, llm_base_url: str | None = None,
                llm_api_key_env: str | None = None, progress: bool = True, chat=None) -> dict:
    """Score the current labels of a dictionary, store the scores and write label_scores.json; return the summary."""
    from backend.common.atomic import read_json, write_json
    from backend.common.layout import FEATURES, dict_dir
    from backend.labels.explain import CACHE_DIR
    from backend.store import query as store
    from backend.store.label_store import LabelStore

    if not 0.0 <= float(threshold) <= 1.0:
        raise UserError(f"--threshold must be in [0, 1], not {threshold}")
    if int(n) < 1:
        raise UserError(f"--n must be >= 1, not {n}")
    store.store_file(run_dir, dict_name, FEATURES)  # a missing or unanalysed dictionary says so
    t0 = time.perf_counter()
    ls = LabelStore(run_dir)
    cur = ls.current(dict_name, features) if ls.exists() else pd.DataFrame(columns=["feature", "version", "text", "source"])
    cur = cur[cur["text"].astype(str).str.strip() != ""]
    if sources:
        cur = cur[cur["source"].isin(list(sources))]
    if cur.empty:
        raise UserError(f"dictionary {dict_name!r} has no labels to score; run `python -m backend explain` first")
    cur = cur.sort_values("feature")
    if sample is not None and int(sample) < len(cur):
        cur = cur.sample(n=int(sample), random_state=seed).sort_values("feature")
    sc = make_scorer(scorer, device=device, llm_model=llm_model, llm_base_url=llm_base_url,
                     llm_api_key_env=llm_api_key_env, cache_dir=dict_dir(run_dir, dict_name) / CACHE_DIR, chat=chat)
    df = score_features(run_dir, dict_name, cur, sc, n=n, seed=seed, progress=progress)
    if len(df):
        ls.add_scores([{"dict_name": dict_name, "feature": int(r.feature), "version": int(r.version),
                        "scorer": sc.name, "precision": float(r.precision), "recall": float(r.recall), "f1": float(r.f1),
                        "n_pos": int(r.n_pos), "n_neg": int(r.n_neg)} for r in df.itertuples(index=False)])
    seconds = time.perf_counter() - t0
    summary = summarise(df, float(threshold))
    summary.update({"scorer": sc.name, "model": getattr(getattr(sc, "chat", None), "model_name", None)
                    or ("all-MiniLM-L6-v2" if scorer == "embedding" else None),
                    "region": getattr(sc, "region", None),
                    "threshold": float(threshold), "n_per_class": int(n), "seed": int(seed),
                    "n_labels": int(len(cur)), "n_unscorable": int(len(cur) - len(df)),
                    "sampled": sample is not None, "seconds": round(seconds, 2),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    path = dict_dir(run_dir, dict_name) / SUMMARY_FILE
    try:
        old = read_json(path) if path.is_file() else {}
    except ValueError:
        old = {}
    key = sc.name + (f" [{','.join(sorted(sources))}]" if sources else "") + (" [chosen features]" if features is not None else "")
    summary["key"] = key  # a filtered run is kept beside the full one, not over it
    old.setdefault("scorers", {})[key] = summary
    write_json(path, old)
    summary["scores"] = df
    return summary


def load_summary(run_dir: str | Path, dict_name: str) -> dict:
    """label_scores.json of a dictionary ({"scorers": {...}}; {} before any scoring)."""
    from backend.common.atomic import read_json
    from backend.common.layout import dict_dir

    path = dict_dir(run_dir, dict_name) / SUMMARY_FILE
    if not path.is_file():
        return {}
    try:
        return read_json(path)
    except ValueError:
        return {}
