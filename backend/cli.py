"""`python -m backend <subcommand>`: cache, train, analyze, info, import, demo, compare, evaluate, labels, explain,
score, export, synth, tasks, intervene, attribute, faithfulness, domains, diagnose, diagnose-eval.

Every subcommand has --help. Its options are generated from config dataclasses (`COMMANDS` names them;
backend/common/config_cli.py reads each field's name, type, default and docstring from the source, so --help
imports no torch and stays instant); the few options that are not configuration (which run, which
dictionary, where to write, --force, ...) are declared once in `PLAIN`. A `UserError` (bad input the user can
fix) prints one line `error: ...` and exits with status 2; heavy imports happen inside the subcommands.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

from backend.common import config_cli
from backend.common.config_cli import Option
from backend.common.errors import UserError, write_failure
from backend.common.layout import CFG_JSON, DEMO_DIR, SYNTH_DIR
from backend.common.names import check_dict_name, check_output

TRAINER, DICTIONARIES = "backend.training.trainer", "backend.dictionaries"
ANCHORED = "backend.training.anchored"
INTERVENE, STEER = "backend.interventions.commands", "backend.interventions.steer"
DIAGNOSE = "backend.diagnosis.commands"

PLAIN = {  # options that are not configuration; a subcommand may give one its own help or default
    "run": dict(required=True, help="run folder made by `cache`"),
    "dict": dict(dest="dict_name", required=True, help="dictionary name under <run>/dictionaries/"),
    "name": dict(required=True, help="dictionary name in the run"),
    "out": dict(required=True),
    "file": dict(required=True, help=".csv or .json written by `labels export`"),
    "saelens": dict(required=True, help="folder in the SAELens layout"),
    "device": dict(default="auto", help="auto | cpu | cuda | cuda:N"),
    "force": dict(action="store_true"),
    "resume": dict(action="store_true", help="continue from the checkpoint of an interrupted run"),
    "no-ce": dict(action="store_true", help="skip the spliced-model CE metrics"),
    "quick": dict(action="store_true", help="tiny grid and short training, for a smoke test (seconds)"),
    "feature": dict(type=int, required=True, help="feature id"),
    "features": dict(required=True, help="comma-separated feature ids"),
    "text": dict(required=True, help="the text to run clean and edited"),
    "prompt": dict(required=True, help="the prompt to continue"),
    "no-fetch": dict(action="store_true", help="do not generate the BIG-bench tasks if they are missing"),
    "background": dict(action="store_true", help="start the build as a detached process logging to <out>.build/"
                       "build.log and return at once (or attach to the build already running); ./run.sh does this"),
}

OptionGroups = list[tuple[str | None, list[Option]]]  # (title of an argparse group or None, its options)


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    handler: Callable | None = None
    plain: dict = field(default_factory=dict)  # PLAIN option -> None, its help here, or argparse overrides
    options: Callable[[], OptionGroups] | None = None  # the generated options
    subcommands: tuple = ()


def _config_options(ref: str) -> OptionGroups:
    return [(None, config_cli.read_config(ref))]


def from_config(ref: str) -> Callable[[], OptionGroups]:
    """The options of one config dataclass, "module:Class" (read when the subcommand is used)."""
    return functools.partial(_config_options, ref)


def train_options() -> OptionGroups:
    """TrainConfig's options for every trained kind, then each kind's own (its config_class next to it:
    an option of another kind is refused); sae-ito takes ItoConfig's options only."""
    trainable = config_cli.module_constant(TRAINER, "TRAINABLE")
    configs = config_cli.find_assigned(DICTIONARIES, "config_class", "kind")  # kind -> "module:Class"
    kinds = [*trainable, *(k for k in configs if k not in trainable)]
    train_config = config_cli.read_config(f"{TRAINER}:TrainConfig")
    shared = config_cli.merge_options(dict.fromkeys(trainable, train_config))
    listing = f" (trained: {', '.join(trainable)}; built from --base: {', '.join(k for k in kinds if k not in trainable)})"
    shared = [replace(o, owners=tuple(kinds), help=o.help + listing) if o.field == "kind" else o for o in shared]
    own = config_cli.merge_options({k: config_cli.read_config(configs[k]) for k in kinds})
    anchorable = config_cli.module_constant(ANCHORED, "ANCHORABLE")
    anchor = config_cli.merge_options(dict.fromkeys(anchorable, config_cli.read_config(f"{ANCHORED}:AnchorConfig")))
    return [("training, every trained kind (TrainConfig, backend/training/trainer.py)", shared),
            ("kind-specific (each kind's config, next to it in backend/dictionaries/)", own),
            ("anchored training, the model's next-token distribution in the loss (AnchorConfig, "
             "backend/training/anchored.py)", anchor)]


