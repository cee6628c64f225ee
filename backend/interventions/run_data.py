"""What an intervention reads from a run: token ids, cached hook activations, top contexts, feature figures.

Token ids come from tokens.parquet (the whole `token_id` column, kept per process for runs up to
`TOKEN_CACHE_MAX` tokens, else read per sequence range); activations from the float16 shards through
`ActivationStore` (memory-mapped, so a context costs one [ctx_len, d_in] read). A run written without
shards (or a sequence they do not cover) has no cached activation: the caller then runs the upstream
half of the model from the token ids.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from backend.activations.activation_store import ActivationStore
from backend.common.errors import UserError
from backend.common.layout import CONTEXTS, FEATURES, TOKENS, dict_dir, load_run
from backend.interventions.edits import FeatureStats

TOKEN_CACHE_MAX = 32_000_000  # token ids of one run kept in memory (int32: <= 128 MiB)
_ids_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
_ids_lock = threading.Lock()


def _stat_key(path: Path) -> tuple:
    st = os.stat(path)
    return str(path), st.st_size, st.st_mtime_ns


def analysed_file(run_dir: str | Path, dict_name: str, name: str) -> Path:
    p = dict_dir(run_dir, dict_name) / name
    if not p.is_file():
        raise UserError(f"dictionary {dict_name!r} of {run_dir} is not analysed yet; run "
                        f"`python -m backend analyze --run {run_dir} --dict {dict_name}`")
    return p


class RunData:
    """Read access to one run (and optionally one of its dictionaries' analysis)."""

    def __init__(self, run_dir: str | Path, dict_name: str | None = None):
        self.run_dir = Path(run_dir)
        self.meta = load_run(run_dir)
        self.dict_name = dict_name
        self.ctx_len = int(self.meta["ctx_len"])
        self.n_seqs = int(self.meta["n_seqs"])
        self.hook = str(self.meta["hook"])
        self.acts = ActivationStore(run_dir) if self.meta.get("shards") else None

    # ------------------------------------------------------------------ tokens and activations
    def token_ids(self, seqs) -> np.ndarray:
        """Token ids [n, ctx_len] (int64) of sequences `seqs`."""
        seqs = np.asarray(seqs, dtype=np.int64)
        if len(seqs) and (seqs.min() < 0 or seqs.max() >= self.n_seqs):
            raise UserError(f"no sequence {int(seqs.max())} in {self.run_dir} (it has {self.n_seqs})")
        all_ids = self._all_ids()
        if all_ids is not None:
            return all_ids.reshape(-1, self.ctx_len)[seqs].astype(np.int64)
        return np.stack([self._seq_ids(int(s)) for s in seqs]) if len(seqs) else np.zeros((0, self.ctx_len), np.int64)

    def _all_ids(self) -> np.ndarray | None:
        path = self.run_dir / TOKENS
        if not path.is_file():
            raise UserError(f"run {self.run_dir} has no {TOKENS}")
        if self.n_seqs * self.ctx_len > TOKEN_CACHE_MAX:
            return None
        key = _stat_key(path)
        with _ids_lock:
            if key in _ids_cache:
                _ids_cache.move_to_end(key)
                return _ids_cache[key]
        t = pq.read_table(path, columns=["token_index", "token_id"]).sort_by("token_index")
        ids = pc.cast(t.column("token_id"), "int32").to_numpy()
        if len(ids) != self.n_seqs * self.ctx_len:
            raise UserError(f"{path} has {len(ids)} tokens, run.json says {self.n_seqs * self.ctx_len}")
        with _ids_lock:
            for k in [k for k in _ids_cache if k[0] == key[0]]:
                del _ids_cache[k]
            _ids_cache[key] = ids
            while len(_ids_cache) > 2:
                _ids_cache.popitem(last=False)
        return ids

    def _seq_ids(self, s: int) -> np.ndarray:
        C = self.ctx_len
        t = pq.read_table(self.run_dir / TOKENS, columns=["token_index", "token_id"],
                          filters=[("token_index", ">=", s * C), ("token_index", "<", (s + 1) * C)]).sort_by("token_index")
        if t.num_rows != C:
            raise UserError(f"{self.run_dir / TOKENS} lacks tokens of sequence {s}")
        return pc.cast(t.column("token_id"), "int64").to_numpy()

    def has_acts(self, seq: int) -> bool:
        return self.acts is not None and any(s["seq_start"] <= seq < s["seq_start"] + s["n_seqs"] for s in self.acts.shards)

    def seq_acts(self, seq: int, stop: int | None = None) -> np.ndarray | None:
        """Cached hook activations [stop, d_in] (float32) of one sequence, or None when the run has none."""
        if not self.has_acts(seq):
            return None
        a = self.acts.seqs(seq, seq + 1)[0]
        return np.asarray(a[: stop or self.ctx_len], dtype=np.float32)

    # ------------------------------------------------------------------ the dictionary's analysis
    def stats(self) -> FeatureStats | None:
        """Feature figures of the analysed dictionary, or None before `analyze`."""
        if self.dict_name is None:
            return None
        p = dict_dir(self.run_dir, self.dict_name) / FEATURES
        return FeatureStats.from_features(p) if p.is_file() else None

    def top_peaks(self, features, n: int = 20) -> dict[int, np.ndarray]:
        """{feature: peak token_index of its top contexts, best first (up to n)} from contexts.parquet."""
        path = analysed_file(self.run_dir, self.dict_name, CONTEXTS)
        feats = sorted({int(f) for f in features})
        filt = [("group", "=", "top"), ("rank", "<", int(n))]
        if len(feats) == 1:
            filt.append(("feature", "=", feats[0]))
        t = pq.read_table(path, columns=["feature", "group", "rank", "token_index"], filters=filt).to_pandas()
        t = t[t["feature"].isin(feats)].sort_values(["feature", "rank"])
        return {int(f): g["token_index"].to_numpy(np.int64) for f, g in t.groupby("feature", sort=True)}

    def densities(self) -> np.ndarray:
        """Density of every feature [d_sae] (features.parquet)."""
        t = pq.read_table(analysed_file(self.run_dir, self.dict_name, FEATURES), columns=["feature", "density"])
        t = t.to_pandas().sort_values("feature")
        return t["density"].to_numpy(np.float64)
