"""The experiment: does reformulating the prompts whose tokens the model misreads raise its accuracy,
more than rewording without the detection, or than flags on random tokens?

For every item of the tasks, and every dictionary (the detection depends on its features and labels):

    original  the prompt as it is
    flagged   (b) the rules applied at the tokens the diagnosis flags; the prompt is unchanged when none is
              flagged, when no rule matches a flagged token, or when the equivalence check rejects the rewrite
    all       (c) the same rules applied at every match, flagged or not: is it the detection or the rewording?
    random    (d) as many flags as the diagnosis placed, on random tokens of the question (seeded per item and
              dictionary), then the rules at those: does the detection find the right tokens?
    llm       (optional) an LLM's rewrite of the flagged prompts, through the same equivalence check
    ablate    (optional) no rewrite: the off-domain features (weight w_i >= 0.25, every active one, not only
              the top k) at the flagged tokens zero-ablated,
              error term kept (backend.interventions.edits), the intervention the Diagnose page offers

Every condition is scored on the clean model as `backend.tasks` scores (summed log-probability of each
choice, BIG-bench framing); each distinct prompt is scored once. Per condition: accuracy with its
percentile bootstrap 95% interval, the mean probability of the right answer, and against `original` (and
`flagged` against `all` and `random`) a paired bootstrap of the difference and McNemar's exact test.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from backend.diagnosis import detect, items, reformulate
from backend.diagnosis.domains import FeatureDomains
from backend.diagnosis.rules import Rule
from backend.tasks import bootstrap, scoring
from backend.tasks.schema import Task

CONDITIONS = ("original", "flagged", "all", "random", "llm", "ablate")
COMPARISONS = (("original", "flagged"), ("original", "all"), ("original", "random"), ("original", "llm"),
               ("original", "ablate"), ("all", "flagged"), ("random", "flagged"))


@dataclass
class DictionaryDetector:
    """What the detection needs of one dictionary."""

    name: str
    dictionary: torch.nn.Module
    domains: FeatureDomains
    labels: dict[int, str]
    threshold: float


@dataclass
class ExperimentResult:
    items: pd.DataFrame  # one row per (dictionary, task, item, condition)
    summary: pd.DataFrame  # one row per (family, dictionary, condition)
    tests: pd.DataFrame  # one row per (family, dictionary, comparison)
    config: dict = field(default_factory=dict)


def _seed(*parts) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


def random_spans(diag: detect.Diagnosis, k: int, seed: int) -> list[tuple[int, int]]:
    """Character spans of k random tokens of the diagnosed region (the control for the detection)."""
    region = diag.table[diag.table["in_region"]]
    if k == 0 or len(region) == 0:
        return []
    pick = np.random.default_rng(seed).choice(len(region), size=min(k, len(region)), replace=False)
    r = region.iloc[np.sort(pick)]
    return [(int(s), int(e)) for s, e in zip(r["start"], r["end"])]


def shift(spans, offset: int):
    return [(s - offset, e - offset) for s, e in spans]


def ablation_fn(dictionary, features: list[int], positions: list[int]):
    """act_fn for the scorer: zero-ablate `features` at `positions` of the prompt, error term kept."""
    from backend.interventions.edits import Edit, edit_delta, resolve

    r = resolve(Edit(tuple(features), "zero", positions=tuple(positions)), dictionary.d_sae, None)

    def fn(act):  # [B, T, d]
        at = torch.zeros(act.shape[:2], dtype=torch.bool)
        at[:, positions] = True
        delta, _ = edit_delta(dictionary, act, r, at, at)
        return act + delta.to(act.dtype)

    return fn


class Scorer:
    """Scores (task item, question text) pairs on the clean model, each distinct prompt once."""

    def __init__(self, lm, hook=None, batch_tokens: int = 2048):
        self.lm, self.hook, self.batch_tokens = lm, hook, batch_tokens
        self.vocab = lm.model.get_output_embeddings().weight.shape[0]
        self.max_len = scoring.context_limit(lm.model)
        tok = lm.tokenizer
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        self.cache: dict[tuple, np.ndarray] = {}

    def _encode(self, task: Task, item, text: str) -> scoring.EncodedItem:
        return items.encode(self.lm.tokenizer, items.prompt_item(task, items.with_input(item, text)), self.vocab, self.max_len)

    def score(self, wanted: list[tuple[Task, object, str]], progress=None) -> None:
        """Score every (task, item, question text) not scored yet."""
        todo = list({(t.name, it.id, text): (t, it, text) for t, it, text in wanted
                     if (t.name, it.id, text) not in self.cache}.items())
        if not todo:
            return
        enc = [self._encode(t, it, text) for _, (t, it, text) in todo]
        res = scoring.score_items(self.lm.model, enc, batch_tokens=self.batch_tokens, pad_id=self.pad, progress=progress)
        for (key, _), r in zip(todo, res):
            self.cache[key] = r.logprob

    def score_with(self, task: Task, item, act_fn) -> np.ndarray:
        """Log-probabilities of the choices with `act_fn` spliced at the hook (one item, not cached)."""
        enc = [self._encode(task, item, item.input)]
        return scoring.score_items(self.lm.model, enc, hook=self.hook, act_fn=act_fn, batch_tokens=self.batch_tokens,
                                   pad_id=self.pad)[0].logprob

    def get(self, task: Task, item, text: str) -> np.ndarray:
        return self.cache[(task.name, item.id, text)]


def _row(p: items.PromptItem, det: str, cond: str, used: str, logprob, ref: reformulate.Reformulation | None,
         diag: detect.Diagnosis | None, n_flags: int) -> dict:
    probs = items.choice_probs(logprob)
    pred = int(np.argmax(logprob))
    return {"dict": det, "task": p.task.name, "family": items.family(p.task.name), "item": p.item.id,
            "condition": cond, "input": used, "changed": used != p.item.input,
            "proposed": ref.proposed if ref is not None else "", "rejected": bool(ref.rejected) if ref else False,
            "reasons": "; ".join(ref.verdict.reasons) if ref is not None and ref.verdict is not None else "",
            "rules": list(ref.rules) if ref is not None else [], "n_flagged": int(n_flags),
            "flagged_tokens": diag.flagged["token"].tolist() if diag is not None else [],
            "score": diag.score if diag is not None else float("nan"),
            "target": p.item.target, "pred": pred, "correct": pred in p.item.correct,
            "p_correct": float(probs[list(p.item.correct)].sum()), "p_pred": float(probs[pred]),
            "logprob": [float(x) for x in logprob]}


def _reformulations(p, diag, rules, domain, seed, det_name, chat, embedder, check_cache):
    """{condition: Reformulation} of one item for one dictionary (flagged, random and, with a chat, llm)."""
    s = p.region[0]
    flags = shift(diag.flagged_spans, s)
    k = len(flags)
    rnd = shift(random_spans(diag, k, _seed(seed, det_name, p.task.name, p.item.id)), s)
    out = {"flagged": _checked(p.item.input, rules, domain, flags, embedder, check_cache),
           "random": _checked(p.item.input, rules, domain, rnd, embedder, check_cache)}
    if chat is not None:
        out["llm"] = (reformulate.by_llm(chat, p.item.input, (0, len(p.item.input)), diag.flagged["token"].tolist(),
                                         rules, domain, flags, embedder=embedder) if k else
                      reformulate.Reformulation(p.item.input, p.item.input, "llm"))
    return out


def _checked(text, rules, domain, spans, embedder, cache) -> reformulate.Reformulation:
    """by_rules with the equivalence verdicts cached per (text, spans): the same rewrite is checked once."""
    key = (text, None if spans is None else tuple(spans))
    if key not in cache:
        cache[key] = reformulate.by_rules(text, rules, domain, spans, embedder=embedder)
    return cache[key]


def run_experiment(lm, hook: str, detectors: list[DictionaryDetector], tasks: list[Task], domain: str, rules: list[Rule],
                   seed: int = 0, chat=None, ablate: bool = True, n_resamples: int = bootstrap.N_RESAMPLES,
                   embedder=None, progress: bool = True) -> ExperimentResult:
    """Diagnose, reformulate and score every item under every condition; see the module docstring."""
    from tqdm.auto import tqdm

    from backend.corpus.contexts import token_strings
    from backend.model import hooks
    from backend.model.forward import HOOK_LOCK

    t0 = time.perf_counter()
    hp = hooks.parse_hook(hook, hooks.n_layers(lm.model))
    scorer = Scorer(lm, hp)
    pitems = [items.prompt_item(t, it) for t in tasks for it in t.items]
    cache: dict = {}
    plans = []  # (prompt item, {det: (diag, {cond: Reformulation})}, all-rules Reformulation)
    t_diag = 0.0
    for p in tqdm(pitems, desc="diagnose", unit="item", disable=not progress):
        t1 = time.perf_counter()
        ids, offsets = detect.tokenize_with_offsets(lm.tokenizer, p.prompt, scorer.max_len)
        with HOOK_LOCK, torch.no_grad():
            acts = hooks.capture(lm.model, hp, torch.tensor([ids], device=lm.device))[0]
        tokens = token_strings(lm.tokenizer, np.asarray(ids))
        per = {}
        for det in detectors:
            codes = detect.encode_codes(det.dictionary, acts)
            diag = detect.diagnose_codes(p.prompt, codes, tokens, offsets, det.domains, domain, det.threshold,
                                         det.labels, p.region)
            per[det.name] = (diag, _reformulations(p, diag, rules, domain, seed, det.name, chat, embedder, cache))
        t_diag += time.perf_counter() - t1
        plans.append((p, per, _checked(p.item.input, rules, domain, None, embedder, cache)))
    wanted = [(p.task, p.item, p.item.input) for p, _, _ in plans]
    for p, per, every in plans:
        wanted.append((p.task, p.item, every.text))
        wanted += [(p.task, p.item, ref.text) for _, refs in per.values() for ref in refs.values()]
    t1 = time.perf_counter()
    with tqdm(desc="score", unit="choice", disable=not progress) as bar:
        scorer.score(wanted, progress=bar.update)
    rows, n_ablated, t_ablate = [], 0, 0.0
    by_name = {d.name: d for d in detectors}
    for p, per, every in plans:
        for name, (diag, refs) in per.items():
            k = len(diag.flagged)
            rows.append(_row(p, name, "original", p.item.input, scorer.get(p.task, p.item, p.item.input), None, diag, k))
            rows.append(_row(p, name, "all", every.text, scorer.get(p.task, p.item, every.text), every, diag, k))
            for cond, ref in refs.items():
                rows.append(_row(p, name, cond, ref.text, scorer.get(p.task, p.item, ref.text), ref, diag, k))
            if ablate:
                t2 = time.perf_counter()
                feats, pos = diag.ablation()
                if feats:
                    lp = scorer.score_with(p.task, p.item, ablation_fn(by_name[name].dictionary, feats, pos))
                    n_ablated += 1
                else:
                    lp = scorer.get(p.task, p.item, p.item.input)
                row = _row(p, name, "ablate", p.item.input, lp, None, diag, k)
                row.update(changed=bool(feats), rules=[f"zero {len(feats)} features"] if feats else [])
                rows.append(row)
                t_ablate += time.perf_counter() - t2
    df = pd.DataFrame(rows)
    summary, tests = summarize(df, n_resamples, seed)
    config = {"domain": domain, "hook": hook, "dictionaries": {d.name: {"threshold": d.threshold} for d in detectors},
              "tasks": {t.name: len(t.items) for t in tasks}, "rules": [r.name for r in rules], "seed": seed,
              "llm": getattr(chat, "model_name", None), "ablate": ablate, "n_prompts_scored": len(scorer.cache),
              "n_ablation_passes": n_ablated, "seconds": round(time.perf_counter() - t0, 1),
              "seconds_diagnose": round(t_diag, 1), "seconds_score": round(time.perf_counter() - t1 - t_ablate, 1),
              "seconds_ablate": round(t_ablate, 1), "n_resamples": n_resamples,
              "diagnose_seconds_per_item": round(t_diag / max(len(plans), 1), 4)}
    return ExperimentResult(df, summary, tests, config)


def _groups(df: pd.DataFrame):
    """(family, dictionary, frame) for each family and for all families pooled ("all math")."""
    for (fam, det), g in df.groupby(["family", "dict"], sort=False):
        yield fam, det, g
    if df["family"].nunique() > 1:
        for det, g in df.groupby("dict", sort=False):
            yield "all", det, g


def summarize(df: pd.DataFrame, n_resamples: int = bootstrap.N_RESAMPLES, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary: accuracy per condition with its interval, flag and rewrite rates; tests: the paired comparisons)."""
    rows, tests = [], []
    for fam, det, g in _groups(df):
        wide = {c: gc.sort_values(["task", "item"]) for c, gc in g.groupby("condition", sort=False)}
        orig = wide["original"]
        flag_rate = float((orig["n_flagged"] > 0).mean())
        for cond in [c for c in CONDITIONS if c in wide]:
            w = wide[cond]
            acc, lo, hi = bootstrap.bootstrap_ci(w["correct"].to_numpy(), n_resamples, seed)
            pc, pc_lo, pc_hi = bootstrap.bootstrap_ci(w["p_correct"].to_numpy(), n_resamples, seed)
            rows.append({"family": fam, "dict": det, "condition": cond, "n_items": len(w), "accuracy": acc,
                         "acc_low": lo, "acc_high": hi, "p_correct": pc, "p_correct_low": pc_lo, "p_correct_high": pc_hi,
                         "flag_rate": flag_rate, "changed_rate": float(w["changed"].mean()),
                         "n_changed": int(w["changed"].sum()), "n_rejected": int(w["rejected"].sum()),
                         "chance": float(np.mean([1.0 / len(x) for x in w["logprob"]]))})
        for a, b in COMPARISONS:
            if a in wide and b in wide:
                ca, cb = wide[a]["correct"].to_numpy(), wide[b]["correct"].to_numpy()
                r = bootstrap.paired_bootstrap(ca, cb, n_resamples, seed)
                pdiff = bootstrap.paired_bootstrap(wide[a]["p_correct"].to_numpy(), wide[b]["p_correct"].to_numpy(),
                                                   n_resamples, seed)
                tests.append({"family": fam, "dict": det, "a": a, "b": b, "n_items": len(ca), "acc_a": float(ca.mean()),
                              "acc_b": float(cb.mean()), "diff": r["diff"], "diff_low": r["diff_low"],
                              "diff_high": r["diff_high"], "mcnemar_p": r["mcnemar_p"], "n_a_only": r["n_a_only"],
                              "n_b_only": r["n_b_only"], "p_correct_diff": pdiff["diff"],
                              "p_correct_diff_low": pdiff["diff_low"], "p_correct_diff_high": pdiff["diff_high"]})
    return pd.DataFrame(rows), pd.DataFrame(tests)
