"""Stage 5, training: the Trainer (one loop for every kind), learning-rate schedules, building SAE + ITO from a trained SAE."""
