"""Sparse dictionaries over activations: the `Dictionary` interface, its kinds, and their folders.

    from backend.dictionaries import load_dictionary, save_dictionary, KINDS
    d = load_dictionary("data/demo/dictionaries/relu-l1")  # any kind, or a plain SAELens folder
    f = d.encode(x)      # x [B, d_in] raw activations -> latents [B, d_sae]
    x_hat = d.decode(f)  # [B, d_in]
"""

from backend.dictionaries.base import ARCHITECTURES, KINDS, Dictionary, register_kind
from backend.dictionaries.mlp import MLPEncoderDictionary
from backend.dictionaries.relu_l1 import ReluL1SAE
from backend.dictionaries.sae_ito import SaeItoDictionary
from backend.dictionaries.saelens_io import (
    JumpReluSAE,
    TopKSAE,
    import_saelens,
    load_dictionary,
    save_dictionary,
)
from backend.dictionaries.sparse_coding import SparseCodingDictionary
from backend.dictionaries.topk import BatchTopKSAE, TrainableTopKSAE

__all__ = [
    "ARCHITECTURES", "KINDS", "Dictionary", "register_kind", "ReluL1SAE", "JumpReluSAE", "TopKSAE",
    "import_saelens", "load_dictionary", "save_dictionary", "TrainableTopKSAE", "BatchTopKSAE",
    "MLPEncoderDictionary", "SparseCodingDictionary", "SaeItoDictionary",
]
