"""Stage 2, the subject model: loading (hub id, folder, GGUF, the embedded SmolLM2) and TransformerLens-named hook points."""
