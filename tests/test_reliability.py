"""Hostile inputs and faults (issue 15): a catalogue of cases, run against real runs built by the fixtures.

Each case is data: the command (`python -m backend` arguments with {placeholders}, or a query-layer call), the
exit code it must give, a fragment of its one-line message, the hostile change made to the world first
(`setup`), and the files allowed to change (`changes`, globs under the world). Every other file of the world
(two runs of the tiny model with trained, analysed and labelled dictionaries) must keep its SHA-256, and no
file may appear outside `changes`. Most cases call `backend.cli.main(argv)` in-process (the same code as the
entry point, exit codes included); a few need a real process: the entry point itself, a hang guarded by a
timeout, and a full disk, simulated with `ulimit -f` (a file-size limit needs no privileges; Python ignores
SIGXFSZ, so a write past it fails with EFBIG as one on a full disk fails with ENOSPC).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from backend.common.errors import UserError

REPO = Path(__file__).resolve().parent.parent
HOOK = "blocks.1.hook_resid_post"
# the tiny_run fixture's settings: a rebuild with them gives the same activations, bit for bit
CACHE = ["--model", "{model}", "--corpus", "{corpus}", "--hook", HOOK, "--tokens", "2048", "--ctx-len", "32",
         "--shard-seqs", "16", "--batch-size", "8", "--heldout-frac", "0.125", "--device", "cpu"]
TRAIN = ["--kind", "relu-l1", "--d-sae", "16", "--batch-size", "256", "--epochs", "1", "--no-ce", "--device", "cpu",
         "--checkpoint-every-s", "0"]
ROOT = os.geteuid() == 0  # root writes anywhere: permission cases cannot fail for it


# --------------------------------------------------------------------------- the world every case starts from


@pytest.fixture(scope="module")
def template(tmp_path_factory, tiny_run, tiny_model_dir, tiny_corpus_dir) -> Path:
    """w/runs/tiny: dictionary `a` (trained, analysed, labelled, validated), `b` (trained only, unlabelled);
    w/runs/other: a copy; w/saelens_b: b as a SAELens folder; w/labels_a.csv: a's labels exported."""
    from backend.analysis.analyze import analyze
    from backend.pipeline import build_dictionary
    from backend.store.label_io import export
    from backend.store.label_store import LabelStore
    from backend.training.trainer import TrainConfig

    w = tmp_path_factory.mktemp("hostile") / "w"
    run = w / "runs" / "tiny"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("dictionaries", "labels.duckdb*", "comparisons"))
    build_dictionary(run, TrainConfig(kind="relu-l1", d_sae=32, epochs=2, batch_size=256, checkpoint_every_s=0), "a",
                     device="cpu", compute_ce=False, progress=False)
    build_dictionary(run, TrainConfig(kind="relu-l1", d_sae=16, epochs=1, batch_size=256, checkpoint_every_s=0), "b",
                     device="cpu", compute_ce=False, progress=False)
    analyze(run, "a", device="cpu", progress=False)
    ls = LabelStore(run)
    ls.save("a", 1, "cats", "ada")
    ls.save("a", 2, "brackets", "ada")
    ls.save("a", 1, "cats and dogs", "bob")
    ls.add_verdicts("a", 1, "ada", [{"token_index": 40, "activating": True, "fits": True}])
    shutil.copytree(run, w / "runs" / "other")
    (w / "saelens_b").mkdir()
    for f in ("cfg.json", "sae_weights.safetensors"):
        shutil.copy2(run / "dictionaries" / "b" / f, w / "saelens_b" / f)
    export(run, w / "labels_a.csv")
    (w / "notes.txt").write_text("a file, not a folder\n")
    (w / "notrun").mkdir()
    (w / "notrun" / "precious.txt").write_text("user data\n")
    return w


@dataclass
class World:
    w: Path
    model: Path
    corpus: Path

    @property
    def run(self) -> Path:
        return self.w / "runs" / "tiny"

    @property
    def other(self) -> Path:
        return self.w / "runs" / "other"

    def fmt(self, arg: str) -> str:
        return arg.format(w=self.w, run=self.run, other=self.other, model=self.model, corpus=self.corpus)

    def meta(self) -> dict:
        return json.loads((self.run / "run.json").read_text())

    def set_meta(self, **changes) -> None:
        (self.run / "run.json").write_text(json.dumps({**self.meta(), **changes}))


