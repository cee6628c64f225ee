"""The flags of every subcommand: the set is the one listed here, and each flag of the hand-written CLI this
replaced is still there with its type, choices and default behaviour."""

from __future__ import annotations

import argparse

import pytest

from backend.cli import build_parser, main
from backend.common.config_cli import Option
from tests.fake_run import make_synthetic_run

# subcommand -> every flag (kept by hand: a new or lost flag must show up here)
FLAGS = {
    "cache": "--model --hook --corpus --tokens --ctx-len --seed --batch-size --shard-seqs --heldout-frac --dtype "
             "--device --out --force",
    "train": "--run --name --device --resume --force --no-ce --kind --d-sae --lr --batch-size --seed --lr-warmup-steps "
             "--lr-min-ratio --grad-clip --adam-betas --weight-decay --enc-init-norm --scale-tokens --dead-window-tokens "
             "--resample-dead-every --resample-stop-frac --checkpoint-every-s --threads --select-dtype --epochs --l1-coeff "
             "--l1-warmup-frac --k-aux --aux-coeff --auxk-dead-tokens --k --hidden --mlp-layers --n-iter --pool "
             "--no-nonneg --base --method --target-l0 --fista-l1 --anchor-kl --task-loss --mse-coeff --init-from "
             "--anchor-contexts --task-items",
    "analyze": "--run --dict --device --n-top --max-per-seq --n-quantiles --per-quantile --n-logits --n-neighbours "
               "--hist-bins --seed --window-before --window-after --acts-row-group --features-row-group "
               "--contexts-row-group --spill-rows --weight-chunk",
    "info": "--run",
    "import": "--run --saelens --name",
    "demo": "--out --device --force --tokens --d-sae --kinds --background --no-labels --score-sample",
    "compare": "--run --dicts --threshold --time-tokens",
    "evaluate": "--run --dict --device --llm-model --llm-base-url --llm-api-key-env --only --contexts --task-items --ks "
                "--nmi-threshold --random-directions --paraphrase-problems --llm-paraphrases --seed",
    "labels export": "--run --dict --out --format --what",
    "labels import": "--run --file --dict",
    "explain": "--run --dict --device --features --top --explainer --llm-model --llm-base-url --llm-api-key-env "
               "--author --batch-size --overwrite-human --no-index",
    "score": "--run --dict --device --scorer --n --threshold --features --sample --source --seed --llm-model "
             "--llm-base-url --llm-api-key-env",
    "export": "--run --dict --out --features --tour --contexts --title",
    "synth": "--out --quick --n --ref --m --k --seeds --samples --noise --signed --settings --grid-settings --methods "
             "--sklearn-on-grid --steps-scale",
    "tasks list": "--no-fetch",
    "tasks fetch": "--force",
    "tasks eval": "--run --dict --device --model --task --task-file --n --format --no-control --batch-tokens --resamples",
    "intervene effects": "--run --dict --device --n-contexts --after --top --features-per-chunk --batch-seqs",
    "intervene contexts": "--run --dict --feature --device --op --value --relative --positions --include-special "
                          "--no-error-term --n",
    "intervene text": "--run --dict --features --text --device --op --value --relative --positions --include-special "
                      "--no-error-term",
    "intervene steer": "--run --dict --features --prompt --device --op --value --relative --positions --include-special "
                       "--no-error-term --tokens --sweep --temperature --top-p --frequency-penalty --seed",
    "attribute": "--run --dict --device --prompt --target --contrast --top --ig-steps",
    "faithfulness": "--run --dict --device --task --task-file --n --qs --ig-steps --random-draws --seed --format "
                    "--batch-rows --resamples",
    "domains": "--run --dict --device --label-weight --tau --false-flag-rate",
    "diagnose": "--run --dict --text --device --llm-model --llm-base-url --llm-api-key-env --domain --threshold --top-k "
                "--rules --reformulator --json",
    "diagnose-eval": "--run --device --llm-model --llm-base-url --llm-api-key-env --dicts --task --n --domain "
                     "--reformulator --no-ablate --rules --seed --resamples",
}

