"""Each kind owns its settings (a KindConfig next to it); TrainConfig keeps what they share; cfg.json keeps the
layout it had before the split (the SAELens fields: stores written before still load)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from backend.cli import main
from backend.common.errors import UserError
from backend.dictionaries import KINDS, MLPEncoderDictionary, SparseCodingDictionary
from backend.dictionaries.mlp import MLPConfig
from backend.dictionaries.relu_l1 import ReluL1Config
from backend.dictionaries.sparse_coding import SparseCodingConfig
from backend.dictionaries.topk import BatchTopKConfig, TopKConfig
from backend.training.trainer import TRAINABLE, TrainConfig
from tests.fake_run import make_synthetic_run

SAELENS = {"activation_scale", "apply_b_dec_to_input", "architecture", "d_in", "d_sae", "device", "dtype", "kind",
           "metadata", "normalize_activations", "reshape_activations", "train_flops", "training"}
# cfg.json of each kind as the trainer wrote it before the configs moved to the kinds (same keys)
CFG_KEYS = {"relu-l1": SAELENS, "topk": SAELENS | {"k", "k_aux"}, "batchtopk": SAELENS | {"k", "k_aux"},
            "mlp": SAELENS | {"hidden", "k", "k_aux", "mlp_layers"},
            "sparse-coding": SAELENS | {"fista_l1", "k", "n_iter", "nonneg", "pool"}}
SHARED = {f.name for f in dataclasses.fields(TrainConfig)} - {"kind_cfg"}
RUN_FACTS = {"d_sae", "steps", "tokens", "train_seconds", "train_cpu_seconds", "n_train_tokens", "n_resampled",
             "dead_fraction_train", "torch_threads", "massive_excluded", "select_dtype_used"}


def test_every_trainable_kind_has_its_config_and_passes():
    expected = {"relu-l1": (ReluL1Config, 12.0), "topk": (TopKConfig, 12.0), "batchtopk": (BatchTopKConfig, 8.0),
                "mlp": (MLPConfig, 6.0), "sparse-coding": (SparseCodingConfig, 4.0)}
    assert set(expected) == set(TRAINABLE)
    for kind, (cls, epochs) in expected.items():
        assert KINDS[kind].config_class is cls
        tc = TrainConfig(kind=kind)
        assert type(tc.kind_cfg) is cls and tc.epochs == cls().epochs == epochs
        assert not SHARED & {f.name for f in dataclasses.fields(cls)}  # nothing is declared twice


def test_train_config_routes_kind_keywords_and_refuses_foreign_ones():
    tc = TrainConfig(kind="mlp", hidden=7, k=4, lr=3e-3)
    assert tc.kind_cfg == MLPConfig(hidden=7, k=4) and tc.lr == 3e-3 and tc.hidden == 7
    assert TrainConfig(kind="mlp", lr=3e-3, kind_cfg=MLPConfig(hidden=7, k=4)) == tc
    with pytest.raises(TypeError):  # the kind's settings come either as its config or as keywords
        TrainConfig(kind="mlp", kind_cfg=MLPConfig(), k=4)
    with pytest.raises(UserError, match="kind 'relu-l1' has no setting k"):
        TrainConfig(kind="relu-l1", k=5)
    with pytest.raises(UserError, match="hidden must be >= 1, got 0"):
        TrainConfig(kind="mlp", hidden=0)
    with pytest.raises(AttributeError, match="no setting 'k'"):
        TrainConfig().k
    d = TrainConfig(kind="topk", k=8).to_dict()
    assert set(d) == SHARED | {f.name for f in dataclasses.fields(TopKConfig)} and d["k"] == 8


def test_the_learning_rate_defaults_to_the_kinds_and_an_explicit_one_wins():
    # topk and batchtopk train at 5e-3 (1e-3 left them under-trained: README, "Speed against the peers"); the
    # others keep 1e-3; the resolved value is what cfg.json and the checkpoint's key record
    want = {"relu-l1": 1e-3, "topk": 5e-3, "batchtopk": 5e-3, "mlp": 1e-3, "sparse-coding": 1e-3}
    assert {kind: TrainConfig(kind=kind).lr for kind in TRAINABLE} == want
    assert TrainConfig(kind="topk").to_dict()["lr"] == 5e-3
    assert TrainConfig(kind="topk", lr=1e-3).lr == 1e-3 and TrainConfig(kind="topk", lr=None).lr == 5e-3
    with pytest.raises(UserError, match="lr must be in"):
        TrainConfig(kind="topk", lr=2.0)


def test_one_default_each_for_the_mlp_width_and_the_sparse_coding_inference():
    # the width the demo was trained with: d_in / 2, wherever it is left unsaid
    assert MLPConfig().cfg_fields(576)["hidden"] == 288
    assert MLPEncoderDictionary({"d_in": 16, "d_sae": 32}).hidden == 8
    sc = SparseCodingDictionary({"d_in": 16, "d_sae": 32})
    assert (sc.n_iter, sc.pool, sc.nonneg) == (SparseCodingConfig.n_iter, SparseCodingConfig.pool, True) == (20, 48, True)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_synthetic_run(tmp_path_factory.mktemp("kinds"), d_in=16)


@pytest.mark.parametrize("kind,opts", [("relu-l1", []), ("topk", ["--k", "4"]), ("batchtopk", ["--k", "4"]),
                                       ("mlp", []), ("sparse-coding", ["--pool", "8", "--n-iter", "4"])])
def test_cfg_json_keeps_its_keys(run, kind, opts):
    assert main(["train", "--run", str(run), "--kind", kind, "--d-sae", "32", "--batch-size", "256", "--epochs", "1",
                 "--no-ce", "--device", "cpu", *opts]) == 0
    cfg = json.loads((run / "dictionaries" / kind / "cfg.json").read_text())
    assert set(cfg) == CFG_KEYS[kind]
    kind_fields = {f.name for f in dataclasses.fields(KINDS[kind].config_class)}
    assert set(cfg["training"]) == SHARED | kind_fields | RUN_FACTS  # the settings it was trained with, flat
    assert cfg["training"]["epochs"] == 1.0 and cfg["training"]["kind"] == kind
    if kind == "mlp":
        assert (cfg["hidden"], cfg["k"], cfg["k_aux"], cfg["training"]["hidden"]) == (8, 0, 0, None)
    if kind == "sparse-coding":
        fista_l1 = cfg["training"]["l1_coeff"] / 2 / cfg["activation_scale"]  # raw units
        assert (cfg["pool"], cfg["n_iter"], cfg["fista_l1"]) == (8, 4, pytest.approx(fista_l1))
