"""The retraining flow (what the schedule runs): dvc pull -> pipeline -> promotion report -> dvc push.

`dvc pull --allow-missing` restores data and models from the DVC remote so that unchanged stages are skipped;
an empty remote (the very first run) is not an error. After the pipeline, the promotion gate's decision (taken by
the register stage) is published as an artifact, and `dvc push` sends the new data and models to the remote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from anomaly_ov import orchestration as orch
from anomaly_ov.tracking import Terminated, sigterm_raises
from flows.pipeline import flow_tags, load_workspace_params, outcome_markdown, run_stages
from tasks.stages import dvc_task, promotion_task


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
    try:
        with sigterm_raises():  # SIGTERM ends the run as KILLED instead of leaving it RUNNING
            outcomes = run_stages(stages, workspace, params, parent, force)
            decision = promotion_task(workspace, params)
            dvc_task.with_options(name="dvc-push")(["push", "-r", remote], workspace)
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, Terminated | KeyboardInterrupt) else "FAILED"
        orch.finish_parent_run(parent, params, workspace, status=status, outcomes=outcomes,
                               error=str(exc) or type(exc).__name__)
        raise
    orch.finish_parent_run(parent, params, workspace, status="FINISHED", outcomes=outcomes)
    footer = orch.where_to_look(params, workspace, parent)
    create_markdown_artifact(outcome_markdown(outcomes, footer), key="retrain-run", description="stages and links")
    print(footer)
    return {
        "stages": [o.to_dict() for o in outcomes],
        "mlflow_run_id": parent.run_id if parent else None,
        "register": decision,
    }



def retrain_deployment(params, workspace: str, params_file: str = "params.yaml"):
    """The scheduled deployment of :func:`retrain`: cron and timezone from ``params.schedule``."""
    from prefect.schedules import Cron

    return retrain.to_deployment(
        name=params.schedule.deployment_name,
        schedules=[Cron(params.schedule.cron, timezone=params.schedule.timezone)],
        parameters={"workspace": str(Path(workspace).resolve()), "params_file": params_file},
        description="Weekly retraining: dvc pull -> pipeline -> promotion gate -> dvc push",
        tags=["anomaly-ov", "retrain"],
    )


if __name__ == "__main__":  # pragma: no cover
    retrain()
