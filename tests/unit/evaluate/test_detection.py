"""Detection protocol: Yes/No parsing, item checks, map/mask resizing, metrics with a fake predictor."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from anomaly_ov.config import Params
from anomaly_ov.evaluate import detection as D


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("Yes.", True), ("yes, there is", True), ("No", False), ("There is no defect", False),
     ("No, there is no defect.", False), ("YES", False), (None, None)],
)
def test_parse_yes_no(answer, expected):
    assert D.parse_yes_no(answer) is expected


def test_test_items_are_checked_and_category_inferred(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps([{"image": "VisA/pcb1/a.png", "anomaly": True, "file": "a.png"}]))
    items = D.load_test_items(path)
    assert items[0]["category"] == "pcb1" and items[0]["mask"] == ""
    path.write_text(json.dumps([{"image": "VisA/pcb1/a.png", "file": "a.png"}]))
    with pytest.raises(ValueError, match=r"t.json: item 0 lacks key\(s\) \['anomaly'\]"):
        D.load_test_items(path)


def test_balanced_subset_keeps_both_labels_per_class():
    items = [{"category": c, "anomaly": a, "i": i} for c in "ab" for a in (False, True) for i in range(5)]
    subset = D.balanced_subset(items, 8)
    assert len(subset) == 8
    assert {(x["category"], x["anomaly"]) for x in subset} == {("a", False), ("a", True), ("b", False), ("b", True)}


def test_mask_resize_binarises_then_thresholds(tmp_path):
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[0:4, 0:4] = 1  # 0/1 masks count as anomalous (> 0)
    Image.fromarray(mask).save(tmp_path / "m.png")
    small = D.load_mask("m.png", 4, tmp_path)
    assert small.dtype == bool and small[:2, :2].all() and not small[2:, :].any()
    assert not D.load_mask("", 4, tmp_path).any()
    amap = D.resize_map(np.full((10, 6), 2.0, dtype=np.float32), 4)
    assert amap.shape == (4, 4) and amap.max() == 1.0
    with pytest.raises(FileNotFoundError, match="missing.png"):
        D.load_mask("missing.png", 4, tmp_path)


def test_detection_metrics_with_fake_predictor(benchmark, fake_predictor):
    workspace, test, _ = benchmark
    cfg = Params().evaluate.model_copy(update={"resolution": 32, "batch_size": 4})
    items = [D.normalise_test_item(t, i) for i, t in enumerate(test)]
    result = D.run_detection(fake_predictor, items, cfg, workspace)
    assert len(result.records) == len(test) and fake_predictor.calls == 3  # 12 images in batches of 4
    overall, per_class = D.detection_metrics(result, cfg)
    # the fake says Yes on every anomaly and on the one normal image with a bright pixel per class:
    # per class TP 3, FP 1, TN 2, FN 0 -> accuracy 5/6, precision 3/4, recall 1, F1 6/7
    assert overall["detection"]["macro_accuracy"] == pytest.approx(5 / 6)
    assert overall["detection"]["macro_precision"] == pytest.approx(0.75)
    assert overall["detection"]["macro_recall"] == pytest.approx(1.0)
    assert overall["detection"]["macro_f1"] == pytest.approx(6 / 7)
    assert per_class["pcb"]["detection.accuracy"] == pytest.approx(5 / 6)
    # scores: anomalies 230/255, normals below 90/255 except one at 250/255 -> AUROC = (3 * 2) / 9 per class
    assert overall["zero_shot"]["image_auroc"] == pytest.approx(6 / 9)
    assert overall["expert"]["accuracy"] == pytest.approx(5 / 6)
    assert overall["zero_shot"]["pixel_auroc"] > 0.95
    assert 0.5 < overall["zero_shot"]["aupro"] <= 1.0
    assert result.exact_pixels
    kinds = {(s.category, s.kind) for s in result.samples}
    assert ("pcb", "TP") in kinds and ("pcb", "FP") in kinds and ("pcb", "FN") not in kinds
    curves = D.curves(result)
    assert {r["category"] for r in curves["roc"]} == {"pcb", "cap"}
    assert curves["pro"] and all(0 <= r["pro"] <= 1 for r in curves["pro"])


def test_pixel_table_limit_keeps_numbers_close(benchmark, fake_predictor):
    workspace, test, _ = benchmark
    items = [D.normalise_test_item(t, i) for i, t in enumerate(test)]
    exact_cfg = Params().evaluate.model_copy(update={"resolution": 32})
    small_cfg = exact_cfg.model_copy(update={"exact_pixel_limit": 64})
    exact = D.detection_metrics(D.run_detection(fake_predictor, items, exact_cfg, workspace), exact_cfg)[0]
    small_result = D.run_detection(fake_predictor, items, small_cfg, workspace)
    assert not small_result.exact_pixels
    small = D.detection_metrics(small_result, small_cfg)[0]
    for key in ("pixel_auroc", "aupro"):
        assert small["zero_shot"][key] == pytest.approx(exact["zero_shot"][key], abs=2e-2)


def test_no_answers_leaves_text_metrics_missing(benchmark, fake_predictor):
    workspace, test, _ = benchmark
    cfg = Params().evaluate.model_copy(update={"resolution": 16, "generate_answers": False})
    items = [D.normalise_test_item(t, i) for i, t in enumerate(test)]
    overall, _ = D.detection_metrics(D.run_detection(fake_predictor, items, cfg, workspace), cfg)
    assert overall["detection"]["macro_f1"] is None
    assert overall["zero_shot"]["image_auroc"] is not None
