"""The synthesize stage end to end on the hand-made workspace: outputs, report, and the critical-failure stop."""

from __future__ import annotations

import json

import pytest

from anomaly_ov.config import params_from_dict
from anomaly_ov.data.manifest import write_manifest
from anomaly_ov.instruct.run import run_synthesize
from anomaly_ov.stages import StageFailed


def test_stage_writes_all_outputs(workspace):
    ws, frame, _ = workspace
    write_manifest(frame, ws / "data/manifest.parquet")
    params = params_from_dict({"instruct": {"red_boxes": True, "seed": 1}})
    summary = run_synthesize(params, ws)
    assert summary["validation_ok"] and summary["records"] > 0
    records = json.loads((ws / "data/instruct/train.json").read_text())
    assert len(records) == summary["records"]
    assert all(r["label"] in ("normal", "anomaly") for r in records)
    assert {r["category"] for r in records} == {"tile", "pill", "cylinder"}  # role == train only
    boxed = [r["red_box"] for r in records if r.get("red_box")]
    assert boxed and all(b.startswith("data/instruct/red_boxes/") and (ws / b).exists() for b in boxed)
    report = json.loads((ws / "reports/instruct.json").read_text())
    for key in ("by_kind", "by_category", "by_label", "distinct_answer_ratio", "rewriter", "validation", "benchmark"):
        assert key in report
    assert report["rewriter"]["enabled"] is False
    assert report["benchmark"]["categories"] == ["pcb"]
    assert json.loads((ws / "reports/instruct_validation.json").read_text())["ok"] is True
    assert (ws / "reports/instruct_validation.md").read_text().startswith("# Instruction-set validation: PASSED")
    assert (ws / "data/bench/test_data.json").exists() and (ws / "data/bench/visa_dr.json").exists()


def test_critical_validation_failure_stops_and_keeps_previous_output(workspace):
    ws, frame, _ = workspace
    write_manifest(frame, ws / "data/manifest.parquet")
    previous = ws / "data/instruct/train.json"
    previous.parent.mkdir(parents=True)
    previous.write_text("[]")
    params = params_from_dict({"instruct": {"max_answer_chars": 16}})
    with pytest.raises(StageFailed, match="answer_length"):
        run_synthesize(params, ws)
    assert previous.read_text() == "[]"
    report = json.loads((ws / "reports/instruct_validation.json").read_text())
    assert report["ok"] is False


def test_no_training_rows_is_a_clear_failure(workspace):
    ws, frame, _ = workspace
    write_manifest(frame[frame.role == "eval"], ws / "data/manifest.parquet")
    with pytest.raises(StageFailed, match="role == 'train'"):
        run_synthesize(params_from_dict({}), ws)


def test_unreachable_rewriter_never_crashes_the_stage(workspace):
    ws, frame, _ = workspace
    write_manifest(frame, ws / "data/manifest.parquet")
    params = params_from_dict({"instruct": {"rewriter": {"enabled": True, "base_url": "http://127.0.0.1:9/v1",
                                                         "model": "none", "timeout_s": 2, "max_records": 3}}})
    summary = run_synthesize(params, ws)
    report = json.loads((ws / "reports/instruct.json").read_text())
    rewriter = report["rewriter"]
    assert rewriter["enabled"] and rewriter["attempted"] >= 1 and rewriter["succeeded"] == 0
    assert rewriter["failed"] == rewriter["attempted"] == summary["rewriter_failed"]
    assert summary["validation_ok"]
