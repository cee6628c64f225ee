"""Pack documents into fixed-length contexts, one source (genre) per context.

Each context is `[BOS] + (ctx_len - 1) tokens` (no BOS when the model has none: then ctx_len
tokens). Documents of the same source are concatenated with the EOS token between them and cut
into pieces, so short documents (math problems) are not wasted and every context keeps exactly
one genre tag for filtering in the app.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from backend.corpus.readers import Document


@dataclass
class Context:
    token_ids: np.ndarray  # [ctx_len] int32
    source: str


def bos_id(tokenizer) -> int | None:
    return getattr(tokenizer, "bos_token_id", None)


def iter_contexts(docs: Iterable[Document], tokenizer, ctx_len: int, batch_docs: int = 64) -> Iterator[Context]:
    bos = bos_id(tokenizer)
    eos = getattr(tokenizer, "eos_token_id", None)
    body = ctx_len - (1 if bos is not None else 0)
    buffers: dict[str, list[int]] = {}

    def flush(source: str) -> Iterator[Context]:
        buf = buffers[source]
        while len(buf) >= body:
            piece, buffers[source] = buf[:body], buf[body:]
            buf = buffers[source]
            ids = ([bos] if bos is not None else []) + piece
            yield Context(np.asarray(ids, dtype=np.int32), source)

    batch: list[Document] = []

    def encode(batch: list[Document]) -> Iterator[Context]:
        enc = tokenizer([d.text for d in batch], add_special_tokens=False)["input_ids"]
        for d, ids in zip(batch, enc):
            buf = buffers.setdefault(d.source, [])
            buf.extend(ids)
            if eos is not None:
                buf.append(eos)
            yield from flush(d.source)

    for doc in docs:
        batch.append(doc)
        if len(batch) >= batch_docs:
            yield from encode(batch)
            batch = []
    if batch:
        yield from encode(batch)


def token_strings(tokenizer, ids: np.ndarray) -> list[str]:
    """Decoded text of each single token (each distinct id decoded once)."""
    uniq = np.unique(ids)
    table = dict(zip(uniq.tolist(), tokenizer.batch_decode([[int(i)] for i in uniq], clean_up_tokenization_spaces=False)))
    return [table[i] for i in ids.tolist()]
