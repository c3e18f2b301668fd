"""Test-session set-up: a hermetic, offline environment (REFERENCE.md section 9) before any library import."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

_OFFLINE_ENV = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "TOKENIZERS_PARALLELISM": "false",
    "MPLBACKEND": "Agg",
    "GIT_AUTHOR_NAME": "anomaly-ov tests",
    "GIT_AUTHOR_EMAIL": "tests@example.invalid",
    "GIT_COMMITTER_NAME": "anomaly-ov tests",
    "GIT_COMMITTER_EMAIL": "tests@example.invalid",
}
for _key, _value in _OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)
# A temporary Prefect home per test session; PREFECT_API_URL must be unset (not empty) for the local server.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="anomaly-ov-prefect-")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)

REPO_ROOT = Path(__file__).resolve().parents[1]
# Shared helper modules that sit beside this file (e.g. ``hostile``: broken and oversized image files).
sys.path.insert(0, str(Path(__file__).parent))
