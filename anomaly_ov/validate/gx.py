"""Run a Great Expectations suite over an in-memory DataFrame and turn each result into a :class:`Check`.

Great Expectations owns the data contracts (docs/architecture.md, 'Who owns what'); this module is the one
place that talks to it, so the other validators only build expectations. Conventions:

- ``gx`` is imported lazily (about 3 s) and the ephemeral context is created once per process, with progress
  bars and analytics off (:func:`gx_context`).
- Each expectation names its check in ``meta={"check": "..."}`` (default: ``<type>:<column>``), says what it
  means in ``description`` and carries GX's own ``severity`` ("critical" or "warning"; "info" counts as warning).
- Failing rows are identified by key columns of the frame: :func:`run_suite` adds ``_row`` (the position in the
  frame) when absent, and key columns named with a leading underscore are reported without it (``_file`` ->
  ``file``). GX column expectations skip nulls: pair value expectations with ``ExpectColumnValuesToNotBeNull``.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from anomaly_ov.validate.report import Check, Severity, describe_examples

if TYPE_CHECKING:
    import pandas as pd

_LOCK = threading.Lock()
_BATCH_DEFINITIONS: dict[str, Any] = {}
ROW_KEY = "_row"


@functools.lru_cache(maxsize=1)
def gx_context() -> Any:
    """The process-wide ephemeral GX context (no files, no analytics, no progress bars)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


def _batch_definition(name: str) -> Any:
    """A whole-DataFrame batch definition per suite name, created once and reused (the frame is a parameter)."""
    with _LOCK:
        if name not in _BATCH_DEFINITIONS:
            context = gx_context()
            try:
                source = context.data_sources.get("anomaly_ov_frames")
            except Exception:  # GX raises its own not-found type, which differs across 1.x releases
                source = context.data_sources.add_pandas("anomaly_ov_frames")
            asset = source.add_dataframe_asset(name=name)
            _BATCH_DEFINITIONS[name] = asset.add_batch_definition_whole_dataframe(f"{name}-whole")
        return _BATCH_DEFINITIONS[name]


def run_suite(
    frame: pd.DataFrame,
    expectations: Iterable[Any],
    *,
    suite_name: str = "suite",
    key_columns: Sequence[str] = (),
    max_examples: int = 20,
) -> list[Check]:
    """Validate ``frame`` against ``expectations`` (GX 1.x Expectation objects), one :class:`Check` each.

    ``key_columns`` (columns of ``frame``) identify failing rows in the report; ``_row`` is always added.
    """
    import great_expectations as gx
    import numpy as np

    expectations = list(expectations)
    if not expectations:
        return []
    if ROW_KEY not in frame.columns:
        frame = frame.assign(**{ROW_KEY: np.arange(len(frame))})
    keys = [ROW_KEY] + [c for c in key_columns if c != ROW_KEY and c in frame.columns]
    definition = _batch_definition(suite_name)  # creates the context first: suites need an active one
    suite = gx.ExpectationSuite(name=suite_name)
    for expectation in expectations:
        suite.add_expectation(expectation)
    if not frame.index.is_unique:
        frame = frame.reset_index(drop=True)  # failing rows are looked up by index label
    batch = definition.get_batch(batch_parameters={"dataframe": frame})
    # Without ``unexpected_index_column_names`` GX lists the failing rows' index labels; with them it builds a
    # dict per failing row through two column-name lookups and a ``.at`` per key (about 1 ms a row, for every
    # failing row, of which only ``max_examples`` are kept). The key dicts of the kept ones are built here instead
    # (:func:`index_to_keys`), the same as GX's.
    result_format = {
        "result_format": "SUMMARY",
        "partial_unexpected_count": max_examples,
        "include_unexpected_rows": False,
    }
    results = batch.validate(suite, result_format=result_format)
    checks = [result_to_check(r, max_examples=max_examples, frame=frame, keys=keys) for r in results.results]
    order = {check_name(e): i for i, e in enumerate(expectations)}  # GX groups results by column; keep ours
    return sorted(checks, key=lambda c: order.get(c.name, len(order)))


def check_name(config: Any) -> str:
    """The check name of an expectation (or its configuration): ``meta["check"]`` or ``<type>:<column(s)>``."""
    if not hasattr(config, "kwargs") and hasattr(config, "configuration"):
        config = config.configuration
    meta = config.meta or {}
    if meta.get("check"):
        return str(meta["check"])
    kwargs = config.kwargs or {}
    column = kwargs.get("column") or ",".join(kwargs.get("column_list", []) or [])
    return f"{config.type}:{column}" if column else str(config.type)


