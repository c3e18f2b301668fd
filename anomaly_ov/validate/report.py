"""The validation report: a list of named checks with a severity, written as JSON (machines) and Markdown (people).

Shared by every validator in the project (manifest and files here, instruction sets in ``anomaly_ov.instruct``)
so that one format, one pair of severities and one writer serve them all:

- ``critical``: the data cannot be used as it is; the stage that found it stops the pipeline.
- ``warning``: the data can be used (possibly after a documented conversion) but someone should look at it.

A :class:`Check` that passed has ``n_failing == 0``; a failed one lists up to ``max_failing_examples`` failing
rows or files in ``failing`` (each a dict naming the row and/or the file, or a plain string) and the full count
in ``n_failing``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

Severity = Literal["critical", "warning"]
SEVERITIES: tuple[Severity, ...] = ("critical", "warning")
#: keys of a failing-example dict that name where the problem is, most specific first.
_LOCATION_KEYS = ("record", "mask", "file", "row", "category", "source", "group")  # a mask check names the mask


@dataclass
class Check:
    """One named check over the data and its outcome."""

    name: str
    severity: Severity
    passed: bool
    message: str
    failing: list[Any] = field(default_factory=list)
    n_failing: int = 0
    origin: str = "pandas"  #: what evaluated it: "great_expectations:<type>", "pandas", "files", ...

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"check {self.name!r}: severity must be one of {SEVERITIES}, got {self.severity!r}")
        if not self.passed and self.n_failing == 0:
            self.n_failing = max(len(self.failing), 1)

    @classmethod
    def from_failures(
        cls,
        name: str,
        severity: Severity,
        failing: Sequence[Any],
        *,
        ok_message: str,
        fail_message: str,
        max_examples: int = 20,
        n_failing: int | None = None,
        origin: str = "pandas",
    ) -> Check:
        """Build a check from the full list of failures (passed when empty); ``fail_message`` may use
        ``{n}`` (number failing) and ``{examples}`` (the first few failing locations)."""
        count = len(failing) if n_failing is None else n_failing
        if count == 0:
            return cls(name, severity, True, ok_message, [], 0, origin)
        shown = list(failing[:max_examples])
        message = fail_message.format(n=count, examples=describe_examples(shown))
        return cls(name, severity, False, message, shown, count, origin)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "severity": self.severity,
            "passed": self.passed,
            "message": self.message,
            "n_failing": self.n_failing,
            "failing": self.failing,
            "origin": self.origin,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Check:
        return cls(
            name=data["name"],
            severity=data["severity"],
            passed=bool(data["passed"]),
            message=data.get("message", ""),
            failing=list(data.get("failing", [])),
            n_failing=int(data.get("n_failing", 0)),
            origin=data.get("origin", "pandas"),
        )


def describe_location(item: Any) -> str:
    """Short text naming where a failing example is: its file (or mask), else its row, else the item itself."""
    if isinstance(item, dict):
        for key in _LOCATION_KEYS:
            if item.get(key) not in (None, ""):
                value = item[key]
                return str(value) if key in ("file", "mask") else f"{key} {value}"
        return ", ".join(f"{k}={v}" for k, v in item.items())
    return str(item)


def describe_examples(items: Sequence[Any], limit: int = 3) -> str:
    names = [describe_location(i) for i in items[:limit]]
    more = len(items) - limit
    return ", ".join(names) + (f" (+{more} more listed)" if more > 0 else "")


@dataclass
class ValidationReport:
    """The checks of one validation run, with a summary; ``ok`` is False when any critical check failed."""

    checks: list[Check]
    summary: dict[str, Any] = field(default_factory=dict)
    title: str = "Data validation"
    subject: str = ""  #: what was validated (a manifest path, a dataset folder, an instruction file)
    notes: list[str] = field(default_factory=list)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @classmethod
    def build(
        cls,
        checks: Iterable[Check],
        *,
        title: str = "Data validation",
        subject: str = "",
        rows: int | None = None,
        started: float | None = None,
        notes: Iterable[str] = (),
        extra: dict[str, Any] | None = None,
    ) -> ValidationReport:
        """Collect ``checks`` and compute the summary (``started`` is a ``time.perf_counter()`` value)."""
        report = cls(checks=list(checks), title=title, subject=subject, notes=list(notes))
        summary = report.counts()
        if rows is not None:
            summary["rows"] = int(rows)
        if started is not None:
            summary["seconds"] = round(time.perf_counter() - started, 3)
        summary.update(extra or {})
        report.summary = summary
        return report

    # ------------------------------------------------------------------------------------------- queries
    @property
    def critical_failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed and c.severity == "critical"]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if not c.passed and c.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.critical_failures

    def check(self, name: str) -> Check:
        """The check called ``name`` (KeyError listing the names when absent)."""
        for item in self.checks:
            if item.name == name:
                return item
        raise KeyError(f"no check named {name!r}; checks: {[c.name for c in self.checks]}")

    def counts(self) -> dict[str, Any]:
        """Checks run / passed / failed, overall and per severity."""
        out: dict[str, Any] = {
            "checks": len(self.checks),
            "passed": sum(c.passed for c in self.checks),
            "failed": sum(not c.passed for c in self.checks),
        }
        for severity in SEVERITIES:
            mine = [c for c in self.checks if c.severity == severity]
            out[f"{severity}_checks"] = len(mine)
            out[f"{severity}_failed"] = sum(not c.passed for c in mine)
        return out

    def failure_summary(self, limit: int = 3) -> str:
        """One short line naming the failed critical checks and their first failing rows/files."""
        failures = self.critical_failures
        if not failures:
            return "no critical failures"
        parts = []
        for item in failures[:limit]:
            where = describe_examples(item.failing, limit=2) if item.failing else ""
            parts.append(f"{item.name} ({item.n_failing} failing{': ' + where if where else ''})")
        more = f"; +{len(failures) - limit} more critical check(s)" if len(failures) > limit else ""
        return f"{len(failures)} critical check(s) failed: " + "; ".join(parts) + more

    # ------------------------------------------------------------------------------------------- output
    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "subject": self.subject,
            "created_at": self.created_at,
            "ok": self.ok,
            "summary": self.summary or self.counts(),
            "notes": self.notes,
            "checks": [c.to_dict() for c in self.checks],
        }

    def to_json(self, indent: int | None = 2) -> str:
        from anomaly_ov.io import _json_default

        return json.dumps(self.to_dict(), indent=indent, default=_json_default)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidationReport:
        return cls(
            checks=[Check.from_dict(c) for c in data.get("checks", [])],
            summary=dict(data.get("summary", {})),
            title=data.get("title", "Data validation"),
            subject=data.get("subject", ""),
            notes=list(data.get("notes", [])),
            created_at=data.get("created_at", ""),
        )

    def to_markdown(self) -> str:
        """Human-readable report: status, summary, failed checks with examples, then the passed checks."""
        status = "PASSED" if self.ok else "FAILED"
        lines = [f"# {self.title}: {status}", ""]
        if self.subject:
            lines += [f"Subject: `{self.subject}`  ", ""]
        lines += [f"Created: {self.created_at}", "", "| summary | value |", "|---|---|"]
        for key, value in (self.summary or self.counts()).items():
            lines.append(f"| {key} | {value} |")
        lines.append("")
        for severity in SEVERITIES:
            failed = [c for c in self.checks if not c.passed and c.severity == severity]
            if not failed:
                continue
            lines += [f"## Failed {severity} checks ({len(failed)})", ""]
            for item in failed:
                lines += [f"### `{item.name}` ({item.n_failing} failing)", "", _md_text(item.message), ""]
                if item.failing:
                    shown = len(item.failing)
                    suffix = f" (first {shown} of {item.n_failing})" if shown < item.n_failing else ""
                    lines.append(f"Failing{suffix}:")
                    lines.append("")
                    lines += [f"- {_md_text(_example_text(e))}" for e in item.failing]
                    lines.append("")
        if self.notes:
            lines += ["## Notes", ""] + [f"- {_md_text(n)}" for n in self.notes] + [""]
        passed = [c for c in self.checks if c.passed]
        if passed:
            lines += [f"## Passed checks ({len(passed)})", "", "| check | severity | result |", "|---|---|---|"]
            lines += [f"| `{c.name}` | {c.severity} | {_md_text(c.message)} |" for c in passed]
            lines.append("")
        return "\n".join(lines)


def _example_text(item: Any) -> str:
    if isinstance(item, dict):
        return ", ".join(f"{k}: {v}" for k, v in item.items())
    return str(item)


def _md_text(text: str) -> str:
    """Keep table cells and list items on one line and stop `|` from breaking tables."""
    return str(text).replace("\n", " ").replace("|", "\\|")


def write_report(report: ValidationReport, json_path: str | Path, md_path: str | Path | None = None) -> Path:
    """Write the JSON report (and the Markdown one when ``md_path`` is given, default: beside it as ``.md``)."""
    from anomaly_ov.io import atomic_write_json, atomic_write_text

    json_path = Path(json_path)
    md_path = json_path.with_suffix(".md") if md_path is None else Path(md_path)
    atomic_write_json(json_path, report.to_dict())
    atomic_write_text(md_path, report.to_markdown())
    return json_path


def read_report(path: str | Path) -> ValidationReport:
    """Read a report written by :func:`write_report`."""
    from anomaly_ov.io import read_json

    return ValidationReport.from_dict(read_json(path))
