"""The retrain deployment on a Prefect work pool, for real: the session's Prefect server, a process work pool made
by ``deploy_retrain``, a real ``prefect worker start`` subprocess that runs the deployment.

The flow run is :func:`flows.retrain.worker_check` (same module, same deployment function as the retrain flow; the
retrain flow itself takes over a minute on stand-in stages, see test_flows.py for it), which records what the
worker's process saw.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from workspaces import BIN, stop_process, write_params

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def pool_workspace(root: Path, overrides: list[str]) -> Path:
    root.mkdir(parents=True)
    write_params(root, overrides)
    return root


def test_retrain_deployment_targets_the_pool_in_params(tmp_path):
    """No server needed: the deployment object names the pool, its job variables and the flow's module path."""
    from anomaly_ov.config import load_params
    from flows.retrain import retrain_deployment

    ws = pool_workspace(tmp_path / "ws", ["schedule.work_pool.name=gpu-nodes", "schedule.work_pool.type=kubernetes",
                                          "schedule.work_pool.job_variables={image: reg/anomaly-ov:1, namespace: ml}",
                                          "schedule.cron=0 2 * * 6"])
    deployment = retrain_deployment(load_params(ws / "params.yaml"), str(ws))
    assert deployment.work_pool_name == "gpu-nodes"
    assert deployment.job_variables == {"image": "reg/anomaly-ov:1", "namespace": "ml"}
    assert deployment.entrypoint == "flows.retrain.retrain"  # importable wherever the project is installed
    assert deployment.schedules[0].schedule.cron == "0 2 * * 6"
    assert deployment.parameters == {"workspace": str(ws.resolve()), "params_file": "params.yaml"}


def test_without_a_pool_the_deployment_is_served_and_deploying_is_refused(tmp_path):
    from anomaly_ov.config import load_params
    from anomaly_ov.errors import ConfigError
    from flows.retrain import deploy_retrain, retrain_deployment

    ws = pool_workspace(tmp_path / "ws", [])
    params = load_params(ws / "params.yaml")
    assert retrain_deployment(params, str(ws)).work_pool_name is None
    with pytest.raises(ConfigError, match="schedule.work_pool.name is empty"):
        deploy_retrain(params, str(ws))


def test_a_container_pool_without_an_image_is_a_config_error():
    from anomaly_ov.config import load_params
    from anomaly_ov.errors import ConfigError

    with pytest.raises(ConfigError, match=r"schedule.work_pool: .*docker work pool.*job_variables.image"):
        load_params(None, ["schedule.work_pool.name=p", "schedule.work_pool.type=docker"])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_deployment_runs_on_a_process_work_pool_through_a_real_worker(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from anomaly_ov.config import load_params
    from anomaly_ov.errors import ConfigError
    from flows.retrain import deploy_retrain, worker_check

    pool = f"aov-process-{uuid.uuid4().hex[:8]}"
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    ws = pool_workspace(tmp_path / "ws", [f"schedule.work_pool.name={pool}", "schedule.work_pool.type=process",
                                          f"schedule.work_pool.job_variables={{working_dir: {jobs}}}",
                                          "schedule.deployment_name=pool-check"])
    params = load_params(ws / "params.yaml")

    deployment_id = deploy_retrain(params, str(ws), flow=worker_check, scheduled=False)
    with get_client(sync_client=True) as client:
        assert client.read_work_pool(pool).type == "process"  # created by deploy_retrain
        deployment = client.read_deployment(deployment_id)
        assert (deployment.work_pool_name, deployment.entrypoint) == (pool, "flows.retrain.worker_check")
        assert deployment.job_variables == {"working_dir": str(jobs)}
        run = client.create_flow_run_from_deployment(deployment_id)

    log = tmp_path / "worker.log"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(REPO),
           "PREFECT_WORKER_QUERY_SECONDS": "1"}
    worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", pool, "--run-once"], cwd=tmp_path,
                              env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        worker.wait(timeout=240)  # --run-once: takes the scheduled run, waits for its process, exits
    finally:
        stop_process(worker)  # the worker's group holds its flow run's process too
        print("worker.log (tail):\n" + log.read_text()[-3000:])
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run.id).state
    assert state is not None and state.is_completed(), (state, log.read_text()[-3000:])
    seen = json.loads((ws / "reports/worker_check.json").read_text())
    assert seen["workspace"] == str(ws.resolve()) and seen["deployment_name"] == "pool-check"
    assert seen["cwd"] == str(jobs)  # the pool's job variable reached the worker's flow-run process
    assert seen["python"] == str(BIN / "python") or Path(seen["python"]).parent == BIN

    # `anomaly-ov schedule` with a pool in params registers the real retrain deployment there (cron included)
    from typer.testing import CliRunner

    from anomaly_ov.cli import app

    done = CliRunner().invoke(app, ["schedule", "-w", str(ws)], env={"PREFECT_API_URL": PREFECT_API_URL.value()})
    assert done.exit_code == 0, done.output
    assert f"to work pool '{pool}'" in done.output and f"prefect worker start --pool {pool}" in done.output
    with get_client(sync_client=True) as client:
        retrain = client.read_deployment_by_name("anomaly-ov-retrain/pool-check")
    assert (retrain.work_pool_name, retrain.entrypoint) == (pool, "flows.retrain.retrain")
    assert retrain.schedules[0].schedule.cron == params.schedule.cron

    # the pool exists as a process pool now: deploying to it as another type is refused, naming the key
    other = load_params(ws / "params.yaml", ["schedule.work_pool.type=docker",
                                             "schedule.work_pool.job_variables={image: anomaly-ov:test}"])
    with pytest.raises(ConfigError, match=rf"pool '{pool}' exists with type 'process'.*schedule.work_pool.type"):
        deploy_retrain(other, str(ws))