def _check_kind_options(kind: str, settings: dict, options: list[Option]) -> None:
    """A given option that none of `kind`'s configs has is a one-line UserError naming the kinds it is for."""
    owners = {o.field: o.owners for o in options}
    if kind not in owners["kind"]:
        return  # not a kind train knows: TrainConfig says so
    for name in settings:
        if kind not in owners[name]:
            flag = next(o.flag for o in options if o.field == name)
            raise UserError(f"{flag} is not an option of --kind {kind}; options like it are for --kind "
                            f"{', '.join(owners[name])}")


def _given(a: argparse.Namespace) -> dict:
    """The config fields given on the command line (the dataclass supplies every other default)."""
    return config_cli.given_values(a, a.options_)


def cmd_cache(a) -> None:
    from backend.activations.cache import CacheConfig, cache_activations

    out = cache_activations(CacheConfig(**_given(a)), a.out, force=a.force)
    print(f"cached run: {out}")


def cmd_train(a) -> None:
    from backend.common.layout import dict_dir, load_run
    from backend.dictionaries import KINDS
    from backend.pipeline import build_dictionary
    from backend.training.trainer import TrainConfig

    load_run(a.run)
    settings = _given(a)
    kind = settings.pop("kind", TrainConfig.kind)
    _check_kind_options(kind, settings, a.options_)
    if a.name is not None:
        check_dict_name(a.name)  # an empty --name is an error, not the default
    if kind == "sae-ito":
        if "base" not in settings:
            raise UserError("--kind sae-ito needs --base NAME, a trained dictionary of the run")
        cfg = KINDS[kind].config_class(**settings)
        name = a.name if a.name is not None else f"sae-ito-{cfg.method}"
        path = build_dictionary(a.run, cfg, name, force=a.force, device=a.device, compute_ce=not a.no_ce)
        print(f"built dictionary: {path}")
        return
    from backend.training.anchored import AnchorConfig

    anchor = AnchorConfig(**{f: settings.pop(f) for f in list(settings) if f in AnchorConfig.__dataclass_fields__})
    cfg = TrainConfig(kind=kind, **settings)
    name = a.name if a.name is not None else (f"{kind}-anchored" if anchor.enabled else kind)
    if dict_dir(a.run, name).exists() and not (a.force or a.resume):
        raise UserError(f"dictionary {name!r} already exists in {a.run}; pass --force to replace it")
    path = build_dictionary(a.run, cfg, name=name, device=a.device, resume=a.resume, force=a.force,
                            compute_ce=not a.no_ce, anchor=anchor if anchor.enabled else None)
    print(f"trained dictionary: {path}")


def cmd_analyze(a) -> None:
    from backend.analysis.analyze import AnalyzeConfig, analyze
    from backend.common.layout import dict_dir, load_run

    cfg = AnalyzeConfig(**_given(a))
    load_run(a.run)
    if not (dict_dir(a.run, a.dict_name) / CFG_JSON).is_file():
        raise UserError(f"no dictionary {a.dict_name!r} in {a.run}")
    path = analyze(a.run, a.dict_name, device=a.device, cfg=cfg)
    print(f"analysed: {path}")


def cmd_info(a) -> None:
    from backend.pipeline import format_info

    print(format_info(a.run))


