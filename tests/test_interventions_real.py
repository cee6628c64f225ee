"""Interventions on the real embedded model (SmolLM2-135M): the downstream pass from the demo's hook gives the full
model's logits, a no-op edit keeps them, and steering changes the generated text."""

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.integration]
HOOK = "blocks.15.hook_resid_post"
TEXT = "The Eiffel Tower is in Paris. The Statue of Liberty is in New York."


@pytest.fixture(scope="module")
def real_lm():
    from backend.model.loading import load_model

    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="module")
def sae():
    from backend.dictionaries import KINDS

    g = torch.Generator().manual_seed(0)
    d = KINDS["relu-l1"]({"d_in": 576, "d_sae": 512, "metadata": {"hook_name": HOOK}})
    d.init_weights_(b_dec=torch.zeros(576), enc_norm=0.1, generator=g)
    return d.eval()


def test_downstream_from_the_demo_hook_equals_the_full_model(real_lm):
    from backend.interventions.inputs import tokenize_text
    from backend.model import forward, hooks

    ids = torch.tensor([tokenize_text(real_lm.tokenizer, TEXT)])
    hp = hooks.parse_hook(HOOK)
    with torch.no_grad():
        clean = real_lm.model(ids).logits
    act = hooks.capture(real_lm.model, hp, ids)
    got = forward.unembed(real_lm.model, forward.run_downstream(real_lm.model, hp, act))
    torch.testing.assert_close(got, clean, atol=1e-4, rtol=0)


def test_noop_edit_and_steering_on_the_real_model(real_lm, sae):
    from backend.interventions import Edit, text_effects
    from backend.interventions.steer import steer

    same = text_effects(real_lm, sae, HOOK, TEXT, Edit((3,), "scale", 1.0))
    assert (same.table["kl"] == 0).all() and np.nanmax(np.abs(same.table["loss_change"])) == 0
    strong = text_effects(real_lm, sae, HOOK, TEXT, Edit((3,), "steer", 60.0))
    assert strong.table["kl"].iloc[1:].min() > 0 and strong.mean_loss_change > 0
    r = steer(real_lm, sae, HOOK, "I think the most important thing is", Edit((3,), "steer", 0.0), n_new=6)
    assert r.clean == r.steered and r.kl_first == 0
    r = steer(real_lm, sae, HOOK, "I think the most important thing is", Edit((3,), "steer", 80.0), n_new=6)
    assert r.clean != r.steered and r.kl_first > 0.01
