"""`anomaly-ov run` (the main job: a Prefect flow over the DVC stages) and `anomaly-ov schedule` (weekly retrain)."""

from __future__ import annotations

import os
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from anomaly_ov.cli import ParamsOpt, WorkspaceOpt, _fail, app, in_workspace_file
from anomaly_ov.errors import ConfigError

#: Offline, no-telemetry defaults (docs/architecture.md, 'Offline, hermetic runs'); set before Prefect / MLflow /
#: DVC are imported.
OFFLINE_DEFAULTS = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


class FlowName(StrEnum):
    pipeline = "pipeline"
    retrain = "retrain"
    extensions = "extensions"


def prepare_environment() -> None:
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if os.environ.get("PREFECT_API_URL", None) == "":
        del os.environ["PREFECT_API_URL"]  # empty means "no server" to people, but breaks Prefect's client


@app.command("run")
def run_flow(
    flow: Annotated[FlowName, typer.Option("--flow", "-f", help="which flow")] = FlowName.pipeline,
    params_file: ParamsOpt = Path("params.yaml"),
    workspace: WorkspaceOpt = Path("."),
    force: Annotated[bool, typer.Option(help="re-run every stage even when DVC finds it up to date")] = False,
) -> None:
    """Run a flow: every stage through `dvc repro` under Prefect, tracked in MLflow; prints where to look.

    Without PREFECT_API_URL the flow runs on Prefect's temporary local server (started and stopped here); with
    it, the run is recorded on that server. Params come from the workspace's params file (edit it: DVC tracks it).
    """
    prepare_environment()
    from anomaly_ov.orchestration import StageError
    from flows.extensions import extensions
    from flows.pipeline import pipeline
    from flows.retrain import retrain

    # the three flows share these parameters (pipeline also takes a parent run id, which the CLI never passes)
    flows: dict[FlowName, Callable[..., object]] = {
        FlowName.pipeline: pipeline, FlowName.retrain: retrain, FlowName.extensions: extensions}
    chosen = flows[flow]
    try:
        chosen(workspace=str(workspace.resolve()), params_file=str(params_file), force=force)
    except StageError as exc:  # a project error: say which flow stopped, keep the error's exit code
        _fail(f"{flow.value} flow stopped: {exc}", exc.exit_code)


@app.command()
def schedule(
    params_file: ParamsOpt = Path("params.yaml"),
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Serve the retrain deployment on schedule.cron (params.yaml) against the Prefect server in PREFECT_API_URL.

    Start a server first: `prefect server start` (UI at http://127.0.0.1:4200), then
    `PREFECT_API_URL=http://127.0.0.1:4200/api anomaly-ov schedule`. Runs until Ctrl-C; each scheduled run is
    `anomaly-ov run --flow retrain` in this workspace. With schedule.work_pool.name set, it registers the
    deployment with that work pool instead and returns; the pool's workers run it (docs/deployment.md).
    """
    prepare_environment()
    if not os.environ.get("PREFECT_API_URL"):
        raise ConfigError(
            "PREFECT_API_URL is not set: a schedule needs a running Prefect server.\n"
            "  prefect server start            # UI at http://127.0.0.1:4200\n"
            "  export PREFECT_API_URL=http://127.0.0.1:4200/api\n"
            "  anomaly-ov schedule"
        )
    from prefect import serve

    from anomaly_ov.config import load_params
    from flows.retrain import retrain_deployment

    workspace = workspace.resolve()
    params = load_params(in_workspace_file(workspace, params_file))
    pool = params.schedule.work_pool.name
    if pool:
        from flows.retrain import deploy_retrain

        deployment_id = deploy_retrain(params, str(workspace), str(params_file))  # ConfigError: exit 2
        typer.echo(f"deployed 'anomaly-ov-retrain/{params.schedule.deployment_name}' ({deployment_id}) to work pool "
                   f"'{pool}' (cron '{params.schedule.cron}' {params.schedule.timezone}) on "
                   f"{os.environ['PREFECT_API_URL']}; a worker runs it: prefect worker start --pool {pool}")
        return
    deployment = retrain_deployment(params, str(workspace), str(params_file))
    typer.echo(
        f"serving deployment 'anomaly-ov-retrain/{params.schedule.deployment_name}' "
        f"(cron '{params.schedule.cron}' {params.schedule.timezone}) on {os.environ['PREFECT_API_URL']}"
    )
    serve(deployment)
