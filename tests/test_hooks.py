"""Hook points capture exactly what HF computes, and splicing replaces it."""

import pytest
import torch

from backend.common.errors import UserError
from backend.model import hooks


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    from backend.model.loading import load_model

    return load_model(str(tiny_model_dir), device="cpu")


def test_parse_hook_names():
    hp = hooks.parse_hook("blocks.3.hook_mlp_out", n_layers=4)
    assert (hp.layer, hp.kind, hp.name) == (3, "mlp_out", "blocks.3.hook_mlp_out")
    with pytest.raises(UserError, match="out of range"):
        hooks.parse_hook("blocks.4.hook_resid_post", n_layers=4)
    with pytest.raises(UserError, match="unknown hook name"):
        hooks.parse_hook("blocks.1.resid", n_layers=4)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_resid_hooks_equal_hidden_states(tiny_lm, layer):
    ids = torch.randint(3, 40, (2, 12))
    with torch.no_grad():
        hs = tiny_lm.model(ids, output_hidden_states=True).hidden_states  # [n_layers+1] x [B, T, d]
    post = hooks.capture(tiny_lm.model, hooks.parse_hook(f"blocks.{layer}.hook_resid_post"), ids)
    pre = hooks.capture(tiny_lm.model, hooks.parse_hook(f"blocks.{layer}.hook_resid_pre"), ids)
    torch.testing.assert_close(post, hs[layer + 1])
    torch.testing.assert_close(pre, hs[layer])


def test_mlp_and_attn_out_sum_to_residual_update(tiny_lm):
    """resid_post = resid_pre + attn_out + mlp_out in a Llama block."""
    ids = torch.randint(3, 40, (2, 10))
    get = lambda k: hooks.capture(tiny_lm.model, hooks.parse_hook(f"blocks.1.hook_{k}"), ids)
    torch.testing.assert_close(get("resid_post"), get("resid_pre") + get("attn_out") + get("mlp_out"), atol=1e-5, rtol=1e-5)


def test_capture_stops_after_hooked_layer(tiny_lm):
    """Layers after the hooked one never run."""
    ran = []
    layers = hooks.decoder_layers(tiny_lm.model)
    handles = [l.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, l in enumerate(layers)]
    try:
        hooks.capture(tiny_lm.model, hooks.parse_hook("blocks.1.hook_resid_post"), torch.randint(3, 40, (1, 8)))
    finally:
        for h in handles:
            h.remove()
    assert ran == [0, 1]


def test_splice_changes_logits_and_identity_does_not(tiny_lm):
    ids = torch.randint(3, 40, (1, 8))
    hp = hooks.parse_hook("blocks.1.hook_resid_post")
    with torch.no_grad():
        clean = tiny_lm.model(ids).logits
        with hooks.splice(tiny_lm.model, hp, lambda a: a.clone()):
            same = tiny_lm.model(ids).logits
        with hooks.splice(tiny_lm.model, hp, torch.zeros_like):
            zeroed = tiny_lm.model(ids).logits
        after = tiny_lm.model(ids).logits
    torch.testing.assert_close(same, clean)
    assert (zeroed - clean).abs().max() > 1e-3
    torch.testing.assert_close(after, clean)  # the hook is gone after the block
