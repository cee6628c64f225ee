"""A run folder on disk: `run.json`, `tokens.parquet`, activation shards, `dictionaries/`.

Activation format (documented here once): `activations/shard_{i:05d}.npy`, each a NumPy array
[n_seqs_in_shard, ctx_len, d_in] of `run.json["dtype"]` (float16 by default), opened with
`np.load(mmap_mode="r")` so a corpus larger than memory streams. Global token index
`t = seq * ctx_len + pos` addresses both a row of `tokens.parquet` and an activation.
Sequences `[heldout_from, n_seqs)` are the held-out split used for every metric.
Position 0 (BOS where the model has one) is kept on disk but excluded from training and metrics.

A run folder is checked here before any slow work: `load_run` checks run.json's fields and types,
`check_run_files` that the shard list covers the run with files inside `activations/` and that every
shard and tokens.parquet is whole. Names that become paths are checked by `backend.common.names`
(`dict_dir` calls it), so no user input leads outside the run.
"""

from __future__ import annotations

from pathlib import Path

from backend.common.atomic import read_json, write_json
from backend.common.errors import UserError, first_line
from backend.common.names import PARTIAL, check_dict_name

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
EVALUATION_JSON = "evaluation.json"  # the evaluation suite's results for a dictionary (`evaluate`)
EVALUATION_TASKS = "evaluation_tasks.parquet"  # the suite's per-item task results (columns of `tasks eval`'s files)
FEATURE_TAGS = "feature_tags.parquet"  # per feature, the POS tags and source families it fires on, with NMI (`evaluate`)
POS_TAGS = "pos_tags.parquet"  # per run, the Brown part-of-speech tag of each tagged token (evaluation suite)
DOMAINS = "domains.parquet"  # each feature's domain distribution (`domains`, optional)
DOMAINS_JSON = "domains.json"  # how domains.parquet was made, with the per-domain flag thresholds
DIAGNOSIS_DIR = "diagnosis"  # `diagnose-eval` output under the run
LABELS_DB = "labels.duckdb"  # the run's label store
COMPARISONS_DIR = "comparisons"  # `compare` output under the run
SHARD_DTYPES = ("float16", "float32")


def shard_name(i: int) -> str:
    return f"{ACTS_DIR}/shard_{i:05d}.npy"


