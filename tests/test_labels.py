"""The label store (backend/labels.py), its export/import (backend/labels_io.py) and the query layer's use of it.

The durability tests use real processes: writers in subprocesses saving at once with this process,
and a writer killed with SIGKILL while it saves, after which every version it had confirmed must be there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from backend.common.errors import UserError
from backend.store.label_store import LabelStore, cohen_kappa, human_precision_recall

REPO = Path(__file__).resolve().parent.parent
D = "relu-l1"


@pytest.fixture
def run(tmp_path) -> Path:
    r = tmp_path / "run"
    r.mkdir()
    return r


def as_run(folder: Path, dicts=(D, "other"), d_sae: int = 16) -> Path:
    """Make `folder` a run (run.json, tokens.parquet) holding dictionaries `dicts` (cfg.json only): what
    `labels import` needs, since it refuses a folder that is not a run and a dictionary the run lacks."""
    from tests.fake_run import write_dictionary, write_run

    write_run(folder, np.full((2, 4), 1, np.int32), ["a", "b"], d_in=8)
    for name in dicts:
        write_dictionary(folder, name, 8, d_sae)
    return folder


def _verdicts(ls: LabelStore, feature: int, annotator: str, fits: list[int], activating: list[int], version: int = 1):
    items = [{"token_index": 100 + i, "activating": bool(a), "fits": bool(f)} for i, (f, a) in enumerate(zip(fits, activating))]
    return ls.add_verdicts(D, feature, annotator, items, label_version=version)


# ------------------------------------------------------------------ versions, restore, scores


def test_versions_append_and_current(run):
    ls = LabelStore(run)
    assert ls.current(D).empty and not ls.exists()  # nothing is created by reading
    assert ls.save(D, 5, "open paren", "ada") == 1
    assert ls.save(D, 5, "open parenthesis", "bob", notes="more precise") == 2
    assert ls.save(D, 7, "digits", "ada", source="auto-llm", score=0.61) == 1
    assert ls.save("other", 5, "elsewhere", "ada") == 1  # versions count per dictionary and feature
    assert ls.save_many([{"dict_name": D, "feature": 5, "text": "paren (", "author": "bot", "source": "auto-deterministic"},
                         {"dict_name": D, "feature": 5, "text": "paren ( again", "author": "bot"},
                         {"dict_name": D, "feature": 9, "text": "x", "author": "bot"}]) == 3
    cur = ls.current(D)
    assert cur["feature"].tolist() == [5, 7, 9]
    assert cur["version"].tolist() == [4, 1, 1]
    assert cur.set_index("feature").loc[5, "text"] == "paren ( again"
    assert cur.set_index("feature").loc[7, "score"] == pytest.approx(0.61)
    assert ls.current(D, features=[7])["text"].tolist() == ["digits"]
    hist = ls.history(D, 5)
    assert hist["version"].tolist() == [4, 3, 2, 1]  # newest first, nothing overwritten
    assert hist["text"].tolist() == ["paren ( again", "paren (", "open parenthesis", "open paren"]
    assert hist["author"].tolist() == ["bot", "bot", "bob", "ada"]
    assert hist["source"].tolist() == ["human", "auto-deterministic", "human", "human"]
    assert hist["notes"].iloc[2] == "more precise"
    assert (hist["created_at"].diff().dropna() <= pd.Timedelta(0)).all()


def test_restore_appends_a_copy(run):
    ls = LabelStore(run)
    ls.save(D, 3, "first", "ada", source="auto-llm", score=0.5, notes="from the LLM")
    ls.save(D, 3, "second", "bob")
    assert ls.restore(D, 3, 1, "cy") == 3
    h = ls.history(D, 3)
    assert h["text"].tolist() == ["first", "second", "first"]
    top = h.iloc[0]
    assert (top["author"], top["source"], top["score"]) == ("cy", "auto-llm", 0.5)
    assert top["notes"] == "restored v1; from the LLM"
    with pytest.raises(UserError, match="no label version 9"):
        ls.restore(D, 3, 9, "cy")
    assert len(ls.history(D, 3)) == 3  # the failed restore wrote nothing


@pytest.mark.parametrize("kwargs, msg", [
    ({"source": "robot"}, "source must be one of"),
    ({"author": "  "}, "author name is empty"),
    ({"feature": -1}, "feature must be >= 0"),
    ({"feature": 1.5}, "feature must be an integer"),
    ({"text": 3}, "label text must be text"),
    ({"text": "x" * 3000}, "longer than"),
    ({"score": float("inf")}, "score must be finite"),
])
def test_bad_input_is_a_user_error(run, kwargs, msg):
    args = {"dict_name": D, "feature": 1, "text": "ok", "author": "ada", **kwargs}
    with pytest.raises(UserError, match=msg):
        LabelStore(run).save(**args)


def test_missing_run_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        LabelStore(tmp_path / "nope").save(D, 1, "x", "ada")


def test_label_text_is_stored_verbatim(run):
    """Parameters, not string building: quotes and SQL in a label are just text."""
    ls = LabelStore(run)
    nasty = "'); DROP TABLE labels; -- <script>alert(1)</script>"
    ls.save(D, 1, nasty, "o'brien")
    assert ls.current(D).iloc[0][["text", "author"]].tolist() == [nasty, "o'brien"]


def test_scores_latest_per_scorer_and_version_score(run):
    ls = LabelStore(run)
    ls.save(D, 2, "a", "ada")
    ls.save(D, 2, "b", "ada")
    ls.add_scores([{"dict_name": D, "feature": 2, "version": 1, "scorer": "detection", "precision": 0.5, "recall": 0.5,
                    "f1": 0.5, "n_pos": 10, "n_neg": 10}])
    ls.add_scores([{"dict_name": D, "feature": 2, "version": 2, "scorer": "detection", "precision": 0.9, "recall": 0.7,
                    "f1": 0.7875, "n_pos": 10, "n_neg": 10},
                   {"dict_name": D, "feature": 2, "version": 2, "scorer": "embedding", "precision": 0.6, "recall": 0.6,
                    "f1": 0.6, "n_pos": 10, "n_neg": 10}])
    s = ls.scores(D)
    assert s[["scorer", "version", "f1"]].values.tolist() == [["detection", 2, 0.7875], ["embedding", 2, 0.6]]
    # a version's score: its own when saved with one, else the latest F1 recorded for it
    h = ls.history(D, 2).set_index("version")["score"]
    assert h[1] == 0.5 and h[2] == 0.6  # written together: the scorer name breaks the tie ("embedding" > "detection")
    ls.add_scores([{"dict_name": D, "feature": 2, "version": 2, "scorer": "detection", "f1": 0.3}])
    assert ls.history(D, 2).set_index("version")["score"][2] == 0.3  # a later score wins


# ------------------------------------------------------------------ validation


def test_cohen_kappa_hand_computed():
    # A says yes to 6 of 10, B to 5; they agree on items 1-4 (yes) and 8-10 (no): p_o = 0.7,
    # p_e = 0.6*0.5 + 0.4*0.5 = 0.5, kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4.
    a = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    b = [1, 1, 1, 1, 0, 0, 1, 0, 0, 0]
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    from sklearn.metrics import cohen_kappa_score

    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    assert cohen_kappa([1, 0, 1], [1, 0, 1]) == pytest.approx(1.0)
    assert cohen_kappa([1, 0], [0, 1]) == pytest.approx(-1.0)
    assert np.isnan(cohen_kappa([1, 1], [1, 1])) and np.isnan(cohen_kappa([], []))


def test_store_kappa_uses_shared_items_only(run):
    ls = LabelStore(run)
    ls.save(D, 4, "label", "ada")
    _verdicts(ls, 4, "ann", fits=[1, 1, 1, 1, 1, 1, 0, 0, 0, 0], activating=[1] * 5 + [0] * 5)
    bob = [{"token_index": 100 + i, "activating": i < 5, "fits": f} for i, f in enumerate([1, 1, 1, 1, 0, 0, 1, 0, 0, 0])]
    bob += [{"token_index": 999, "activating": True, "fits": False}]  # an item ann never saw: not shared
    ls.add_verdicts(D, 4, "bob", bob, label_version=1)
    k = ls.cohen_kappa("ann", "bob", dict_name=D)
    assert k["n"] == 10 and k["agreement"] == pytest.approx(0.7) and k["kappa"] == pytest.approx(0.4)
    # a later verdict on the same item replaces the annotator's earlier one
    ls.add_verdicts(D, 4, "bob", [{"token_index": 104, "activating": True, "fits": True}], label_version=1)
    assert ls.cohen_kappa("ann", "bob")["agreement"] == pytest.approx(0.8)
    assert ls.annotators(D) == ["ann", "bob"]


def test_human_precision_recall_and_status(run):
    ls = LabelStore(run)
    ls.save(D, 1, "one", "ada")
    ls.save(D, 2, "two", "ada")
    # feature 1, ann: 5 activating, 5 silent; says fits on 4 activating + 1 silent -> P 4/5, R 4/5
    _verdicts(ls, 1, "ann", fits=[1, 1, 1, 1, 0, 1, 0, 0, 0, 0], activating=[1] * 5 + [0] * 5)
    # bob agrees on 9 of 10 -> agreement 0.9 >= 0.8: agreed; pooled: tp 4+5, fp 1+1, fn 1+0
    _verdicts(ls, 1, "bob", fits=[1, 1, 1, 1, 1, 1, 0, 0, 0, 0], activating=[1] * 5 + [0] * 5)
    # feature 2: ann and bob disagree on half -> disputed
    _verdicts(ls, 2, "ann", fits=[1, 1, 0, 0], activating=[1, 1, 0, 0])
    _verdicts(ls, 2, "bob", fits=[0, 1, 1, 0], activating=[1, 1, 0, 0])
    h = ls.human_scores(D).set_index("feature")
    assert (h.loc[1, "tp"], h.loc[1, "fp"], h.loc[1, "fn"], h.loc[1, "tn"]) == (9, 2, 1, 8)
    assert h.loc[1, "precision"] == pytest.approx(9 / 11) and h.loc[1, "recall"] == pytest.approx(9 / 10)
    one = human_precision_recall(ls.verdicts(D).query("annotator == 'ann' and feature == 1")).iloc[0]
    assert one["precision"] == pytest.approx(0.8) and one["recall"] == pytest.approx(0.8)
    st = ls.validation_status(D).set_index("feature")
    assert st.loc[1, "status"] == "agreed" and st.loc[1, "agreement"] == pytest.approx(0.9)
    assert st.loc[2, "status"] == "disputed" and st.loc[2, "agreement"] == pytest.approx(0.5)
    ls.save(D, 3, "three", "ada")
    _verdicts(ls, 3, "ann", fits=[1, 0], activating=[1, 0])
    p = ls.progress(D)
    assert (p["validated"], p["agreed"], p["disputed"], p["single"], p["annotators"]) == (3, 1, 1, 1, 2)
    assert p["verdicts"] == 10 + 10 + 4 + 4 + 2


def test_validation_queue_deals_unvalidated_first(run):
    ls = LabelStore(run)
    _verdicts(ls, 1, "ann", fits=[1], activating=[1])  # judged by ann only
    _verdicts(ls, 2, "bob", fits=[1], activating=[1])  # judged by bob only
    q = ls.validation_queue(D, "bob", [1, 2, 3, 4, 5])
    assert sorted(q[:3]) == [3, 4, 5] and q[3:] == [1]  # unvalidated, then ann's (shared items), never bob's own
    assert ls.validation_queue(D, "bob", [1, 2, 3, 4, 5]) == q  # stable for the same annotator
    # with current versions: bob judged feature 2's current version 1 (left out); ann judged version 1 of
    # feature 1, which is now at version 2, so feature 1 counts as never validated again
    q = ls.validation_queue(D, "bob", [1, 2, 3], versions={1: 2, 2: 1})
    assert sorted(q) == [1, 3]
    assert ls.validation_queue(D, "bob", [1, 2, 3], versions={1: 1, 2: 1})[-1] == 1  # unchanged: others' last


def test_proposals_are_kept_beside_verdicts(run):
    ls = LabelStore(run)
    ls.save(D, 6, "vague", "ada")
    ls.add_verdicts(D, 6, "ann", [{"token_index": 1, "activating": True, "fits": False}], proposal="  sharper label ")
    p = ls.proposals(D, 6)
    assert p[["label_version", "annotator", "text"]].values.tolist() == [[1, "ann", "sharper label"]]
    assert ls.current(D)["text"].tolist() == ["vague"]  # a proposal does not replace the label


# ------------------------------------------------------------------ export / import


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_export_import_round_trip(run, tmp_path, fmt):
    from backend.store import label_io as labels_io
    ls = LabelStore(run)
    ls.save(D, 1, 'comma, "quote" and\nnewline', "ada", notes="n1")
    ls.save(D, 1, "second", "bob", source="auto-llm", score=0.42)
    ls.save(D, 2, "", "ada")  # an emptied label is a version too
    ls.save("other", 0, "NaN", "cy")  # text that looks like a missing value stays text
    _verdicts(ls, 1, "ann", fits=[1, 0, 1], activating=[1, 0, 0], version=2)
    out = tmp_path / f"labels.{fmt}"
    assert labels_io.export(run, out, fmt=fmt) == 4
    vout = tmp_path / f"verdicts.{fmt}"
    assert labels_io.export(run, vout, fmt=fmt, what="verdicts") == 3
    rows = labels_io.label_rows(run).set_index(["dict_name", "feature", "version"])
    assert rows.loc[(D, 1, 2), "human_precision"] == pytest.approx(0.5) and rows.loc[(D, 1, 2), "n_verdicts"] == 3

    other = as_run(tmp_path / "run2")
    as_run(run)
    LabelStore(other).save(D, 1, "already here", "zed")
    assert labels_io.import_file(other, out) == ("labels", 4, 4)
    assert labels_io.import_file(other, vout) == ("verdicts", 3, 3)
    assert labels_io.import_file(other, out)[2] == 0  # re-import adds nothing
    assert labels_io.import_file(other, vout)[2] == 0
    assert labels_io.import_file(run, out)[2] == 0  # nor into the store it came from
    h = LabelStore(other).history(D, 1)  # imported versions come after the existing one, in order
    assert h["text"].tolist()[::-1] == ["already here", 'comma, "quote" and\nnewline', "second"]
    assert h["author"].tolist()[::-1] == ["zed", "ada", "bob"]
    src = ls.all_versions().drop(columns=["version"])
    dst = LabelStore(other).all_versions().query("author != 'zed'").drop(columns=["version"])
    key = ["dict_name", "feature", "created_at"]
    pd.testing.assert_frame_equal(src.sort_values(key).reset_index(drop=True), dst.sort_values(key).reset_index(drop=True),
                                  check_dtype=False)
    v1, v2 = ls.verdicts(), LabelStore(other).verdicts()
    pd.testing.assert_frame_equal(v1.reset_index(drop=True), v2.reset_index(drop=True), check_dtype=False)


def test_import_bad_files(run, tmp_path):
    from backend.store import label_io as labels_io
    as_run(run)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="cannot read"):
        labels_io.import_file(run, bad)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="lack dict_name, feature, text, author"):
        labels_io.import_file(run, wrong)
    badsrc = tmp_path / "src.csv"
    badsrc.write_text(f"dict_name,feature,text,author,source\n{D},1,x,ada,robot\n")
    with pytest.raises(UserError, match="row 1: label source"):
        labels_io.import_file(run, badsrc)
    with pytest.raises(UserError, match="expected a .csv or .json"):
        labels_io.import_file(run, __file__)
    assert not LabelStore(run).exists()  # nothing half-imported


def test_cli_export_import(run, tmp_path, capsys):
    from backend.cli import main

    LabelStore(run).save(D, 1, "x", "ada")
    out = tmp_path / "l.json"
    assert main(["labels", "export", "--run", str(run), "--dict", D, "--format", "json", "--out", str(out)]) == 0
    assert json.loads(out.read_text())[0]["text"] == "x"
    other = as_run(tmp_path / "other")
    assert main(["labels", "import", "--run", str(other), "--file", str(out)]) == 0
    assert "imported 1 new labels rows of 1" in capsys.readouterr().out
    assert LabelStore(other).current(D)["text"].tolist() == ["x"]
    bad = tmp_path / "bad.csv"
    bad.write_text("nonsense\n")
    capsys.readouterr()
    assert main(["labels", "import", "--run", str(run), "--file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ the query layer reads the current labels


@pytest.fixture(scope="module")
def contract_store(tmp_path_factory) -> Path:
    from tests.test_app_pages import make_fake_store

    return make_fake_store(tmp_path_factory.mktemp("labels_contract"))


@pytest.fixture
def fake_run(contract_store, tmp_path) -> Path:
    """A private copy of the fake contract store (labels written here must not leak into other tests)."""
    import shutil

    from tests.test_app_pages import FAKE_RUN

    return Path(shutil.copytree(contract_store / FAKE_RUN, tmp_path / "data" / FAKE_RUN))


def test_store_lists_current_labels(fake_run):
    from backend.store import query as store
    from tests.test_app_pages import SCRIPT_FEATURE

    def labelled():
        return set(store.list_features(fake_run, D, labelled=True, limit=100)["feature"])

    assert labelled() == {SCRIPT_FEATURE, 3}  # features.parquet's labels before any edit
    ls = LabelStore(fake_run)
    ls.save(D, 10, "closing 100% brackets", "ada")
    ls.save(D, 3, "", "ada")  # an emptied label: no longer labelled, the parquet label is not resurrected
    assert labelled() == {SCRIPT_FEATURE, 10}
    page = store.list_features(fake_run, D, limit=100).set_index("feature")["label"]  # unfiltered: looked up per row
    assert (page[10], page[3], page[SCRIPT_FEATURE], page[11]) == ("closing 100% brackets", "", "html tags <b>", "")
    assert store.count_features(fake_run, D, labelled=True) == 2
    assert store.count_features(fake_run, D, labelled=False) == 48 - 2
    q = store.list_features(fake_run, D, label_query="100%", limit=100)
    assert q["feature"].tolist() == [10] and q["label"].tolist() == ["closing 100% brackets"]
    assert store.list_features(fake_run, D, label_query="math", limit=100).empty
    by_label = store.list_features(fake_run, D, labelled=True, sort="label", limit=100)["label"].tolist()
    assert by_label == sorted(by_label)
    dash = store.feature_dashboard(fake_run, D, 10)
    assert (dash["label"], dash["label_source"], dash["label_version"]) == ("closing 100% brackets", "human", 1)
    assert store.feature_dashboard(fake_run, D, SCRIPT_FEATURE)["label_version"] == 0  # parquet label
    ls.save(D, 10, "closing brackets", "bob", source="auto-llm")  # the per-process cache sees the new version
    assert store.list_features(fake_run, D, label_query="closing", limit=100)["label"].tolist() == ["closing brackets"]
    assert store.feature_dashboard(fake_run, D, 10)["label_source"] == "auto-llm"


# ------------------------------------------------------------------ durability with real processes

WRITER = """
import sys, time
from pathlib import Path
from backend.store.label_store import LabelStore
run, name, n, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
while not start.exists():
    time.sleep(0.005)
