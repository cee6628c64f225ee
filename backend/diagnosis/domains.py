"""Each feature's domain distribution: from where it fires and from what its label says.

Domains are groups of corpus sources (`DOMAIN_TABLE`: math problems, Python source, fiction,
speeches, expository prose). For feature i and domain D:

    fires_i(D) ∝ m_i(D) / b(D)     m_i(D) = sum of i's activations on training tokens whose source is in D,
                                    b(D)   = share of training tokens in D (so a feature that fires at the
                                             corpus's base rate everywhere is uniform, not "mostly Brown")
    label_i(D) = softmax_D(cos(e(label_i), e(D)) / tau)
                                    e = all-MiniLM-L6-v2 embeddings of the label text and of the domain's
                                    description: the label's current version, so a human edit counts
    p_i(D)     = (1 - w) fires_i(D) + w label_i(D)          (w = label_weight; fires only when i has no label)

A feature that never fired on a training token has p_i = its label distribution (or uniform). The
per-token out-of-domain mass of `detect.py` reads p_i. Held-out tokens (never used here) calibrate the
flag thresholds (`calibrate.py`). Written as `dictionaries/<d>/domains.parquet` + `domains.json`.
Yang et al. 2025 (arXiv 2507.06427) classify feature labels into domains with an LLM; we classify them
by embedding similarity (offline) and add the firing distribution, which needs no label at all.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from backend.common.atomic import atomic_path, read_json, write_json
from backend.common.errors import UserError
from backend.common.layout import DOMAINS, DOMAINS_JSON, FEATURE_ACTS, TOKENS, dict_dir, load_run
from backend.diagnosis.source_domains import description, source_domain


@dataclass
class DomainsConfig:
    """How `python -m backend domains` gives each feature a domain distribution."""

    label_weight: float = 0.25
    """Weight w of the label's domain distribution against the firing one (0 = fires only, 1 = labels only).
    Low because most automatic labels name tokens, not topics, and embed near every domain alike; a label
    that names a topic still moves the argmax of a feature that fires everywhere."""
    tau: float = 0.05
    """Softmax temperature on label-domain cosines: MiniLM's cosines of a short label with the five
    descriptions span ~0.1, so 0.05 turns a clear topic into ~75% on one domain and a token list into ~uniform."""
    false_flag_rate: float = 0.01
    """Share of held-out in-domain tokens flagged at the threshold: the threshold is this upper quantile of their
    out-of-domain mass (calibrate.py; a 2-fold cross-fit over held-out sequences reports the rate it really gives)."""


@dataclass
class FeatureDomains:
    """A dictionary's domains.parquet in memory: p [d_sae, n_domains] and what made it."""

    domains: list[str]
    p: np.ndarray  # [d_sae, n_domains] float32, rows sum to 1
    table: pd.DataFrame  # domains.parquet
    meta: dict = field(default_factory=dict)  # domains.json

    def index(self, domain: str) -> int:
        if domain not in self.domains:
            raise UserError(f"unknown domain {domain!r}; this dictionary's domains are {', '.join(self.domains)}")
        return self.domains.index(domain)

    def threshold(self, domain: str) -> float:
        t = (self.meta.get("thresholds") or {}).get(domain, {}).get("threshold")
        if t is None:
            raise UserError(f"no flag threshold for domain {domain!r}: the run has no held-out {domain} tokens; "
                            "pass --threshold")
        return float(t)


