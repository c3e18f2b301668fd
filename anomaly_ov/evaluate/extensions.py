"""Stages ``extend_medical`` and ``extend_3d``: the trained model on medical slices and on multi-view 3D renders.

Each stage (1) prepares its data (the synthetic set by default, plus ``extensions.<name>.sources``), (2) writes
the matching instruction records and benchmark files with the ``instruct`` package (domain ``medical`` / ``3d``)
under ``data/extensions/<name>/``, (3) evaluates the model saved by ``train_instruct`` with the ``evaluate``
package, and (4) writes a flat report ``<extensions.report_dir>/<name>.json`` plus figures, logged to MLflow.

Medical: per-modality (per category) image AUROC, pixel AUROC / AUPRO where masks exist, detection macro metrics
(the Yes/No protocol) and reasoning metrics.

3D: every view is scored on its own (view-level image AUROC, pixel AUROC / AUPRO against the rendered masks);
then each object's views go to the model together, as one multi-image conversation, for the detection answer
and the reasoning questions, and the object score aggregates the view scores by ``max`` and by ``mean`` (both
reported, ``object.max.*`` and ``object.mean.*``). The object is anomalous when any of its views shows the defect.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_ov.errors import StageFailed
from anomaly_ov.io import atomic_write_json
from anomaly_ov.paths import in_workspace

if TYPE_CHECKING:
    import pandas as pd

    from anomaly_ov.config import Params
    from anomaly_ov.evaluate.detection import PredictorLike

log = logging.getLogger(__name__)

EXTENSIONS_DIR = "data/extensions"
NAMES = {"medical": "medical", "3d": "3d"}  # extension name -> instruct domain


# ------------------------------------------------------------------------------------------------ helpers
def extension_dir(workspace: Path, name: str) -> Path:
    return in_workspace(workspace, EXTENSIONS_DIR) / name


def report_path(params: Params, workspace: Path, name: str) -> Path:
    return in_workspace(workspace, params.extensions.report_dir) / f"{name}.json"


def figures_dir(params: Params, workspace: Path, name: str) -> Path:
    return in_workspace(workspace, params.extensions.report_dir) / "figures" / name


def test_item(row: dict[str, Any], workspace: Path) -> dict[str, Any]:
    """A manifest row as a ``test_data.json`` item (workspace-relative paths; category from the manifest)."""
    root = Path(str(row["root"]))
    file = (root / row["image_path"]).as_posix()
    mask = (root / row["mask_path"]).as_posix() if row["mask_path"] else ""
    return {"image": f"{row['source']}/{row['category']}/{row['image_path']}", "file": file,
            "anomaly": row["label"] == "anomaly", "mask": mask, "category": row["category"],
            "group": row.get("group", ""), "view": row.get("view", "")}


def load_model(params: Params, workspace: Path, stage: str) -> PredictorLike:
    """The model saved by ``train_instruct`` as a Predictor; a missing model stops the stage with the fix."""
    from anomaly_ov.evaluate.run import load_predictor

    model_dir = in_workspace(workspace, params.train.instruct.output_dir)
    if not model_dir.exists():
        raise StageFailed(stage, f"{model_dir}: trained model not found; run `anomaly-ov stage train_instruct` first")
    return load_predictor(model_dir, params.evaluate.device)


def write_instruct_and_bench(frame: pd.DataFrame, params: Params, workspace: Path, out: Path, domain: str
                             ) -> tuple[dict[str, Any], Path]:
    """Instruction records (``instruct.json``) and benchmark files (``bench/``) for the extension's images."""
    from anomaly_ov.instruct.benchmark import build_benchmark
    from anomaly_ov.instruct.synthesize import summarize_records, synthesize_records

    records = synthesize_records(frame, params, workspace, domain=domain)
    atomic_write_json(out / "instruct.json", records)
    bench = out / "bench"
    held_out = frame[frame["split"] != "train"]  # training normals are not benchmark images
    build_benchmark(held_out if len(held_out) else frame, params, workspace, bench, domain=domain)
    stats = summarize_records(records)
    return {"records": stats["records"], "turns": stats["turns"]}, bench


