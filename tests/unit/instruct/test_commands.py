"""`anomaly-ov instruct check` / `instruct preview`: exit codes and output."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from anomaly_ov.cli import app
from anomaly_ov.config import dump_params
from anomaly_ov.instruct.synthesize import synthesize_records

runner = CliRunner()


def test_instruct_check_exit_codes(workspace):
    ws, frame, params = workspace
    dump_params(params, ws / "params.yaml")
    records = synthesize_records(frame[frame.role == "train"], params, ws)
    good = ws / "good.json"
    good.write_text(json.dumps(records))
    result = runner.invoke(app, ["instruct", "check", str(good), "-w", str(ws), "--no-gx"])
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output and (ws / "reports/instruct_check.md").exists()
    records[0]["conversations"][1]["value"] = ""
    bad = ws / "bad.json"
    bad.write_text(json.dumps(records))
    result = runner.invoke(app, ["instruct", "check", str(bad), "-w", str(ws), "--no-gx"])
    assert result.exit_code == 1 and "answers_not_empty" in result.output
    result = runner.invoke(app, ["instruct", "check", str(ws / "missing.json"), "-w", str(ws), "--no-gx"])
    assert result.exit_code == 3 and "missing.json: file not found" in result.output


def test_instruct_preview(workspace):
    ws, frame, params = workspace
    dump_params(params, ws / "params.yaml")
    records = synthesize_records(frame[frame.role == "train"], params, ws)
    (ws / "data/instruct").mkdir(parents=True)
    (ws / "data/instruct/train.json").write_text(json.dumps(records))
    result = runner.invoke(app, ["instruct", "preview", "-w", str(ws), "-n", "3", "--label", "anomaly"])
    assert result.exit_code == 0, result.output
    assert result.output.count("[anomaly/") == 3 and "Q: <image>" in result.output
