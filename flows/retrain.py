"""The retraining flow (what the schedule runs): dvc pull -> pipeline -> promotion report -> dvc push.

Where it runs: ``anomaly-ov schedule`` serves :func:`retrain_deployment` itself, or, with
``params.schedule.work_pool.name`` set, :func:`deploy_retrain` registers it with a Prefect work pool (process,
docker or kubernetes) whose workers run it (docs/deployment.md).

`dvc pull --allow-missing` restores data and models from the DVC remote so that unchanged stages are skipped;
an empty remote (the very first run) is not an error. After the pipeline, the promotion gate's decision (taken by
the register stage) is published as an artifact, and `dvc push` sends the new data and models to the remote.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from prefect import Flow, flow

from anomaly_ov import orchestration as orch
from anomaly_ov.errors import ConfigError
from flows.pipeline import flow_tags, load_workspace_params, outcome_markdown, run_stages
from tasks.stages import dvc_task, promotion_task

if TYPE_CHECKING:
    from uuid import UUID

    from prefect.deployments.runner import RunnerDeployment

    from anomaly_ov.config import Params


RETRAIN_DESCRIPTION = "Weekly retraining: dvc pull -> pipeline -> promotion gate -> dvc push"


@flow(name="anomaly-ov-retrain", log_prints=True)
def retrain(workspace: str = ".", params_file: str = "params.yaml", force: bool = False) -> dict[str, Any]:
    """Pull, run every stage (DVC skips what is up to date), report the promotion decision, push."""
    from prefect.artifacts import create_markdown_artifact

    workspace = str(Path(workspace).resolve())
    params = load_workspace_params(workspace, params_file)
    remote = params.schedule.dvc_remote
    dvc_task.with_options(name="dvc-pull")(["pull", "--allow-missing", "-r", remote], workspace, tolerate_failure=True)
    stages = [*orch.PIPELINE_STAGES, *orch.enabled_extensions(params), orch.REGISTER_STAGE]
    parent = orch.start_parent_run(params, workspace, "retrain", flow_tags())
    outcomes: list[orch.StageOutcome] = []
    with orch.closing_parent_run(parent, params, workspace, outcomes):
        outcomes.extend(run_stages(stages, workspace, params, parent, force))
        decision = promotion_task(workspace, params)
        dvc_task.with_options(name="dvc-push")(["push", "-r", remote], workspace)
    footer = orch.where_to_look(params, workspace, parent)
    create_markdown_artifact(outcome_markdown(outcomes, footer), key="retrain-run", description="stages and links")
    print(footer)
    return {
        "stages": [o.to_dict() for o in outcomes],
        "mlflow_run_id": parent.run_id if parent else None,
        "register": decision,
    }


@flow(name="anomaly-ov-worker-check", log_prints=True)
def worker_check(workspace: str = ".", params_file: str = "params.yaml") -> dict[str, Any]:
    """What a work pool's worker sees: the project imported, the workspace's params read, the working directory.

    Deploy it like the retrain flow (``retrain_deployment(..., flow=worker_check, scheduled=False)``) and run it
    once to check a pool before the first scheduled retrain. Writes ``reports/worker_check.json`` in the workspace.
    """
    from anomaly_ov.io import atomic_write_json

    workspace = str(Path(workspace).resolve())
    params = load_workspace_params(workspace, params_file)
    seen = {"workspace": workspace, "params_file": params_file, "cwd": os.getcwd(), "host": socket.gethostname(),
            "python": sys.executable, "deployment_name": params.schedule.deployment_name}
    atomic_write_json(Path(workspace) / "reports" / "worker_check.json", seen)
    print(f"worker check: {seen}")
    return seen


def retrain_deployment(params: Params, workspace: str, params_file: str = "params.yaml", flow: Flow | None = None,
                       scheduled: bool = True) -> RunnerDeployment:
    """The deployment of :func:`retrain` (or ``flow``, same parameters): cron and timezone from ``params.schedule``.

    With ``params.schedule.work_pool.name`` empty, the deployment is for ``serve()`` (``anomaly-ov schedule`` runs
    the flows in its own process). With a pool name, it targets that pool: the flow is referenced by its module
    path (``flows.retrain.retrain``), which any worker whose Python has the project installed imports (a process
    worker in the project's venv, or a docker / kubernetes image with the project), and the pool's
    ``job_variables`` are set for this deployment. Register it with :func:`deploy_retrain`.
    """
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    chosen = flow or retrain
    pool = params.schedule.work_pool
    options: dict[str, Any] = {}
    if pool.name:
        options = {"work_pool_name": pool.name, "job_variables": dict(pool.job_variables),
                   "entrypoint_type": EntrypointType.MODULE_PATH}
    # Prefect's async_dispatch types the result as "RunnerDeployment or its coroutine": called outside an event loop
    # (the CLI, the tests) it runs the synchronous implementation and returns the deployment itself
    return cast("RunnerDeployment", chosen.to_deployment(
        name=params.schedule.deployment_name,
        schedules=[Cron(params.schedule.cron, timezone=params.schedule.timezone)] if scheduled else None,
        parameters={"workspace": str(Path(workspace).resolve()), "params_file": params_file},
        description=RETRAIN_DESCRIPTION if chosen is retrain else (chosen.description or "").strip().split("\n")[0],
        tags=["anomaly-ov", "retrain"],
        # one run at a time: a run that outlasts the cron interval would otherwise share the workspace with the next
        # one, which then fails on DVC's lock; the next scheduled run waits for a slot instead
        concurrency_limit=1,
        **options,
    ))


def ensure_work_pool(params: Params) -> bool:
    """Create ``params.schedule.work_pool`` (name and type, the worker type's default job template) unless it
    exists; True when it was created. An existing pool of another type is an error."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.utilities.asyncutils import run_coro_as_sync
    from prefect.workers.utilities import get_default_base_job_template_for_infrastructure_type

    pool = params.schedule.work_pool
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_work_pool(pool.name)
        except ObjectNotFound:
            existing = None
        if existing is not None:
            if existing.type != pool.type:
                raise ConfigError(f"schedule.work_pool: pool {pool.name!r} exists with type {existing.type!r}, "
                                  f"not {pool.type!r}; set schedule.work_pool.type to {existing.type!r} or use "
                                  "another name")
            return False
        template = run_coro_as_sync(get_default_base_job_template_for_infrastructure_type(pool.type))
        if template is None:
            raise ConfigError(f"schedule.work_pool.type {pool.type!r}: Prefect has no job template for it here; "
                              f"create the pool first (prefect work-pool create {pool.name} --type {pool.type})")
        client.create_work_pool(WorkPoolCreate(name=pool.name, type=pool.type, base_job_template=template))
    return True


def deploy_retrain(params: Params, workspace: str, params_file: str = "params.yaml", flow: Flow | None = None,
                   scheduled: bool = True) -> UUID:
    """Register :func:`retrain_deployment` with the Prefect server in ``PREFECT_API_URL`` for
    ``params.schedule.work_pool`` (the pool is created when missing); returns the deployment id. A worker of the
    pool then runs it: ``prefect worker start --pool <name>``."""
    if not params.schedule.work_pool.name:
        raise ConfigError("schedule.work_pool.name is empty: name the Prefect work pool to deploy to (or run "
                          "`anomaly-ov schedule`, which serves the deployment itself)")
    ensure_work_pool(params)
    # outside an event loop apply() is synchronous (see retrain_deployment)
    return cast("UUID", retrain_deployment(params, workspace, params_file, flow, scheduled).apply())


if __name__ == "__main__":  # pragma: no cover
    retrain()
