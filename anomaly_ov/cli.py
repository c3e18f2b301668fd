"""`anomaly-ov`: the command line. Imports stay light at module level so `--help` is instant.

Commands are grouped the way users of ``mlflow``, ``dvc`` and ``prefect`` expect::

    anomaly-ov run | schedule | stage NAME | params
    anomaly-ov data validate | convert-medical | render-3d
    anomaly-ov instruct check | preview
    anomaly-ov model list | promote | rollback | evaluate | predict | chat | serve

The groups are declared here; each module in ``anomaly_ov/commands/`` registers its commands on one of them.
The root callback configures logging (``-v``/``-q``, see :mod:`anomaly_ov.console`) and ``--version``. Errors:
the project's own error types (:class:`anomaly_ov.errors.AnomalyOVError`) become one short red line on stderr
and exit with the class's ``exit_code``; any other exception is a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from anomaly_ov.errors import AnomalyOVError, ConfigError
from anomaly_ov.stages import STAGES  # the declarations only (light): the stage names the CLI accepts


class _ProjectErrorsGroup(TyperGroup):
    """The root group: a project error from any sub-command becomes one red line and its exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except AnomalyOVError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    name="anomaly-ov",
    cls=_ProjectErrorsGroup,
    help="Train, evaluate, track and ship Anomaly-OneVision.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)
data_app = typer.Typer(name="data", no_args_is_help=True,
                       help="Datasets on disk: validate one, convert scanner files, render point clouds.")
instruct_app = typer.Typer(name="instruct", no_args_is_help=True,
                           help="Instruction data: check a LLaVA-format file, preview conversations.")
model_app = typer.Typer(name="model", no_args_is_help=True,
                        help="Models: the MLflow registry (list, promote, rollback) and using a model "
                             "(evaluate, predict, chat, serve).")
app.add_typer(data_app)
app.add_typer(instruct_app)
app.add_typer(model_app)


def _version(value: bool) -> None:
    """``--version``: the package version and the versions of the libraries results depend on (no imports)."""
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    def of(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    typer.echo(f"anomaly-ov {of('anomaly-ov')} (python {sys.version.split()[0]}, torch {of('torch')}, "
               f"transformers {of('transformers')})")
    raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True,
                                         help="more log output: -v progress notes, -vv debug, -vvv libraries too")
                       ] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="errors only, no progress bars")] = False,
    version: Annotated[bool | None, typer.Option("--version", callback=_version, is_eager=True,
                                                 help="print the versions and exit")] = None,
) -> None:
    """Train, evaluate, track and ship Anomaly-OneVision."""
    from anomaly_ov.console import configure_logging

    configure_logging(verbose, quiet)


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
    from anomaly_ov.config import DEFAULT_PARAMS_FILE, load_params
    from anomaly_ov.data.images import configure

    path: Path | None = params_file
    if not params_file.exists():  # a folder or unreadable file is load_params' error, which names it
        if params_file.name != DEFAULT_PARAMS_FILE:
            raise ConfigError(f"{params_file}: params file not found (check --params)")
        folder = params_file.parent.resolve()
        if workspace_needed:
            raise ConfigError(
                f"{folder}: no {DEFAULT_PARAMS_FILE} here, so this is not an Anomaly-OV workspace and this command "
                f"would write its MLflow store, reports or models into a stray folder. Run it in the workspace (the "
                f"folder with {DEFAULT_PARAMS_FILE} and dvc.yaml), or pass --workspace PATH or --params FILE.")
        typer.secho(f"no {DEFAULT_PARAMS_FILE} in {folder}: using the built-in defaults", err=True,
                    fg=typer.colors.YELLOW)
        path = None
    params = load_params(path, overrides or [])  # ConfigError names every bad key
    configure(params.validation.max_image_side)  # every image any command opens obeys validate.max_image_side
    return params


def in_workspace_file(workspace: Path, params_file: Path) -> Path:
    """``params_file`` as given when absolute, else relative to ``workspace``."""
    return params_file if params_file.is_absolute() else workspace / params_file


def echo_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout and nothing else (what ``--json`` promises scripts)."""
    typer.echo(json.dumps(data, indent=2, default=str))


JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON only (for scripts) instead of a table")]
AllowExternalOpt = Annotated[
    bool,
    typer.Option("--allow-external-paths",
                 help="accept dataset and item paths that leave PATH ('..', absolute, symlinks)"),
]


def _fail(message: str, code: int = 1) -> None:
    """Stop with ``message`` as one red line and exit ``code`` (for outcomes that are not errors, e.g. a failed
    check whose report was written; raise :mod:`anomaly_ov.errors` types for errors)."""
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help=f"the stage to run: {' | '.join(STAGES)}",
                                        autocompletion=lambda: list(STAGES))],
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


def main() -> None:
    """The ``anomaly-ov`` console script: run the command, then end the process without the interpreter's teardown
    of every imported module (2-3 s once torch is imported; :mod:`anomaly_ov.shutdown`). A bug's exception still
    propagates with its traceback."""
    try:
        app()
    except SystemExit as exc:
        from anomaly_ov.shutdown import exit_process

        exit_process(exc.code)


# Register the sub-commands that live in anomaly_ov/commands/ (kept last: they import the groups from here). The
# order is the order `--help` lists them in.
for _module in ("orchestrate", "validate", "extensions", "instruct", "registry", "evaluate", "serve"):
    importlib.import_module(f"anomaly_ov.commands.{_module}")
