"""`anomaly-ov` commands: registry."""

from anomaly_ov.cli import app  # noqa: F401  (commands register on it)

