"""benchmarks/normal_parts.py: the AUROC of the anomalies against the normals with and without a part."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
_SPEC = importlib.util.spec_from_file_location("normal_parts", REPO / "benchmarks/normal_parts.py")
normal_parts = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(normal_parts)


def test_part_table_groups_the_normals_and_bounds_the_category():
    # anomalies 0.6 / 0.8; normals with a chip 0.7 / 0.9 (ranked with the anomalies), without 0.1 / 0.2
    scores = [0.6, 0.8, 0.7, 0.9, 0.1, 0.2]
    labels = [1, 1, 0, 0, 0, 0]
    parts = [{"chips": 1}, {"chips": 0}, {"chips": 1}, {"chips": 1}, {"chips": 0}, {"chips": 0}]
    entry = normal_parts.part_table(scores, labels, parts)["chips"]
    assert entry["with"] == {"normals": 2, "auroc": pytest.approx(0.25), "mean_score": pytest.approx(0.8)}
    assert entry["without"] == {"normals": 2, "auroc": pytest.approx(1.0), "mean_score": pytest.approx(0.15)}
    assert entry["all"] == pytest.approx(5 / 8)
    assert entry["ceiling"] == pytest.approx((2 * 1.0 + 2 * 0.25) / 4)


def test_render_parts_reads_the_generators_draw_of_a_named_image():
    from anomaly_ov.data.synthetic import CATEGORIES, image_rng

    name = "pcb/Data/Images/Normal/0042.JPG"  # with 40 train normals: the third test normal
    expected = CATEGORIES["pcb"].render(image_rng(7, "pcb", "test_good", 2), 64).normal_parts
    assert normal_parts.render_parts("pcb", name, seed=7, size=64, train_normals=40) == expected
    assert set(expected) == {"chips"}


def test_draw_rows_writes_unseen_images_of_a_family_with_their_parts(tmp_path):
    import numpy as np
    from PIL import Image

    from anomaly_ov.config import load_params
    from anomaly_ov.data.synthetic import MOUNTED_KINDS, make_sample

    params = load_params(REPO / "params.yaml", ["data.synthetic.image_size=64"])
    rows, parts = normal_parts.draw_rows("metal", 3, params, tmp_path)
    assert rows["label"].tolist() == ["normal", "anomaly"] * 3
    assert all(set(p) == set(MOUNTED_KINDS) for p in parts)
    first = np.asarray(Image.open(tmp_path / rows["image_path"][0]))
    drawn = make_sample("metal", 64, params.seed, "test_good", normal_parts.DRAW_OFFSET)[1]
    assert np.array_equal(first, drawn)  # the image the generator draws at that index, saved losslessly
    anomalies = rows[rows["label"] == "anomaly"]
    assert all((tmp_path / m).is_file() for m in anomalies["mask_path"]) and rows["root"].nunique() == 1
    # the rows are a manifest stage 1's dataset reads, masks included
    from anomaly_ov.data.loaders import ExpertDataset
    from anomaly_ov.train.expert import stage_preprocessor

    item = ExpertDataset(rows, tmp_path, stage_preprocessor(params), 16, 64)[1]
    assert item["label"] == 1 and item["mask"].sum() > 0
