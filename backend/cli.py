"""`python -m backend <subcommand>`: cache, train, analyze, info, import, demo, compare, labels, ...

Every subcommand has --help. A `UserError` (bad input the user can fix) prints one line
`error: ...` and exits with status 2; heavy imports happen inside the subcommands so --help is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from backend.common.errors import UserError
from backend.common.layout import DEMO_DIR, SYNTH_DIR


def _add_cache(sub) -> None:
    # defaults live in CacheConfig (None = its default); importing backend.activations.cache here would load torch for --help
    p = sub.add_parser("cache", help="run the model over a corpus and cache activations at a hook point")
    p.add_argument("--model", default=None, help="HF hub id, local folder, .gguf file, or smollm2-135m (the embedded default)")
    p.add_argument("--hook", default=None, help="blocks.<L>.hook_resid_pre|hook_resid_post|hook_mlp_out|hook_attn_out "
                   "(default blocks.15.hook_resid_post)")
    p.add_argument("--corpus", default="default", help="default | folder of .txt/.md | file.jsonl | file.parquet | hf:NAME[:SPLIT]")
    p.add_argument("--tokens", type=int, default=None, help="token positions to cache, BOS included (default 200000)")
    p.add_argument("--ctx-len", type=int, default=None, help="context length in tokens (default 128)")
    p.add_argument("--seed", type=int, default=0, help="document shuffle seed")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per forward pass")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="on-disk activation dtype")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out", required=True, help="run folder to create, e.g. data/runs/demo")
    p.add_argument("--force", action="store_true", help="rebuild a finished run (the old one stays until the new one is complete)")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a dictionary on a run's cached activations")
    p.add_argument("--run", required=True, help="run folder made by `cache`")
    p.add_argument("--kind", default="relu-l1",
                   help="relu-l1 | topk | batchtopk | mlp | sparse-coding | sae-ito (built from --base, no training)")
    p.add_argument("--name", default=None, help="dictionary name (default: the kind; sae-ito: sae-ito-<method>)")
    p.add_argument("--d-sae", type=int, default=None, help="number of features")
    p.add_argument("--l1-coeff", type=float, default=None, help="L1 coefficient")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--epochs", type=float, default=None, help="passes over the training tokens")
    p.add_argument("--batch-size", type=int, default=None, help="tokens per step")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint of an interrupted run")
    p.add_argument("--force", action="store_true", help="replace an existing dictionary of that name")
    p.add_argument("--no-ce", action="store_true", help="skip the spliced-model CE metrics")
    g = p.add_argument_group("kind-specific (see TrainConfig in backend/training/trainer.py, ItoConfig in backend/training/ito.py)")
    g.add_argument("--k", type=int, default=None, help="topk/batchtopk: latents per token (32); mlp/sparse-coding: top-k variant")
    g.add_argument("--aux-coeff", type=float, default=None, help="topk/batchtopk: AuxK weight (1/32)")
    g.add_argument("--hidden", type=int, default=None, help="mlp: hidden width (d_in/2)")
    g.add_argument("--mlp-layers", type=int, default=None, help="mlp: hidden layers, 1 or 2")
    g.add_argument("--n-iter", type=int, default=None, help="sparse-coding (20) / sae-ito fista (20): FISTA iterations")
    g.add_argument("--pool", type=int, default=None,
                   help="sparse-coding (48) / sae-ito (2*target L0): candidate atoms per token, 0 = all")
    g.add_argument("--base", default=None, help="sae-ito: the trained dictionary whose decoder is used")
    g.add_argument("--method", default=None, help="sae-ito: gp (default) | mp | fista")
    g.add_argument("--target-l0", type=int, default=None, help="sae-ito: atoms per token (default: the base's l0)")


def _add_analyze(sub) -> None:
    p = sub.add_parser("analyze", help="analyse every feature of a dictionary into Parquet stores")
    p.add_argument("--run", required=True)
    p.add_argument("--dict", required=True, dest="dict_name", help="dictionary name under <run>/dictionaries/")
    p.add_argument("--device", default="auto")


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="what is in a run: model, hook, tokens, dictionaries and their metrics")
    p.add_argument("--run", required=True)


def _add_import(sub) -> None:
    p = sub.add_parser("import", help="bring an SAELens folder (cfg.json + sae_weights.safetensors) into a run")
    p.add_argument("--run", required=True)
    p.add_argument("--saelens", required=True, help="folder in the SAELens layout")
    p.add_argument("--name", required=True, help="dictionary name in the run")


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="build the default store: cache -> train -> analyze on the embedded model and corpus")
    p.add_argument("--out", default=str(DEMO_DIR), help="run folder of the demo")
    p.add_argument("--tokens", type=int, default=200_000)
    p.add_argument("--d-sae", type=int, default=4608)
    p.add_argument("--device", default="auto")
    p.add_argument("--force", action="store_true", help="rebuild even if the demo store exists")
    p.add_argument("--kinds", default="all",
                   help="comma-separated dictionary kinds to build: relu-l1,topk,mlp,sparse-coding,sae-ito (default all)")


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="compare dictionaries of a run: matched features, metrics, encode cost")
    p.add_argument("--run", required=True)
    p.add_argument("--dicts", default="all", help="comma-separated dictionary names, or all (default)")
    p.add_argument("--threshold", type=float, default=0.7, help="decoder cosine above which matched features count as shared")
    p.add_argument("--time-tokens", type=int, default=4096, help="held-out tokens used to time each encoder")


def _add_labels(sub) -> None:
    p = sub.add_parser("labels", help="export or import labels and validation verdicts (CSV or JSON)")
    ls = p.add_subparsers(dest="labels_cmd", required=True)
    e = ls.add_parser("export", help="write every label version (or verdict) of a run to a file")
    e.add_argument("--run", required=True)
    e.add_argument("--dict", dest="dict_name", default=None, help="only this dictionary (default: all)")
    e.add_argument("--format", dest="fmt", choices=["csv", "json"], default="csv")
    e.add_argument("--what", choices=["labels", "verdicts"], default="labels", help="label versions or validation verdicts")
    e.add_argument("--out", required=True, help="file to write")
    i = ls.add_parser("import", help="append the labels or verdicts of an export file (never overwrites)")
    i.add_argument("--run", required=True)
    i.add_argument("--file", required=True, help=".csv or .json written by `labels export`")
    i.add_argument("--dict", dest="dict_name", default=None, help="dictionary for rows that name none")


def _add_explain(sub) -> None:
    p = sub.add_parser("explain", help="explain features (deterministic or LLM) and save the explanations as labels")
    p.add_argument("--run", required=True)
    p.add_argument("--dict", required=True, dest="dict_name", help="dictionary name under <run>/dictionaries/")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--features", default=None, help="comma-separated feature ids (default: every alive feature)")
    g.add_argument("--top", type=int, default=None, help="the N most frequently firing alive features")
    p.add_argument("--explainer", default="deterministic", choices=["deterministic", "local-llm", "openai"],
                   help="deterministic (offline, instant) | local-llm (a local HF instruct model) | openai (any OpenAI-compatible endpoint)")
    p.add_argument("--llm-model", default=None, help="local-llm: model name or folder (default smollm2-135m); openai: model id")
    p.add_argument("--llm-base-url", default=None, help="openai: endpoint base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--llm-api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--author", default="explainer", help="author recorded with each label version")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per local generation batch")
    p.add_argument("--overwrite-human", action="store_true", help="also explain features whose current label is human-written")
    p.add_argument("--no-index", action="store_true",
                   help="skip refreshing the label-search embeddings (else done here, so the app need not: ~1-2 min for 4.6k labels on 2 CPU cores)")
    p.add_argument("--device", default="auto")


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="detection-score the current labels on held-out contexts (precision, recall, F1)")
    p.add_argument("--run", required=True)
    p.add_argument("--dict", required=True, dest="dict_name", help="dictionary name under <run>/dictionaries/")
    p.add_argument("--scorer", default="embedding", choices=["embedding", "lexical", "local-llm", "openai"],
                   help="embedding (all-MiniLM-L6-v2, no LLM) | lexical (label's tokens at the peak, no model) | local-llm | openai")
    p.add_argument("--n", type=int, default=10, help="held-out activating and as many non-activating contexts per feature")
    p.add_argument("--threshold", type=float, default=0.75,
                   help="a label holds when its F1 is at least this (answering yes to everything scores 2/3)")
    p.add_argument("--features", default=None, help="comma-separated feature ids (default: every labelled feature)")
    p.add_argument("--sample", type=int, default=None, help="score a random sample of this many labels (seeded)")
    p.add_argument("--source", default=None, help="only labels of these sources (comma-separated: human,auto-deterministic,auto-llm)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--llm-model", default=None)
    p.add_argument("--llm-base-url", default=None)
    p.add_argument("--llm-api-key-env", default="OPENAI_API_KEY")
    p.add_argument("--device", default="auto")


def _feature_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--features must be comma-separated integers, not {text!r}") from None
    if not out:
        raise UserError("--features is empty")
    return out


def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="synthetic amortisation-gap benchmark: planted sparse codes, SAE vs sparse coding vs MLP vs ITO")
    p.add_argument("--n", type=int, default=16, help="number of sources N")
    p.add_argument("--ref", default="8,3", help="reference cell M,K (run in every setting)")
    p.add_argument("--m", default="4,6,8,10,12", help="comma-separated grid of dimensions M")
    p.add_argument("--k", default="1,2,3,4,5", help="comma-separated grid of active sources K")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (one problem and initialisation each)")
    p.add_argument("--samples", type=int, default=1024, help="samples, split evenly into train and test")
    p.add_argument("--noise", type=float, default=0.01, help="std of the Gaussian noise")
    p.add_argument("--signed", action="store_true", help="signed N(0,1) sources instead of |N(0,1)|")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: all)")
    p.add_argument("--settings", default="known_codes,known_dict,unknown", help="settings run at the reference cell")
    p.add_argument("--grid-settings", default="known_dict,unknown", help="settings run over the whole (M, K) grid")
    p.add_argument("--sklearn-on-grid", action="store_true", help="run the scikit-learn baselines on the whole grid (slow)")
    p.add_argument("--quick", action="store_true", help="tiny grid and short training, for a smoke test (seconds)")
    p.add_argument("--out", default=str(SYNTH_DIR), help="folder for results.parquet, summary.md, figures/")


# ---------------------------------------------------------------------------------------------- tasks
def _add_tasks(sub) -> None:
    p = sub.add_parser("tasks", help="multiple-choice tasks scored by log-likelihood, clean vs with a dictionary spliced in")
    ts = p.add_subparsers(dest="tasks_cmd", required=True)
    ls = ts.add_parser("list", help="the known tasks: items, choices, chance, source; * = in the default suite")
    ls.add_argument("--no-fetch", action="store_true", help="do not generate the BIG-bench tasks if they are missing")
    f = ts.add_parser("fetch", help="download the bigbench 0.0.1 sdist (pip) and generate its task files into data/tasks/")
    f.add_argument("--force", action="store_true", help="generate the task files again")
    e = ts.add_parser("eval", help="accuracy clean, spliced without and with the error term, with bootstrap 95%% intervals")
    e.add_argument("--model", default=None, help="model (default: the run's, else smollm2-135m)")
    e.add_argument("--run", default=None, help="run folder holding the dictionary; results go to <run>/tasks/<dict>/")
    e.add_argument("--dict", dest="dict_name", default=None, help="dictionary name under <run>/dictionaries/")
    e.add_argument("--task", default="default", help="comma-separated task names, or default (the default suite)")
    e.add_argument("--task-file", action="append", default=[], help="a BIG-bench task.json (repeatable); replaces --task")
    e.add_argument("--n", type=int, default=None, help="items per task (default: the suite's count; all for --task-file)")
    e.add_argument("--format", dest="prompt_format", default=None, help="prompt format: bigbench | qa | chat (default bigbench)")
    e.add_argument("--no-control", action="store_true", help="skip the spliced-with-error-term control condition")
    e.add_argument("--batch-tokens", type=int, default=2048, help="padded tokens per forward pass")
    e.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (>= 1000)")
    e.add_argument("--device", default="auto")


def cmd_tasks(a) -> None:
    if a.tasks_cmd == "fetch":
        from backend.tasks.bigbench_source import generate_bigbench_tasks

        print(f"BIG-bench tasks: {generate_bigbench_tasks(force=a.force)}")
    elif a.tasks_cmd == "list":
        from backend.tasks.suite import DEFAULT_SUITE, load_task, task_names

        print(f"{'task':<36}{'items':>7}{'choices':>9}{'chance':>8}  source")
        for name in task_names(fetch=not a.no_fetch):
            t = load_task(name)
            k = sorted({len(it.choices) for it in t.items})
            mark = f"* {DEFAULT_SUITE[name]}" if name in DEFAULT_SUITE else ""
            print(f"{name:<36}{len(t.items):>7}{'-'.join(map(str, (k[0], k[-1]) if len(k) > 1 else k)):>9}"
                  f"{t.chance:>8.3f}  {t.source[:60]} {mark}")
    else:
        from backend.tasks.evaluate import run_task_eval

        run_task_eval(model=a.model, run=a.run, dict_name=a.dict_name, task=a.task, task_files=a.task_file, n=a.n,
                 prompt_format=a.prompt_format, control=not a.no_control, batch_tokens=a.batch_tokens,
                 resamples=a.resamples, device=a.device)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m backend", description="Sparse-dictionary workbench backend.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for add in (_add_cache, _add_train, _add_analyze, _add_info, _add_import, _add_demo, _add_compare, _add_labels,
                _add_explain, _add_score, _add_synth, _add_tasks):
        add(sub)
    return ap


def cmd_cache(a) -> None:
    from backend.activations.cache import CacheConfig, cache_activations

    given = {"model": a.model, "hook": a.hook, "corpus": a.corpus, "tokens": a.tokens, "ctx_len": a.ctx_len, "seed": a.seed,
             "batch_size": a.batch_size, "dtype": a.dtype, "device": a.device}
    cfg = CacheConfig(**{k: v for k, v in given.items() if v is not None})
    out = cache_activations(cfg, a.out, force=a.force)
    print(f"cached run: {out}")


def cmd_train(a) -> None:
    import dataclasses

    from backend.common.layout import dict_dir, load_run
    from backend.pipeline import build_dictionary
    from backend.training.trainer import TrainConfig

    load_run(a.run)
    name = a.name or (f"sae-ito-{a.method or 'gp'}" if a.kind == "sae-ito" else a.kind)
    if a.kind == "sae-ito":
        from backend.training.ito import ItoConfig

        if not a.base:
            raise UserError("--kind sae-ito needs --base NAME, a trained dictionary of the run")
        ito = {"base": a.base, "method": a.method, "target_l0": a.target_l0, "pool": a.pool, "n_iter": a.n_iter}
        cfg = ItoConfig(**{k: v for k, v in ito.items() if v is not None})
        path = build_dictionary(a.run, cfg, name, force=a.force, device=a.device, compute_ce=not a.no_ce)
        print(f"built dictionary: {path}")
        return
    if a.base or a.method or a.target_l0:
        raise UserError("--base, --method and --target-l0 are for --kind sae-ito")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {"kind": a.kind, "d_sae": a.d_sae, "l1_coeff": a.l1_coeff, "lr": a.lr, "epochs": a.epochs,
             "batch_size": a.batch_size, "seed": a.seed, "k": a.k, "aux_coeff": a.aux_coeff, "hidden": a.hidden,
             "mlp_layers": a.mlp_layers, "n_iter": a.n_iter, "pool": a.pool}
    cfg = TrainConfig(**{k: v for k, v in given.items() if v is not None and k in fields})
    if dict_dir(a.run, name).exists() and not (a.force or a.resume):
        raise UserError(f"dictionary {name!r} already exists in {a.run}; pass --force to replace it")
    path = build_dictionary(a.run, cfg, name=name, device=a.device, resume=a.resume, force=a.force,
                            compute_ce=not a.no_ce)
    print(f"trained dictionary: {path}")


def cmd_analyze(a) -> None:
    from backend.analysis.analyze import analyze
    from backend.common.layout import dict_dir, load_run

    load_run(a.run)
    if not (dict_dir(a.run, a.dict_name) / "cfg.json").is_file():
        raise UserError(f"no dictionary {a.dict_name!r} in {a.run}")
    path = analyze(a.run, a.dict_name, device=a.device)
    print(f"analysed: {path}")


def cmd_info(a) -> None:
    from backend.pipeline import format_info

    print(format_info(a.run))


def cmd_import(a) -> None:
    from backend.common.layout import dict_dir, load_run
    from backend.dictionaries.saelens_io import import_saelens

    meta = load_run(a.run)
    dest = dict_dir(a.run, a.name)
    if dest.exists():
        raise UserError(f"dictionary {a.name!r} already exists in {a.run}")
    import_saelens(a.saelens, dest, expect_d_in=meta["d_in"], expect_hook=meta["hook"])
    print(f"imported {a.saelens} as {dest}")


def cmd_demo(a) -> None:
    from backend.pipeline import run_demo

    run_demo(a.out, tokens=a.tokens, d_sae=a.d_sae, device=a.device, force=a.force, kinds=a.kinds)


def cmd_compare(a) -> None:
    from backend.evaluation.compare import (
        compare_dictionaries,
        comparisons_dir,
        format_summary,
    )

    summary = compare_dictionaries(a.run, a.dicts, threshold=a.threshold, time_tokens=a.time_tokens)
    print(format_summary(summary))
    print(f"written: {comparisons_dir(a.run)}")


def cmd_labels(a) -> None:
    from backend.store import label_io as labels_io
    if a.labels_cmd == "export":
        n = labels_io.export(a.run, a.out, fmt=a.fmt, dict_name=a.dict_name, what=a.what)
        print(f"exported {n} {a.what} rows to {a.out}")
    else:
        kind, n_read, n_new = labels_io.import_file(a.run, a.file, dict_name=a.dict_name)
        print(f"imported {n_new} new {kind} rows of {n_read} from {a.file}")


def cmd_explain(a) -> None:
    from backend.labels.explain import explain_features

    r = explain_features(a.run, a.dict_name, features=_feature_list(a.features), top=a.top, explainer=a.explainer,
                         author=a.author, llm_model=a.llm_model, llm_base_url=a.llm_base_url,
                         llm_api_key_env=a.llm_api_key_env, device=a.device, batch_size=a.batch_size,
                         overwrite_human=a.overwrite_human)
    for f, text in list(r["explanations"].items())[:5]:
        print(f"  {f}: {text}")
    print(f"explained {r['n_features'] - r['n_skipped_human'] - r['n_dead']} features of {a.dict_name} ({a.explainer}) in "
          f"{r['seconds']:.1f} s: {r['n_saved']} new label versions, {r['n_unchanged']} unchanged, "
          f"{r['n_skipped_human']} human labels kept, {r['n_dead']} dead" + (f", {r['cache_hits']} cached replies" if r["cache_hits"] else ""))
    if not a.no_index and r["n_saved"]:
        import time

        from backend.labels.embeddings import label_embeddings

        t0 = time.perf_counter()
        labels, _ = label_embeddings(a.run, a.dict_name)
        print(f"label-search index: {len(labels)} labels embedded or reused in {time.perf_counter() - t0:.1f} s")


def cmd_score(a) -> None:
    from backend.labels.score import run_scoring

    sources = [s.strip() for s in a.source.split(",") if s.strip()] if a.source else None
    s = run_scoring(a.run, a.dict_name, scorer=a.scorer, n=a.n, threshold=a.threshold, seed=a.seed,
                    features=_feature_list(a.features), sample=a.sample, sources=sources, device=a.device,
                    llm_model=a.llm_model, llm_base_url=a.llm_base_url, llm_api_key_env=a.llm_api_key_env)
    frac = "n/a" if s["fraction_hold"] is None else f"{s['fraction_hold']:.1%}"
    print(f"{s['n_hold']} of {s['n_scored']} labels of {a.dict_name} hold on unseen contexts (F1 >= {a.threshold}): {frac}; "
          f"mean precision {s['mean_precision'] or 0:.3f}, recall {s['mean_recall'] or 0:.3f}, F1 {s['mean_f1'] or 0:.3f}, "
          f"accuracy {s['mean_accuracy'] or 0:.3f} "
          f"({s['scorer']}, {a.n}+{a.n} contexts each, {s['n_unscorable']} unscorable, {s['seconds']:.1f} s)")
    for src, b in s["by_source"].items():
        print(f"  {src}: {b['n_hold']}/{b['n_scored']} hold, mean F1 {b['mean_f1']:.3f}")


def _int_list(text: str, what: str) -> list[int]:
    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not out:
        raise UserError(f"{what} is empty")
    return out


def cmd_synth(a) -> None:
    from backend.synth.grid import SynthConfig, run_benchmark
    from backend.synth.outputs import write_outputs

    ref = _int_list(a.ref, "--ref")
    if len(ref) != 2:
        raise UserError(f"--ref must be M,K, got {a.ref!r}")
    split = lambda t: [v.strip() for v in t.split(",") if v.strip()]  # noqa: E731
    kw = dict(n=a.n, ref_m=ref[0], ref_k=ref[1], ms=_int_list(a.m, "--m"), ks=_int_list(a.k, "--k"),
              seeds=_int_list(a.seeds, "--seeds"), samples=a.samples, noise=a.noise, signed=a.signed,
              methods=split(a.methods) if a.methods else None, settings=split(a.settings),
              grid_settings=split(a.grid_settings), sklearn_on_grid=a.sklearn_on_grid)
    if a.quick:  # a 2 x 2 grid, one seed, a tenth of the training
        kw.update(ms=kw["ms"][:1] + [ref[0]], ks=[ref[1]] + kw["ks"][:1], seeds=kw["seeds"][:1], steps_scale=0.1)
    cfg = SynthConfig(**kw)
    t0 = time.perf_counter()
    results = run_benchmark(cfg)
    out = write_outputs(results, cfg, a.out)
    print(f"synthetic benchmark: {len(results)} runs in {time.perf_counter() - t0:.0f} s -> {out}/summary.md")


COMMANDS = {"explain": cmd_explain, "score": cmd_score, "labels": cmd_labels, "compare": cmd_compare, "cache": cmd_cache, "train": cmd_train, "analyze": cmd_analyze, "info": cmd_info,
            "import": cmd_import, "demo": cmd_demo, "synth": cmd_synth, "tasks": cmd_tasks}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.cmd](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
