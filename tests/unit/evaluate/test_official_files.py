"""The official VisA-D&R files as released: ``test_data.json`` items ``{"image": "VisA/<class>/...", "anomaly"}`` and
``visa_dr.json`` items ``{"image", "questions", "answers"}``, images opened as ``data_root / image``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from anomaly_ov.cli import app
from anomaly_ov.config import Params, dump_params
from anomaly_ov.evaluate import detection as D
from anomaly_ov.evaluate import reasoning as R

CLASSES = ("candle", "pcb1")


def _official(root, size=24):
    """data_root/VisA/<class>/Data/Images/{Normal,Anomaly}/*.JPG and the two released JSON files under
    data_root/VisA/ (no `file`, `mask`, `category` or `kinds` keys)."""
    rng = np.random.default_rng(0)
    test, dr = [], []
    for cls in CLASSES:
        for i, anomaly in enumerate((False, False, True, True)):
            img = (rng.random((size, size)) * 80).astype(np.uint8)
            if anomaly:
                img[8:14, 8:14] = 240
            rel = f"VisA/{cls}/Data/Images/{'Anomaly' if anomaly else 'Normal'}/{i:03d}.JPG"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.stack([img] * 3, -1)).save(root / rel, format="JPEG")
            test.append({"image": rel, "anomaly": anomaly})
            if anomaly:
                dr.append({"image": rel, "questions": ["Is there any anomaly in the image?", "What is the cause?"],
                           "answers": ["Yes, a bright square scratch.", "Rough handling."]})
    (root / "VisA" / "test_data.json").write_text(json.dumps(test))
    (root / "VisA" / "visa_dr.json").write_text(json.dumps(dr))
    return root / "VisA" / "test_data.json", root / "VisA" / "visa_dr.json"


def test_official_detection_file_resolves_images_under_the_data_root(tmp_path):
    test_file, _ = _official(tmp_path / "data")
    items = D.load_test_items(test_file, data_root=tmp_path / "data")
    assert [it["category"] for it in items] == ["candle"] * 4 + ["pcb1"] * 4
    first = items[0]
    assert first["file"] == str(tmp_path / "data" / "VisA/candle/Data/Images/Normal/000.JPG")
    assert first["mask"] == "" and first["anomaly"] is False
    with pytest.raises(ValueError, match=r"item 0 names its image 'VisA/candle/.*' relative to a data root"):
        D.load_test_items(test_file)  # no data root: say how to give one


def test_official_reasoning_file_is_read_as_released(tmp_path, fake_predictor, word_overlap):
    _, dr_file = _official(tmp_path / "data")
    items = R.load_reasoning_items(dr_file, data_root=tmp_path / "data")
    assert len(items) == 4 and items[0]["category"] == "candle" and items[0]["kinds"] == ["low_level"] * 2
    assert items[0]["file"].endswith("VisA/candle/Data/Images/Anomaly/002.JPG")
    records = R.ask_items(fake_predictor, items[:1], tmp_path)
    assert [c[1] for c in fake_predictor.chats] == [[], [("Is there any anomaly in the image?", records[0]["answer"])]]
    scored = R.score_records(records, word_overlap)
    assert all(r["rouge_l"] is not None and r["sbert"] is not None for r in scored.records)


def test_reasoning_item_without_reference_answers_is_asked_not_scored(tmp_path, fake_predictor, word_overlap):
    (tmp_path / "VisA/pcb1").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "VisA/pcb1/a.png")
    path = tmp_path / "dr.json"
    path.write_text(json.dumps([{"image": "VisA/pcb1/a.png", "questions": ["What is wrong?"]}]))
    items = R.load_reasoning_items(path, data_root=tmp_path)
    result = R.score_records(R.ask_items(fake_predictor, items, tmp_path), word_overlap)
    assert result.records[0]["answer"] and result.records[0]["sbert"] is None and result.records[0]["rouge_l"] is None


@pytest.mark.parametrize("image", ["../outside.png", "/etc/passwd", "VisA/../../outside.png"])
def test_paths_leaving_the_data_root_are_refused_unless_allowed(tmp_path, image):
    root = tmp_path / "data"
    root.mkdir()
    path = tmp_path / "t.json"
    path.write_text(json.dumps([{"image": "VisA/pcb1/ok.png", "anomaly": False}, {"image": image, "anomaly": True},
                                {"image": image, "anomaly": False}]))
    with pytest.raises(ValueError, match=r"2 bad test item\(s\)") as err:
        D.load_test_items(path, data_root=root)
    assert "item 1 image" in str(err.value) and "item 2 image" in str(err.value)  # every bad item, not the first
    assert "allow_external_paths" in str(err.value)
    items = D.load_test_items(path, data_root=root, allow_external=True)
    assert len(items) == 3
    dr = tmp_path / "dr.json"
    dr.write_text(json.dumps([{"image": image, "questions": ["q"], "answers": ["a"]}]))
    with pytest.raises(ValueError, match="leaves the data root"):
        R.load_reasoning_items(dr, data_root=root)


def test_project_benchmark_files_still_read(benchmark):
    workspace, test, dr = benchmark
    items = D.load_test_items(workspace / "bench/test_data.json")
    assert [it["file"] for it in items] == [t["file"] for t in test]
    assert len(R.load_reasoning_items(workspace / "bench/visa_dr.json")) == len(dr)


def test_evaluate_command_runs_the_official_files(tmp_path, monkeypatch, fake_predictor, word_overlap):
    import anomaly_ov.evaluate.run as run

    dump_params(Params(), tmp_path / "params.yaml")
    test_file, dr_file = _official(tmp_path / "data")
    monkeypatch.setattr(run, "load_predictor", lambda path, device="auto": fake_predictor)
    monkeypatch.setattr(R, "SentenceSimilarity", lambda name: word_overlap)
    out = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        ["model", "evaluate", str(tmp_path / "data"), "--bench", str(test_file), "--reasoning", str(dr_file),
         "--model", "m", "--out", str(out), "--workspace", str(tmp_path), "--set", "tracking.enabled=false",
         "--set", "evaluate.resolution=16", "--set", "evaluate.figures_per_kind=0"],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["counts.images"] == 8 and metrics["counts.categories"] == 2
    assert metrics["zero_shot.image_auroc"] == pytest.approx(1.0)
    assert metrics["reasoning.count.items"] == 4


def test_evaluate_stage_reads_the_official_files_from_params(tmp_path, monkeypatch, fake_predictor, word_overlap):
    import anomaly_ov.evaluate.run as run
    from anomaly_ov.stages import StageFailed

    _official(tmp_path / "visa_dr")
    (tmp_path / "models/anomaly_ov").mkdir(parents=True)  # the stage checks the model folder before loading it
    monkeypatch.setattr(run, "load_predictor", lambda path, device="auto": fake_predictor)
    monkeypatch.setattr(R, "SentenceSimilarity", lambda name: word_overlap)
    evaluate = {"resolution": 16, "figures_per_kind": 0, "test_data": "visa_dr/VisA/test_data.json",
                "reasoning_data": "visa_dr/VisA/visa_dr.json", "data_root": "visa_dr"}
    params = Params(evaluate=evaluate, tracking={"enabled": False})
    summary = run.run_evaluate(params, tmp_path)
    assert summary["images"] == 8
    assert json.loads((tmp_path / "reports/metrics.json").read_text())["reasoning.count.items"] == 4
    with pytest.raises(StageFailed, match="relative to a data root"):
        run.run_evaluate(Params(evaluate={**evaluate, "data_root": None}, tracking={"enabled": False}), tmp_path)
