"""The whole pipeline written out once: `build_dictionary` (train or build, then measure), the demo, `info`.

`python -m backend demo`: the default store, end to end, on the embedded model and corpus.

cache (SmolLM2-135M, blocks.15.hook_resid_post, 200k tokens) -> for each dictionary kind: train
(d_sae 4608) -> metrics -> analyze -> compare all of them, into `data/demo`. Each step is skipped
when its output already exists, so an interrupted demo continues where it stopped, and a later
`--kinds` adds dictionaries to an existing demo; the model is loaded once and shared.

The kinds: `relu-l1` (the app opens it first), `topk`, `mlp`, `sparse-coding`, and `sae-ito`
(relu-l1's decoder with codes found by gradient pursuit, built from relu-l1 without training).
They all fit the demo's budget on 2 CPU cores; `--kinds relu-l1` gives the quickest demo.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from backend.common.atomic import read_json
from backend.common.errors import UserError
from backend.common.layout import (
    CFG_JSON,
    FEATURES,
    METRICS,
    RUN_JSON,
    dict_dir,
    dictionary_names,
    load_run,
    read_metrics,
)

DEMO_DICT = "relu-l1"  # the dictionary the app opens first
DEMO_KINDS = ("relu-l1", "topk", "mlp", "sparse-coding", "sae-ito")
SAE_ITO_BASE = "relu-l1"


@dataclass
class DemoConfig:
    """What `python -m backend demo` builds; None leaves a setting to the stage that owns it."""

    tokens: int | None = None
    """Token positions to cache; None = `cache`'s default (CacheConfig.tokens, chosen for the demo's budget)."""
    d_sae: int | None = None
    """Features of every dictionary; None = `train`'s default (TrainConfig.d_sae: 8 x d_in, 4608 on SmolLM2-135M)."""
    kinds: str = "all"
    """Comma-separated dictionary kinds to build (of DEMO_KINDS: relu-l1, topk, mlp, sparse-coding, sae-ito), or
    all; relu-l1 alone is the quickest demo."""


def parse_kinds(spec: str | tuple | list | None) -> tuple[str, ...]:
    """'a,b' or a sequence -> kinds, each known to the demo (relu-l1 always first: the rest compare to it)."""
    if spec is None or spec == "all":
        return DEMO_KINDS
    kinds = [k.strip() for k in (spec.split(",") if isinstance(spec, str) else spec) if k.strip()]
    bad = [k for k in kinds if k not in DEMO_KINDS]
    if bad:
        raise UserError(f"unknown demo kind {', '.join(map(repr, bad))}; choose from {', '.join(DEMO_KINDS)}")
    if "sae-ito" in kinds and SAE_ITO_BASE not in kinds:
        kinds.insert(0, SAE_ITO_BASE)
    return tuple(dict.fromkeys([DEMO_DICT] + kinds)) if DEMO_DICT in kinds else tuple(dict.fromkeys(kinds))


def demo_complete(out: str | Path, kinds=DEMO_KINDS) -> bool:
    return all((dict_dir(out, k) / FEATURES).is_file() for k in kinds)


def build_dictionary(run_dir: str | Path, cfg, name: str, device: str = "auto", resume: bool = False,
                     force: bool = False, compute_ce: bool = True, lm=None, ce_seqs: int = 64,
                     progress: bool = True, anchor=None) -> Path:
    """Train (a `TrainConfig`) or build (an `ItoConfig`: sae-ito) dictionaries/<name>, then measure it on the
    held-out split into metrics.json (spliced CE on `ce_seqs` sequences unless `compute_ce` is False).
    With `anchor` (an enabled `AnchorConfig`) the training is anchored (backend/training/anchored.py)."""
    from backend.dictionaries.sae_ito import ItoConfig
    from backend.evaluation.metrics import compute_metrics
    from backend.model.loading import pick_device
    from backend.training.ito import build_ito_dictionary
    from backend.training.trainer import train_dictionary

    extra = None
    if isinstance(cfg, ItoConfig):
        out = build_ito_dictionary(run_dir, cfg, name, force=force)
        dev = str(pick_device(device))
    elif anchor is not None:
        from backend.training.anchored import train_anchored

        if lm is None and anchor.needs_model:
            from backend.common.layout import load_run
            from backend.model.loading import load_model

            lm = load_model(load_run(run_dir)["model"], device=device)
        trainer = train_anchored(run_dir, cfg, anchor, name, device=device, resume=resume, force=force,
                                 progress=progress, lm=lm, task_items=_anchor_task_items(anchor, lm))
        out, dev = trainer.final_dir, str(trainer.device)
        extra = {"train_seconds": round(trainer.train_seconds, 1), "train_tokens": trainer.tokens_seen}
    else:
        trainer = train_dictionary(run_dir, cfg, name, device=device, resume=resume, force=force, progress=progress)
        out, dev = trainer.final_dir, str(trainer.device)
        extra = {"train_seconds": round(trainer.train_seconds, 1), "train_tokens": trainer.step_i * cfg.batch_size}
    compute_metrics(run_dir, name, lm=lm, ce_seqs=ce_seqs if compute_ce else 0, device=dev, extra=extra)
    return out


