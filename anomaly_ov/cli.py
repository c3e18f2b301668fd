"""`anomaly-ov`: the command line. Imports stay light at module level so `--help` is instant.

Sub-commands are registered here; each one calls into the library (``anomaly_ov.stages`` and friends).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="anomaly-ov",
    help="Train, evaluate, track and ship Anomaly-OneVision.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params file")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="override a param: section.key=value")]
WorkspaceOpt = Annotated[Path, typer.Option("--workspace", "-w", help="workspace (repository) root")]


def _load(params_file: Path, overrides: list[str] | None, *, workspace_needed: bool = True):
    """Params from ``params_file`` (the workspace's params.yaml, or ``--params``) plus ``--set`` overrides.

    A command that works in a workspace (its MLflow store, reports, models) refuses to run where there is no
    params file, naming the folder and how to fix it: defaults would silently create a new ``mlflow.db`` or
    reports in whatever folder the command was started from. Commands that can run on defaults
    (``workspace_needed=False``: ``validate`` of a dataset folder, ``params``) say on stderr that they do.
    """
    from anomaly_ov.config import DEFAULT_PARAMS_FILE, ConfigError, load_params
    from anomaly_ov.data.images import configure

    path: Path | None = params_file
    if not params_file.exists():  # a folder or unreadable file is load_params' error, which names it
        if params_file.name != DEFAULT_PARAMS_FILE:
            _fail(f"{params_file}: params file not found (check --params)", 2)
        folder = params_file.parent.resolve()
        if workspace_needed:
            _fail(f"{folder}: no {DEFAULT_PARAMS_FILE} here, so this is not an Anomaly-OV workspace and this command "
                  f"would write its MLflow store, reports or models into a stray folder. Run it in the workspace (the "
                  f"folder with {DEFAULT_PARAMS_FILE} and dvc.yaml), or pass --workspace PATH or --params FILE.", 2)
        typer.secho(f"no {DEFAULT_PARAMS_FILE} in {folder}: using the built-in defaults", err=True,
                    fg=typer.colors.YELLOW)
        path = None
    try:
        params = load_params(path, overrides or [])
    except ConfigError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    configure(params.validation.max_image_side)  # every image any command opens obeys validate.max_image_side
    return params


def _fail(message: str, code: int = 1) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help="sources | prepare | validate | synthesize | train_expert | "
                                              "train_instruct | evaluate | extend_medical | extend_3d | register")],
    params_file: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Run one pipeline stage (this is what dvc.yaml calls)."""
    from anomaly_ov.stages import STAGES, StageFailed, run_stage

    if name not in STAGES:
        _fail(f"unknown stage {name!r}; choose one of: {', '.join(STAGES)}", 2)
    params = _load(workspace / params_file if not params_file.is_absolute() else params_file, overrides)
    try:
        summary = run_stage(name, params, workspace)
    except StageFailed as exc:
        _fail(str(exc))
    except (FileNotFoundError, ValueError) as exc:
        _fail(f"stage {name!r}: {exc}")
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command("params")
def show_params(params_file: ParamsOpt = Path("params.yaml"), overrides: SetOpt = None) -> None:
    """Print the effective params (params.yaml + overrides + defaults) as YAML."""
    import yaml

    params = _load(params_file, overrides, workspace_needed=False)
    origin = str(params_file.resolve()) if params_file.is_file() else "built-in defaults"
    typer.echo(f"# params: {origin}{' + --set overrides' if overrides else ''}")
    typer.echo(yaml.safe_dump(params.to_dict(), sort_keys=False))


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())


# Register the sub-commands that live in anomaly_ov/commands/ (kept last: they import `app` from here).
from anomaly_ov.commands import evaluate, extensions, instruct, orchestrate, registry, serve, validate  # noqa: E402,F401
