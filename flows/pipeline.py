"""The pipeline flow: every stage declared in anomaly_ov/stages.py, in order (sources -> prepare -> validate ->
synthesize -> pretrain_tower -> train_expert -> train_instruct -> evaluate -> [extend_medical] -> [extend_3d] ->
register), one task per DVC stage, one MLflow parent run per flow run.

Run it with `anomaly-ov run` (or `python -m flows.pipeline`). DVC skips stages whose inputs did not change, so a
re-run with nothing changed finishes in seconds and registers nothing new.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from anomaly_ov import orchestration as orch
from anomaly_ov.config import Params, load_params
from anomaly_ov.tracking import start_tracking
from tasks.stages import stage_task


def load_workspace_params(workspace: str, params_file: str = "params.yaml") -> Params:
    """The params DVC will use: the workspace's params file (DVC reads it; CLI overrides would not reach it)."""
    path = Path(params_file)
    return load_params(path if path.is_absolute() else Path(workspace) / path)


def run_stages(
    stages: list[str],
    workspace: str,
    params: Params,
    parent: orch.ParentRun | None,
    force: bool = False,
) -> list[orch.StageOutcome]:
    """Run ``stages`` in order, each as its own task; stop at the first failure (the exception propagates)."""
    outcomes = []
    for stage in stages:
        result = stage_task(stage, params)(
            stage,
            workspace,
            params,
            parent_run_id=parent.run_id if parent else None,
            tracking_uri=parent.tracking_uri if parent else None,
            force=force,
        )
        outcomes.append(orch.StageOutcome(**result))
    return outcomes


def flow_tags() -> dict[str, str]:
    """Prefect identifiers to put on the MLflow run, so each side points to the other."""
    from prefect.runtime import flow_run

    return {"prefect.flow_run_id": str(flow_run.id or ""), "prefect.flow_run_name": str(flow_run.name or "")}


def run_with_parent(
    flow_name: str,
    stages: list[str],
    workspace: str,
    params: Params,
    parent_run_id: str | None,
    force: bool,
) -> tuple[list[orch.StageOutcome], orch.ParentRun | None]:
    """Open (or join) the MLflow parent run, run the stages, close the run with their outcome."""
    parent: orch.ParentRun | None
    if parent_run_id:
        parent = orch.ParentRun(parent_run_id, start_tracking(params, workspace), "", owned=False)
    else:
        parent = orch.start_parent_run(params, workspace, flow_name, flow_tags())
    outcomes: list[orch.StageOutcome] = []
    with orch.closing_parent_run(parent, params, workspace, outcomes):
        outcomes.extend(run_stages(stages, workspace, params, parent, force))
    return outcomes, parent


def outcome_markdown(outcomes: list[orch.StageOutcome], footer: str) -> str:
    lines = ["| stage | status | seconds | attempts |", "|---|---|---|---|"]
    lines += [f"| {o.stage} | {'skipped (up to date)' if o.skipped else 'ran'} | {o.seconds:g} | {o.attempts} |"
              for o in outcomes]
    return "\n".join(["# Pipeline run", "", *lines, "", "```", footer.strip(), "```", ""])


@flow(name="anomaly-ov-pipeline", log_prints=True)
def pipeline(
    workspace: str = ".",
    params_file: str = "params.yaml",
    force: bool = False,
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """Every stage in order; extensions when enabled in params; register last (the gate runs inside it)."""
    workspace = str(Path(workspace).resolve())
    params = load_workspace_params(workspace, params_file)
    stages = [*orch.PIPELINE_STAGES, *orch.enabled_extensions(params), orch.REGISTER_STAGE]
    get_run_logger().info("stages: %s", " -> ".join(stages))
    outcomes, parent = run_with_parent("pipeline", stages, workspace, params, parent_run_id, force)
    footer = orch.where_to_look(params, workspace, parent)
    create_markdown_artifact(outcome_markdown(outcomes, footer), key="pipeline-run", description="stages and links")
    print(footer)
    return {
        "stages": [o.to_dict() for o in outcomes],
        "mlflow_run_id": parent.run_id if parent else None,
        "register": orch.read_register_report(params, workspace),
    }


if __name__ == "__main__":  # pragma: no cover
    pipeline()
