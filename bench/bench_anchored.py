"""Anchored training's cost, and whether cached top-k log-probs could replace the clean pass.

    .venv/bin/python -m bench.bench_anchored --run /tmp/anch_run --dict relu-l1 [--steps 4] [--contexts 4]

Prints, on the same run and machine in one process:
- plain training: seconds per step of `--batch` tokens (the trainer's step on cached activations) and per token;
- anchored training (`--anchor-kl 0.8`, fine-tuning `--dict`): seconds per step of `--contexts` whole contexts and
  its parts (reading, the kind's loss, the clean downstream pass that gives p_orig, the spliced pass forward and
  backward, the update), per token, and the ratio to plain training per token;
- p_orig from a cache of each token's top-k log-probs instead of the clean pass: the KL(p_orig || p_sae) it gives
  (tail mass lumped into one bucket) against the exact one on the same batches, for k = 16, 64, 256, with the
  disk such a cache needs for the run, and the share of the step the clean pass takes (what the cache could save).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def plain_seconds(run, kind: str, steps: int, batch: int) -> float:
    from backend.training.trainer import TrainConfig, Trainer, train_batches

    tr = Trainer(run, TrainConfig(kind=kind, batch_size=batch, checkpoint_every_s=0), "bench-plain", device="cpu")
    tr.init_from_data()
    it = train_batches(tr.store, tr.cfg, 0, tr.steps_per_epoch, steps + 1, tr.device)
    tr.step(next(it))  # warm-up
    t0 = time.perf_counter()
    for x in it:
        tr.step(x)
    return (time.perf_counter() - t0) / steps


def topk_kl(logp_orig: torch.Tensor, logp_sae: torch.Tensor, k: int) -> torch.Tensor:
    """KL(p_orig || p_sae) [N] from p_orig's top-k entries only, the rest of both distributions in one bucket."""
    top, idx = logp_orig.topk(k, dim=-1)
    q = logp_sae.gather(-1, idx)
    p_top = top.exp()
    head = (p_top * (top - q)).sum(-1)
    rest_p = (1 - p_top.sum(-1)).clamp_min(1e-12)
    rest_q = (1 - q.exp().sum(-1)).clamp_min(1e-12)
    return head + rest_p * (rest_p.log() - rest_q.log())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--dict", required=True, help="a trained dictionary of the run to fine-tune")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--contexts", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2048)
    a = ap.parse_args()

    from backend.common.atomic import read_json
    from backend.common.layout import CFG_JSON, dict_dir
    from backend.model.forward import downstream, unembed
    from backend.training.anchored import AnchorConfig, AnchoredTrainer
    from backend.training.trainer import TrainConfig

    cfg_json = read_json(dict_dir(a.run, a.dict) / CFG_JSON)
    kind = cfg_json["kind"]
    kind_settings = {k: cfg_json[k] for k in ("k",) if k in cfg_json}
    print(f"torch threads {torch.get_num_threads()}; dictionary {a.dict} ({kind}, d_sae {cfg_json['d_sae']})")
    plain = plain_seconds(a.run, kind, a.steps, a.batch)
    print(f"plain:    {plain:.3f} s/step of {a.batch} tokens = {plain / a.batch * 1e3:.3f} ms/token")

    tr = AnchoredTrainer(a.run, TrainConfig(kind=kind, d_sae=cfg_json["d_sae"], checkpoint_every_s=0, **kind_settings),
                         AnchorConfig(anchor_kl=0.8, init_from=a.dict, anchor_contexts=a.contexts), "bench-anchored",
                         device="cpu")
    tr.init_from_dictionary(a.dict)
    tr.dictionary.train()
    tr.anchored_step(tr.context_batch(0))  # warm-up
    tr.seconds = dict.fromkeys(tr.seconds, 0.0)
    t0 = time.perf_counter()
    for s in range(1, a.steps + 1):
        tr.anchored_step(tr.context_batch(s))
    step = (time.perf_counter() - t0) / a.steps
    n_tok = a.contexts * (tr.ctx_len - 1)
    parts = {k: v / a.steps for k, v in tr.seconds.items()}
    print(f"anchored: {step:.2f} s/step of {a.contexts} contexts ({n_tok} tokens) = {step / n_tok * 1e3:.2f} ms/token, "
          f"{step / n_tok / (plain / a.batch):.0f}x plain per token")
    print("  parts (s/step): " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
          + f"  (clean pass = {parts['clean'] / step:.0%} of the step; 'spliced' includes it)")

    errs = {16: [], 64: [], 256: []}
    exact = []
    with torch.no_grad():
        for s in range(a.steps):
            acts, ids, _ = tr.load_batch(tr.context_batch(100 + s))
            lo = torch.log_softmax(unembed(tr.model, downstream(tr.model, tr.hp, acts)[:, 1:]).float(), -1)
            ls = torch.log_softmax(unembed(tr.model, downstream(tr.model, tr.hp, tr.splice(acts))[:, 1:]).float(), -1)
            kl = (lo.exp() * (lo - ls)).sum(-1).reshape(-1)
            exact.append(kl)
            for k in errs:
                errs[k].append(topk_kl(lo.reshape(-1, lo.shape[-1]), ls.reshape(-1, ls.shape[-1]), k))
    exact = torch.cat(exact)
    n_tokens = tr.store.n_tokens("train", exclude_massive=False)
    print(f"exact KL on {exact.numel()} tokens: mean {float(exact.mean()):.4f}")
    for k, v in errs.items():
        v = torch.cat(v)
        rel = float((v.mean() - exact.mean()) / exact.mean())
        corr = float(np.corrcoef(v.numpy(), exact.numpy())[0, 1])
        print(f"  top-{k:<3} cache: mean {float(v.mean()):.4f} ({rel:+.1%}), per-token corr {corr:.3f}, "
              f"cache size {n_tokens * k * 6 / 1e6:,.0f} MB for the run's {n_tokens:,} training tokens (fp16 + int32)")


if __name__ == "__main__":
    main()
