"""The project's errors form one hierarchy: every exception class it defines derives from AnomalyOVError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import anomaly_ov
from anomaly_ov import errors


def _project_exception_classes() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(anomaly_ov.__path__, prefix="anomaly_ov."):
        if info.name.startswith("anomaly_ov.commands") or info.name == "anomaly_ov.cli":
            continue  # the CLI modules register commands on import; they define no errors
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Exception) and obj.__module__ == info.name:  # not SystemExit (tracking.Terminated)
                found.append(obj)
    return found


def test_every_project_exception_derives_from_the_one_base():
    classes = _project_exception_classes()
    assert len(classes) >= 15  # the scan found the package's error classes (not an empty walk)
    outside = [f"{cls.__module__}.{cls.__name__}" for cls in classes if not issubclass(cls, errors.AnomalyOVError)]
    assert outside == [], f"derive these from anomaly_ov.errors types: {outside}"


def test_exit_codes_are_distinct_and_kinds_keep_their_builtin_bases():
    assert sorted(errors.EXIT_CODES) == [2, 3, 4, 5]
    assert issubclass(errors.ConfigError, ValueError) and issubclass(errors.InputError, ValueError)
    assert errors.TransientError.retryable and not errors.StageFailed.retryable
    failed = errors.StageFailed("validate", "3 critical checks failed", {"critical": 3})
    assert (failed.stage, failed.summary, failed.exit_code) == ("validate", {"critical": 3}, 4)


def test_failing_items_come_from_the_error_or_the_per_file_issues_of_its_cause():
    from anomaly_ov.data.sources import Issue, LayoutError

    issues = [Issue("image_opens", "ds/a.png", "not an image"), Issue("image_opens", "ds/b.png", "truncated")]
    try:
        try:
            raise LayoutError("2 unusable file(s)", failing=issues)
        except LayoutError as exc:
            raise errors.StageFailed("prepare", f"source 'mine': {exc}") from exc
    except errors.StageFailed as outer:
        assert errors.failing_items(outer) == ["ds/a.png: not an image", "ds/b.png: truncated"]
    explicit = errors.InputError("bad rows", failing=[f"row {i}" for i in range(80)])
    assert errors.failing_items(explicit) == [f"row {i}" for i in range(errors.MAX_FAILING)]
    assert errors.failing_items(ValueError("a bug")) == []
