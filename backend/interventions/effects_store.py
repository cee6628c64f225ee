"""`dictionaries/<d>/effects.parquet`: what zero-ablating each feature does on its own top contexts.

For every feature (or the `top` densest), its top `n_contexts` contexts (contexts.parquet, group "top") are
run clean and with the feature zero-ablated at every position of the window the feature page shows, from
`WINDOW_BEFORE` tokens before the peak on (effects.top_context_effects' definition):

    loss_change_peak   mean over contexts of the loss change of the prediction made at the peak token
    loss_change_after  mean over contexts of the mean loss change over the `after` positions after the peak
    n_contexts         contexts used

(nats; > 0: without the feature the model predicts the text worse, i.e. the feature was helping). Only
positions up to peak + after are computed, each sequence from its cached hook activation through the
layers after the hook, once for all the contexts of the `features_per_chunk` features that lie on it; each
ablation then runs again only from the first position it changes. Work is saved per chunk in
`effects.partial/` and an interrupted run continues where it stopped; the finished file replaces the old
one atomically, with `effects.json` (settings, timings) beside it.

Cost: one clean downstream pass per sequence and chunk, plus each ablation from its first change to peak + 9.
The demo (4,608 features x 20 contexts, 15
of 30 layers of SmolLM2-135M) takes hours on 2 CPU cores (bench/bench_interventions.py measures it), so
`top` restricts it to the densest features there; on a GPU the whole dictionary is minutes.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from backend.common.atomic import atomic_path, write_json
from backend.common.errors import UserError
from backend.common.layout import EFFECTS, EFFECTS_JSON, dict_dir
from backend.interventions.edits import Edit, resolve
from backend.interventions.effects import WINDOW_BEFORE, context_rows, effects_of_rows, peak_summary
from backend.interventions.inputs import check_dictionary
from backend.interventions.run_data import RunData, analysed_file

PARTIAL_DIR = "effects.partial"
COLUMNS = ("feature", "loss_change_peak", "loss_change_after", "n_contexts")


@dataclass
class EffectsConfig:
    n_contexts: int = 20
    """The top contexts the feature page shows."""
    after: int = 8
    """Positions after the peak: the feature page's window ends 8 tokens after the peak."""
    top: int | None = None
    """Only the `top` densest alive features (None: every alive feature)."""
    features_per_chunk: int = 256
    """Unit of resumable work; the chunk's contexts on one sequence share its clean pass."""
    batch_seqs: int = 8
    """Sequences per clean pass."""

    def __post_init__(self):
        if self.n_contexts < 1 or self.after < 0 or self.features_per_chunk < 1 or self.batch_seqs < 1:
            raise UserError("n_contexts, features_per_chunk and batch_seqs must be >= 1 and after >= 0")
        if self.top is not None and self.top < 1:
            raise UserError(f"--top must be >= 1, not {self.top}")


def chosen_features(data: RunData, top: int | None) -> np.ndarray:
    """Alive features, densest first (ties by id), the first `top` of them when given."""
    dens = data.densities()
    alive = np.flatnonzero(dens > 0)
    order = alive[np.lexsort((alive, -dens[alive]))]
    return order[:top] if top else order


def chunk_effects(lm, dictionary, hp, data: RunData, feats: np.ndarray, cfg: EffectsConfig, stats, bar=None) -> pd.DataFrame:
    """The effects.parquet rows of features `feats`."""
    peaks = data.top_peaks(feats.tolist(), cfg.n_contexts)
    rows, owner = [], []
    for f in feats.tolist():
        p = peaks.get(int(f))
        if p is None or not len(p):
            continue
        r = resolve(Edit((int(f),), "zero"), dictionary.d_sae, stats)
        new = context_rows(data, p, r, before=0, after=cfg.after)  # keep = peak .. peak + after
        rows += new
        owner += [int(f)] * len(new)
    res = effects_of_rows(lm, dictionary, hp, rows, batch_seqs=cfg.batch_seqs, all_positions=False, detail=False,
                          progress=(lambda n: bar.update(n)) if bar is not None else None)
    per: dict[int, list[tuple[float, float]]] = {}
    for f, rr in zip(owner, res):
        per.setdefault(f, []).append(peak_summary(rr["loss_change"], 0, cfg.after))
    out = []
    for f, vals in per.items():
        at = np.array([v[0] for v in vals])
        aft = np.array([v[1] for v in vals])
        out.append((f, np.nanmean(at) if np.isfinite(at).any() else np.nan,
                    np.nanmean(aft) if np.isfinite(aft).any() else np.nan, len(vals)))
    return pd.DataFrame(out, columns=list(COLUMNS))


