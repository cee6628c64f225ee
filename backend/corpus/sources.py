"""Provenance of a corpus spec, recorded in run.json (sources and licences)."""

from __future__ import annotations

from pathlib import Path


def sources_for(spec: str) -> list[dict]:
    if spec == "default":
        from backend.corpus.default_corpus import DEFAULT_SOURCES

        return list(DEFAULT_SOURCES)
    if spec.startswith("hf:"):
        return [{"name": spec[3:], "kind": "huggingface dataset", "licence": "see the dataset card"}]
    return [{"name": str(Path(spec).resolve()), "kind": "user files", "licence": "user's own"}]
