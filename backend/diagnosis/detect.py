"""Detection: which tokens of a prompt the model reads as belonging to another domain.

    ids    = [BOS] + tokenizer(text)                     # as the cache and the task scorer tokenise
    f      = encode(hook activation of ids)              # [T, d_sae], position 0 zeroed (never analysed)
    w_i    = max(0, max_{D' != D} p_i(D') - p_i(D))      # how much more feature i belongs to another domain
    ood_t  = sum_i f_ti w_i / sum_i f_ti                 # out-of-domain mass of token t for expected domain D
    flag_t = t in the region  and  ood_t > threshold_D   # threshold from held-out in-domain text (calibrate.py)

p_i is the feature's domain distribution (domains.py); calibrate.py says why the margin w_i and not the
plain share 1 - p_i(D) (kept as the `outside` column). The region is the span of the text that is
diagnosed (for a task item: the question, not the framing around it); tokens outside it are shown but
never flagged. The prompt's score is the largest out-of-domain mass in the region. For each token we
keep its top-k features with their labels and domains: what the reader sees to judge the flag.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from backend.common.errors import UserError
from backend.corpus.contexts import bos_id
from backend.diagnosis.calibrate import off_domain_weights, ood_mass
from backend.diagnosis.domains import FeatureDomains

TOP_K = 5  # features shown per token
OFF_DOMAIN = 0.25  # a feature is off-domain (what the ablation removes) when its weight w_i is at least this


@dataclass
class Diagnosis:
    """One prompt's diagnosis; `table` has one row per token after position 0."""

    text: str
    domain: str
    threshold: float
    region: tuple[int, int]  # [start, end) characters of `text` that may be flagged
    tokens: list[str]  # [T] token strings, BOS at 0 when the model has one
    table: pd.DataFrame  # pos, token, start, end, in_region, mass, ood, outside, flagged, features, acts, labels, domains
    features: pd.DataFrame  # pos, rank, feature, activation, label, domain, p_expected, weight: top-k of each token
    seconds: float = 0.0
    off_domain: dict[int, list[int]] = field(default_factory=dict)  # flagged pos -> every active feature with w_i >= OFF_DOMAIN

    @property
    def flagged(self) -> pd.DataFrame:
        return self.table[self.table["flagged"]]

    @property
    def flagged_spans(self) -> list[tuple[int, int]]:
        return [(int(s), int(e)) for s, e in zip(self.flagged["start"], self.flagged["end"])]

    def ablation(self) -> tuple[list[int], list[int]]:
        """(features, positions) to zero-ablate instead of rewording: the off-domain features at the flagged tokens."""
        feats = sorted({f for fs in self.off_domain.values() for f in fs})
        return feats, sorted(self.off_domain)

    @property
    def score(self) -> float:
        r = self.table[self.table["in_region"]]
        return float(r["ood"].max()) if len(r) else 0.0

    def summary(self) -> dict:
        r = self.table[self.table["in_region"]]
        return {"domain": self.domain, "threshold": self.threshold, "score": self.score,
                "n_tokens": int(len(r)), "n_flagged": int(r["flagged"].sum()), "flagged": bool(r["flagged"].any()),
                "mean_ood": float(r["ood"].mean()) if len(r) else 0.0,
                "flagged_tokens": self.flagged["token"].tolist(), "seconds": round(self.seconds, 4)}

    def to_json(self) -> dict:
        rows = self.table.drop(columns=[]).to_dict("records")
        for r in rows:
            for k, v in list(r.items()):
                if isinstance(v, np.generic):
                    r[k] = v.item()
                elif isinstance(v, np.ndarray):
                    r[k] = v.tolist()
        return {"text": self.text, "region": list(self.region), **self.summary(), "tokens": rows}


def tokenize_with_offsets(tokenizer, text: str, max_tokens: int = 512) -> tuple[list[int], list[tuple[int, int]]]:
    """(ids with BOS prepended as the cache does, character span of each id in `text`; BOS gets (0, 0))."""
    if not isinstance(text, str) or not text.strip():
        raise UserError("the prompt is empty: give some text to diagnose")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offs = list(enc["input_ids"]), [tuple(map(int, o)) for o in enc["offset_mapping"]]
    bos = bos_id(tokenizer)
    if bos is not None:
        ids, offs = [int(bos)] + ids, [(0, 0)] + offs
    if len(ids) > max_tokens:
        raise UserError(f"the prompt has {len(ids)} tokens; at most {max_tokens} are diagnosed")
    if len(ids) < 2:
        raise UserError("the prompt gives no token after position 0; give a longer text")
    return ids, offs


