"""The demo build: steps in order, a status file the app can poll, one build at a time, resume, labels from the start.

A tiny demo (tiny random Llama, tiny corpus, topk + relu-l1) goes through the real `run_demo`; the estimate of
time left and the lock are checked with planted numbers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from backend.common import build_status as bs
from backend.common.errors import UserError
from backend.common.layout import FEATURES, dict_dir


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ------------------------------------------------------------------ estimate of the time left


def test_estimate_rescales_priors_by_measured_speed():
    steps = [bs.Step("a", "s", "a", prior=10, state="done", seconds=20),  # this machine runs at half the prior speed
             bs.Step("b", "s", "b", prior=30, state="running", started=100.0),
             bs.Step("c", "s", "c", prior=60)]
    # b's own bar says 25% after 10 s: 30 s left of b, then c at 60 * 2 = 120 s
    progress, eta = bs.estimate(steps, now=110.0, fraction=0.25)
    assert eta == pytest.approx(30 + 120)
    assert progress == pytest.approx((10 + 30 * 0.25) / 100)
    # too early to trust b's own rate (5%): its prior at the measured speed, 60 s, less the 10 s spent
    progress, eta = bs.estimate(steps, now=110.0, fraction=0.05)
    assert eta == pytest.approx(50 + 120)
    # no bar at all: elapsed / expected stands in for the fraction done
    progress, eta = bs.estimate(steps, now=130.0, fraction=None)
    assert progress == pytest.approx((10 + 30 * 0.5) / 100) and eta == pytest.approx(30 + 120)
    # skipped steps count as done work and cost nothing; a failure has no estimate
    steps[0].state = "skipped"
    assert bs.estimate(steps, now=110.0, fraction=0.25)[1] == pytest.approx(30 + 60)  # no measured speed: priors
    steps[1].state = "failed"
    assert bs.estimate(steps, now=110.0, fraction=None)[1] is None


# ------------------------------------------------------------------ the lock and the status file


def test_lock_one_build_at_a_time_and_stale_lock_taken_over(tmp_path):
    out = tmp_path / "demo"
    with bs.BuildLock(out):
        assert bs.lock_holder(out) == os.getpid()
        other = subprocess.run([sys.executable, "-c", "from backend.common.build_status import BuildLock; import sys\n"
                                f"BuildLock({str(out)!r}).acquire()"], capture_output=True, text=True,
                               env=dict(os.environ, PYTHONPATH=os.getcwd()))
        assert other.returncode != 0 and "is already running (pid" in other.stderr
    assert bs.lock_holder(out) is None and not (bs.build_dir(out) / bs.LOCK).exists()
    (bs.build_dir(out) / bs.LOCK).write_text(f"{_dead_pid()}\n")  # a killed build's lock
    assert bs.lock_holder(out) is None
    with bs.BuildLock(out):
        assert bs.lock_holder(out) == os.getpid()


def test_reporter_writes_status_and_records_failure(tmp_path):
    out = tmp_path / "demo"
    steps = [bs.Step("cache", "cache", "cache", prior=10), bs.Step("train x", "dictionary", "train", "x", prior=10)]
    with pytest.raises(RuntimeError):
        with bs.BuildReporter(out, steps, log="L") as rep:
            rep.start("cache")
            st = bs.read_status(out)
            assert st["state"] == "running" and st["stage"] == "cache" and st["alive"] and st["log"] == "L"
            rep.finish("cache")
            rep.ready("x")
            rep.start("train x")
            raise RuntimeError("disk full")
    st = bs.read_status(out)
    assert st["state"] == "failed" and st["error"] == "disk full" and st["ready"] == ["x"]
    assert [s["state"] for s in st["steps"]] == ["done", "failed"]
    # a running build whose process is gone reads "stopped"
    st_raw = {**st, "state": "running", "pid": _dead_pid()}
    bs.write_json(bs.status_path(out), st_raw)
    assert bs.read_status(out)["state"] == "stopped"
    assert bs.find_builds(tmp_path) == [out]


# ------------------------------------------------------------------ the real demo build on the tiny model


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory, tiny_model_dir, tiny_corpus_dir):
    from backend.pipeline import run_demo

    out = tmp_path_factory.mktemp("demo_root") / "demo"
    kw = dict(kinds="topk,relu-l1", d_sae=64, device="cpu", score_sample=20,
              cache_overrides={"model": str(tiny_model_dir), "corpus": str(tiny_corpus_dir), "hook": "blocks.1.hook_resid_post",
                               "tokens": 48 * 32, "ctx_len": 32, "shard_seqs": 16, "batch_size": 8, "heldout_frac": 0.125},
              train_overrides={"batch_size": 256, "epochs": 10})
    t0 = time.time()
    run_demo(out, **kw)
    return out, kw, time.time() - t0


def test_demo_builds_topk_first_with_labels_and_scores(tiny_demo):
    from backend.labels.score import load_summary
    from backend.store.label_store import LabelStore

    out, _, _ = tiny_demo
    st = bs.read_status(out)
    assert st["state"] == "done" and st["progress"] == 1.0 and st["eta_seconds"] == 0
    assert st["ready"] == ["topk", "relu-l1"] and st["labelled"] == ["topk", "relu-l1"]
    keys = [s["key"] for s in st["steps"]]
    assert keys[:3] == ["corpus", "model", "cache"] and keys[-1] == "compare"
    assert keys.index("score topk") < keys.index("train relu-l1")  # topk finished, labels included, before the next
    assert [s["name"] for s in st["steps"] if s["dictionary"] == "topk"] == ["train", "metrics", "analyze", "explain",
                                                                              "index", "score"]
    assert all(s["state"] == "done" for s in st["steps"] if s["key"] != "corpus")  # corpus: not the default one
    for k in ("topk", "relu-l1"):
        assert (dict_dir(out, k) / FEATURES).is_file()
        labels = LabelStore(out).current(k)
        assert len(labels) > 0 and set(labels["source"]) == {"auto-deterministic"}
        s = load_summary(out, k)["scorers"]["lexical"]
        assert s["sampled"] and 0 < s["n_labels"] <= 20
        assert (dict_dir(out, k) / "label_embeddings.npz").is_file()
    assert not (bs.build_dir(out) / bs.LOCK).exists()  # released


def test_demo_resumes_skipping_what_exists(tiny_demo):
    """A second build (a killed one restarted, or more kinds) skips every step whose output exists."""
    from backend.pipeline import run_demo
    from backend.store.label_store import LabelStore

    out, kw, first = tiny_demo
    (dict_dir(out, "relu-l1") / FEATURES).unlink()  # as if killed during relu-l1's analysis
    versions = len(LabelStore(out).all_versions("relu-l1"))
    t0 = time.time()
    run_demo(out, **kw)
    st = bs.read_status(out)
    states = {s["key"]: s["state"] for s in st["steps"]}
    assert states["analyze relu-l1"] == "done" and states["model"] == "done"  # analysis needs the model
    assert states["cache"] == states["train topk"] == states["train relu-l1"] == states["explain relu-l1"] == "skipped"
    assert len(LabelStore(out).all_versions("relu-l1")) == versions  # labels not written twice
    assert time.time() - t0 < first


def test_demo_refuses_a_second_build_and_background_attaches(tiny_demo, tmp_path):
    from backend.pipeline import run_demo, start_demo_background

    out, kw, _ = tiny_demo
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (bs.build_dir(out) / bs.LOCK).write_text(f"{holder.pid}\n")
        (dict_dir(out, "topk") / FEATURES).rename(tmp_path / "f.parquet")  # not complete: a build would start
        with pytest.raises(UserError, match=f"already running \\(pid {holder.pid}\\)"):
            run_demo(out, **kw)
        assert start_demo_background(out, []) == ("running", holder.pid)  # attaches: starts nothing
    finally:
        holder.kill()
        holder.wait()
        (tmp_path / "f.parquet").rename(dict_dir(out, "topk") / FEATURES)
        (bs.build_dir(out) / bs.LOCK).unlink(missing_ok=True)


def test_demo_cli_background_when_complete_starts_nothing(tiny_demo, capsys):
    from backend.cli import main

    out, _, _ = tiny_demo
    assert main(["demo", "--out", str(out), "--kinds", "topk,relu-l1", "--background"]) == 0
    assert "demo store is ready" in capsys.readouterr().out
    assert bs.lock_holder(out) is None


@pytest.mark.slow
def test_killed_build_resumes_where_it_stopped(tiny_model_dir, tiny_corpus_dir, tmp_path):
    """SIGKILL a real build process once topk is browsable; the status says "stopped", the stale lock is taken
    over, and the next build skips every finished step and completes."""
    import json
    import signal

    from backend.pipeline import run_demo

    out = tmp_path / "demo"
    kw = dict(kinds="topk,relu-l1", d_sae=64, device="cpu", score_sample=20,
              cache_overrides={"model": str(tiny_model_dir), "corpus": str(tiny_corpus_dir), "hook": "blocks.1.hook_resid_post",
                               "tokens": 48 * 32, "ctx_len": 32, "shard_seqs": 16, "batch_size": 8, "heldout_frac": 0.125},
              train_overrides={"batch_size": 256, "epochs": 40})
    code = f"from backend.pipeline import run_demo\nrun_demo({str(out)!r}, **{kw!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=os.getcwd()),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            st = bs.read_status(out)
            if st and "topk" in st["ready"] and st["step"] and "relu-l1" in st["step"]:
                break
            assert proc.poll() is None, "the build ended before it could be killed"
            time.sleep(0.2)
        else:
            pytest.fail("the build never reached relu-l1")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    killed_at = bs.read_status(out)
    assert killed_at["state"] == "stopped" and not killed_at["alive"] and killed_at["ready"] == ["topk"]
    assert (bs.build_dir(out) / bs.LOCK).exists() and bs.lock_holder(out) is None  # stale
    run_demo(out, **kw)
    st = json.loads(bs.status_path(out).read_text())
    states = {s["key"]: s["state"] for s in st["steps"]}
    assert st["state"] == "done" and st["ready"] == ["topk", "relu-l1"]
    assert {states[f"{n} topk"] for n in ("train", "metrics", "analyze", "explain", "index", "score")} == {"skipped"}
    assert states["cache"] == "skipped" and states["score relu-l1"] == "done"


def test_demo_keeps_the_recipe_its_figures_were_measured_with(tiny_demo):
    """topk's default lr moved to 5e-3; the demo's topk stays at 1e-3 (pipeline.DEMO_TRAIN), relu-l1 at its default."""
    import json

    from backend.training.trainer import TrainConfig

    out, _, _ = tiny_demo
    lr = {k: json.loads((dict_dir(out, k) / "cfg.json").read_text())["training"]["lr"] for k in ("topk", "relu-l1")}
    assert lr == {"topk": 1e-3, "relu-l1": 1e-3}
    assert TrainConfig(kind="topk").lr == 5e-3  # what `train --kind topk` uses
