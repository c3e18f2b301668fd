"""Training: stage 1 (the anomaly expert), stage 2 (instruction tuning), the tiny tower's pretraining, launch."""