def load_run(run_dir: str | Path) -> dict:
    """run.json of a finished run, its fields checked (types, ranges, shard list), or a one-line UserError.
    The files it names are checked by `check_run_files`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder not found: {run_dir}")
    p = run_dir / RUN_JSON
    if not p.is_file():
        raise UserError(f"{run_dir} is not a run (no {RUN_JSON}); create one with `python -m backend cache`")
    try:
        meta = read_json(p)
    except ValueError as e:
        raise UserError(f"{p} is not valid JSON: {first_line(e)}") from None
    except OSError as e:
        raise UserError(f"cannot read {p}: {e.strerror or e}") from None
    if not isinstance(meta, dict):
        raise UserError(f"{p} is not a JSON object: not a run written by this tool")
    for key in ("model", "hook", "ctx_len", "n_seqs", "d_in", "shards"):
        if key not in meta:
            raise UserError(f"{p} lacks {key!r}: not a run written by this tool")
    _check_fields(p, meta)
    return meta


def _check_fields(p: Path, meta: dict) -> None:
    def integer(key: str, lo: int, hi: int | None = None) -> None:
        v = meta[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            within = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise UserError(f"{p}: {key} must be an integer {within}, got {v!r}")

    for key in ("model", "hook"):
        if not isinstance(meta[key], str) or not meta[key]:
            raise UserError(f"{p}: {key} must be a non-empty string, got {meta[key]!r}")
    integer("ctx_len", 1)
    integer("n_seqs", 1)
    integer("d_in", 1)
    if meta.get("heldout_from") is not None:
        integer("heldout_from", 0, meta["n_seqs"])
    if meta.get("n_tokens") is not None:
        integer("n_tokens", 0)
    if meta.get("dtype") is not None and meta["dtype"] not in SHARD_DTYPES:
        raise UserError(f"{p}: dtype must be one of {', '.join(SHARD_DTYPES)}, got {meta['dtype']!r}")
    if not isinstance(meta["shards"], list) or not all(isinstance(s, dict) for s in meta["shards"]):
        raise UserError(f"{p}: shards must be a list of objects")


def check_shards(run_dir: str | Path, meta: dict) -> list[dict]:
    """run.json's shard list, checked: files under activations/ of this run, covering sequences 0..n_seqs-1 in
    order without gap or overlap (an empty list is an error: nothing to read)."""
    run_dir, where = Path(run_dir), Path(run_dir) / RUN_JSON
    shards, start = meta["shards"], 0
    if not shards:
        raise UserError(f"{where} lists no activation shards: the run has no activations to read")
    for i, s in enumerate(shards):
        f, a, n = s.get("file"), s.get("seq_start"), s.get("n_seqs")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (a, n)) or n < 1:
            raise UserError(f"{where}: shard {i} needs integer seq_start and n_seqs >= 1, got {a!r} and {n!r}")
        parts = Path(f).parts if isinstance(f, str) else ()
        if len(parts) != 2 or parts[0] != ACTS_DIR or parts[1] in ("..", ".") or Path(f).is_absolute():
            raise UserError(f"{where}: shard {i} file {f!r} is not a file in {ACTS_DIR}/ of the run")
        if a != start:
            raise UserError(f"{where}: shard {i} starts at sequence {a}, expected {start} (shards must cover the run in order)")
        start = a + n
    if start != meta["n_seqs"]:
        raise UserError(f"{where}: the shards cover {start} sequences, but n_seqs is {meta['n_seqs']}")
    return shards


def check_run_files(run_dir: str | Path, meta: dict) -> None:
    """The files run.json names are there and whole, checked before any slow work: every shard's .npy header
    (shape [n_seqs, ctx_len, d_in], float16/32) and length, and tokens.parquet's footer (one row per token).
    A truncated or foreign file is a one-line UserError naming it."""
    run_dir = Path(run_dir)
    for s in check_shards(run_dir, meta):
        check_shard(run_dir / s["file"], (s["n_seqs"], meta["ctx_len"], meta["d_in"]))
    _check_tokens(run_dir / TOKENS, meta["n_seqs"] * meta["ctx_len"])


def check_shard(path: Path, shape: tuple[int, int, int]) -> None:
    """A whole activation shard of `shape`: its .npy header says so and the file is long enough."""
    import numpy as np
    from numpy.lib import format as npy

    try:
        with open(path, "rb") as fh:
            version = npy.read_magic(fh)
            got, fortran, dtype = _npy_header(npy, fh, version)
            data_at = fh.tell()
        size = path.stat().st_size
    except FileNotFoundError:
        raise UserError(f"activation shard {path} is missing") from None
    except (OSError, ValueError) as e:
        raise UserError(f"corrupt activation shard {path}: {first_line(e)}") from None
    if tuple(got) != shape or fortran or dtype.name not in SHARD_DTYPES:
        raise UserError(f"corrupt activation shard {path}: shape {tuple(got)} {dtype}, expected {shape} float16/float32")
    need = data_at + int(np.prod(shape)) * dtype.itemsize
    if size < need:
        raise UserError(f"corrupt activation shard {path}: truncated ({size} of {need} bytes)")


def _npy_header(npy, fh, version):
    """(shape, fortran_order, dtype) of an open .npy file after its magic string."""
    if version == (1, 0):
        return npy.read_array_header_1_0(fh)
    if version == (2, 0):
        return npy.read_array_header_2_0(fh)
    raise ValueError(f"unsupported .npy version {version}")


def _check_tokens(path: Path, n_tokens: int) -> None:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise UserError(f"run {path.parent} has no {TOKENS}")
    try:
        rows = pq.read_metadata(path).num_rows
    except Exception as e:  # Arrow raises ArrowInvalid, OSError, ... for a damaged file
        raise UserError(f"corrupt {path}: {first_line(e)}") from None
    if rows != n_tokens:
        raise UserError(f"corrupt {path}: {rows} rows, run.json says {n_tokens} tokens")


def save_run(run_dir: str | Path, meta: dict) -> None:
    write_json(Path(run_dir) / RUN_JSON, meta)


def dict_dir(run_dir: str | Path, name: str) -> Path:
    """Folder of dictionary `name` in the run; the name is checked (`names.check_dict_name`, archived names
    allowed), so no name given by a user leads outside `<run>/dictionaries/`."""
    return Path(run_dir) / DICTS_DIR / check_dict_name(name, new=False)


def read_metrics(run_dir: str | Path, dict_name: str) -> dict:
    """metrics.json of a dictionary, {} when it has not been measured."""
    p = dict_dir(run_dir, dict_name) / METRICS
    if not p.is_file():
        return {}
    try:
        met = read_json(p)
    except ValueError as e:
        raise UserError(f"{p} is not valid JSON: {first_line(e)}") from None
    if not isinstance(met, dict):
        raise UserError(f"{p} is not a JSON object")
    return met


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
