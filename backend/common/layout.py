"""A run folder on disk: `run.json`, `tokens.parquet`, activation shards, `dictionaries/`.

Activation format (documented here once): `activations/shard_{i:05d}.npy`, each a NumPy array
[n_seqs_in_shard, ctx_len, d_in] of `run.json["dtype"]` (float16 by default), opened with
`np.load(mmap_mode="r")` so a corpus larger than memory streams. Global token index
`t = seq * ctx_len + pos` addresses both a row of `tokens.parquet` and an activation.
Sequences `[heldout_from, n_seqs)` are the held-out split used for every metric.
Position 0 (BOS where the model has one) is kept on disk but excluded from training and metrics.
"""

from __future__ import annotations

from pathlib import Path

from backend.common.atomic import read_json, write_json
from backend.common.errors import UserError

RUN_JSON = "run.json"
TOKENS = "tokens.parquet"
ACTS_DIR = "activations"
DICTS_DIR = "dictionaries"
REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "data"
DEMO_DIR = DATA_DIR / "demo"  # `python -m backend demo` writes here
SYNTH_DIR = DATA_DIR / "synth"  # `python -m backend synth` writes here
MODELS_DIR = DATA_DIR / "models"  # de-quantised copies of embedded GGUF models
CORPUS_DIR = DATA_DIR / "corpus"  # the default corpus and its npm tarballs


CFG_JSON = "cfg.json"  # a dictionary's config, SAELens layout
WEIGHTS = "sae_weights.safetensors"  # a dictionary's tensors, SAELens layout
METRICS = "metrics.json"  # held-out metrics of a dictionary
FEATURES = "features.parquet"  # one row per feature (analysis)
FEATURE_ACTS = "feature_acts.parquet"  # sparse activations, sorted by feature (analysis)
CONTEXTS = "contexts.parquet"  # top and quantile contexts per feature (analysis)
ANALYSIS_JSON = "analysis.json"  # what analyze used
EFFECTS = "effects.parquet"  # ablation effects per feature (`intervene effects`, optional)
EFFECTS_JSON = "effects.json"  # the settings that wrote effects.parquet
DOMAINS = "domains.parquet"  # each feature's domain distribution (`domains`, optional)
DOMAINS_JSON = "domains.json"  # how domains.parquet was made, with the per-domain flag thresholds
DIAGNOSIS_DIR = "diagnosis"  # `diagnose-eval` output under the run
LABELS_DB = "labels.duckdb"  # the run's label store
COMPARISONS_DIR = "comparisons"  # `compare` output under the run
PARTIAL = ".partial"  # suffix of a folder being built


def shard_name(i: int) -> str:
    return f"{ACTS_DIR}/shard_{i:05d}.npy"


def load_run(run_dir: str | Path) -> dict:
    """run.json of a finished run, or a one-line UserError."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder not found: {run_dir}")
    p = run_dir / RUN_JSON
    if not p.is_file():
        raise UserError(f"{run_dir} is not a run (no {RUN_JSON}); create one with `python -m backend cache`")
    try:
        meta = read_json(p)
    except ValueError as e:
        raise UserError(f"{p} is not valid JSON: {e}") from None
    for key in ("model", "hook", "ctx_len", "n_seqs", "d_in", "shards"):
        if key not in meta:
            raise UserError(f"{p} lacks {key!r}: not a run written by this tool")
    return meta


def save_run(run_dir: str | Path, meta: dict) -> None:
    write_json(Path(run_dir) / RUN_JSON, meta)


def dict_dir(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / DICTS_DIR / name


def check_dict_name(name: str) -> str:
    """A dictionary name becomes a folder under dictionaries/: one plain path component, or a UserError."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or name.endswith(PARTIAL):
        raise UserError(f"bad dictionary name {name!r}")
    return name


def read_metrics(run_dir: str | Path, dict_name: str) -> dict:
    """metrics.json of a dictionary, {} when it has not been measured."""
    p = dict_dir(run_dir, dict_name) / METRICS
    return read_json(p) if p.is_file() else {}


def dictionary_names(run_dir: str | Path) -> list[str]:
    """Names of the run's finished dictionaries (folders with a cfg.json), sorted; [] when it has none.
    (`backend.store.query.list_dictionaries` is the table of them with their metrics.)"""
    d = Path(run_dir) / DICTS_DIR
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if (p / CFG_JSON).is_file() and not p.name.startswith("."))


def run_folders(root: str | Path = DATA_DIR) -> list[Path]:
    """Every finished run folder under `root` (two levels deep at most), sorted.
    (`backend.store.query.list_runs` is the table of them with their run.json fields.)"""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p.parent for p in root.glob(f"*/{RUN_JSON}")] + [p.parent for p in root.glob(f"*/*/{RUN_JSON}")]
    return sorted(p for p in found if not any(part.startswith(".") or part.endswith(PARTIAL) for part in p.parts[-2:]))
