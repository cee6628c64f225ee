"""Anchored training: the model's own next-token distribution in the dictionary's loss (AnchorX, Shah 2025).

    L = a * L_kind(x, x_hat)  +  g * KL(p_orig || p_sae)  +  l * L_task
        L_kind  the kind's own loss: MSE + b * decoder-norm weighted L1 (relu-l1, mlp; b = --l1-coeff),
                MSE + AuxK (topk, batchtopk); training units (E||x||^2 = 1), massive tokens left out
        p_orig  the model's next-token distribution: the layers after the hook run on the cached activation
        p_sae   the same layers run on the reconstruction, spliced at every position >= 1 (no error term)
        KL      mean over the batch's positions 1..T-1 of sum_v p_orig(v) (log p_orig(v) - log p_sae(v)), nats
        L_task  mean over multiple-choice items of -log softmax_j(s_j)[correct], s_j = summed log p_sae of
                choice j's tokens after the prompt (spliced the same way; items from `TaskItems`)
AnchorX's typical coefficients: a = 1, b = 0.015, g = 0.8, l = 0.05, AdamW 3e-4, cosine decay, clipping.
The closest public anchor is end-to-end SAEs (Braun et al. 2024, "Identifying functionally important features
with end-to-end sparse dictionary learning"): KL-trained SAEs reach the same CE with fewer active features.

A batch is `anchor_contexts` whole contexts of the training split: hook activations from the cache, token
ids from tokens.parquet (for the batch CE in the logs and a check that the cache came from this model).
The model is frozen (requires_grad False): gradients flow through its layers into the dictionary only.
p_orig comes from the clean downstream pass on the same cached activations at every step (one forward
without grad, ~1/4 of a step: README, anchoring). Epochs count passes over the training contexts.

Two ways: from scratch (the trainer's init), or a fine-tune of a trained dictionary of the same kind
(`init_from`), as the paper does. `Trainer`'s machinery is reused: schedules, the kind's loss and its
sparse fast paths, decoder-norm constraints, dead-feature counts, checkpoints (plus `anchor.json`
beside them, so a resume with other coefficients is refused), `finish` (every coefficient goes to
cfg.json `training.anchor`).

Kinds: relu-l1, topk, batchtopk, mlp (their encode and decode are differentiable). Not sparse-coding
(codes come from FISTA iterations, not a differentiable encoder) nor sae-ito (not trained at all).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from backend.common.atomic import read_json, write_json
from backend.common.errors import UserError
from backend.common.layout import CFG_JSON, TOKENS, dict_dir
from backend.model.forward import downstream, downstream_supported, unembed
from backend.model.hooks import HookPoint, capture, parse_hook
from backend.training.schedules import lr_factor
from backend.training.trainer import CHECKPOINT, TrainConfig, Trainer, run_training

ANCHORABLE = ("relu-l1", "topk", "batchtopk", "mlp")
ANCHOR_JSON = "anchor.json"  # next to the checkpoint: the coefficients it was made with


@dataclass
class AnchorConfig:
    """Anchored training (AnchorX): the model's next-token distribution and optionally task items in the loss.
    Any of --anchor-kl, --task-loss or --init-from turns it on; the kind's own settings (--l1-coeff, --k, --epochs,
    --lr, ...) still apply, --epochs counting passes over the training contexts and --batch-size unused."""

    anchor_kl: float = 0.0
    """g, weight of KL(p_orig || p_sae) in nats per token; AnchorX uses 0.8, tuned here (README, anchoring); 0 = off."""
    task_loss: float = 0.0
    """l, weight of the task term (cross-entropy over the choices of task-suite items, spliced); AnchorX: 0.05; 0 = off."""
    mse_coeff: float = 1.0
    """a, weight of the kind's own loss (MSE plus its L1 or AuxK term), AnchorX's 1."""
    init_from: str | None = None
    """Fine-tune this trained dictionary of the run (same kind and size) instead of starting from scratch, as the paper does."""
    anchor_contexts: int = 4
    """Whole contexts per step: each runs the layers after the hook forward twice and backward once, ~100x a plain
    step's cost per token on CPU, so a small batch; 4 x 127 tokens."""
    task_items: int = 2
    """Task items per step for the task term (one row per choice, ~50 tokens each: 2 items cost about one context)."""

    def __post_init__(self):
        checks = [(self.anchor_kl >= 0, f"anchor_kl must be >= 0, got {self.anchor_kl}"),
                  (self.task_loss >= 0, f"task_loss must be >= 0, got {self.task_loss}"),
                  (self.mse_coeff > 0, f"mse_coeff must be > 0, got {self.mse_coeff}"),
                  (self.anchor_contexts >= 1, "anchor_contexts must be >= 1"),
                  (self.task_items >= 1, "task_items must be >= 1")]
        for ok, msg in checks:
            if not ok:
                raise UserError(f"invalid anchoring config: {msg}")

    @property
    def enabled(self) -> bool:
        return self.anchor_kl > 0 or self.task_loss > 0 or bool(self.init_from)

    @property
    def needs_model(self) -> bool:
        return self.anchor_kl > 0 or self.task_loss > 0