def _reasoning_items(bench: Path, params: Params) -> list[dict[str, Any]] | None:
    from anomaly_ov.evaluate.reasoning import load_reasoning_items
    from anomaly_ov.evaluate.run import REASONING_DATA

    if not params.evaluate.reasoning or not (bench / REASONING_DATA).exists():
        return None
    return load_reasoning_items(bench / REASONING_DATA, params.evaluate.max_reasoning_items) or None


def _finish(name: str, report: dict[str, Any], params: Params, workspace: Path, figures: Path) -> dict[str, Any]:
    """Write the extension's report (with the hash of the model it measured, which the registry gate checks before
    it reads an ``extensions.<name>.*`` threshold from it) and log it to MLflow."""
    from anomaly_ov import tracking
    from anomaly_ov.fingerprint import dir_sha256

    model_dir = in_workspace(workspace, params.train.instruct.output_dir)
    if model_dir.is_dir():  # (a test's stand-in predictor has no saved model)
        report = {**report, "provenance.model_sha256": dir_sha256(model_dir)}
    path = report_path(params, workspace, name)
    atomic_write_json(path, report)
    tracking.log_metrics({k: v for k, v in report.items() if not k.startswith("per_class.")}, prefix=name)
    tracking.log_artifact(path, f"extensions/{name}")
    tracking.log_artifact(figures, f"extensions/{name}/figures")
    return report


# ------------------------------------------------------------------------------------------------ shared
def _prepare_extension(stage: str, name: str, frame: Any, params: Params, workspace: Path
                       ) -> tuple[Path, dict[str, Any], Path, float]:
    """Write the extension's manifest, instruction set and benchmark; return (out dir, instruct stats, bench dir,
    synthesis seconds). An empty manifest stops the stage: nothing is enabled and no source is configured."""
    from anomaly_ov.data.manifest import write_manifest

    section = "medical" if name == "medical" else "threed"
    if frame.empty:
        raise StageFailed(stage, f"no {name} data: extensions.{section}.enabled is false and "
                          f"extensions.{section}.sources is empty")
    out = extension_dir(workspace, name)
    write_manifest(frame, out / "manifest.parquet")
    t0 = time.perf_counter()
    instruct_stats, bench = write_instruct_and_bench(frame, params, workspace, out, name)
    return out, instruct_stats, bench, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------ medical
def run_extend_medical(params: Params, workspace: Path, predictor: PredictorLike | None = None,
                       similarity: Any | None = None) -> dict[str, Any]:
    """Stage ``extend_medical``; ``predictor`` / ``similarity`` replace the saved model / Sentence-BERT in tests."""
    from anomaly_ov.data.extensions import medical_manifest
    from anomaly_ov.evaluate.detection import load_test_items
    from anomaly_ov.evaluate.run import TEST_DATA, evaluate_dataset

    workspace = Path(workspace)
    started = time.perf_counter()
    frame = medical_manifest(params, workspace)
    data_seconds = time.perf_counter() - started
    out, instruct_stats, bench, synth_seconds = _prepare_extension("extend_medical", "medical", frame, params,
                                                                   workspace)
    test_items = load_test_items(bench / TEST_DATA, params.evaluate.max_images)
    reasoning_items = _reasoning_items(bench, params)

    t0 = time.perf_counter()
    predictor = predictor or load_model(params, workspace, "extend_medical")
    info = {"dataset": "medical extension", "model": params.train.instruct.output_dir,
            "join_training": params.extensions.medical.join_training}
    flat = evaluate_dataset(predictor, test_items, reasoning_items, params, out / "eval", workspace, info,
                            similarity=similarity, log_to_mlflow=False)
    eval_seconds = time.perf_counter() - t0

    figures = figures_dir(params, workspace, "medical")
    medical_figures(frame, out / "eval" / "predictions.parquet", workspace, figures, params.evaluate.threshold)
    report = {**flat, **{f"instruct.{k}": v for k, v in instruct_stats.items()},
              "data.images": len(frame), "data.anomalous": int((frame["label"] == "anomaly").sum()),
              "data.categories": int(frame["category"].nunique()),
              "joined_training": int(params.extensions.medical.join_training),
              "seconds.data": round(data_seconds, 3), "seconds.synthesize": round(synth_seconds, 3),
              "seconds.evaluate": round(eval_seconds, 3), "seconds.total": round(time.perf_counter() - started, 3)}
    _finish("medical", report, params, workspace, figures)
    return _summary(report)


