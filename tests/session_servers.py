"""Servers shared by every process of one test run: the main pytest process and its xdist workers.

A server several workers need (the Prefect server of tests/integration/conftest.py) is started once, by the first
worker that asks for it, and reused by the others: starting Prefect's server costs about 14 s of CPU, which two
workers each paid at the start of every `make test`.

- The main pytest process makes the run's folder in ``pytest_configure`` (:func:`open_run`; its path and the
  process id go to the environment, which the workers inherit) and stops every server recorded there in
  ``pytest_unconfigure`` (:func:`close_run`), after all workers are done.
- :func:`shared_server` runs under a file lock in that folder: it returns the URL of the server recorded under
  its name while that server runs, else starts it under tests/server_keeper.py (its own process group; the keeper
  stops the server when the main process dies without stopping it) and records it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

RUN_DIR_ENV = "ANOMALY_OV_TEST_RUN_DIR"
OWNER_ENV = "ANOMALY_OV_TEST_RUN_OWNER"
KEEPER = Path(__file__).with_name("server_keeper.py")
#: the keepers this process started (it must reap them itself; others are reaped by init once their starter exits)
_STARTED: dict[int, subprocess.Popen] = {}

#: (argv, environment, url) of a server whose files go under the folder it is given
Build = Callable[[Path], tuple[list[str], dict[str, str], str]]
#: waits until the server at url answers; raises (naming the log) when the process ends or never answers
WaitReady = Callable[[str, subprocess.Popen, Path], None]


def open_run() -> Path:
    """The run's shared folder, made now (the main pytest process, once)."""
    run_dir = Path(tempfile.mkdtemp(prefix="anomaly-ov-test-run-"))
    os.environ[RUN_DIR_ENV] = str(run_dir)
    os.environ[OWNER_ENV] = str(os.getpid())
    return run_dir


def close_run() -> None:
    """Stop every server recorded in the run's folder, then remove it (the main pytest process, at the end)."""
    run_dir = os.environ.pop(RUN_DIR_ENV, None)
    os.environ.pop(OWNER_ENV, None)
    if not run_dir:
        return
    for record in Path(run_dir).glob("*/server.json"):
        _stop(json.loads(record.read_text())["pid"])
    shutil.rmtree(run_dir, ignore_errors=True)


def shared_server(name: str, build: Build, wait_ready: WaitReady) -> str:
    """The URL of this run's server ``name``, started now when no process of the run has started it yet."""
    run_dir = os.environ.get(RUN_DIR_ENV)
    if not run_dir:
        raise RuntimeError(f"{RUN_DIR_ENV} is not set: tests/conftest.py's pytest_configure makes the run's folder")
    root = Path(run_dir) / name
    with _locked(Path(run_dir) / f"{name}.lock"):
        record = root / "server.json"
        if record.is_file():
            known = json.loads(record.read_text())
            if alive(known["pid"]):
                return known["url"]
        root.mkdir(parents=True, exist_ok=True)
        argv, env, url = build(root)
        log = root / "server.log"
        with log.open("w") as out:
            keeper = subprocess.Popen([sys.executable, str(KEEPER), os.environ[OWNER_ENV], "--", *argv], env=env,
                                      stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _STARTED[keeper.pid] = keeper
        try:
            wait_ready(url, keeper, log)
        except BaseException:
            _stop(keeper.pid)
            raise
        record.write_text(json.dumps({"pid": keeper.pid, "url": url}))
        return url


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, ended but not yet reaped, does not)."""
    if pid in _STARTED:
        return _STARTED[pid].poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    with contextlib.suppress(OSError):  # a zombie (ended, not yet reaped by whoever inherited it) is gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _stop(pid: int, grace_s: float = 30.0) -> None:
    """SIGTERM the keeper's process group (keeper and server), SIGKILL it if it is still there after ``grace_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    if pid in _STARTED:
        _STARTED.pop(pid).wait(timeout=10)
