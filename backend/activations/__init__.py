"""Stage 3, activations: the cache writer (`python -m backend cache`) and the memory-mapped ActivationStore reader."""