# ----------------------------------------------------------------------------------------------------- 3D
def run_extend_3d(params: Params, workspace: Path, predictor: PredictorLike | None = None,
                  similarity: Any | None = None) -> dict[str, Any]:
    """Stage ``extend_3d``; ``predictor`` / ``similarity`` replace the saved model / Sentence-BERT in tests."""
    from anomaly_ov.data.extensions import threed_manifest
    from anomaly_ov.evaluate.run import evaluate_dataset

    workspace = Path(workspace)
    started = time.perf_counter()
    frame = threed_manifest(params, workspace)
    data_seconds = time.perf_counter() - started
    out, instruct_stats, bench, synth_seconds = _prepare_extension("extend_3d", "3d", frame, params, workspace)
    reasoning_items = _reasoning_items(bench, params)

    t0 = time.perf_counter()
    predictor = predictor or load_model(params, workspace, "extend_3d")
    tests = frame[frame["split"] != "train"] if (frame["split"] != "train").any() else frame
    view_items = [test_item(row, workspace) for row in tests.to_dict("records")]
    # View level: every view scored alone (pixel metrics against the rendered masks); answers come per object.
    view_flat = evaluate_dataset(predictor, view_items, None, params.model_copy(update={
        "evaluate": params.evaluate.model_copy(update={"generate_answers": False})}), out / "eval_views", workspace,
        {"dataset": "3d extension, single views"}, log_to_mlflow=False)
    objects = object_level(predictor, view_items, params, workspace,
                           _scores_of(out / "eval_views" / "predictions.parquet"))
    obj_flat = object_metrics(objects, params.evaluate.threshold)
    reasoning_flat: dict[str, Any] = {}
    if reasoning_items:
        reasoning_flat = multiview_reasoning(predictor, reasoning_items, frame, params, workspace, out, similarity)
    eval_seconds = time.perf_counter() - t0
    atomic_write_json(out / "objects.json", objects)

    figures = figures_dir(params, workspace, "3d")
    view_ring_figures(objects, workspace, figures)
    report = {**{f"view.{k}": v for k, v in view_flat.items()}, **obj_flat, **reasoning_flat,
              **{f"instruct.{k}": v for k, v in instruct_stats.items()},
              "data.views": len(frame), "data.objects": int(frame["group"].nunique()),
              "data.views_per_object": params.extensions.threed.views,
              "joined_training": int(params.extensions.threed.join_training),
              "seconds.data": round(data_seconds, 3), "seconds.synthesize": round(synth_seconds, 3),
              "seconds.evaluate": round(eval_seconds, 3), "seconds.total": round(time.perf_counter() - started, 3)}
    _finish("3d", report, params, workspace, figures)
    return _summary(report)


def _scores_of(predictions: Path) -> dict[str, float]:
    import pandas as pd

    if not predictions.exists():
        return {}
    table = pd.read_parquet(predictions)
    return dict(zip(table["file"].astype(str), table["score"].astype(float), strict=False))