@dataclass
class Case:
    id: str
    argv: list[str] | None = None  # `python -m backend` arguments, with {w} {run} {other} {model} {corpus}
    call: tuple[str, dict] | None = None  # or a query-layer function of the run and its keywords
    code: int = 2  # expected exit status (2: a UserError, one line)
    msg: str = ""  # fragment of the `error:` line (of stdout/stderr when code is 0)
    setup: Callable[[World], None] | None = None  # the hostile change, made before the checksums are taken
    changes: tuple[str, ...] = ()  # globs (relative to the world) of files that may change or appear
    check: Callable[[World, dict, str], None] | None = None  # more assertions: (world, checksums before, output)
    process: str = "inproc"  # inproc | subprocess | ulimit:<KiB>
    skip: str | None = None
    marks: tuple = field(default=())


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def checksums(w: Path) -> dict[str, str]:
    return {p.relative_to(w).as_posix(): sha(p) for p in sorted(w.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- hostile changes (setup functions)


def truncate(rel: str, keep: float = 0.5) -> Callable[[World], None]:
    def setup(x: World) -> None:
        p = x.w / rel
        data = p.read_bytes()
        p.write_bytes(data[: int(len(data) * keep)])
    return setup


def garbage(rel: str) -> Callable[[World], None]:
    def setup(x: World) -> None:
        (x.w / rel).write_bytes(b"\x00garbage" * 16)
    return setup


def foreign_parquet(rel: str) -> Callable[[World], None]:
    def setup(x: World) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.table({"x": [1, 2, 3]}), x.w / rel)
    return setup


def meta_change(**changes) -> Callable[[World], None]:
    return lambda x: x.set_meta(**changes)


def poke_shard(i: int, seq: int, pos: int, value: float) -> Callable[[World], None]:
    """Write `value` at (seq, pos, 0) of shard i (shard-local seq), keeping the file's format."""
    def setup(x: World) -> None:
        p = x.run / "activations" / f"shard_{i:05d}.npy"
        arr = np.load(p)
        arr[seq, pos, 0] = value
        np.save(p, arr)
    return setup


def shards(edit: Callable[[list], list]) -> Callable[[World], None]:
    return lambda x: x.set_meta(shards=edit(x.meta()["shards"]))


class Payload:
    """A pickle that creates a file when unpickled: what a crafted checkpoint would do."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.target)}",))


def crafted_checkpoint(path: Path, target: Path) -> None:
    """A checkpoint.pt as torch.save writes one, whose unpickling would create `target`."""
    import torch
    torch.save({"model": Payload(target), "optimizer": {}}, path)


def pickle_checkpoint(x: World) -> None:
    d = x.run / "dictionaries" / "c.partial"
    d.mkdir(parents=True)
    crafted_checkpoint(d / "checkpoint.pt", x.w / "pwned")


def safetensors_checkpoint(tensors: dict | None, state: dict | None) -> Callable[[World], None]:
    def setup(x: World) -> None:
        import torch
        from safetensors.torch import save_file
        d = x.run / "dictionaries" / "c.partial"
        d.mkdir(parents=True)
        meta = None if state is None else {"state": json.dumps(state)}
        save_file(tensors or {"x": torch.zeros(1)}, str(d / "checkpoint.safetensors"), metadata=meta)
    return setup


def train_state() -> dict:
    """The `cfg` a checkpoint of the TRAIN options must carry, so a resume gets past the config check."""
    from backend.training.trainer import TrainConfig
    cfg = TrainConfig(kind="relu-l1", d_sae=16, batch_size=256, epochs=1, checkpoint_every_s=0).to_dict()
    return {"cfg": json.loads(json.dumps(cfg)), "step": 1, "scale": 1.0, "optimizer_param_groups": []}


def labels_for(name: str) -> Callable[[World], None]:
    """Labels of a dictionary `name` that is not on disk (deleted by hand, say)."""
    def setup(x: World) -> None:
        from backend.store.label_store import LabelStore
        LabelStore(x.run).save(name, 3, "an old label", "ada")
    return setup


def csv_rows(*rows: str, header: str = "dict_name,feature,text,author") -> Callable[[World], None]:
    def setup(x: World) -> None:
        (x.w / "in.csv").write_text("\n".join([header, *rows]) + "\n")
    return setup


def binary_corpus(x: World) -> None:
    (x.w / "bincorpus").mkdir()
    (x.w / "bincorpus" / "data.txt").write_bytes(np.random.default_rng(0).bytes(64 * 1024))


def interrupted_cache_with_truncated_shard(x: World) -> None:
    """runs/new.partial: shards 0 and 1 recorded as done, then shard 1 cut short (a crash the log missed)."""
    from backend.activations.cache import CacheConfig, cache_activations
    from backend.model import hooks

    cfg = CacheConfig(model=str(x.model), hook=HOOK, corpus=str(x.corpus), tokens=2048, ctx_len=32, shard_seqs=16,
                      batch_size=8, heldout_frac=0.125, device="cpu")
    real, calls = hooks.capture, {"n": 0}

    def dies_in_third_shard(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # two batches of 8 per shard of 16
            raise KeyboardInterrupt
        return real(*a, **k)

    hooks.capture = dies_in_third_shard
    try:
        with pytest.raises(KeyboardInterrupt):
            cache_activations(cfg, x.w / "runs" / "new")
    finally:
        hooks.capture = real
    truncate("runs/new.partial/activations/shard_00001.npy", 0.6)(x)


# --------------------------------------------------------------------------- checks after a case


def no_file(rel: str):
    def check(x: World, before: dict, out: str) -> None:
        assert not (x.w / rel).exists(), rel
    return check


def old_run_kept_whole(x: World, before: dict, out: str) -> None:
    kept = [p for p in (x.w / "runs").iterdir() if p.name.startswith("tiny@")]
    assert len(kept) == 1, list((x.w / "runs").iterdir())
    moved = {k[len("runs/tiny/"):]: v for k, v in before.items() if k.startswith("runs/tiny/")}
    assert checksums(kept[0]) == moved  # the whole old run, byte for byte: dictionaries, labels, activations
    assert not (x.run / "dictionaries").exists() and not (x.run / "labels.duckdb").exists()
    assert str(kept[0]) in out
    from backend.common.layout import check_run_files, load_run
    check_run_files(x.run, load_run(x.run))


def plain_rebuild(x: World, before: dict, out: str) -> None:
    assert [p.name for p in (x.w / "runs").iterdir() if "@" in p.name] == []
    assert "kept" not in out


def labelled_dictionary_archived(x: World, before: dict, out: str) -> None:
    from backend.store.label_store import LabelStore

    kept = [p for p in (x.run / "dictionaries").iterdir() if p.name.startswith("a@")]
    assert len(kept) == 1
    old = {k[len("runs/tiny/dictionaries/a/"):]: v for k, v in before.items() if k.startswith("runs/tiny/dictionaries/a/")}
    assert checksums(kept[0]) == old  # the old dictionary and its analysis, unchanged
    ls = LabelStore(x.run)
    assert ls.current("a").empty  # the new `a` starts unlabelled
    assert set(ls.current(kept[0].name)["text"]) == {"cats and dogs", "brackets"}
    assert len(ls.verdicts(kept[0].name)) == 1
    arch = ls.archives()
    assert list(arch["archived_as"]) == [kept[0].name] and arch["cfg_sha256"].iloc[0] == before["runs/tiny/dictionaries/a/cfg.json"]
    assert json.loads((x.run / "dictionaries" / "a" / "cfg.json").read_text())["d_sae"] == 16  # the new one
    assert kept[0].name in out


def unlabelled_replaced(x: World, before: dict, out: str) -> None:
    assert not [p for p in (x.run / "dictionaries").iterdir() if "@" in p.name]
    assert (x.run / "dictionaries" / "b" / "metrics.json").is_file()


def stale_labels_archived(x: World, before: dict, out: str) -> None:
    from backend.store.label_store import LabelStore

    ls = LabelStore(x.run)
    assert ls.current("ghost").empty
    kept = ls.archives()["archived_as"].tolist()
    assert len(kept) == 1 and kept[0].startswith("ghost@") and ls.current(kept[0])["text"].tolist() == ["an old label"]
    assert ls.archives()["cfg_sha256"].isna().all()  # there was no folder to hash
    assert "kept as" in out


def cache_resumed_whole(x: World, before: dict, out: str) -> None:
    from backend.common.layout import check_run_files, load_run

    new = x.w / "runs" / "new"
    check_run_files(new, load_run(new))
    for i in range(4):  # the same activations as the fixture's run, bit for bit
        f = f"activations/shard_{i:05d}.npy"
        assert sha(new / f) == before[f"runs/tiny/{f}"], f


def disk_full_cache_resumes(x: World, before: dict, out: str) -> None:
    partial = x.w / "runs" / "new.partial"
    stray = [p for p in partial.rglob("*") if p.name.startswith(".")]
    assert stray == [], stray  # no temporary file left behind
    code, text = run_inproc(["cache", "--out", "{w}/runs/new", *CACHE], x)
    assert code == 0, text
    cache_resumed_whole(x, before, text)


def no_stray_temp(x: World, before: dict, out: str) -> None:
    stray = [p for p in x.w.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]
    assert stray == [], stray


def rerun_after_repair(x: World, before: dict, out: str) -> None:
    """The failed train left nothing that blocks a rerun once the file is repaired."""
    shutil.copy2(x.other / "tokens.parquet", x.run / "tokens.parquet")
    code, text = run_inproc(["train", "--run", "{run}", "--name", "c", *TRAIN], x)
    assert code == 0, text
    assert (x.run / "dictionaries" / "c" / "metrics.json").is_file()


def info_says_unreadable(x: World, before: dict, out: str) -> None:
    line = next(l for l in out.splitlines() if l.strip().startswith("a:"))
    assert "analysis unreadable" in line and "features.parquet" in line and " analysed" not in line


def labels_unchanged_and_still_readable(x: World, before: dict, out: str) -> None:
    from backend.store.label_store import LabelStore
    assert len(LabelStore(x.run).all_versions("a")) == 3


# --------------------------------------------------------------------------- the catalogue

IMPORT = ["import", "--run", "{run}", "--saelens", "{w}/saelens_b", "--name"]
NEW_TRAIN = ["train", "--run", "{run}", "--name", "c", *TRAIN]

CASES = [
    # 2. names that become paths: validated in one place (layout.dict_dir / names.check_name)
    Case("import-name-dotdot", IMPORT + ["../../x"], msg="path separator"),
    Case("import-name-slash", IMPORT + ["x/y"], msg="path separator"),
    Case("import-name-backslash", IMPORT + ["x\\y"], msg="path separator"),
    Case("import-name-empty", IMPORT + [""], msg="is empty"),
    Case("import-name-dot", IMPORT + [".x"], msg="starts with a dot"),
    Case("import-name-dotdot-only", IMPORT + [".."], msg="bad dictionary name"),
    Case("import-name-partial", IMPORT + ["x.partial"], msg=".partial"),
    Case("import-name-archive-mark", IMPORT + ["x@1"], msg="reserved"),
    Case("import-name-control", IMPORT + ["a\nb"], msg="control character"),
    Case("import-name-too-long", IMPORT + ["n" * 300], msg="longer than"),
    Case("import-name-exists", IMPORT + ["a"], msg="already exists"),
    Case("import-nan-weights", IMPORT + ["nan"], msg="non-finite",
         setup=lambda x: _nan_weights(x.w / "saelens_b")),
    Case("analyze-dict-escape", ["analyze", "--run", "{run}", "--dict", "../../other/dictionaries/a", "--device", "cpu"],
         msg="path separator"),
    Case("analyze-dict-empty", ["analyze", "--run", "{run}", "--dict", ""], msg="is empty"),
    Case("analyze-dict-missing", ["analyze", "--run", "{run}", "--dict", "nope"], msg="no dictionary 'nope'"),
    Case("train-name-empty", ["train", "--run", "{run}", "--name", "", *TRAIN], msg="is empty"),
    Case("train-name-escape", ["train", "--run", "{run}", "--name", "../../x", *TRAIN], msg="path separator"),
    Case("train-name-archive-mark", ["train", "--run", "{run}", "--name", "a@2", *TRAIN], msg="reserved"),
    Case("train-ito-base-escape", ["train", "--run", "{run}", "--kind", "sae-ito", "--base", "../../other/dictionaries/a",
                                   "--no-ce"], msg="path separator"),
    Case("compare-escape", ["compare", "--run", "{run}", "--dicts", "a,../b"], msg="no dictionary '../b'"),
    Case("explain-escape", ["explain", "--run", "{run}", "--dict", "../a"], msg="path separator"),
    Case("score-escape", ["score", "--run", "{run}", "--dict", "../a"], msg="path separator"),
    Case("labels-import-dict-escape", ["labels", "import", "--run", "{run}", "--file", "{w}/in.csv", "--dict", "../x"],
         setup=csv_rows("1,cats,ada", header="feature,text,author"), msg="path separator"),
    # 1. code execution: checkpoints never unpickle code
    Case("resume-pickle-payload", [*NEW_TRAIN, "--resume"], setup=pickle_checkpoint, msg="refused to load checkpoint",
         check=no_file("pwned")),
    Case("resume-checkpoint-garbage", [*NEW_TRAIN, "--resume"], msg="cannot read checkpoint",
         setup=lambda x: (x.run / "dictionaries" / "c.partial").mkdir() or
         (x.run / "dictionaries" / "c.partial" / "checkpoint.safetensors").write_bytes(b"\x10\x00junk")),
    Case("resume-checkpoint-no-state", [*NEW_TRAIN, "--resume"], setup=safetensors_checkpoint(None, None),
         msg="no training state"),
    Case("resume-checkpoint-wrong-config", [*NEW_TRAIN, "--resume"], msg="different config",
         setup=safetensors_checkpoint(None, {"cfg": {"kind": "topk"}})),
    Case("resume-checkpoint-wrong-tensors", [*NEW_TRAIN, "--resume"], msg="does not fit",
         setup=lambda x: safetensors_checkpoint(_wrong_tensors(), train_state())(x)),
    # 3. silent loss: a rebuild keeps the user's work
    Case("cache-force-keeps-dictionaries-and-labels", ["cache", "--out", "{run}", "--force", *CACHE], code=0,
         msg="kept whole", changes=("runs/*",), check=old_run_kept_whole),
    Case("cache-force-plain-run", ["cache", "--out", "{run}", "--force", *CACHE], code=0, changes=("runs/tiny/*",),
         setup=lambda x: (shutil.rmtree(x.run / "dictionaries"), (x.run / "labels.duckdb").unlink()),
         check=plain_rebuild),
    Case("train-force-labelled", ["train", "--run", "{run}", "--name", "a", "--force", *TRAIN], code=0, msg="kept as",
         changes=("runs/tiny/dictionaries/*", "runs/tiny/labels.duckdb*"), check=labelled_dictionary_archived),
    Case("train-force-unlabelled", ["train", "--run", "{run}", "--name", "b", "--force", *TRAIN], code=0,
         changes=("runs/tiny/dictionaries/b/*",), check=unlabelled_replaced),
    Case("train-name-with-stale-labels", ["train", "--run", "{run}", "--name", "ghost", *TRAIN], code=0,
         setup=labels_for("ghost"), changes=("runs/tiny/dictionaries/ghost/*", "runs/tiny/labels.duckdb*"),
         check=stale_labels_archived),
    Case("import-name-with-stale-labels", IMPORT + ["ghost"], code=0, setup=labels_for("ghost"),
         changes=("runs/tiny/dictionaries/ghost/*", "runs/tiny/labels.duckdb*"), check=stale_labels_archived),
    # 4. hangs: every loop that waits for data ends or fails
    Case("train-no-shards", NEW_TRAIN, setup=shards(lambda s: []), msg="lists no activation shards",
         process="subprocess"),
    Case("train-shard-gap", NEW_TRAIN, setup=shards(lambda s: s[:1] + s[2:]), msg="starts at sequence 32, expected 16"),
    Case("train-shards-short", NEW_TRAIN, setup=shards(lambda s: s[:-1]), msg="cover 48 sequences"),
    Case("train-shard-empty", NEW_TRAIN, setup=shards(lambda s: s[:-1] + [{**s[-1], "n_seqs": 0}]), msg="n_seqs >= 1"),
    # 5. NaN in, one line out, nothing saved
    Case("train-nan-in-training-shard", NEW_TRAIN, setup=poke_shard(1, 3, 5, float("nan")),
         msg="non-finite activation in shard", check=no_file("runs/tiny/dictionaries/c.partial")),
    Case("train-inf-in-heldout-shard", NEW_TRAIN, setup=poke_shard(3, 12, 7, float("inf")), msg="shard_00003.npy",
         check=no_file("runs/tiny/dictionaries/c.partial")),
    Case("analyze-nan-in-shard", ["analyze", "--run", "{run}", "--dict", "a", "--device", "cpu"],
         setup=poke_shard(0, 2, 9, float("nan")), msg="sequence 2, position 9"),
    # 6. tracebacks become one line; checked before slow work
    Case("train-tokens-truncated", NEW_TRAIN, setup=truncate("runs/tiny/tokens.parquet"), msg="tokens.parquet",
         check=rerun_after_repair),
    Case("train-tokens-foreign", NEW_TRAIN, setup=foreign_parquet("runs/tiny/tokens.parquet"), msg="3 rows"),
    Case("cache-out-under-file", ["cache", "--out", "{w}/notes.txt/run", *CACHE[:1], "{w}/no-model", *CACHE[2:]],
         msg="is a file"),
    Case("cache-out-is-file", ["cache", "--out", "{w}/notes.txt", *CACHE], msg="exists and is a file"),
    Case("cache-out-unwritable", ["cache", "--out", "{w}/locked/run", *CACHE[:1], "{w}/no-model", *CACHE[2:]],
         setup=lambda x: ((x.w / "locked").mkdir(), (x.w / "locked").chmod(0o555)), msg="no permission",
         skip="root writes anywhere" if ROOT else None),
    Case("cache-out-not-a-run", ["cache", "--out", "{w}/notrun", *CACHE], msg="not a run"),
    Case("train-dictionaries-unwritable", NEW_TRAIN, setup=lambda x: (x.run / "dictionaries").chmod(0o555),
         msg="no permission", skip="root writes anywhere" if ROOT else None),
    Case("demo-out-under-file", ["demo", "--out", "{w}/notes.txt/demo"], msg="is a file"),
    Case("synth-out-under-file", ["synth", "--quick", "--out", "{w}/notes.txt/synth"], msg="is a file"),
    Case("labels-export-out-under-file", ["labels", "export", "--run", "{run}", "--out", "{w}/notes.txt/x.csv"],
         msg="is a file"),
    Case("labels-export-out-is-folder", ["labels", "export", "--run", "{run}", "--out", "{w}/notrun"], msg="is a folder"),
    Case("run-json-ctx-len-text", ["info", "--run", "{run}"], setup=meta_change(ctx_len="abc"), msg="ctx_len must be an integer"),
    Case("run-json-ctx-len-float", NEW_TRAIN, setup=meta_change(ctx_len=32.0), msg="ctx_len must be an integer"),
    Case("run-json-n-seqs-negative", NEW_TRAIN, setup=meta_change(n_seqs=-4), msg="n_seqs must be an integer"),
    Case("run-json-d-in-text", ["analyze", "--run", "{run}", "--dict", "a"], setup=meta_change(d_in="64"),
         msg="d_in must be an integer"),
    Case("run-json-heldout-beyond", NEW_TRAIN, setup=meta_change(heldout_from=99), msg="heldout_from"),
    Case("run-json-shards-not-list", NEW_TRAIN, setup=meta_change(shards={"a": 1}), msg="shards must be a list"),
    Case("run-json-hook-number", ["info", "--run", "{run}"], setup=meta_change(hook=15), msg="hook must be"),
    Case("run-json-list", ["info", "--run", "{run}"], setup=lambda x: (x.run / "run.json").write_text("[1, 2]"),
         msg="not a JSON object"),
    Case("run-json-invalid", ["info", "--run", "{run}"], setup=lambda x: (x.run / "run.json").write_text("{oops"),
         msg="not valid JSON"),
    Case("run-json-binary", ["info", "--run", "{run}"], setup=lambda x: (x.run / "run.json").write_bytes(b"\xff\xfe\x00"),
         msg="not valid JSON"),
    Case("shard-path-escape", NEW_TRAIN, msg="not a file in activations/",
         setup=shards(lambda s: [{**s[0], "file": "../other/activations/shard_00000.npy"}, *s[1:]])),
    Case("shard-path-absolute", NEW_TRAIN, msg="not a file in activations/",
         setup=shards(lambda s: [{**s[0], "file": "/etc/passwd"}, *s[1:]])),
    Case("shard-truncated", NEW_TRAIN, setup=truncate("runs/tiny/activations/shard_00002.npy", 0.7), msg="truncated"),
    Case("shard-missing", NEW_TRAIN, setup=lambda x: (x.run / "activations" / "shard_00001.npy").unlink(),
         msg="is missing"),
    Case("shard-wrong-dtype", NEW_TRAIN, msg="expected (16, 32, 64)",
         setup=lambda x: np.save(x.run / "activations" / "shard_00000.npy", np.zeros((16, 32, 64), np.int64))),
    Case("shard-garbage", NEW_TRAIN, setup=garbage("runs/tiny/activations/shard_00000.npy"), msg="corrupt activation shard"),
    Case("info-analysis-unreadable", ["info", "--run", "{run}"], code=0, check=info_says_unreadable,
         setup=truncate("runs/tiny/dictionaries/a/features.parquet")),
    Case("cfg-json-garbage", ["analyze", "--run", "{run}", "--dict", "a", "--device", "cpu"],
         setup=garbage("runs/tiny/dictionaries/a/cfg.json"), msg="not valid JSON"),
    Case("weights-truncated", ["analyze", "--run", "{run}", "--dict", "a", "--device", "cpu"],
         setup=truncate("runs/tiny/dictionaries/a/sae_weights.safetensors"), msg="cannot read"),
    Case("labels-db-garbage", ["labels", "export", "--run", "{run}", "--out", "{w}/out.csv"],
         setup=garbage("runs/tiny/labels.duckdb"), msg="label store"),
    # 7. too lenient before
    Case("labels-import-feature-beyond", ["labels", "import", "--run", "{run}", "--file", "{w}/in.csv"],
         setup=csv_rows("a,1,fine,ada", "a,999,too far,ada"), msg="features 0..31, not 999",
         check=labels_unchanged_and_still_readable),
    Case("labels-import-no-such-dictionary", ["labels", "import", "--run", "{run}", "--file", "{w}/in.csv"],
         setup=csv_rows("zzz,1,cats,ada"), msg="no dictionary 'zzz'"),
    Case("labels-import-not-a-run", ["labels", "import", "--run", "{w}/notrun", "--file", "{w}/labels_a.csv"],
         msg="is not a run", check=no_file("notrun/labels.duckdb")),
    Case("labels-import-missing-file", ["labels", "import", "--run", "{run}", "--file", "{w}/nope.csv"], msg="no file"),
    Case("labels-import-archived-name", ["labels", "import", "--run", "{run}", "--file", "{w}/in.csv"], code=0,
         setup=lambda x: (labels_for("ghost")(x), _archive("ghost")(x), csv_rows("ghost@old,3,again,ada")(x)),
         msg="imported 1 new", changes=("runs/tiny/labels.duckdb*",)),
    Case("cache-binary-corpus", ["cache", "--out", "{w}/runs/bin", *CACHE[:2], "--corpus", "{w}/bincorpus", *CACHE[4:]],
         setup=binary_corpus, msg="not UTF-8 text"),
    Case("cache-resume-truncated-shard", ["cache", "--out", "{w}/runs/new", *CACHE], code=0, msg="caching it again",
         setup=interrupted_cache_with_truncated_shard, changes=("runs/new*",), check=cache_resumed_whole),
    # handled before, kept handled
    Case("info-missing-run", ["info", "--run", "{w}/missing"], msg="run folder not found", process="subprocess"),
    Case("train-not-a-run", ["train", "--run", "{w}/notrun", *TRAIN], msg="is not a run"),
    Case("cache-too-few-tokens", ["cache", "--out", "{w}/runs/x", *CACHE[:6], "--tokens", "10"], msg="at least 2 contexts"),
    Case("train-unknown-kind", ["train", "--run", "{run}", "--kind", "nope"], msg="cannot be trained"),
    Case("train-resume-finished", ["train", "--run", "{run}", "--name", "b", "--resume", *TRAIN], msg="nothing to resume"),
    Case("compare-missing", ["compare", "--run", "{run}", "--dicts", "a,nope"], msg="nope"),
    # disk full: a file-size limit on the real process
    Case("disk-full-cache", ["cache", "--out", "{w}/runs/new", *CACHE], msg="disk is full or a file-size limit", process="ulimit:40",
         changes=("runs/new*",), check=disk_full_cache_resumes),
    Case("disk-full-train", ["train", "--run", "{run}", "--name", "big", "--kind", "relu-l1", "--d-sae", "512",
                             "--batch-size", "256", "--epochs", "1", "--no-ce", "--device", "cpu",
                             "--checkpoint-every-s", "0"],
         msg="File too large", process="ulimit:100", check=lambda x, b, o: (no_stray_temp(x, b, o),
                                                                            no_file("runs/tiny/dictionaries/big.partial")(x, b, o))),
]

CASES += [
    Case("disk-full-new-label-store", ["labels", "import", "--run", "{run}", "--file", "{w}/big.csv"],
         msg="cannot write label store", process="ulimit:8",
         setup=lambda x: ((x.run / "labels.duckdb").unlink(), _big_csv(x)), check=no_file("runs/tiny/labels.duckdb")),
    Case("disk-full-label-store", ["labels", "import", "--run", "{run}", "--file", "{w}/big.csv"],
         msg="nothing was saved", process="ulimit:20", setup=lambda x: _big_csv(x),
         changes=("runs/tiny/labels.duckdb.wal",), check=labels_unchanged_and_still_readable),
]


def _big_csv(x: World) -> None:
    """400 label rows of ~200 characters: more than a small file-size limit lets DuckDB write."""
    csv_rows(*[f"a,{i % 32},label {i} {'x' * 200},ada" for i in range(400)])(x)
    (x.w / "in.csv").rename(x.w / "big.csv")


# the query layer on damaged files: every function raises the project's error, naming the file
QUERIES = {
    "list_features": {"dictionary": "a"}, "count_features": {"dictionary": "a", "labelled": True},
    "feature_densities": {"dictionary": "a"}, "random_feature": {"dictionary": "a", "seed": 0},
    "check_feature": {"dictionary": "a", "feature": 3}, "feature_dashboard": {"dictionary": "a", "feature": 3},
    "context": {"dictionary": "a", "feature": 3, "token_index": 40}, "tokens_window": {"token_index": 40},
}
READS = {"features.parquet": ("list_features", "count_features", "feature_densities", "random_feature", "check_feature",
                              "feature_dashboard"),
         "feature_acts.parquet": ("context", "feature_dashboard"), "contexts.parquet": ("feature_dashboard",),
         "tokens.parquet": ("tokens_window", "context")}
for _file, _fns in READS.items():
    _rel = f"runs/tiny/{'' if _file == 'tokens.parquet' else 'dictionaries/a/'}{_file}"
    for _fn in _fns:
        for _how, _setup in (("truncated", truncate(_rel)), ("foreign", foreign_parquet(_rel)), ("garbage", garbage(_rel))):
            CASES.append(Case(f"query-{_fn}-{_file.split('.')[0]}-{_how}", call=(_fn, QUERIES[_fn]), setup=_setup,
                              msg=_file))


def _nan_weights(folder: Path) -> None:
    from safetensors.torch import load_file, save_file
    t = load_file(str(folder / "sae_weights.safetensors"))
    t["W_dec"][0, 0] = float("nan")
    save_file(t, str(folder / "sae_weights.safetensors"))


def _wrong_tensors() -> dict:
    import torch
    return {"model.W_enc": torch.zeros(3, 3), "tokens_since_fired": torch.zeros(16, dtype=torch.int64)}


def _archive(name: str) -> Callable[[World], None]:
    def setup(x: World) -> None:
        from backend.store.label_store import LabelStore
        LabelStore(x.run).rename_dictionary(name, f"{name}@old", None, "test")
    return setup


# --------------------------------------------------------------------------- running a case


def run_inproc(argv: list[str], x: World) -> tuple[int, str]:
    """backend.cli.main in this process: (exit status, stdout + stderr)."""
    import contextlib
    import io

    from backend.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([x.fmt(a) for a in argv])
        except SystemExit as e:  # argparse
            code = int(e.code or 0)
    return code, out.getvalue() + err.getvalue()


def run_process(argv: list[str], x: World, file_limit_kib: int | None = None) -> tuple[int, str]:
    """`python -m backend` in a real process (under `ulimit -f` when given), 120 s at most."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "backend", *[x.fmt(a) for a in argv]]
    if file_limit_kib is not None:
        cmd = ["bash", "-c", f"ulimit -f {file_limit_kib} && exec {shlex.join(cmd)}"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    return res.returncode, res.stdout + res.stderr


def run_call(call: tuple[str, dict], x: World) -> tuple[int, str]:
    from backend.store import query

    name, kw = call
    try:
        getattr(query, name)(str(x.run), **kw)
    except UserError as e:
        return 2, f"error: {e}"
    return 0, ""


def run_case(case: Case, x: World) -> tuple[int, str]:
    if case.call is not None:
        return run_call(case.call, x)
    if case.process == "subprocess":
        return run_process(case.argv, x)
    if case.process.startswith("ulimit:"):
        return run_process(case.argv, x, int(case.process.split(":")[1]))
    return run_inproc(case.argv, x)


def assert_changes_allowed(before: dict, after: dict, allowed: tuple[str, ...]) -> None:
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    bad = sorted(k for k in changed if not any(fnmatch.fnmatch(k, g) for g in allowed))
    assert bad == [], f"changed, appeared or vanished: {bad}"


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_hostile(case: Case, template, tmp_path, tiny_model_dir, tiny_corpus_dir):
    if case.skip:
        pytest.skip(case.skip)
    w = tmp_path / "w"
    shutil.copytree(template, w)
    x = World(w, tiny_model_dir, tiny_corpus_dir)
    try:
        if case.setup:
            case.setup(x)
        before = checksums(w)
        code, text = run_case(case, x)
    finally:
        for p in (w / "locked", w / "runs" / "tiny" / "dictionaries"):
            if p.exists():
                p.chmod(0o755)
    if os.environ.get("HOSTILE_LOG"):  # a record of every case's message, for reviewing the catalogue
        with open(os.environ["HOSTILE_LOG"], "a") as fh:
            fh.write(f"{case.id}\t{code}\t{[l for l in text.splitlines() if l.startswith(('error:', 'note:', 'warning:'))]}\n")
    assert "Traceback" not in text, text
    assert code == case.code, text
    if case.code:
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, text
        assert case.msg in errors[0], errors[0]
    else:
        assert case.msg in text, text
    assert_changes_allowed(before, checksums(w), case.changes)
    if case.check:
        case.check(x, before, text)


def test_catalogue_size():
    assert len(CASES) > 60 and len({c.id for c in CASES}) == len(CASES)


# --------------------------------------------------------------------------- the mechanisms behind the catalogue


def test_payload_is_real_and_resume_refuses_it(tmp_path, template):
    """The crafted pickle does create a file when unpickled the unsafe way; the trainer never does that."""
    import torch

    from backend.training.trainer import TrainConfig, Trainer

    target = tmp_path / "made-by-unpickling"
    run = tmp_path / "run"
    shutil.copytree(template / "runs" / "tiny", run)
    partial = run / "dictionaries" / "c.partial"
    partial.mkdir()
    crafted_checkpoint(partial / "checkpoint.pt", target)
    torch.load(partial / "checkpoint.pt", weights_only=False)  # what the old trainer ran
    assert target.exists()
    target.unlink()
    tr = Trainer(run, TrainConfig(d_sae=16, batch_size=256, epochs=1), "c", device="cpu")
    with pytest.raises(UserError, match="refused to load checkpoint"):
        tr.resume()
    assert not target.exists()


def test_legacy_plain_checkpoint_still_resumes(tmp_path, template):
    """A checkpoint.pt of plain tensors and numbers (what older versions wrote) loads with weights_only=True."""
    import torch

    from backend.training.trainer import TrainConfig, Trainer

    run = tmp_path / "run"
    shutil.copytree(template / "runs" / "tiny", run)
    cfg = TrainConfig(d_sae=16, batch_size=256, epochs=2, checkpoint_every_s=0)
    tr = Trainer(run, cfg, "c", device="cpu")
    tr.init_from_data()
    for x in tr.store.iter_batches(256, seed=0):
        tr.step(x)
        break
    tr.partial_dir.mkdir(parents=True)
    torch.save({"cfg": cfg.to_dict(), "d_sae": 16, "step": tr.step_i, "scale": tr.scale,
                "model": tr.dictionary.state_dict(), "optimizer": tr.optimizer.state_dict(),
                "tokens_since_fired": tr.tokens_since_fired, "train_seconds": 1.0, "n_resampled": 0},
               tr.partial_dir / "checkpoint.pt")
    again = Trainer(run, cfg, "c", device="cpu")
    assert again.resume() and again.step_i == 1
    assert torch.equal(again.dictionary.W_enc, tr.dictionary.W_enc)
    assert torch.equal(again.optimizer.state_dict()["state"][0]["exp_avg"], tr.optimizer.state_dict()["state"][0]["exp_avg"])


def test_diverging_loss_stops_before_the_update(tmp_path, template, monkeypatch):
    import torch

    from backend.training.trainer import TrainConfig, Trainer

    run = tmp_path / "run"
    shutil.copytree(template / "runs" / "tiny", run)
    tr = Trainer(run, TrainConfig(d_sae=16, batch_size=256, epochs=1), "c", device="cpu")
    tr.init_from_data()
    before = tr.dictionary.W_enc.detach().clone()
    real = tr.dictionary.loss_and_backward
    monkeypatch.setattr(tr.dictionary, "loss_and_backward",
                        lambda x, c: ({**real(x, c)[0], "loss": float("nan")}, torch.zeros(16, dtype=torch.int64)))
    x = next(iter(tr.store.iter_batches(256, seed=0)))
    with pytest.raises(UserError, match="diverged: the loss is nan at step 0"):
        tr.step(x)
    assert torch.equal(tr.dictionary.W_enc, before) and tr.step_i == 0


def test_non_finite_weights_are_never_saved(tmp_path):
    import torch

    from backend.dictionaries import KINDS
    from backend.dictionaries.saelens_io import save_dictionary

    d = KINDS["relu-l1"]({"d_in": 8, "d_sae": 4})
    with torch.no_grad():
        d.b_dec[3] = float("inf")
    with pytest.raises(UserError, match=r"non-finite weights \(b_dec\)"):
        save_dictionary(d, tmp_path / "d")
    assert list(tmp_path.iterdir()) == []


def test_a_split_without_rows_fails_instead_of_spinning(tmp_path, template):
    from backend.activations.activation_store import ActivationStore

    store = ActivationStore(template / "runs" / "tiny")
    store.shards = [{**s, "seq_start": s["seq_start"] + 1000} for s in store.shards]  # cover no training sequence
    with pytest.raises(UserError, match="train split .* has no activations"):
        next(store.iter_batches(64))


def test_failed_write_leaves_the_destination_and_no_temp(tmp_path, monkeypatch):
    import errno

    from backend.common.atomic import atomic_path, write_json

    dest = tmp_path / "x.json"
    write_json(dest, {"v": 1})
    with pytest.raises(UserError, match="cannot write .*x.json: No space left on device; it was left as it was"):
        with atomic_path(dest) as tmp:
            tmp.write_text("partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert json.loads(dest.read_text()) == {"v": 1} and [p.name for p in tmp_path.iterdir()] == ["x.json"]
    with pytest.raises(ZeroDivisionError):  # anything else is a bug and keeps its type
        with atomic_path(dest):
            1 / 0


def test_unwritable_out_is_found_before_the_model_loads(tmp_path, monkeypatch, tiny_corpus_dir):
    """As root every folder is writable, so the permission is simulated: the check runs first either way."""
    from backend.activations import cache
    from backend.common import names

    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(names.os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode))
    monkeypatch.setattr(cache, "load_model", lambda *a, **k: pytest.fail("the model loaded before --out was checked"))
    with pytest.raises(UserError, match="no permission to write in"):
        cache.cache_activations(cache.CacheConfig(corpus=str(tiny_corpus_dir), tokens=512), locked / "run")


@pytest.mark.parametrize("name,ok", [("relu-l1", True), ("sae-ito-gp", True), ("a b", True), ("x@1", False), ("", False),
                                     ("..", False), ("a/b", False), ("a\\b", False), (".a", False), ("a.partial", False),
                                     (" a", False), ("a\x00b", False), ("n" * 101, False), (7, False)])
def test_dictionary_names(name, ok):
    from backend.common.names import check_dict_name

    if ok:
        assert check_dict_name(name) == name
    else:
        with pytest.raises(UserError):
            check_dict_name(name)
    if name == "x@1":
        assert check_dict_name(name, new=False) == "x@1"  # an archived name may be read


def test_few_bad_bytes_are_replaced_with_a_warning(tmp_path, capsys):
    from backend.corpus.readers import iter_documents

    (tmp_path / "a.txt").write_bytes(("plain text " * 200).encode() + b"\xff caf\xc3\xa9")
    docs = list(iter_documents(str(tmp_path)))
    assert docs[0].text.endswith("\ufffd café")
    assert "1 byte sequence(s) that are not UTF-8" in capsys.readouterr().err


def test_app_shows_a_damaged_store_as_a_message(tmp_path, monkeypatch):
    """Every page that reads the damaged file shows the project's one-line error, not a traceback."""
    from streamlit.testing.v1 import AppTest

    from tests.test_app_pages import APP, FAKE_DICT, FAKE_RUN, make_fake_store

    root = make_fake_store(tmp_path / "data")
    features = root / FAKE_RUN / "dictionaries" / FAKE_DICT / "features.parquet"
    features.write_bytes(features.read_bytes()[:100])
    monkeypatch.setenv("FEATURE_EXPLORER_DATA", str(root))
    for page in ("app_pages/overview.py", "app_pages/features.py", "app_pages/feature.py"):
        at = AppTest.from_file(APP, default_timeout=60).switch_page(page).run()
        assert not at.exception, at.exception
        errors = [e.value for e in at.error]
        assert any(e.startswith(f"cannot read {features}") for e in errors), (page, errors)
        assert not any("The backend failed" in e for e in errors), errors


def test_resume_from_the_new_checkpoint_is_bit_identical(tmp_path, template):
    """safetensors + JSON keep every tensor and number exactly: an interrupted and resumed training ends with the
    same weights, bit for bit, as one that ran through."""
    import torch

    from backend.training.trainer import TrainConfig, Trainer, train_batches

    run = tmp_path / "run"
    shutil.copytree(template / "runs" / "tiny", run)
    cfg = TrainConfig(d_sae=16, batch_size=128, epochs=3, checkpoint_every_s=0, threads=1)
    ref = Trainer(run, cfg, "ref", device="cpu")
    ref.fit(progress=False)
    tr = Trainer(run, cfg, "c", device="cpu")
    tr.init_from_data()
    for x in train_batches(tr.store, cfg, 0, tr.steps_per_epoch, tr.total_steps // 2, tr.device):
        tr.step(x)
    tr.checkpoint()
    again = Trainer(run, cfg, "c", device="cpu")
    again.fit(resume=True, progress=False)
    assert again.step_i == ref.step_i
    for k, v in ref.dictionary.state_dict().items():
        assert torch.equal(again.dictionary.state_dict()[k], v), k