@dataclass
class TaskItems:
    """Multiple-choice items for the task term, already tokenised (built by backend.tasks.anchor_items, a higher
    stage): per item the prompt's ids (BOS first), each choice's ids, the correct choice's index."""

    prompts: list[list[int]]
    choices: list[list[list[int]]]
    correct: list[int]
    description: str = ""
    tasks: dict = field(default_factory=dict)  # task -> items used

    def __len__(self) -> int:
        return len(self.prompts)


def token_id_matrix(run_dir: str | Path, n_seqs: int, ctx_len: int) -> np.ndarray:
    """Token ids [n_seqs, ctx_len] int64 of the whole run from tokens.parquet, or a UserError when it is missing
    or incomplete (anchored training reads whole contexts)."""
    import pyarrow.parquet as pq

    path = Path(run_dir) / TOKENS
    if not path.is_file():
        raise UserError(f"{run_dir} has no {TOKENS}: anchored training needs the token ids of every context "
                        "(re-cache the run with `python -m backend cache`)")
    t = pq.read_table(path, columns=["token_index", "token_id"]).sort_by("token_index")
    idx = t.column("token_index").to_numpy()
    if len(idx) != n_seqs * ctx_len or not np.array_equal(idx, np.arange(n_seqs * ctx_len)):
        raise UserError(f"{path} does not hold one row per cached token ({len(idx)} rows for {n_seqs * ctx_len} "
                        "tokens): anchored training needs every context's token ids")
    return t.column("token_id").to_numpy().astype(np.int64).reshape(n_seqs, ctx_len)


def check_anchorable(kind: str, hook: str, model=None) -> HookPoint:
    """The run's hook point, or a UserError when the kind or the hook cannot be trained through the model."""
    if kind not in ANCHORABLE:
        raise UserError(f"anchored training works for --kind {', '.join(ANCHORABLE)}, not {kind!r} "
                        "(sparse-coding's codes come from FISTA iterations, not a differentiable encoder)")
    hp = parse_hook(hook)
    if hp.kind not in ("resid_pre", "resid_post") or (model is not None and not downstream_supported(model, hp)):
        raise UserError(f"anchored training cannot splice at {hook}: it runs the layers after a residual-stream hook "
                        "(blocks.L.hook_resid_pre|hook_resid_post) of a Llama-, GPT-2- or GPT-NeoX-style model")
    return hp


