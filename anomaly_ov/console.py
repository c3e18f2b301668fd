"""What a person sees while the pipeline works: one log handler, progress bars, secret redaction.

The CLI's root callback calls :func:`configure_logging` once per process with the ``-v``/``-q`` counts. It installs
one handler on the root logger: rich's on a terminal, plain one-line records otherwise (a pipe, a flow's log). The
chosen level is also written to the environment variable :data:`LOG_LEVEL_ENV`, so stage subprocesses started by DVC or
Prefect (``anomaly-ov stage NAME``) inherit it and log at the same level without being passed ``-v`` themselves.

Levels (for the project's own loggers, ``anomaly_ov.*``, ``flows.*`` and ``tasks.*``):

============ =========== ==================================================================================
flags        level       what appears
============ =========== ==================================================================================
``-q``       ERROR       errors only; no progress bars
(none)       WARNING     warnings (a checkpoint that belongs to other inputs, missing expert weights, ...)
``-v``       INFO        progress notes: evaluation counts, the training resume notice, expert weights loaded
``-vv``      DEBUG       the project's debug messages
``-vvv``     DEBUG       the same for every library (mlflow, prefect, transformers, ...)
============ =========== ==================================================================================

Progress bars (:func:`track`, :class:`ProgressBar`) are drawn on stderr only when stderr is a terminal and the
level is not quiet; elsewhere (a DVC stage inside a Prefect flow, CI, ``-q``) they log one INFO line about every
10 % of the work, so ``-v`` still shows how far a long stage got.

Log records pass through :class:`RedactSecrets`: the value of any environment variable whose name looks like a
credential (``*KEY*``, ``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``) and the password of ``scheme://user:pass@host``
URLs are replaced by ``***`` before anything is written.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

#: Environment variable carrying the log level (a level name) to subprocesses.
LOG_LEVEL_ENV = "ANOMALY_OV_LOG_LEVEL"
#: Loggers that belong to the project (their level follows ``-v``; libraries stay at WARNING until ``-vvv``).
PROJECT_LOGGERS = ("anomaly_ov", "flows", "tasks")
_HANDLER_NAME = "anomaly-ov"
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/\s:@]+:)[^@\s/]+@", re.IGNORECASE)
_MIN_SECRET_LEN = 6

T = TypeVar("T")

_console: Console | None = None


def level_for(verbose: int, quiet: bool) -> int:
    """The project's log level for ``-v`` repeated ``verbose`` times, or ``-q``."""
    if quiet:
        return logging.ERROR
    return {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)


def inherited_level() -> int | None:
    """The level a parent ``anomaly-ov`` process handed down in :data:`LOG_LEVEL_ENV`, if any (a name or number)."""
    value = os.environ.get(LOG_LEVEL_ENV, "").strip()
    if not value:
        return None
    if value.isdigit():
        return int(value)
    level = logging.getLevelName(value.upper())
    return level if isinstance(level, int) else None


def console() -> Console:
    """The one stderr console shared by the log handler and the progress bars (so bars and lines do not mix)."""
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(stderr=True, soft_wrap=True)
    return _console


def is_quiet() -> bool:
    """True when progress should not be drawn: ``-q`` (level above WARNING) or stderr is not a terminal."""
    return logging.getLogger("anomaly_ov").getEffectiveLevel() > logging.WARNING or not console().is_terminal


class RedactSecrets(logging.Filter):
    """Replace credential values (from the environment) and URL passwords in a record's final message by ``***``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def redact(text: str) -> str:
    """``text`` with every secret-looking environment value and URL password replaced by ``***``."""
    for name, value in os.environ.items():
        if _SECRET_NAME.search(name) and len(value) >= _MIN_SECRET_LEN and value in text:
            text = text.replace(value, "***")
    return _URL_PASSWORD.sub(r"\g<head>***@", text)


class _StderrHandler(logging.StreamHandler):
    """A plain stream handler that always writes to the current ``sys.stderr`` (which test runners replace)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # noqa: ANN201 - the stream logging writes to
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:  # logging.StreamHandler.__init__ assigns it
        pass


def _handler() -> logging.Handler:
    """Rich on a terminal (colours, aligned columns); plain ``time level logger: message`` lines elsewhere, so the
    lines a flow or CI captures are neither wrapped nor padded to a console width."""
    if console().is_terminal:
        from rich.logging import RichHandler

        return RichHandler(console=console(), show_path=False, markup=False, log_time_format="[%X]")
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    return handler


