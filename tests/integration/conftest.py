"""Integration fixtures: one real Prefect server per test run, DVC workspaces in temporary git repos.

- ``prefect_server``: ``prefect server start`` (the command the README gives), started once for the whole test run
  (the first xdist worker that needs it starts it, the others reuse it: tests/session_servers.py) and shared by
  every test that runs a flow or a deployment (in-process flows reach it through ``PREFECT_API_URL``;
  the scheduled-run test hands the same URL to its runner). Its services run, the scheduler every 5 s, so one
  server covers both; the flow heartbeat is off (each flow call costs ~0.2 s instead of ~1.1 s). It yields the
  API URL.
- ``fake_workspace`` / ``make_workspace(kind, overrides)``: see workspaces.py (``kind="fake"``: the tiny stand-in
  stages of fake_stages.py; ``kind="real"``: the project's dvc.yaml and stages with a tiny params override), each
  with a blank MLflow store in place (``mlflow_store``, tests/conftest.py); the real pipeline's own workspace
  (test_pipeline_real.py) is left bare, so that run creates its store as a first ``make pipeline`` does.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the helper modules beside this file (workspaces, fake_stages)
from workspaces import BIN, free_port, make_fake_workspace, make_real_workspace  # noqa: E402

#: Seconds the session's Prefect server may take to answer /health (minutes on a 2-core machine under heavy load).
SERVER_STARTUP_S = 300


def _wait_healthy(api: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_STARTUP_S
    while True:
        if proc.poll() is not None:
            tail = log.read_text()[-3000:]
            raise RuntimeError(f"prefect server exited ({proc.returncode}) before answering:\n{tail}")
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=5) as response:
                if json.loads(response.read() or b"null"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"prefect server did not answer in {SERVER_STARTUP_S} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def _drain_prefect_workers() -> None:
    """Send the logs and events still queued in this process before the server goes (as prefect_test_harness)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with contextlib.suppress(RuntimeError):  # never started
        APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """The API URL of the run's one ``prefect server start`` (own PREFECT_HOME and SQLite database), shared by the
    xdist workers: the first that needs it starts it, the main pytest process stops it (tests/session_servers.py)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from session_servers import shared_server

    def build(root: Path) -> tuple[list[str], dict[str, str], str]:
        port = free_port()
        env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "PREFECT_HOME": str(root / "home"),
               "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_SERVER_UI_ENABLED": "false", "PREFECT_UI_ENABLED": "false"}
        env.pop("PREFECT_API_URL", None)
        argv = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        return argv, env, f"http://127.0.0.1:{port}/api"

    api = shared_server("prefect", build, _wait_healthy)
    with temporary_settings({PREFECT_API_URL: api, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        try:
            yield api
        finally:
            _drain_prefect_workers()


@pytest.fixture
def fake_workspace(tmp_path: Path, mlflow_store: Callable[[Path], Path]) -> Path:
    ws = make_fake_workspace(tmp_path / "ws")
    mlflow_store(ws)
    return ws


@pytest.fixture
def make_workspace(tmp_path: Path, mlflow_store: Callable[[Path], Path]) -> Callable[..., Path]:
    def build(kind: str = "fake", overrides: list[str] = (), name: str = "ws") -> Path:
        maker = make_fake_workspace if kind == "fake" else make_real_workspace
        ws = maker(tmp_path / name, list(overrides))
        mlflow_store(ws)
        return ws

    return build