ls = LabelStore(run)
for i in range(n):
    v = ls.save("relu-l1", 0, f"{name}-{i}", name, notes=f"feature 0, {name}")
    ls.save_many([{"dict_name": "relu-l1", "feature": 1 + i, "text": f"{name}-{i}", "author": name}])
    print(v, flush=True)
"""


def test_concurrent_writers_lose_nothing(run, tmp_path):
    """3 writer processes and two threads of this one (two app sessions) save at once: every one of the 4*N
    versions of the shared feature is there, numbered 1..4N with no gap or duplicate, each under the version
    its writer was told, and each writer's save_many rows too."""
    n, k = 6, 3
    start = tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(run), f"p{j}", str(n), str(start)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for j in range(k)]
    time.sleep(0.5)  # let them import and wait on the start file
    start.touch()
    ls = LabelStore(run)
    told: dict[str, list[int]] = {"s0": [], "s1": []}  # two app sessions: threads of this process

    def session(name: str) -> None:
        for i in range(n // 2):
            told[name].append(ls.save(D, 0, f"main-{name}-{i}", name))

    threads = [threading.Thread(target=session, args=(s,)) for s in told]
    for t in threads:
        t.start()
    reads = [len(ls.current(D)) for _ in range(3)]  # a reader among the writers
    for t in threads:
        t.join(120)
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    h = ls.history(D, 0)
    assert sorted(h["version"]) == list(range(1, (k + 1) * n + 1))
    expected = {f"main-{s}-{i}" for s in told for i in range(n // 2)} | {f"p{j}-{i}" for j in range(k) for i in range(n)}
    assert set(h["text"]) == expected
    for j, (out, _) in enumerate(outs):  # the version each writer was told is the one holding its text
        assert [h.set_index("version").loc[int(v), "text"] for v in out.split()] == [f"p{j}-{i}" for i in range(n)]
    for name, versions in told.items():
        assert [h.set_index("version").loc[v, "text"] for v in versions] == [f"main-{name}-{i}" for i in range(n // 2)]
    assert all(len(ls.history(D, f)) == k for f in range(1, n + 1))
    assert reads == sorted(reads)  # the reader never failed and never saw labels vanish


KILLED = """
import sys
from backend.store.label_store import LabelStore
ls = LabelStore(sys.argv[1])
i = 0
while True:
    v = ls.save("relu-l1", 7, f"{sys.argv[2]}-{i}", "writer")
    print(f"{v} {sys.argv[2]}-{i}", flush=True)  # printed only after save() returned: the UI's confirmation
    i += 1
"""


def test_sigkill_mid_write_loses_no_confirmed_version(run):
    """A writer saving in a loop is killed with SIGKILL at random moments (mostly inside a save);
    every version it had confirmed is in the file, which opens and takes writes afterwards."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    rng = np.random.default_rng(0)
    confirmed: dict[int, str] = {}
    for round_ in range(3):
        p = subprocess.Popen([sys.executable, "-c", KILLED, str(run), f"r{round_}"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        got = 0
        while got < 6:  # some confirmed saves, then a kill at a random point of the next ones
            line = p.stdout.readline()
            assert line, p.stderr.read()
            v, text = line.split()
            confirmed[int(v)] = text
            got += 1
        time.sleep(float(rng.uniform(0, 0.06)))
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        for line in p.stdout.read().splitlines():  # confirmations already in the pipe when it died
            v, text = line.split()
            confirmed[int(v)] = text
        assert p.returncode == -signal.SIGKILL
        h = LabelStore(run).history(D, 7).set_index("version")["text"]
        assert all(h.get(v) == t for v, t in confirmed.items()), (confirmed, h.to_dict())
    ls = LabelStore(run)
    v = ls.save(D, 7, "after the kills", "me")
    assert v == max(confirmed) + 1 or v > max(confirmed)  # at most the unconfirmed save of the last round landed
    assert ls.current(D)["text"].tolist() == ["after the kills"]
