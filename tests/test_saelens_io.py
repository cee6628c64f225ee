"""SAELens folder layout: save -> load round trip, plain SAELens folders written by hand, import checks."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from backend.common.errors import UserError
from backend.dictionaries import (
    JumpReluSAE,
    ReluL1SAE,
    TopKSAE,
    import_saelens,
    load_dictionary,
    save_dictionary,
)
from backend.dictionaries.saelens_io import saelens_cfg


def trained_like_sae(d_in=12, d_sae=40, seed=0) -> ReluL1SAE:
    torch.manual_seed(seed)
    sae = ReluL1SAE({"d_in": d_in, "d_sae": d_sae})
    sae.init_weights_(b_dec=torch.randn(d_in), enc_norm=1.0)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
    return sae


def write_saelens_folder(folder, cfg: dict, tensors: dict) -> None:
    """What SAELens' `save_model` writes: cfg.json + sae_weights.safetensors."""
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))


def saelens_cfg_dict(arch="standard", d_in=12, d_sae=40, hook="blocks.1.hook_resid_post", **extra) -> dict:
    return {"architecture": arch, "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
            "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
            "metadata": {"model_name": "tiny", "hook_name": hook, "sae_lens_version": "6.54.12"}, **extra}


def test_round_trip_same_encode_decode(tmp_path):
    sae = trained_like_sae()
    cfg = saelens_cfg(sae, hook="blocks.1.hook_resid_post", model="tiny", activation_scale=1.0)
    save_dictionary(sae, tmp_path / "d", cfg)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    on_disk = json.loads((tmp_path / "d" / "cfg.json").read_text())
    assert on_disk["architecture"] == "standard" and on_disk["kind"] == "relu-l1"
    assert on_disk["apply_b_dec_to_input"] is True and on_disk["normalize_activations"] == "none"
    assert on_disk["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    assert set(load_file(str(tmp_path / "d" / "sae_weights.safetensors"))) == {"W_enc", "b_enc", "W_dec", "b_dec"}
    w = load_file(str(tmp_path / "d" / "sae_weights.safetensors"))
    assert w["W_enc"].shape == (12, 40) and w["W_dec"].shape == (40, 12)

    back = load_dictionary(tmp_path / "d")
    assert isinstance(back, ReluL1SAE) and not back.training
    x = torch.randn(30, 12) * 3
    assert torch.allclose(back.encode(x), sae.encode(x), atol=1e-6)
    assert torch.allclose(back(x), sae(x), atol=1e-6)
    assert back.cfg["activation_scale"] == 1.0


def test_hand_written_standard_folder_loads_with_unit_norm_decoder(tmp_path):
    torch.manual_seed(1)
    t = {"W_enc": torch.randn(12, 40), "b_enc": torch.randn(40) * 0.1,
         "W_dec": torch.randn(40, 12) * 0.3, "b_dec": torch.randn(12)}  # decoder norms != 1, as SAELens trains them
    write_saelens_folder(tmp_path / "s", saelens_cfg_dict(), t)
    d = load_dictionary(tmp_path / "s")
    assert isinstance(d, ReluL1SAE)
    assert torch.allclose(d.W_dec.norm(dim=1), torch.ones(40), atol=1e-5)
    x = torch.randn(25, 12)
    f = torch.relu((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"])
    expected = f @ t["W_dec"] + t["b_dec"]  # SAELens' own formula
    assert torch.allclose(d(x), expected, atol=1e-4)


def test_hand_written_jumprelu_and_topk_folders(tmp_path):
    torch.manual_seed(2)
    t = {"W_enc": torch.randn(12, 40), "b_enc": torch.randn(40) * 0.1,
         "W_dec": torch.randn(40, 12), "b_dec": torch.randn(12), "threshold": torch.rand(40)}
    write_saelens_folder(tmp_path / "j", saelens_cfg_dict("jumprelu"), t)
    d = load_dictionary(tmp_path / "j")
    assert isinstance(d, JumpReluSAE)
    x = torch.randn(25, 12)
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    f = torch.relu(pre) * (pre > t["threshold"])
    assert torch.allclose(d(x), f @ t["W_dec"] + t["b_dec"], atol=1e-4)

    t2 = {k: v for k, v in t.items() if k != "threshold"}
    t2["W_dec"] = t2["W_dec"] / t2["W_dec"].norm(dim=1, keepdim=True)
    write_saelens_folder(tmp_path / "k", saelens_cfg_dict("topk", k=5), t2)
    d = load_dictionary(tmp_path / "k")
    assert isinstance(d, TopKSAE)
    f = d.encode(x)
    assert ((f > 0).sum(1) <= 5).all()
    pre = (x - t2["b_dec"]) @ t2["W_enc"] + t2["b_enc"]
    v, i = pre.topk(5, dim=-1)
    ref = torch.zeros_like(pre).scatter_(-1, i, v.relu())
    assert torch.allclose(f, ref, atol=1e-5)


def test_bad_folders_give_user_errors(tmp_path):
    with pytest.raises(UserError, match="no cfg.json"):
        load_dictionary(tmp_path)
    t = {"W_enc": torch.randn(12, 40), "b_enc": torch.zeros(40), "W_dec": torch.randn(40, 12), "b_dec": torch.zeros(12)}
    write_saelens_folder(tmp_path / "shape", saelens_cfg_dict(d_in=13), t)
    with pytest.raises(UserError, match="does not match"):
        load_dictionary(tmp_path / "shape")
    write_saelens_folder(tmp_path / "arch", saelens_cfg_dict("gated-unknown"), t)
    with pytest.raises(UserError, match="unsupported SAELens architecture"):
        load_dictionary(tmp_path / "arch")
    write_saelens_folder(tmp_path / "ln", saelens_cfg_dict(normalize_activations="layer_norm"), t)
    with pytest.raises(UserError, match="layer_norm"):
        load_dictionary(tmp_path / "ln")


def test_import_saelens_checks_and_copies(tmp_path):
    sae = trained_like_sae()
    save_dictionary(sae, tmp_path / "src", saelens_cfg(sae, hook="blocks.1.hook_resid_post", model="tiny"))
    with pytest.raises(UserError, match="d_in 12 does not match") as e:
        import_saelens(tmp_path / "src", tmp_path / "run" / "dictionaries" / "x", expect_d_in=64,
                       expect_hook="blocks.1.hook_resid_post")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="hook") as e:
        import_saelens(tmp_path / "src", tmp_path / "run" / "dictionaries" / "x", expect_d_in=12,
                       expect_hook="blocks.3.hook_resid_post")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run" / "dictionaries" / "x").exists()

    dest = import_saelens(tmp_path / "src", tmp_path / "run" / "dictionaries" / "x", expect_d_in=12,
                          expect_hook="blocks.1.hook_resid_post")
    assert (dest / "cfg.json").read_bytes() == (tmp_path / "src" / "cfg.json").read_bytes()
    x = torch.randn(5, 12)
    assert torch.allclose(load_dictionary(dest)(x), sae(x), atol=1e-6)
    # no temporary folders left next to it
    assert [p.name for p in (tmp_path / "run" / "dictionaries").iterdir()] == ["x"]