def _anchor_task_items(anchor, lm):
    """The task term's items (task-suite items no evaluation uses), when the term is on."""
    if anchor.task_loss <= 0:
        return None
    from backend.tasks.anchor_items import task_items

    return task_items(lm.tokenizer)


def _build_demo_dictionary(out: Path, kind: str, d_sae: int | None, device: str, lm) -> None:
    from backend.dictionaries.sae_ito import ItoConfig
    from backend.training.trainer import TrainConfig

    cfg = ItoConfig(base=SAE_ITO_BASE, method="gp") if kind == "sae-ito" else TrainConfig(kind=kind, d_sae=d_sae)
    build_dictionary(out, cfg, name=kind, device=device, lm=lm, force=True)


def run_demo(out: str | Path, tokens: int | None = DemoConfig.tokens, d_sae: int | None = DemoConfig.d_sae,
             device: str = "auto", force: bool = False, kinds=DemoConfig.kinds) -> Path:
    out = Path(out)
    kinds = parse_kinds(kinds)
    if demo_complete(out, kinds) and not force:
        print(f"demo store is ready: {out} (pass --force to rebuild)")
        return out
    from backend.activations.cache import CacheConfig, cache_activations
    from backend.analysis.analyze import analyze
    from backend.evaluation.compare import compare_dictionaries
    from backend.model.loading import DEFAULT_MODEL, load_model

    t0 = time.time()
    timings = {}
    print("demo: loading the embedded SmolLM2-135M-Instruct (de-quantising the GGUF takes ~30 s on CPU)")
    lm = load_model(DEFAULT_MODEL, device)
    timings["load_model"] = time.time() - t0
    if force or not (out / RUN_JSON).is_file():
        t = time.time()
        cache_activations(CacheConfig(device=device, **({} if tokens is None else {"tokens": tokens})), out, force=force, lm=lm)
        timings["cache"] = time.time() - t
    for kind in kinds:
        ddir = dict_dir(out, kind)
        if force or not (ddir / METRICS).is_file():
            t = time.time()
            print(f"demo: dictionary {kind}")
            _build_demo_dictionary(out, kind, d_sae, device, lm)
            timings[f"train {kind}"] = time.time() - t
        if force or not (ddir / FEATURES).is_file():
            t = time.time()
            analyze(out, kind, lm=lm, device=device)
            timings[f"analyze {kind}"] = time.time() - t
    if len(kinds) > 1:
        t = time.time()
        compare_dictionaries(out, list(kinds))
        timings["compare"] = time.time() - t
    timings["total"] = time.time() - t0
    print("demo: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    print(f"demo store is ready: {out}")
    return out


METRIC_KEYS = ("l0", "explained_variance", "fvu", "mse", "dead_fraction", "ce_loss_score", "delta_ce", "kl_div")


def format_info(run_dir: str | Path) -> str:
    m = load_run(run_dir)
    lines = [
        f"run:      {Path(run_dir).resolve()}",
        f"model:    {m['model']}  ({m.get('model_source', '')})",
        f"hook:     {m['hook']}  (d_in {m['d_in']})",
        f"corpus:   {m.get('corpus')}  sources: {', '.join(f'{k} {v}' for k, v in m.get('source_counts', {}).items())}",
        f"tokens:   {m['n_tokens']:,} in {m['n_seqs']} contexts of {m['ctx_len']} (held out from seq {m.get('heldout_from')})",
    ]
    names = dictionary_names(run_dir)
    lines.append(f"dictionaries: {len(names)}")
    for n in names:
        d = dict_dir(run_dir, n)
        cfg = read_json(d / CFG_JSON)
        met = read_metrics(run_dir, n)
        analysed = (d / FEATURES).is_file()
        figures = "  ".join(f"{k}={met[k]:.4g}" for k in METRIC_KEYS if isinstance(met.get(k), (int, float)))
        lines.append(f"  {n}: {cfg.get('kind', cfg.get('architecture'))} d_sae={cfg.get('d_sae')}"
                     f"{' analysed' if analysed else ''}  {figures}")
    return "\n".join(lines)
