"""Stage 9, labels: held-out windows, explanations (deterministic, local or remote LLM), detection scoring, label embeddings."""
