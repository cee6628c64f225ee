"""The ReLU/L1 SAE: loss on a hand case, the sparse fast path against autograd, unit-norm decoder
rows, scale folding, and the metric formulas (explained variance, spliced CE on a tiny Llama)."""

from __future__ import annotations

import math

import pytest
import torch

from backend.dictionaries import KINDS, ReluL1SAE
from backend.dictionaries.losses import relu_l1_loss
from backend.evaluation.metrics import (
    explained_variance,
    reconstruction_metrics,
    spliced_ce_metrics,
)
from backend.training.schedules import lr_factor, warmup_factor


def tiny_sae(d_in=3, d_sae=2) -> ReluL1SAE:
    return ReluL1SAE({"d_in": d_in, "d_sae": d_sae})


def test_registry_has_relu_l1():
    assert KINDS["relu-l1"] is ReluL1SAE


def test_loss_hand_computed():
    sae = tiny_sae()
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))  # [d_in, d_sae]
        sae.b_enc.copy_(torch.tensor([0.0, -1.0]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]))  # row norms 1 and 2
        sae.b_dec.copy_(torch.tensor([0.0, 0.0, 1.0]))
    x = torch.tensor([[2.0, 3.0, 1.0]])
    # f = relu([2, 3] + [0, -1]) = [2, 2]; x_hat = 2*[1,0,0] + 2*[0,2,0] + [0,0,1] = [2, 4, 1]
    f = sae.encode(x)
    assert torch.allclose(f, torch.tensor([[2.0, 2.0]]))
    x_hat = sae.decode(f)
    assert torch.allclose(x_hat, torch.tensor([[2.0, 4.0, 1.0]]))
    parts = relu_l1_loss(x, x_hat, f, sae.W_dec.norm(dim=1), l1_coeff=0.5)
    # mse = (4-3)^2 = 1 ; l1 = 2*1 + 2*2 = 6 ; total = 1 + 0.5*6 = 4
    assert parts.mse.item() == pytest.approx(1.0)
    assert parts.l1.item() == pytest.approx(6.0)
    assert parts.total.item() == pytest.approx(4.0)
    loss, stats, _ = sae.training_loss(x, {"l1": 0.5})
    assert loss.item() == pytest.approx(4.0) and stats["l0"] == 2


@pytest.mark.parametrize("bias", [-0.3, -1.0])
def test_sparse_fast_path_matches_autograd(bias):
    torch.manual_seed(0)
    sae = ReluL1SAE({"d_in": 16, "d_sae": 48})
    sae.init_weights_(b_dec=torch.randn(16), enc_norm=1.0)
    with torch.no_grad():
        sae.b_enc.fill_(bias)
        sae.W_dec.mul_(torch.rand(48, 1) + 0.5)  # non-unit norms exercise the L1 norm gradient
    x = torch.randn(64, 16)
    sae.use_fast_path = False
    s_ref, fired_ref = sae.loss_and_backward(x, {"l1": 0.7})
    ref = {k: p.grad.clone() for k, p in sae.named_parameters()}
    sae.zero_grad(set_to_none=True)
    sae.use_fast_path, sae._density = True, 0.0
    s_fast, fired_fast = sae.loss_and_backward(x, {"l1": 0.7})
    assert s_fast["loss"] == pytest.approx(s_ref["loss"], rel=1e-5)
    assert s_fast["l0"] == pytest.approx(s_ref["l0"])
    assert torch.equal(fired_ref, fired_fast)
    for k, p in sae.named_parameters():
        assert torch.allclose(p.grad, ref[k], rtol=1e-4, atol=1e-6), k


def test_decoder_rows_stay_unit_norm_after_steps():
    torch.manual_seed(0)
    sae = ReluL1SAE({"d_in": 8, "d_sae": 32})
    sae.init_weights_(enc_norm=0.5)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(10):
        opt.zero_grad()
        sae.loss_and_backward(torch.randn(32, 8), {"l1": 0.1})
        sae.before_optimizer_step_()
        # after removing the parallel component, the gradient is orthogonal to every row
        dots = (sae.W_dec.grad * sae.W_dec).sum(1)
        assert dots.abs().max() < 1e-5
        opt.step()
        sae.after_optimizer_step_()
        assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32), atol=1e-5)


