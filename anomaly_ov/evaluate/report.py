"""Evaluation outputs: flat ``metrics.json`` (DVC-diffable), ``predictions.parquet``, curve CSVs, ``evaluation.md``.

``metrics.json`` holds flat dotted keys (``detection.macro_f1``, ``zero_shot.image_auroc``,
``per_class.<cls>.<metric>`` ...). A metric that is undefined (e.g. the AUROC of a class with one label value) is
written as ``null`` and shown as "missing" in the Markdown report; it is never replaced by 0 or 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from anomaly_ov.io import atomic_dir, atomic_path, atomic_write_json, atomic_write_text
from anomaly_ov.tracking import flatten

#: Published reference numbers (docs/model.md, 'Published numbers'): real VisA / VisA-D&R data, not ours.
PUBLISHED_DETECTION = [
    ("Anomaly-OV-7B", 0.79, 0.83),
    ("Anomaly-OV-0.5B", 0.79, 0.82),
    ("GPT-4o", 0.70, 0.68),
    ("Qwen2-VL-7B", 0.76, 0.75),
    ("Anomaly-OV expert alone (threshold 0.5)", 0.78, 0.77),
]
PUBLISHED_IMAGE_AUROC = [
    ("Anomaly-OV expert", "94.0", "91.1"),
    ("AnomalyCLIP", "91.5", "82.1"),
    ("AdaCLIP", "89.2", "85.8"),
    ("WinCLIP", "91.8", "78.8"),
]
PUBLISHED_PIXEL = [("AnomalyCLIP", "91.1 / 95.5", "81.4 / 87.0")]  # (pixel AUROC, AUPRO), MVTec AD / VisA
PUBLISHED_REASONING = {"low_level.rouge_l": 0.34, "low_level.sbert": 0.73, "complex.sbert": 0.84}

HEADLINE = (
    "detection.macro_accuracy",
    "detection.macro_precision",
    "detection.macro_recall",
    "detection.macro_f1",
    "zero_shot.image_auroc",
    "zero_shot.image_f1_max",
    "zero_shot.pixel_auroc",
    "zero_shot.pixel_f1_max",
    "zero_shot.aupro",
    "expert.accuracy",
    "expert.f1",
)


def _num(value: Any) -> float | int | None:
    if value is None or isinstance(value, bool):
        return None if value is None else int(value)
    if isinstance(value, int):
        return value
    value = float(value)
    return None if math.isnan(value) else round(value, 6)


def flat_metrics(
    overall: Mapping[str, Any],
    per_class: Mapping[str, Mapping[str, Any]],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, float | int | None]:
    """Nested overall metrics + ``{class: {metric: value}}`` + extra -> one flat dict of numbers / None."""
    flat: dict[str, float | int | None] = {k: _num(v) for k, v in flatten(overall).items()}
    for cls in sorted(per_class):
        for key, value in flatten(per_class[cls]).items():
            flat[f"per_class.{cls}.{key}"] = _num(value)
    for key, value in flatten(extra or {}).items():
        flat[key] = _num(value)
    return flat


def write_metrics(path: str | Path, flat: Mapping[str, Any]) -> Path:
    return atomic_write_json(path, dict(flat))


def write_table(path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Rows -> Parquet (atomically), with the given column order even when there are no rows."""
    import pandas as pd

    frame = pd.DataFrame.from_records(list(rows), columns=list(columns))
    with atomic_path(path, suffix=".parquet") as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(path)


PREDICTION_COLUMNS = (
    "file", "image", "category", "label", "anomaly", "score", "expert_label", "answer", "parsed", "mask",
)
REASONING_COLUMNS = (
    "file", "category", "defect_type", "turn", "kind", "question", "reference", "answer", "rouge_l", "sbert", "judge",
)


