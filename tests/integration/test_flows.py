"""The Prefect flows for real (temporary Prefect server, MLflow SQLite, DVC in a git repo) on tiny stand-in stages.

The stand-in stages (fake_stages.py) have the real names and report paths, so these tests cover the
orchestration itself: ordering, DVC skipping, environment hand-over, retries, timeouts, failure reasons,
artifacts, the MLflow parent run and the deployment definition. The real stages are covered by
test_pipeline_real.py; the retrain flow (dvc pull from an empty remote, the stages, dvc push) runs from its real
schedule in test_schedule.py.
"""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient
from workspaces import FAKE_OVERRIDES, read_json, write_params

from anomaly_ov.orchestration import StageError

pytestmark = pytest.mark.integration


def attempts(ws, stage: str) -> int:
    path = ws / "reports" / "env" / f"{stage}.attempts"
    return len(path.read_text().split()) if path.exists() else 0


def test_pipeline_runs_every_stage_then_dvc_skips_them_then_extensions_run_alone(prefect_server, fake_workspace):
    from flows.extensions import extensions
    from flows.pipeline import pipeline

    first = pipeline(workspace=str(fake_workspace))
    names = [s["stage"] for s in first["stages"]]
    assert names == ["sources", "prepare", "validate", "synthesize", "pretrain_tower", "train_expert", "train_instruct",
                     "evaluate", "extend_medical", "extend_3d", "register"]
    assert not any(s["skipped"] for s in first["stages"])
    run_id = first["mlflow_run_id"]
    env = read_json(fake_workspace / "reports/env/train_expert.json")
    assert env["parent_run_id"] == run_id
    assert env["tracking_uri"] == f"sqlite:///{fake_workspace / 'mlflow.db'}"
    assert env["anomaly_ov_on_path"] and env["anomaly_ov_on_path"].endswith("anomaly-ov")

    client = MlflowClient(env["tracking_uri"])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["zero_shot.image_auroc"] == pytest.approx(0.8)
    assert run.data.metrics["stage.train_expert.skipped"] == 0.0
    assert run.data.params["train.expert.tiny.epochs"] == "1"
    assert len(run.data.tags["git_commit"]) == 40 and run.data.tags["params_hash"]
    assert run.data.tags["prefect.flow_run_id"]
    artifacts = {a.path for a in client.list_artifacts(run_id, "reports")}
    assert "reports/metrics.json" in artifacts and "reports/validation.json" in artifacts

    flow_run = run.data.tags["prefect.flow_run_id"]
    summary = run_artifact(flow_run, "train-expert-summary")
    assert "status: **ran**" in summary and "history[last].loss | 0.5" in summary
    assert "validation passed" in run_artifact(flow_run, "validate-summary").lower()

    second = pipeline(workspace=str(fake_workspace))
    # `sources` re-hashes the datasets every time (always_changed); nothing changed, so every other stage skips
    assert [s["stage"] for s in second["stages"] if not s["skipped"]] == ["sources"]
    assert attempts(fake_workspace, "train_expert") == 1
    second_flow_run = client.get_run(second["mlflow_run_id"]).data.tags["prefect.flow_run_id"]
    assert "skipped (DVC: up to date)" in run_artifact(second_flow_run, "train-expert-summary")
    assert client.get_run(second["mlflow_run_id"]).data.metrics["stage.evaluate.skipped"] == 1.0

    # the extensions flow on the same workspace, 3D now switched off: only the enabled extension runs (forced)
    write_params(fake_workspace, [*FAKE_OVERRIDES, "extensions.threed.enabled=false"])
    result = extensions(workspace=str(fake_workspace), force=True)
    assert [s["stage"] for s in result["stages"]] == ["extend_medical"]
    assert attempts(fake_workspace, "extend_medical") == 2 and attempts(fake_workspace, "extend_3d") == 1


def test_validation_failure_stops_the_flow_without_retry(prefect_server, make_workspace):
    from flows.pipeline import pipeline

    ws = make_workspace("fake", ["validate.min_images_per_category=5000",
                                 "schedule.stages={validate: {retries: 2, retry_delay_s: 0}}"])
    with pytest.raises(StageError) as info:
        pipeline(workspace=str(ws))
    assert info.value.stage == "validate" and not info.value.retryable and info.value.kind == "StageFailed"
    assert "images_per_category (category s has fewer than 5000 images)" in info.value.reason
    assert info.value.failing == ["images_per_category: category s"]
    assert attempts(ws, "validate") == 1  # no retries for a data failure
    assert attempts(ws, "synthesize") == 0  # nothing after it ran
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("anomaly-ov")
    runs = client.search_runs([experiment.experiment_id], "tags.flow = 'pipeline'")
    assert [r.info.status for r in runs] == ["FAILED"], [(r.info.status, r.data.tags) for r in runs]
    assert "fewer than 5000" in runs[0].data.tags["error"]


