"""The extensions flow: the medical and 3D runs alone (after the main pipeline has produced a model).

Each extension is a DVC stage (`extend_medical`, `extend_3d`); DVC reruns it only when its inputs changed.
Disabled extensions (params.extensions.*.enabled: false) are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from anomaly_ov import orchestration as orch
from flows.pipeline import load_workspace_params, outcome_markdown, run_with_parent


@flow(name="anomaly-ov-extensions", log_prints=True)
def extensions(workspace: str = ".", params_file: str = "params.yaml", force: bool = False) -> dict[str, Any]:
    """Run the enabled extension stages under one MLflow parent run."""
    from prefect.artifacts import create_markdown_artifact

    workspace = str(Path(workspace).resolve())
    params = load_workspace_params(workspace, params_file)
    stages = orch.enabled_extensions(params)
    if not stages:
        print("no extension enabled (extensions.medical.enabled / extensions.threed.enabled are false)")
        return {"stages": [], "mlflow_run_id": None}
    outcomes, parent = run_with_parent("extensions", stages, workspace, params, None, force)
    footer = orch.where_to_look(params, workspace, parent)
    create_markdown_artifact(outcome_markdown(outcomes, footer), key="extensions-run", description="stages")
    print(footer)
    return {"stages": [o.to_dict() for o in outcomes], "mlflow_run_id": parent.run_id if parent else None}


if __name__ == "__main__":  # pragma: no cover
    extensions()
