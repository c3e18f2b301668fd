"""`anomaly-ov`: the command line. Imports stay light at module level so `--help` is instant.

Sub-commands are registered here; each one calls into the library (``anomaly_ov.stages`` and friends).
"""

from __future__ import annotations

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
    name: Annotated[str, typer.Argument(help="the stage to run; `anomaly-ov dvc-yaml --help` lists them",
                                        autocompletion=lambda: _stage_names())],
    params_file: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Run one pipeline stage (this is what dvc.yaml calls).

    Writes reports/stages/NAME.result.json (status, error kind, message, exit code, retryable, failing files,
    summary, seconds) on success and on failure, and exits with the error kind's code (docs/architecture.md).
    """
    from anomaly_ov.stages import execute

    path = params_file if params_file.is_absolute() else workspace / params_file
    if not path.is_file():
        _load(path, overrides)  # not a workspace: refuse with exit 2 and write nothing (no result file either)
    code = execute(name, workspace, lambda: _load_params(path, overrides), echo=typer.echo,
                   echo_error=lambda line: typer.secho(line, fg=typer.colors.RED, err=True))
    raise typer.Exit(code)


def _stage_names() -> list[str]:
    from anomaly_ov.stages import STAGES

    return list(STAGES)


def _load_params(path: Path, overrides: list[str] | None):
    """The stage's params; invalid ones raise :class:`ConfigError`, which the stage's result file records."""
    from anomaly_ov.config import load_params

    return load_params(path, overrides or [])


@app.command("dvc-yaml")
def dvc_yaml(
    check: Annotated[bool, typer.Option("--check", help="exit 1 with a diff when dvc.yaml is stale; write nothing")]
    = False,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Write dvc.yaml from the stage declarations in anomaly_ov/stages.py (`--check`: only compare)."""
    import difflib

    from anomaly_ov.io import atomic_write_text
    from anomaly_ov.stages import render_dvc_yaml

    target = workspace / "dvc.yaml"
    wanted = render_dvc_yaml()
    current = target.read_text() if target.is_file() else ""
    if check:
        if current == wanted:
            typer.echo(f"{target} is current")
            return
        diff = difflib.unified_diff(current.splitlines(True), wanted.splitlines(True), f"{target} (on disk)",
                                    f"{target} (from anomaly_ov/stages.py)")
        typer.echo("".join(diff), nl=False)
        _fail(f"{target} is stale: run `anomaly-ov dvc-yaml` and commit the result", 1)
    atomic_write_text(target, wanted)
    typer.echo(f"wrote {target} ({len(wanted.splitlines())} lines)")


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
