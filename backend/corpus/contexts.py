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
    # with offsets=True: per token the document's ordinal in the stream (-1 for BOS/EOS) and its character span
    doc: np.ndarray | None = None  # [ctx_len] int32
    start: np.ndarray | None = None  # [ctx_len] int32
    end: np.ndarray | None = None  # [ctx_len] int32


def bos_id(tokenizer) -> int | None:
    return getattr(tokenizer, "bos_token_id", None)


def iter_contexts(docs: Iterable[Document], tokenizer, ctx_len: int, batch_docs: int = 64,
                  offsets: bool = False) -> Iterator[Context]:
    """Contexts of `docs` in order. `offsets` also gives each token's document ordinal and character span
    (a fast tokenizer's offset mapping), so annotations of the text (Brown's part-of-speech tags) can be put on
    the tokens of a run cached from the same documents (backend/corpus/pos_tags.py); the ids are the same."""
    bos = bos_id(tokenizer)
    eos = getattr(tokenizer, "eos_token_id", None)
    body = ctx_len - (1 if bos is not None else 0)
    buffers: dict[str, list] = {}  # source -> [ids, doc, start, end] (the last three only with offsets)

    def flush(source: str) -> Iterator[Context]:
        buf = buffers[source]
        while len(buf[0]) >= body:
            pieces = [b[:body] for b in buf]
            buffers[source] = buf = [b[body:] for b in buf]
            head = [bos] if bos is not None else []
            ids = np.asarray(head + pieces[0], dtype=np.int32)
            if not offsets:
                yield Context(ids, source)
                continue
            extra = [np.asarray([-1] * len(head) + p, dtype=np.int32) for p in pieces[1:]]
            yield Context(ids, source, *extra)

    batch: list[Document] = []
    n_docs = 0

    def encode(batch: list[Document], first: int) -> Iterator[Context]:
        enc = tokenizer([d.text for d in batch], add_special_tokens=False, return_offsets_mapping=offsets)
        for k, (d, ids) in enumerate(zip(batch, enc["input_ids"])):
            buf = buffers.setdefault(d.source, [[], [], [], []] if offsets else [[]])
            buf[0].extend(ids)
            if offsets:
                spans = enc["offset_mapping"][k]
                buf[1].extend([first + k] * len(ids))
                buf[2].extend(a for a, _ in spans)
                buf[3].extend(b for _, b in spans)
            if eos is not None:
                buf[0].append(eos)
                for b in buf[1:]:
                    b.append(-1)
            yield from flush(d.source)

    for doc in docs:
        batch.append(doc)
        if len(batch) >= batch_docs:
            yield from encode(batch, n_docs)
            n_docs += len(batch)
            batch = []
    if batch:
        yield from encode(batch, n_docs)


def token_strings(tokenizer, ids: np.ndarray) -> list[str]:
    """Decoded text of each single token (each distinct id decoded once)."""
    uniq = np.unique(ids)
    table = dict(zip(uniq.tolist(), tokenizer.batch_decode([[int(i)] for i in uniq], clean_up_tokenization_spaces=False)))
    return [table[i] for i in ids.tolist()]
