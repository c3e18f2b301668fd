"""The `validate` stage: manifest + files -> reports/validation.{json,md}; a critical failure stops the pipeline.

``validate_manifest`` is the library entry point (also used by `anomaly-ov data validate PATH`); ``run_validate`` is
the stage behind `anomaly-ov stage validate`, dvc.yaml and the Prefect task. The report is always written
first, so a failed run leaves its explanation on disk.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_ov.errors import StageFailed
from anomaly_ov.validate.report import Check, ValidationReport, describe_location, write_report

if TYPE_CHECKING:
    import pandas as pd

    from anomaly_ov.config import Params, SourceParams
    from anomaly_ov.data.sources import Issue


def validate_manifest(
    frame: pd.DataFrame,
    params: Params,
    workspace: str | Path = ".",
    *,
    sources: Sequence[SourceParams] | None = None,
    subject: str = "",
    check_files: bool | None = None,
    issues: Sequence[Issue] = (),
) -> ValidationReport:
    """Run the table checks and (when ``validate.check_files``) the per-file checks over ``frame``.

    ``sources`` are the declared datasets whose presence is checked (default: ``params.data.sources``);
    ``check_files`` overrides ``params.validation.check_files``. ``issues`` are the per-file problems the
    reader found (``read_source(..., issues=[])``); they and the manifest's paths that leave their dataset
    (unless the source sets ``allow_external_paths``) become critical findings. The file checks are sharded
    over ``params.parallel`` (:mod:`anomaly_ov.parallel`); the report is the same for any number of workers.
    """
    from anomaly_ov.validate.files import file_checks, issue_checks, outside_paths
    from anomaly_ov.validate.table import table_checks

    started = time.perf_counter()
    settings = params.validation
    declared = params.data.sources if sources is None else sources
    checks = table_checks(frame, settings, declared)
    allowed = {s.name for s in declared if s.allow_external_paths}
    outside, outside_rows = outside_paths(frame, workspace, allowed)
    checks += issue_checks([*issues, *outside], settings.max_failing_examples)
    notes: list[str] = []
    files_checked = 0
    do_files = settings.check_files if check_files is None else check_files
    if do_files and {"image_path", "root"} <= set(frame.columns):
        from anomaly_ov.parallel import fanout

        with fanout(params.parallel, "validate") as fan:
            more, notes, files_checked = file_checks(frame, settings, workspace, skip=outside_rows, fan=fan)
        checks += more
    return ValidationReport.build(
        checks,
        title="Data validation",
        subject=subject,
        rows=len(frame),
        started=started,
        notes=notes,
        extra={"files_checked": files_checked},
    )


def _read_raw_manifest(path: Path) -> pd.DataFrame:
    """Read the Parquet manifest as stored (no normalising: nulls and bad values must reach the checks)."""
    import pandas as pd

    return pd.read_parquet(path)


def run_validate(params: Params, workspace: Path) -> dict[str, Any]:
    """Stage: validate ``data.manifest``, write ``validate.report_json`` / ``report_md``, stop on critical."""
    from anomaly_ov.paths import in_workspace

    workspace = Path(workspace)
    settings = params.validation
    manifest = in_workspace(workspace, params.data.manifest)
    json_path = in_workspace(workspace, settings.report_json)
    md_path = in_workspace(workspace, settings.report_md)
    started = time.perf_counter()
    try:
        frame = _read_raw_manifest(manifest)
    except Exception as exc:  # missing file, or pyarrow's several error types for a corrupt one
        reason = "not found; run `anomaly-ov stage prepare` first" if not manifest.exists() else f"unreadable ({exc})"
        check = Check("manifest_readable", "critical", False, f"{manifest}: {reason}", [{"file": str(manifest)}], 1)
        report = ValidationReport.build([check], subject=params.data.manifest, rows=0, started=started)
    else:
        report = validate_manifest(frame, params, workspace, subject=params.data.manifest)
    write_report(report, json_path, md_path)
    summary: dict[str, Any] = {**report.summary, "ok": report.ok, "report": settings.report_json}
    if not report.ok:
        failing = [f"{check.name}: {describe_location(item)}" for check in report.critical_failures
                   for item in check.failing]
        raise StageFailed("validate", f"{report.failure_summary()}; see {settings.report_md}", summary,
                          failing=failing or [check.name for check in report.critical_failures])
    return summary