class AnchoredTrainer(Trainer):
    """`Trainer` with whole-context batches and the KL / task terms; `fit()` = init, init_from or resume ->
    step()* -> finish(). `lm` (a LoadedModel) may be shared; it is loaded from run.json's model otherwise."""

    def __init__(self, run_dir, cfg: TrainConfig, anchor: AnchorConfig, name: str, device: str = "auto", lm=None,
                 task_items: TaskItems | None = None):
        super().__init__(run_dir, cfg, name, device)
        self.anchor = anchor
        self.hp = check_anchorable(cfg.kind, self.meta["hook"])
        if anchor.task_loss > 0 and not task_items:
            raise UserError("--task-loss needs task items (backend.tasks.anchor_items.task_items)")
        self.task_items = task_items
        self.ctx_len = int(self.meta["ctx_len"])
        self.ids = token_id_matrix(self.run_dir, int(self.meta["n_seqs"]), self.ctx_len)
        self.train_seqs = np.arange(self.store.heldout_from)
        if len(self.train_seqs) < anchor.anchor_contexts:
            raise UserError(f"only {len(self.train_seqs)} training contexts, fewer than anchor_contexts {anchor.anchor_contexts}")
        self.steps_per_epoch = len(self.train_seqs) // anchor.anchor_contexts
        self.total_steps = max(1, round(cfg.epochs * self.steps_per_epoch))
        self.massive = set(int(i) for i in self.store.massive_index("train"))
        self.lm = None
        if anchor.needs_model:
            self.lm = lm if lm is not None else self._load_model()
            self.model = self.lm.model
            check_anchorable(cfg.kind, self.meta["hook"], self.model)
            self.model.eval().requires_grad_(False)  # frozen: gradients reach the dictionary only
        self.tokens_seen = 0
        self.seconds = {"data": 0.0, "dictionary": 0.0, "clean": 0.0, "spliced": 0.0, "task": 0.0, "update": 0.0}

    def _load_model(self):
        from backend.model.loading import load_model

        return load_model(self.meta["model"], device=str(self.device))

    # --- set-up ---------------------------------------------------------------------------
    def check_cache_matches_model(self, tol: float = 0.02) -> float:
        """Relative error between the cached activations of the first context and the model's own: a run cached
        from another model (or hook) is a UserError, not a silently wrong KL."""
        ids = torch.from_numpy(self.ids[:1]).to(self.device)
        own = capture(self.model, self.hp, ids)[0, 1:].float().cpu()  # [T-1, d]
        cached = torch.from_numpy(np.asarray(self.store.seqs(0, 1)[0, 1:], dtype=np.float32))
        err = float((own - cached).norm() / cached.norm().clamp_min(1e-12))
        if not err < tol:
            raise UserError(f"the cached activations of {self.run_dir} differ from {self.meta['model']} at "
                            f"{self.hp.name} by {err:.1%}: the run was not cached from this model")
        return err

    @torch.no_grad()
    def init_from_dictionary(self, name: str) -> None:
        """Start from dictionaries/<name>: same kind, size and kind settings, brought back to training units."""
        from backend.dictionaries import load_dictionary

        folder = dict_dir(self.run_dir, name)
        if not (folder / CFG_JSON).is_file():
            raise UserError(f"--init-from {name!r}: no such dictionary in {self.run_dir}")
        src = load_dictionary(folder)
        own = self.dictionary.cfg
        if src.cfg.get("kind") != self.cfg.kind:
            raise UserError(f"--init-from {name!r} is a {src.cfg.get('kind')} dictionary, not {self.cfg.kind}")
        wanted = {"d_sae": self.d_sae, **self.cfg.kind_cfg.cfg_fields(self.d_in)}
        diff = [f"--{k.replace('_', '-')} {src.cfg.get(k)}" for k, v in wanted.items() if src.cfg.get(k) != v and k in own]
        if diff:
            raise UserError(f"--init-from {name!r} was trained with other settings: pass {' '.join(diff)}")
        scale = float(src.cfg.get("activation_scale") or 1.0)
        src.fold_scale_(1.0 / scale)  # raw units -> the training units it was saved from
        self.dictionary.load_state_dict(src.state_dict())
        self.dictionary.to(self.device)
        self.scale = scale

    # --- batches --------------------------------------------------------------------------
    def context_batch(self, step: int) -> np.ndarray:
        """Sequence indices of step `step`: epoch e is a permutation of the training contexts seeded seed + e."""
        epoch, j = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng(self.cfg.seed + epoch).permutation(self.train_seqs)
        C = self.anchor.anchor_contexts
        return np.sort(order[j * C:(j + 1) * C])

    def load_batch(self, seqs: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(acts [B, T, d] raw float32, ids [B, T] int64, keep [B, T-1] bool: positions >= 1 that are not massive)."""
        acts = np.stack([np.asarray(self.store.seqs(int(s), int(s) + 1)[0], dtype=np.float32) for s in seqs])
        keep = np.ones((len(seqs), self.ctx_len - 1), dtype=bool)
        for b, s in enumerate(seqs):
            for p in range(1, self.ctx_len):
                if int(s) * self.ctx_len + p in self.massive:
                    keep[b, p - 1] = False
        return (torch.from_numpy(acts).to(self.device), torch.from_numpy(self.ids[seqs]).to(self.device),
                torch.from_numpy(keep).to(self.device))

    # --- the terms ------------------------------------------------------------------------
    def splice(self, acts: torch.Tensor) -> torch.Tensor:
        """acts [B, T, d] raw -> [B, T, d] with the reconstruction (with grad) at positions >= 1."""
        B, T, d = acts.shape
        x = acts[:, 1:].reshape(-1, d) * self.scale  # [B*(T-1), d] training units
        x_hat = self.dictionary(x) / self.scale
        return torch.cat([acts[:, :1], x_hat.reshape(B, T - 1, d)], dim=1)

    def kl_term(self, acts: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """KL(p_orig || p_sae) over positions 1..T-1 (with grad into the dictionary) and the batch's CE."""
        t0 = time.perf_counter()
        with torch.no_grad():
            logp_orig = torch.log_softmax(unembed(self.model, downstream(self.model, self.hp, acts)[:, 1:]).float(), -1)
        self.seconds["clean"] += time.perf_counter() - t0
        logp_sae = torch.log_softmax(unembed(self.model, downstream(self.model, self.hp, self.splice(acts))[:, 1:]).float(), -1)
        kl = (logp_orig.exp() * (logp_orig - logp_sae)).sum(-1).mean()  # [B, T-1, V] -> scalar
        with torch.no_grad():
            tgt = ids[:, 2:, None]  # next tokens of positions 1..T-2
            ce_clean = float(-logp_orig[:, :-1].gather(-1, tgt).mean())
            ce_sae = float(-logp_sae[:, :-1].detach().gather(-1, tgt).mean())
        return kl, {"kl": float(kl.detach()), "ce_clean": ce_clean, "delta_ce": ce_sae - ce_clean}

    def task_term(self, step: int) -> tuple[torch.Tensor, dict]:
        """Cross-entropy over the choices of `task_items` items (summed log p of each choice, spliced)."""
        ti, n = self.task_items, self.anchor.task_items
        rng = np.random.default_rng(self.cfg.seed * 1_000_003 + step)
        chosen = rng.choice(len(ti), size=min(n, len(ti)), replace=False)
        rows, where = [], []  # where: (item slot, choice, prompt length, choice length)
        for slot, i in enumerate(chosen):
            for j, c in enumerate(ti.choices[i]):
                rows.append(ti.prompts[i] + c)
                where.append((slot, j, len(ti.prompts[i]), len(c)))
        T = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), T, dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, :len(row)] = torch.tensor(row)  # right padding: causal attention never looks at it
        ids = ids.to(self.device)
        with torch.no_grad():
            acts = capture(self.model, self.hp, ids).float()  # [R, T, d]
        h = downstream(self.model, self.hp, self.splice(acts))  # [R, T, d]
        r_idx, t_idx, tgt, owner = [], [], [], []
        for r, (slot, j, P, L) in enumerate(where):
            r_idx += [r] * L
            t_idx += list(range(P - 1, P + L - 1))  # positions that predict the choice's tokens
            tgt += rows[r][P:P + L]
            owner += [r] * L
        lp = torch.log_softmax(unembed(self.model, h[r_idx, t_idx]).float(), -1)
        lp = lp.gather(-1, torch.tensor(tgt, device=lp.device)[:, None])[:, 0]  # [n_tokens]
        per_row = torch.zeros(len(rows), device=lp.device).index_add(0, torch.tensor(owner, device=lp.device), lp)
        k = max(len(ti.choices[i]) for i in chosen)
        scores = torch.full((len(chosen), k), -torch.inf, device=lp.device)
        for r, (slot, j, _, _) in enumerate(where):
            scores[slot, j] = per_row[r]
        target = torch.tensor([ti.correct[i] for i in chosen], device=lp.device)
        loss = torch.nn.functional.cross_entropy(scores, target)
        acc = float((scores.argmax(1) == target).float().mean())
        return loss, {"task": float(loss.detach()), "task_acc": acc}

    # --- one step -------------------------------------------------------------------------
    def anchored_step(self, seqs: np.ndarray) -> dict[str, float]:
        """One optimizer step on the contexts `seqs`: the kind's loss on their tokens, then the KL and task terms."""
        a, d, opt = self.anchor, self.dictionary, self.optimizer
        t0 = time.perf_counter()
        acts, ids, keep = self.load_batch(seqs)
        t1 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = self.cfg.lr * lr_factor(self.step_i, self.total_steps, self.cfg.lr_warmup_steps, self.cfg.lr_min_ratio)
        opt.zero_grad(set_to_none=True)
        x = acts[:, 1:][keep] * self.scale  # [N, d] training units, massive tokens left out
        stats, fire_counts = d.loss_and_backward(x, self.coeffs())
        if a.mse_coeff != 1.0:
            for p in d.parameters():
                if p.grad is not None:
                    p.grad.mul_(a.mse_coeff)
        t2 = time.perf_counter()
        self.seconds["data"] += t1 - t0
        self.seconds["dictionary"] += t2 - t1
        total = a.mse_coeff * stats["loss"]
        if a.anchor_kl > 0:
            kl, s = self.kl_term(acts, ids)
            (a.anchor_kl * kl).backward()
            stats.update(s)
            total += a.anchor_kl * s["kl"]
        t3 = time.perf_counter()
        self.seconds["spliced"] += t3 - t2  # the clean pass's share is also in seconds["clean"]
        if a.task_loss > 0:
            task, s = self.task_term(self.step_i)
            (a.task_loss * task).backward()
            stats.update(s)
            total += a.task_loss * s["task"]
        t4 = time.perf_counter()
        self.seconds["task"] += t4 - t3
        d.before_optimizer_step_()
        stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(d.parameters(), self.cfg.grad_clip))
        opt.step()
        d.after_optimizer_step_()
        n = x.shape[0]
        self.tokens_since_fired += n
        self.tokens_since_fired[fire_counts.to("cpu") > 0] = 0
        self.tokens_seen += n
        self.step_i += 1
        stats["total"] = total
        self.last = stats
        self.seconds["update"] += time.perf_counter() - t4
        return stats

    # --- checkpoints ----------------------------------------------------------------------
    def checkpoint(self) -> Path:
        dest = super().checkpoint()
        write_json(self.partial_dir / ANCHOR_JSON, self.anchor_record())
        return dest

    def resume(self) -> bool:
        p = self.partial_dir / ANCHOR_JSON
        if (self.partial_dir / CHECKPOINT).is_file():
            saved = read_json(p) if p.is_file() else None
            if saved is not None and saved.get("config") != self.anchor_record()["config"]:
                raise UserError(f"checkpoint in {self.partial_dir} was made with other anchoring settings "
                                f"({saved.get('config')}); pass the same options or delete it")
        if not super().resume():
            return False
        saved = read_json(p) if p.is_file() else {}
        self.tokens_seen = int(saved.get("tokens_seen", 0))
        self.seconds.update(saved.get("seconds", {}))
        return True

    def anchor_record(self) -> dict:
        return {"config": dataclasses.asdict(self.anchor), "tokens_seen": self.tokens_seen, "seconds": self.seconds}

    # --- the loop -------------------------------------------------------------------------
    def fit(self, resume: bool = False, progress: bool = True) -> None:
        if not (resume and self.resume()):
            if self.anchor.init_from:
                self.init_from_dictionary(self.anchor.init_from)
            else:
                self.init_from_data()
        if self.lm is not None:
            self.cache_error = self.check_cache_matches_model()
        per_step = self.anchor.anchor_contexts * (self.ctx_len - 1)

        def steps():
            while self.step_i < self.total_steps:
                yield self.anchored_step(self.context_batch(self.step_i)), per_step

        def show(bar, s: dict) -> None:
            bar.set_postfix({k: f"{s[k]:.3f}" for k in ("mse", "l0", "kl", "delta_ce", "task") if k in s})

        self.run_steps(steps(), per_step, f"train {self.name} (anchored)", progress, show)

    def train_flops(self) -> int:
        """The dictionary's analytic training FLOPs on the tokens seen (the frozen model's passes not counted:
        see `extra_training`'s seconds for what they cost)."""
        return int(self.dictionary.train_flops_per_token() * self.tokens_seen)

    def extra_training(self) -> dict:
        steps = max(self.step_i, 1)
        return {"tokens": self.tokens_seen, "batch": f"{self.anchor.anchor_contexts} contexts",
                "anchor": {**dataclasses.asdict(self.anchor), "b_sparsity": getattr(self.cfg.kind_cfg, "l1_coeff", None),
                           "p_orig": "clean pass of the layers after the hook on the cached activations, every step",
                           "splice": "reconstruction at every position >= 1, no error term",
                           "kl_positions": "1..T-1 of each context", "task_items": (self.task_items.description
                                                                                    if self.task_items else None),
                           "task_items_by_task": self.task_items.tasks if self.task_items else None,
                           "seconds": {k: round(v, 1) for k, v in self.seconds.items()},
                           "seconds_per_step": round(self.train_seconds / steps, 3),
                           "cache_error": getattr(self, "cache_error", None)}}


def train_anchored(run_dir: str | Path, cfg: TrainConfig, anchor: AnchorConfig, name: str, device: str = "auto",
                   resume: bool = False, force: bool = False, progress: bool = True, lm=None,
                   task_items: TaskItems | None = None, dest: Path | None = None) -> AnchoredTrainer:
    """Train and save one anchored dictionary into `dest`, by default dictionaries/<name>/ (as `train_dictionary`)."""
    from backend.common.layout import check_dict_name

    check_dict_name(name)
    if anchor.init_from == name:
        raise UserError(f"--init-from {name!r} is the dictionary being written: give the result another --name")
    threads = torch.get_num_threads()
    try:
        trainer = AnchoredTrainer(run_dir, cfg, anchor, name, device, lm=lm, task_items=task_items)
        run_training(trainer, resume, force, progress, dest)
    finally:
        torch.set_num_threads(threads)
    return trainer
