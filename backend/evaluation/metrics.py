"""Held-out metrics of a dictionary: reconstruction (l0, mse, fvu, explained_variance, dead_fraction)
and spliced-model CE (ce_clean, ce_spliced, ce_zero_ablation, ce_loss_score, delta_ce, kl_div).

Definitions (names as SAELens / SAEBench):
    l0                  mean over tokens of #{i : f_i > 0}
    mse                 mean over tokens and dims of (x - x_hat)^2         (SAELens: per element)
    explained_variance  1 - E||x - x_hat||^2 / (E||x||^2 - sum_d E[x_d]^2)  (mean-centred, SAEBench)
    fvu                 1 - explained_variance
    dead_fraction       fraction of features that never fire over `dead_window_tokens` tokens
    ce_loss_score       (CE_zero - CE_spliced) / (CE_zero - CE_clean)
    delta_ce            CE_spliced - CE_clean (nats per token)
    kl_div              mean over tokens of KL(p_clean || p_spliced)
Position 0 (BOS) is excluded everywhere: it is not in the held-out activations, the splice keeps
its original activation, and predictions made at position 0 are left out of CE and KL.

Massive-activation tokens (`backend.activations.massive`: norm > 6 x the median, ~0.02% of the tokens
of SmolLM2-135M layer 15 but ~3/4 of the centred variance) would let the variance they add flatter
every dictionary, so the headline l0/mse/fvu/explained_variance are over the other tokens, and
`*_all` repeat mse/fvu/explained_variance with them included (`n_massive_tokens`, `massive_threshold`,
`massive_relative_error` = sum||x - x_hat||^2 / sum||x||^2 over them). Dead features are counted over
all tokens of the window. Spliced CE (ce_*, delta_ce, kl_div) stays over every token of the held-out
sequences: the model reads them all, so the reconstruction is spliced in at massive tokens too (a
dictionary trained without them reconstructs them poorly: on the 100k-token check run, keeping their
original activation instead lowered delta_ce from 0.609 to 0.582 nats, with 2 of 39 sequences holding one).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from backend.activations.activation_store import ActivationStore
from backend.common.atomic import write_json
from backend.common.errors import UserError, first_line
from backend.common.layout import METRICS, TOKENS, dict_dir, load_run
from backend.dictionaries.base import Dictionary
from backend.model.hooks import HookPoint, parse_hook, splice


class ReconAccumulator:
    """Streaming sums for the reconstruction metrics over batches of (x, f, x_hat)."""

    def __init__(self, d_in: int, d_sae: int):
        self.n = 0
        self.sse = 0.0  # sum ||x - x_hat||^2
        self.sum_sq = 0.0  # sum ||x||^2
        self.sum_x = torch.zeros(d_in, dtype=torch.float64)  # sum x (per dim)
        self.l0_sum = 0.0
        self.fired = torch.zeros(d_sae, dtype=torch.bool)
        self.d_in = d_in

    @torch.no_grad()
    def add(self, x: torch.Tensor, f: torch.Tensor, x_hat: torch.Tensor) -> None:
        x64 = x.double()
        self.n += x.shape[0]
        self.sse += float((x - x_hat).double().pow(2).sum())
        self.sum_sq += float(x64.pow(2).sum())
        self.sum_x += x64.sum(0).cpu()
        self.l0_sum += float((f > 0).sum())
        self.fired |= (f > 0).any(0).cpu()

    def result(self) -> dict[str, float]:
        n = max(self.n, 1)
        centred = self.sum_sq / n - float((self.sum_x / n).pow(2).sum())  # E||x||^2 - sum_d E[x_d]^2
        ev = 1.0 - (self.sse / n) / centred if centred > 0 else float("nan")
        return {"l0": self.l0_sum / n, "mse": self.sse / (n * self.d_in), "explained_variance": ev,
                "fvu": 1.0 - ev, "n_tokens": self.n}


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """1 - E||x - x_hat||^2 / (E||x||^2 - sum_d E[x_d]^2) for x, x_hat [N, d]."""
    acc = ReconAccumulator(x.shape[1], 1)
    acc.add(x, torch.zeros(x.shape[0], 1), x_hat)
    return acc.result()["explained_variance"]


@torch.no_grad()
def reconstruction_metrics(dictionary: Dictionary, x: np.ndarray | torch.Tensor, batch_size: int = 4096,
                           device: str | torch.device = "cpu", fire_only: np.ndarray | None = None,
                           massive: np.ndarray | None = None) -> dict:
    """Metrics of `dictionary` on raw activations x [N, d_in]; `fire_only` [M, d_in] are extra tokens
    that count only towards the dead-feature window; `massive` [N] bool marks tokens left out of the
    headline numbers and reported in `*_all` and `massive_*` (module docstring)."""
    keep = np.ones(len(x), dtype=bool) if massive is None else ~np.asarray(massive, dtype=bool)
    acc = ReconAccumulator(dictionary.d_in, dictionary.d_sae)  # kept tokens
    acc_all = ReconAccumulator(dictionary.d_in, dictionary.d_sae)  # every token
    for i in range(0, len(x), batch_size):
        xb = torch.as_tensor(np.asarray(x[i:i + batch_size], dtype=np.float32)).to(device)
        f = dictionary.encode(xb)
        x_hat = dictionary.decode(f)
        acc_all.add(xb, f, x_hat)
        k = torch.from_numpy(keep[i:i + batch_size]).to(xb.device)
        acc.add(xb[k], f[k], x_hat[k])
    out = acc.result()
    every = acc_all.result()
    out.update(explained_variance_all=every["explained_variance"], fvu_all=every["fvu"], mse_all=every["mse"],
               n_tokens_all=every["n_tokens"], n_massive_tokens=int((~keep).sum()))
    # squared norm of the massive tokens = what every token holds minus what the kept ones hold
    massive_sq = acc_all.sum_sq - acc.sum_sq
    out["massive_relative_error"] = (acc_all.sse - acc.sse) / massive_sq if out["n_massive_tokens"] else None
    fired, window = acc_all.fired, acc_all.n
    if fire_only is not None:
        for i in range(0, len(fire_only), batch_size):
            xb = torch.as_tensor(np.asarray(fire_only[i:i + batch_size], dtype=np.float32)).to(device)
            fired |= (dictionary.encode(xb) > 0).any(0).cpu()
        window += len(fire_only)
    out["dead_fraction"] = float(1.0 - fired.float().mean())
    out["dead_window_tokens"] = int(window)
    return out


def _model(lm) -> torch.nn.Module:
    """The causal LM inside a backend.model.loading.LoadedModel, or `lm` itself if it is one already."""
    from backend.model.loading import LoadedModel

    return lm.model if isinstance(lm, LoadedModel) else lm


@torch.no_grad()
def spliced_ce_metrics(lm, hook_point: str | HookPoint, dictionary: Dictionary, token_ids: torch.Tensor | np.ndarray,
                       batch_size: int = 8) -> dict[str, float]:
    """Run the model on token_ids [n_seq, ctx_len] clean, with the hook's activation replaced by the
    dictionary's reconstruction, and with it zero-ablated (position 0 keeps its activation in both)."""
    model = _model(lm)
    hp = parse_hook(hook_point) if isinstance(hook_point, str) else hook_point
    dev = next(model.parameters()).device
    ids = torch.tensor(np.asarray(token_ids, dtype=np.int64))  # a copy: parquet arrays are read-only
    if ids.ndim != 2 or ids.shape[1] < 3:
        raise UserError(f"token_ids must be [n_seq, ctx_len >= 3], got {tuple(ids.shape)}")
    dictionary = dictionary.to(dev).eval()

    def recon(act):  # act [B, T, d_model]
        out = act.clone()
        flat = act[:, 1:].reshape(-1, act.shape[-1])
        out[:, 1:] = dictionary(flat.float()).to(act.dtype).reshape(act.shape[0], -1, act.shape[-1])
        return out

    def zero(act):
        out = act.clone()
        out[:, 1:] = 0
        return out

    sums = {"clean": 0.0, "spliced": 0.0, "zero": 0.0, "kl": 0.0}
    n = 0
    for i in range(0, len(ids), batch_size):
        x = ids[i:i + batch_size].to(dev)
        target = x[:, 2:]  # next tokens predicted from positions 1..T-2
        logp = {}
        for key, ctx in (("clean", None), ("spliced", recon), ("zero", zero)):
            if ctx is None:
                logits = model(input_ids=x, use_cache=False).logits
            else:
                with splice(model, hp, ctx):
                    logits = model(input_ids=x, use_cache=False).logits
            lp = torch.log_softmax(logits[:, 1:-1].float(), dim=-1)  # [B, T-2, V]
            del logits
            sums[key] += float(-lp.gather(-1, target[..., None]).sum())
            if key != "zero":
                logp[key] = lp
        sums["kl"] += float((logp["clean"].exp() * (logp["clean"] - logp["spliced"])).sum())
        n += target.numel()
        del logp
    ce = {k: sums[k] / n for k in ("clean", "spliced", "zero")}
    denom = ce["zero"] - ce["clean"]
    return {
        "ce_clean": ce["clean"], "ce_spliced": ce["spliced"], "ce_zero_ablation": ce["zero"],
        "ce_loss_score": (ce["zero"] - ce["spliced"]) / denom if abs(denom) > 1e-12 else float("nan"),
        "delta_ce": ce["spliced"] - ce["clean"], "kl_div": sums["kl"] / n, "ce_tokens": n,
    }


