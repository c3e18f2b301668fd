"""`anomaly-ov instruct-check FILE` and `anomaly-ov instruct-preview`: instruction data from the command line.

``instruct-check`` validates any LLaVA-format instruction file (ours, or a downloaded Anomaly-Instruct-125k
JSON) with the checks of the `synthesize` stage, writes the JSON + Markdown report and exits with 0 (no critical
failure), 1 (critical failures; see the report) or 2 (unreadable file or bad params).
``instruct-preview`` prints a few conversations of ``instruct.train_json`` (or another file) for a quick look.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from anomaly_ov.cli import ParamsOpt, SetOpt, WorkspaceOpt, _fail, _load, app


@app.command("instruct-check")
def instruct_check(
    path: Annotated[Path, typer.Argument(help="instruction JSON (a list of LLaVA records)")],
    report: Annotated[Path, typer.Option("--report", "-r", help="JSON report (Markdown is written beside it)")] = Path(
        "reports/instruct_check.json"
    ),
    image_root: Annotated[Path | None, typer.Option(help="folder the records' image paths are relative to "
                                                          "(default: the workspace)")] = None,
    gx: Annotated[bool, typer.Option("--gx/--no-gx", help="evaluate per-record checks with Great Expectations")] = True,
    params_file: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Validate an instruction file (ids, images, roles, <image> placeholders, answer lengths, Yes/No balance)."""
    from anomaly_ov.instruct.validate import validate_records
    from anomaly_ov.io import read_json
    from anomaly_ov.validate.report import write_report

    params = _load(workspace / params_file if not params_file.is_absolute() else params_file, overrides)
    try:
        records = read_json(path)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc), 2)
    if not isinstance(records, list):
        _fail(f"{path}: expected a JSON list of LLaVA records, got {type(records).__name__}", 2)
    root = image_root or workspace
    result = validate_records(records, params.instruct, root, subject=str(path), use_gx=gx)
    target = report if report.is_absolute() else workspace / report
    write_report(result, target)
    status = "PASSED" if result.ok else "FAILED"
    typer.echo(f"{status}: {len(records)} records, {result.summary.get('failed', 0)} failed check(s); "
               f"report {target} (+ .md)")
    for check in result.critical_failures + result.warnings:
        typer.echo(f"  [{check.severity}] {check.name}: {check.message}")
    if not result.ok:
        raise typer.Exit(1)


@app.command("instruct-preview")
def instruct_preview(
    path: Annotated[Path | None, typer.Argument(help="instruction JSON (default: params instruct.train_json)")] = None,
    n: Annotated[int, typer.Option("--n", "-n", help="number of records to show")] = 5,
    label: Annotated[str | None, typer.Option(help="only records with this label (normal | anomaly)")] = None,
    seed: Annotated[int, typer.Option(help="which records: a seeded sample")] = 0,
    params_file: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Print a seeded sample of conversations."""
    import random

    from anomaly_ov.io import read_json

    params = _load(workspace / params_file if not params_file.is_absolute() else params_file, overrides)
    file = path or workspace / params.instruct.train_json
    try:
        records = read_json(file)
    except (FileNotFoundError, ValueError) as exc:
        _fail(f"{exc} (run `anomaly-ov stage synthesize` first)", 2)
    pool = [r for r in records if label is None or r.get("label") == label]
    for record in random.Random(seed).sample(pool, min(n, len(pool))):
        image = record.get("image")
        typer.secho(f"{record.get('id')}  [{record.get('label')}/{record.get('defect_type')}]  "
                    f"{image if isinstance(image, str) else f'{len(image)} views'}", bold=True)
        for turn in record.get("conversations", []):
            who = "Q" if turn.get("from") == "human" else "A"
            typer.echo(f"  {who}: {str(turn.get('value', '')).replace(chr(10), ' | ')}")