def cmd_import(a) -> None:
    import shutil

    from backend.common.layout import PARTIAL, dict_dir, load_run
    from backend.dictionaries.saelens_io import import_saelens
    from backend.store.archive import publish_dictionary

    check_dict_name(a.name)
    meta = load_run(a.run)
    dest = dict_dir(a.run, a.name)
    if dest.exists():
        raise UserError(f"dictionary {a.name!r} already exists in {a.run}")
    staging = dest.with_name(a.name + PARTIAL) / "import"
    shutil.rmtree(staging, ignore_errors=True)
    import_saelens(a.saelens, staging, expect_d_in=meta["d_in"], expect_hook=meta["hook"])
    publish_dictionary(a.run, a.name, staging)  # labels an earlier dictionary of that name left are kept apart
    print(f"imported {a.saelens} as {dest}")


def cmd_demo(a) -> None:
    from backend.pipeline import DemoConfig, demo_complete, parse_kinds, run_demo, start_demo_background

    check_output(a.out, "--out")
    cfg = DemoConfig(**_given(a))
    if not a.background:
        run_demo(a.out, device=a.device, force=a.force, **asdict(cfg))
        return
    if demo_complete(a.out, parse_kinds(cfg.kinds), cfg.labels) and not a.force:
        print(f"demo store is ready: {a.out}")
        return
    state, pid = start_demo_background(a.out, [x for x in a.argv_[1:] if x != "--background"])
    from backend.common.build_status import log_path

    print(f"demo build {'already running' if state == 'running' else 'started'} (pid {pid}); log: {log_path(a.out)}")


def cmd_compare(a) -> None:
    from backend.evaluation.compare import (
        CompareConfig,
        compare_dictionaries,
        comparisons_dir,
        format_summary,
    )

    cfg = CompareConfig(**_given(a))
    summary = compare_dictionaries(a.run, cfg.dicts, threshold=cfg.threshold, time_tokens=cfg.time_tokens)
    print(format_summary(summary))
    print(f"written: {comparisons_dir(a.run)}")


def cmd_labels_export(a) -> None:
    from backend.store.label_io import ExportConfig, export

    check_output(a.out, "--out", folder=False)
    cfg = ExportConfig(**_given(a))
    n = export(a.run, a.out, fmt=cfg.format, dict_name=a.dict_name, what=cfg.what)
    print(f"exported {n} {cfg.what} rows to {a.out}")


def cmd_labels_import(a) -> None:
    from backend.store.label_io import import_file

    kind, n_read, n_new = import_file(a.run, a.file, dict_name=a.dict_name)
    print(f"imported {n_new} new {kind} rows of {n_read} from {a.file}")


def cmd_explain(a) -> None:
    from backend.labels.explain import ExplainConfig, explain_features

    settings = asdict(ExplainConfig(**_given(a)))
    index = settings.pop("index")
    r = explain_features(a.run, a.dict_name, device=a.device, **settings)
    for f, text in list(r["explanations"].items())[:5]:
        print(f"  {f}: {text}")
    print(f"explained {r['n_features'] - r['n_skipped_human'] - r['n_dead']} features of {a.dict_name} "
          f"({settings['explainer']}) in {r['seconds']:.1f} s: {r['n_saved']} new label versions, {r['n_unchanged']} "
          f"unchanged, {r['n_skipped_human']} human labels kept, {r['n_dead']} dead"
          + (f", {r['cache_hits']} cached replies" if r["cache_hits"] else ""))
    if index and r["n_saved"]:
        from backend.labels.embeddings import label_embeddings

        t0 = time.perf_counter()
        labels, _ = label_embeddings(a.run, a.dict_name)
        print(f"label-search index: {len(labels)} labels embedded or reused in {time.perf_counter() - t0:.1f} s")