def heldout_token_ids(run_dir: str | Path, n_seqs: int) -> np.ndarray:
    """Token ids [n, ctx_len] of the first n held-out sequences, from tokens.parquet."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    meta = load_run(run_dir)
    ctx, start = int(meta["ctx_len"]), int(meta.get("heldout_from", meta["n_seqs"]))
    stop = min(int(meta["n_seqs"]), start + n_seqs)
    if stop <= start:
        return np.zeros((0, ctx), dtype=np.int64)
    try:
        t = pq.read_table(Path(run_dir) / TOKENS, columns=["token_index", "token_id"],
                          filters=[("token_index", ">=", start * ctx), ("token_index", "<", stop * ctx)])
    except Exception as e:  # Arrow's error types for a damaged or truncated file
        raise UserError(f"cannot read {Path(run_dir) / TOKENS}: {first_line(e)}") from None
    t = t.sort_by("token_index")
    idx = t.column("token_index").to_numpy()
    if len(idx) != (stop - start) * ctx or not np.array_equal(idx, np.arange(start * ctx, stop * ctx)):
        raise UserError(f"{run_dir}/{TOKENS} lacks rows for held-out sequences {start}..{stop - 1}")
    return pc.cast(t.column("token_id"), "int64").to_numpy().reshape(stop - start, ctx)


def compute_metrics(run_dir: str | Path, dict_name: str, lm=None, ce_seqs: int = 64, device: str = "cpu",
                    dead_window_tokens: int = 100_000, extra: dict | None = None, folder: Path | None = None) -> dict:
    """Held-out metrics of dictionaries/<dict_name> (or of the dictionary folder `folder`, e.g. one not yet
    published), written atomically to its metrics.json.

    Dead features are counted over all held-out tokens plus training tokens up to
    `dead_window_tokens` in all (the held-out split alone is too small to tell rare from dead).
    CE metrics use the first `ce_seqs` held-out sequences (0 skips them and the model load).
    """
    from backend.dictionaries import load_dictionary

    run_dir = Path(run_dir)
    meta = load_run(run_dir)
    folder = Path(folder) if folder is not None else dict_dir(run_dir, dict_name)
    d = load_dictionary(folder, device=device)
    store = ActivationStore(run_dir)
    t0 = time.time()
    x, idx = store.load_split("test", exclude_massive=False)
    if len(x) == 0:
        raise UserError(f"{run_dir} has no held-out sequences (heldout_from = n_seqs)")
    more = max(0, dead_window_tokens - len(x))
    x_more = store.load_split("train", max_tokens=more, exclude_massive=False)[0] if more else None
    out = {"dictionary": dict_name, "architecture": d.cfg.get("architecture"), "kind": d.cfg.get("kind"),
           "d_sae": d.d_sae, "split": "test", "dead_window_split": "test+train" if more else "test"}
    out.update(reconstruction_metrics(d, x, device=device, fire_only=x_more, massive=store.is_massive(idx)))
    out["massive_threshold"] = store.massive["threshold"]
    out["massive_rule"] = f"{store.massive['rule']} (k = {store.massive['k']})"
    out["flops_per_token"] = d.flops_per_token()
    out["recon_seconds"] = round(time.time() - t0, 1)
    if ce_seqs:
        t1 = time.time()
        ids = heldout_token_ids(run_dir, ce_seqs)
        if len(ids):
            if lm is None:
                from backend.model.loading import load_model
                lm = load_model(meta["model"], device=device)
            out.update(spliced_ce_metrics(lm, meta["hook"], d, ids))
            out["ce_seqs"] = int(len(ids))
            out["ce_seconds"] = round(time.time() - t1, 1)
    if extra:
        out.update(extra)
    write_json(folder / METRICS, out)
    return out