def configure_logging(verbose: int = 0, quiet: bool = False) -> int:
    """Install the one log handler on the root logger and set the levels; returns the project level.

    Without ``-v``/``-q`` a level inherited through :data:`LOG_LEVEL_ENV` wins (a stage run by DVC under
    ``anomaly-ov -v run``). The chosen level is written back to the environment for the next subprocess.
    Calling it again replaces the handler (tests invoke the CLI many times in one process).
    """
    inherited = inherited_level()
    level = inherited if (inherited is not None and not verbose and not quiet) else level_for(verbose, quiet)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    handler = _handler()
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(RedactSecrets())
    root.addHandler(handler)
    everything = verbose >= 3 or (inherited is not None and inherited < logging.DEBUG and not (verbose or quiet))
    root.setLevel(level if everything or quiet else logging.WARNING)
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(level)
    os.environ[LOG_LEVEL_ENV] = str(logging.DEBUG - 1) if everything else logging.getLevelName(level)
    return level


class ProgressBar:
    """A progress bar over ``total`` units of work, drawn on a terminal, logged as ~10 % steps elsewhere.

    Use as a context manager and call :meth:`advance` (or :meth:`update` with a running count, which is the
    ``on_progress(done, total)`` callback shape the evaluation loops use)::

        with ProgressBar("evaluate: detection", total=len(items), unit="images") as bar:
            for item in items:
                ...
                bar.advance()

    Keyword arguments to :meth:`advance` / :meth:`update` are a postfix shown right of the count and at the end of
    the log lines (training passes its loss: ``bar.advance(loss=0.4213)`` shows ``loss 0.4213``). Log lines also
    carry the elapsed time and an ETA from the rate since the bar started::

        stage 1 (expert): 40 / 200 steps loss 0.4213 elapsed 12s ETA 48s

    Args:
        description: what is being done, shown left of the bar and in the log lines.
        total: units of work (``None``: unknown, the bar spins and the log shows counts only).
        unit: the name of a unit in log lines ("images", "files", ...).
        logger: where the non-terminal lines go (INFO); default ``anomaly_ov.progress``.
        done: units already done when the bar starts (a resumed training run); the ETA counts from here.
        enabled: ``False`` draws and logs nothing (a non-main rank of a distributed run, ``progress=False``).
    """

    def __init__(self, description: str, total: int | None, unit: str = "items",
                 logger: logging.Logger | None = None, done: int = 0, enabled: bool = True) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.done = self._start_done = int(done)
        self.enabled = enabled
        self._log = logger or logging.getLogger("anomaly_ov.progress")
        self._every = max((total or 0) // 10, 1)
        self._next_log = (self.done // self._every + 1) * self._every
        self._started = time.perf_counter()
        self._postfix = ""
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> ProgressBar:
        if self.enabled and not is_quiet():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[postfix]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), console=console(), transient=False)
            self._task = self._bar.add_task(self.description, total=self.total, completed=self.done, postfix="")
            self._bar.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def update(self, done: int, total: int | None = None, **postfix: object) -> None:
        """Set the running count (and the total, when it becomes known)."""
        if total is not None and total != self.total:
            self.total = total
            self._every = max(total // 10, 1)
            self._next_log = (self.done // self._every + 1) * self._every
            if self._bar is not None and self._task is not None:
                self._bar.update(self._task, total=total)
        self.advance(done - self.done, **postfix)

    def advance(self, n: int = 1, **postfix: object) -> None:
        """Count ``n`` more units of work as done; ``postfix`` (``loss=0.42``) replaces the shown fields."""
        if postfix:
            self._postfix = " ".join(f"{key} {_format_field(value)}" for key, value in postfix.items())
        if n <= 0 or not self.enabled:
            return
        self.done += n
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, advance=n, postfix=self._postfix)
        elif self.done >= self._next_log or (self.total is not None and self.done >= self.total):
            self._log.info("%s", self.line())
            while self._next_log <= self.done:
                self._next_log += self._every

    def line(self) -> str:
        """The log line for the current state: count, postfix, elapsed time and (with a total) the ETA."""
        of = f" / {self.total}" if self.total is not None else ""
        postfix = f" {self._postfix}" if self._postfix else ""
        elapsed = time.perf_counter() - self._started
        timing = f" elapsed {elapsed:.0f}s"
        rate = (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0
        if self.total is not None and rate > 0:
            timing += f" ETA {max(self.total - self.done, 0) / rate:.0f}s"
        return f"{self.description}: {self.done}{of} {self.unit}{postfix}{timing}"

    def close(self) -> None:
        """Stop drawing (idempotent)."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _format_field(value: object) -> str:
    """A postfix value as shown: floats with four decimals (a loss), anything else as ``str``."""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def track(items: Iterable[T], description: str, total: int | None = None, unit: str = "items") -> Iterator[T]:
    """Yield from ``items`` while showing a :class:`ProgressBar` (``total`` defaults to ``len(items)``)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with ProgressBar(description, total, unit) as bar:
        for item in items:
            yield item
            bar.advance()