def _table(df: pd.DataFrame) -> pa.Table:
    return pa.table({"feature": pa.array(df["feature"].to_numpy(np.int32)),
                     "loss_change_peak": pa.array(df["loss_change_peak"].to_numpy(np.float32)),
                     "loss_change_after": pa.array(df["loss_change_after"].to_numpy(np.float32)),
                     "n_contexts": pa.array(df["n_contexts"].to_numpy(np.int32))})


def _settings(cfg: EffectsConfig, folder: Path) -> dict:
    w = folder / "sae_weights.safetensors"
    return {"config": asdict(cfg), "edit_before": WINDOW_BEFORE,  # the definition: chunks of another are not reused
            "weights": [w.stat().st_size, w.stat().st_mtime_ns] if w.is_file() else None}


def write_effects(run_dir: str | Path, dict_name: str, cfg: EffectsConfig | None = None, lm=None, device: str = "cpu",
                  progress: bool = True) -> Path:
    """Compute and write dictionaries/<dict_name>/effects.parquet (resumable); returns its path."""
    from backend.dictionaries import load_dictionary

    cfg = cfg or EffectsConfig()
    data = RunData(run_dir, dict_name)
    analysed_file(run_dir, dict_name, "contexts.parquet")
    folder = dict_dir(run_dir, dict_name)
    stats = data.stats()
    feats = chosen_features(data, cfg.top)
    if lm is None:
        from backend.model.loading import load_model

        lm = load_model(data.meta["model"], device=device)
    dictionary = load_dictionary(folder, device=str(lm.device))
    hp = check_dictionary(dictionary, lm.model, data.hook)
    part = folder / PARTIAL_DIR
    settings = _settings(cfg, folder)
    if part.is_dir() and (not (part / "settings.json").is_file()
                          or json.loads((part / "settings.json").read_text()) != json.loads(json.dumps(settings))):
        shutil.rmtree(part)  # left by a run with other settings or weights: start over
    part.mkdir(parents=True, exist_ok=True)
    write_json(part / "settings.json", settings)
    chunks = [feats[i:i + cfg.features_per_chunk] for i in range(0, len(feats), cfg.features_per_chunk)]
    t0 = time.perf_counter()
    total = int(len(feats) * cfg.n_contexts)
    with tqdm(total=total, unit="ctx", desc=f"effects {dict_name}", disable=not progress) as bar:
        for i, chunk in enumerate(chunks):
            dest = part / f"chunk_{i:05d}.parquet"
            if dest.is_file():
                bar.update(len(chunk) * cfg.n_contexts)
                continue
            df = chunk_effects(lm, dictionary, hp, data, chunk, cfg, stats, bar)
            with atomic_path(dest) as tmp:
                pq.write_table(_table(df), tmp)
    parts = [pq.read_table(part / f"chunk_{i:05d}.parquet") for i in range(len(chunks))]
    table = pa.concat_tables(parts) if parts else _table(pd.DataFrame(columns=list(COLUMNS)))
    table = table.sort_by("feature")
    out = folder / EFFECTS
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    seconds = time.perf_counter() - t0
    write_json(folder / EFFECTS_JSON, {**asdict(cfg), "op": "zero", "positions": "all", "n_features": table.num_rows,
                                       "seconds": round(seconds, 1), "device": str(lm.device),
                                       "contexts_per_second": round(total / seconds, 2) if seconds > 0 else None})
    shutil.rmtree(part, ignore_errors=True)
    return out
