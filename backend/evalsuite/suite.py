"""`python -m backend evaluate --run R --dict D [--only ...]`: what a dictionary keeps of the model, in minutes.

Parts (each a function of its own module, timed; `evaluation.json` per dictionary, merged across `--only` runs):

    core        metrics.json's l0, explained_variance (massive-activation tokens excluded, the honest figure;
                `explained_variance_all` with them), dead_fraction, ce_loss_score, delta_ce, kl_div
    tasks       task-suite accuracy clean / spliced (no error term) / spliced with the error term, retained
                = spliced / clean with its paired bootstrap interval (backend/tasks/evaluate.py)
    probing     sparse probing at k = 1, 2, 5, 20 on POS tags (tokens) and source families (contexts), against
                the same probe on the raw activations (probing.py)
    nmi         the monosemanticity proxy: per feature, NMI with each POS tag and source family; against random
                unit directions and the residual basis (monosemanticity.py); per-feature top tags go to
                feature_tags.parquet for the feature page
    stability   Jaccard of the top-10 features between paraphrases, against unrelated texts (stability.py)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from backend.common.atomic import atomic_path, read_json, write_json
from backend.common.errors import UserError
from backend.common.layout import (
    CFG_JSON,
    EVALUATION_JSON,
    EVALUATION_TASKS,
    FEATURE_TAGS,
    METRICS,
    dict_dir,
    load_run,
)
from backend.evalsuite import monosemanticity as mono
from backend.evalsuite import paraphrases, probing, stability
from backend.evalsuite.sample import TokenSample, encode_sparse, load_sample
from backend.labels.llm import LLMConfig

PARTS = ("core", "tasks", "probing", "nmi", "stability")
CORE_KEYS = ("l0", "explained_variance", "explained_variance_all", "dead_fraction", "ce_loss_score", "delta_ce",
             "kl_div", "n_massive_tokens")


@dataclass
class EvaluateConfig(LLMConfig):
    """What `evaluate` measures; the defaults keep every part of a demo dictionary within minutes on 2 CPU cores."""

    only: list[str] = field(default_factory=list)
    """Parts to run (core, tasks, probing, nmi, stability); empty = all. Results of other parts already in
    evaluation.json are kept."""
    contexts: int = 400
    """Contexts (of 128 tokens) sampled across sources for probing and NMI: ~50k tokens, ~17k of them Brown words
    with POS tags; the same seeded contexts for every dictionary of a run."""
    task_items: int = 10
    """Evaluation items per task of the default suite (13 tasks): ~130 items, three conditions, ~1.5 CPU-minutes;
    intervals are wide (about +-0.08 on the mean), `tasks eval --n 100` is the careful measurement."""
    ks: list[int] = field(default_factory=lambda: [1, 2, 5, 20])
    """Latents per sparse probe (SAEBench's k)."""
    nmi_threshold: float = 0.1
    """A feature counts as monosemantic when its best tag's NMI exceeds this; random directions reach it rarely
    (README, evaluation suite)."""
    random_directions: int = 1024
    """Random unit directions for the NMI baseline (a sample of the distribution; d_sae of them costs 4x more)."""
    paraphrase_problems: int = 6
    """Problems per paraphrase family (6 families, 4 wordings each)."""
    llm_paraphrases: Literal["none", "local-llm", "openai"] = "none"
    """Also ask an LLM back-end for 2 rewrites of each problem (kept when they keep every number)."""
    seed: int = 0
    """Seed of the context sample, the probes' splits and the random directions."""

    def __post_init__(self):
        bad = [p for p in self.only if p not in PARTS]
        if bad:
            raise UserError(f"unknown evaluation part {', '.join(bad)}; choose from {', '.join(PARTS)}")
        if self.contexts < 10 or self.task_items < 1 or not self.ks or min(self.ks) < 1:
            raise UserError("evaluate needs --contexts >= 10, --task-items >= 1 and every --ks >= 1")

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(p for p in PARTS if not self.only or p in self.only)


def display_kind(cfg: dict) -> str:
    """The kind shown next to a dictionary: its kind, with "+anchored" when trained with the model in the loss."""
    kind = cfg.get("kind") or cfg.get("architecture") or "?"
    return f"{kind}+anchored" if (cfg.get("training") or {}).get("anchor") else kind


# --- parts -------------------------------------------------------------------------------------------
def core_part(run: Path, name: str, lm) -> dict:
    from backend.evaluation.metrics import compute_metrics

    m = read_json(dict_dir(run, name) / METRICS) if (dict_dir(run, name) / METRICS).is_file() else None
    if m is None or "delta_ce" not in m:
        m = compute_metrics(run, name, lm=lm, device=str(lm.device))
    return {k: m.get(k) for k in CORE_KEYS}


def tasks_part(lm, dictionary, hook: str, n: int, seed: int, items_path: Path | None = None) -> dict:
    """The suite's "all tasks" accuracies; the per-item results go to `items_path` (evaluation_tasks.parquet, the
    columns of `tasks eval`'s files) so two dictionaries can be compared item by item."""
    from backend.tasks.evaluate import evaluate_tasks
    from backend.tasks.suite import DEFAULT_SUITE, load_task, split_items

    tasks = [split_items(load_task(t), n) for t in DEFAULT_SUITE]
    ev = evaluate_tasks(lm, tasks, dictionary=dictionary, hook=hook, control=True, seed=seed)
    if items_path is not None:
        with atomic_path(items_path) as tmp:
            ev.items.to_parquet(tmp, index=False)
    s = ev.summary[ev.summary["task"] == "all tasks"].set_index("condition")
    out = {"n_items": int(len(ev.items)), "n_tasks": len(tasks)}
    for cond in ("clean", "spliced", "spliced_error"):
        r = s.loc[cond]
        out[cond] = {"accuracy": float(r["accuracy"]), "low": float(r["acc_low"]), "high": float(r["acc_high"])}
        if cond != "clean":
            out[cond].update(retained=float(r["retained"]), retained_low=float(r["retained_low"]),
                             retained_high=float(r["retained_high"]))
    return out


def probing_part(codes, sample: TokenSample, ks: list[int], seed: int, full: bool = False) -> dict:
    """Sparse probes on `codes` [N, F] of the sample's tokens (`full`: also a probe on every unit)."""
    out = {"ks": ks}
    tagged = (sample.pos != "") & sample.last_of_word
    if tagged.sum():
        labels, groups = sample.pos[tagged], sample.context[tagged]
        classes = mono_classes(labels)
        out["pos"] = probing.probe_tasks(codes[np.flatnonzero(tagged)], labels, groups, classes, ks, seed, full)
    else:
        out["pos_note"] = sample.pos_note or "no tagged tokens in the sample"
    ctx_ids, pooled = probing.pool_contexts(codes, sample.context)
    fam = pd.Series(sample.family).groupby(sample.context).first().loc[ctx_ids].to_numpy()
    # a context is one example here, so fewer of them than tokens per class
    out["source"] = probing.probe_tasks(pooled, fam, ctx_ids, sorted(set(fam)), ks, seed, full, min_per_class=3)
    return out


def mono_classes(labels: np.ndarray) -> list[str]:
    """Classes worth a task or an NMI column: at least 50 examples."""
    vals, counts = np.unique(labels, return_counts=True)
    return [str(v) for v, c in zip(vals, counts) if c >= 50]


def nmi_tables(fires, sample: TokenSample) -> dict[str, tuple[np.ndarray, list[str]]]:
    """{category: ([units, classes] NMI, class names)} for "pos" (tagged word-final tokens) and "source" (all)."""
    out = {}
    tagged = np.flatnonzero((sample.pos != "") & sample.last_of_word)
    for cat, rows, labels in (("pos", tagged, sample.pos[tagged]), ("source", np.arange(len(sample.family)), sample.family)):
        classes = mono_classes(labels)
        if len(classes) < 2:
            continue
        keep = np.isin(labels, classes)
        lab = np.searchsorted(np.array(classes), labels[keep])
        out[cat] = (mono.tag_nmi(fires[rows[keep]], lab, len(classes)), classes)
    return out


def nmi_part(codes, sample: TokenSample, threshold: float, n_random: int, seed: int) -> tuple[dict, pd.DataFrame]:
    fires = codes.copy()
    fires.data = (fires.data > 0).astype(np.float32)
    density = np.asarray(fires.sum(0)).ravel() / fires.shape[0]
    alive = density > 0
    tables = {"dictionary": nmi_tables(fires, sample)}
    d = sample.x.shape[1]
    rand = mono.random_directions(n_random, d, seed)
    tables["random directions"] = nmi_tables(mono.direction_fires(sample.x, rand, mono.matched_densities(density, n_random)), sample)
    tables["residual basis"] = nmi_tables(mono.direction_fires(sample.x, np.eye(d, dtype=np.float32),
                                                               mono.matched_densities(density, d)), sample)
    out = {"threshold": threshold, "n_alive": int(alive.sum())}
    for who, cats in tables.items():
        for cat, (nmi, _) in cats.items():
            best = nmi.max(1)
            out.setdefault(cat, {})[who] = mono.summarize(best[alive] if who == "dictionary" else best, threshold)
    return out, feature_tag_rows(tables["dictionary"], alive)


def feature_tag_rows(tables: dict, alive: np.ndarray, top: int = 3) -> pd.DataFrame:
    """feature_tags.parquet: per alive feature and category, its `top` tags by NMI."""
    frames = []
    for cat, (nmi, classes) in tables.items():
        feats = np.flatnonzero(alive)
        order = np.argsort(-nmi[feats], axis=1)[:, :top]  # [n, top]
        for r in range(order.shape[1]):
            c = order[:, r]
            frames.append(pd.DataFrame({"feature": feats.astype(np.int32), "category": cat,
                                        "tag": np.array(classes)[c], "nmi": nmi[feats, c].astype(np.float32),
                                        "rank": np.int8(r + 1)}))
    if not frames:
        return pd.DataFrame({"feature": pd.Series(dtype="int32"), "category": pd.Series(dtype=str),
                             "tag": pd.Series(dtype=str), "nmi": pd.Series(dtype="float32"), "rank": pd.Series(dtype="int8")})
    return pd.concat(frames, ignore_index=True).sort_values(["feature", "category", "rank"], ignore_index=True)


def stability_part(lm, hook: str, dictionary, cfg: EvaluateConfig, cache_dir: Path) -> dict:
    from backend.model.hooks import capture, parse_hook

    probs = paraphrases.paraphrase_problems(cfg.paraphrase_problems, cfg.seed)
    if cfg.llm_paraphrases != "none":
        from backend.labels.llm import make_chat

        chat = make_chat(cfg.llm_paraphrases, cfg.llm_model, cfg.llm_base_url, cfg.llm_api_key_env, cache_dir, lm=lm)
        probs = paraphrases.llm_paraphrases(probs, chat)
    hp, tok = parse_hook(hook), lm.tokenizer

    def ids_of(text):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return ([tok.bos_token_id] if tok.bos_token_id is not None else []) + ids

    acts = {}
    for p in probs:
        for t in p.wordings:
            if t not in acts:
                with torch.no_grad():
                    acts[t] = capture(lm.model, hp, torch.tensor([ids_of(t)], device=lm.device))[0, 1:].float()

    def codes_of(t):
        with torch.no_grad():
            return dictionary.encode(acts[t]).cpu().numpy()

    texts, fams = [p.wordings for p in probs], [p.family for p in probs]
    out = {"dictionary": stability.stability(texts, fams, codes_of, lambda t: len(ids_of(t)))}
    out["residual basis"] = stability.stability(texts, fams, lambda t: acts[t].cpu().numpy(), lambda t: len(ids_of(t)))
    out["llm_paraphrases"] = cfg.llm_paraphrases
    return out


# --- the whole -----------------------------------------------------------------------------------------
def evaluate_dictionary(run: str | Path, name: str, cfg: EvaluateConfig | None = None, lm=None, device: str = "auto",
                        progress: bool = True) -> dict:
    """Run the chosen parts on dictionaries/<name>; merge them into its evaluation.json (written atomically) and
    write feature_tags.parquet with the nmi part. Returns the whole evaluation record."""
    from backend.dictionaries import load_dictionary
    from backend.model.loading import load_model

    cfg = cfg or EvaluateConfig()
    run = Path(run)
    meta = load_run(run)
    folder = dict_dir(run, name)
    if not (folder / CFG_JSON).is_file():
        raise UserError(f"no dictionary {name!r} in {run}")
    t_load = time.perf_counter()
    lm = lm or load_model(meta["model"], device=device)
    dictionary = load_dictionary(folder, device=lm.device).eval()
    record = read_json(folder / EVALUATION_JSON) if (folder / EVALUATION_JSON).is_file() else {}
    record.update(dictionary=name, kind=dictionary.cfg.get("kind"), display_kind=display_kind(dictionary.cfg),
                  d_sae=dictionary.d_sae)
    record.setdefault("parts", {})
    seconds = record.setdefault("seconds", {})
    seconds["load"] = round(time.perf_counter() - t_load, 1)
    codes = sample = None
    for part in cfg.parts:
        t0 = time.perf_counter()
        say = (lambda msg: print(msg, flush=True)) if progress else (lambda msg: None)
        say(f"evaluate {name}: {part}")
        if part == "core":
            result = core_part(run, name, lm)
        elif part == "tasks":
            result = tasks_part(lm, dictionary, meta["hook"], cfg.task_items, cfg.seed, folder / EVALUATION_TASKS)
        elif part == "stability":
            result = stability_part(lm, meta["hook"], dictionary, cfg, folder / "paraphrase_cache")
        else:
            if sample is None:
                t1 = time.perf_counter()
                sample = load_sample(run, cfg.contexts, cfg.seed, tokenizer=lm.tokenizer)
                codes = encode_sparse(dictionary, sample.x, device=lm.device)
                seconds["sample_and_encode"] = round(time.perf_counter() - t1, 1)
            if part == "probing":
                result = probing_part(codes, sample, cfg.ks, cfg.seed)
                result["raw"] = probing_part(sample.x, sample, cfg.ks, cfg.seed, full=True)
            else:
                result, tags = nmi_part(codes, sample, cfg.nmi_threshold, cfg.random_directions, cfg.seed)
                with atomic_path(folder / FEATURE_TAGS) as tmp:
                    tags.to_parquet(tmp, index=False)
            result["n_tokens"], result["n_contexts"] = int(len(sample.x)), int(len(np.unique(sample.context)))
        record["parts"][part] = result
        seconds[part] = round(time.perf_counter() - t0, 1)
        say(f"  {part}: {seconds[part]:.1f} s")
    record["config"] = {**asdict(cfg), "torch_threads": torch.get_num_threads()}
    write_json(folder / EVALUATION_JSON, record)
    return record
