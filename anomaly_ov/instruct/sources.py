"""Released LLaVA-format instruction sets (e.g. Anomaly-Instruct-125k) as stage-2 training sources.

A source (``params.instruct.sources``) names a JSON list of records and the folder their image paths are relative
to, both under ``params.instruct.sources_root`` (the one folder ``dvc.yaml`` lists as a dependency of
``train_instruct``, so DVC sees every source). The records are read as released::

    {"id": "...", "image": "<relative path>" or ["<path>", ...],      # absent for a text-only record
     "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]}

Before stage 2 reads them, every source is checked with the instruction-set validation
(:func:`anomaly_ov.instruct.validate.validate_records`, image paths relative to the source's ``image_root`` and kept
inside it unless ``allow_external_paths``); the report lists every bad record by id. The records handed to stage 2
carry absolute image paths and a ``source`` key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_ov.errors import InputError

if TYPE_CHECKING:
    from anomaly_ov.config import InstructSourceParams, Params
    from anomaly_ov.validate.report import ValidationReport


class InstructSourceError(InputError):
    """A released instruction source cannot be used; the message names the source, the file and what to do."""


@dataclass(frozen=True)
class SourcePaths:
    name: str
    json_path: Path
    image_root: Path


def sources_root(params: Params, workspace: str | Path) -> Path:
    from anomaly_ov.paths import in_workspace

    return in_workspace(workspace, params.instruct.sources_root).absolute()


def source_paths(source: InstructSourceParams, params: Params, workspace: str | Path) -> SourcePaths:
    """The source's JSON file and image folder, checked to lie inside ``instruct.sources_root`` (what DVC tracks)."""
    from anomaly_ov.paths import OutsideRootError, inside_root

    root = sources_root(params, workspace)
    try:
        json_path = inside_root(root, source.json_path)
        image_root = inside_root(root, source.image_root)
    except OutsideRootError as exc:
        raise InstructSourceError(
            f"instruction source {source.name!r}: {exc.path} is not inside instruct.sources_root ({root}), the "
            "folder DVC tracks for train_instruct; move it there or point instruct.sources_root at its folder"
        ) from None
    return SourcePaths(source.name, json_path, image_root)


def read_source(paths: SourcePaths) -> list[Any]:
    from anomaly_ov.io import read_json

    if not paths.json_path.is_file():
        raise InstructSourceError(f"instruction source {paths.name!r}: {paths.json_path} not found "
                                  "(instruct.sources[].json_path is relative to instruct.sources_root)")
    try:
        data = read_json(paths.json_path)
    except ValueError as exc:
        raise InstructSourceError(f"instruction source {paths.name!r}: {exc}") from None
    if not isinstance(data, list):
        raise InstructSourceError(f"instruction source {paths.name!r}: {paths.json_path} must hold a JSON list of "
                                  f"LLaVA records, got {type(data).__name__}")
    return data


def validate_source(
    source: InstructSourceParams, params: Params, workspace: str | Path, use_gx: bool = True
) -> tuple[list[Any], ValidationReport]:
    """(records as read, validation report) of one source."""
    from anomaly_ov.instruct.validate import validate_records

    paths = source_paths(source, params, workspace)
    if not paths.image_root.is_dir():
        raise InstructSourceError(f"instruction source {source.name!r}: image_root {paths.image_root} is not a "
                                  "folder (instruct.sources[].image_root is relative to instruct.sources_root)")
    records = read_source(paths)
    report = validate_records(records, params.instruct, paths.image_root, subject=f"{source.name}: {paths.json_path}",
                              use_gx=use_gx, allow_external=source.allow_external_paths)
    return records, report


def with_absolute_images(records: list[Any], image_root: Path, name: str) -> list[dict[str, Any]]:
    """Copies of ``records`` whose image paths are absolute (``image_root / path``) and that carry ``source``."""
    out = []
    for record in records:
        rec = dict(record)
        image = rec.get("image")
        if isinstance(image, str) and image:
            rec["image"] = str(image_root / image)
        elif isinstance(image, list):
            rec["image"] = [str(image_root / p) for p in image]
        rec["source"] = name
        out.append(rec)
    return out


def load_sources(params: Params, workspace: str | Path, report_path: str | Path | None = None,
                 use_gx: bool = True) -> list[dict[str, Any]]:
    """Every source's records, validated (one combined report written to ``report_path`` when given, JSON +
    Markdown); raises :class:`InstructSourceError` naming the failed checks when any source is invalid."""
    from anomaly_ov.validate.report import ValidationReport, write_report

    records: list[dict[str, Any]] = []
    checks, problems = [], []
    for source in params.instruct.sources:
        raw, report = validate_source(source, params, workspace, use_gx=use_gx)
        for check in report.checks:
            check.message = f"[{source.name}] {check.message}"
            check.name = f"{source.name}.{check.name}"
            checks.append(check)
        if not report.ok:
            problems.append(f"{source.name}: {report.failure_summary()}")
        records += with_absolute_images(raw, source_paths(source, params, workspace).image_root, source.name)
    if report_path is not None and params.instruct.sources:
        combined = ValidationReport.build(checks, title="Instruction-source validation", rows=len(records),
                                          subject=", ".join(s.name for s in params.instruct.sources))
        report_path = Path(report_path)
        write_report(combined, report_path, report_path.with_suffix(".md"))
    if problems:
        where = f"; see {report_path} (+ .md)" if report_path is not None else ""
        raise InstructSourceError("instruction source(s) invalid: " + " | ".join(problems) + where)
    return records
