"""The methods of the synthetic benchmark: small full-batch trainers and the inference each method uses.

Every runner takes (setting, problem, cache) and returns a `MethodResult`: codes for the test samples, the
dictionary the codes are read through (None when there is none), the reconstruction, and FLOPs counted
analytically (a multiply-add is 2 FLOPs; a backward pass costs twice the forward pass; Adam ~12 FLOPs per
parameter per step). The problems are tiny (N=16, 512 training samples), so every trainer is full-batch.

Methods (the setting decides where the dictionary comes from: see backend/synth.py):
- `sae`: ReLU encoder with pre-encoder bias, z = relu((x - b_dec) W_enc + b_enc), x_hat = z W_dec + b_dec,
  L1 on z, unit-norm decoder rows.
- `mlp`: the same with a one-hidden-layer MLP encoder (width 4N).
- `sc_fista`: sparse coding; codes by FISTA; in `unknown` the dictionary is learned by alternating FISTA
  codes with a least-squares dictionary update (MOD, Engan et al. 1999).
- `sc_topk`: the same with codes cut to the K largest (K known, as top-k SAEs assume).
- `ito_mp`, `ito_gp`, `ito_fista`: the trained SAE's decoder with inference-time optimisation: matching
  pursuit, gradient pursuit (K steps each) or FISTA warm-started from the SAE's codes.
- `sk_omp`, `sk_lars`: scikit-learn baselines: in `unknown` a MiniBatchDictionaryLearning dictionary, codes by
  OMP (K non-zeros) or LARS-lasso through `sparse_encode`. scikit-learn is used here only, never on real data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from backend.dictionaries.sparse_inference import (
    fista,
    fista_flops,
    gradient_pursuit,
    lipschitz,
    matching_pursuit,
    pursuit_flops,
)

METHODS = ("sae", "mlp", "sc_fista", "sc_topk", "ito_mp", "ito_gp", "ito_fista", "sk_omp", "sk_lars")


@dataclass(frozen=True)
class Budget:
    """Training and inference budgets, tuned on the reference cell (N=16, M=8, K=3) until the curves were flat."""

    enc_steps: int = 3000
    """full-batch Adam steps for the SAE and MLP encoders"""
    enc_lr: float = 1e-2
    """Adam learning rate of the SAE (cosine-decayed to 0)"""
    mlp_lr: float = 1e-3
    """... and of the MLP (1e-2 gave it MCC 0.43 against 0.71)"""
    sae_l1: float = 0.5
    """L1 coefficient of the SAE/MLP loss mean_b(|x - x_hat|^2 + l1 |z|_1); L0 ~3.4 at K=3"""
    mlp_width: int = 4
    """MLP hidden width as a multiple of N"""
    resample_every: int = 100
    """restart latents dead on the whole training set every this many steps"""
    resample_stop: float = 0.85
    """... during this first fraction of training, so restarted latents have time to settle"""
    sc_l1: float = 0.1
    """lambda of the FISTA objective 0.5 |x - z D|^2 + lambda |z|_1"""
    sc_outer: int = 200
    """dictionary updates of the MOD sparse-coding trainer"""
    sc_inner: int = 30
    """FISTA iterations per dictionary update (warm-started from the previous codes)"""
    infer_iters: int = 200
    """FISTA iterations at test time (sc_fista, sc_topk)"""
    ito_iters: int = 100
    """FISTA iterations of ito_fista (warm start from the SAE codes)"""
    mbdl_epochs: int = 20
    """passes of MiniBatchDictionaryLearning over the training samples"""
    mbdl_batch: int = 64
    """its mini-batch size"""

    def scaled(self, s: float) -> "Budget":
        """The same budget with every training length multiplied by s (at least 1)."""
        f = lambda v: max(1, int(round(v * s)))  # noqa: E731
        return dataclasses.replace(self, enc_steps=f(self.enc_steps), sc_outer=f(self.sc_outer),
                                   mbdl_epochs=f(self.mbdl_epochs), resample_every=f(self.resample_every))


class MethodResult(NamedTuple):
    codes: torch.Tensor  # [n_test, N_hat]
    D: torch.Tensor | None  # [N_hat, M] unit-norm rows, or None
    x_hat: torch.Tensor  # [n_test, M]
    train_flops: float
    infer_flops_per_sample: float
    shared_seconds: float = 0.0  # training time of a model shared with another method (cached), added to its time


@contextlib.contextmanager
def one_thread():
    """Single-threaded torch inside: on [512, 16] matrices extra threads only cost (on a busy 2-core machine
    a 2-thread FISTA loop ran ~100x slower than a 1-thread one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_method(method: str, setting: str, prob, cache: dict, steps_scale: float = 1.0,
               budget: Budget | None = None) -> MethodResult:
    """Run one method on one problem. `cache` (one dict per problem) shares the trained SAE with the ITO
    methods and the fitted scikit-learn dictionary between OMP and LARS."""
    with one_thread():
        return _run_method(method, setting, prob, cache, (budget or Budget()).scaled(steps_scale))


def _run_method(method: str, setting: str, prob, cache: dict, b: Budget) -> MethodResult:
    if method in ("sae", "mlp"):
        return _amortised(method, setting, prob, cache, b)
    if method in ("sc_fista", "sc_topk"):
        return _sparse_coding(setting, prob, cache, b, topk=method == "sc_topk")
    if method.startswith("ito_"):
        return _ito(method[4:], setting, prob, cache, b)
    if method in ("sk_omp", "sk_lars"):
        return _sklearn(method[3:], setting, prob, cache, b)
    raise ValueError(f"unknown method {method!r}")


# ---------------------------------------------------------------- dictionaries given by the setting

def setting_dictionary(setting: str, prob, cache: dict) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(D [N, M] unit rows, code scale [N], FLOPs) for the settings that give a dictionary.

    known_dict: the true D (scale 1, no cost). known_codes: the least-squares fit of x_train on z_train,
    rows normalised; codes expressed in that dictionary are the true codes times the row norms."""
    if setting == "known_dict":
        return prob.D, torch.ones(prob.n), 0.0
    if setting != "known_codes":
        raise ValueError(f"setting {setting!r} gives no dictionary")
    if "ls_dict" not in cache:
        z, x = prob.z_train, prob.x_train  # [S, N], [S, M]
        gram = z.T @ z + 1e-6 * torch.eye(prob.n)
        D_raw = torch.linalg.solve(gram, z.T @ x)  # [N, M]
        norms = D_raw.norm(dim=1).clamp_min(1e-8)
        S = z.shape[0]
        flops = 2 * S * prob.n ** 2 + 2 * S * prob.n * prob.m + prob.n ** 3 + 2 * prob.n ** 2 * prob.m
        cache["ls_dict"] = (D_raw / norms[:, None], norms, float(flops))
    return cache["ls_dict"]


# ---------------------------------------------------------------- amortised encoders (SAE, MLP)

class Encoders(torch.nn.Module):
    """P independent encoders side by side (batched matmuls over problems with the same N, M).

    SAE: z = relu((x - b_dec) W_enc + b_enc); MLP: z = relu(relu((x - b_dec) W1 + b1) W2 + b2). Adam is
    elementwise, so training P of them on one summed loss is P independent trainings at the cost of ~one:
    the problems are so small that per-step overhead, not arithmetic, is what costs."""

    def __init__(self, kind: str, W_init: torch.Tensor, width: int):  # W_init [P, N, M]: the decoder
        super().__init__()
        self.kind = kind
        P, n, m = W_init.shape
        if kind == "sae":
            self.W = torch.nn.Parameter(W_init.transpose(1, 2).clone())  # [P, M, N] tied initialisation
            self.b = torch.nn.Parameter(torch.zeros(P, 1, n))
        else:  # torch.nn.Linear's default initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            u = lambda shape, fan: (torch.rand(shape) * 2 - 1) / math.sqrt(fan)  # noqa: E731
            self.W1 = torch.nn.Parameter(u((P, m, width), m))
            self.b1 = torch.nn.Parameter(u((P, 1, width), m))
            self.W2 = torch.nn.Parameter(u((P, width, n), width))
            self.b2 = torch.nn.Parameter(u((P, 1, n), width))

    def pre(self, xc: torch.Tensor) -> torch.Tensor:  # xc [P, S, M] already minus b_dec -> pre-activations [P, S, N]
        if self.kind == "sae":
            return torch.baddbmm(self.b, xc, self.W)
        return torch.baddbmm(self.b2, torch.relu(torch.baddbmm(self.b1, xc, self.W1)), self.W2)

    def forward(self, xc: torch.Tensor) -> torch.Tensor:  # -> z [P, S, N]
        return torch.relu(self.pre(xc))

    def select(self, p: int) -> "Encoders":
        """Encoder p alone (P=1), detached, for inference."""
        out = Encoders.__new__(Encoders)
        torch.nn.Module.__init__(out)
        out.kind = self.kind
        for name, t in self.named_parameters():
            setattr(out, name, torch.nn.Parameter(t.detach()[p:p + 1].clone(), requires_grad=False))
        return out


def encoder_flops(kind: str, m: int, n: int, width: int) -> int:
    """Per-sample forward FLOPs of the encoder, pre-bias subtraction included."""
    if kind == "sae":
        return m + 2 * m * n + 2 * n
    return m + 2 * m * width + 2 * width + 2 * width * n + 2 * n


def _cached(cache: dict, key: str, fn):
    """(fn() computed once per problem, seconds it took if an earlier method paid for it, else 0)."""
    if key in cache:
        value, secs = cache[key]
        return value, secs
    t0 = time.perf_counter()
    value = fn()
    cache[key] = (value, time.perf_counter() - t0)
    return value, 0.0


def _amortised(kind: str, setting: str, prob, cache: dict, b: Budget) -> MethodResult:
    """Train an SAE or MLP encoder full-batch; the decoder is learned (`unknown`) or the setting's dictionary."""
    (enc, W_dec, b_dec, train_flops), shared = _cached(
        cache, f"enc_{kind}", lambda: train_encoders(kind, setting, [prob], b, [cache])[0])
    with torch.no_grad():
        z = enc(prob.x_test[None] - b_dec)[0]  # [n_test, N]
        x_hat = z @ W_dec + b_dec
    width = b.mlp_width * prob.n
    return MethodResult(z, W_dec, x_hat, train_flops, encoder_flops(kind, prob.m, prob.n, width), shared)


def pretrain_encoders(setting: str, probs: list, caches: list[dict], kinds: list[str], steps_scale: float = 1.0,
                      budget: Budget | None = None) -> None:
    """Train the encoders of `kinds` for many problems of one (setting, N, M) at once into their caches, so
    `run_method` finds them there; each problem is charged an equal share of the wall time."""
    b = (budget or Budget()).scaled(steps_scale)
    for kind in kinds:
        t0 = time.perf_counter()
        with one_thread():
            trained = train_encoders(kind, setting, probs, b, caches)
        share = (time.perf_counter() - t0) / len(probs)
        for cache, value in zip(caches, trained):
            cache[f"enc_{kind}"] = (value, share)


def train_encoders(kind: str, setting: str, probs: list, b: Budget, caches: list[dict]) -> list[tuple]:
    """Full-batch Adam for P problems of equal shape -> per problem (encoder, W_dec [N, M], b_dec [M], FLOPs)."""
    P, n, m = len(probs), probs[0].n, probs[0].m
    width = b.mlp_width * n
    x = torch.stack([p.x_train for p in probs])  # [P, S, M]
    S = x.shape[1]
    extra_flops = [0.0] * P
    if setting == "unknown":
        W_dec = torch.randn(P, n, m)
        W_dec = torch.nn.Parameter(W_dec / W_dec.norm(dim=-1, keepdim=True))  # [P, N, M]
        b_dec = torch.nn.Parameter(torch.zeros(P, 1, m))
        dec_params = [W_dec, b_dec]
        target = None
    else:
        got = [setting_dictionary(setting, p, c) for p, c in zip(probs, caches)]
        W_dec = torch.stack([g[0] for g in got])
        b_dec, dec_params = torch.zeros(P, 1, m), []
        extra_flops = [g[2] for g in got]
        # known_codes: supervised targets, the true codes in the (renormalised) least-squares dictionary
        target = torch.stack([p.z_train * g[1] for p, g in zip(probs, got)]) if setting == "known_codes" else None
    enc = Encoders(kind, W_dec.detach(), width)
    lr = b.enc_lr if kind == "sae" else b.mlp_lr
    opt = torch.optim.Adam([*enc.parameters(), *dec_params], lr=lr, fused=True)  # fused: ~30% faster here
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, b.enc_steps)
    for step in range(b.enc_steps):
        pre = enc.pre(x - b_dec)  # [P, S, N]
        z = torch.relu(pre)
        if target is not None:
            # |relu(pre) - t|^2 has the same minimisers but no gradient where pre < 0 < t, which left whole
            # output units of the MLP dead (test MCC 0.58-0.93 over seeds): push those up instead
            loss = torch.where(target > 0, pre - target, z).pow(2).sum(-1).mean(-1).sum()
        else:
            x_hat = torch.baddbmm(b_dec, z, W_dec)  # [P, S, M]
            loss = ((x - x_hat).pow(2).sum(-1).mean(-1) + b.sae_l1 * z.sum(-1).mean(-1)).sum()  # z >= 0: |z| = z
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if dec_params:
            with torch.no_grad():
                W_dec /= W_dec.norm(dim=-1, keepdim=True)  # unit-norm decoder rows
        if target is None and step % b.resample_every == 0 and step < b.resample_stop * b.enc_steps:
            with torch.no_grad():
                xc, resid = x - b_dec, x - x_hat
                for p in range(P):
                    resample_dead_(enc, W_dec, opt, p, xc[p], z[p].detach(), resid[p], bool(dec_params))
    n_params = sum(t[0].numel() for t in enc.parameters()) + sum(t[0].numel() for t in dec_params)
    fwd = encoder_flops(kind, m, n, width) + (2 * n * m + 4 * m if target is None else 3 * n) + 2 * n
    step_flops = 3 * S * fwd + 12 * n_params + (3 * n * m if dec_params else 0)
    return [(enc.select(p), W_dec[p].detach().clone(), b_dec[p, 0].detach().clone(),
             float(b.enc_steps * step_flops + extra_flops[p])) for p in range(P)]


