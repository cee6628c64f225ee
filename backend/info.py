"""Plain-text summary of a run for `python -m backend info`."""

from __future__ import annotations

import json
from pathlib import Path

from backend.runs import dict_dir, list_dictionaries, load_run

METRIC_KEYS = ("l0", "explained_variance", "fvu", "mse", "dead_fraction", "ce_loss_score", "delta_ce", "kl_div")


def format_info(run_dir: str | Path) -> str:
    m = load_run(run_dir)
    lines = [
        f"run:      {Path(run_dir).resolve()}",
        f"model:    {m['model']}  ({m.get('model_source', '')})",
        f"hook:     {m['hook']}  (d_in {m['d_in']})",
        f"corpus:   {m.get('corpus')}  sources: {', '.join(f'{k} {v}' for k, v in m.get('source_counts', {}).items())}",
        f"tokens:   {m['n_tokens']:,} in {m['n_seqs']} contexts of {m['ctx_len']} (held out from seq {m.get('heldout_from')})",
    ]
    names = list_dictionaries(run_dir)
    lines.append(f"dictionaries: {len(names)}")
    for n in names:
        d = dict_dir(run_dir, n)
        cfg = json.loads((d / "cfg.json").read_text())
        met = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").is_file() else {}
        analysed = (d / "features.parquet").is_file()
        figures = "  ".join(f"{k}={met[k]:.4g}" for k in METRIC_KEYS if isinstance(met.get(k), (int, float)))
        lines.append(f"  {n}: {cfg.get('kind', cfg.get('architecture'))} d_sae={cfg.get('d_sae')}"
                     f"{' analysed' if analysed else ''}  {figures}")
    return "\n".join(lines)
