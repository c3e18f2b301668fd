"""Detection, localisation and answer metrics, per class then the mean over classes (docs/model.md, 'Metrics').

Conventions:

* A metric that is undefined for a class (one label value only, no ground-truth component, no normal pixel) is
  ``None`` ("missing"), never 0 or 1; class means skip missing values and are ``None`` when all are missing.
* Masks are binarised with ``mask > 0``.
* The exact functions hold every pixel in memory. :class:`PixelScoreTable` is the streaming variant the evaluation
  uses: fed one image at a time, it keeps one entry per distinct float32 score (bounded; see its docstring) and
  gives the same numbers as the exact functions. (Equal-width bins over [0, 1] are not used: on saturated maps,
  whose normal pixels nearly all fall in the lowest bin, 1000 bins gave a pixel AUROC of 0.840 against 0.917
  exact in benchmarks/pixel_metrics_memory.py.)

scikit-learn supplies the ROC and precision-recall curves; only AUPRO, the streaming table and the Yes/No
accounting are written here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

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


def _binary(labels: ArrayLike) -> np.ndarray:
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
def image_auroc(scores: ArrayLike, labels: ArrayLike) -> float | None:
    """ROC-AUC of image scores against image labels (True/1/"anomaly" = positive); None for one label value."""
    from sklearn.metrics import roc_auc_score

    y = _binary(labels)
    if y.size == 0 or y.all() or not y.any():
        return None
    return _clean(roc_auc_score(y, np.asarray(scores, dtype=np.float64).ravel()))


def f1_max(scores: ArrayLike, labels: ArrayLike) -> tuple[float | None, float | None]:
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


def roc_points(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray] | None:
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
_SIGN = np.uint32(0x80000000)


def float_keys(scores: np.ndarray) -> np.ndarray:
    """uint32 keys that sort like the float32 ``scores`` (IEEE bits, sign bit flipped; negatives complemented)."""
    bits = (np.asarray(scores, dtype=np.float32) + np.float32(0.0)).view(np.uint32)  # -0.0 -> +0.0
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def key_values(keys: np.ndarray, shift: int) -> np.ndarray:
    """The smallest float32 score of each (shifted) key: :func:`float_keys` undone."""
    bits = np.asarray(keys, dtype=np.uint32) << np.uint32(shift)
    return np.where(bits & _SIGN, bits & ~_SIGN, ~bits).astype(np.uint32).view(np.float32).astype(np.float64)


class PixelScoreTable:
    """Streaming pixel AUROC, pixel F1-max and AUPRO, exact on float32 scores, in bounded memory.

    The table holds, per distinct float32 score of the class, the count of anomalous and of normal pixels and the
    summed PRO weight (1 / size of the pixel's ground-truth component). The curves are then those of the exact
    functions above: one point per distinct score, from the highest down, ties counted together, so the numbers
    equal scikit-learn's ``roc_auc_score`` and the exact AUPRO whatever the score distribution (saturated maps
    whose normal pixels all lie below 1e-3 included).

    Memory: at most ``max_entries`` distinct scores (28 bytes each) plus one image's worth of buffer. When a class
    has more distinct scores, the lowest mantissa bit of every key is dropped (repeatedly) until it fits: scores
    within a relative 2**-(23 - shift) of each other then tie. ``exact`` says whether that happened, ``shift``
    how many bits were dropped. Feed it with :meth:`add` one image at a time.
    """

    def __init__(self, max_entries: int = 4_000_000) -> None:
        if max_entries < 2:
            raise ValueError(f"max_entries must be at least 2, got {max_entries}")
        self.max_entries = int(max_entries)
        self.shift = 0
        self.keys = np.empty(0, dtype=np.uint32)  # ascending
        self.positive = np.empty(0, dtype=np.int64)
        self.negative = np.empty(0, dtype=np.int64)
        self.pro_weight = np.empty(0, dtype=np.float64)
        self.components = 0
        self.images = 0
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_entries = 0

    @property
    def exact(self) -> bool:
        return self.shift == 0

    def add(self, amap: np.ndarray, mask: np.ndarray) -> None:
        """One image: ``amap`` float scores [H, W] (finite), ``mask`` [H, W] (> 0 = anomalous)."""
        amap = np.asarray(amap, dtype=np.float32)
        mask = np.asarray(mask) > 0
        if amap.shape != mask.shape:
            raise ValueError(f"anomaly map shape {amap.shape} differs from mask shape {mask.shape}")
        if amap.size and not np.isfinite(amap).all():
            raise ValueError("anomaly map values must be finite for the pixel metrics")
        weights, count = _component_weights(mask)
        keys = float_keys(amap.ravel()) >> np.uint32(self.shift)
        unique, inverse = np.unique(keys, return_inverse=True)
        inverse = inverse.reshape(-1)
        flat = mask.ravel()
        n = len(unique)
        self._pending.append((
            unique,
            np.bincount(inverse[flat], minlength=n).astype(np.int64),
            np.bincount(inverse[~flat], minlength=n).astype(np.int64),
            np.bincount(inverse[flat], weights=weights.ravel()[flat], minlength=n),
        ))
        self._pending_entries += n
        self.components += count
        self.images += 1
        if self._pending_entries >= max(self.max_entries // 2, len(self.keys)):
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        parts = [(self.keys, self.positive, self.negative, self.pro_weight), *self._pending]
        self._pending, self._pending_entries = [], 0
        keys, positive, negative, pro = (np.concatenate(column) for column in zip(*parts, strict=True))
        self._set(keys, positive, negative, pro)
        while len(self.keys) > self.max_entries:
            self.shift += 1
            self._set(self.keys >> np.uint32(1), self.positive, self.negative, self.pro_weight, ascending=True)

    def _set(self, keys: np.ndarray, positive: np.ndarray, negative: np.ndarray, pro: np.ndarray,
             ascending: bool = False) -> None:
        """Sum the entries of equal keys; keep them ascending. The input is a few ascending runs (the table and
        each buffered image), which a stable sort merges in near-linear time."""
        if not ascending:
            order = np.argsort(keys, kind="stable")
            keys, positive, negative, pro = keys[order], positive[order], negative[order], pro[order]
        if len(keys) == 0:
            return
        starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
        self.keys = keys[starts].astype(np.uint32)
        self.positive = np.add.reduceat(positive, starts).astype(np.int64)
        self.negative = np.add.reduceat(negative, starts).astype(np.int64)
        self.pro_weight = np.add.reduceat(pro, starts).astype(np.float64)

    @property
    def nbytes(self) -> int:
        """Bytes held by the table (and the buffer)."""
        arrays: list[np.ndarray] = [self.keys, self.positive, self.negative, self.pro_weight,
                                    *(a for part in self._pending for a in part)]
        return int(sum(a.nbytes for a in arrays))

    def _from_top(self, counts: np.ndarray) -> np.ndarray:
        """Cumulative sum of ``counts`` from the highest score down, with a leading 0."""
        return np.concatenate([[0.0], np.cumsum(counts[::-1].astype(np.float64))])

    @property
    def thresholds(self) -> np.ndarray:
        """Score of each curve point after the leading (0, 0): the distinct scores from the highest down."""
        self._flush()
        return key_values(self.keys[::-1], self.shift)

    def roc(self) -> tuple[np.ndarray, np.ndarray] | None:
        self._flush()
        pos, neg = self.positive.sum(), self.negative.sum()
        if pos == 0 or neg == 0:
            return None
        return self._from_top(self.negative) / neg, self._from_top(self.positive) / pos

    def pixel_auroc(self) -> float | None:
        curve = self.roc()
        return None if curve is None else _trapezoid(curve[1], curve[0])

    def pixel_f1_max(self) -> tuple[float | None, float | None]:
        self._flush()
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
        self._flush()
        neg = self.negative.sum()
        if self.components == 0 or neg == 0:
            return None
        fpr = self._from_top(self.negative) / neg
        pro = np.clip(self._from_top(self.pro_weight) / self.components, 0, 1)
        return fpr, pro

    def aupro(self, fpr_limit: float = 0.3) -> float | None:
        curve = self.pro_curve()
        return None if curve is None else area_to(curve[0], curve[1], fpr_limit) / fpr_limit


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
    categories: Sequence[str], fn: Callable[..., Any], *columns: ArrayLike
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
