"""`anomaly-ov model list | promote | rollback`: the MLflow model registry by hand.

``list`` prints a table for people and, with ``--json``, only JSON for scripts; ``promote`` and ``rollback``
print what changed (JSON with ``--json``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from anomaly_ov.choices import RegistryAlias, choices
from anomaly_ov.cli import JsonOpt, ParamsOpt, WorkspaceOpt, _load, echo_json, in_workspace_file, model_app

if TYPE_CHECKING:
    from anomaly_ov.config import Params

Alias = choices("Alias", RegistryAlias)


@model_app.command("list")
def list_models(as_json: JsonOpt = False, params_file: ParamsOpt = Path("params.yaml"),
                workspace: WorkspaceOpt = Path(".")) -> None:
    """List the registered versions with their aliases, gate verdicts and primary metric."""
    from anomaly_ov.registry import describe

    params = _load(in_workspace_file(workspace, params_file), None)
    listing = describe(params, workspace)
    if as_json:
        echo_json(listing)
        return
    _print_listing(listing, params.registry.primary_metric)


def _print_listing(listing: dict[str, Any], metric: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not listing["versions"]:
        console.print(f"model {listing['model_name']!r}: no registered versions")
        return
    table = Table(title=f"model {listing['model_name']}", header_style="bold")
    for column in ("version", "aliases", "gate verdict", metric):
        table.add_column(column)
    for row in listing["versions"]:
        aliases = ", ".join(sorted(row["aliases"]))
        table.add_row(row["version"], f"[bold green]{aliases}[/]" if "production" in row["aliases"] else aliases,
                      row["verdict"] or "-", str(row.get(metric) if row.get(metric) is not None else "-"))
    console.print(table)
    history = listing.get("production_history") or []
    if history:
        console.print(f"production history (oldest first): {', '.join(map(str, history))}")


@model_app.command()
def promote(
    version: Annotated[int, typer.Option("--version", help="model version number")],
    to: Annotated[Alias, typer.Option("--to", help="alias to point at the version")],  # type: ignore[valid-type]
    force: Annotated[bool, typer.Option("--force", help="override the gate (needs --reason)")] = False,
    reason: Annotated[str | None, typer.Option("--reason", help="why, recorded on the version with --force")] = None,
    as_json: JsonOpt = False,
    params_file: ParamsOpt = Path("params.yaml"),
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Point an alias at a version by hand (production keeps its history, so `rollback` can undo it).

    A version the gate rejected (or never judged) goes to staging or production only with --force and --reason.
    """
    from anomaly_ov.registry import promote as do_promote

    def line(result: dict[str, Any]) -> str:
        forced = " (forced past the gate)" if result["forced"] else ""
        was = f"; it was on version {result['previous']}" if result["previous"] else ""
        return f"{result['model_name']}@{result['alias']} -> version {result['version']}{forced}{was}"

    _change(lambda params: do_promote(params, version, str(to), workspace, force=force, reason=reason), line,
            as_json, params_file, workspace)


@model_app.command()
def rollback(as_json: JsonOpt = False, params_file: ParamsOpt = Path("params.yaml"),
             workspace: WorkspaceOpt = Path(".")) -> None:
    """Give `production` back to the version that held it before the current one."""
    from anomaly_ov.registry import rollback as do_rollback

    _change(lambda params: do_rollback(params, workspace),
            lambda result: f"{result['model_name']}@production -> version {result['production']} "
                           f"(was version {result['rolled_back']})",
            as_json, params_file, workspace)


def _change(action: Callable[[Params], dict[str, Any]], line: Callable[[dict[str, Any]], str], as_json: bool,
            params_file: Path, workspace: Path) -> None:
    """Run one registry change with the workspace's params and print its result: JSON with ``--json``, else ``line``."""
    result = action(_load(in_workspace_file(workspace, params_file), None))
    if as_json:
        echo_json(result)
    else:
        typer.echo(line(result))
