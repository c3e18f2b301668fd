"""`anomaly-ov stage NAME` records how the stage ended in reports/stages/NAME.result.json and exits with the error
kind's code; a process killed mid-stage leaves the record at ``running`` (what the orchestration reads as a kill)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anomaly_ov import stages
from anomaly_ov.config import load_params
from anomaly_ov.errors import ConfigError, InputError

REPO = Path(__file__).resolve().parents[2]


def _params():
    return load_params(None, ["tracking.enabled=false"])


def _run(tmp_path, monkeypatch, func, load=_params):
    monkeypatch.setattr(stages, "implementation", lambda name: func)
    monkeypatch.setenv(stages.INVOCATION_ENV, "inv-1")
    errors: list[str] = []
    printed: list[str] = []
    code = stages.execute("prepare", tmp_path, load, echo=printed.append, echo_error=errors.append)
    return code, stages.read_result(tmp_path, "prepare"), printed, errors


def test_success_records_the_summary(tmp_path, monkeypatch):
    code, record, printed, _ = _run(tmp_path, monkeypatch, lambda params, ws: {"images": 3})
    assert code == 0 and record["status"] == "succeeded" and record["exit_code"] == 0
    assert record["summary"]["images"] == 3 and record["seconds"] is not None and record["invocation"] == "inv-1"
    assert json.loads(printed[0])["images"] == 3
    assert stages.result_path(tmp_path, "prepare") == tmp_path / "reports/stages/prepare.result.json"


def test_bad_input_records_kind_files_and_exit_code(tmp_path, monkeypatch):
    def bad(params, ws):
        raise InputError("2 unusable file(s)", failing=["a.png: not an image", "b.png: truncated"])

    code, record, _, errors = _run(tmp_path, monkeypatch, bad)
    assert code == 3 == record["exit_code"]
    assert (record["status"], record["error_kind"], record["error_category"]) == ("failed", "InputError", "InputError")
    assert record["failing"] == ["a.png: not an image", "b.png: truncated"] and record["retryable"] is False
    assert errors == ["stage 'prepare': 2 unusable file(s)"]


def test_invalid_params_are_recorded_as_a_config_error(tmp_path, monkeypatch):
    def load():
        raise ConfigError("params.yaml: train.expert.lr: must be > 0")

    code, record, _, _ = _run(tmp_path, monkeypatch, lambda params, ws: {}, load=load)
    assert code == 2 and record["error_kind"] == "ConfigError" and "train.expert.lr" in record["message"]


def test_a_bug_keeps_its_traceback_and_is_recorded(tmp_path, monkeypatch):
    def buggy(params, ws):
        raise IndexError("shape mismatch in the expert")

    with pytest.raises(IndexError):  # re-raised: the CLI prints the traceback
        _run(tmp_path, monkeypatch, buggy)
    record = stages.read_result(tmp_path, "prepare")
    assert (record["error_kind"], record["error_category"], record["exit_code"]) == ("IndexError", "Bug", 1)
    assert record["retryable"] is False


def test_an_unknown_stage_writes_no_file(tmp_path):
    errors: list[str] = []
    assert stages.execute("nope", tmp_path, _params, echo_error=errors.append) == 2
    assert "choose one of" in errors[0] and not (tmp_path / "reports").exists()


@pytest.mark.timeout(120)
def test_a_killed_stage_leaves_its_record_running(tmp_path):
    """SIGKILL cannot be caught: the record written at the start says the stage never finished."""
    code = (
        "import time, sys\n"
        "from anomaly_ov import stages\n"
        "from anomaly_ov.config import load_params\n"
        "stages.implementation = lambda name: (lambda params, ws: time.sleep(600))\n"
        "stages.execute('prepare', sys.argv[1], lambda: load_params(None, ['tracking.enabled=false']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), stages.INVOCATION_ENV: "inv-kill"}
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env)
    path = stages.result_path(tmp_path, "prepare")
    try:
        while not path.exists():  # the record is written before the stage starts
            assert proc.poll() is None, "the stage process ended before writing its record"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    record = stages.read_result(tmp_path, "prepare")
    assert record["status"] == "running" and record["invocation"] == "inv-kill" and record["pid"] == proc.pid
