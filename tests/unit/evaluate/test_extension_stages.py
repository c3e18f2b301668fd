"""extend_medical / extend_3d with a fake predictor: files, flat report keys, object aggregation, figures."""

from __future__ import annotations

import json

import pytest

from anomaly_ov.config import load_params
from anomaly_ov.evaluate.extensions import object_metrics, run_extend_3d, run_extend_medical

SMALL = [
    "tracking.enabled=false", "evaluate.max_reasoning_items=3", "evaluate.figures_per_kind=0",
    "extensions.medical.image_size=48", "extensions.medical.normal_per_modality=2",
    "extensions.medical.anomaly_per_modality=2", "extensions.threed.image_size=48", "extensions.threed.views=3",
    "extensions.threed.shapes=[box]", "extensions.threed.normal_per_shape=2", "extensions.threed.anomaly_per_shape=2",
    "extensions.threed.points_per_object=1500",
]


@pytest.mark.slow
def test_medical_stage_writes_report_bench_and_figures(tmp_path, fake_predictor, word_overlap):
    params = load_params(None, SMALL)
    summary = run_extend_medical(params, tmp_path, predictor=fake_predictor, similarity=word_overlap)
    report = json.loads((tmp_path / "reports/extensions/medical.json").read_text())
    assert all(not isinstance(v, dict) for v in report.values())  # flat keys
    assert report["data.images"] == 2 * 6 and report["counts.images"] == 2 * 4  # benchmark = held-out split
    for modality in ("brain_mri", "liver_ct"):
        assert f"per_class.{modality}.image_auroc" in report
        assert f"per_class.{modality}.pixel_auroc" in report
    assert report["reasoning.count.items"] == 3 and report["reasoning.low_level.rouge_l"] is not None
    assert summary["seconds.total"] == report["seconds.total"]
    ext = tmp_path / "data/extensions/medical"
    assert (ext / "instruct.json").exists() and (ext / "bench/test_data.json").exists()
    assert (ext / "eval/metrics.json").exists() and (ext / "manifest.parquet").exists()
    figures = sorted(p.name for p in (tmp_path / "reports/extensions/figures/medical").iterdir())
    assert figures == ["brain_mri_slices.png", "liver_ct_slices.png"]
    records = json.loads((ext / "instruct.json").read_text())
    assert {r["modality"] for r in records} == {"medical"}


@pytest.mark.slow
def test_3d_stage_views_objects_and_multiview_chat(tmp_path, fake_predictor, word_overlap):
    params = load_params(None, SMALL)
    run_extend_3d(params, tmp_path, predictor=fake_predictor, similarity=word_overlap)
    report = json.loads((tmp_path / "reports/extensions/3d.json").read_text())
    assert report["data.views"] == (2 + 2 + 2) * 3 and report["data.objects"] == 6
    assert report["object.count"] == 4  # held-out objects (2 normal + 2 anomalous)
    assert "view.zero_shot.image_auroc" in report and "view.zero_shot.pixel_auroc" in report
    assert {"object.max.image_auroc", "object.mean.image_auroc", "object.detection.macro_f1"} <= set(report)
    # Every detection / reasoning conversation carried all three views of its object.
    assert fake_predictor.chats and {n for n, _, _ in fake_predictor.chats} == {3}
    objects = json.loads((tmp_path / "data/extensions/3d/objects.json").read_text())
    assert all(len(o["views"]) == 3 for o in objects)
    assert all(o["score_max"] >= o["score_mean"] for o in objects)
    assert (tmp_path / "reports/extensions/figures/3d/box_view_ring.png").exists()
    records = json.loads((tmp_path / "data/extensions/3d/instruct.json").read_text())
    assert any(isinstance(r["image"], list) and len(r["image"]) == 3 for r in records)


def test_object_metrics_by_hand():
    objects = [
        {"category": "c", "anomaly": True, "score_max": 0.9, "score_mean": 0.3, "parsed": "yes"},
        {"category": "c", "anomaly": True, "score_max": 0.8, "score_mean": 0.6, "parsed": "no"},
        {"category": "c", "anomaly": False, "score_max": 0.7, "score_mean": 0.4, "parsed": "no"},
        {"category": "c", "anomaly": False, "score_max": 0.1, "score_mean": 0.1, "parsed": ""},
    ]
    flat = object_metrics(objects, threshold=0.5)
    assert flat["object.max.image_auroc"] == 1.0  # both anomalies above both normals
    assert flat["object.mean.image_auroc"] == 0.75  # pairs: (0.3 vs 0.4) lost, other three won
    assert flat["object.detection.macro_accuracy"] == pytest.approx(2 / 3)  # 3 answered, 2 right
    assert flat["object.answered"] == 3


def test_no_data_and_no_model_stop_the_stage(tmp_path):
    from anomaly_ov.stages import StageFailed

    off = load_params(None, [*SMALL, "extensions.medical.enabled=false"])
    with pytest.raises(StageFailed, match="no medical data"):
        run_extend_medical(off, tmp_path)
    with pytest.raises(StageFailed, match="trained model not found"):
        run_extend_medical(load_params(None, SMALL), tmp_path)
