"""anomaly_ov.orchestration without Prefect: commands, environment, DVC output parsing, failure reasons, summaries."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from anomaly_ov import orchestration as orch
from anomaly_ov.config import load_params
from anomaly_ov.tracking import PARENT_RUN_ENV, TRACKING_URI_ENV


def test_stage_command_runs_one_stage_with_venv_first_and_mlflow_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin")
    monkeypatch.setenv(PARENT_RUN_ENV, "stale-run")
    cmd = orch.build_stage_command("train_expert", tmp_path, parent_run_id="abc", tracking_uri="sqlite:////x.db")
    assert cmd.argv[1:] == ["repro", "--single-item", "train_expert"]
    assert Path(cmd.argv[0]).name == "dvc"
    assert cmd.env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert cmd.env[PARENT_RUN_ENV] == "abc" and cmd.env[TRACKING_URI_ENV] == "sqlite:////x.db"
    assert cmd.cwd == tmp_path.resolve()
    forced = orch.build_stage_command("prepare", tmp_path, force=True)
    assert forced.argv[-1] == "--force" and PARENT_RUN_ENV not in forced.env


def test_skip_detection_reads_dvc_messages():
    skipped = ["Stage 'evaluate' didn't change, skipping", "Data and pipelines are up to date."]
    ran = ["Running stage 'evaluate':", "> anomaly-ov stage evaluate", "Updating lock file 'dvc.lock'"]
    assert orch.was_skipped("evaluate", skipped)
    assert not orch.was_skipped("evaluate", ran)
    assert not orch.was_skipped("prepare", skipped)


def test_parse_summary_takes_the_printed_json_block():
    lines = ["Running stage 'x':", "noise {", "{", '  "rows": 3,', '  "nested": {', '    "a": 1', "  }", "}", "done"]
    assert orch.parse_summary(lines) == {"rows": 3, "nested": {"a": 1}}
    assert orch.parse_summary(["no json here"]) == {}


def _validation_report(path: Path, ok: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    checks = [
        {"name": "files_exist", "severity": "critical", "passed": ok, "message": "3 image files missing: a.png",
         "n_failing": 0 if ok else 3},
        {"name": "sizes", "severity": "warning", "passed": False, "message": "2 small images", "n_failing": 2},
    ]
    path.write_text(json.dumps({"ok": ok, "summary": {"checks": 2, "failed": 2 - ok}, "checks": checks}))


def test_validation_failure_reason_comes_from_the_report_and_is_not_retryable(tmp_path):
    params = load_params(None)
    _validation_report(tmp_path / params.validation.report_json, ok=False)
    lines = ["ERROR: failed to reproduce 'validate': failed to run: anomaly-ov stage validate, exited with 1"]
    reason, retryable = orch.failure_reason("validate", lines, tmp_path, params)
    assert not retryable
    assert "files_exist: 3 image files missing: a.png" in reason and "sizes" not in reason
    assert params.validation.report_md in reason


def test_stage_failed_message_is_not_retryable_crash_is(tmp_path):
    lines = ["Running stage 'evaluate':", "stage 'evaluate' failed: no model in models/anomaly_ov", "ERROR: failed"]
    assert orch.failure_reason("evaluate", lines, tmp_path) == ("no model in models/anomaly_ov", False)
    reason, retryable = orch.failure_reason("evaluate", ["Traceback (most recent call last):", "Killed"], tmp_path)
    assert retryable and "Killed" in reason


@pytest.mark.timeout(60)  # the child sleeps 600 s: only the kill ends it in time
def test_run_command_streams_lines_and_kills_on_timeout(tmp_path):
    seen: list[str] = []
    code = "import time\nprint('a', flush=True)\nprint('b', flush=True)\ntime.sleep(600)"
    cmd = orch.StageCommand([sys.executable, "-c", code], dict(os.environ), tmp_path)
    result = orch.run_command(cmd, seen.append, timeout_s=1.5)
    assert result.timed_out and result.returncode == -signal.SIGTERM  # killed, not a normal end
    assert seen == ["a", "b"]


def test_summaries_show_validation_checks_and_last_training_values(tmp_path):
    params = load_params(None)
    _validation_report(tmp_path / params.validation.report_json, ok=False)
    summary = orch.summarize_stage("validate", params, tmp_path)
    assert "**FAILED**" in summary.markdown and "| files_exist | critical | 3 |" in summary.markdown
    curve = {"history": [{"epoch": 1, "loss": 0.9}, {"epoch": 2, "loss": 0.4}], "best": {"val_auroc": 0.8123456}}
    report = tmp_path / params.train.expert.report
    report.write_text(json.dumps(curve))
    rows = {r["key"]: r["value"] for r in orch.summarize_stage("train_expert", params, tmp_path).table}
    assert rows == {"history[last].epoch": 2, "history[last].loss": 0.4, "best.val_auroc": 0.8123}
    outcome = orch.StageOutcome("synthesize", skipped=True, seconds=0.5)
    missing = orch.summarize_stage("synthesize", params, tmp_path, outcome)
    assert "skipped (DVC: up to date)" in missing.markdown and "is missing" in missing.markdown


def test_stage_settings_and_extensions_follow_params():
    params = load_params(None, ["schedule.stages={train_expert: {retries: 2, timeout_s: 60}}",
                                "extensions.threed.enabled=false"])
    assert orch.stage_run_settings(params, "train_expert").retries == 2
    assert orch.stage_run_settings(params, "evaluate").retries == 0
    assert orch.enabled_extensions(params) == ["extend_medical"]
    assert orch.artifact_key("train_expert") == "train-expert-summary"


def test_numeric_metrics_flattens_and_drops_non_numbers():
    data = {"zero_shot": {"image_auroc": 0.9, "per_class": {"pcb": 0.8}}, "n": 3, "name": "x", "nan": float("nan")}
    assert orch.numeric_metrics(data) == {"zero_shot.image_auroc": 0.9, "zero_shot.per_class.pcb": 0.8, "n": 3.0}


def test_missing_tool_error_names_the_fix(monkeypatch):
    monkeypatch.setattr(orch, "venv_bin", lambda: Path("/nonexistent"))
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(FileNotFoundError, match="pip install -e"):
        orch.tool("dvc")


def test_every_flow_stage_has_a_report_to_summarise(tmp_path):
    from anomaly_ov.data.prepare import SOURCES_FINGERPRINT

    params = load_params(None)
    stages = {*orch.PIPELINE_STAGES, *orch.EXTENSION_STAGES, orch.REGISTER_STAGE}
    assert stages <= set(orch.stage_reports(params))
    (tmp_path / SOURCES_FINGERPRINT).parent.mkdir(parents=True)
    (tmp_path / SOURCES_FINGERPRINT).write_text(json.dumps({"sources": {"mine": {"files": 3, "bytes": 10}}}))
    summary = orch.summarize_stage("sources", params, tmp_path, orch.StageOutcome("sources", False, 0.1))
    assert {"key": "sources.mine.files", "value": 3} in summary.table
