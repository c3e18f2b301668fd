"""`anomaly-ov` commands: evaluate."""

from anomaly_ov.cli import app  # noqa: F401  (commands register on it)

