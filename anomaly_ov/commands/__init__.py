"""CLI sub-commands, one module per area; each registers its commands on ``anomaly_ov.cli.app``.

Modules here must import heavy libraries (torch, mlflow, prefect, great_expectations) inside the command
functions, never at module level, so that `anomaly-ov --help` stays instant.
"""
