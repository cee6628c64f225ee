"""Read cached activations of a run: random-order training batches and the held-out split.

Shards are memory-mapped, so training streams a corpus larger than memory; a batch is
gathered from a few shards at a time (`shards_in_memory`) and shuffled within that window.
Position 0 and, by default, the massive-activation tokens (`backend.activations.massive`) are left out
of batches, splits and token counts; `exclude_massive=False` keeps the latter.

Opening a store checks the run folder first (`layout.check_run_files`: the shard list covers the run,
every shard and tokens.parquet is whole), so a broken run fails in one line before any slow work. Every
slice read is checked for NaN and infinity, and the error names the shard, sequence and position: a
dictionary trained on a non-finite value is NaN throughout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from backend.activations.massive import massive_record
from backend.common.errors import UserError
from backend.common.layout import check_run_files, load_run


class ActivationStore:
    """The activations of one run. Token index t = seq * ctx_len + pos. `exclude_massive` is the default
    of the methods that take it (None there means this default)."""

    def __init__(self, run_dir: str | Path, exclude_massive: bool = True):
        self.run_dir = Path(run_dir)
        self.meta = load_run(run_dir)
        self.exclude_massive = exclude_massive
        self._massive: dict | None = None
        self._massive_idx: np.ndarray | None = None  # [M] int64, sorted
        self.ctx_len: int = self.meta["ctx_len"]
        self.d_in: int = self.meta["d_in"]
        self.n_seqs: int = self.meta["n_seqs"]
        self.heldout_from: int = self.meta.get("heldout_from", self.n_seqs)
        self.shards: list[dict] = self.meta["shards"]  # [{"file", "seq_start", "n_seqs"}]
        check_run_files(self.run_dir, self.meta)
        self._mm: dict[int, np.ndarray] = {}

    def shard(self, i: int) -> np.ndarray:
        """Memory-mapped shard i: [n_seqs, ctx_len, d_in]."""
        if i not in self._mm:
            info = self.shards[i]
            path = self.run_dir / info["file"]
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise UserError(f"corrupt activation shard {path}: {e}") from None
            if arr.shape != (info["n_seqs"], self.ctx_len, self.d_in):
                raise UserError(f"corrupt activation shard {path}: shape {arr.shape}, expected {(info['n_seqs'], self.ctx_len, self.d_in)}")
            self._mm[i] = arr
        return self._mm[i]

    def read(self, i: int, lo: int, hi: int, pos_from: int = 0) -> np.ndarray:
        """Sequences [lo, hi) of shard i (shard-local numbers), positions from `pos_from` on, as float32
        [hi - lo, ctx_len - pos_from, d_in]; a NaN or infinity in them is a UserError naming where it is."""
        arr = np.asarray(self.shard(i)[lo:hi, pos_from:], dtype=np.float32)
        if not np.isfinite(arr).all():
            s, p, _ = np.argwhere(~np.isfinite(arr))[0]
            info = self.shards[i]
            raise UserError(f"non-finite activation in shard {self.run_dir / info['file']} (sequence "
                            f"{info['seq_start'] + lo + s}, position {pos_from + p}): the run is damaged; rebuild it "
                            "with `python -m backend cache --force`")
        return arr

    @property
    def massive(self) -> dict:
        """The run's massive-token record (computed on first use for runs cached before it existed)."""
        if self._massive is None:
            self._massive = massive_record(self.run_dir, self.meta)
        return self._massive

    def massive_index(self, split: str = "all") -> np.ndarray:
        """Sorted token indices [M] of the massive tokens in a split."""
        a, b = self.seq_range(split)
        if self._massive_idx is None:
            self._massive_idx = np.asarray(self.massive["token_index"], dtype=np.int64)
        idx = self._massive_idx
        return idx[(idx >= a * self.ctx_len) & (idx < b * self.ctx_len)]

    def is_massive(self, token_index: np.ndarray) -> np.ndarray:
        """[N] bool: which of these token indices are massive."""
        return np.isin(np.asarray(token_index, dtype=np.int64), self.massive_index())

    def _excluding(self, exclude_massive: bool | None) -> bool:
        return self.exclude_massive if exclude_massive is None else exclude_massive

    def _kept_rows(self, lo: int, hi: int, p0: int) -> np.ndarray | None:
        """[(hi - lo) * (ctx_len - p0)] bool over sequences [lo, hi), positions p0.., False on massive
        tokens; None when none fall there (the common case: no copy needed)."""
        idx = self.massive_index()
        idx = idx[(idx >= lo * self.ctx_len) & (idx < hi * self.ctx_len) & (idx % self.ctx_len >= p0)]
        if not len(idx):
            return None
        keep = np.ones((hi - lo, self.ctx_len - p0), dtype=bool)
        keep[idx // self.ctx_len - lo, idx % self.ctx_len - p0] = False
        return keep.reshape(-1)

    def seq_range(self, split: str) -> tuple[int, int]:
        if split == "train":
            return 0, self.heldout_from
        if split == "test":
            return self.heldout_from, self.n_seqs
        if split == "all":
            return 0, self.n_seqs
        raise ValueError(split)

    def seqs(self, start: int, stop: int) -> np.ndarray:
        """Activations of sequences [start, stop) as one array [n, ctx_len, d_in] (a copy)."""
        parts = []
        for i, info in enumerate(self.shards):
            a, b = info["seq_start"], info["seq_start"] + info["n_seqs"]
            lo, hi = max(a, start), min(b, stop)
            if lo < hi:
                parts.append(self.read(i, lo - a, hi - a))
        if not parts:
            return np.zeros((0, self.ctx_len, self.d_in), dtype=np.float32)
        return np.concatenate(parts)

    def n_tokens(self, split: str = "train", drop_pos0: bool = True, exclude_massive: bool | None = None) -> int:
        a, b = self.seq_range(split)
        n = (b - a) * (self.ctx_len - (1 if drop_pos0 else 0))
        return n - len(self.massive_index(split)) if self._excluding(exclude_massive) else n

    def load_split(self, split: str = "test", max_tokens: int | None = None, drop_pos0: bool = True,
                   dtype=np.float32, exclude_massive: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(acts [N, d_in], token_index [N]) of a split, position 0 (and massive tokens) dropped."""
        a, b = self.seq_range(split)
        p0 = 1 if drop_pos0 else 0
        excluding = self._excluding(exclude_massive)
        if max_tokens is not None:
            n_skip = len(self.massive_index(split)) if excluding else 0  # enough sequences after the skips
            b = min(b, a + max(1, -(-(max_tokens + n_skip) // (self.ctx_len - p0))))
        x = self.seqs(a, b)[:, p0:]
        pos = np.arange(p0, self.ctx_len)
        idx = (np.arange(a, b)[:, None] * self.ctx_len + pos[None, :]).reshape(-1)
        x = x.reshape(-1, self.d_in).astype(dtype, copy=False)
        keep = self._kept_rows(a, b, p0) if excluding else None
        if keep is not None:
            x, idx = x[keep], idx[keep]
        if max_tokens is not None:
            x, idx = x[:max_tokens], idx[:max_tokens]
        return x, idx

    def iter_batches(self, batch_size: int, split: str = "train", seed: int = 0, epochs: float = 1.0,
                     shards_in_memory: int = 8, drop_pos0: bool = True, device: str | torch.device = "cpu",
                     exclude_massive: bool | None = None) -> Iterator[torch.Tensor]:
        """Shuffled float32 batches [batch_size, d_in]; a window of shards is loaded and shuffled at a time.
        `epochs` may be fractional; the last partial batch of each window is carried over."""
        rng = np.random.default_rng(seed)
        a, b = self.seq_range(split)
        excluding = self._excluding(exclude_massive)
        p0 = 1 if drop_pos0 else 0
        total = int(self.n_tokens(split, drop_pos0, excluding) * epochs)
        emitted = 0
        carry = np.zeros((0, self.d_in), dtype=np.float32)
        while emitted + batch_size <= total:
            order = [i for i, s in enumerate(self.shards) if s["seq_start"] < b and s["seq_start"] + s["n_seqs"] > a]
            rng.shuffle(order)
            n_read = 0  # rows read in this pass: a pass that reads nothing would loop for ever
            for w in range(0, len(order), shards_in_memory):
                chunks = []
                for i in order[w:w + shards_in_memory]:
                    s = self.shards[i]
                    lo, hi = max(a, s["seq_start"]), min(b, s["seq_start"] + s["n_seqs"])
                    rows = self.read(i, lo - s["seq_start"], hi - s["seq_start"], p0).reshape(-1, self.d_in)
                    keep = self._kept_rows(lo, hi, p0) if excluding else None
                    chunks.append(rows if keep is None else rows[keep])
                    n_read += len(chunks[-1])
                window = np.concatenate([carry, *chunks])
                window = window[rng.permutation(len(window))]
                n_full = len(window) // batch_size
                for k in range(n_full):
                    if emitted + batch_size > total:
                        return
                    yield torch.from_numpy(window[k * batch_size:(k + 1) * batch_size]).to(device, non_blocking=True)
                    emitted += batch_size
                carry = window[n_full * batch_size:]
            if n_read == 0:
                raise UserError(f"the {split} split of {self.run_dir} has no activations in its shards")