def write_curves(curves_dir: str | Path, curves: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[Path]:
    """``roc.csv`` (fpr,tpr,category), ``pro.csv`` (fpr,pro,category), ``pr.csv`` (recall,precision,category)."""
    import csv

    columns = {"roc": ("fpr", "tpr", "category"), "pro": ("fpr", "pro", "category"),
               "pr": ("recall", "precision", "category")}
    curves_dir = Path(curves_dir)
    with atomic_dir(curves_dir) as tmp:
        for name, cols in columns.items():
            with open(tmp / f"{name}.csv", "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(cols))
                writer.writeheader()
                for row in curves.get(name, []):
                    writer.writerow({c: (f"{row[c]:.6g}" if isinstance(row[c], float) else row[c]) for c in cols})
    return [curves_dir / f"{name}.csv" for name in columns]


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "missing"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{100 * value:.1f}" if pct else f"{value:.3f}"


def _nearly_exact(info: Mapping[str, Any]) -> str:
    return (f"nearly exact (a class had more than {info.get('pixel_table_limit')} distinct scores, "
            "evaluate.exact_pixel_limit: nearby scores were merged)")


def markdown_report(flat: Mapping[str, Any], info: Mapping[str, Any], figures: Sequence[str] = ()) -> str:
    """The human report: our numbers beside the published ones, which were measured on different data.

    ``figures`` are the PNGs written with it, as paths relative to the report's folder; each one is linked.
    """
    g = flat.get
    data = info.get("dataset", "this evaluation set")
    lines = [
        "# Evaluation",
        "",
        f"- Data: {data}; {g('counts.images')} images ({g('counts.anomalous')} anomalous, {g('counts.normal')} "
        f"normal) in {g('counts.categories')} classes.",
        f"- Model: {info.get('model', '?')}.",
        f"- Maps and masks compared at {g('eval_resolution')} x {g('eval_resolution')} px; pixel metrics "
        f"{'exact' if g('pixel_exact') else _nearly_exact(info)}.",
        "- Every metric is computed per class, then averaged over classes. \"missing\" = undefined for every class"
        " (e.g. one label value only); it is never replaced by 0 or 1.",
        "",
        "**The published numbers below were measured by the paper's authors on the real VisA / VisA-D&R data with"
        " the released checkpoints. Ours come from different data and a different model; they are shown for"
        " orientation only and are not comparable.**",
        "",
        "## Detection (VisA-D&R protocol: Yes/No answers)",
        "",
        "| model | data | macro accuracy | macro precision | macro recall | macro F1 |",
        "|---|---|---|---|---|---|",
        f"| ours (answers) | {data} | {_fmt(g('detection.macro_accuracy'))} | {_fmt(g('detection.macro_precision'))}"
        f" | {_fmt(g('detection.macro_recall'))} | {_fmt(g('detection.macro_f1'))} |",
        f"| ours (expert, score >= {info.get('threshold', 0.5)}) | {data} | {_fmt(g('expert.accuracy'))} | "
        f"{_fmt(g('expert.precision'))} | {_fmt(g('expert.recall'))} | {_fmt(g('expert.f1'))} |",
    ]
    for name, acc, f1 in PUBLISHED_DETECTION:
        lines.append(f"| {name} (published) | VisA-D&R | {acc:.2f} | - | - | {f1:.2f} |")
    lines += [
        "",
        "## Zero-shot detection and localisation (expert)",
        "",
        "| model | data | image AUROC | image F1-max | pixel AUROC | pixel F1-max | AUPRO@0.3 |",
        "|---|---|---|---|---|---|---|",
        f"| ours | {data} | {_fmt(g('zero_shot.image_auroc'), True)} | {_fmt(g('zero_shot.image_f1_max'), True)} | "
        f"{_fmt(g('zero_shot.pixel_auroc'), True)} | {_fmt(g('zero_shot.pixel_f1_max'), True)} | "
        f"{_fmt(g('zero_shot.aupro'), True)} |",
    ]
    for name, mvtec, visa in PUBLISHED_IMAGE_AUROC:
        lines.append(f"| {name} (published) | MVTec AD / VisA | {mvtec} / {visa} | - | - | - | - |")
    for name, pixel_auroc, aupro in PUBLISHED_PIXEL:
        lines.append(f"| {name} (published) | MVTec AD / VisA | - | - | {pixel_auroc} | - | {aupro} |")
    lines.append("")
    lines.append("No pixel-level numbers are published for Anomaly-OV.")
    if any(k.startswith("reasoning.") for k in flat):
        lines += [
            "",
            "## Reasoning (VisA-D&R protocol: multi-turn, the model's own answers as history)",
            "",
            f"Sentence-BERT: {info.get('sbert_model', '?')}. ROUGE-L: F-measure with Porter stemming. Means over"
            " answers.",
            "",
            "| | ours | Anomaly-OV-7B (published, VisA-D&R) |",
            "|---|---|---|",
        ]
        for key, ref in PUBLISHED_REASONING.items():
            lines.append(f"| {key} | {_fmt(g('reasoning.' + key))} | {ref:.2f} |")
        if g("reasoning.judge.calls") is not None:
            lines.append(
                f"| judge (low-level / complex, 0-1) | {_fmt(g('reasoning.judge.low_level'))} / "
                f"{_fmt(g('reasoning.judge.complex'))} ({g('reasoning.judge.failures')} of "
                f"{g('reasoning.judge.calls')} calls failed) | - |"
            )
        lines.append(
            f"\nAnswers scored: {g('reasoning.count.low_level')} low-level, {g('reasoning.count.complex')} complex, "
            f"from {g('reasoning.count.items')} images."
        )
    lines += ["", "## Per class", ""]
    lines += _per_class_table(flat)
    lines += _figure_links(figures)
    return "\n".join(lines) + "\n"


#: (section title, the figure's group name, show inline) in the order the report lists figures.
_FIGURE_GROUPS = (
    ("Score histograms per class (normal vs anomalous)", "scores", True),
    ("ROC", "roc", True),
    ("PRO", "pro", True),
    ("Confusion matrices", "confusion", True),
    ("Samples (true / false positives, false negatives)", "samples", False),
)


def _figure_group(relative: str) -> str:
    """``scores``, ``roc``, ``pro``, ``confusion``, ``samples`` or ``other`` for a figure path (see figures.py)."""
    path = Path(relative)
    if "samples" in path.parts[:-1]:
        return "samples"
    if path.parent.name in ("scores", "roc", "pro"):
        return path.parent.name
    return {"roc_all": "roc", "pro_all": "pro", "confusion": "confusion"}.get(path.stem, "other")


def _figure_links(figures: Sequence[str]) -> list[str]:
    """A "Figures" section linking every PNG (relative links); overview figures are shown inline."""
    if not figures:
        return []
    lines = ["", "## Figures"]
    for title, group, embed in (*_FIGURE_GROUPS, ("Other", "other", False)):
        inside = [f for f in figures if _figure_group(f) == group]
        if inside:
            lines += ["", f"### {title}", ""]
        for rel in inside:
            label = f"{Path(rel).parent.name}/{Path(rel).stem}"
            lines.append(f"![{label}]({_url(rel)})" if embed else f"- [{label}]({_url(rel)})")
    return lines


def _url(relative: str) -> str:
    """A relative Markdown link target (spaces and parentheses escaped)."""
    from urllib.parse import quote

    return quote(Path(relative).as_posix(), safe="/._-")


def _per_class_table(flat: Mapping[str, Any]) -> list[str]:
    cols = [
        ("detection.accuracy", "acc (answers)"),
        ("detection.f1", "F1 (answers)"),
        ("expert.accuracy", "acc (expert)"),
        ("expert.f1", "F1 (expert)"),
        ("image_auroc", "image AUROC"),
        ("image_f1_max", "image F1-max"),
        ("pixel_auroc", "pixel AUROC"),
        ("aupro", "AUPRO"),
        ("n_images", "images"),
        ("n_anomalous", "anomalous"),
    ]
    classes = sorted({k.split(".")[1] for k in flat if k.startswith("per_class.")})
    rows = ["| class | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for cls in classes:
        vals = [_fmt(flat.get(f"per_class.{cls}.{key}")) for key, _ in cols]
        rows.append(f"| {cls} | " + " | ".join(vals) + " |")
    return rows


def write_markdown(path: str | Path, flat: Mapping[str, Any], info: Mapping[str, Any],
                   figures: Sequence[str | Path] = ()) -> Path:
    """Write ``evaluation.md``; ``figures`` (PNG paths, absolute or relative to the cwd) are linked relative to it."""
    import os

    folder = Path(path).absolute().parent
    relative = [Path(os.path.relpath(Path(f).absolute(), folder)).as_posix() for f in figures]
    return atomic_write_text(path, markdown_report(flat, info, relative))
