"""The `validate` stage (reports written, StageFailed on critical) and `anomaly-ov data validate PATH` exit codes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from anomaly_ov.data.manifest import from_rows, write_manifest
from anomaly_ov.stages import StageFailed
from anomaly_ov.validate.report import Check, ValidationReport, read_report, write_report
from anomaly_ov.validate.run import run_validate


def _workspace(tmp_path, kit, corrupt: bool = False):
    """A workspace with 3 normals and 1 anomaly under ds/widget and their manifest at data/manifest.parquet."""
    rows = []
    for i in range(3):
        kit.noise_image(tmp_path / "ds" / "widget" / f"good_{i}.png", i)
        rows.append(kit.row(f"widget/good_{i}.png", "ds"))
    kit.noise_image(tmp_path / "ds" / "widget" / "bad.png", 9)
    kit.mask_image(tmp_path / "ds" / "widget" / "bad_mask.png")
    rows.append(kit.row("widget/bad.png", "ds", label="anomaly", mask_path="widget/bad_mask.png"))
    if corrupt:
        (tmp_path / "ds" / "widget" / "good_1.png").write_bytes(b"garbage")
    write_manifest(from_rows(rows), tmp_path / "data" / "manifest.parquet")
    return tmp_path


# ------------------------------------------------------------------------------------------------ stage
def test_stage_writes_both_reports_and_warnings_do_not_stop_it(tmp_path, kit):
    workspace = _workspace(tmp_path, kit)
    kit.noise_image(workspace / "ds" / "widget" / "good_2.png", 2, mode="L")  # grey: a warning only
    summary = run_validate(kit.toy_params(), workspace)
    assert summary["ok"] is True and summary["critical_failed"] == 0 and summary["warning_failed"] == 1
    assert summary["rows"] == 4 and summary["files_checked"] == 4 and summary["seconds"] > 0
    data = json.loads((workspace / "reports" / "validation.json").read_text())
    assert data["ok"] is True and len(data["checks"]) == summary["checks"]
    assert not read_report(workspace / "reports" / "validation.json").check("image_mode").passed
    markdown = (workspace / "reports" / "validation.md").read_text()
    assert markdown.startswith("# Data validation: PASSED") and "widget/good_2.png" in markdown


def test_stage_raises_stage_failed_after_writing_the_report(tmp_path, kit):
    workspace = _workspace(tmp_path, kit, corrupt=True)
    with pytest.raises(StageFailed) as caught:
        run_validate(kit.toy_params(), workspace)
    assert caught.value.stage == "validate"
    assert "image_readable" in str(caught.value) and "widget/good_1.png" in str(caught.value)
    assert caught.value.summary["critical_failed"] >= 1
    report = read_report(workspace / "reports" / "validation.json")
    assert not report.ok and not report.check("image_readable").passed
    assert "widget/good_1.png" in (workspace / "reports" / "validation.md").read_text()


def test_stage_reports_a_missing_manifest(tmp_path, kit):
    with pytest.raises(StageFailed, match="manifest_readable"):
        run_validate(kit.toy_params(), tmp_path)
    report = read_report(tmp_path / "reports" / "validation.json")
    assert "run `anomaly-ov stage prepare` first" in report.check("manifest_readable").message


# ------------------------------------------------------------------------------------------------ report
def test_report_round_trips_and_renders_markdown(tmp_path):
    checks = [
        Check("a_ok", "critical", True, "fine"),
        Check.from_failures("b_bad", "critical", [{"file": "x/1.png", "row": 1}, {"file": "x/2.png", "row": 2}],
                            ok_message="", fail_message="{n} broken: {examples}", max_examples=1),
        Check("c_warn", "warning", False, "look | here", ["y.png"]),
    ]
    report = ValidationReport.build(checks, subject="m.parquet", rows=2, extra={"files_checked": 2})
    assert report.check("b_bad").n_failing == 2 and len(report.check("b_bad").failing) == 1
    assert report.check("b_bad").message == "2 broken: x/1.png"
    assert report.summary["critical_failed"] == 1 and report.summary["warning_failed"] == 1
    path = write_report(report, tmp_path / "r" / "validation.json")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["validation.json", "validation.md"]
    again = read_report(path)
    assert again.to_dict() == report.to_dict()
    markdown = (tmp_path / "r" / "validation.md").read_text()
    assert "FAILED" in markdown and "`b_bad` (2 failing)" in markdown and "first 1 of 2" in markdown
    assert "look \\| here" in markdown
    with pytest.raises(ValueError, match="severity"):
        Check("bad", "fatal", False, "")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ CLI
@pytest.fixture
def cli(tmp_path, monkeypatch):
    from anomaly_ov.cli import app

    monkeypatch.chdir(tmp_path)  # no params.yaml here: defaults
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["data", "validate", *args])


def test_cli_clean_dataset_exits_zero(tmp_path, kit, cli):
    kit.make_mvtec(tmp_path / "ds")
    result = cli("ds", "--format", "mvtec", "--report", "out/report.json")
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output
    assert json.loads((tmp_path / "out" / "report.json").read_text())["ok"] is True
    assert (tmp_path / "out" / "report.md").exists()


def test_cli_json_summary_is_the_only_stdout(tmp_path, kit, cli):
    kit.make_mvtec(tmp_path / "ds")
    (tmp_path / "ds" / "widget" / "ground_truth" / "crack" / "001_mask.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    result = cli("ds", "--format", "mvtec", "--json")
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["ok"] is False and summary["report"].endswith("validation.json")
    failed = {f["check"]: f for f in summary["failed"]}
    assert failed["mask_readable"]["severity"] == "critical" and failed["mask_readable"]["failing"] == 1
    assert "001_mask.png" in json.dumps(failed["mask_readable"]["examples"])


def test_cli_critical_failure_exits_one(tmp_path, kit, cli):
    kit.make_mvtec(tmp_path / "ds")
    (tmp_path / "ds" / "widget" / "ground_truth" / "crack" / "001_mask.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    result = cli("ds", "--format", "mvtec")
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output and "mask_readable" in result.output
    report = read_report(tmp_path / "reports" / "validation.json")
    assert "001_mask.png" in report.check("mask_readable").message


def test_cli_train_role_needs_no_anomaly(tmp_path, kit, cli):
    for i in range(2):
        kit.noise_image(tmp_path / "ds" / "widget" / "train" / "good" / f"{i}.png", i)
    result = cli("ds", "--format", "mvtec", "--role", "train", "--no-files", "--name", "normals")
    assert result.exit_code == 0, result.output  # normals only: fine for training, not for evaluation
    report = read_report(tmp_path / "reports" / "validation.json")
    assert report.check("eval_category_has_anomaly").passed and report.summary["files_checked"] == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["missing_dir", "--format", "mvtec"], "cannot read as 'mvtec'"),
     (["ds", "--format", "nope"], "'nope' is not one of"),  # the choices come from the one list of formats
     (["ds", "--format", "mvtec", "--role", "test"], "'test' is not one of")],
)
def test_cli_unusable_input_exits_two_without_traceback(tmp_path, kit, cli, args, needle):
    kit.make_mvtec(tmp_path / "ds")
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output
