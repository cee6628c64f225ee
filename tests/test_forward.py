"""The downstream pass (layers after a hook, from the hook activation) gives the full forward's logits."""

import pytest
import torch

from backend.model import forward, hooks


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    from backend.model.loading import load_model

    return load_model(str(tiny_model_dir), device="cpu")


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=64, n_embd=32, n_layer=3, n_head=4,
                                      bos_token_id=0, eos_token_id=0)).eval()


def _neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    return GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                            intermediate_size=64, max_position_embeddings=64)).eval()


def _check(model, hook: str, ids: torch.Tensor) -> None:
    hp = hooks.parse_hook(hook)
    with torch.no_grad():
        clean = model(ids).logits
    act = hooks.capture(model, hp, ids)
    got = forward.unembed(model, forward.run_downstream(model, hp, act))
    torch.testing.assert_close(got, clean, atol=1e-5, rtol=1e-5)
    # a prefix through a KV cache, then the rest twice (clean and a copy) from the shared prefix
    cache = forward.new_cache(model)
    head = forward.run_downstream(model, hp, act[:, :5], cache)
    shared = forward.prefix_cache(model, hp, cache, 5, repeats=2)
    tail = forward.run_downstream(model, hp, act[:, 5:].repeat_interleave(2, 0), shared)
    both = forward.unembed(model, torch.cat([head.repeat_interleave(2, 0), tail], 1))
    torch.testing.assert_close(both, clean.repeat_interleave(2, 0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.2.hook_resid_pre",
                                  "blocks.3.hook_resid_post"])
def test_downstream_equals_full_forward_llama(tiny_lm, hook):
    assert forward.downstream_supported(tiny_lm.model, hooks.parse_hook(hook))
    _check(tiny_lm.model, hook, torch.randint(3, 40, (3, 12)))


@pytest.mark.parametrize("make", [_gpt2, _neox], ids=["gpt2", "gpt_neox"])
@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"])
def test_downstream_equals_full_forward_gpt2_neox(make, hook):
    _check(make(), hook, torch.randint(3, 40, (2, 12)))


def test_mlp_and_attn_hooks_are_not_downstream(tiny_lm):
    assert not forward.downstream_supported(tiny_lm.model, hooks.parse_hook("blocks.1.hook_mlp_out"))
    assert not forward.downstream_supported(tiny_lm.model, hooks.parse_hook("blocks.1.hook_attn_out"))
    with pytest.raises(ValueError, match="hooks.splice"):
        forward.run_downstream(tiny_lm.model, hooks.parse_hook("blocks.1.hook_mlp_out"), torch.zeros(1, 3, 64))


def test_prompt_inspector_uses_the_one_lock():
    from backend.analysis import prompt_inspect

    assert prompt_inspect.HOOK_LOCK is forward.HOOK_LOCK
