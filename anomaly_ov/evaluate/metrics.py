"""Detection, localisation and answer metrics, per class then the mean over classes (REFERENCE.md section 6).

Conventions:

* A metric that is undefined for a class (one label value only, no ground-truth component, no normal pixel) is
  ``None`` ("missing"), never 0 or 1; class means skip missing values and are ``None`` when all are missing.
* Masks are binarised with ``mask > 0``.
* The exact functions hold every pixel in memory. :class:`PixelAccumulator` is the memory-bounded variant: it
  keeps per-bin histograms (``bins`` equal bins over the [0, 1] score range) and is fed one image at a time; with
  1000 bins it agrees with the exact functions to about 1e-3 (tests check it).

scikit-learn supplies the ROC and precision-recall curves; only AUPRO, the binned curves and the Yes/No
accounting are written here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: 8-connectivity for ground-truth components.
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# ------------------------------------------------------------------------------------------------ helpers
def _clean(value: float | None) -> float | None:
    """NaN / None -> None; numpy scalars -> float."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def mean_of(values: Iterable[float | None]) -> float | None:
    """Mean of the defined values (None when none is defined)."""
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(kept)) if kept else None


def _binary(labels: Sequence[Any]) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.dtype.kind in "OUS":
        arr = np.asarray([_truthy(v) for v in arr.ravel()], dtype=bool)
    return arr.astype(bool).ravel()


def _truthy(value: Any) -> bool:
    """A label or prediction as a bool: True/1/"anomaly"/"yes"/"true"/"1" are positive."""
    if isinstance(value, str):
        return value.strip().lower() in ("anomaly", "1", "true", "yes")
    if value is None:
        raise ValueError("a label or prediction is missing (None); drop the item or give it a value")
    return bool(value)


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.trapezoid(y, x))


def area_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Area under a curve with non-decreasing ``x`` from x[0] up to ``limit``, interpolating the last point."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    inside = int(np.searchsorted(x, limit, side="right"))
    if inside == 0:
        return 0.0
    xs, ys = x[:inside], y[:inside]
    if inside < len(x) and xs[-1] < limit:
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        y_at = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        xs, ys = np.append(xs, limit), np.append(ys, y_at)
    return _trapezoid(ys, xs)


# ------------------------------------------------------------------------------------------- image level
def image_auroc(scores: Sequence[float], labels: Sequence[Any]) -> float | None:
    """ROC-AUC of image scores against image labels (True/1/"anomaly" = positive); None for one label value."""
    from sklearn.metrics import roc_auc_score

    y = _binary(labels)
    if y.size == 0 or y.all() or not y.any():
        return None
    return _clean(roc_auc_score(y, np.asarray(scores, dtype=np.float64).ravel()))


