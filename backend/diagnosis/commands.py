"""`python -m backend domains | diagnose | diagnose-eval`: the logic behind the CLI (backend/cli.py parses).

    domains        each feature's domain distribution -> dictionaries/<d>/domains.parquet (+ flag thresholds)
    diagnose       one prompt: per token its out-of-domain mass, top features with labels and domains, the
                   flags, the rules' reformulation and its equivalence verdict (a table, or --json FILE)
    diagnose-eval  the experiment (experiment.py) -> <run>/diagnosis/eval/ (Parquet, summary.json, chart.html)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from backend.common.atomic import write_json
from backend.common.errors import UserError
from backend.common.layout import CFG_JSON, DIAGNOSIS_DIR, dict_dir, dictionary_names, load_run
from backend.labels.llm import LLMConfig, cpu_threads

DEFAULT_TASKS = ("arithmetic.1_digit_multiplication", "arithmetic.2_digit_division", "arithmetic.3_digit_addition",
                 "arithmetic.1_digit_subtraction", "math_qa", "math_symbols", "math_operators")
"""One BIG-bench arithmetic subtask per operation (words: "12 plus 7"), the corpus's word problems, their equations with
ASCII operators (x /), and the project-made symbol arithmetic (x / ^ |a - b|) where a misreading is most likely."""


@dataclass
class DiagnoseOptions(LLMConfig):
    """How `python -m backend diagnose` reads one prompt."""

    domain: str = "math"
    """The domain the prompt belongs to (one of the dictionary's domains: `python -m backend domains` lists them)."""
    threshold: float | None = None
    """Flag tokens whose out-of-domain mass exceeds this (default: the domain's threshold from held-out text)."""
    top_k: int = 5
    """Features shown per token."""
    rules: str | None = None
    """A TOML file of extra rewrite rules (backend/diagnosis/rules.toml's format), tried before the built-in ones."""
    reformulator: Literal["rules", "local-llm", "openai"] = "rules"
    """rules (deterministic, rules.toml) or an LLM back-end that rewrites the prompt; both pass the equivalence check."""
    json_out: str | None = field(default=None, metadata={"flag": "json"})
    """Also write the whole diagnosis (every token, its features, the reformulation) to this JSON file."""


@dataclass
class DiagnoseEvalOptions(LLMConfig):
    """What `python -m backend diagnose-eval` measures."""

    dicts: list[str] = field(default_factory=lambda: ["all"])
    """Dictionaries to diagnose with (comma-separated, or all: every analysed and labelled one)."""
    task: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    """Tasks (comma-separated; arithmetic.* subtasks are reported together as the arithmetic family)."""
    n: int = 100
    """Evaluated items per task (the suite's eval split: none was seen when the prompt format was chosen)."""
    domain: str = "math"
    """The expected domain of every prompt."""
    reformulator: Literal["rules", "local-llm", "openai"] = "rules"
    """rules only, or also an LLM rewrite of the flagged prompts (an extra `llm` condition; minutes per 100 items)."""
    ablate: bool = True
    """Also zero-ablate the off-domain features at the flagged tokens instead of rewriting (the `ablate` condition)."""
    rules: str | None = None
    """A TOML file of extra rewrite rules, tried before the built-in ones."""
    seed: int = 0
    """Seed of the random flags (control d) and of the bootstrap."""
    resamples: int = 2000
    """Bootstrap resamples (at least 1000)."""


def load_labels(run, dict_name: str) -> dict[int, str]:
    from backend.labels.embeddings import labelled_features

    df = labelled_features(run, dict_name)
    return {int(f): str(t) for f, t in zip(df["feature"], df["label"])}


def ensure_domains(run, dict_name: str, device: str = "cpu"):
    """The dictionary's FeatureDomains, computed now (with a note) when `domains` has not been run."""
    from backend.diagnosis.domains import compute_domains, load_domains
    from backend.store import query as store

    folder = dict_dir(run, dict_name)
    if not (folder / CFG_JSON).is_file():
        raise UserError(f"no dictionary {dict_name!r} in {run}")
    store.store_file(run, dict_name, "features.parquet")  # analysed, or a UserError naming `analyze`
    try:
        return load_domains(run, dict_name)
    except UserError:
        print(f"{dict_name}: no feature domains yet; computing them (python -m backend domains)")
        compute_domains(run, dict_name, device=device)
        return load_domains(run, dict_name)


def _chat(kind: str, o: LLMConfig, run, device: str, lm=None):
    if kind == "rules":
        return None
    from backend.labels.llm import make_chat

    return make_chat(kind, o.llm_model, o.llm_base_url, o.llm_api_key_env, cache_dir=Path(run) / DIAGNOSIS_DIR / "llm_cache",
                     device=device, lm=lm if kind == "local-llm" and not o.llm_model else None)


def run_domains(run, dict_name: str, cfg, device: str = "cpu") -> None:
    from backend.diagnosis.domains import compute_domains, load_domains

    load_run(run)
    if not (dict_dir(run, dict_name) / CFG_JSON).is_file():
        raise UserError(f"no dictionary {dict_name!r} in {run}")
    path = compute_domains(run, dict_name, cfg, device=device)
    fd = load_domains(run, dict_name)
    counts = fd.table["domain"].replace("", "(dead)").value_counts()
    print(f"feature domains of {dict_name}: " + ", ".join(f"{d} {n}" for d, n in counts.items()))
    print(f"written: {path} ({fd.meta['seconds']:.0f} s)")


def format_diagnosis(diag, top: int = 3) -> str:
    """The table `diagnose` prints: one line per token of the region."""
    lines = [f"{'pos':>4}  {'token':<14}{'ood':>6}  flag  top features (id: label [domain])"]
    for _, r in diag.table[diag.table["in_region"]].iterrows():
        feats = "; ".join(f"{f}: {lab[:32] or '-'} [{dom}]" for f, lab, dom in
                          list(zip(r["features"], r["labels"], r["domains"]))[:top])
        lines.append(f"{r['pos']:>4}  {repr(r['token'])[:14]:<14}{r['ood']:>6.2f}  {'FLAG' if r['flagged'] else '    '}  {feats}")
    s = diag.summary()
    lines.append(f"domain {diag.domain}, threshold {diag.threshold:.3f}: {s['n_flagged']} of {s['n_tokens']} tokens flagged "
                 f"{s['flagged_tokens']}; prompt score (max out-of-domain mass) {s['score']:.3f}; {diag.seconds * 1000:.0f} ms")
    return "\n".join(lines)


def run_diagnose(run, dict_name: str, text: str, o: DiagnoseOptions, device: str = "auto") -> dict:
    """`python -m backend diagnose`: print the diagnosis and the reformulation; returns the JSON record."""
    from backend.diagnosis import detect, reformulate
    from backend.diagnosis.rules import load_rules
    from backend.dictionaries import load_dictionary
    from backend.model.loading import load_model

    meta = load_run(run)
    if not text or not text.strip():
        raise UserError("--text is empty: give the prompt to diagnose")
    domains = ensure_domains(run, dict_name)
    domains.index(o.domain)
    rules = load_rules(o.rules)

    lm = load_model(meta["model"], device=device)
    dictionary = load_dictionary(dict_dir(run, dict_name), device="cpu")
    with cpu_threads(lm.device):
        diag = detect.diagnose_text(lm, dictionary, meta["hook"], text, domains, o.domain, load_labels(run, dict_name),
                                    o.threshold, top_k=o.top_k)
    print(format_diagnosis(diag))
    chat = _chat(o.reformulator, o, run, device, lm)
    region = (0, len(text))
    if chat is None:
        ref = reformulate.by_rules(text, rules, o.domain, diag.flagged_spans, region)
    else:
        ref = reformulate.by_llm(chat, text, region, diag.flagged["token"].tolist(), rules, o.domain, diag.flagged_spans)
    if not ref.changed:
        print("reformulation: none (no flagged token" + (" matches a rule)" if len(diag.flagged) else ")"))
    else:
        print(f"reformulation ({ref.method}{': ' + ', '.join(ref.rules) if ref.rules else ''}): {ref.proposed!r}")
        print(f"equivalence: {ref.verdict.describe()}" + (f" ({'; '.join(ref.verdict.reasons)})" if ref.verdict.reasons else ""))
    record = {**diag.to_json(), "reformulation": {"method": ref.method, "proposed": ref.proposed, "changed": ref.changed,
                                                   "accepted": ref.accepted, "rules": ref.rules,
                                                   "verdict": ref.verdict.describe() if ref.verdict else None}}
    if o.json_out:
        write_json(Path(o.json_out), record)
        print(f"written: {o.json_out}")
    return record


def eval_dir(run) -> Path:
    return Path(run) / DIAGNOSIS_DIR / "eval"


def pick_dicts(run, names: list[str]) -> list[str]:
    from backend.labels.embeddings import labelled_features

    if names in ([], ["all"]):
        found = []
        for n in dictionary_names(run):
            try:
                if len(labelled_features(run, n)):
                    found.append(n)
            except UserError:
                continue
        if not found:
            raise UserError(f"no dictionary of {run} is analysed and labelled; run `python -m backend explain` first")
        return found
    return names


def run_diagnose_eval(run, o: DiagnoseEvalOptions, device: str = "auto", out: Path | None = None):
    """`python -m backend diagnose-eval`: the experiment; prints the table, writes Parquet + summary.json + chart.html."""
    from backend.diagnosis import report
    from backend.diagnosis.experiment import DictionaryDetector, run_experiment
    from backend.diagnosis.rules import load_rules
    from backend.dictionaries import load_dictionary
    from backend.model.loading import load_model
    from backend.tasks.evaluate import select_tasks

    meta = load_run(run)
    if o.resamples < 1000:
        raise UserError(f"--resamples must be at least 1000, got {o.resamples}")
    if o.n < 1:
        raise UserError(f"--n must be at least 1, got {o.n}")
    rules = load_rules(o.rules)
    tasks = select_tasks(",".join(o.task), None, o.n)
    detectors = []
    for name in pick_dicts(run, o.dicts):
        fd = ensure_domains(run, name)
        fd.index(o.domain)
        detectors.append(DictionaryDetector(name, load_dictionary(dict_dir(run, name), device="cpu"), fd,
                                            load_labels(run, name), fd.threshold(o.domain)))
    lm = load_model(meta["model"], device=device)
    chat = _chat(o.reformulator, o, run, device, lm)
    t0 = time.perf_counter()
    with cpu_threads(lm.device):  # one thread on 2 busy cores: 1.1 s per 61-token pass to layer 15 against 8-12 s with 2
        result = run_experiment(lm, meta["hook"], detectors, tasks, o.domain, rules, seed=o.seed, chat=chat,
                                ablate=o.ablate, n_resamples=o.resamples)
    result.config.update(run=str(run), wall_seconds=round(time.perf_counter() - t0, 1), n=o.n)
    folder = out or eval_dir(run)
    report.write_results(result, folder)
    print(report.format_table(result))
    print(f"{result.config['wall_seconds']:.0f} s; results: {folder}/")
    return result

