"""One real scheduled run: `anomaly-ov schedule` (cron every minute) on stand-in stages, against the session's
`prefect server start` (the ``prefect_server`` fixture: its scheduler runs every 5 s).

Slow by nature (waiting for the next minute), so marked slow; the runner is started here and stopped by its id.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from workspaces import BIN, make_fake_workspace, stop_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]


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


@pytest.mark.timeout(540)  # server start-up (when first), the next minute, one run of the stand-in stages
def test_scheduled_retrain_runs_on_a_real_prefect_server(prefect_server, tmp_path):
    ws = make_fake_workspace(tmp_path / "ws", ["schedule.cron='* * * * *'", "schedule.deployment_name=every-minute"])
    api = prefect_server
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_RUNNER_POLL_FREQUENCY": "2", "PREFECT_API_URL": api}
    runner_log = tmp_path / "runner.log"
    runner = None
    try:
        runner = subprocess.Popen([str(BIN / "anomaly-ov"), "schedule", "-w", str(ws)], cwd=ws, env=env,
                                  stdout=runner_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
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
    finally:  # the runner's log is shown when the test fails (a timeout included)
        print("runner.log (tail):\n" + (runner_log.read_text()[-3000:] if runner_log.exists() else "(none)"))
        if runner is not None:
            stop_process(runner)
