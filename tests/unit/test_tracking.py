"""MLflow helpers against a real SQLite store: nested stage runs under a flow's parent run, lineage tags."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from anomaly_ov import tracking
from anomaly_ov.config import load_params


@pytest.fixture()
def params(tmp_path: Path):
    return load_params(None, [f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "tracking.experiment=t"])


def test_stage_run_nests_under_parent_and_tags_lineage(tmp_path: Path, params, monkeypatch) -> None:
    import mlflow

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "init"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  prepare:\n    cmd: x\n    outs:\n    - path: data/manifest.parquet\n"
        "      md5: abc123\n      size: 1\n"
    )
    tracking.configure(params, tmp_path)
    with mlflow.start_run(run_name="flow") as parent:
        parent_id = parent.info.run_id
    monkeypatch.setenv(tracking.PARENT_RUN_ENV, parent_id)
    with tracking.stage_run(params, "prepare", tmp_path) as run:
        tracking.log_metrics({"rows": 10, "per_role": {"train": 7}, "name": "x", "nan": float("nan")})
        tracking.log_params({"data": {"image_size": 64}})
        run_id = run.info.run_id
    stored = mlflow.get_run(run_id)
    assert stored.data.tags["mlflow.parentRunId"] == parent_id
    assert stored.data.tags["stage"] == "prepare"
    assert stored.data.tags["dvc.data/manifest.parquet"] == "abc123"
    assert len(stored.data.tags["git_commit"]) == 40
    assert stored.data.tags["params_hash"] == params.section_hash()
    assert stored.data.metrics == {"rows": 10.0, "per_role.train": 7.0}
    assert stored.data.params == {"data.image_size": "64"}
    assert (tmp_path / "mlflow.db").exists()


def test_disabled_tracking_is_a_no_op(tmp_path: Path) -> None:
    params = load_params(None, ["tracking.enabled=false"])
    with tracking.stage_run(params, "prepare", tmp_path) as run:
        tracking.log_metrics({"rows": 1})
    assert run is None
    assert not (tmp_path / "mlflow.db").exists()


def test_flatten_and_metric_names() -> None:
    assert tracking.flatten({"a": {"b": 1, "c": {"d": 2}}}) == {"a.b": 1, "a.c.d": 2}
    assert tracking._metric_key("per_class.pcb@0.5") == "per_class.pcb_0.5"


def test_consecutive_workspaces_log_to_their_own_store(tmp_path: Path) -> None:
    """MLflow exports MLFLOW_TRACKING_URI when a store is set; a later workspace must not inherit it."""
    import mlflow

    stores = []
    for name in ("a", "b"):
        ws = tmp_path / name
        ws.mkdir()
        params = load_params(None, ["tracking.experiment=t"])
        with tracking.stage_run(params, "prepare", ws):
            tracking.log_metrics({"rows": 1})
        stores.append(ws / "mlflow.db")
        mlflow.set_tracking_uri(f"sqlite:///{ws / 'mlflow.db'}")
        assert len(mlflow.search_runs(experiment_names=["t"])) == 1
    assert all(store.exists() for store in stores)