def cmd_score(a) -> None:
    from backend.labels.score import ScoreConfig, run_scoring

    cfg = ScoreConfig(**_given(a))
    s = run_scoring(a.run, a.dict_name, device=a.device, **asdict(cfg))
    frac = "n/a" if s["fraction_hold"] is None else f"{s['fraction_hold']:.1%}"
    print(f"{s['n_hold']} of {s['n_scored']} labels of {a.dict_name} hold on unseen contexts (F1 >= {cfg.threshold}): "
          f"{frac}; mean precision {s['mean_precision'] or 0:.3f}, recall {s['mean_recall'] or 0:.3f}, "
          f"F1 {s['mean_f1'] or 0:.3f}, accuracy {s['mean_accuracy'] or 0:.3f} "
          f"({s['scorer']}, {cfg.n}+{cfg.n} contexts each, {s['n_unscorable']} unscorable, {s['seconds']:.1f} s)")
    for src, b in s["by_source"].items():
        print(f"  {src}: {b['n_hold']}/{b['n_scored']} hold, mean F1 {b['mean_f1']:.3f}")


def cmd_export(a) -> None:
    from backend.html_export import HtmlExportConfig, export_html

    cfg = HtmlExportConfig(**_given(a))
    path = export_html(a.run, a.out, dictionary=a.dict_name, features=cfg.features, tour=cfg.tour, title=cfg.title,
                       n_contexts=cfg.contexts)
    print(f"exported: {path} ({path.stat().st_size / 1e6:.1f} MB, opens offline in any browser)")


def cmd_synth(a) -> None:
    from backend.synth.grid import SynthConfig, run_benchmark
    from backend.synth.outputs import write_outputs

    check_output(a.out, "--out")
    cfg = SynthConfig(**_given(a))
    if a.quick:  # a 2 x 2 grid, one seed, a tenth of the training
        m, k = cfg.ref
        cfg = replace(cfg, ms=cfg.ms[:1] + [m], ks=[k] + cfg.ks[:1], seeds=cfg.seeds[:1], steps_scale=0.1)
    t0 = time.perf_counter()
    results = run_benchmark(cfg)
    out = write_outputs(results, cfg, a.out)
    print(f"synthetic benchmark: {len(results)} runs in {time.perf_counter() - t0:.0f} s -> {out}/summary.md")


def cmd_intervene_effects(a) -> None:
    from backend.interventions import commands as iv
    from backend.interventions.effects_store import EffectsConfig

    iv.run_effects(a.run, a.dict_name, EffectsConfig(**_given(a)), device=a.device)


def _edit_options(a, cls_name: str):
    from backend.interventions import commands as iv

    return getattr(iv, cls_name)(**_given(a))


def cmd_intervene_contexts(a) -> None:
    from backend.interventions import commands as iv

    o = _edit_options(a, "ContextsOptions")
    iv.run_contexts(a.run, a.dict_name, a.feature, edit=o.edit([a.feature]), n=o.n, error_term=o.error_term,
                    device=a.device)


def cmd_intervene_text(a) -> None:
    from backend.interventions import commands as iv

    o = _edit_options(a, "EditOptions")
    iv.run_text(a.run, a.dict_name, a.text, o.edit(iv.parse_features(a.features)), error_term=o.error_term, device=a.device)


def cmd_intervene_steer(a) -> None:
    from backend.interventions import commands as iv
    from backend.interventions.steer import Sampling

    given = _given(a)
    sampling = Sampling(**{k: given.pop(k) for k in ("temperature", "top_p", "frequency_penalty", "seed") if k in given})
    o = iv.SteerOptions(**given)
    edit = o.edit(iv.parse_features(a.features), value=0.0 if o.value is None and o.sweep else None)  # a sweep gives strengths
    iv.run_steer(a.run, a.dict_name, a.prompt, edit, n_new=o.tokens, sampling=sampling, sweep=o.sweep,
                 error_term=o.error_term, device=a.device)


def steer_options() -> OptionGroups:
    return [(None, config_cli.read_config(f"{INTERVENE}:SteerOptions")),
            ("sampling (the same draw for clean and steered rows)", config_cli.read_config(f"{STEER}:Sampling"))]


def cmd_tasks_fetch(a) -> None:
    from backend.tasks.bigbench_source import generate_bigbench_tasks

    print(f"BIG-bench tasks: {generate_bigbench_tasks(force=a.force)}")