# the hand-written CLI's flags (before configs generated them): flag -> (type, default, choices);
# type int | float | str | switch, default as argparse held it (None: left to the code behind it)
OLD = {
    "cache": {"--model": ("str", None), "--hook": ("str", None), "--corpus": ("str", "default"), "--tokens": ("int", None),
              "--ctx-len": ("int", None), "--seed": ("int", 0), "--batch-size": ("int", None),
              "--dtype": ("str", "float16", ("float16", "float32")), "--device": ("str", "auto"), "--out": ("str", None),
              "--force": ("switch", False)},
    "train": {"--run": ("str", None), "--kind": ("str", "relu-l1"), "--name": ("str", None), "--d-sae": ("int", None),
              "--l1-coeff": ("float", None), "--lr": ("float", None), "--epochs": ("float", None),
              "--batch-size": ("int", None), "--seed": ("int", None), "--device": ("str", "auto"),
              "--resume": ("switch", False), "--force": ("switch", False), "--no-ce": ("switch", False),
              "--k": ("int", None), "--aux-coeff": ("float", None), "--hidden": ("int", None),
              "--mlp-layers": ("int", None), "--n-iter": ("int", None), "--pool": ("int", None), "--base": ("str", None),
              "--method": ("str", None), "--target-l0": ("int", None)},
    "analyze": {"--run": ("str", None), "--dict": ("str", None), "--device": ("str", "auto")},
    "info": {"--run": ("str", None)},
    "import": {"--run": ("str", None), "--saelens": ("str", None), "--name": ("str", None)},
    "demo": {"--out": ("str", "data/demo"), "--tokens": ("int", 200000), "--d-sae": ("int", 4608),
             "--device": ("str", "auto"), "--force": ("switch", False), "--kinds": ("str", "all")},
    "compare": {"--run": ("str", None), "--dicts": ("str", "all"), "--threshold": ("float", 0.7),
                "--time-tokens": ("int", 4096)},
    "labels export": {"--run": ("str", None), "--dict": ("str", None), "--format": ("str", "csv", ("csv", "json")),
                      "--what": ("str", "labels", ("labels", "verdicts")), "--out": ("str", None)},
    "labels import": {"--run": ("str", None), "--file": ("str", None), "--dict": ("str", None)},
    "explain": {"--run": ("str", None), "--dict": ("str", None), "--features": ("str", None), "--top": ("int", None),
                "--explainer": ("str", "deterministic", ("deterministic", "local-llm", "openai")),
                "--llm-model": ("str", None), "--llm-base-url": ("str", None),
                "--llm-api-key-env": ("str", "OPENAI_API_KEY"), "--author": ("str", "explainer"),
                "--batch-size": ("int", 8), "--overwrite-human": ("switch", False), "--no-index": ("switch", False),
                "--device": ("str", "auto")},
    "score": {"--run": ("str", None), "--dict": ("str", None),
              "--scorer": ("str", "embedding", ("embedding", "lexical", "local-llm", "openai")), "--n": ("int", 10),
              "--threshold": ("float", 0.75), "--features": ("str", None), "--sample": ("int", None),
              "--source": ("str", None), "--seed": ("int", 0), "--llm-model": ("str", None),
              "--llm-base-url": ("str", None), "--llm-api-key-env": ("str", "OPENAI_API_KEY"), "--device": ("str", "auto")},
    "synth": {"--n": ("int", 16), "--ref": ("str", "8,3"), "--m": ("str", "4,6,8,10,12"), "--k": ("str", "1,2,3,4,5"),
              "--seeds": ("str", "0,1,2"), "--samples": ("int", 1024), "--noise": ("float", 0.01),
              "--signed": ("switch", False), "--methods": ("str", None),
              "--settings": ("str", "known_codes,known_dict,unknown"), "--grid-settings": ("str", "known_dict,unknown"),
              "--sklearn-on-grid": ("switch", False), "--quick": ("switch", False), "--out": ("str", "data/synth")},
}
# old defaults that now live with the stage that owns them (the demo's None = cache's / train's default)
MOVED_DEFAULTS = {("demo", "--tokens"): "CacheConfig.tokens", ("demo", "--d-sae"): "TrainConfig.d_sae (8 * d_in)"}


