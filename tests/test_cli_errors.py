"""Bad input: one clear line on stderr, a non-zero exit, no traceback, nothing half-written."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args, cwd=REPO):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "backend", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def assert_one_line_error(res, *needles):
    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr
    lines = [l for l in res.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_help_for_every_subcommand():
    for sub in ("cache", "train", "analyze", "info", "import", "demo"):
        res = run_cli(sub, "--help")
        assert res.returncode == 0 and "usage:" in res.stdout


def test_unknown_model_offline(tmp_path, tiny_corpus_dir):
    out = tmp_path / "r"
    res = run_cli("cache", "--model", "no-such-org/no-such-model", "--corpus", tiny_corpus_dir, "--tokens", 512, "--out", out)
    assert_one_line_error(res, "cannot load model", "offline")
    assert not out.exists() and not (tmp_path / "r.partial").exists()


def test_missing_model_path(tmp_path, tiny_corpus_dir):
    res = run_cli("cache", "--model", "./nowhere/model", "--corpus", tiny_corpus_dir, "--tokens", 512, "--out", tmp_path / "r")
    assert_one_line_error(res, "model path not found")


@pytest.mark.parametrize("hook,needle", [("blocks.9.hook_resid_post", "out of range"),
                                         ("blocks.1.hook_resid", "unknown hook name")])
def test_bad_hook(tmp_path, tiny_model_dir, tiny_corpus_dir, hook, needle):
    out = tmp_path / "r"
    res = run_cli("cache", "--model", tiny_model_dir, "--hook", hook, "--corpus", tiny_corpus_dir, "--tokens", 512, "--out", out)
    assert_one_line_error(res, needle)
    assert not out.exists() and not (tmp_path / "r.partial").exists()


def test_empty_corpus(tmp_path, tiny_model_dir):
    corpus = tmp_path / "empty"
    corpus.mkdir()
    (corpus / "a.txt").write_text("   \n")
    out = tmp_path / "r"
    res = run_cli("cache", "--model", tiny_model_dir, "--hook", "blocks.1.hook_resid_post", "--corpus", corpus, "--tokens", 512, "--out", out)
    assert_one_line_error(res, "empty")
    assert not out.exists() and not (tmp_path / "r.partial").exists()


def test_missing_corpus_file(tmp_path, tiny_model_dir):
    res = run_cli("cache", "--model", tiny_model_dir, "--corpus", tmp_path / "nope.jsonl", "--tokens", 512, "--out", tmp_path / "r")
    assert_one_line_error(res, "nope.jsonl")


def test_not_a_run(tmp_path):
    (tmp_path / "junk").mkdir()
    for args in (("info", "--run", tmp_path / "junk"), ("train", "--run", tmp_path / "junk"),
                 ("analyze", "--run", tmp_path / "junk", "--dict", "x"), ("info", "--run", tmp_path / "missing")):
        assert_one_line_error(run_cli(*args))


def test_corrupt_shard(tmp_path, tiny_run):
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("dictionaries"))
    (run / "activations" / "shard_00000.npy").write_bytes(b"garbage")
    res = run_cli("train", "--run", run, "--kind", "relu-l1", "--d-sae", 64, "--batch-size", 256, "--name", "x", "--no-ce")
    assert_one_line_error(res, "corrupt activation shard")
    assert not (run / "dictionaries" / "x").exists()


def test_out_is_not_a_run(tmp_path, tiny_model_dir, tiny_corpus_dir):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "precious.txt").write_text("user data")
    res = run_cli("cache", "--model", tiny_model_dir, "--corpus", tiny_corpus_dir, "--tokens", 512, "--out", out)
    assert_one_line_error(res, "not a run")
    assert (out / "precious.txt").read_text() == "user data"