def cmd_tasks_list(a) -> None:
    from backend.tasks.suite import DEFAULT_SUITE, load_task, task_names

    print(f"{'task':<36}{'items':>7}{'choices':>9}{'chance':>8}  source")
    for name in task_names(fetch=not a.no_fetch):
        t = load_task(name)
        k = sorted({len(it.choices) for it in t.items})
        mark = f"* {DEFAULT_SUITE[name]}" if name in DEFAULT_SUITE else ""
        print(f"{name:<36}{len(t.items):>7}{'-'.join(map(str, (k[0], k[-1]) if len(k) > 1 else k)):>9}"
              f"{t.chance:>8.3f}  {t.source[:60]} {mark}")


def cmd_tasks_eval(a) -> None:
    from backend.tasks.evaluate import TaskEvalOptions, run_task_eval

    o = TaskEvalOptions(**_given(a))
    run_task_eval(model=o.model, run=a.run, dict_name=a.dict_name, task=o.task, task_files=o.task_files, n=o.n,
                  prompt_format=o.prompt_format, control=o.control, batch_tokens=o.batch_tokens,
                  resamples=o.resamples, device=a.device)


def cmd_attribute(a) -> None:
    from backend.attribution.prompt import AttributeOptions, run_attribute

    run_attribute(a.run, a.dict_name, a.prompt, AttributeOptions(**_given(a)), device=a.device)


def cmd_faithfulness(a) -> None:
    from backend.faithfulness.evaluate import FaithfulnessOptions, run_faithfulness

    opts = FaithfulnessOptions(**_given(a))  # bad settings fail before the run is read
    run_faithfulness(a.run, a.dict_name, opts, device=a.device)


def cmd_evaluate(a) -> None:
    from backend.common.layout import dictionary_names, load_run
    from backend.evalsuite.report import format_evaluation
    from backend.evalsuite.suite import EvaluateConfig, evaluate_dictionary
    from backend.model.loading import load_model

    cfg = EvaluateConfig(**_given(a))
    meta = load_run(a.run)
    names = dictionary_names(a.run) if a.dict_name == "all" else [n.strip() for n in a.dict_name.split(",") if n.strip()]
    missing = [n for n in names if n not in dictionary_names(a.run)]
    if missing or not names:
        raise UserError(f"no dictionary {', '.join(map(repr, missing)) or 'given'} in {a.run}")
    lm = load_model(meta["model"], device=a.device)
    for name in names:
        record = evaluate_dictionary(a.run, name, cfg, lm=lm)
        print(format_evaluation(record))
def cmd_domains(a) -> None:
    from backend.diagnosis.commands import run_domains
    from backend.diagnosis.domains import DomainsConfig

    run_domains(a.run, a.dict_name, DomainsConfig(**_given(a)), device="cpu" if a.device == "auto" else a.device)


def cmd_diagnose(a) -> None:
    from backend.diagnosis.commands import DiagnoseOptions, run_diagnose

    run_diagnose(a.run, a.dict_name, a.text, DiagnoseOptions(**_given(a)), device=a.device)


def cmd_diagnose_eval(a) -> None:
    from backend.diagnosis.commands import DiagnoseEvalOptions, run_diagnose_eval

    run_diagnose_eval(a.run, DiagnoseEvalOptions(**_given(a)), device=a.device)


