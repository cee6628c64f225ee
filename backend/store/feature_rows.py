"""One dictionary's features.parquet and contexts.parquet held in memory, for a feature page's point lookups.

A feature page reads one row of features.parquet and one feature's rows of contexts.parquet. DuckDB
answers each in 2-6 ms idle (it decodes the whole row group of list columns around the row), 20-60 ms
while the browser draws the page on the same two cores, and a click waits for it (issue 16). Held here
as Arrow columns and NumPy arrays, a lookup is an index and a slice (< 0.1 ms). The two files are small
beside the activations (~2 KB and ~40 contexts a feature: ~15 MB for the demo's 4,608 features); each
is keyed by its size and mtime, so a re-analysis is read afresh, and a dictionary whose features table
is over `MAX_BYTES` is not held (the caller falls back to DuckDB).
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from backend.store.file_cache import MISSING, FileVersionCache

MAX_BYTES = 256 * 2**20  # a features table above this (in memory) is queried, not held
MAX_FILES = 8  # files held (LRU): a features and a contexts file per dictionary, four dictionaries

_cache = FileVersionCache(MAX_FILES)


class FeatureTable:
    """features.parquet: row of feature f at `row_of[f]`."""

    def __init__(self, table: pa.Table):
        self.table = table
        ids = table.column("feature").to_numpy()
        self.row_of = np.full(int(ids.max()) + 1 if len(ids) else 0, -1, dtype=np.int64)
        self.row_of[ids] = np.arange(len(ids))

    def row(self, f: int) -> dict | None:
        if not 0 <= f < len(self.row_of) or self.row_of[f] < 0:
            return None
        return self.table.slice(int(self.row_of[f]), 1).to_pylist()[0]


class ContextTable:
    """contexts.parquet sorted by (feature, group, rank): feature f's rows are [start[f], start[f + 1])."""

    def __init__(self, table: pa.Table):
        feature = table.column("feature").to_numpy().astype(np.int64)
        group = table.column("group").combine_chunks().dictionary_encode()  # six names: sort their codes, not strings
        self.names = group.dictionary.to_pylist()
        by_name = np.argsort(np.argsort(np.asarray(self.names, dtype=str)))
        codes = group.indices.to_numpy()
        rank = table.column("rank").to_numpy()
        order = np.lexsort((rank, by_name[codes], feature))
        self.group, self.rank = codes[order], rank[order]
        self.token_index = table.column("token_index").to_numpy()[order]
        self.value = table.column("value").to_numpy()[order]
        n = int(feature.max()) + 2 if len(feature) else 1
        self.start = np.searchsorted(feature[order], np.arange(n))

    def rows(self, f: int) -> list[tuple]:
        """(group, rank, token_index, value) of feature f, ordered by group then rank (as the SQL query was)."""
        if not 0 <= f < len(self.start) - 1:
            return []
        a, b = int(self.start[f]), int(self.start[f + 1])
        return list(zip([self.names[g] for g in self.group[a:b].tolist()], self.rank[a:b].tolist(),
                        self.token_index[a:b].tolist(), self.value[a:b].tolist()))


def _held(path: str, build):
    """The parsed file, read once per version; None when it is too large to hold."""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    entry = _cache.get(key)
    if entry is MISSING:
        table = pq.read_table(path)
        entry = build(table) if table.nbytes <= MAX_BYTES else None
        _cache.put(key, entry)
    return entry


def feature_table(path: str) -> FeatureTable | None:
    return _held(path, FeatureTable)


def context_table(path: str) -> ContextTable | None:
    return _held(path, ContextTable)
