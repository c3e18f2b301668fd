"""Metrics against hand-computed values on tiny examples, and the streaming pixel table against exact ones."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_ov.evaluate import metrics as m


def test_image_auroc_hand_computed_and_ties():
    assert m.image_auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # pairs (pos, neg): (0.5, 0.5) tie = 0.5, the other three are won -> 3.5 / 4
    assert m.image_auroc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == pytest.approx(0.875)
    assert m.image_auroc([0.2, 0.3], ["anomaly", "normal"]) == pytest.approx(0.0)


def test_one_label_class_is_missing_not_zero_or_one():
    assert m.image_auroc([0.1, 0.9], [0, 0]) is None
    assert m.image_auroc([0.1, 0.9], [1, 1]) is None
    assert m.f1_max([0.1, 0.9], [0, 0]) == (None, None)
    mean, classes = m.macro_image([0.1, 0.9, 0.2, 0.8], [0, 0, 0, 1], ["a", "a", "b", "b"])
    assert classes["a"]["image_auroc"] is None
    assert classes["b"]["image_auroc"] == pytest.approx(1.0)
    assert mean["image_auroc"] == pytest.approx(1.0)  # mean over the defined classes only
    maps = [np.random.default_rng(0).random((4, 4))]
    assert m.pixel_auroc(maps, [np.zeros((4, 4))]) is None
    assert m.aupro(maps, [np.zeros((4, 4))]) is None
    assert m.mean_of([None, float("nan")]) is None


def test_f1_max_value_and_threshold():
    # t=0.8: P1 R.5 F.667; t=0.4: F.5; t=0.35: P.667 R1 F.8; t=0.1: F.667
    value, threshold = m.f1_max([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert value == pytest.approx(0.8)
    assert threshold == pytest.approx(0.35)


def test_binary_metrics_and_macro():
    out = m.binary_metrics([1, 1, 0, 0, 1], [1, 0, 0, 1, 1])  # TP2 FP1 TN1 FN1
    assert out == pytest.approx({"accuracy": 0.6, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})
    # all-normal class: recall and F1 undefined when nothing is predicted positive
    normal_only = m.binary_metrics([0, 0], [0, 0])
    assert normal_only["accuracy"] == 1.0 and normal_only["recall"] is None and normal_only["f1"] is None
    assert normal_only["precision"] is None
    # positives but never predicted: precision 0, not missing
    assert m.binary_metrics([0, 0], [1, 0])["precision"] == 0.0
    mean, classes = m.macro_binary([1, 0, 1, 1], [1, 0, 0, 1], ["a", "a", "b", "b"])
    assert classes["a"]["accuracy"] == 1.0 and classes["b"]["accuracy"] == 0.5
    assert mean["accuracy"] == pytest.approx(0.75)
    assert mean["f1"] == pytest.approx((1.0 + 2 / 3) / 2)


def test_pixel_auroc_over_all_pixels():
    amap = np.array([[0.9, 0.1], [0.4, 0.3]])
    mask = np.array([[1, 0], [0, 255]])  # masks are binarised with > 0
    # pos {0.9, 0.3}, neg {0.1, 0.4}: 0.9 beats both, 0.3 beats 0.1 -> 3 / 4
    assert m.pixel_auroc([amap], [mask]) == pytest.approx(0.75)
    assert m.pixel_f1_max([amap], [mask])[0] == pytest.approx(m.f1_max(amap.ravel(), mask.ravel() > 0)[0])


def test_aupro_perfect_and_inverted():
    rng = np.random.default_rng(1)
    masks = [np.zeros((16, 16)), np.zeros((16, 16))]
    masks[1][3:7, 4:9] = 1
    masks[1][12:14, 12:15] = 1
    perfect = [mk.astype(float) for mk in masks]
    assert m.aupro(perfect, masks) == pytest.approx(1.0)
    inverted = [1.0 - mk for mk in masks]
    assert m.aupro(inverted, masks) == pytest.approx(0.0, abs=1e-9)
    noisy = [np.clip(mk * 0.5 + rng.random(mk.shape) * 0.6, 0, 1) for mk in masks]
    assert 0.0 < m.aupro(noisy, masks) < 1.0


def test_aupro_weights_components_not_pixels():
    mask = np.zeros((6, 6), dtype=int)
    mask[0:2, 0:2] = 1  # component A: 4 pixels
    mask[5, 5] = 1  # component B: 1 pixel
    amap = np.full((6, 6), 0.5)
    amap[0:2, 0:2] = 0.9
    amap[5, 5] = 0.1
    # (0,0) (0,.5) (1,.5) (1,1): PRO is 0.5 (mean over components), pixel-weighted would be 0.8
    assert m.aupro([amap], [mask]) == pytest.approx(0.5)


def test_aupro_hand_computed_with_interpolation():
    # A: 4 pixels scored .9 .9 .2 .2; B: 1 pixel scored .6; 10 normal pixels: one .7, nine 0
    mask = np.zeros((3, 5), dtype=int)
    mask[0, 0:4] = 1
    mask[2, 4] = 1
    amap = np.zeros((3, 5))
    amap[0, 0:4] = [0.9, 0.9, 0.2, 0.2]
    amap[2, 4] = 0.6
    amap[1, 0] = 0.7
    fpr, pro = m.pro_curve([amap], [mask])
    assert fpr.tolist() == pytest.approx([0, 0, 0.1, 0.1, 0.1, 1.0])
    assert pro.tolist() == pytest.approx([0, 0.25, 0.25, 0.75, 1.0, 1.0])
    # area: 0.1 * 0.25 + 0.2 * 1 = 0.225, / 0.3
    assert m.aupro([amap], [mask]) == pytest.approx(0.75)
    assert m.area_to(np.array([0, 1.0]), np.array([0, 1.0]), 0.3) == pytest.approx(0.045)


def test_eight_connectivity():
    mask = np.zeros((4, 4), dtype=int)
    mask[0, 0] = mask[1, 1] = 1  # diagonal neighbours: one component
    amap = np.zeros((4, 4))
    amap[0, 0] = 1.0
    # one component half found at the top threshold: PRO 0.5 at FPR 0
    fpr, pro = m.pro_curve([amap], [mask])
    assert pro[1] == pytest.approx(0.5)


def _random_set(seed: int, n: int = 30, size: int = 96):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for i in range(n):
        mask = np.zeros((size, size), dtype=np.uint8)
        if i % 3:
            for _ in range(rng.integers(1, 4)):
                y, x = rng.integers(0, size - 8, 2)
                h, w = rng.integers(2, 10, 2)
                mask[y : y + h, x : x + w] = 255
        smooth = ndimage.gaussian_filter(mask.astype(np.float32) / 255, 2)
        amap = np.clip(0.6 * smooth + 0.5 * rng.random((size, size)), 0, 1).astype(np.float32)
        maps.append(amap)
        masks.append(mask)
    return maps, masks


def _saturated_set(seed: int, n: int = 12, grid: int = 9, size: int = 36):
    """Maps as the expert makes them at temperature 100: a 2-way softmax of 100 x cosine gaps on a coarse grid,
    upsampled bilinearly; normal pixels mostly below 1e-3, defects spread from 1e-3 to 1 and overlapping them."""
    from PIL import Image
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for i in range(n):
        mask = np.zeros((size, size), dtype=bool)
        gap = rng.normal(-0.11, 0.025, (grid, grid))
        if i % 3:
            y, x = rng.integers(0, grid - 3, 2)
            gap[y : y + 3, x : x + 2] += rng.uniform(0.02, 0.12)
            mask[y * 4 : (y + 3) * 4, x * 4 : (x + 2) * 4] = True
        coarse = (1.0 / (1.0 + np.exp(-100.0 * gap))).astype(np.float32)
        amap = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR), dtype=np.float32)
        maps.append(ndimage.gaussian_filter(amap, 0.5).astype(np.float32))
        masks.append(mask)
    return maps, masks


def _brute_force_aupro(maps, masks, limit=0.3):
    """AUPRO by its definition: PRO and FPR at every distinct score, integrated to FPR ``limit``."""
    from scipy import ndimage

    scores = np.concatenate([a.ravel() for a in maps])
    normal = np.concatenate([~k.ravel() for k in masks])
    values, ids, n = [], [], 0
    for amap, mask in zip(maps, masks, strict=True):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        values.append(amap[labelled > 0])
        ids.append(labelled[labelled > 0] - 1 + n)
        n += count
    values, ids = np.concatenate(values), np.concatenate(ids)
    sizes = np.bincount(ids, minlength=n)
    negatives = np.sort(scores[normal])
    fpr, pro = [0.0], [0.0]
    for t in np.unique(scores)[::-1]:  # every distinct threshold, highest first
        fpr.append(1.0 - np.searchsorted(negatives, t, side="left") / len(negatives))
        pro.append(float(np.mean(np.bincount(ids, weights=values >= t, minlength=n) / sizes)))
    return m.area_to(np.array(fpr), np.array(pro), limit) / limit


@pytest.mark.parametrize("seed", [0, 1])
def test_score_table_is_exact_on_saturated_maps(seed):
    from sklearn.metrics import roc_auc_score

    maps, masks = _saturated_set(seed)
    scores = np.concatenate([a.ravel() for a in maps])
    labels = np.concatenate([k.ravel() for k in masks])
    assert np.mean(scores[~labels] < 1e-3) > 0.8  # saturated: most normal pixels below 1e-3
    exact_auroc = roc_auc_score(labels, scores)
    # equal-width bins (what the evaluation used above 4M pixels) put most pixels in the lowest bin and miss it
    binned_auroc = roc_auc_score(labels, np.minimum(np.floor(scores.astype(np.float64) * 1000), 999))
    assert abs(binned_auroc - exact_auroc) > 0.01
    table = m.PixelScoreTable(max_entries=4_000_000)
    for amap, mask in zip(maps, masks, strict=True):
        table.add(amap, mask)
    assert table.exact and table.images == len(maps)
    assert table.pixel_auroc() == pytest.approx(exact_auroc, abs=1e-12)
    assert table.aupro() == pytest.approx(_brute_force_aupro(maps, masks), abs=1e-12)
    assert table.aupro() == pytest.approx(m.aupro(maps, masks), abs=1e-12)
    assert table.pixel_f1_max() == pytest.approx(m.pixel_f1_max(maps, masks), abs=1e-12)


def test_score_table_stays_bounded_and_close_when_scores_outnumber_it():
    maps, masks = _saturated_set(2)
    distinct = len(np.unique(np.concatenate([a.ravel() for a in maps])))
    table = m.PixelScoreTable(max_entries=distinct // 8)
    for amap, mask in zip(maps, masks, strict=True):
        table.add(amap, mask)
        assert len(table.keys) <= table.max_entries
    assert not table.exact and table.shift > 0
    assert table.pixel_auroc() == pytest.approx(m.pixel_auroc(maps, masks), abs=2e-3)
    assert table.aupro() == pytest.approx(m.aupro(maps, masks), abs=2e-3)


def test_score_table_ties_signs_and_errors():
    amap = np.array([[0.9, 0.1], [0.4, 0.3]], dtype=np.float32)
    mask = np.array([[1, 0], [0, 1]])
    table = m.PixelScoreTable()
    table.add(amap, mask)
    table.add(amap, mask)
    assert table.images == 2 and table.pixel_auroc() == pytest.approx(0.75)
    assert table.pixel_f1_max() == pytest.approx(m.pixel_f1_max([amap, amap], [mask, mask]))
    signed = m.PixelScoreTable()
    signed.add(np.array([[-2.0, -0.0], [0.0, 1e-30]], dtype=np.float32), np.array([[0, 0], [1, 1]]))
    assert signed.pixel_auroc() == pytest.approx(0.875)  # -0.0 ties 0.0; -2 < 0 < 1e-30
    assert list(signed.thresholds) == [pytest.approx(1e-30), 0.0, -2.0]
    with pytest.raises(ValueError, match="finite"):
        table.add(np.full((2, 2), np.nan, dtype=np.float32), mask)
    assert m.PixelScoreTable().pixel_auroc() is None