OPTIONAL_DICT = {"required": False, "default": None}
COMMANDS = (
    Command("cache", "run the model over a corpus and cache activations at a hook point", cmd_cache,
            plain={"out": "run folder to create, e.g. data/runs/demo",
                   "force": "rebuild a finished run (the old one stays until the new one is complete)"},
            options=from_config("backend.activations.cache:CacheConfig")),
    Command("train", "train a dictionary on a run's cached activations", cmd_train,
            plain={"run": None, "name": {"required": False, "default": None,
                                         "help": "dictionary name (default: the kind; sae-ito: sae-ito-<method>)"},
                   "device": None, "resume": None, "force": "replace an existing dictionary of that name", "no-ce": None},
            options=train_options),
    Command("analyze", "analyse every feature of a dictionary into Parquet stores", cmd_analyze,
            plain={"run": None, "dict": None, "device": None},
            options=from_config("backend.analysis.analyze:AnalyzeConfig")),
    Command("info", "what is in a run: model, hook, tokens, dictionaries and their metrics", cmd_info,
            plain={"run": None}),
    Command("import", "bring an SAELens folder (cfg.json + sae_weights.safetensors) into a run", cmd_import,
            plain={"run": None, "saelens": None, "name": None}),
    Command("demo", "build the default store: cache -> train -> analyze -> label, on the embedded model and corpus", cmd_demo,
            plain={"out": {"required": False, "default": str(DEMO_DIR), "help": "run folder of the demo"},
                   "device": None, "force": "rebuild even if the demo store exists", "background": None},
            options=from_config("backend.pipeline:DemoConfig")),
    Command("compare", "compare dictionaries of a run: matched features, metrics, encode cost", cmd_compare,
            plain={"run": None}, options=from_config("backend.evaluation.compare:CompareConfig")),
    Command("evaluate", "evaluation suite: core metrics, task retention, sparse probing, NMI, paraphrase stability",
            cmd_evaluate, plain={"run": None, "dict": "dictionary name, comma-separated names, or all", "device": None},
            options=from_config("backend.evalsuite.suite:EvaluateConfig")),
    Command("labels", "export or import labels and validation verdicts (CSV or JSON)", subcommands=(
        Command("export", "write every label version (or verdict) of a run to a file", cmd_labels_export,
                plain={"run": None, "dict": {**OPTIONAL_DICT, "help": "only this dictionary (default: all)"},
                       "out": "file to write"},
                options=from_config("backend.store.label_io:ExportConfig")),
        Command("import", "append the labels or verdicts of an export file (never overwrites)", cmd_labels_import,
                plain={"run": None, "file": None,
                       "dict": {**OPTIONAL_DICT, "help": "dictionary for rows that name none"}}),
    )),
    Command("explain", "explain features (deterministic or LLM) and save the explanations as labels", cmd_explain,
            plain={"run": None, "dict": None, "device": None},
            options=from_config("backend.labels.explain:ExplainConfig")),
    Command("score", "detection-score the current labels on held-out contexts (precision, recall, F1)", cmd_score,
            plain={"run": None, "dict": None, "device": None},
            options=from_config("backend.labels.score:ScoreConfig")),
    Command("export", "write a tour, or chosen features, as one self-contained HTML file (opens offline)", cmd_export,
            plain={"run": None, "dict": {**OPTIONAL_DICT, "help": "dictionary of --features"},
                   "out": "the .html file to write"},
            options=from_config("backend.html_export:HtmlExportConfig")),
    Command("synth", "synthetic amortisation-gap benchmark: planted sparse codes, SAE vs sparse coding vs MLP vs ITO",
            cmd_synth, plain={"out": {"required": False, "default": str(SYNTH_DIR),
                                      "help": "folder for results.parquet, summary.md, figures/"}, "quick": None},
            options=from_config("backend.synth.grid:SynthConfig")),
    Command("tasks", "multiple-choice tasks scored by log-likelihood, clean vs with a dictionary spliced in", subcommands=(
        Command("list", "the known tasks: items, choices, chance, source; * = in the default suite", cmd_tasks_list,
                plain={"no-fetch": None}),
        Command("fetch", "download the bigbench 0.0.1 sdist (pip) and generate its task files into data/tasks/",
                cmd_tasks_fetch, plain={"force": "generate the task files again"}),
        Command("eval", "accuracy clean, spliced without and with the error term, with bootstrap 95% intervals",
                cmd_tasks_eval, plain={"run": {"required": False, "default": None,
                                              "help": "run folder holding the dictionary; results go to <run>/tasks/<dict>/"},
                                      "dict": OPTIONAL_DICT, "device": None},
                options=from_config("backend.tasks.evaluate:TaskEvalOptions")),
    )),
    Command("intervene", "ablate, clamp or steer features with the dictionary spliced in (error term kept)", subcommands=(
        Command("effects", "write dictionaries/<d>/effects.parquet: each feature zero-ablated on its top contexts",
                cmd_intervene_effects, plain={"run": None, "dict": None, "device": None},
                options=from_config("backend.interventions.effects_store:EffectsConfig")),
        Command("contexts", "one feature's edit on its top contexts: loss change at and after each peak",
                cmd_intervene_contexts, plain={"run": None, "dict": None, "feature": None, "device": None},
                options=from_config(f"{INTERVENE}:ContextsOptions")),
        Command("text", "an edit's per-token effects on a text: loss change, KL, promoted/suppressed tokens",
                cmd_intervene_text, plain={"run": None, "dict": None, "features": None, "text": None, "device": None},
                options=from_config(f"{INTERVENE}:EditOptions")),
        Command("steer", "clean and steered continuations of a prompt side by side, or a strength sweep",
                cmd_intervene_steer, plain={"run": None, "dict": None, "prompt": None, "device": None,
                                            "features": "comma-separated feature ids (a sweep steers the first)"},
                options=steer_options),
    )),
    Command("attribute", "attribute a prompt's next token (or target vs contrast) to features and, by IG, to its tokens",
            cmd_attribute, plain={"run": None, "dict": None, "device": None,
                                  "prompt": "the text whose continuation is explained"},
            options=from_config("backend.attribution.prompt:AttributeOptions")),
    Command("faithfulness", "comprehensiveness and sufficiency (AOPC) of features vs IG and occlusion tokens vs random on tasks (no --dict: tokens only)",
            cmd_faithfulness, plain={"run": None, "device": None, "dict": {
                **OPTIONAL_DICT, "help": "the dictionary whose features are measured (none: the model's token sides alone, "
                "IG and occlusion, cached in the run, with every measured dictionary's features compared to them)"}},
            options=from_config("backend.faithfulness.evaluate:FaithfulnessOptions")),
    Command("domains", "give each feature a domain distribution (where it fires, what its label says) and flag thresholds",
            cmd_domains, plain={"run": None, "dict": None, "device": None},
            options=from_config("backend.diagnosis.domains:DomainsConfig")),
    Command("diagnose", "flag the tokens of a prompt the model reads as another domain; propose a checked reformulation",
            cmd_diagnose, plain={"run": None, "dict": None, "text": "the prompt to diagnose", "device": None},
            options=from_config(f"{DIAGNOSE}:DiagnoseOptions")),
    Command("diagnose-eval", "does reformulating the flagged prompts beat rewording all, random flags? accuracy per "
            "condition with paired tests", cmd_diagnose_eval, plain={"run": None, "device": None},
            options=from_config(f"{DIAGNOSE}:DiagnoseEvalOptions")),
)