def index_to_keys(frame: pd.DataFrame, label: Any, domain: Sequence[str], keys: Sequence[str]) -> dict[str, Any]:
    """The failing row ``label`` of ``frame`` as GX's ``unexpected_index_column_names`` names it: each domain
    column's value and, after the first, the ``keys`` columns (GX's own insertion order)."""
    item: dict[str, Any] = {}
    for column in domain:
        item[column] = frame.at[label, column]
        for key in keys:
            item[key] = frame.at[label, key]
    return item


def _domain_columns(config: Any) -> list[str]:
    kwargs = config.kwargs or {}
    if kwargs.get("column"):
        return [str(kwargs["column"])]
    return [str(c) for c in kwargs.get("column_list") or []]


def result_to_check(result: Any, max_examples: int = 20, *, frame: pd.DataFrame | None = None,
                    keys: Sequence[str] = ()) -> Check:
    """Convert one ``ExpectationValidationResult`` to a :class:`Check` (failing rows named by the key columns).

    With ``frame`` (the validated frame) and ``keys``, failing rows given by index label (a result format without
    ``unexpected_index_column_names``) are named by ``keys`` as GX would (:func:`index_to_keys`)."""
    config = result.expectation_config
    name = check_name(config)
    declared = str(getattr(config.severity, "value", config.severity) or "critical")
    severity: Severity = "critical" if declared == "critical" else "warning"
    meta = config.meta or {}
    what = config.description or meta.get("what") or name
    origin = f"great_expectations:{config.type}"
    errors = exception_messages(result.exception_info)
    if errors:
        message = f"{what}: could not be evaluated ({'; '.join(errors)})"
        return Check(name, severity, False, message, [], 1, origin)
    data = dict(result.result or {})
    if result.success:
        return Check(name, severity, True, f"{what}: ok", [], 0, origin)
    found = list(data.get("partial_unexpected_index_list") or [])[:max_examples]
    if frame is not None and keys:
        domain = _domain_columns(config)
        found = [index_to_keys(frame, item, domain, keys) if not isinstance(item, dict) else item for item in found]
    failing = [_clean_row(item) for item in found]
    count = int(data.get("unexpected_count") or len(failing) or 1)
    if "element_count" in data and "unexpected_count" in data:
        message = f"{what}: {count} of {data['element_count']} row(s) fail"
        values = [v.get("value") for v in data.get("partial_unexpected_counts") or []][:5]
        if values:
            message += f"; offending values {values}"
        if failing:
            message += f"; e.g. {describe_examples(failing)}"
    else:
        observed = data.get("observed_value")
        message = f"{what}: failed" + (f" (observed {observed!r})" if observed is not None else "")
        if observed is not None:
            failing = [{"observed": observed}]
    if meta.get("hint"):
        message += f". {meta['hint']}"
    return Check(name, severity, False, message, failing, count, origin)


def exception_messages(info: Any) -> list[str]:
    """Error messages in a result's ``exception_info``: flat (``raised_exception``) or keyed by metric id."""
    if not isinstance(info, dict):
        return []
    if "raised_exception" in info or "exception_message" in info:
        if not info.get("raised_exception") and not info.get("exception_message"):
            return []
        text = info.get("exception_message") or (info.get("exception_traceback") or "").strip().splitlines()[-1:]
        return [str(text if isinstance(text, str) else "".join(text))]
    messages: list[str] = []
    for value in info.values():
        messages += [m for m in exception_messages(value) if m not in messages]
    return messages


def _clean_row(item: Any) -> Any:
    """``{"_row": 3, "_file": "x.png", "label": "bad"}`` -> ``{"row": 3, "file": "x.png", "label": "bad"}``."""
    if not isinstance(item, dict):
        return {"row": item}
    cleaned = {}
    for key, value in item.items():
        key = key[1:] if key.startswith("_") else key
        cleaned[key] = _plain(value)
    order = [k for k in ("file", "row") if k in cleaned]
    return {k: cleaned[k] for k in order + [k for k in cleaned if k not in order]}


def _plain(value: Any) -> Any:
    """numpy scalars and NaN -> JSON-friendly Python values."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value
