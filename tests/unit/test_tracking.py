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


def test_stage_run_nests_under_parent_and_tags_lineage(tmp_path: Path, params, monkeypatch, mlflow_store) -> None:
    import mlflow

    mlflow_store(tmp_path)
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


def test_consecutive_workspaces_log_to_their_own_store(tmp_path: Path, mlflow_store) -> None:
    """MLflow exports MLFLOW_TRACKING_URI when a store is set; a later workspace must not inherit it. The first
    workspace is bare (its stage creates the store); the second holds a blank store already (creating a second
    one adds seconds of schema migrations, not a property): a leaked URI sends its run to the first store."""
    import mlflow

    stores = []
    for name in ("a", "b"):
        ws = tmp_path / name
        ws.mkdir()
        if name == "b":
            mlflow_store(ws)
        params = load_params(None, ["tracking.experiment=t"])
        with tracking.stage_run(params, "prepare", ws):
            tracking.log_metrics({"rows": 1})
        stores.append(ws / "mlflow.db")
        mlflow.set_tracking_uri(f"sqlite:///{ws / 'mlflow.db'}")
        assert len(mlflow.search_runs(experiment_names=["t"])) == 1
    assert stores[0].exists()  # made by the first workspace's stage


_HOLD_RUN = """
import sys, time
from pathlib import Path
from anomaly_ov import tracking
from anomaly_ov.config import load_params
ws, stage = Path(sys.argv[1]), sys.argv[2]
params = load_params(None, [f"tracking.tracking_uri=sqlite:///{ws}/mlflow.db", "tracking.experiment=t"])
with tracking.stage_run(params, stage, ws) as run:
    (ws / f"{stage}.ready").write_text(run.info.run_id)
    while True:
        time.sleep(0.1)
"""


def test_killed_stage_runs_do_not_stay_running(tmp_path: Path, params, mlflow_store) -> None:
    """Two real stage processes hold MLflow runs: SIGTERM ends its run as KILLED at once; SIGKILL leaves the run
    RUNNING until the next stage started in the workspace finds its process gone and marks it KILLED. A run whose
    process is alive is left alone."""
    import os
    import signal
    import sys
    import time

    import mlflow

    mlflow_store(tmp_path)  # the store and its experiment exist before two processes open them at once
    tracking.configure(params, tmp_path)
    env = {k: v for k, v in os.environ.items() if k != tracking.TRACKING_URI_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                      env.get("PYTHONPATH")]))
    procs = {stage: subprocess.Popen([sys.executable, "-c", _HOLD_RUN, str(tmp_path), stage], env=env)
             for stage in ("sigkilled", "sigtermed")}
    try:
        ready = {stage: tmp_path / f"{stage}.ready" for stage in procs}
        while not all(f.exists() for f in ready.values()):  # pytest-timeout ends a child that never gets there
            assert all(p.poll() is None for p in procs.values()), "a child died before opening its run"
            time.sleep(0.05)
        run_ids = {stage: f.read_text() for stage, f in ready.items()}
        procs["sigkilled"].send_signal(signal.SIGKILL)
        procs["sigtermed"].send_signal(signal.SIGTERM)
        codes = {stage: p.wait() for stage, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    assert codes == {"sigkilled": -signal.SIGKILL, "sigtermed": 128 + signal.SIGTERM}
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_run(run_ids["sigtermed"]).info.status == "KILLED"
    assert client.get_run(run_ids["sigkilled"]).info.status == "RUNNING"  # nothing ran in that process

    with tracking.stage_run(params, "next", tmp_path) as run:
        assert client.get_run(run_ids["sigkilled"]).info.status == "KILLED"
        assert "is gone" in client.get_run(run_ids["sigkilled"]).data.tags["ended_by"]
        experiment = client.get_experiment_by_name("t").experiment_id
        assert tracking.end_stale_runs(client, experiment, tmp_path) == []  # this process is alive: not touched
        assert client.get_run(run.info.run_id).info.status == "RUNNING"
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
