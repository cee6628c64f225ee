"""Objects built from a file, kept per version of the file, for the query layer's in-memory lookups.

A version is (path, size, mtime_ns) (`query.file_key`): a rewritten file (a re-analysis, a rebuilt cache)
gets a new key, and its older versions are dropped when the new one is stored. The most recent `size`
versions are kept (LRU). Session threads share it, so every access takes the lock; building happens outside it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

MISSING = object()


class FileVersionCache:
    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple):
        """The object stored for this file version, or MISSING."""
        with self._lock:
            if key not in self._items:
                return MISSING
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: tuple, value) -> None:
        with self._lock:
            for k in [k for k in self._items if k[0] == key[0]]:  # older versions of the same file
                del self._items[k]
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
