"""Train a dictionary on a run's cached activations: `train_dictionary(run_dir, TrainConfig(), name)`.

Recipe (Anthropic, "Towards Monosemanticity" + the April 2024 update, SAELens defaults where
they exist): activations scaled to unit mean squared norm (scale saved and folded at the end),
b_dec at the data mean, W_enc = 0.1 * W_dec^T, unit-norm decoder rows, decoder-norm weighted L1
ramped up over the first steps, Adam with linear warm-up and cosine decay, gradient clipping,
dead-feature tracking over a token window with optional re-initialisation of dead features.

While training, checkpoints live in `dictionaries/<name>.partial/checkpoint.safetensors` (tensors and
JSON, never a pickle: `backend/training/checkpoint.py`); the finished folder (cfg.json +
sae_weights.safetensors) is written to `finish(dest)` (by default it replaces `dictionaries/<name>/`
atomically and the partial folder is removed; `backend.pipeline.build_dictionary` measures it first).
`resume=True` picks the checkpoint up.

Faults stop training with one line instead of a NaN dictionary: a non-finite input names its shard
(`ActivationStore.read`), a non-finite loss stops at that step before the optimizer applies it, and
`save_dictionary` refuses non-finite weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from backend.activations.activation_store import ActivationStore
from backend.common.errors import UserError
from backend.common.layout import DICTS_DIR, PARTIAL, check_dict_name, dict_dir, load_run
from backend.common.names import check_output
from backend.dictionaries.base import KINDS, Dictionary, KindConfig
from backend.dictionaries.relu_l1 import ReluL1Config
from backend.dictionaries.saelens_io import saelens_cfg, save_dictionary
from backend.dictionaries.sparse_ops import SELECT_DTYPES, fast_select_dtype
from backend.dictionaries.topk import AuxKConfig
from backend.model.loading import pick_device
from backend.training import checkpoint as ckpt
from backend.training.schedules import lr_factor, warmup_factor

CHECKPOINT = ckpt.CHECKPOINT
TRAINABLE = ("relu-l1", "topk", "batchtopk", "mlp", "sparse-coding")
RESAMPLABLE = ("relu-l1", "topk", "batchtopk")  # kinds with the relu-l1 parameter layout that resample_dead assumes


@dataclass(init=False)
class TrainConfig:
    """How a dictionary is trained: what every kind shares, plus `kind_cfg`, the kind's own settings (a
    `KindConfig` next to the kind: `ReluL1Config`, `TopKConfig`, ..., with its L1 or top-k settings and its
    number of passes). Defaults are tuned for the demo (SmolLM2-135M layer 15, ~190k training tokens,
    d_sae 4608, <= 6 minutes on 2 CPU cores).

    Keywords that are not shared settings go to the kind's config, and reading one falls through to it:
    `TrainConfig(kind="topk", k=16).k == 16`, `TrainConfig().epochs == ReluL1Config.epochs`.
    """

    kind: str = "relu-l1"
    """Dictionary kind, a key of backend.dictionaries.KINDS that this trainer supports."""
    d_sae: int | None = None
    """Number of features; None means 8 * d_in (4608 for d_model 576), a common expansion factor."""
    lr: float | None = None
    """Peak Adam learning rate; None = the kind's `default_lr` (1e-3, SAELens' range 3e-4..1e-3, for relu-l1,
    mlp, sparse-coding; 5e-3 for topk and batchtopk: see `TopKConfig.default_lr`)."""
    batch_size: int = 2048
    """Tokens per step; 2048 gave higher held-out EV than 4096 at the same tokens and time (twice the
    steps), while still amortising the per-step optimizer cost on CPU."""
    seed: int = 0
    """Seed of the weight init and of the batch order."""
    lr_warmup_steps: int = 20
    """Linear learning-rate warm-up, short: Adam's first steps are the unstable ones."""
    lr_min_ratio: float = 0.05
    """The cosine decay ends at lr * lr_min_ratio, so the last steps refine instead of jumping."""
    grad_clip: float = 1.0
    """Max global gradient norm (as SAELens); guards against the occasional huge-norm token."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam's betas, the usual ones."""
    weight_decay: float = 0.0
    """AdamW weight decay; 0 because the sparsity penalty and the unit-norm decoder already regularise."""
    enc_init_norm: float = 0.1
    """W_enc starts as enc_init_norm * W_dec^T (Anthropic's tied init; SAELens' decoder_init_norm 0.1)."""
    scale_tokens: int = 32768
    """Tokens used to estimate the activation scale and the mean that initialises b_dec."""
    dead_window_tokens: int = 1_000_000
    """A feature that has not fired in this many training tokens counts as dead (for resampling and stats)."""
    resample_dead_every: int = 0
    """Every this many steps, re-initialise dead features from badly reconstructed inputs (0 = never)."""
    resample_stop_frac: float = 0.7
    """No resampling after this fraction of training, so resampled features have time to settle."""
    checkpoint_every_s: float = 120.0
    """Seconds between checkpoints in <name>.partial/ (also written on Ctrl-C); 0 = none, no resume."""
    threads: int = 0
    """torch CPU threads (0 = torch's default, one per core)."""
    select_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """dtype of the dense matmul that only chooses the active latents of sparse kinds (topk, batchtopk, relu-l1
    once sparse); their values and all gradients stay float32. auto = bfloat16 where it is native (CUDA, CPUs
    with AMX: ~7x float32 here), else float32. float32 reproduces runs made before this setting."""
    kind_cfg: KindConfig | None = field(default=None, metadata={"cli": False})
    """The kind's own settings (`KINDS[kind].config_class`); None = its defaults, or built from the keywords."""

    def __init__(self, kind_cfg: KindConfig | None = None, **settings):
        for f in dataclasses.fields(self):
            if f.name != "kind_cfg":
                setattr(self, f.name, settings.pop(f.name, f.default))
        self.adam_betas = tuple(self.adam_betas)
        self.kind_cfg = self._kind_config(kind_cfg, settings)
        if self.lr is None:
            self.lr = self.kind_cfg.default_lr
        for ok, msg in self.checks():
            if not ok:
                raise UserError(f"invalid training config: {msg}")

    def _kind_config(self, given: KindConfig | None, settings: dict) -> KindConfig:
        """`given`, or the kind's config built from the keywords left over once the shared ones are taken."""
        if self.kind == "sae-ito":
            raise UserError("invalid training config: sae-ito is built from a trained dictionary, not trained: pass --base NAME")
        if self.kind not in TRAINABLE:
            raise UserError(f"invalid training config: kind {self.kind!r} cannot be trained here; "
                            f"trainable: {', '.join(TRAINABLE)}")
        cls = KINDS[self.kind].config_class
        if given is not None:
            if settings or not isinstance(given, cls):
                raise TypeError(f"kind_cfg must be a {cls.__name__} and comes without kind keywords")
            return given
        unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise UserError(f"invalid training config: kind {self.kind!r} has no setting {', '.join(unknown)}")
        return cls(**settings)

    def checks(self) -> list[tuple[bool, str]]:
        return [
            (self.d_sae is None or self.d_sae >= 1, f"d_sae must be >= 1, got {self.d_sae}"),
            (0 < self.lr < 1, f"lr must be in (0, 1), got {self.lr}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr_warmup_steps >= 0, "lr_warmup_steps must be >= 0"),
            (0 <= self.lr_min_ratio <= 1, "lr_min_ratio must be in [0, 1]"),
            (self.grad_clip > 0, "grad_clip must be > 0"),
            (all(0 <= b < 1 for b in self.adam_betas) and len(self.adam_betas) == 2, "adam_betas must be two numbers in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.enc_init_norm > 0, "enc_init_norm must be > 0"),
            (self.scale_tokens >= 1, "scale_tokens must be >= 1"),
            (self.dead_window_tokens >= 1, "dead_window_tokens must be >= 1"),
            (self.resample_dead_every >= 0, "resample_dead_every must be >= 0"),
            (self.threads >= 0, "threads must be >= 0"),
            (self.select_dtype in SELECT_DTYPES, f"select_dtype must be one of {', '.join(SELECT_DTYPES)}"),
            (self.resample_dead_every == 0 or self.kind in RESAMPLABLE,
             f"resample_dead_every works for {', '.join(RESAMPLABLE)} only, not {self.kind!r}"),
        ]

    def __getattr__(self, name: str):
        # only reached when `name` is not a shared setting: a setting of the kind's config (e.g. cfg.epochs)
        kind_cfg = self.__dict__.get("kind_cfg")
        if kind_cfg is not None and name in {f.name for f in dataclasses.fields(kind_cfg)}:
            return getattr(kind_cfg, name)
        raise AttributeError(f"{type(self).__name__} of kind {self.__dict__.get('kind')!r} has no setting {name!r}")

    def to_dict(self) -> dict:
        """Flat: the shared settings then the kind's (the `training` record of cfg.json, the checkpoint's key)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "kind_cfg"}
        d["adam_betas"] = list(self.adam_betas)
        return {**d, **dataclasses.asdict(self.kind_cfg)}


def train_batches(store: ActivationStore, cfg: TrainConfig, start_step: int, steps_per_epoch: int, total_steps: int, device):
    """Training batches from step `start_step` on: epoch e is the store's shuffled pass with seed + e,
    cut to `steps_per_epoch` full batches (so a resume can fast-forward to the same batch)."""
    step = start_step
    while step < total_steps:
        epoch, skip = divmod(step, steps_per_epoch)
        got = 0
        for i, x in enumerate(store.iter_batches(cfg.batch_size, "train", seed=cfg.seed + epoch, epochs=1.0, device=device)):
            if i >= steps_per_epoch or step >= total_steps:
                break
            if i < skip:
                continue  # fast-forward after a resume (no compute, only reading)
            yield x
            step += 1
            got += 1
        if got == 0 and step < total_steps:  # the store gave fewer batches than expected: next epoch
            step = (epoch + 1) * steps_per_epoch


class Trainer:
    """One training job. `fit()` = init (or resume) -> step()* with checkpoint() -> finish()."""

    def __init__(self, run_dir: str | Path, cfg: TrainConfig, name: str, device: str = "auto",
                 exclude_massive: bool = True):
        self.run_dir = Path(run_dir)
        self.meta = load_run(run_dir)
        self.cfg = cfg
        self.name = name
        self.device = pick_device(device)
        # massive-activation tokens (backend.activations.massive) are left out of batches, scale and init
        self.store = ActivationStore(run_dir, exclude_massive=exclude_massive)
        self.d_in = int(self.meta["d_in"])
        self.d_sae = int(cfg.d_sae or 8 * self.d_in)
        self.n_train = self.store.n_tokens("train")
        if self.n_train < cfg.batch_size:
            raise UserError(f"only {self.n_train} training tokens in {run_dir}, fewer than batch_size {cfg.batch_size}")
        self.steps_per_epoch = self.n_train // cfg.batch_size  # full batches per pass
        self.total_steps = max(1, round(cfg.epochs * self.steps_per_epoch))
        self.final_dir = dict_dir(run_dir, name)
        self.partial_dir = self.final_dir.with_name(self.final_dir.name + PARTIAL)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)

        torch.manual_seed(cfg.seed)
        cls = KINDS[cfg.kind]
        try:
            self.dictionary: Dictionary = cls({"d_in": self.d_in, "d_sae": self.d_sae,
                                               **cfg.kind_cfg.cfg_fields(self.d_in)}).to(self.device)
        except ValueError as e:
            raise UserError(f"invalid training config: {e}") from None
        self.dictionary.select_dtype = fast_select_dtype(self.device, cfg.select_dtype)
        # fused: one kernel for the whole update instead of ~10 passes over the parameters (37 ms -> 4 ms
        # per step at d_sae 4608 on 2 CPU cores, numerically the same update)
        self.optimizer = torch.optim.AdamW(self.dictionary.parameters(), lr=cfg.lr, betas=cfg.adam_betas,
                                           weight_decay=cfg.weight_decay,
                                           fused=self.device.type in ("cpu", "cuda"))
        self.step_i = 0
        self.scale = 1.0  # multiplier taking raw activations to unit mean squared norm
        self.tokens_since_fired = torch.zeros(self.d_sae, dtype=torch.int64)  # [d_sae]
        self.train_seconds = 0.0
        self.train_cpu_seconds = 0.0  # process CPU time (all threads): wall time on a busy machine overstates cost
        self.n_resampled = 0
        self.last = {}  # stats of the last step

    # --- set-up ---------------------------------------------------------------------------
    @torch.no_grad()
    def init_from_data(self) -> None:
        """Estimate the activation scale and initialise the weights (b_dec at the scaled mean)."""
        x, _ = self.store.load_split("train", max_tokens=self.cfg.scale_tokens)
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self.scale = float(1.0 / x.pow(2).sum(1).mean().sqrt().clamp_min(1e-12))
        mean = (x * self.scale).mean(0)
        g = torch.Generator().manual_seed(self.cfg.seed)
        self.dictionary.init_weights_(b_dec=mean, enc_norm=self.cfg.enc_init_norm, generator=g)
        self.dictionary.init_from_sample_(x * self.scale)
        self.dictionary.to(self.device)

    def coeffs(self) -> dict:
        """Per-step settings for the kind's loss: "l1" (ramped up) for kinds with an L1 penalty, and for kinds
        trained with AuxK "dead" [d_sae] bool, "aux_coeff", "k_aux"."""
        kc, out = self.cfg.kind_cfg, {}
        if isinstance(kc, ReluL1Config):
            out["l1"] = kc.l1_coeff * warmup_factor(self.step_i, int(kc.l1_warmup_frac * self.total_steps))
        if isinstance(kc, AuxKConfig):
            out.update(dead=self.tokens_since_fired >= kc.auxk_dead_tokens, aux_coeff=kc.aux_coeff,
                       k_aux=int(self.dictionary.cfg.get("k_aux", 0)))
        return out

    # --- one step -------------------------------------------------------------------------
    def step(self, x: torch.Tensor) -> dict[str, float]:
        """One optimizer step on a raw batch x [B, d_in]; returns the step's stats."""
        d, opt = self.dictionary, self.optimizer
        for g in opt.param_groups:
            g["lr"] = self.cfg.lr * lr_factor(self.step_i, self.total_steps, self.cfg.lr_warmup_steps, self.cfg.lr_min_ratio)
        opt.zero_grad(set_to_none=True)
        x = x.mul_(self.scale) if x.dtype == torch.float32 else x.float() * self.scale
        stats, fire_counts = d.loss_and_backward(x, self.coeffs())
        if not math.isfinite(stats["loss"]):  # stop before the optimizer spreads it into every weight
            raise UserError(f"training {self.name} diverged: the loss is {stats['loss']} at step {self.step_i}; "
                            "nothing was saved; try a lower --lr")
        d.before_optimizer_step_()
        stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(d.parameters(), self.cfg.grad_clip))
        opt.step()
        d.after_optimizer_step_()
        self.tokens_since_fired += x.shape[0]
        self.tokens_since_fired[fire_counts.to("cpu") > 0] = 0
        self.step_i += 1
        self.last = stats
        every = self.cfg.resample_dead_every
        if every and self.step_i % every == 0 and self.step_i < self.cfg.resample_stop_frac * self.total_steps:
            self.resample_dead(x)
        return stats

    def dead_mask(self) -> torch.Tensor:
        """[d_sae] bool: features silent over the last `dead_window_tokens` training tokens (once that many were seen)."""
        return self.tokens_since_fired >= self.cfg.dead_window_tokens

    @torch.no_grad()
    def resample_dead(self, x: torch.Tensor) -> int:
        """Re-initialise dead features on inputs of the batch x [B, d_in] (training units) that are
        reconstructed worst (Anthropic 2023, simplified): decoder row = normalised residual,
        encoder column = 0.2 * mean alive encoder norm along it, b_enc = 0, Adam state reset."""
        dead = self.dead_mask().nonzero().squeeze(1)
        if dead.numel() == 0:
            return 0
        d = self.dictionary
        err = x - d(x)  # [B, d_in]
        p = err.pow(2).sum(1)
        idx = torch.multinomial(p / p.sum(), min(dead.numel(), x.shape[0]), replacement=False)
        dead = dead[: idx.numel()].to(self.device)
        dirs = err[idx] / err[idx].norm(dim=1, keepdim=True).clamp_min(1e-8)  # [n, d_in]
        alive = ~self.dead_mask().to(self.device)
        enc_norm = d.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
        d.W_dec[dead] = dirs
        d.W_enc[:, dead] = dirs.T * 0.2 * enc_norm
        d.b_enc[dead] = 0.0
        for p_, sl in ((d.W_dec, (dead,)), (d.W_enc, (slice(None), dead)), (d.b_enc, (dead,))):
            st = self.optimizer.state.get(p_, {})
            for k in ("exp_avg", "exp_avg_sq"):
                if k in st:
                    st[k][sl] = 0.0
        self.tokens_since_fired[dead.cpu()] = 0
        self.n_resampled += int(dead.numel())
        return int(dead.numel())

    # --- evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, max_tokens: int = 8192) -> dict[str, float]:
        """Quick held-out check in training units: {"ev", "l0", "mse"} on up to max_tokens tokens."""
        x, _ = self.store.load_split("test", max_tokens=max_tokens)
        if len(x) == 0:
            return {}
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device) * self.scale
        f = self.dictionary.encode(x)
        x_hat = self.dictionary.decode(f)
        sse = (x - x_hat).pow(2).sum()
        var = (x - x.mean(0)).pow(2).sum()
        return {"ev": float(1 - sse / var), "l0": float((f > 0).sum(1).float().mean()),
                "mse": float(sse / x.numel())}

    # --- checkpoints ----------------------------------------------------------------------
    def checkpoint(self) -> Path:
        """Write <name>.partial/checkpoint.safetensors atomically (weights, optimizer, counters, scale, cfg)."""
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        state = {"cfg": self.cfg.to_dict(), "d_sae": self.d_sae, "step": self.step_i, "scale": self.scale,
                 "train_seconds": self.train_seconds, "train_cpu_seconds": self.train_cpu_seconds,
                 "n_resampled": self.n_resampled, "total_steps": self.total_steps}
        tensors, state = ckpt.flatten(self.dictionary.state_dict(), self.optimizer.state_dict(),
                                      {"tokens_since_fired": self.tokens_since_fired}, state)
        return ckpt.save_checkpoint(self.partial_dir / CHECKPOINT, tensors, state)

    def resume(self) -> bool:
        """Load <name>.partial/checkpoint.safetensors (or an older checkpoint.pt) if present; False when there is none."""
        p, legacy = self.partial_dir / CHECKPOINT, self.partial_dir / ckpt.LEGACY_CHECKPOINT
        if p.is_file():
            tensors, state = ckpt.load_checkpoint(p, self.device)
        elif legacy.is_file():
            p = legacy
            tensors, state = ckpt.load_legacy_checkpoint(p, self.device)
        else:
            return False
        want = json.loads(json.dumps(self.cfg.to_dict()))  # as it reads back from JSON
        if state.get("cfg") != want:
            have = state.get("cfg") if isinstance(state.get("cfg"), dict) else {}
            diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            raise UserError(f"checkpoint {p} was made with a different config ({', '.join(diff)}); "
                            "pass the same options or delete it")
        try:
            model, optimizer, other = ckpt.unflatten(tensors, state)
            self.dictionary.load_state_dict(model)
            self.optimizer.load_state_dict(optimizer)
            self.step_i, self.scale = int(state["step"]), float(state["scale"])
            self.tokens_since_fired = other["tokens_since_fired"].cpu()
            self.train_seconds = float(state["train_seconds"])
            self.train_cpu_seconds = float(state.get("train_cpu_seconds", 0.0))
            self.n_resampled = int(state.get("n_resampled", 0))
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
            raise UserError(f"cannot resume from checkpoint {p}: it does not fit this dictionary ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}); delete it to train from the start") from None
        if self.tokens_since_fired.shape != (self.d_sae,) or not 0 <= self.step_i <= self.total_steps:
            raise UserError(f"cannot resume from checkpoint {p}: its counters do not fit this run; delete it")
        return True

    # --- the loop -------------------------------------------------------------------------
    def fit(self, resume: bool = False, progress: bool = True) -> None:
        if not (resume and self.resume()):
            self.init_from_data()
        batches = train_batches(self.store, self.cfg, self.step_i, self.steps_per_epoch, self.total_steps, self.device)
        self.run_steps(((self.step(x), x.shape[0]) for x in batches), self.cfg.batch_size, f"train {self.name}",
                       progress, self._show_progress)

    def _show_progress(self, bar, s: dict) -> None:
        if self.step_i % 5 == 0 or self.step_i == self.total_steps:
            bar.set_postfix(loss=f"{s['loss']:.4f}", mse=f"{s['mse']:.4f}", l0=f"{s['l0']:.1f}")

    def run_steps(self, steps, per_step: int, desc: str, progress: bool, show) -> None:
        """The loop every trainer shares: `steps` yields (stats, tokens) as it trains; wall and CPU seconds add up
        across resumes, the bar counts tokens, and a checkpoint is written on time and on Ctrl-C."""
        self.dictionary.train()
        last_ckpt = time.time()
        bar = tqdm(total=self.total_steps * per_step, initial=self.step_i * per_step, unit="tok", unit_scale=True,
                   desc=desc, disable=not progress, dynamic_ncols=True)
        t_start = time.time() - self.train_seconds
        c_start = time.process_time() - self.train_cpu_seconds
        try:
            for s, n_tokens in steps:
                self.train_seconds = time.time() - t_start
                self.train_cpu_seconds = time.process_time() - c_start
                bar.update(n_tokens)
                show(bar, s)
                last_ckpt = self.checkpoint_if_due(last_ckpt)
        except KeyboardInterrupt:
            self.checkpoint_on_interrupt()
            raise
        finally:
            bar.close()
        self.dictionary.eval()

    def checkpoint_if_due(self, last: float) -> float:
        """Checkpoint when `checkpoint_every_s` has passed since `last`; returns the time of the last one."""
        if self.cfg.checkpoint_every_s and time.time() - last > self.cfg.checkpoint_every_s:
            self.checkpoint()
            return time.time()
        return last

    def checkpoint_on_interrupt(self) -> None:
        """Ctrl-C during `fit`: save where training stands, so `--resume` continues from here."""
        if self.step_i and self.cfg.checkpoint_every_s:
            self.checkpoint()
            print(f"\ninterrupted at step {self.step_i}; checkpoint in {self.partial_dir} (rerun with --resume)")

    def train_flops(self) -> int:
        """Analytic training FLOPs: the kind's per-token count (relu-l1: ~6 per parameter, forward 2,
        backward 4) times the tokens seen."""
        return int(self.dictionary.train_flops_per_token() * self.step_i * self.cfg.batch_size)

    def extra_training(self) -> dict:
        """More fields for cfg.json's `training` record (a subclass's own settings and measurements)."""
        return {}

    def finish(self, dest: Path | None = None) -> Path:
        """Fold the scale and save cfg.json + weights atomically into `dest`; by default into dictionaries/<name>/,
        then the partial folder is dropped (with a `dest`, the caller publishes it and drops the partial folder)."""
        d = self.dictionary
        d.fold_scale_(self.scale)
        cfg = saelens_cfg(
            d, hook=self.meta["hook"], model=self.meta["model"],
            activation_scale=self.scale,
            training={**self.cfg.to_dict(), "d_sae": self.d_sae, "steps": self.step_i,
                      "tokens": self.step_i * self.cfg.batch_size, "train_seconds": round(self.train_seconds, 1),
                      "train_cpu_seconds": round(self.train_cpu_seconds, 1), "n_train_tokens": self.n_train, "n_resampled": self.n_resampled,
                      "dead_fraction_train": float(self.dead_mask().float().mean()),
                      "torch_threads": torch.get_num_threads(),
                      "select_dtype_used": str(d.select_dtype).removeprefix("torch."), **self.extra_training()},
            train_flops=self.train_flops(),
        )
        cfg["training"]["massive_excluded"] = self.store.n_tokens("train", exclude_massive=False) - self.n_train
        cfg["metadata"].update({"context_size": self.meta.get("ctx_len"), "prepend_bos": self.meta.get("bos_token_id") is not None,
                                "run": self.run_dir.name})
        d.cfg = cfg
        save_dictionary(d, dest or self.final_dir, cfg)
        if dest is None:
            shutil.rmtree(self.partial_dir, ignore_errors=True)
        return dest or self.final_dir