@torch.no_grad()
def resample_dead_(enc: Encoders, W_dec: torch.Tensor, opt: torch.optim.Optimizer, p: int, xc: torch.Tensor,
                   z: torch.Tensor, resid: torch.Tensor, learn_dec: bool) -> int:
    """Restart the latents of problem p that fired on no training sample (xc [S, M] = x - b_dec, z [S, N],
    resid [S, M] = x - x_hat).

    Without it the L1 term kills a third of the MLP's output units for good (each then scores 0 in the MCC).
    A dead latent i is pointed at a badly reconstructed sample s: its atom becomes that sample's residual
    when the decoder is learned; otherwise s is the sample whose residual needs atom i most. Its encoder
    weights then make it fire on s (SAE: W_enc[:, i] = 0.2 atom / |xc_s|; MLP: W2[:, i] = 0.2 h_s / |h_s|^2,
    bias 0), and Adam's moments of what changed are cleared. Returns the number restarted."""
    dead = torch.nonzero((z > 0).sum(0) == 0).flatten()
    if dead.numel() == 0:
        return 0
    if learn_dec:
        worst = resid.pow(2).sum(1).topk(int(dead.numel())).indices  # [n_dead] distinct samples
        W_dec[p, dead] = resid[worst] / resid[worst].norm(dim=1, keepdim=True).clamp_min(1e-8)
    else:
        worst = (resid @ W_dec[p, dead].T).argmax(0)  # [n_dead] the sample needing each atom most
    if enc.kind == "sae":
        scale = 0.2 / xc[worst].norm(dim=1).clamp_min(1e-8)  # [n_dead]
        enc.W[p][:, dead] = (W_dec[p, dead] * scale[:, None]).T
        enc.b[p, 0, dead] = 0.0
        changed = [(enc.W, (p, slice(None), dead)), (enc.b, (p, 0, dead))]
    else:
        h = torch.relu(xc[worst] @ enc.W1[p] + enc.b1[p])  # [n_dead, width]
        enc.W2[p][:, dead] = (0.2 * h / h.pow(2).sum(1, keepdim=True).clamp_min(1e-8)).T
        enc.b2[p, 0, dead] = 0.0
        changed = [(enc.W2, (p, slice(None), dead)), (enc.b2, (p, 0, dead))]
    if learn_dec:
        changed.append((W_dec, (p, dead)))
    for t, idx in changed:
        st = opt.state.get(t, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                st[key][idx] = 0.0
    return int(dead.numel())


# ---------------------------------------------------------------- sparse coding

def _sparse_coding(setting: str, prob, cache: dict, b: Budget, topk: bool) -> MethodResult:
    """FISTA codes over the setting's dictionary, or over one learned by MOD in `unknown`."""
    n, m, k = prob.n, prob.m, prob.k
    kk = k if topk else None
    if setting == "unknown":
        D, train_flops = _learn_dictionary_mod(prob, b, kk)
    else:
        D, _, train_flops = setting_dictionary(setting, prob, cache)
    z = fista(prob.x_test, D, b.sc_l1, n_iter=b.infer_iters, nonneg=prob.nonneg, topk=kk)  # [n_test, N]
    return MethodResult(z, D, z @ D, train_flops, fista_flops(n, m, b.infer_iters, topk=topk))


def _learn_dictionary_mod(prob, b: Budget, topk: int | None) -> tuple[torch.Tensor, float]:
    """Alternate FISTA codes (warm-started) with the least-squares dictionary D = (Z^T Z)^-1 Z^T X, rows
    renormalised; an atom no sample uses is restarted at the worst-reconstructed training sample. Like every
    alternating scheme it can stop in a local minimum: at N=16, M=12, K=2 three of six initialisations found all
    16 atoms (code MCC 0.996), the others missed one (0.91-0.95)."""
    n, m = prob.n, prob.m
    x = prob.x_train  # [S, M]
    S = x.shape[0]
    D = x[torch.randperm(S)[:n]].clone() + 0.01 * torch.randn(n, m)  # [N, M] init from data (Engan et al.)
    D = D / D.norm(dim=1, keepdim=True).clamp_min(1e-8)
    z = torch.zeros(S, n)
    for _ in range(b.sc_outer):
        z = fista(x, D, b.sc_l1, n_iter=b.sc_inner, nonneg=prob.nonneg, z0=z, topk=topk)  # [S, N]
        D_raw = torch.linalg.solve(z.T @ z + 1e-6 * torch.eye(n), z.T @ x)  # [N, M]
        norms = D_raw.norm(dim=1)
        dead = (z.abs().sum(0) < 1e-8) | (norms < 1e-6)
        if dead.any():
            err = (x - z @ D).pow(2).sum(1)  # [S]
            worst = err.topk(int(dead.sum())).indices
            D_raw[dead] = x[worst]
            norms = D_raw.norm(dim=1)
        D = D_raw / norms[:, None].clamp_min(1e-8)
        z = z * norms[None, :]  # same reconstruction in the renormalised dictionary
    per_outer = S * fista_flops(n, m, b.sc_inner, topk=topk is not None) \
        + 2 * S * n * n + 2 * S * n * m + n ** 3 + 2 * n * n * m + 3 * n * m + S * n
    return D, float(b.sc_outer * per_outer)


# ---------------------------------------------------------------- SAE + inference-time optimisation

def _ito(how: str, setting: str, prob, cache: dict, b: Budget) -> MethodResult:
    """Codes by MP/GP/FISTA over the trained SAE's decoder (x minus its pre-encoder bias)."""
    (enc, W_dec, b_dec, train_flops), shared = _cached(
        cache, "enc_sae", lambda: train_encoders("sae", setting, [prob], b, [cache])[0])
    n, m, k = prob.n, prob.m, prob.k
    xc = prob.x_test - b_dec  # [n_test, M]
    if how == "mp":
        z = matching_pursuit(xc, W_dec, k, nonneg=prob.nonneg)
        flops = m + pursuit_flops(n, m, k, "mp")
    elif how == "gp":
        z = gradient_pursuit(xc, W_dec, k, nonneg=prob.nonneg)
        flops = m + pursuit_flops(n, m, k, "gp")
    else:
        with torch.no_grad():
            z0 = enc(xc[None])[0]
        z = fista(xc, W_dec, b.sc_l1, n_iter=b.ito_iters, nonneg=prob.nonneg, z0=z0, L=lipschitz(W_dec))
        flops = encoder_flops("sae", m, n, 0) + fista_flops(n, m, b.ito_iters)
    return MethodResult(z, W_dec, z @ W_dec + b_dec, train_flops, flops, shared)


# ---------------------------------------------------------------- scikit-learn baselines

def omp_flops(n: int, m: int, k: int) -> int:
    """Per-sample FLOPs of Gram-form OMP: x D^T (2nm), then per step t an argmax (n), a Cholesky update and two
    triangular solves (~3t^2) and the correlation update (2tn)."""
    return 2 * n * m + sum(n + 3 * t * t + 2 * t * n for t in range(1, k + 1))


def _sklearn(how: str, setting: str, prob, cache: dict, b: Budget) -> MethodResult:
    from sklearn.decomposition import sparse_encode

    n, m, k = prob.n, prob.m, prob.k
    shared = 0.0
    if setting == "unknown":
        (D, train_flops), shared = _cached(cache, "mbdl", lambda: _fit_mbdl(prob, b))
    else:
        D, _, train_flops = setting_dictionary(setting, prob, cache)
    Dn = D.double().numpy()
    xt = prob.x_test.double().numpy()
    if how == "omp":
        z = sparse_encode(xt, Dn, algorithm="omp", n_nonzero_coefs=k)
        flops = omp_flops(n, m, k)
    else:
        # sparse_encode divides alpha by m and LassoLars minimises (1/(2m)) |x - z D|^2 + (alpha/m) |z|_1, which is
        # FISTA's objective over m: alpha = lambda
        z = sparse_encode(xt, Dn, algorithm="lasso_lars", alpha=b.sc_l1, positive=prob.nonneg)
        # LARS runs one OMP-like step per change of the active set: count steps as the L0 it reached
        steps = int(math.ceil(float((np.abs(z) > 1e-8).sum(1).mean())))
        flops = omp_flops(n, m, max(steps, 1))
    z = torch.from_numpy(np.asarray(z)).float()
    return MethodResult(z, D, z @ D, train_flops, flops, shared)


def _fit_mbdl(prob, b: Budget) -> tuple[torch.Tensor, float]:
    """MiniBatchDictionaryLearning on the training samples (coordinate-descent coding, non-negative codes when
    the sources are)."""
    import warnings

    from sklearn.decomposition import MiniBatchDictionaryLearning

    n, m = prob.n, prob.m
    x = prob.x_train.double().numpy()
    S = x.shape[0]
    batch = b.mbdl_batch
    seed = int(torch.randint(0, 2 ** 31 - 1, (1,)))
    dl = MiniBatchDictionaryLearning(n_components=n, alpha=b.sc_l1, batch_size=batch,
                                     max_iter=b.mbdl_epochs, fit_algorithm="cd", positive_code=prob.nonneg,
                                     random_state=seed, tol=0.0, max_no_improvement=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dl.fit(x)
    D = torch.from_numpy(dl.components_).float()
    D = D / D.norm(dim=1, keepdim=True).clamp_min(1e-8)
    # per mini-batch step: coding (coordinate descent, ~20 sweeps of 2n^2 over the Gram form + x D^T) and a
    # block-coordinate dictionary update (A, B statistics 2 batch n^2 + 2 batch n m, then n atom updates of 4 n m)
    steps = b.mbdl_epochs * math.ceil(S / batch)
    per_step = batch * (2 * n * m + 20 * 2 * n * n) + 2 * batch * n * n + 2 * batch * n * m + n * 4 * n * m
    return D, float(steps * per_step)