def test_fold_scale_keeps_reconstruction_in_raw_units():
    torch.manual_seed(0)
    sae = ReluL1SAE({"d_in": 8, "d_sae": 16})
    sae.init_weights_(b_dec=torch.randn(8), enc_norm=1.0)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
    s = 0.037  # training units: x_train = s * x_raw
    x_raw = torch.randn(20, 8) * 30
    f_train = sae.encode(x_raw * s)
    expected = sae.decode(f_train) / s
    sae.fold_scale_(s)
    assert torch.allclose(sae(x_raw), expected, rtol=1e-4, atol=1e-3)
    assert torch.allclose(sae.encode(x_raw), f_train / s, rtol=1e-4, atol=1e-3)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(16), atol=1e-5)


def test_fold_decoder_norms_keeps_reconstruction():
    torch.manual_seed(0)
    sae = ReluL1SAE({"d_in": 8, "d_sae": 16})
    sae.init_weights_(enc_norm=1.0)
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(16, 1) * 3 + 0.1)
    x = torch.randn(10, 8)
    before = sae(x)
    sae.fold_decoder_norms_()
    assert torch.allclose(sae(x), before, atol=1e-5)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(16), atol=1e-5)


def test_flops_per_token():
    fl = tiny_sae(4, 10).flops_per_token()
    assert fl["encode"] >= 2 * 4 * 10 and fl["decode"] >= 2 * 4 * 10


def test_schedules():
    assert lr_factor(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(10, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(55, 100, 10, 0.0) == pytest.approx(0.5)
    assert warmup_factor(0, 4) == pytest.approx(0.25) and warmup_factor(10, 4) == 1.0 and warmup_factor(0, 0) == 1.0


def test_explained_variance_hand_case():
    # x has per-dim means (1, 0); E||x||^2 = (4+0+... )
    x = torch.tensor([[0.0, 1.0], [2.0, -1.0], [1.0, 0.0], [1.0, 0.0]])
    x_hat = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    # E||x - x_hat||^2 = (1 + 1 + 0 + 1)/4 = 0.75
    # E||x||^2 = (1 + 5 + 1 + 1)/4 = 2 ; sum_d E[x_d]^2 = 1^2 + 0^2 = 1 ; denominator 1
    assert explained_variance(x, x_hat) == pytest.approx(1 - 0.75)


def test_reconstruction_metrics_identity_like():
    class Identity(ReluL1SAE):
        def encode(self, x):
            return torch.cat([x.relu(), (-x).relu()], dim=1)

        def decode(self, f):
            d = f.shape[1] // 2
            return f[:, :d] - f[:, d:]

    ident = Identity({"d_in": 4, "d_sae": 8})
    x = torch.randn(100, 4)
    m = reconstruction_metrics(ident, x.numpy(), batch_size=32)
    assert m["explained_variance"] == pytest.approx(1.0) and m["mse"] == pytest.approx(0.0, abs=1e-10)
    assert m["l0"] == pytest.approx(4.0, abs=0.01)
    assert m["dead_fraction"] == 0.0 and m["dead_window_tokens"] == 100


class _IdentityDict(torch.nn.Module):
    """An exact identity dictionary: x -> x (what splicing must not notice)."""

    d_in = d_sae = 64

    def encode(self, x):
        return x

    def decode(self, f):
        return f

    def forward(self, x):
        return x


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval()


def test_spliced_identity_gives_zero_delta():
    model = _tiny_llama()
    ids = torch.randint(0, 256, (6, 24))
    m = spliced_ce_metrics(model, "blocks.1.hook_resid_post", _IdentityDict(), ids, batch_size=4)
    assert m["delta_ce"] == pytest.approx(0.0, abs=1e-5)
    assert m["kl_div"] == pytest.approx(0.0, abs=1e-6)
    assert m["ce_loss_score"] == pytest.approx(1.0, abs=1e-4)
    assert m["ce_zero_ablation"] != pytest.approx(m["ce_clean"], abs=1e-4)
    assert m["ce_tokens"] == 6 * 22
    assert math.isfinite(m["ce_clean"]) and m["ce_clean"] > 0


def test_spliced_random_sae_hurts():
    model = _tiny_llama()
    ids = torch.randint(0, 256, (4, 16))
    sae = ReluL1SAE({"d_in": 64, "d_sae": 32})
    sae.init_weights_(enc_norm=1.0)
    m = spliced_ce_metrics(model, "blocks.2.hook_resid_pre", sae, ids)
    assert m["kl_div"] > 1e-4 and m["delta_ce"] != 0.0
