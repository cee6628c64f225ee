"""The option generator (backend/common/config_cli.py): fields read from source, parsed, converted, and
checked against the real dataclasses of every subcommand."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from backend.common import config_cli
from backend.common.errors import UserError

REPO = Path(__file__).resolve().parent.parent
SAMPLE = "tests.config_cli_sample:Sample"


def parse(options, argv):
    p = argparse.ArgumentParser()
    config_cli.add_options(p, options)
    return config_cli.given_values(p.parse_args(argv), options)


def test_fields_become_options_in_field_order():
    opts = {o.field: o for o in config_cli.read_config(SAMPLE)}
    assert list(opts) == ["width", "rate", "key_env", "mode", "fmt", "sizes", "pair", "on", "off", "maybe",
                          "names"]
    w = opts["width"]  # overridden: the subclass's default, the base's place and docstring
    assert (w.flag, w.type, w.default, w.doc) == ("--width", "int", 32, "Width of the base.")
    assert w.help == "Width of the base. (default: 32)"
    assert opts["rate"].default == 1 / 32 and opts["key_env"].default == "OPENAI_API_KEY"
    assert opts["mode"].choices == ("fast", "exact") and opts["fmt"].choices == ("csv", "json")
    s = opts["sizes"]
    assert (s.flag, s.type, s.sequence, s.default) == ("--size", "int", "list", [4, 8]) and s.help.endswith("(default: 4,8)")
    p = opts["pair"]
    assert (p.sequence, p.length, p.metavar, p.default) == ("tuple", 2, "LO,HI", (0.5, 2.0))
    assert opts["on"].type == "bool" and opts["on"].default is True
    assert opts["maybe"].help == "None = decided later."  # a None default is explained, not shown
    assert (opts["names"].sequence, opts["names"].type, opts["names"].default) == ("list", "str", [])


def test_nothing_given_leaves_every_default_to_the_dataclass():
    from tests.config_cli_sample import Sample

    opts = config_cli.read_config(SAMPLE)
    assert parse(opts, []) == {}
    got = parse(opts, ["--width", "5", "--size", "1, 2,3", "--pair", "1,3", "--no-on", "--off", "--mode", "exact",
                       "--fmt", "json", "--maybe", "7", "--rate", "0.5", "--names", "a,b"])
    assert got == {"width": 5, "sizes": [1, 2, 3], "pair": (1.0, 3.0), "on": False, "off": True, "mode": "exact",
                   "fmt": "json", "maybe": 7, "rate": 0.5, "names": ["a", "b"]}
    assert Sample(**got).pair == (1.0, 3.0)
    with pytest.raises(SystemExit):  # a choice argparse refuses, as it refused before
        parse(opts, ["--mode", "slow"])


@pytest.mark.parametrize("argv,needle", [(["--size", "1,x"], "--size must be comma-separated integers, got '1,x'"),
                                         (["--size", " , "], "--size is empty"),
                                         (["--pair", "1"], "--pair must be LO,HI, got '1'")])
def test_a_bad_list_is_a_user_error(argv, needle):
    with pytest.raises(UserError, match=needle):
        parse(config_cli.read_config(SAMPLE), argv)


def _cli_configs() -> dict[str, str]:
    """{"module:Class": label} of every config the CLI generates options from."""
    from backend.cli import COMMANDS, TRAINER

    refs = {f"{TRAINER}:TrainConfig": "train"}
    refs.update({ref: f"train --kind {kind}" for kind, ref in
                 config_cli.find_assigned("backend.dictionaries", "config_class", "kind").items()})
    todo = list(COMMANDS)
    while todo:
        c = todo.pop()
        todo += c.subcommands
        if c.options is not None and hasattr(c.options, "args"):  # from_config(ref)
            refs[c.options.args[0]] = c.name
    return refs


def test_the_source_reading_agrees_with_every_real_config():
    """Names and defaults read by `ast` equal the imported dataclass's, and every option has a docstring."""
    refs = _cli_configs()
    assert len(refs) >= 15, refs
    for ref, where in refs.items():
        module, name = ref.split(":")
        cls = getattr(importlib.import_module(module), name)
        real = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)}
        opts = config_cli.read_config(ref)
        assert [o.field for o in opts] == list(real), ref
        for o in opts:
            f = real[o.field]
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            assert o.default == default, (ref, o.field)
            assert o.doc, f"{ref}.{o.field} ({where}) has no docstring"
            if o.choices:
                assert default in o.choices


def test_train_options_say_whose_they_are():
    from backend.cli import train_options

    (_, shared), (_, own), (_, anchor) = train_options()
    by_flag = {o.flag: o for o in shared + own + anchor}
    assert by_flag["--kind"].owners == ("relu-l1", "topk", "batchtopk", "mlp", "sparse-coding", "sae-ito")
    assert by_flag["--lr"].owners == ("relu-l1", "topk", "batchtopk", "mlp", "sparse-coding")
    assert by_flag["--k"].owners == ("topk", "batchtopk", "mlp", "sparse-coding")
    assert "(default: topk, batchtopk 32; mlp, sparse-coding 0)" in by_flag["--k"].help
    assert by_flag["--epochs"].help.endswith("(default: relu-l1, topk 12.0; batchtopk 8.0; mlp 6.0; sparse-coding 4.0)")
    assert by_flag["--l1-coeff"].help.startswith("relu-l1, mlp, sparse-coding: ")
    assert by_flag["--base"].owners == ("sae-ito",) and by_flag["--pool"].owners == ("sparse-coding", "sae-ito")
    assert "sae-ito" not in by_flag["--anchor-kl"].owners and "relu-l1" in by_flag["--anchor-kl"].owners


def test_help_imports_no_torch():
    code = "import sys; from backend.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0 and res.stdout.strip() == "False", res.stderr
