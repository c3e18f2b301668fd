"""The register stage end to end on a real tiny model and a real MLflow SQLite store: metrics must describe the model
being registered, and a registration SIGKILLed between creating the version and the gate is completed by the
next run instead of leaving a version without a verdict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from mlflow import MlflowClient

from anomaly_ov import registry
from anomaly_ov.config import dump_params, load_params
from anomaly_ov.fingerprint import dir_sha256
from anomaly_ov.stages import StageFailed

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def workspace(tmp_path, mlflow_store):
    import torch

    from anomaly_ov.model.presets import build_model, build_processor, save_pretrained
    from anomaly_ov.model.tokenizer import train_tokenizer

    params = load_params(None, ["registry.model_name=stage-test", "registry.thresholds={zero_shot.image_auroc: 0.7}"])
    torch.manual_seed(0)
    tok = train_tokenizer(["Yes, there is a scratch on the left.", "No, the object looks normal."] * 5)
    save_pretrained(build_model(params, tok).eval(), build_processor(params, tok),
                    tmp_path / params.train.instruct.output_dir)
    dump_params(params, tmp_path / "params.yaml")
    mlflow_store(tmp_path)
    return params, tmp_path


def write_metrics(params, ws, model_sha: str, images: int = 60) -> None:
    metrics = {"zero_shot.image_auroc": 0.9, "counts.images": images, "counts.anomalous": images // 3,
               "counts.normal": images - images // 3, "provenance.model_sha256": model_sha,
               "provenance.benchmark_sha256": "b" * 64}
    path = ws / params.evaluate.metrics
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics))


def versions(client: MlflowClient, name: str) -> list:
    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 (no model yet)
        return []
    return [client.get_model_version(name, v.version) for v in client.search_model_versions(f"name='{name}'")]


def test_metrics_of_another_model_register_nothing(workspace):
    params, ws = workspace
    write_metrics(params, ws, "0" * 64)
    with pytest.raises(StageFailed, match="re-run `anomaly-ov stage evaluate` before registering"):
        registry.run_register(params, ws)
    (ws / params.evaluate.metrics).write_text(json.dumps({"zero_shot.image_auroc": 1.0, "counts.images": 4}))
    with pytest.raises(StageFailed, match="does not say which model it measured"):
        registry.run_register(params, ws)
    assert versions(MlflowClient(f"sqlite:///{ws / 'mlflow.db'}"), params.registry.model_name) == []


@pytest.mark.timeout(400)
def test_a_registration_killed_after_the_version_exists_is_completed_by_the_next_run(workspace):
    params, ws = workspace
    write_metrics(params, ws, dir_sha256(ws / params.train.instruct.output_dir))
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from anomaly_ov import registry
        from anomaly_ov.config import load_params

        def killed(*args, **kwargs):  # the version exists; the gate has not run
            os.kill(os.getpid(), signal.SIGKILL)

        registry.gate_version = killed
        ws = Path({str(ws)!r})
        registry.run_register(load_params(ws / "params.yaml"), ws)
    """)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # set by earlier tests' MLflow use
    done = subprocess.run([sys.executable, "-c", script], cwd=ws, capture_output=True, text=True, timeout=300,
                          env={**env, "OMP_NUM_THREADS": "1"})
    assert done.returncode == -9, done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    name = params.registry.model_name
    (half,) = versions(client, name)
    assert half.tags[registry.PENDING_TAG] == "true" and "gate.verdict" not in half.tags
    assert half.tags["eval.images"] == "60" and half.tags["metric.zero_shot.image_auroc"] == "0.9"
    listing = registry.describe(params, ws)["versions"]
    assert [v["verdict"] for v in listing] == ["incomplete"]

    summary = registry.run_register(params, ws)
    report = json.loads((ws / params.registry.report).read_text())
    (full,) = versions(client, name)
    assert summary["version"] == int(half.version) and report["resumed_pending_version"] is True
    assert full.tags["gate.verdict"] == "production" and registry.PENDING_TAG not in full.tags
    assert set(full.aliases) == {"candidate", "staging", "production"}
