"""Corpus readers: turn a corpus spec into a deterministic, seeded stream of `Document`s.

A spec is one of

* ``default``            the assembled default corpus (``backend.corpus.default_corpus``), built on first use;
* a folder               every ``.txt``/``.md`` file under it, recursively; ``source`` is the file's
                         folder relative to the corpus folder (``"text"`` for files at its top);
* a ``.txt``/``.md`` file one document (source ``"text"``);
* a ``.jsonl`` file      one JSON object a line with a ``text`` field (optional ``source``);
* a ``.parquet`` file    a ``text`` column (optional ``source`` column);
* ``hf:NAME[:SPLIT]``    a Hugging Face dataset with a ``text`` column (needs the ``datasets``
                         package and the network or its cache; ``hf:NAME:CONFIG:SPLIT`` also works).

Order: documents come out in an order fixed by ``seed``: the list of files (folder), of lines
(jsonl) or of rows (parquet) is shuffled with ``random.Random(seed)``. Large inputs stay
streamed: a jsonl file is indexed by byte offsets, a parquet file is shuffled by row group and
then by row inside each row group (a full shuffle when, as in the default corpus, there is one
row group). Empty and whitespace-only documents are skipped; a corpus with no non-empty text is
an error. Every problem the user can fix raises ``UserError`` with a one-line message.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from backend.common.errors import UserError

TEXT_SUFFIXES = (".txt", ".md")
MAX_BAD_BYTES = 0.01  # fraction of a text file's bytes that may be invalid UTF-8 before it counts as binary
DEFAULT_SOURCE = "text"


@dataclass(frozen=True)
class Document:
    text: str
    source: str  # genre/source tag, e.g. "brown:news", "sotu", "moby-dick", "python-stdlib", "math"


def iter_documents(spec: str, seed: int = 0) -> Iterator[Document]:
    """Yield the non-empty documents of corpus `spec` in an order shuffled with `seed`.

    Problems visible without reading the data (missing path, unsupported type, parquet
    without a ``text`` column, folder without text files) raise at call time; problems found
    while reading (a jsonl line without ``text``, an empty corpus) raise during iteration.
    """
    reader, label = _resolve(str(spec).strip())
    return _non_empty(reader(int(seed)), label)


# --------------------------------------------------------------------------- dispatch


def _resolve(spec: str) -> tuple[Callable[[int], Iterator[Document]], str]:
    if not spec:
        raise UserError("corpus spec is empty: give 'default', a folder, a .jsonl/.parquet file or hf:NAME[:SPLIT]")
    if spec == "default":
        return _default_reader(), "the default corpus"
    if spec.startswith("hf:"):
        return _hf_reader(spec), spec
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"corpus not found: {spec} (give 'default', a folder, a .jsonl/.parquet file or hf:NAME[:SPLIT])")
    if path.is_dir():
        return _folder_reader(path), str(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_reader(path), str(path)
    if suffix == ".parquet":
        return _parquet_reader(path), str(path)
    if suffix in TEXT_SUFFIXES:
        return _single_text_reader(path), str(path)
    raise UserError(
        f"unsupported corpus file type {suffix or '(none)'!r}: {path} "
        "(use a folder of .txt/.md files, a .jsonl or .parquet file with a 'text' field, or hf:NAME[:SPLIT])"
    )


def _non_empty(docs: Iterator[Document], label: str) -> Iterator[Document]:
    n = 0
    for doc in docs:
        if doc.text and not doc.text.isspace():
            n += 1
            yield doc
    if n == 0:
        raise UserError(f"corpus is empty: {label} has no document with non-empty text")


def _shuffled(n: int, seed: int) -> list[int]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def _source_or_default(value) -> str:
    if value is None:
        return DEFAULT_SOURCE
    value = str(value).strip()
    return value or DEFAULT_SOURCE


# --------------------------------------------------------------------------- default corpus


def _default_reader() -> Callable[[int], Iterator[Document]]:
    from backend.corpus import default_corpus
    path = default_corpus.default_corpus_path()
    if not path.exists():
        print(f"building the default corpus at {path} (one-time set-up) ...", file=sys.stderr, flush=True)
        default_corpus.build_default_corpus(path)
    return _parquet_reader(path)


# --------------------------------------------------------------------------- folder / text file


def _read_text_file(path: Path) -> str:
    """The file as UTF-8 text. A binary file (a NUL byte, or more than `MAX_BAD_BYTES` of its bytes not UTF-8)
    is a UserError, so it cannot silently become a run of replacement characters; a few bad bytes in text
    are replaced, with a warning."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    text = raw.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd")
    if b"\x00" in raw or bad > MAX_BAD_BYTES * max(1, len(raw)):
        raise UserError(f"{path} is not UTF-8 text ({bad} undecodable byte sequences in {len(raw)} bytes): "
                        "a binary file? remove it from the corpus or convert it to UTF-8")
    print(f"warning: {path}: {bad} byte sequence(s) that are not UTF-8 replaced by U+FFFD", file=sys.stderr)
    return text