def run_artifact(flow_run_id, key: str) -> str:
    """The latest artifact ``key`` of this flow run (the flows of other tests, on the other xdist worker too, make
    artifacts with the same keys on the run's one Prefect server)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    only = ArtifactFilter(key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=only, sort=ArtifactSort.CREATED_DESC, limit=1)
    assert found, f"flow run {flow_run_id} has no artifact {key!r}"
    return found[0].data


def flow_logs(flow_run_id) -> list[str]:
    """The flow run's log messages as the Prefect server stored them (its tasks' logs included)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # send what is queued (the worker sends in batches)
    log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        for _ in range(100):  # the log worker sends in batches: wait until the failure has arrived
            messages = [log.message for log in client.read_logs(log_filter=log_filter, limit=200)]
            if any("failed on attempt" in m for m in messages):
                break
            time.sleep(0.2)
    return messages


def test_crash_is_retried_and_timeout_reported(prefect_server, make_workspace, monkeypatch):
    from flows.pipeline import pipeline

    ws = make_workspace("fake", ["schedule.stages={train_expert: {retries: 1, retry_delay_s: 0}, "
                                 "evaluate: {timeout_s: 2}}"])
    monkeypatch.setenv("FAKE_CRASH_ONCE", "1")  # train_expert SIGKILLs itself on its first run
    monkeypatch.setenv("FAKE_SLEEP_STAGE", "evaluate")
    state = pipeline(workspace=str(ws), return_state=True)
    error = state.result(raise_on_failure=False)
    assert isinstance(error, StageError) and "timed out after 2 s" in error.reason and error.kind == "StageTimeout"
    assert attempts(ws, "train_expert") == 2  # killed once, retried, succeeded
    assert (ws / "models/expert/weights.json").exists()
    crash = run_artifact(state.state_details.flow_run_id, "train-expert-failure")
    assert "kind: **Killed**" in crash and "attempt 1 of 2 failed, Prefect retries it" in crash
    assert "- attempt: 2 (retried after 1 failure(s))" in run_artifact(state.state_details.flow_run_id,
                                                                        "train-expert-summary")
    logs = flow_logs(state.state_details.flow_run_id)
    assert any("train_expert failed on attempt 1 of 2: Killed" in m and "Prefect will retry it" in m for m in logs)
    assert any("train_expert: ran in" in m and "attempt 2 of 2" in m for m in logs)


def test_bad_input_in_a_flow_is_typed_names_the_files_and_is_not_retried(prefect_server, make_workspace,
                                                                            monkeypatch):
    from flows.pipeline import pipeline

    ws = make_workspace("fake", ["schedule.stages={prepare: {retries: 2, retry_delay_s: 0}}"])
    monkeypatch.setenv("FAKE_BAD_INPUT_STAGE", "prepare")
    state = pipeline(workspace=str(ws), return_state=True)
    error = state.result(raise_on_failure=False)
    assert isinstance(error, StageError) and (error.kind, error.retryable, error.stage_exit_code) == (
        "InputError", False, 3)
    assert error.failing == ["ds/widget/a.png: not an image", "ds/widget/b.png: truncated"]
    assert attempts(ws, "prepare") == 1 and attempts(ws, "validate") == 0  # not retried; nothing after it ran
    failure = run_artifact(state.state_details.flow_run_id, "prepare-failure")
    assert "kind: **InputError**" in failure and "attempt: 1 of 3" in failure and "retryable: False" in failure
    assert "| ds/widget/a.png: not an image |" in failure and "| ds/widget/b.png: truncated |" in failure
    logs = flow_logs(state.state_details.flow_run_id)
    line = next(m for m in logs if "prepare failed on attempt 1 of 3" in m)
    assert "InputError: 2 unusable file(s)" in line and "ds/widget/a.png: not an image" in line
    assert "retryable: False, not retried" in line


def test_retrain_deployment_has_the_cron_from_params(make_workspace):
    from anomaly_ov.config import load_params
    from flows.retrain import retrain_deployment

    ws = make_workspace("fake", ["schedule.cron=15 4 * * 2", "schedule.timezone=Europe/Paris",
                                 "schedule.deployment_name=nightly"])
    params = load_params(ws / "params.yaml")
    deployment = retrain_deployment(params, str(ws))
    assert deployment.name == "nightly"
    schedule = deployment.schedules[0].schedule
    assert (schedule.cron, schedule.timezone) == ("15 4 * * 2", "Europe/Paris")
    assert deployment.parameters == {"workspace": str(ws.resolve()), "params_file": "params.yaml"}
    assert json.dumps(deployment.parameters)
    assert deployment.concurrency_limit == 1  # a long run never overlaps the next scheduled one in one workspace
