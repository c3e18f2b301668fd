"""One real scheduled run: `prefect server start` + `anomaly-ov schedule` (cron every minute) on stand-in stages.

Slow by nature (server start-up plus waiting for the next minute), so marked slow; both processes are started
here and stopped by their process ids.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from workspaces import BIN, make_fake_workspace

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(url: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def wait_for(predicate, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    """Poll ``predicate`` until it returns something; the test's timeout mark ends a wait that never does."""
    while True:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited early\n{log.read_text()[-3000:] if log else ''}")
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(2)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.mark.timeout(540)  # server start-up, the next minute, one run of the stand-in stages
def test_scheduled_retrain_runs_on_a_real_prefect_server(tmp_path):
    ws = make_fake_workspace(tmp_path / "ws", ["schedule.cron='* * * * *'", "schedule.deployment_name=every-minute"])
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5", "PREFECT_RUNNER_POLL_FREQUENCY": "2",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    server_log, runner_log = tmp_path / "server.log", tmp_path / "runner.log"
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=server_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    runner = None
    try:
        wait_for(lambda: http_json(f"{api}/health"), "prefect server health", server, server_log)
        runner = subprocess.Popen([str(BIN / "anomaly-ov"), "schedule", "-w", str(ws)], cwd=ws,
                                  env={**env, "PREFECT_API_URL": api}, stdout=runner_log.open("w"),
                                  stderr=subprocess.STDOUT, start_new_session=True)
        deployment = wait_for(
            lambda: http_json(f"{api}/deployments/name/anomaly-ov-retrain/every-minute"), "deployment", runner,
            runner_log)
        assert deployment["schedules"][0]["schedule"]["cron"] == "* * * * *"

        def finished_runs():
            runs = http_json(f"{api}/flow_runs/filter", {"deployments": {"id": {"any_": [deployment["id"]]}}})
            done = [r for r in runs if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED")]
            return done

        done = wait_for(finished_runs, "a scheduled flow run to finish", runner, runner_log)
        assert done[0]["state_type"] == "COMPLETED", runner_log.read_text()[-3000:]
        assert done[0]["auto_scheduled"] is True
        assert (ws / "reports/register.json").exists()
    finally:
        for log in (server_log, runner_log):  # shown when the test fails (a timeout included)
            print(f"{log.name} (tail):\n" + (log.read_text()[-3000:] if log.exists() else "(none)"))
        if runner is not None:
            stop(runner)
        stop(server)
