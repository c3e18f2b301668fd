"""`anomaly-ov promote`, `anomaly-ov rollback`, `anomaly-ov models`: the MLflow model registry by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from anomaly_ov.cli import ParamsOpt, WorkspaceOpt, _fail, _load, app


@app.command()
def promote(
    version: Annotated[int, typer.Option("--version", "-v", help="model version number")],
    to: Annotated[str, typer.Option("--to", help="candidate | staging | production")],
    force: Annotated[bool, typer.Option("--force", help="override the gate (needs --reason)")] = False,
    reason: Annotated[str | None, typer.Option("--reason", help="why, recorded on the version with --force")] = None,
    params_file: ParamsOpt = Path("params.yaml"),
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Point an alias at a version by hand (production keeps its history, so `rollback` can undo it).

    A version the gate rejected (or never judged) goes to staging or production only with --force and --reason.
    """
    from anomaly_ov.registry import promote as do_promote

    params = _load(workspace / params_file, None)
    try:
        result = do_promote(params, version, to, workspace, force=force, reason=reason)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(json.dumps(result, indent=2))


@app.command()
def rollback(params_file: ParamsOpt = Path("params.yaml"), workspace: WorkspaceOpt = Path(".")) -> None:
    """Give `production` back to the version that held it before the current one."""
    from anomaly_ov.registry import rollback as do_rollback

    params = _load(workspace / params_file, None)
    try:
        result = do_rollback(params, workspace)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(json.dumps(result, indent=2))


@app.command()
def models(params_file: ParamsOpt = Path("params.yaml"), workspace: WorkspaceOpt = Path(".")) -> None:
    """List the registered versions with their aliases, gate verdicts and primary metric."""
    from anomaly_ov.registry import describe

    params = _load(workspace / params_file, None)
    try:
        typer.echo(json.dumps(describe(params, workspace), indent=2))
    except ValueError as exc:
        _fail(str(exc))
