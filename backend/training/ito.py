"""SAE + inference-time optimisation: an `sae-ito` dictionary built from a trained one, without training.

The base's decoder is kept; codes come from gradient pursuit, matching pursuit or FISTA over it
(`backend/dictionaries/sae_ito.py`, which also holds the settings, `ItoConfig`), at the base's own L0 unless
told otherwise.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from backend.common.errors import UserError
from backend.common.layout import CFG_JSON, check_dict_name, dict_dir, load_run, read_metrics
from backend.dictionaries.sae_ito import ItoConfig, SaeItoDictionary
from backend.dictionaries.saelens_io import saelens_cfg, save_dictionary


def build_ito_dictionary(run_dir: str | Path, cfg: ItoConfig, name: str, force: bool = False,
                         dest: Path | None = None) -> Path:
    """Make dictionaries/<name> (kind sae-ito; written to `dest` instead when given) from the run's dictionary
    `cfg.base`; returns the folder (`backend.pipeline.build_dictionary` measures it)."""
    from backend.dictionaries import load_dictionary

    check_dict_name(name)
    run_dir = Path(run_dir)
    meta = load_run(run_dir)
    base_dir = dict_dir(run_dir, cfg.base)
    if not (base_dir / CFG_JSON).is_file():
        raise UserError(f"no dictionary {cfg.base!r} in {run_dir} to build sae-ito from (train it first)")
    out = dict_dir(run_dir, name)
    if out.exists() and not force:
        raise UserError(f"dictionary {name!r} already exists in {run_dir}; pass --force to replace it")
    base = load_dictionary(base_dir)
    if base.kind == "sae-ito":
        raise UserError(f"{cfg.base!r} is itself an sae-ito dictionary; pass a trained one as --base")
    if not isinstance(getattr(base, "b_dec", None), torch.Tensor):
        raise UserError(f"{cfg.base!r} ({base.kind}) has no linear decoder with a bias b_dec")
    target = cfg.target_l0
    if target is None:
        l0 = read_metrics(run_dir, cfg.base).get("l0")
        if not l0:
            raise UserError(f"{cfg.base!r} has no measured l0 in metrics.json; pass --target-l0")
        target = max(1, round(float(l0)))
    target = min(target, base.d_sae)
    pool = 2 * target if cfg.pool is None else cfg.pool
    pool = min(pool, base.d_sae)
    fista_l1 = cfg.fista_l1
    if fista_l1 is None:
        tr, scale = base.cfg.get("training") or {}, base.cfg.get("activation_scale")
        fista_l1 = float(tr["l1_coeff"]) / (2 * float(scale)) if tr.get("l1_coeff") is not None and scale else 0.0
    d_cfg = {"d_in": base.d_in, "d_sae": base.d_sae, "base": cfg.base, "base_cfg": base.cfg, "method": cfg.method,
             "target_l0": target, "pool": pool, "n_iter": cfg.n_iter, "fista_l1": fista_l1}
    try:
        d = SaeItoDictionary(d_cfg)
    except ValueError as e:
        raise UserError(f"invalid sae-ito config: {e}") from None
    d.base.load_state_dict(base.state_dict())
    cfg_json = saelens_cfg(d, hook=meta["hook"], model=meta["model"], train_flops=0,
                           base_train_flops=base.cfg.get("train_flops"),
                           training={"built_from": cfg.base, **dataclasses.asdict(cfg)})
    cfg_json["metadata"].update({"context_size": meta.get("ctx_len"), "run": run_dir.name})
    d.cfg = cfg_json
    return save_dictionary(d, dest or out, cfg_json)
