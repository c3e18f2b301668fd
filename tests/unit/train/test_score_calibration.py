"""The calibrated_fusion score's fit on stage 1's held-out rows: the standardisation, the logistic and its refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomaly_ov.train.score_calibration import CalibrationError, fit_score_calibration


def _held_out(seed: int = 0, normal: int = 60, anomalous: int = 40):
    """Logits and self-similarities of a held-out set on which each of the two ranks the anomalies only in part."""
    rng = np.random.default_rng(seed)
    labels = np.array([0] * normal + [1] * anomalous)
    logits = rng.normal(-1.0, 2.0, labels.size) + 1.5 * labels
    similarity = rng.normal(0.30, 0.05, labels.size) + 0.04 * labels
    return logits, similarity, labels


def test_the_fit_standardises_on_the_normal_images_and_keeps_the_sum_s_ranking() -> None:
    from sklearn.metrics import roc_auc_score

    logits, similarity, labels = _held_out()
    calibration = fit_score_calibration(logits.tolist(), similarity.tolist(), labels.tolist())
    normal = labels == 0
    assert calibration.logit_mean == pytest.approx(logits[normal].mean())
    assert calibration.logit_std == pytest.approx(logits[normal].std())
    assert calibration.similarity_mean == pytest.approx(similarity[normal].mean())
    assert calibration.similarity_std == pytest.approx(similarity[normal].std())
    z = (logits - logits[normal].mean()) / logits[normal].std() + (similarity - similarity[normal].mean()) / (
        similarity[normal].std())
    torch.testing.assert_close(calibration.fused(torch.tensor(logits), torch.tensor(similarity)), torch.tensor(z))
    w_l, w_s, bias = calibration.weights()
    probability = 1 / (1 + np.exp(-(w_l * logits + w_s * similarity + bias)))
    np.testing.assert_allclose(probability, 1 / (1 + np.exp(-(calibration.slope * z + calibration.bias))), rtol=1e-9)
    assert roc_auc_score(labels, probability) == pytest.approx(roc_auc_score(labels, z))
    # the equal weighting ranks better here than either score alone (each carries half the signal)
    assert roc_auc_score(labels, z) > max(roc_auc_score(labels, logits), roc_auc_score(labels, similarity))
    # classes weighted equally: the balanced fit puts the verdict 0.5 between the two classes' typical sums
    assert np.mean(probability[normal] < 0.5) > 0.5 and np.mean(probability[~normal] >= 0.5) > 0.5


def test_the_fit_refuses_what_cannot_calibrate_and_says_why() -> None:
    logits, similarity, labels = _held_out()
    with pytest.raises(CalibrationError, match="1 anomalous"):
        fit_score_calibration([0.1, 0.2, 0.3], [0.2, 0.3, 0.4], [0, 0, 1])
    with pytest.raises(CalibrationError, match="labelled 0 / 1"):
        fit_score_calibration([0.1, 0.2, 0.3, 0.4, 0.5], [0.2] * 5, [0, 0, 1, 1, 2])
    with pytest.raises(CalibrationError, match="one length"):
        fit_score_calibration(logits.tolist(), similarity[:-1].tolist(), labels.tolist())
    with pytest.raises(CalibrationError, match="NaN"):
        fit_score_calibration([*logits[:-1].tolist(), float("nan")], similarity.tolist(), labels.tolist())
    with pytest.raises(CalibrationError, match="does not rank"):  # both scores put the anomalies lower
        fit_score_calibration((-logits).tolist(), (-similarity).tolist(), labels.tolist())


def test_a_constant_self_similarity_leaves_the_predictor_s_ranking() -> None:
    """A feature that is the same for every normal image is not divided by 0: it shifts every sum alike."""
    from sklearn.metrics import roc_auc_score

    logits, _, labels = _held_out(1)
    calibration = fit_score_calibration(logits.tolist(), [0.25] * labels.size, labels.tolist())
    w_l, w_s, bias = calibration.weights()
    fused = w_l * logits + w_s * 0.25 + bias
    assert np.isfinite(fused).all() and roc_auc_score(labels, fused) == pytest.approx(roc_auc_score(labels, logits))