def train_dictionary(run_dir: str | Path, cfg: TrainConfig, name: str, device: str = "auto", resume: bool = False,
                     force: bool = False, progress: bool = True, dest: Path | None = None) -> Trainer:
    """Train and save one dictionary (cfg.json + weights, no metrics: `backend.pipeline.build_dictionary` measures
    it) into `dest`, by default dictionaries/<name>/; returns the finished Trainer (its `final_dir`, timings and
    step count). The run and the dictionaries folder are checked before training starts."""
    check_dict_name(name)
    check_output(Path(run_dir) / DICTS_DIR, "dictionaries folder")
    threads = torch.get_num_threads()
    try:
        trainer = Trainer(run_dir, cfg, name, device)
        run_training(trainer, resume, force, progress, dest)
    finally:
        torch.set_num_threads(threads)  # cfg.threads is process-global state: put it back
    return trainer


def run_training(trainer: Trainer, resume: bool, force: bool, progress: bool, dest: Path | None) -> None:
    """Refuse to overwrite or to resume nothing, then fit and finish (plain and anchored trainers alike)."""
    name, run_dir = trainer.name, trainer.run_dir
    if trainer.final_dir.exists() and not (force or resume):
        raise UserError(f"dictionary {name!r} already exists in {run_dir}; pass --force to replace it")
    if not resume:
        shutil.rmtree(trainer.partial_dir, ignore_errors=True)
    elif not any((trainer.partial_dir / f).is_file() for f in (CHECKPOINT, ckpt.LEGACY_CHECKPOINT)):
        if trainer.final_dir.exists() and not force:
            raise UserError(f"dictionary {name!r} is already finished, nothing to resume; pass --force to retrain it")
        print(f"no checkpoint in {trainer.partial_dir}: training from the start")
    trainer.fit(resume=resume, progress=progress)
    trainer.finish(dest)
