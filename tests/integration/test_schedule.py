"""One real scheduled run: `anomaly-ov schedule` (a cron schedule from params) on stand-in stages, against the
session's `prefect server start` (the ``prefect_server`` fixture: its scheduler runs every 5 s).

The cron has a sixth field, seconds (Prefect's cron schedules accept croniter's seconds field): it fires every
10 s, so the test waits for the next 10-second slot instead of the next minute; everything else is the weekly
retrain's path (params -> Cron schedule -> deployment served by the runner -> the server's scheduler creates the
run -> the runner executes it). The run is the retrain flow on a fresh workspace, checked end to end: `dvc pull`
tolerates the empty remote, every stage runs, `dvc push` fills the remote. Slow by nature, so marked slow; the
runner is started here and stopped by its id, and the deployment is deleted with its pending runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
from workspaces import BIN, make_fake_workspace, stop_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: minute hour day month weekday second (croniter, which Prefect's Cron uses, reads a sixth field as seconds)
EVERY_10_S = "* * * * * */10"


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
        time.sleep(0.5)


@pytest.mark.timeout(480)  # server start-up (when first), the next 10-second slot, one run of the stand-in stages
def test_scheduled_retrain_runs_on_a_real_prefect_server(prefect_server, tmp_path, mlflow_store):
    ws = make_fake_workspace(tmp_path / "ws", [f"schedule.cron='{EVERY_10_S}'", "schedule.deployment_name=every-10s"])
    mlflow_store(ws)
    api = prefect_server
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_RUNNER_POLL_FREQUENCY": "2", "PREFECT_API_URL": api}
    runner_log = tmp_path / "runner.log"
    remote = tmp_path / "ws-remote"  # the workspace's DVC remote (workspaces.init_repo): empty, not even created
    assert not remote.exists()
    runner = deployment = None
    try:
        runner = subprocess.Popen([str(BIN / "anomaly-ov"), "schedule", "-w", str(ws)], cwd=ws, env=env,
                                  stdout=runner_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        deployment = wait_for(
            lambda: http_json(f"{api}/deployments/name/anomaly-ov-retrain/every-10s"), "deployment", runner,
            runner_log)
        assert deployment["schedules"][0]["schedule"]["cron"] == EVERY_10_S

        def finished_runs():
            runs = http_json(f"{api}/flow_runs/filter", {"deployments": {"id": {"any_": [deployment["id"]]}}})
            done = [r for r in runs if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED")]
            return done

        done = wait_for(finished_runs, "a scheduled flow run to finish", runner, runner_log)
        assert done[0]["state_type"] == "COMPLETED", runner_log.read_text()[-3000:]
        assert done[0]["auto_scheduled"] is True
        slot = datetime.fromisoformat(done[0]["expected_start_time"])
        assert slot.second % 10 == 0 and slot.microsecond == 0, slot  # the cron's seconds field set the slot
        assert json.loads((ws / "reports/register.json").read_text())["reason"] == "fake stages"  # register ran
        # the retrain flow tolerated the empty remote on `dvc pull` and sent data and models there with `dvc push`
        assert [p for p in remote.rglob("*") if p.is_file()], "dvc push sent nothing to the remote"
    finally:  # the runner's log is shown when the test fails (a timeout included)
        print("runner.log (tail):\n" + (runner_log.read_text()[-3000:] if runner_log.exists() else "(none)"))
        if deployment is not None:  # its schedule made runs every 10 s for the next hour: delete them with it
            request = urllib.request.Request(f"{api}/deployments/{deployment['id']}", method="DELETE")
            with contextlib.suppress(OSError):  # clean-up only: never hide the test's own failure
                urllib.request.urlopen(request, timeout=30).close()
        if runner is not None:
            stop_process(runner)
