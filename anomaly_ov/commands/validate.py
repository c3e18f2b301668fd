"""`anomaly-ov data validate PATH --format FMT`: check a dataset on disk before pointing the pipeline at it.

Reads the dataset with the reader of its format, runs every table and file check of the `validate` stage,
writes the JSON report (and the Markdown one beside it), prints a short summary (a table, or with ``--json`` only
the report's summary and failed checks as JSON on stdout) and exits with
0 (no critical failure), 1 (critical failures; see the report) or 2 (the dataset or the params are unusable:
wrong layout, unknown format, bad params). Every file the reader cannot use (not an image, too large, a
missing or orphan mask, a path out of the dataset, a non-UTF-8 name) is a finding: one bad file never hides
the others, and the report is written whenever the dataset folder could be looked at (also for exit code 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from anomaly_ov.choices import Modality, Role, SourceFormat, choices
from anomaly_ov.cli import (
    AllowExternalOpt,
    JsonOpt,
    ParamsOpt,
    SetOpt,
    WorkspaceOpt,
    _fail,
    _load,
    data_app,
    echo_json,
    in_workspace_file,
)
from anomaly_ov.errors import ConfigError

DatasetFormat = choices("DatasetFormat", SourceFormat)
RoleChoice = choices("RoleChoice", Role)
ModalityChoice = choices("ModalityChoice", Modality)


@data_app.command("validate")
def validate_dataset(
    path: Annotated[Path, typer.Argument(help="dataset root folder")],
    fmt: Annotated[DatasetFormat, typer.Option("--format", "-f", help="dataset layout")],  # type: ignore[valid-type]
    report: Annotated[Path, typer.Option("--report", "-r", help="JSON report (Markdown is written beside it)")] = Path(
        "reports/validation.json"
    ),
    role: Annotated[RoleChoice,  # type: ignore[valid-type]
                    typer.Option(help="eval (zero-shot evaluation: needs anomalies) or train")
                    ] = RoleChoice("eval"),
    name: Annotated[str | None, typer.Option(help="source name (default: the folder name)")] = None,
    categories: Annotated[
        list[str] | None, typer.Option("--category", "-c", help="only these categories (repeatable)")
    ] = None,
    modality: Annotated[ModalityChoice,  # type: ignore[valid-type]
                        typer.Option(help="kind of images")] = ModalityChoice("industrial"),
    files: Annotated[bool, typer.Option("--files/--no-files", help="open and check every image and mask")] = True,
    allow_external: AllowExternalOpt = False,
    as_json: JsonOpt = False,
    params_file: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Validate a dataset folder (table + file checks) and write reports/validation.{json,md}."""
    from pydantic import ValidationError

    from anomaly_ov.config import SourceParams
    from anomaly_ov.data.sources import LayoutError, read_source
    from anomaly_ov.validate.report import write_report
    from anomaly_ov.validate.run import validate_manifest

    params = _load(in_workspace_file(workspace, params_file), overrides,
                   workspace_needed=False)  # a dataset folder can be checked with the default thresholds
    root = path if path.is_absolute() else Path.cwd() / path
    try:
        source = SourceParams.model_validate({  # the choices are checked here (a ValidationError names the option)
            "name": name or root.resolve().name, "format": str(fmt), "path": str(root), "role": str(role),
            "categories": categories or None, "modality": str(modality), "allow_external_paths": allow_external,
        })
    except ValidationError as exc:
        problems = "; ".join(f"--{e['loc'][0]}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid option(s): {problems}") from None
    issues: list = []
    md_path = report.with_suffix(".md")
    try:
        frame = read_source(source, workspace, issues)
    except (LayoutError, OSError) as exc:
        result = _layout_report(f"{path}: cannot read as {str(fmt)!r}: {exc}",
                                [*issues, *getattr(exc, "issues", [])], params, str(path))
        write_report(result, report, md_path)
        _print_summary(result, report, md_path, as_json)
        _fail(f"{path}: cannot read as {str(fmt)!r}: {exc}", 2)
    result = validate_manifest(
        frame, params, workspace, sources=[source], subject=str(path), check_files=files, issues=issues
    )
    write_report(result, report, md_path)
    _print_summary(result, report, md_path, as_json)
    if not result.ok:
        raise typer.Exit(1)


def _layout_report(message: str, issues: list, params, subject: str):
    """The report of a dataset whose layout could not be read: one critical ``dataset_layout`` finding plus the
    per-file issues found before the reader stopped."""
    from anomaly_ov.validate.files import issue_checks
    from anomaly_ov.validate.report import Check, ValidationReport

    layout = Check("dataset_layout", "critical", False, message, [{"file": subject}], 1, origin="reader")
    checks = [layout, *issue_checks(issues, params.validation.max_failing_examples)]
    return ValidationReport.build(checks, subject=subject, rows=0)


def _print_summary(report, json_path: Path, md_path: Path, as_json: bool = False) -> None:
    """Short rich summary: status, counts, then one line per failed check with its first failing file.

    With ``as_json``: the same as JSON on stdout (``ok``, ``summary``, ``failed`` checks, ``notes``, report paths).
    """
    from rich.console import Console
    from rich.table import Table

    from anomaly_ov.validate.report import describe_examples

    if as_json:
        echo_json({
            "ok": report.ok, "summary": report.summary,
            "failed": [{"check": c.name, "severity": c.severity, "failing": c.n_failing, "message": c.message,
                        "examples": list(c.failing[:5])} for c in report.critical_failures + report.warnings],
            "notes": list(report.notes), "report": str(json_path), "markdown": str(md_path),
        })
        return

    console = Console(soft_wrap=True)
    summary = report.summary
    status = "[bold green]PASSED[/]" if report.ok else "[bold red]FAILED[/]"
    console.print(
        f"{status} {summary.get('rows', 0)} rows, {summary['checks']} checks: "
        f"{summary['critical_failed']} critical and {summary['warning_failed']} warning check(s) failed "
        f"({summary.get('seconds', 0)} s)"
    )
    failed = report.critical_failures + report.warnings
    if failed:
        table = Table(show_header=True, header_style="bold")
        for column in ("severity", "check", "failing", "e.g."):
            table.add_column(column, overflow="fold")
        for check in failed:
            colour = "red" if check.severity == "critical" else "yellow"
            example = describe_examples(check.failing, limit=1) if check.failing else check.message
            table.add_row(f"[{colour}]{check.severity}[/]", check.name, str(check.n_failing), example)
        console.print(table)
    for note in report.notes:
        console.print(f"note: {note}")
    console.print(f"report: {json_path} and {md_path}")
