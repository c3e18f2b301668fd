"""The project's error types: one hierarchy, one exit code per kind.

Everything the project raises on purpose derives from :class:`AnomalyOVError`. The CLI prints those as one short
red line and exits with the class's :attr:`~AnomalyOVError.exit_code`; anything else is a bug and keeps its
traceback. The kinds also say whether running the same thing again could help (:attr:`~AnomalyOVError.retryable`),
which the orchestration uses to decide on retries.

Exit codes (documented in ``docs/architecture.md``):

==== ======================= ==================================================================================
code kind                    meaning
==== ======================= ==================================================================================
0    -                       success
1    (any other exception)   a bug: the traceback is printed
2    :class:`ConfigError`    bad command line, params.yaml or ``--set`` override; fix the named key
3    :class:`InputError`     bad input data (a file, row, record or checkpoint); the message names it
4    :class:`StageFailed`    a stage ran and its checks failed (critical validation, diverged training, ...)
5    :class:`TransientError` a service or process failed in a way a retry may fix (LLM endpoint, launcher)
130  (interrupted)           Ctrl-C or SIGTERM during ``anomaly-ov stage`` (recorded as retryable)
==== ======================= ==================================================================================

Each subclass keeps the builtin base it always had (``ValueError``, ``RuntimeError``, ``FileNotFoundError``), so
existing ``except ValueError`` callers keep working.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

#: At most this many failing items travel in a result file (the message says how many there were).
MAX_FAILING = 50


class AnomalyOVError(Exception):
    """Base of every error the project raises on purpose.

    ``failing`` names the files, rows, records or keys at fault (``"path: reason"`` strings), so that a machine
    reader (the stage's result file, the Prefect artifact) can list them without parsing the message.
    """

    exit_code: ClassVar[int] = 1
    retryable: ClassVar[bool] = False

    def __init__(self, *args: Any, failing: Iterable[Any] = ()) -> None:
        super().__init__(*args)
        self.failing = [_item(item) for item in failing]


class ConfigError(AnomalyOVError, ValueError):
    """params.yaml, an override or a command-line option is invalid; the message lists every problem."""

    exit_code = 2


class InputError(AnomalyOVError, ValueError):
    """Input data cannot be used: the message names the file, row, record or key and says what to do."""

    exit_code = 3


class StageFailed(AnomalyOVError, RuntimeError):
    """A stage found a problem that must stop the pipeline (e.g. a critical validation failure)."""

    exit_code = 4

    def __init__(
        self, stage: str, message: str, summary: dict[str, Any] | None = None, *, failing: Iterable[Any] = ()
    ) -> None:
        super().__init__(f"stage {stage!r} failed: {message}", failing=failing)
        self.stage = stage
        self.summary = summary or {}


class TransientError(AnomalyOVError, RuntimeError):
    """A service or subprocess failed in a way that running again may fix."""

    exit_code = 5
    retryable = True


#: exit code -> kind, for readers of exit statuses (the orchestration, scripts).
EXIT_CODES: dict[int, str] = {
    cls.exit_code: cls.__name__ for cls in (ConfigError, InputError, StageFailed, TransientError)
}


def failing_items(exc: BaseException, limit: int = MAX_FAILING) -> list[str]:
    """The files/rows/keys an error names: its own ``failing`` list, else the per-file issues of its causes.

    A reader's :class:`~anomaly_ov.data.sources.LayoutError` carries ``issues`` (file + reason); an error raised
    ``from`` it (e.g. prepare's :class:`StageFailed`) inherits them here.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        items = list(getattr(current, "failing", None) or [])
        if not items:
            items = [_item(issue) for issue in getattr(current, "issues", None) or []]
        if items:
            return [str(item)[:500] for item in items[:limit]]
        current = current.__cause__ or current.__context__
    return []


def _item(item: Any) -> str:
    """``"file: reason"`` for an object with ``file`` and ``reason`` (a reader's issue), else ``str(item)``."""
    if hasattr(item, "file") and hasattr(item, "reason"):
        return f"{item.file}: {item.reason}"
    return str(item)