def _group_items(view_items: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in view_items:
        groups[item["group"] or item["file"]].append(item)
    for items in groups.values():
        items.sort(key=lambda it: int(it["view"]) if str(it["view"]).isdigit() else 0)
    return dict(sorted(groups.items()))


def object_level(predictor: PredictorLike, view_items: list[dict[str, Any]], params: Params, workspace: Path,
                 known_scores: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Per object: view scores (max / mean), and the Yes/No answer to all views asked together.

    ``known_scores`` (file -> score, from the view-level evaluation) saves scoring the views a second time.
    """
    from anomaly_ov.evaluate.detection import load_image, parse_yes_no
    from anomaly_ov.evaluate.reasoning import ask_in_turns
    from anomaly_ov.model.tokenizer import DETECTION_PROMPT

    cfg = params.evaluate
    known_scores = known_scores or {}
    groups = list(_group_items(view_items).items())
    objects = []
    for start in range(0, len(groups), cfg.batch_size):  # batch_size objects' views loaded and asked together
        chunk = groups[start:start + cfg.batch_size]
        views = [[load_image(it["file"], workspace) for it in items] for _, items in chunk]
        answers = ([a[0] for a in ask_in_turns(predictor, [(images, [DETECTION_PROMPT]) for images in views],
                                               cfg.max_new_tokens, cfg.batch_size)]
                   if cfg.generate_answers else [""] * len(chunk))
        for (group, items), images, answer in zip(chunk, views, answers, strict=True):
            if all(it["file"] in known_scores for it in items):
                scores = [known_scores[it["file"]] for it in items]
            else:
                preds = predictor.predict(images, question=None, generate=False, threshold=cfg.threshold,
                                          max_new_tokens=cfg.max_new_tokens)
                scores = [float(p.score) for p in preds]
            said = parse_yes_no(answer) if cfg.generate_answers else None
            objects.append({
                "group": group, "category": items[0]["category"], "anomaly": any(it["anomaly"] for it in items),
                "views": [it["file"] for it in items], "masks": [it["mask"] for it in items], "view_scores": scores,
                "score_max": max(scores), "score_mean": sum(scores) / len(scores), "answer": answer,
                "parsed": "" if said is None else ("yes" if said else "no"),
            })
    return objects


def object_metrics(objects: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """Flat object-level metrics: image AUROC / F1-max for both aggregations, expert and answer detection."""
    from anomaly_ov.evaluate import metrics as M
    from anomaly_ov.evaluate.report import flat_metrics

    labels = [o["anomaly"] for o in objects]
    cats = [o["category"] for o in objects]
    overall: dict[str, Any] = {"object": {}}
    per_class: dict[str, dict[str, Any]] = defaultdict(dict)
    for how in ("max", "mean"):
        scores = [o[f"score_{how}"] for o in objects]
        macro, classes = M.macro_image(scores, labels, cats)
        expert, _ = M.macro_binary([s >= threshold for s in scores], labels, cats)
        overall["object"][how] = {"image_auroc": macro.get("image_auroc"), "image_f1_max": macro.get("image_f1_max"),
                                  "expert_accuracy": expert.get("accuracy"), "expert_f1": expert.get("f1")}
        for cat, values in classes.items():
            per_class[cat][f"object.{how}.image_auroc"] = values.get("image_auroc")
    answered = [i for i, o in enumerate(objects) if o["parsed"]]
    if answered:
        macro, classes = M.macro_binary([objects[i]["parsed"] == "yes" for i in answered],
                                        [labels[i] for i in answered], [cats[i] for i in answered])
        overall["object"]["detection"] = {f"macro_{k}": v for k, v in macro.items()}
        for cat, values in classes.items():
            per_class[cat]["object.detection.f1"] = values.get("f1")
    counts = {"object": {"count": len(objects), "anomalous": sum(labels), "answered": len(answered)}}
    return flat_metrics(overall, dict(per_class), counts)


def multiview_reasoning(predictor: PredictorLike, items: list[dict[str, Any]], frame: pd.DataFrame, params: Params,
                        workspace: Path, out: Path, similarity: Any | None) -> dict[str, Any]:
    """Ask each reasoning item's questions with all views of its object in one conversation; score like VisA-D&R.

    An item names its views in ``files`` / ``images`` (a list) or names one view in ``file``; a single view is
    widened to every view of its object (same ``group`` in the manifest).
    """
    from anomaly_ov.evaluate import reasoning
    from anomaly_ov.evaluate.detection import load_image
    from anomaly_ov.evaluate.report import REASONING_COLUMNS, flat_metrics, write_table

    by_file: dict[str, list[str]] = {}
    for group, rows in frame.groupby("group"):
        if not group:
            continue
        rows = rows.sort_values("view", key=lambda s: s.map(lambda v: int(v) if str(v).isdigit() else 0))
        files = [(Path(str(r["root"])) / r["image_path"]).as_posix() for _, r in rows.iterrows()]
        for f in files:
            by_file[f] = files
    conversations: dict[tuple[str, ...], dict[str, Any]] = {}
    for item in items:
        listed = item.get("files") or (item["file"] if isinstance(item["file"], list) else None)
        views = list(listed) if listed else by_file.get(Path(str(item["file"])).as_posix(), [str(item["file"])])
        conversations.setdefault(tuple(views), item)  # one conversation per object, from its first item's references
    records: list[dict[str, Any]] = []
    asked = list(conversations.items())
    step = params.evaluate.batch_size
    for start in range(0, len(asked), step):  # batch_size objects' views loaded and asked together
        chunk = asked[start:start + step]
        dialogues = [([load_image(v, workspace) for v in object_views], item["questions"])
                     for object_views, item in chunk]
        replies = reasoning.ask_in_turns(predictor, dialogues, params.evaluate.max_new_tokens, step)
        for (object_views, item), answers in zip(chunk, replies, strict=True):
            for turn, (question, reference, kind, answer) in enumerate(
                    zip(item["questions"], item["answers"], item["kinds"], answers, strict=True)):
                records.append({"file": str(object_views[0]), "category": item["category"],
                                "defect_type": item.get("defect_type", ""), "turn": turn, "kind": kind,
                                "question": question, "reference": reference, "answer": answer})
    if not records:
        return {}
    if similarity is None:
        similarity = reasoning.SentenceSimilarity(params.evaluate.sbert_model)
    judge = None
    if params.evaluate.judge.enabled:
        from anomaly_ov.evaluate.judge import Judge

        judge = Judge(params.evaluate.judge)
    result = reasoning.score_records(records, similarity, judge)
    write_table(out / "reasoning.parquet", result.records, REASONING_COLUMNS)
    overall, per_class = reasoning.reasoning_metrics(result, params.evaluate.judge.enabled)
    return flat_metrics({"object": {"reasoning": overall}},
                        {c: {"object.reasoning": v} for c, v in per_class.items()})


# ------------------------------------------------------------------------------------------------ figures
def medical_figures(frame: pd.DataFrame, predictions: Path, workspace: Path, out: Path, threshold: float,
                    per_category: int = 4) -> list[Path]:
    """Per category: slices with the ground-truth mask outlined, titled with the model's score."""
    import numpy as np
    import pandas as pd

    from anomaly_ov.evaluate.detection import load_image, load_mask
    from anomaly_ov.io import atomic_dir

    scores = _scores_of(predictions)
    tests = frame[frame["split"] != "train"]
    written = []
    with atomic_dir(out) as tmp:
        for cat, rows in tests.groupby("category"):
            picked = pd.concat([rows[rows["label"] == "normal"].head(per_category // 2),
                                rows[rows["label"] == "anomaly"].head(per_category - per_category // 2)])
            panels = []
            for row in picked.to_dict("records"):
                item = test_item(row, workspace)
                image = np.asarray(load_image(item["file"], workspace).convert("RGB"))
                mask = load_mask(item["mask"], image.shape[0], workspace) if item["mask"] else None
                score = scores.get(item["file"])
                title = f"{row['label']}" + (f"  score {score:.2f}" if score is not None else "")
                if score is not None:
                    title += "  (flagged)" if score >= threshold else ""
                panels.append((image, mask, title))
            name = f"{_slug(str(cat))}_slices.png"
            _panel_figure(panels, tmp / name, f"{cat}: slices, ground truth outlined in red")
            written.append(out / name)
    return written


def view_ring_figures(objects: list[dict[str, Any]], workspace: Path, out: Path, per_category: int = 2
                      ) -> list[Path]:
    """Per category: the camera ring of a few objects (anomalous first), masks outlined, view scores in titles."""
    import numpy as np

    from anomaly_ov.evaluate.detection import load_image, load_mask
    from anomaly_ov.io import atomic_dir

    by_cat: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for obj in sorted(objects, key=lambda o: (not o["anomaly"], o["group"])):
        if len(by_cat[obj["category"]]) < per_category:
            by_cat[obj["category"]].append(obj)
    written = []
    with atomic_dir(out) as tmp:
        for cat, objs in sorted(by_cat.items()):
            rows = []
            for obj in objs:
                panels = []
                for k, (file, mask_file, score) in enumerate(zip(obj["views"], obj["masks"], obj["view_scores"],
                                                                 strict=True)):
                    image = np.asarray(load_image(file, workspace).convert("RGB"))
                    mask = load_mask(mask_file, image.shape[0], workspace) if mask_file else None
                    panels.append((image, mask, f"view {k}  score {score:.2f}"))
                rows.append((panels, f"{'anomalous' if obj['anomaly'] else 'normal'} object: max "
                                     f"{obj['score_max']:.2f}, mean {obj['score_mean']:.2f}, answer "
                                     f"{obj['parsed'] or '-'}"))
            name = f"{_slug(cat)}_view_ring.png"
            _ring_figure(rows, tmp / name, f"{cat}: camera ring, rendered masks outlined in red")
            written.append(out / name)
    return written


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text) or "x"


def _draw(ax: Any, image: Any, mask: Any, title: str) -> None:
    ax.imshow(image)
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors="red", linewidths=1.0)
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def _panel_figure(panels: list[tuple[Any, Any, str]], path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    n = max(len(panels), 1)
    fig = Figure(figsize=(2.2 * n, 2.6))
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (image, mask, label) in zip(axes, panels, strict=False):
        _draw(ax, image, mask, label)
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def _ring_figure(rows: list[tuple[list[tuple[Any, Any, str]], str]], path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    n_rows = max(len(rows), 1)
    n_cols = max((len(p) for p, _ in rows), default=1)
    fig = Figure(figsize=(2.2 * n_cols, 2.5 * n_rows + 0.4))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, (panels, label) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            if c < len(panels):
                _draw(ax, *panels[c])
            else:
                ax.axis("off")
        axes[r][0].text(0, -0.25, label, transform=axes[r][0].transAxes, fontsize=7)
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """The stage's short summary: headline numbers and timings (the full report is the JSON file)."""
    keys = ("zero_shot.image_auroc", "zero_shot.pixel_auroc", "zero_shot.aupro", "detection.macro_f1",
            "detection.macro_accuracy", "reasoning.low_level.rouge_l", "reasoning.complex.sbert",
            "view.zero_shot.image_auroc", "view.zero_shot.pixel_auroc", "view.zero_shot.aupro",
            "object.max.image_auroc", "object.mean.image_auroc", "object.detection.macro_f1",
            "object.reasoning.low_level.rouge_l", "seconds.total", "data.images", "data.views", "data.objects")
    return {k: report[k] for k in keys if report.get(k) is not None}