def _folder_reader(root: Path) -> Callable[[int], Iterator[Document]]:
    files = sorted(
        (p for p in root.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES and p.is_file()
         and not any(part.startswith(".") for part in p.relative_to(root).parts)),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        raise UserError(f"no .txt or .md files in folder {root}")

    def read(seed: int) -> Iterator[Document]:
        for i in _shuffled(len(files), seed):
            p = files[i]
            parent = p.relative_to(root).parent.as_posix()
            yield Document(_read_text_file(p), DEFAULT_SOURCE if parent in ("", ".") else parent)

    return read


def _single_text_reader(path: Path) -> Callable[[int], Iterator[Document]]:
    def read(seed: int) -> Iterator[Document]:
        yield Document(_read_text_file(path), DEFAULT_SOURCE)

    return read


# --------------------------------------------------------------------------- jsonl


def _parse_jsonl_line(path: Path, lineno: int, raw: bytes) -> Document | None:
    try:
        rec = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}:{lineno}: not valid JSON ({e.__class__.__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(rec, dict) or "text" not in rec:
        raise UserError(f"{path}:{lineno}: jsonl record has no 'text' field (each line must be an object with a 'text' field)")
    text = rec["text"]
    if text is None:
        return None
    if not isinstance(text, str):
        raise UserError(f"{path}:{lineno}: field 'text' must be a string, got {type(text).__name__}")
    return Document(text, _source_or_default(rec.get("source")))


def _jsonl_reader(path: Path) -> Callable[[int], Iterator[Document]]:
    def read(seed: int) -> Iterator[Document]:
        # Pass 1: validate every line and remember where the useful ones start.
        offsets: list[tuple[int, int]] = []  # (byte offset, line number)
        with open(path, "rb") as f:
            pos = 0
            for lineno, raw in enumerate(f, start=1):
                if raw.strip():
                    doc = _parse_jsonl_line(path, lineno, raw)
                    if doc is not None and doc.text.strip():
                        offsets.append((pos, lineno))
                pos += len(raw)
        # Pass 2: read them back in shuffled order.
        with open(path, "rb") as f:
            for i in _shuffled(len(offsets), seed):
                pos, lineno = offsets[i]
                f.seek(pos)
                doc = _parse_jsonl_line(path, lineno, f.readline())
                if doc is not None:
                    yield doc

    return read


# --------------------------------------------------------------------------- parquet


def _parquet_reader(path: Path) -> Callable[[int], Iterator[Document]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"cannot read parquet file {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    schema = pf.schema_arrow
    if "text" not in schema.names:
        raise UserError(f"parquet file {path} has no 'text' column (columns: {', '.join(schema.names) or 'none'})")
    text_type = schema.field("text").type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
        raise UserError(f"parquet file {path}: column 'text' must hold strings, not {text_type}")
    columns = ["text"] + (["source"] if "source" in schema.names else [])

    def read(seed: int) -> Iterator[Document]:
        rng = random.Random(seed)
        groups = list(range(pf.num_row_groups))
        rng.shuffle(groups)
        for g in groups:
            table = pf.read_row_group(g, columns=columns)
            texts = table.column("text").to_pylist()
            sources = table.column("source").to_pylist() if "source" in columns else [None] * len(texts)
            order = list(range(len(texts)))
            rng.shuffle(order)
            for i in order:
                if texts[i] is not None:
                    yield Document(texts[i], _source_or_default(sources[i]))

    return read


# --------------------------------------------------------------------------- Hugging Face


def _hf_reader(spec: str) -> Callable[[int], Iterator[Document]]:
    parts = spec[len("hf:"):].split(":")
    if not parts[0] or len(parts) > 3 or any(not p for p in parts):
        raise UserError(f"bad Hugging Face corpus spec {spec!r}: use hf:NAME[:SPLIT] (or hf:NAME:CONFIG:SPLIT)")
    name = parts[0]
    config = parts[1] if len(parts) == 3 else None
    split = parts[-1] if len(parts) >= 2 else "train"
    try:
        import datasets  # noqa: F401  (optional dependency, imported lazily)
    except ImportError:
        raise UserError(f"corpus {spec} needs the 'datasets' package (pip install datasets), which is not installed") from None

    def read(seed: int) -> Iterator[Document]:
        import datasets

        try:
            ds = datasets.load_dataset(name, config, split=split)
        except Exception as e:  # offline, unknown name, bad split: all user-fixable
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot load Hugging Face dataset {name!r} split {split!r} (offline or unknown?): {msg}") from None
        if "text" not in ds.column_names:
            raise UserError(f"Hugging Face dataset {name!r} has no 'text' column (columns: {', '.join(ds.column_names)})")
        has_source = "source" in ds.column_names
        for row in ds.shuffle(seed=seed):
            text = row["text"]
            if isinstance(text, str):
                yield Document(text, _source_or_default(row.get("source")) if has_source else f"hf:{name}")

    return read
