"""Stage 1 through stages.run_stage with MLflow on: params, per-step metrics, recipe tags and artifacts land in the
stage's run."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import tiny_params  # noqa: TID252


@pytest.mark.slow
def test_stage1_logs_into_the_stage_run(tiny_workspace: Path, mlflow_store) -> None:
    import mlflow

    from anomaly_ov.stages import run_stage

    mlflow_store(tiny_workspace)
    params = tiny_params("tracking.enabled=true", "train.expert.tiny.epochs=1")
    summary = run_stage("train_expert", params, tiny_workspace)
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tiny_workspace / 'mlflow.db'}")
    exp = client.get_experiment_by_name(params.tracking.experiment)
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.tags["stage"] == "train_expert"
    assert run.data.tags["mask_loss"] == "True" and run.data.tags["temperature"] == "10.0"
    assert run.data.params["recipe.family"] == "tiny"
    history = client.get_metric_history(run.info.run_id, "train.loss")
    assert len(history) == summary["steps"]
    assert "val.image_auroc" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"expert", "train_expert.json", "train_expert_curves.png"} <= artifacts
