"""Read cached activations of a run: random-order training batches and the held-out split.

Shards are memory-mapped, so training streams a corpus larger than memory; a batch is
gathered from a few shards at a time (`shards_in_memory`) and shuffled within that window.

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

from backend.common.errors import UserError
from backend.common.layout import check_run_files, load_run


class ActivationStore:
    """The activations of one run. Token index t = seq * ctx_len + pos."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.meta = load_run(run_dir)
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

    def n_tokens(self, split: str = "train", drop_pos0: bool = True) -> int:
        a, b = self.seq_range(split)
        return (b - a) * (self.ctx_len - (1 if drop_pos0 else 0))

    def load_split(self, split: str = "test", max_tokens: int | None = None, drop_pos0: bool = True,
                   dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
        """(acts [N, d_in], token_index [N]) of a split, position 0 dropped."""
        a, b = self.seq_range(split)
        per_seq = self.ctx_len - (1 if drop_pos0 else 0)
        if max_tokens is not None:
            b = min(b, a + max(1, -(-max_tokens // per_seq)))
        x = self.seqs(a, b)[:, 1 if drop_pos0 else 0:]
        pos = np.arange(1 if drop_pos0 else 0, self.ctx_len)
        idx = (np.arange(a, b)[:, None] * self.ctx_len + pos[None, :]).reshape(-1)
        x = x.reshape(-1, self.d_in).astype(dtype, copy=False)
        if max_tokens is not None:
            x, idx = x[:max_tokens], idx[:max_tokens]
        return x, idx

    def iter_batches(self, batch_size: int, split: str = "train", seed: int = 0, epochs: float = 1.0,
                     shards_in_memory: int = 8, drop_pos0: bool = True, device: str | torch.device = "cpu") -> Iterator[torch.Tensor]:
        """Shuffled float32 batches [batch_size, d_in]; a window of shards is loaded and shuffled at a time.
        `epochs` may be fractional; the last partial batch of each window is carried over."""
        rng = np.random.default_rng(seed)
        a, b = self.seq_range(split)
        total = int(self.n_tokens(split, drop_pos0) * epochs)
        emitted = 0
        carry = np.zeros((0, self.d_in), dtype=np.float32)
        while emitted + batch_size <= total:
            order = [i for i, s in enumerate(self.shards) if s["seq_start"] < b and s["seq_start"] + s["n_seqs"] > a]
            rng.shuffle(order)
            rows = 0  # read in this pass: a pass that reads nothing would loop for ever
            for w in range(0, len(order), shards_in_memory):
                chunks = []
                for i in order[w:w + shards_in_memory]:
                    s = self.shards[i]
                    lo, hi = max(a, s["seq_start"]), min(b, s["seq_start"] + s["n_seqs"])
                    chunks.append(self.read(i, lo - s["seq_start"], hi - s["seq_start"], 1 if drop_pos0 else 0)
                                  .reshape(-1, self.d_in))
                    rows += len(chunks[-1])
                window = np.concatenate([carry, *chunks])
                window = window[rng.permutation(len(window))]
                n_full = len(window) // batch_size
                for k in range(n_full):
                    if emitted + batch_size > total:
                        return
                    yield torch.from_numpy(window[k * batch_size:(k + 1) * batch_size]).to(device, non_blocking=True)
                    emitted += batch_size
                carry = window[n_full * batch_size:]
            if rows == 0:
                raise UserError(f"the {split} split of {self.run_dir} has no activations in its shards")
