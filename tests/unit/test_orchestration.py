"""anomaly_ov.orchestration without Prefect: commands, environment, DVC output parsing, failure reasons, summaries."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from anomaly_ov import orchestration as orch
from anomaly_ov.config import load_params
from anomaly_ov.errors import StageFailed
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


def _result(returncode: int = 0, timed_out: bool = False, lines: tuple[str, ...] = ()) -> orch.CommandResult:
    return orch.CommandResult(returncode, list(lines), 1.5, timed_out)


def _record(status: str, **fields) -> dict:
    from anomaly_ov.stages import new_record

    return {**new_record("prepare"), "status": status, **fields}


def test_no_record_of_this_invocation_and_exit_0_is_a_skip(tmp_path):
    outcome = orch.interpret_run("evaluate", tmp_path, _result(0), None)
    assert outcome.skipped and outcome.summary == {}
    # the English of DVC's output plays no part: a "Running stage" line changes nothing
    assert orch.interpret_run("evaluate", tmp_path, _result(0, lines=("Running stage 'evaluate':",)), None).skipped


def test_a_succeeded_record_gives_the_summary(tmp_path):
    record = _record("succeeded", exit_code=0, summary={"rows": 3, "nested": {"a": 1}})
    outcome = orch.interpret_run("prepare", tmp_path, _result(0), record)
    assert not outcome.skipped and outcome.summary == {"rows": 3, "nested": {"a": 1}}


def test_a_failed_record_gives_the_typed_reason_and_retryability(tmp_path):
    record = _record("failed", exit_code=3, error_kind="LayoutError", message="2 unusable file(s)", retryable=False,
                     failing=["ds/a.png: not an image", "ds/b.png: truncated"])
    with pytest.raises(orch.StageError) as info:
        orch.interpret_run("prepare", tmp_path, _result(1, lines=("Traceback (most recent call last):",)), record)
    error = info.value
    assert (error.kind, error.retryable, error.stage_exit_code) == ("LayoutError", False, 3)
    assert error.failing == ["ds/a.png: not an image", "ds/b.png: truncated"]
    assert error.reason == "2 unusable file(s)" and isinstance(error, StageFailed)
    transient = _record("failed", exit_code=5, error_kind="JudgeError", message="endpoint down", retryable=True)
    with pytest.raises(orch.StageError) as info:
        orch.interpret_run("prepare", tmp_path, _result(5), transient)
    assert info.value.retryable and info.value.kind == "JudgeError"


def test_a_record_left_running_means_the_process_died_and_is_retryable(tmp_path):
    with pytest.raises(orch.StageError) as info:
        orch.interpret_run("prepare", tmp_path, _result(255, lines=("Killed",)), _record("running"))
    assert info.value.kind == "Killed" and info.value.retryable and "Killed" in info.value.reason


def test_dvc_failing_around_the_stage_is_not_retryable_and_names_the_missing_output(tmp_path):
    deleted = ["changed deps: data/sources.fingerprint.json (deleted)"]
    with pytest.raises(orch.StageError) as info:
        orch.interpret_run("prepare", tmp_path, _result(1), None, deleted)
    assert info.value.kind == "DvcError" and not info.value.retryable
    assert "before the stage started" in info.value.reason and "fingerprint.json (deleted)" in info.value.reason
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.parquet").write_bytes(b"x")
    for out in ("data/raw/medical_train", "data/raw/3d_train"):  # prepare's other declared outputs are there
        (tmp_path / out).mkdir(parents=True)
    with pytest.raises(orch.StageError) as info:  # the stage said it succeeded; DVC found an output missing
        orch.interpret_run("prepare", tmp_path, _result(1), _record("succeeded", exit_code=0))
    assert info.value.failing == ["data/raw/synthetic"] and info.value.kind == "DvcError"


def test_a_timeout_is_retryable(tmp_path):
    with pytest.raises(orch.StageTimeout) as info:
        orch.interpret_run("evaluate", tmp_path, _result(-15, timed_out=True), None, timeout_s=2)
    assert info.value.retryable and "timed out after 2 s" in info.value.reason and info.value.exit_code == 5


def test_the_orchestration_reads_no_dvc_or_cli_text():
    source = Path(orch.__file__).read_text()
    for needle in ("didn't change", "Running stage", "parse_summary", "_SKIP_RE", "_STAGE_FAILED_RE"):
        assert needle not in source


def test_failure_markdown_says_kind_files_and_attempts():
    error = orch.StageError("prepare", "2 unusable file(s)", retryable=False, kind="LayoutError",
                            failing=["ds/a.png: not an image"], exit_code=3)
    text = orch.failure_markdown(error, attempt=1, attempts=3, will_retry=False)
    assert "kind: **LayoutError**" in text and "| ds/a.png: not an image |" in text and "attempt: 1 of 3" in text
    assert "gives the same result every time" in text
    crash = orch.StageError("train_expert", "killed", retryable=True, kind="Killed")
    assert "attempt 1 of 2 failed, Prefect retries it" in orch.failure_markdown(crash, 1, 2, will_retry=True)


def _dvc_repo(root: Path, dvc_yaml: str) -> Path:
    import subprocess

    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=root, check=True)
    (root / "dvc.yaml").write_text(dvc_yaml)
    return root


def test_dvc_status_reasons_come_from_dvcs_api(tmp_path):
    _dvc_repo(tmp_path, "stages:\n  a:\n    cmd: cp in.txt out.txt\n    deps: [in.txt]\n    outs: [out.txt]\n")
    (tmp_path / "in.txt").write_text("1")
    assert orch.dvc_status("a", tmp_path) == ["changed deps: in.txt (modified)", "changed outs: out.txt (deleted)"]


def test_an_up_to_date_stage_is_skipped_without_starting_dvc_and_a_stale_one_says_why_it_runs(tmp_path, monkeypatch):
    # the stage copies in.txt and records its run as `anomaly-ov stage` does (status + this invocation's id)
    (tmp_path / "stage.py").write_text(
        "import os, shutil, sys\nsys.path.insert(0, os.environ['REPO'])\nfrom anomaly_ov.stages import new_record, "
        "result_path\nfrom anomaly_ov.io import atomic_write_json\nshutil.copy('in.txt', 'out.txt')\n"
        "atomic_write_json(result_path('.', 'prepare'), {**new_record('prepare'), 'status': 'succeeded'})\n")
    monkeypatch.setenv("REPO", str(Path(orch.__file__).parents[1]))
    _dvc_repo(tmp_path, "stages:\n  prepare:\n    cmd: python stage.py\n    deps: [in.txt, stage.py]\n"
                        "    outs: [out.txt]\n")
    (tmp_path / "in.txt").write_text("1")
    seen: list[str] = []
    first = orch.run_dvc_stage("prepare", tmp_path, on_line=seen.append)
    assert not first.skipped and (tmp_path / "out.txt").read_text() == "1", seen
    assert seen[0] == "DVC status: changed deps: in.txt (modified); changed deps: stage.py (modified); changed outs: " \
                      "out.txt (deleted)"

    def no_process(*args, **kwargs):
        raise AssertionError("dvc repro started")

    monkeypatch.setattr(orch, "run_command", no_process)
    again = orch.run_dvc_stage("prepare", tmp_path, on_line=seen.append)
    assert again.skipped and again.returncode == 0
    (tmp_path / "in.txt").write_text("2")  # stale again: dvc repro must run
    with pytest.raises(AssertionError, match="dvc repro started"):
        orch.run_dvc_stage("prepare", tmp_path)
    (tmp_path / "in.txt").write_text("1")  # up to date, but --force never asks DVC's status
    with pytest.raises(AssertionError, match="dvc repro started"):
        orch.run_dvc_stage("prepare", tmp_path, force=True)


def test_dvc_failing_before_the_stage_starts_is_explained_by_its_status(tmp_path):
    _dvc_repo(tmp_path, "stages:\n  prepare:\n    cmd: touch out.txt\n    deps: [missing.txt]\n"
                        "    outs: [out.txt]\n")
    with pytest.raises(orch.StageError) as info:
        orch.run_dvc_stage("prepare", tmp_path)
    assert info.value.kind == "DvcError" and not info.value.retryable
    assert "changed deps: missing.txt (deleted)" in info.value.reason


def _validation_report(path: Path, ok: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    checks = [
        {"name": "files_exist", "severity": "critical", "passed": ok, "message": "3 image files missing: a.png",
         "n_failing": 0 if ok else 3},
        {"name": "sizes", "severity": "warning", "passed": False, "message": "2 small images", "n_failing": 2},
    ]
    path.write_text(json.dumps({"ok": ok, "summary": {"checks": 2, "failed": 2 - ok}, "checks": checks}))



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


@pytest.mark.parametrize(("raised", "status"), [(None, "FINISHED"), (RuntimeError("disk full"), "FAILED"),
                                                (KeyboardInterrupt(), "KILLED")])
def test_the_flow_run_closes_with_how_its_block_ended(tmp_path, mlflow_store, raised, status):
    """A real MLflow store: the stages appended inside the block are logged, and the run never stays RUNNING."""
    from mlflow import MlflowClient

    mlflow_store(tmp_path)
    params = load_params(None, [f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "tracking.experiment=t"])
    parent = orch.start_parent_run(params, tmp_path, "pipeline")
    assert parent is not None
    outcomes: list[orch.StageOutcome] = []
    expected = pytest.raises(type(raised)) if raised else contextlib.nullcontext()
    with expected, orch.closing_parent_run(parent, params, tmp_path, outcomes):
        outcomes.append(orch.StageOutcome(stage="prepare", skipped=False, seconds=1.5, attempts=1))
        if raised:
            raise raised
    run = MlflowClient(parent.tracking_uri).get_run(parent.run_id)
    assert run.info.status == status
    assert run.data.tags["outcome"] == status.lower()
    assert run.data.metrics["stage.prepare.seconds"] == 1.5
    assert run.data.tags.get("error") == ("disk full" if status == "FAILED" else
                                          "KeyboardInterrupt" if status == "KILLED" else None)
