"""Flag thresholds chosen on held-out in-domain text, one per domain.

For domain D, the held-out sequences of the run whose source is in D are text the model reads as D
by construction (a math problem of the corpus is math). Their tokens' out-of-domain mass (detect.py)
is what "not misread" looks like. The held-out sequences are split by parity: on the even ones (dev)
the threshold is the (1 - false_flag_rate) quantile of the token out-of-domain mass; on the odd ones
(eval) we report the share of tokens above it and the share of 16-token windows with a token above it
(a prompt-level false-flag rate). Nothing here is fitted on the training tokens that made the domains.
"""

from __future__ import annotations

import numpy as np
import torch

from backend.common.layout import TOKENS, dict_dir, load_run

WINDOW = 16  # tokens per "prompt" when the prompt-level false-flag rate is reported


def ood_mass(codes: torch.Tensor | np.ndarray, p: np.ndarray, d: int) -> np.ndarray:
    """[N] share of each token's activation mass on features outside domain d: sum_i f_i (1 - p_i(d)) / sum_i f_i
    (codes [N, d_sae] >= 0, p [d_sae, n_domains]); 0 for a token on which nothing fires."""
    f = torch.as_tensor(codes).float()
    out_w = torch.as_tensor(1.0 - p[:, d], dtype=torch.float32)
    total = f.sum(1)
    off = f @ out_w
    return torch.where(total > 0, off / total.clamp_min(1e-12), torch.zeros_like(total)).numpy()


@torch.no_grad()
def heldout_ood(run, dict_name: str, p: np.ndarray, domains: list[str], device: str = "cpu",
                batch: int = 4096) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{domain: (ood mass of each held-out token of that domain [N], its sequence [N])} under its own domain."""
    import pyarrow.parquet as pq

    from backend.activations.activation_store import ActivationStore
    from backend.diagnosis.domains import source_domain
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
            vals.append(ood_mass(dictionary.encode(x).float().cpu(), p, j))
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


def calibrate_thresholds(run, dict_name: str, p: np.ndarray, domains: list[str], false_flag_rate: float,
                         device: str = "cpu", progress: bool = False) -> dict[str, dict]:
    """{domain: {threshold, n_dev, n_eval, eval_token_rate, eval_window_rate, dev_seqs, eval_seqs}}."""
    out = {}
    for d, (ood, seq) in heldout_ood(run, dict_name, p, domains, device).items():
        dev = seq % 2 == 0
        if dev.sum() == 0 or (~dev).sum() == 0:  # one held-out sequence: both halves from its tokens
            dev = np.arange(len(seq)) % 2 == 0
        thr = float(np.quantile(ood[dev], 1.0 - false_flag_rate))
        ev = ~dev
        out[d] = {"threshold": thr, "n_dev": int(dev.sum()), "n_eval": int(ev.sum()),
                  "dev_seqs": int(len(np.unique(seq[dev]))), "eval_seqs": int(len(np.unique(seq[ev]))),
                  "eval_token_rate": float((ood[ev] > thr).mean()),
                  "eval_window_rate": window_rate(ood[ev], seq[ev], thr),
                  "median_ood": float(np.median(ood))}
        if progress:
            r = out[d]
            print(f"  {d}: threshold {thr:.3f} (dev {r['n_dev']} tokens); eval {r['n_eval']} tokens: "
                  f"{r['eval_token_rate']:.1%} flagged, {r['eval_window_rate']:.1%} of {WINDOW}-token windows")
    return out
