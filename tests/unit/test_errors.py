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
