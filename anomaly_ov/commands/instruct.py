"""`anomaly-ov instruct check FILE` and `anomaly-ov instruct preview`: instruction data from the command line.

``check`` validates any LLaVA-format instruction file (ours, or a downloaded Anomaly-Instruct-125k
JSON) with the checks of the `synthesize` stage, writes the JSON + Markdown report and exits with 0 (no critical
failure), 1 (critical failures; see the report), 2 (bad params) or 3 (unreadable file). ``--json`` prints the
summary and failed checks as JSON only.
``preview`` prints a few conversations of ``instruct.train_json`` (or another file) for a quick look.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from anomaly_ov.choices import Label, choices
from anomaly_ov.cli import JsonOpt, ParamsOpt, SetOpt, WorkspaceOpt, _load, echo_json, in_workspace_file, instruct_app
from anomaly_ov.errors import InputError

LabelChoice = choices("LabelChoice", Label)


@instruct_app.command("check")
def instruct_check(
    path: Annotated[Path, typer.Argument(help="instruction JSON (a list of LLaVA records)")],
    report: Annotated[Path, typer.Option("--report", "-r", help="JSON report (Markdown is written beside it)")] = Path(
        "reports/instruct_check.json"
    ),
    image_root: Annotated[Path | None, typer.Option(help="folder the records' image paths are relative to "
                                                          "(default: the workspace)")] = None,
    gx: Annotated[bool, typer.Option("--gx/--no-gx", help="evaluate per-record checks with Great Expectations")] = True,
    as_json: JsonOpt = False,
    params_file: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Validate an instruction file (ids, images, roles, <image> placeholders, answer lengths, Yes/No balance)."""
    from anomaly_ov.instruct.validate import validate_records
    from anomaly_ov.io import read_json
    from anomaly_ov.validate.report import write_report

    params = _load(in_workspace_file(workspace, params_file), overrides)
    records = read_json(path)  # InputError naming the file when it is missing or not JSON
    if not isinstance(records, list):
        raise InputError(f"{path}: expected a JSON list of LLaVA records, got {type(records).__name__}")
    root = image_root or workspace
    result = validate_records(records, params.instruct, root, subject=str(path), use_gx=gx)
    target = report if report.is_absolute() else workspace / report
    write_report(result, target)
    if as_json:
        echo_json({"ok": result.ok, "records": len(records), "summary": result.summary, "report": str(target),
                   "failed": [{"check": c.name, "severity": c.severity, "message": c.message}
                              for c in result.critical_failures + result.warnings]})
        raise typer.Exit(0 if result.ok else 1)
    status = "PASSED" if result.ok else "FAILED"
    typer.echo(f"{status}: {len(records)} records, {result.summary.get('failed', 0)} failed check(s); "
               f"report {target} (+ .md)")
    for check in result.critical_failures + result.warnings:
        typer.echo(f"  [{check.severity}] {check.name}: {check.message}")
    if not result.ok:
        raise typer.Exit(1)


@instruct_app.command("preview")
def instruct_preview(
    path: Annotated[Path | None, typer.Argument(help="instruction JSON (default: params instruct.train_json)")] = None,
    n: Annotated[int, typer.Option("--n", "-n", help="number of records to show")] = 5,
    label: Annotated[LabelChoice | None,  # type: ignore[valid-type]
                     typer.Option(help="only records with this label")] = None,
    seed: Annotated[int, typer.Option(help="which records: a seeded sample")] = 0,
    params_file: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Print a seeded sample of conversations."""
    import random

    from anomaly_ov.io import read_json

    params = _load(in_workspace_file(workspace, params_file), overrides)
    file = path or workspace / params.instruct.train_json
    if path is None and not file.exists():
        raise InputError(f"{file}: not found (instruct.train_json); run `anomaly-ov stage synthesize` first")
    records = read_json(file)
    if not isinstance(records, list):
        raise InputError(f"{file}: expected a JSON list of LLaVA records, got {type(records).__name__}")
    pool = [r for r in records if label is None or r.get("label") == label]
    for record in random.Random(seed).sample(pool, min(n, len(pool))):
        image = record.get("image")
        typer.secho(f"{record.get('id')}  [{record.get('label')}/{record.get('defect_type')}]  "
                    f"{image if isinstance(image, str) else f'{len(image)} views'}", bold=True)
        for turn in record.get("conversations", []):
            who = "Q" if turn.get("from") == "human" else "A"
            typer.echo(f"  {who}: {str(turn.get('value', '')).replace(chr(10), ' | ')}")