@torch.no_grad()
def encode_codes(dictionary, acts: torch.Tensor) -> torch.Tensor:
    """Codes [T, d_sae] (float32, CPU) of hook activations acts [T, d_in]; position 0 zeroed."""
    dev = next(iter(dictionary.parameters()), torch.empty(0)).device
    f = dictionary.encode(acts.float().to(dev)).float().cpu()
    f[0] = 0.0
    return f


def diagnose_codes(text: str, codes: torch.Tensor, tokens: list[str], offsets: list[tuple[int, int]],
                   domains: FeatureDomains, domain: str, threshold: float, labels: dict[int, str] | None = None,
                   region: tuple[int, int] | None = None, top_k: int = TOP_K) -> Diagnosis:
    """The diagnosis of one prompt from its codes [T, d_sae] (the pure part: no model)."""
    d = domains.index(domain)
    labels = labels or {}
    start, end = region if region is not None else (0, len(text))
    T = codes.shape[0]
    w = off_domain_weights(domains.p, d)
    ood = ood_mass(codes, w)
    outside = ood_mass(codes, 1.0 - domains.p[:, d])
    mass = codes.sum(1).numpy()
    k = min(top_k, codes.shape[1])
    vals, idx = codes.topk(k, dim=1)  # [T, k]
    vals, idx = vals.numpy(), idx.numpy()
    dom_names = domains.table["domain"].to_numpy()
    p_exp = domains.p[:, d]
    rows, feats = [], []
    for t in range(1, T):
        s, e = offsets[t]
        in_region = e > start and s < end
        live = vals[t] > 0
        f_ids = idx[t][live].tolist()
        rows.append({"pos": t, "token": tokens[t], "start": s, "end": e, "in_region": in_region,
                     "mass": float(mass[t]), "ood": float(ood[t]), "outside": float(outside[t]),
                     "flagged": bool(in_region and mass[t] > 0 and ood[t] > threshold),
                     "features": f_ids, "acts": vals[t][live].astype(float).tolist(),
                     "labels": [labels.get(int(f), "") for f in f_ids], "domains": [str(dom_names[f]) for f in f_ids]})
        for r, (f, a) in enumerate(zip(f_ids, vals[t][live])):
            feats.append({"pos": t, "rank": r + 1, "feature": int(f), "activation": float(a),
                          "label": labels.get(int(f), ""), "domain": str(dom_names[f]), "p_expected": float(p_exp[f]),
                          "weight": float(w[f])})
    table = pd.DataFrame(rows, columns=["pos", "token", "start", "end", "in_region", "mass", "ood", "outside", "flagged",
                                        "features", "acts", "labels", "domains"])
    features = pd.DataFrame(feats, columns=["pos", "rank", "feature", "activation", "label", "domain", "p_expected", "weight"])
    off = {int(t): [int(f) for f in torch.nonzero(codes[t] > 0).flatten().tolist() if w[f] >= OFF_DOMAIN]
           for t in table.loc[table["flagged"], "pos"]}
    return Diagnosis(text, domain, float(threshold), (int(start), int(end)), list(tokens), table, features,
                     off_domain={t: fs for t, fs in off.items() if fs})


def check_region(text: str, region: tuple[int, int] | None) -> tuple[int, int]:
    if region is None:
        return 0, len(text)
    s, e = int(region[0]), int(region[1])
    if not 0 <= s < e <= len(text):
        raise UserError(f"region {s}..{e} is not inside the text (0..{len(text)})")
    return s, e


@torch.no_grad()
def diagnose_text(lm, dictionary, hook: str, text: str, domains: FeatureDomains, domain: str,
                  labels: dict[int, str] | None = None, threshold: float | None = None,
                  region: tuple[int, int] | None = None, top_k: int = TOP_K) -> Diagnosis:
    """Run `text` through the model up to `hook` and the dictionary; flag its out-of-domain tokens."""
    from backend.corpus.contexts import token_strings
    from backend.model import hooks
    from backend.model.forward import HOOK_LOCK

    t0 = time.perf_counter()
    thr = domains.threshold(domain) if threshold is None else float(threshold)
    domains.index(domain)
    region = check_region(text, region)
    limit = int(getattr(lm.model.config, "max_position_embeddings", 512) or 512)
    ids, offsets = tokenize_with_offsets(lm.tokenizer, text, min(512, limit))
    hp = hooks.parse_hook(hook, hooks.n_layers(lm.model))
    with HOOK_LOCK:
        acts = hooks.capture(lm.model, hp, torch.tensor([ids], device=lm.device))[0]  # [T, d_in]
    codes = encode_codes(dictionary, acts)
    tokens = token_strings(lm.tokenizer, np.asarray(ids))
    diag = diagnose_codes(text, codes, tokens, offsets, domains, domain, thr, labels, region, top_k)
    diag.seconds = time.perf_counter() - t0
    return diag
