"""The benchmark's files: results.parquet, summary.md, config.json and figures/*.html, each written atomically."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pandas as pd

from backend.common.atomic import atomic_path, write_json
from backend.common.errors import UserError
from backend.synth.grid import SynthConfig
from backend.synth.plots import synth_figures, write_figures
from backend.synth.report import summary_markdown

RESULTS_FILE = "results.parquet"  # one row per setting x M x K x seed x method (docs/CONTRACTS.md)

def write_outputs(results: pd.DataFrame, cfg: SynthConfig, out: str | Path) -> Path:
    """results.parquet, summary.md, config.json and figures/*.html under `out`, each written atomically."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / RESULTS_FILE) as tmp:
        results.to_parquet(tmp, index=False)
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(summary_markdown(results, cfg))
    write_json(out / "config.json", asdict(cfg))
    with atomic_path(out / "figures") as tmp:
        write_figures(synth_figures(results), tmp)
    return out
