"""Anomaly-OneVision: train, evaluate, track and ship the LTFM-equipped LLaVA-OneVision model.

The package is imported by every stage process, so it imports nothing itself; the layout and who owns what are in
docs/architecture.md. (Not empty on purpose, too: DVC warns on every run about an empty file among a stage's deps.)
"""