def training_mass(run: str | Path, dict_name: str, meta: dict) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(mass [d_sae, n_domains] summed activation per domain on training tokens, domain names, base rate [n])."""
    from backend.store import query as store

    acts = store.store_file(run, dict_name, FEATURE_ACTS)
    seqs = store.query_numpy("SELECT seq, any_value(source) AS source, count(*) FILTER (WHERE pos > 0) AS n "
                             "FROM read_parquet(?) GROUP BY seq ORDER BY seq", [str(Path(run) / TOKENS)])
    dom_of_seq = np.array([source_domain(str(s)) for s in seqs["source"]], dtype=object)
    domains = sorted(set(dom_of_seq))
    code = {d: i for i, d in enumerate(domains)}
    seq_dom = np.full(int(meta["n_seqs"]), -1, np.int32)
    seq_dom[seqs["seq"].astype(np.int64)] = [code[d] for d in dom_of_seq]
    train = seqs["seq"] < int(meta.get("heldout_from", meta["n_seqs"]))
    base = np.array([seqs["n"][train & (dom_of_seq == d)].sum() for d in domains], np.float64)
    con = store.connect()
    try:
        con.register("seq_domain", pd.DataFrame({"seq": np.arange(len(seq_dom)), "dom": seq_dom}))
        r = con.execute("SELECT a.feature, s.dom, sum(a.value) AS mass FROM read_parquet(?) a "
                        "JOIN seq_domain s ON s.seq = a.token_index // ? WHERE a.token_index < ? AND s.dom >= 0 "
                        "GROUP BY ALL", [acts, int(meta["ctx_len"]),
                                         int(meta.get("heldout_from", meta["n_seqs"])) * int(meta["ctx_len"])]).fetchnumpy()
        d_sae = int(con.execute("SELECT count(*) FROM read_parquet(?)", [store.store_file(run, dict_name, "features.parquet")]).fetchone()[0])
    finally:
        con.close()
    mass = np.zeros((d_sae, len(domains)), np.float64)
    np.add.at(mass, (r["feature"].astype(np.int64), r["dom"].astype(np.int64)), r["mass"].astype(np.float64))
    return mass, domains, base / max(base.sum(), 1.0)


def fires_distribution(mass: np.ndarray, base: np.ndarray) -> np.ndarray:
    """[d_sae, n] rows ∝ mass / base rate; uniform for a feature that never fired (or a domain absent)."""
    n = mass.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = np.where(base[None, :] > 0, mass / base[None, :], 0.0)
    tot = lift.sum(1, keepdims=True)
    return np.where(tot > 0, lift / np.where(tot > 0, tot, 1.0), 1.0 / n)


def label_distribution(label_emb: np.ndarray, domain_emb: np.ndarray, tau: float) -> np.ndarray:
    """[n_labels, n] softmax over domains of label-description cosines / tau (unit-norm embeddings)."""
    z = label_emb @ domain_emb.T / tau  # [n_labels, n]
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def combine(fires: np.ndarray, labels: np.ndarray, has_label: np.ndarray, fired: np.ndarray, w: float) -> np.ndarray:
    """p = (1 - w) fires + w label where a feature has both; fires alone without a label; label alone if it never fired."""
    p = fires.copy()
    both = has_label & fired
    p[both] = (1 - w) * fires[both] + w * labels[both]
    only_label = has_label & ~fired
    p[only_label] = labels[only_label]
    return p


def _label_part(run, dict_name, d_sae: int, domains: list[str], tau: float, model=None):
    """(label distribution [d_sae, n], has_label [d_sae] bool, labels DataFrame) from the current labels."""
    from backend.labels.embeddings import embed, label_embeddings

    labels, emb = label_embeddings(run, dict_name, model=model)
    if len(labels) == 0:
        raise UserError(f"dictionary {dict_name!r} has no labels; run `python -m backend explain --run {run} "
                        f"--dict {dict_name}` first")
    dom_emb = embed([description(d) for d in domains], model)
    dist = np.full((d_sae, len(domains)), 1.0 / len(domains))
    has = np.zeros(d_sae, bool)
    feats = labels["feature"].to_numpy(np.int64)
    ok = feats < d_sae
    dist[feats[ok]] = label_distribution(emb[ok], dom_emb, tau)
    has[feats[ok]] = True
    return dist, has, labels


def compute_domains(run: str | Path, dict_name: str, cfg: DomainsConfig | None = None, model=None,
                    calibrate: bool = True, device: str = "cpu", progress: bool = True) -> Path:
    """Write dictionaries/<d>/domains.parquet (+ domains.json with the flag thresholds); returns its path."""
    cfg = cfg or DomainsConfig()
    if not 0.0 <= cfg.label_weight <= 1.0:
        raise UserError(f"--label-weight must be in [0, 1], got {cfg.label_weight}")
    if cfg.tau <= 0:
        raise UserError(f"--tau must be positive, got {cfg.tau}")
    if not 0.0 < cfg.false_flag_rate < 0.5:
        raise UserError(f"--false-flag-rate must be in (0, 0.5), got {cfg.false_flag_rate}")
    t0 = time.perf_counter()
    meta = load_run(run)
    mass, domains, base = training_mass(run, dict_name, meta)
    d_sae = mass.shape[0]
    fires = fires_distribution(mass, base)
    label_dist, has_label, labels = _label_part(run, dict_name, d_sae, domains, cfg.tau, model)
    p = combine(fires, label_dist, has_label, mass.sum(1) > 0, cfg.label_weight)
    table = domain_table(p, fires, label_dist, has_label, mass, domains)
    folder = dict_dir(run, dict_name)
    with atomic_path(folder / DOMAINS) as tmp:
        table.to_parquet(tmp, index=False)
    info = {"domains": domains, "base_rate": dict(zip(domains, base.round(6).tolist())), **asdict(cfg),
            "n_labelled": int(has_label.sum()), "n_fired": int((mass.sum(1) > 0).sum()), "d_sae": d_sae,
            "descriptions": {d: description(d) for d in domains}, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if calibrate:
        from backend.diagnosis.calibrate import calibrate_thresholds

        info["thresholds"] = calibrate_thresholds(run, dict_name, p, domains, cfg.false_flag_rate, device=device,
                                                  progress=progress)
    info["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(folder / DOMAINS_JSON, info)
    return folder / DOMAINS


def domain_table(p, fires, label_dist, has_label, mass, domains) -> pd.DataFrame:
    """domains.parquet: feature, domain (argmax of p), domain_share, has_label, fire_mass, then p_/fires_/label_<D>."""
    top = p.argmax(1)
    fired = mass.sum(1) > 0
    cols = {"feature": np.arange(len(p), dtype=np.int32),
            "domain": np.where(fired | has_label, np.asarray(domains, dtype=object)[top], ""),
            "domain_share": p[np.arange(len(p)), top].astype(np.float32),
            "has_label": has_label, "fire_mass": mass.sum(1).astype(np.float32)}
    for prefix, arr in (("p", p), ("fires", fires), ("label", label_dist)):
        for j, d in enumerate(domains):
            cols[f"{prefix}_{d}"] = arr[:, j].astype(np.float32)
    return pd.DataFrame(cols)


def load_domains(run: str | Path, dict_name: str) -> FeatureDomains:
    """domains.parquet and domains.json of a dictionary, or a UserError saying how to make them."""
    folder = dict_dir(run, dict_name)
    if not (folder / DOMAINS).is_file() or not (folder / DOMAINS_JSON).is_file():
        raise UserError(f"dictionary {dict_name!r} has no feature domains yet; run "
                        f"`python -m backend domains --run {run} --dict {dict_name}`")
    meta = read_json(folder / DOMAINS_JSON)
    table = pd.read_parquet(folder / DOMAINS)
    domains = list(meta["domains"])
    p = table[[f"p_{d}" for d in domains]].to_numpy(np.float32)
    return FeatureDomains(domains, p, table, meta)
