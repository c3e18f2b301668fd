"""`anomaly-ov` commands: validate."""

from anomaly_ov.cli import app  # noqa: F401  (commands register on it)

