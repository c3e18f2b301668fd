"""Evaluation figures: sample TP / FP / FN images with their anomaly maps, ROC and PRO curves, confusion matrices,
and per class the histogram of image scores for normal vs anomalous images (how well the expert separates them).

matplotlib is imported lazily and used through the object API on the Agg canvas (no pyplot global state, no
display needed). :func:`write_figures` writes every figure into a folder that replaces ``figures_dir`` as a whole.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from anomaly_ov.evaluate.detection import DetectionResult, Sample


def _figure(width: float, height: float, layout: Literal["constrained", "tight"] | None = None) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def sample_figure(sample: Sample, path: Path) -> Path:
    """Image | image + anomaly-map overlay + ground-truth contour; the model's answer in the title."""
    fig = _figure(6.4, 3.6)
    left, right = fig.subplots(1, 2)
    left.imshow(sample.image)
    left.set_title("image", fontsize=8)
    right.imshow(sample.image)
    right.imshow(sample.amap, cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
    if sample.mask.any():
        right.contour(sample.mask.astype(float), levels=[0.5], colors="white", linewidths=1.0)
    right.set_title(f"anomaly map (score {sample.score:.2f}); GT contour", fontsize=8)
    for ax in (left, right):
        ax.set_axis_off()
    answer = "(no answer)" if sample.answer is None else sample.answer.strip().replace("\n", " ")
    title = f"{sample.category} | {sample.kind} | answer: {answer}"
    fig.suptitle("\n".join(textwrap.wrap(title, 90)[:3]), fontsize=8)
    return _save(fig, path)


def curve_figure(
    rows: Sequence[dict[str, Any]], x: str, y: str, path: Path, title: str, xlim: float | None = None
) -> Path:
    """One line per category from curve rows (``{x, y, category}``)."""
    fig = _figure(4.8, 4.0)
    ax = fig.subplots()
    for cat in sorted({r["category"] for r in rows}):
        pts = [(r[x], r[y]) for r in rows if r["category"] == cat]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=cat, linewidth=1.5)
    if x == "fpr" and y == "tpr":
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    if xlim is not None:
        ax.axvline(xlim, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel(x.upper())
    ax.set_ylabel(y.upper())
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    if rows:
        ax.legend(fontsize=7, loc="lower right")
    else:
        ax.text(0.5, 0.5, "undefined (one label value per class)", ha="center", fontsize=8)
    return _save(fig, path)


def score_histogram_figure(records: Sequence[dict[str, Any]], path: Path, title: str, threshold: float,
                           bins: int = 20) -> Path:
    """Histogram of image scores, normal vs anomalous images overlaid, with the decision threshold.

    Args:
        records: detection records with ``score`` (float in [0, 1]) and ``anomaly`` (bool).
        path: PNG to write.
        title: figure title (the class name).
        threshold: the expert's decision threshold, drawn as a dashed line.
        bins: number of equal-width bins over [0, 1].
    """
    fig = _figure(4.8, 3.4, layout="constrained")
    ax = fig.subplots()
    edges = np.linspace(0.0, 1.0, bins + 1)
    for anomalous, colour, name in ((False, "tab:blue", "normal"), (True, "tab:red", "anomalous")):
        scores = np.clip([float(r["score"]) for r in records if bool(r["anomaly"]) is anomalous], 0.0, 1.0)
        ax.hist(scores, bins=edges.tolist(), alpha=0.55, color=colour, label=f"{name} ({len(scores)})")
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("image score")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper center")
    return _save(fig, path)


def confusion_counts(predicted: Iterable[bool], labels: Iterable[bool]) -> np.ndarray:
    """2 x 2 counts, rows = truth (normal, anomaly), columns = prediction (no, yes)."""
    matrix = np.zeros((2, 2), dtype=int)
    for p, y in zip(predicted, labels, strict=True):
        matrix[int(bool(y)), int(bool(p))] += 1
    return matrix


def confusion_figure(panels: dict[str, np.ndarray], path: Path) -> Path:
    fig = _figure(3.6 * max(len(panels), 1), 3.4, layout="constrained")
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False)[0]
    for ax, (name, matrix) in zip(axes, panels.items(), strict=False):
        ax.imshow(matrix, cmap="Blues", vmin=0)
        for (i, j), value in np.ndenumerate(matrix):
            colour = "white" if value > matrix.max() / 2 else "black"
            ax.text(j, i, str(value), ha="center", va="center", color=colour, fontsize=11)
        ax.set_xticks([0, 1], ["No", "Yes"])
        ax.set_yticks([0, 1], ["normal", "anomaly"])
        ax.set_xlabel("prediction")
        ax.set_ylabel("truth")
        ax.set_title(name, fontsize=9)
    return _save(fig, path)


def write_figures(
    result: DetectionResult, curves: dict[str, list[dict[str, Any]]], figures_dir: str | Path, threshold: float
) -> list[Path]:
    """Write all figures into ``figures_dir`` (replaced atomically); return the written paths (final names)."""
    from anomaly_ov.io import atomic_dir

    figures_dir = Path(figures_dir)
    written: list[str] = []
    with atomic_dir(figures_dir) as tmp:
        for n, sample in enumerate(result.samples):
            name = f"samples/{_slug(sample.category)}/{sample.kind}_{n:03d}_{_slug(Path(sample.file).stem)}.png"
            sample_figure(sample, tmp / name)
            written.append(name)
        for cat in sorted({r["category"] for r in result.records}):
            roc = [r for r in curves.get("roc", []) if r["category"] == cat]
            pro = [r for r in curves.get("pro", []) if r["category"] == cat]
            curve_figure(roc, "fpr", "tpr", tmp / f"roc/{_slug(cat)}.png", f"image ROC - {cat}")
            curve_figure(pro, "fpr", "pro", tmp / f"pro/{_slug(cat)}.png", f"PRO - {cat} (AUPRO to FPR 0.3)", 0.3)
            score_histogram_figure([r for r in result.records if r["category"] == cat],
                                   tmp / f"scores/{_slug(cat)}.png", f"image scores - {cat}", threshold)
            written += [f"roc/{_slug(cat)}.png", f"pro/{_slug(cat)}.png", f"scores/{_slug(cat)}.png"]
        curve_figure(curves.get("roc", []), "fpr", "tpr", tmp / "roc_all.png", "image ROC per class")
        curve_figure(curves.get("pro", []), "fpr", "pro", tmp / "pro_all.png", "PRO per class", 0.3)
        written += ["roc_all.png", "pro_all.png"]
        labels = [bool(r["anomaly"]) for r in result.records]
        panels = {f"expert (score >= {threshold:g})": confusion_counts([r["score"] >= threshold
                                                                         for r in result.records], labels)}
        answered = [r for r in result.records if r["parsed"]]
        if answered:
            panels = {
                "answers (Yes/No)": confusion_counts(
                    [r["parsed"] == "yes" for r in answered], [bool(r["anomaly"]) for r in answered]
                ),
                **panels,
            }
        confusion_figure(panels, tmp / "confusion.png")
        written.append("confusion.png")
    return [figures_dir / name for name in written]
