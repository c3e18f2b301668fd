"""Fit the expert's ``calibrated_fusion`` image score on stage 1's held-out rows.

After stage 1, the predictor's logit ``l`` and the base view's self-similarity ``s`` of every held-out image (rows
of the training families no step trained on) give a :class:`~anomaly_ov.model.expert.ScoreCalibration`: the mean
and standard deviation of each over the held-out *normal* images, and a one-feature logistic regression (classes
weighted equally, scikit-learn) from their standardised sum to the label. The sum's equal weights are a choice, not
a fit (docs/model.md, 'Settings that differ from the release'); the logistic only maps the sum to a probability,
and its slope is positive, so the ranking (and so the AUROC) is the sum's.

Example::

    calibration = fit_score_calibration(logits, similarity, labels)   # three sequences of the held-out images
    model.anomaly_expert.set_score_calibration(calibration)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anomaly_ov.errors import InputError
from anomaly_ov.model.expert import MIN_CALIBRATION_STD, ScoreCalibration

#: the fewest held-out images of each class a calibration is fit on
MIN_IMAGES_PER_CLASS = 2


class CalibrationError(InputError):
    """The held-out images cannot give a calibration (too few of a class, or a sum that does not rank them)."""


def fit_score_calibration(logits: Sequence[float], similarity: Sequence[float], labels: Sequence[int]
                          ) -> ScoreCalibration:
    """The :class:`ScoreCalibration` of held-out images' predictor logits, self-similarities and labels (0 / 1).

    Raises :class:`CalibrationError` with fewer than :data:`MIN_IMAGES_PER_CLASS` images of a class, or when the
    standardised sum ranks the anomalies below the normal images (the logistic's slope is not positive).
    """
    from sklearn.linear_model import LogisticRegression

    l_arr, s_arr = np.asarray(logits, dtype=np.float64), np.asarray(similarity, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if not (l_arr.shape == s_arr.shape == y.shape) or l_arr.ndim != 1:
        raise CalibrationError(f"logits, similarity and labels must be three 1-D sequences of one length, got "
                               f"shapes {l_arr.shape}, {s_arr.shape}, {y.shape}")
    if not np.isfinite(l_arr).all() or not np.isfinite(s_arr).all():
        raise CalibrationError("the held-out logits or self-similarities hold a NaN or an infinity")
    counts = {label: int((y == label).sum()) for label in (0, 1)}
    if min(counts.values()) < MIN_IMAGES_PER_CLASS or len(y) != sum(counts.values()):
        raise CalibrationError(f"a calibration needs at least {MIN_IMAGES_PER_CLASS} held-out normal and anomalous "
                               f"images, labelled 0 / 1; got {counts[0]} normal, {counts[1]} anomalous of {len(y)}")
    normal = y == 0
    stats = [(float(v[normal].mean()), max(float(v[normal].std()), MIN_CALIBRATION_STD)) for v in (l_arr, s_arr)]
    z = sum((v - mean) / std for v, (mean, std) in zip((l_arr, s_arr), stats, strict=True))
    fit = LogisticRegression(class_weight="balanced").fit(np.asarray(z).reshape(-1, 1), y)
    slope, bias = float(fit.coef_[0][0]), float(fit.intercept_[0])
    if not slope > 0:
        raise CalibrationError(f"the standardised sum does not rank the held-out anomalies above the normal images "
                               f"(logistic slope {slope:.4g}); the expert keeps the predictor's score")
    return ScoreCalibration(logit_mean=stats[0][0], logit_std=stats[0][1], similarity_mean=stats[1][0],
                            similarity_std=stats[1][1], slope=slope, bias=bias)
