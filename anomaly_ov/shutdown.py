"""Ending a command-line process without the interpreter's teardown of every module.

Once torch and transformers are imported (about 2,900 modules), Python's own shutdown spends 2 to 3 s freeing
module dictionaries and objects one by one before the process ends (`benchmarks/process_exit.py` measures it). The
pipeline starts one such process per stage (``anomaly-ov stage NAME`` under ``dvc repro``) and one per training rank
under torchrun, so a `make pipeline` run waited about half a minute for memory the operating system frees at once.

:func:`exit_process` keeps what that teardown does for the program and skips the rest:

1. it waits for the threads that are not daemons, after the shutdown hooks of :mod:`threading` (e.g. a
   ``ThreadPoolExecutor`` left open is told to stop), as the interpreter does;
2. it runs the :mod:`atexit` handlers (MLflow's asynchronous logging, ``multiprocessing``'s children, ``logging``'s
   flush, temporary folders);
3. it flushes stdout and stderr, then ends the process with ``os._exit(code)``.

Only the console entry points call it (``anomaly_ov.cli.main``, the torchrun child ``anomaly_ov.train.launch``);
code that runs a command in-process (tests with typer's ``CliRunner``) gets the usual ``SystemExit``.

Example:
    >>> from anomaly_ov.shutdown import exit_process
    >>> exit_process(main())  # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from typing import NoReturn


def exit_code(status: object) -> int:
    """The process exit status that ``sys.exit(status)`` gives: None -> 0, an int as is, anything else printed -> 1."""
    if status is None:
        return 0
    if isinstance(status, int):
        return status
    print(status, file=sys.stderr)
    return 1


def exit_process(status: object = 0) -> NoReturn:
    """Finish the program's work (threads, atexit handlers, streams) and end the process with ``status``.

    Args:
        status: what ``sys.exit`` would take: None or an int (the exit status), or a message (printed, status 1).
    """
    code = exit_code(status)
    _join_threads()
    atexit._run_exitfuncs()  # the interpreter's own call at shutdown; each handler runs once and is then removed
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream: nothing more can be written to it
            stream.flush()
    os._exit(code)


def _join_threads() -> None:
    """What the interpreter does first at shutdown: run threading's exit hooks, then join non-daemon threads."""
    shutdown = getattr(threading, "_shutdown", None)
    if threading.current_thread() is threading.main_thread() and shutdown is not None:
        shutdown()
        return
    current = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not current and not thread.daemon:
            thread.join()
