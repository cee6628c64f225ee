"""Interventions: run the model with a dictionary spliced at its hook and edit features (ablate, clamp, steer).

    from backend.interventions import Edit, text_effects, top_context_effects, generate
    eff = text_effects(lm, dictionary, "blocks.15.hook_resid_post", "The cat sat", Edit((123,), "zero"))
    eff.table[["token", "loss_change", "kl"]]

Splice semantics (SAELens): x' = decode(edit(f)) + (x - decode(f)), the error term kept unless dropped
(edits.py); contexts already in a run start from their cached hook activation and run only the layers
after the hook (core.py, backend/model/forward.py); steering and generation with a KV cache (steer.py);
the per-feature effects on each feature's top contexts written as effects.parquet (effects_store.py).
"""

from backend.interventions.edits import OPS, Edit, FeatureStats
from backend.interventions.effects import (
    FeatureEffects,
    TextEffects,
    text_effects,
    top_context_effects,
)

__all__ = ["OPS", "Edit", "FeatureStats", "FeatureEffects", "TextEffects", "text_effects", "top_context_effects"]
