"""Data validation: Great Expectations suites + per-file checks -> one ValidationReport (JSON + Markdown).

Public API (light imports; Great Expectations and PIL load only when a check runs):

- :class:`Check`, :class:`ValidationReport`, :func:`write_report`, :func:`read_report` (``report``): the report
  format and its two severities, shared with the instruction-set validation.
- :func:`run_suite` (``gx``): run GX expectations over a DataFrame and get one :class:`Check` per expectation.
- ``run.validate_manifest`` / ``run.run_validate``: the manifest validation and the `validate` stage.
"""

from anomaly_ov.validate.gx import gx_context, run_suite
from anomaly_ov.validate.report import Check, Severity, ValidationReport, read_report, write_report

__all__ = ["Check", "Severity", "ValidationReport", "gx_context", "read_report", "run_suite", "write_report"]