def f1_max(scores: Sequence[float], labels: Sequence[Any]) -> tuple[float | None, float | None]:
    """Largest F1 over the thresholds of the precision-recall curve, and that threshold (score >= t = positive)."""
    from sklearn.metrics import precision_recall_curve

    y = _binary(labels)
    if y.size == 0 or y.all() or not y.any():
        return None, None
    precision, recall, thresholds = precision_recall_curve(y, np.asarray(scores, dtype=np.float64).ravel())
    precision, recall = precision[:-1], recall[:-1]  # the last point (P=1, R=0) has no threshold
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def roc_points(scores: Sequence[float], labels: Sequence[Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """(fpr, tpr) of the image-level ROC curve, or None for a one-label class."""
    from sklearn.metrics import roc_curve

    y = _binary(labels)
    if y.size == 0 or y.all() or not y.any():
        return None
    fpr, tpr, _ = roc_curve(y, np.asarray(scores, dtype=np.float64).ravel())
    return fpr, tpr


# ------------------------------------------------------------------------------------ pixel level, exact
def _stack(maps: Iterable[np.ndarray], masks: Iterable[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    maps = [np.asarray(m, dtype=np.float64) for m in maps]
    masks = [np.asarray(m) > 0 for m in masks]
    if len(maps) != len(masks):
        raise ValueError(f"got {len(maps)} anomaly maps but {len(masks)} masks")
    for i, (a, b) in enumerate(zip(maps, masks, strict=True)):
        if a.shape != b.shape:
            raise ValueError(f"image {i}: anomaly map shape {a.shape} differs from mask shape {b.shape}")
    return maps, masks


def pixel_auroc(maps: Iterable[np.ndarray], masks: Iterable[np.ndarray]) -> float | None:
    """ROC-AUC over all pixels of all images (normal images included); None without both pixel kinds."""
    maps, masks = _stack(maps, masks)
    if not maps:
        return None
    return image_auroc(np.concatenate([m.ravel() for m in maps]), np.concatenate([m.ravel() for m in masks]))


def pixel_f1_max(maps: Iterable[np.ndarray], masks: Iterable[np.ndarray]) -> tuple[float | None, float | None]:
    """Pixel-level F1-max and its threshold."""
    maps, masks = _stack(maps, masks)
    if not maps:
        return None, None
    return f1_max(np.concatenate([m.ravel() for m in maps]), np.concatenate([m.ravel() for m in masks]))


def _component_weights(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Per pixel 1 / size of its 8-connected ground-truth component (0 outside), and the component count."""
    from scipy import ndimage

    labelled, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    if count == 0:
        return np.zeros(mask.shape, dtype=np.float64), 0
    sizes = np.bincount(labelled.ravel()).astype(np.float64)
    sizes[0] = np.inf  # background pixels weigh 0
    return 1.0 / sizes[labelled], count


def pro_curve(maps: Iterable[np.ndarray], masks: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """Exact (FPR, PRO) curve over every distinct threshold, starting at (0, 0); None when undefined.

    PRO(t) is the mean over all ground-truth components (8-connected, per image) of the fraction of the
    component's pixels with score >= t; FPR(t) is over all normal pixels of all images.
    """
    maps, masks = _stack(maps, masks)
    scores, pro_w, normal_w = [], [], []
    components = 0
    for amap, mask in zip(maps, masks, strict=True):
        weights, count = _component_weights(mask)
        components += count
        scores.append(amap.ravel())
        pro_w.append(weights.ravel())
        normal_w.append((~mask).ravel().astype(np.float64))
    if not scores:
        return None
    s = np.concatenate(scores)
    normal = np.concatenate(normal_w)
    n_normal = normal.sum()
    if components == 0 or n_normal == 0:
        return None
    order = np.argsort(-s, kind="mergesort")
    s = s[order]
    fpr = np.cumsum(normal[order]) / n_normal
    pro = np.cumsum(np.concatenate(pro_w)[order]) / components
    last_of_tie = np.append(s[1:] != s[:-1], True)
    fpr = np.concatenate([[0.0], np.clip(fpr[last_of_tie], 0, 1)])
    pro = np.concatenate([[0.0], np.clip(pro[last_of_tie], 0, 1)])
    return fpr, pro


def aupro(maps: Iterable[np.ndarray], masks: Iterable[np.ndarray], fpr_limit: float = 0.3) -> float | None:
    """Area under the PRO curve from FPR 0 to ``fpr_limit`` divided by ``fpr_limit`` (MVTec AD definition)."""
    curve = pro_curve(maps, masks)
    if curve is None:
        return None
    return area_to(curve[0], curve[1], fpr_limit) / fpr_limit


# ----------------------------------------------------------------------------- pixel level, memory-bounded
class PixelAccumulator:
    """Streaming pixel AUROC, pixel F1-max and AUPRO from histograms of [0, 1] scores.

    Scores fall in ``bins`` equal bins; a bin's lower edge is its threshold, so scores in one bin count as
    tied. Memory is O(bins) whatever the number of images. Feed it with :meth:`add` one image at a time.
    """

    def __init__(self, bins: int = 1000) -> None:
        if bins < 2:
            raise ValueError(f"bins must be at least 2, got {bins}")
        self.bins = bins
        self.positive = np.zeros(bins, dtype=np.int64)
        self.negative = np.zeros(bins, dtype=np.int64)
        self.pro_weight = np.zeros(bins, dtype=np.float64)
        self.components = 0
        self.images = 0

    def add(self, amap: np.ndarray, mask: np.ndarray) -> None:
        amap = np.asarray(amap, dtype=np.float32)
        mask = np.asarray(mask) > 0
        if amap.shape != mask.shape:
            raise ValueError(f"anomaly map shape {amap.shape} differs from mask shape {mask.shape}")
        if amap.size and (not np.isfinite(amap).all() or amap.min() < -1e-6 or amap.max() > 1 + 1e-6):
            raise ValueError("anomaly map values must be finite and within [0, 1] for the binned pixel metrics")
        index = np.clip((amap.astype(np.float64) * self.bins).astype(np.int64), 0, self.bins - 1)
        self.positive += np.bincount(index[mask], minlength=self.bins)
        self.negative += np.bincount(index[~mask], minlength=self.bins)
        weights, count = _component_weights(mask)
        if count:
            self.pro_weight += np.bincount(index[mask], weights=weights[mask], minlength=self.bins)
            self.components += count
        self.images += 1

    def merge(self, other: PixelAccumulator) -> PixelAccumulator:
        """Add another accumulator's counts (e.g. per-class -> all classes)."""
        if other.bins != self.bins:
            raise ValueError(f"cannot merge accumulators with {self.bins} and {other.bins} bins")
        self.positive += other.positive
        self.negative += other.negative
        self.pro_weight += other.pro_weight
        self.components += other.components
        self.images += other.images
        return self

    def _from_top(self, counts: np.ndarray) -> np.ndarray:
        """Cumulative count of scores >= each bin's lower edge, from the highest bin down, with a leading 0."""
        return np.concatenate([[0.0], np.cumsum(counts[::-1].astype(np.float64))])

    @property
    def thresholds(self) -> np.ndarray:
        """Threshold of each curve point after the leading (0, 0): bin lower edges from the top down."""
        return np.arange(self.bins - 1, -1, -1, dtype=np.float64) / self.bins

    def roc(self) -> tuple[np.ndarray, np.ndarray] | None:
        pos, neg = self.positive.sum(), self.negative.sum()
        if pos == 0 or neg == 0:
            return None
        return self._from_top(self.negative) / neg, self._from_top(self.positive) / pos

    def pixel_auroc(self) -> float | None:
        curve = self.roc()
        return None if curve is None else _trapezoid(curve[1], curve[0])

    def pixel_f1_max(self) -> tuple[float | None, float | None]:
        pos, neg = self.positive.sum(), self.negative.sum()
        if pos == 0 or neg == 0:
            return None, None
        tp = self._from_top(self.positive)[1:]
        fp = self._from_top(self.negative)[1:]
        denom = 2 * tp + fp + (pos - tp)
        f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
        best = int(np.argmax(f1))
        return float(f1[best]), float(self.thresholds[best])

    def pro_curve(self) -> tuple[np.ndarray, np.ndarray] | None:
        neg = self.negative.sum()
        if self.components == 0 or neg == 0:
            return None
        fpr = self._from_top(self.negative) / neg
        pro = np.clip(self._from_top(self.pro_weight) / self.components, 0, 1)
        return fpr, pro

    def aupro(self, fpr_limit: float = 0.3) -> float | None:
        curve = self.pro_curve()
        return None if curve is None else area_to(curve[0], curve[1], fpr_limit) / fpr_limit


class ExactPixelStore:
    """Same interface as :class:`PixelAccumulator`, keeping every map (for small sets: exact numbers)."""

    def __init__(self) -> None:
        self.maps: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []

    @property
    def images(self) -> int:
        return len(self.maps)

    def add(self, amap: np.ndarray, mask: np.ndarray) -> None:
        amap = np.asarray(amap, dtype=np.float32)
        mask = np.asarray(mask) > 0
        if amap.shape != mask.shape:
            raise ValueError(f"anomaly map shape {amap.shape} differs from mask shape {mask.shape}")
        self.maps.append(amap)
        self.masks.append(mask)

    def roc(self) -> tuple[np.ndarray, np.ndarray] | None:
        if not self.maps:
            return None
        return roc_points(
            np.concatenate([m.ravel() for m in self.maps]), np.concatenate([m.ravel() for m in self.masks])
        )

    def pixel_auroc(self) -> float | None:
        return pixel_auroc(self.maps, self.masks)

    def pixel_f1_max(self) -> tuple[float | None, float | None]:
        return pixel_f1_max(self.maps, self.masks)

    def pro_curve(self) -> tuple[np.ndarray, np.ndarray] | None:
        return pro_curve(self.maps, self.masks) if self.maps else None

    def aupro(self, fpr_limit: float = 0.3) -> float | None:
        return aupro(self.maps, self.masks, fpr_limit) if self.maps else None


# ---------------------------------------------------------------------------------------- Yes/No answers
@dataclass(frozen=True)
class BinaryCounts:
    tp: int
    fp: int
    tn: int
    fn: int

    @classmethod
    def of(cls, predicted: Sequence[Any], labels: Sequence[Any]) -> BinaryCounts:
        p, y = _binary(predicted), _binary(labels)
        if p.shape != y.shape:
            raise ValueError(f"got {p.size} predictions but {y.size} labels")
        return cls(
            tp=int((p & y).sum()), fp=int((p & ~y).sum()), tn=int((~p & ~y).sum()), fn=int((~p & y).sum())
        )


def binary_metrics(predicted: Sequence[Any], labels: Sequence[Any]) -> dict[str, float | None]:
    """Accuracy, precision, recall and F1 of binary predictions (anomalous = positive).

    Undefined values are None: recall without positives, precision without predicted positives when the
    class has no positives either (a class with positives and no positive prediction has precision 0), F1
    when 2TP + FP + FN = 0.
    """
    c = BinaryCounts.of(predicted, labels)
    n = c.tp + c.fp + c.tn + c.fn
    positives = c.tp + c.fn
    predicted_pos = c.tp + c.fp
    accuracy = (c.tp + c.tn) / n if n else None
    recall = c.tp / positives if positives else None
    no_prediction = 0.0 if positives else None
    precision = c.tp / predicted_pos if predicted_pos else no_prediction
    f1_denom = 2 * c.tp + c.fp + c.fn
    f1 = 2 * c.tp / f1_denom if f1_denom else None
    return {"accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1}


# --------------------------------------------------------------------------------------- per class, mean
def group_indices(categories: Sequence[str]) -> dict[str, np.ndarray]:
    """Category -> indices of its items, categories sorted."""
    cats = np.asarray([str(c) for c in categories])
    return {c: np.flatnonzero(cats == c) for c in sorted(set(cats.tolist()))}


def per_class(
    categories: Sequence[str], fn: Callable[..., Any], *columns: Sequence[Any]
) -> dict[str, Any]:
    """Apply ``fn`` to each class's slice of ``columns``: ``{class: fn(*slices)}``."""
    arrays = [np.asarray(col, dtype=object) if not isinstance(col, np.ndarray) else col for col in columns]
    out = {}
    for cls, idx in group_indices(categories).items():
        out[cls] = fn(*[a[idx] for a in arrays])
    return out


def macro(per_class_values: Mapping[str, Mapping[str, float | None]]) -> dict[str, float | None]:
    """``{class: {metric: value}}`` -> ``{metric: mean over classes of the defined values}``."""
    names: list[str] = []
    for values in per_class_values.values():
        names.extend(k for k in values if k not in names)
    return {name: mean_of(values.get(name) for values in per_class_values.values()) for name in names}


def macro_binary(
    predicted: Sequence[Any], labels: Sequence[Any], categories: Sequence[str]
) -> tuple[dict[str, float | None], dict[str, dict[str, float | None]]]:
    """Binary metrics per class, then their mean over classes. Returns (macro, per_class)."""
    classes = per_class(categories, lambda p, y: binary_metrics(list(p), list(y)), list(predicted), list(labels))
    return macro(classes), classes


def macro_image(
    scores: Sequence[float], labels: Sequence[Any], categories: Sequence[str]
) -> tuple[dict[str, float | None], dict[str, dict[str, float | None]]]:
    """Image AUROC and F1-max (with threshold) per class, then the class means (thresholds are not averaged)."""

    def one(s: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
        s = s.astype(np.float64)
        y = _binary(list(y))
        value, threshold = f1_max(s, y)
        return {"image_auroc": image_auroc(s, y), "image_f1_max": value, "image_f1_threshold": threshold}

    classes = per_class(categories, one, np.asarray(scores, dtype=np.float64), list(labels))
    mean = macro({c: {k: v for k, v in m.items() if k != "image_f1_threshold"} for c, m in classes.items()})
    return mean, classes