def _add_commands(parser: argparse.ArgumentParser, commands, dest: str, only: set[str] | None) -> None:
    sub = parser.add_subparsers(dest=dest, required=True)
    for c in commands:
        p = sub.add_parser(c.name, help=c.help, description=c.help)
        if c.subcommands:
            _add_commands(p, c.subcommands, f"{c.name}_cmd", only)
            continue
        for name, own in c.plain.items():
            p.add_argument(f"--{name}", **{**PLAIN[name], **({"help": own} if isinstance(own, str) else own or {})})
        options = []
        if c.options and (only is None or c.name in only):
            for title, group in c.options():
                config_cli.add_options(p.add_argument_group(title) if title else p, group)
                options += group
        p.set_defaults(handler_=c.handler, options_=options)


def build_parser(only: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole CLI; with `only` (main passes argv), generated options only for the subcommands named in it,
    since reading config sources is most of the start-up time and one invocation needs one subcommand's."""
    ap = argparse.ArgumentParser(prog="python -m backend", description="Sparse-dictionary workbench backend.")
    _add_commands(ap, COMMANDS, "cmd", None if only is None else set(only))
    return ap


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(only=argv).parse_args(argv)
    args.argv_ = list(argv)  # `demo --background` starts itself again with these
    try:
        args.handler_(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        why = write_failure(e)  # a write that no atomic writer wrapped: still the user's disk, not a bug
        if why is None:
            raise
        print(f"error: cannot write {e.filename or 'a file'}: {why}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