def actions() -> dict[str, dict[str, argparse.Action]]:
    out = {}

    def walk(p, prefix):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    walk(sp, prefix + [name])
            elif a.option_strings and a.dest != "help":
                out.setdefault(" ".join(prefix), {})[a.option_strings[0]] = (a, sp_options(p))

    def sp_options(p):
        return {o.field: o for o in p.get_default("options_") or []}

    walk(build_parser(), [])
    return out


def test_each_subcommand_has_exactly_the_listed_flags():
    got = {cmd: set(flags) for cmd, flags in actions().items()}
    assert got == {cmd: set(flags.split()) for cmd, flags in FLAGS.items()}


@pytest.mark.parametrize("cmd", sorted(OLD))
def test_old_flags_keep_type_choices_and_default(cmd):
    acts = actions()[cmd]
    for flag, (typ, default, *choices) in OLD[cmd].items():
        assert flag in acts, f"{cmd} lost {flag}"
        a, options = acts[flag]
        opt: Option | None = options.get(a.dest)
        if opt is None:  # a plain option, as before
            kind = "switch" if a.nargs == 0 else getattr(a.type, "__name__", "str")
            assert (kind, tuple(a.choices or ())) == (typ, tuple(choices[0] if choices else ())), (cmd, flag)
            assert default is None or str(a.default).endswith(str(default)), (cmd, flag, a.default)
            continue
        kind = "switch" if opt.type == "bool" else "str" if opt.sequence else opt.type
        assert kind == typ and (opt.choices or ()) == (choices[0] if choices else ()), (cmd, flag, opt)
        if typ == "switch":  # same polarity: given = True
            assert flag == opt.flag and opt.default is False or flag == "--no-" + opt.flag[2:] and opt.default is True
        elif default is not None and (cmd, flag) not in MOVED_DEFAULTS:
            assert opt.default == opt.convert(default), (cmd, flag, opt.default, default)


def test_demo_defaults_moved_to_their_owners():
    from backend.activations.cache import CacheConfig
    from backend.pipeline import DemoConfig

    assert DemoConfig().tokens is None and CacheConfig().tokens == OLD["demo"]["--tokens"][1]
    assert DemoConfig().d_sae is None and 8 * 576 == OLD["demo"]["--d-sae"][1]  # TrainConfig: 8 * d_in, SmolLM2 d_in 576


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_synthetic_run(tmp_path_factory.mktemp("flags"), d_in=16)


@pytest.mark.parametrize("argv,needle", [
    (["--kind", "relu-l1", "--k", "5"], "--k is not an option of --kind relu-l1; options like it are for --kind topk, "
                                         "batchtopk, mlp, sparse-coding"),
    (["--kind", "topk", "--hidden", "4"], "--hidden is not an option of --kind topk"),
    (["--kind", "mlp", "--base", "x"], "are for --kind sae-ito"),
    (["--kind", "sae-ito", "--base", "x", "--d-sae", "8"], "--d-sae is not an option of --kind sae-ito"),
    (["--kind", "sae-ito"], "needs --base"),
    (["--kind", "topk", "--k", "0"], "k must be >= 1, got 0"),
    (["--kind", "nope"], "kind 'nope' cannot be trained here"),
    (["--adam-betas", "0.9"], "--adam-betas must be FLOAT,FLOAT"),
])
def test_train_option_of_another_kind_is_one_line(run, capsys, argv, needle):
    assert main(["train", "--run", str(run), "--no-ce", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert not (run / "dictionaries").exists() or not any((run / "dictionaries").iterdir())
