"""Stage after tasks: the evaluation suite (`python -m backend evaluate`): what a dictionary keeps of the model,
in minutes per dictionary on 2 CPU cores (core metrics, task retention, sparse probing, NMI, paraphrase stability)."""
