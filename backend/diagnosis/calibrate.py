"""Out-of-domain weights of features, and the flag thresholds chosen on held-out in-domain text.

A feature's out-of-domain weight for the expected domain D is how much more it belongs to some other domain:

    w_i(D) = max(0, max_{D' != D} p_i(D') - p_i(D))        in [0, 1]
    ood_t  = sum_i f_ti w_i(D) / sum_i f_ti                 the token's out-of-domain mass

A feature of another domain (a code feature in a math prompt: p(code) 0.8, p(math) 0.05) weighs 0.75; a
feature that fires in every domain alike (function words, punctuation) weighs ~0, not 1 - 1/n: with the plain
share of mass outside D (sum f (1 - p(D)) / sum f, kept as `outside`), "with", "a" and "What" of a word problem
scored as high as the `|` of "|3 - 11|" on the demo's TopK dictionary (0.74-0.87), with the margin the `|`
stands out (0.41 against at most 0.27 for words of a word problem; README: diagnosis).

For domain D, the held-out sequences of the run whose source is in D are text the model reads as D by
construction (a math problem of the corpus is math); their tokens' ood is what "not misread" looks like.
The threshold is the (1 - false_flag_rate) quantile of it over all those tokens. Its false-flag rate is
reported by 2-fold cross-fitting over sequences (threshold from the even sequences applied to the odd ones
and back): tokens and 16-token windows above it. Nothing here is fitted on the training tokens that made
the domains.
"""

from __future__ import annotations

import numpy as np
import torch

from backend.common.layout import TOKENS, dict_dir, load_run

WINDOW = 16  # tokens per "prompt" when the prompt-level false-flag rate is reported


def off_domain_weights(p: np.ndarray, d: int) -> np.ndarray:
    """[d_sae] w_i = max(0, max over other domains of p_i - p_i(d)) from p [d_sae, n_domains]."""
    other = np.delete(p, d, axis=1)
    if other.shape[1] == 0:
        return np.zeros(len(p), np.float32)
    return np.clip(other.max(1) - p[:, d], 0.0, 1.0).astype(np.float32)


def ood_mass(codes: torch.Tensor | np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[N] activation-weighted mean of per-feature weights [d_sae] over each token's codes [N, d_sae] (>= 0);
    0 for a token on which nothing fires."""
    f = torch.as_tensor(codes).float()
    w = torch.as_tensor(weights, dtype=torch.float32)
    total = f.sum(1)
    off = f @ w
    return torch.where(total > 0, off / total.clamp_min(1e-12), torch.zeros_like(total)).numpy()


@torch.no_grad()
def heldout_ood(run, dict_name: str, p: np.ndarray, domains: list[str], device: str = "cpu",
                batch: int = 4096) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{domain: (ood mass of each held-out token of that domain [N], its sequence [N])} under its own domain."""
    import pyarrow.parquet as pq

    from backend.activations.activation_store import ActivationStore
    from backend.diagnosis.source_domains import source_domain
    from backend.dictionaries import load_dictionary

    meta = load_run(run)
    store = ActivationStore(run, exclude_massive=True)
    acts, idx = store.load_split("test")
    if len(idx) == 0:
        return {}
    tok = pq.read_table(f"{run}/{TOKENS}", columns=["seq", "source"]).to_pandas().drop_duplicates("seq")
    src = dict(zip(tok["seq"].astype(int), tok["source"].astype(str)))
    seq = idx // int(meta["ctx_len"])
    dom = np.array([source_domain(src.get(int(s), "")) for s in seq], dtype=object)
    dictionary = load_dictionary(dict_dir(run, dict_name), device=device)
    out = {}
    for j, d in enumerate(domains):
        rows = np.flatnonzero(dom == d)
        if len(rows) == 0:
            continue
        vals = []
        for a in range(0, len(rows), batch):
            x = torch.from_numpy(np.ascontiguousarray(acts[rows[a:a + batch]])).to(device)
            vals.append(ood_mass(dictionary.encode(x).float().cpu(), off_domain_weights(p, j)))
        out[d] = (np.concatenate(vals), seq[rows])
    return out


def window_rate(ood: np.ndarray, seq: np.ndarray, threshold: float, window: int = WINDOW) -> float:
    """Share of consecutive `window`-token chunks (within a sequence) holding a token above the threshold."""
    hits = []
    for s in np.unique(seq):
        v = ood[seq == s]
        for a in range(0, len(v) - window + 1, window):
            hits.append(bool((v[a:a + window] > threshold).any()))
    return float(np.mean(hits)) if hits else float("nan")


def _cross_fit(ood: np.ndarray, seq: np.ndarray, q: float) -> tuple[float, float, int, int]:
    """(token rate, window rate, n_a, n_b): thresholds from one half of the sequences applied to the other, averaged."""
    a = seq % 2 == 0
    if a.all() or not a.any():  # one held-out sequence: split its tokens instead
        a = np.arange(len(seq)) % 2 == 0
    tok, win = [], []
    for fit, test in ((a, ~a), (~a, a)):
        thr = float(np.quantile(ood[fit], q))
        tok.append(float((ood[test] > thr).mean()))
        win.append(window_rate(ood[test], seq[test], thr))
    return float(np.mean(tok)), float(np.nanmean(win)) if not np.isnan(win).all() else float("nan"), int(a.sum()), int((~a).sum())


def calibrate_thresholds(run, dict_name: str, p: np.ndarray, domains: list[str], false_flag_rate: float,
                         device: str = "cpu", progress: bool = False) -> dict[str, dict]:
    """{domain: {threshold, n_tokens, n_seqs, crossfit_token_rate, crossfit_window_rate, median_ood}}."""
    out = {}
    q = 1.0 - false_flag_rate
    for d, (ood, seq) in heldout_ood(run, dict_name, p, domains, device).items():
        if len(ood) < 2:
            continue
        tok_rate, win_rate, _, _ = _cross_fit(ood, seq, q)
        out[d] = {"threshold": float(np.quantile(ood, q)), "n_tokens": int(len(ood)), "n_seqs": int(len(np.unique(seq))),
                  "crossfit_token_rate": tok_rate, "crossfit_window_rate": win_rate,
                  "median_ood": float(np.median(ood)), "false_flag_rate": false_flag_rate}
        if progress:
            r = out[d]
            print(f"  {d}: threshold {r['threshold']:.3f} ({r['n_tokens']} held-out tokens in {r['n_seqs']} sequences); "
                  f"cross-fitted: {tok_rate:.1%} of tokens, {win_rate:.1%} of {WINDOW}-token windows flagged")
    return out
