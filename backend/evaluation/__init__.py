"""Stage 6, evaluation: held-out metrics (reconstruction and spliced CE) and the comparison of dictionaries."""
