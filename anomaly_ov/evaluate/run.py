"""The ``evaluate`` stage and the reusable :func:`evaluate_dataset` (CLI, medical and 3D extensions use it too).

Inputs: the benchmark files written by ``synthesize`` (``<instruct.bench_dir>/test_data.json`` and
``visa_dr.json``) and the model saved by ``train_instruct`` (``train.instruct.output_dir``). Outputs (paths from
``params.evaluate``, or under ``out_dir`` when one is given): ``metrics.json`` (flat keys), ``predictions.parquet``,
``reasoning.parquet`` (when reasoning runs), ``evaluation.md``, ``figures/`` and ``curves/{roc,pro,pr}.csv``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_ov.console import ProgressBar
from anomaly_ov.errors import InputError, StageFailed
from anomaly_ov.io import MissingFile
from anomaly_ov.paths import in_workspace

if TYPE_CHECKING:
    from anomaly_ov.config import ParallelParams, Params
    from anomaly_ov.evaluate.detection import PredictorLike, PredictorSpec

log = logging.getLogger(__name__)

TEST_DATA = "test_data.json"
REASONING_DATA = "visa_dr.json"


@dataclass(frozen=True)
class OutputPaths:
    metrics: Path
    predictions: Path
    reasoning: Path
    report_md: Path
    figures_dir: Path
    curves_dir: Path

    @classmethod
    def from_params(cls, params: Params, workspace: str | Path, out_dir: str | Path | None = None) -> OutputPaths:
        """The stage's paths from ``params.evaluate``; with ``out_dir``, the same file names under that folder."""
        cfg = params.evaluate
        if out_dir is not None:
            out = Path(out_dir)
            return cls(out / "metrics.json", out / "predictions.parquet", out / "reasoning.parquet",
                       out / "evaluation.md", out / "figures", out / "curves")
        predictions = in_workspace(workspace, cfg.predictions)
        return cls(
            in_workspace(workspace, cfg.metrics),
            predictions,
            predictions.with_name("reasoning.parquet"),
            in_workspace(workspace, cfg.report_md),
            in_workspace(workspace, cfg.figures_dir),
            in_workspace(workspace, cfg.curves_dir),
        )


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when available, else mps, else cpu."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def existing_model_dir(path: Path) -> Path:
    """``path`` when it exists; else :class:`~anomaly_ov.io.MissingFile` naming the stage that writes it."""
    if not path.exists():
        raise MissingFile(f"{path}: model directory not found; run `anomaly-ov stage train_instruct` first")
    return path


def load_predictor(model: str | Path | Any, device: str = "auto") -> PredictorLike:
    """The real model behind the evaluation: ``anomaly_ov.model.predict.Predictor`` from a saved directory."""
    from anomaly_ov.model.predict import Predictor

    if isinstance(model, str | Path):
        model = str(existing_model_dir(Path(model)))
    return Predictor.from_pretrained(model, device=resolve_device(device))


def evaluate_dataset(
    predictor: PredictorLike | None,
    test_items: list[dict[str, Any]],
    reasoning_items: list[dict[str, Any]] | None,
    params: Params,
    out_dir: str | Path | None = None,
    workspace: str | Path = ".",
    info: dict[str, Any] | None = None,
    similarity: Any | None = None,
    log_to_mlflow: bool = True,
    provenance: dict[str, str] | None = None,
    predictor_spec: PredictorSpec | None = None,
) -> dict[str, Any]:
    """Run detection (and reasoning when items are given) and write every report; return the flat metrics.

    ``test_items`` follow ``test_data.json`` (``file``, ``anomaly``, ``mask``, ``category``, ``image``);
    ``reasoning_items`` follow ``visa_dr.json``. Paths inside items are absolute or workspace-relative.
    ``out_dir`` None writes to the paths in ``params.evaluate``. ``similarity`` (tests) replaces Sentence-BERT.
    ``provenance`` (string keys such as ``provenance.model_sha256``) is written into metrics.json beside the numbers
    so that the registry gate can tell which model and benchmark they describe. ``predictor_spec`` (the saved
    model and device) lets ``params.parallel`` shard the detection over Dask workers, each loading the model once
    (:func:`parallel_settings`); without it, or with ``parallel.workers: 1``, ``predictor`` scores in this process.
    ``predictor`` None: this process loads the model from ``predictor_spec`` only when it scores itself (detection
    in process, reasoning), so a fanned-out detection does not keep a copy here beside the workers' copies.
    """
    from anomaly_ov import tracking
    from anomaly_ov.evaluate import detection, figures, reasoning, report

    cfg = params.evaluate
    workspace = Path(workspace)
    paths = OutputPaths.from_params(params, workspace, out_dir)
    info = dict(info or {})
    if not test_items:
        raise InputError("no test items to evaluate (the benchmark file or the dataset is empty)")
    test_items = [detection.normalise_test_item(item, i) for i, item in enumerate(test_items)]
    from anomaly_ov.parallel import fanout

    def here() -> PredictorLike:
        """The predictor of this process, loaded from ``predictor_spec`` the first time it is needed."""
        nonlocal predictor
        if predictor is None:
            if predictor_spec is None:
                raise ValueError("evaluate_dataset needs a predictor or a predictor_spec to load one from")
            predictor = predictor_spec.load()
        return predictor

    settings = parallel_settings(params, predictor_spec)
    with fanout(settings, "evaluate") as fan, \
            ProgressBar("evaluate: detection", len(test_items), unit="images") as bar:
        scorer = None if detection.scores_in_workers(fan, predictor_spec) else here()
        started = time.perf_counter()  # the detection itself (not loading the model in this process)
        det = detection.run_detection(scorer, test_items, cfg, workspace, bar.update,
                                      max_side=params.validation.max_image_side, fan=fan, spec=predictor_spec)
    detect_seconds = time.perf_counter() - started
    overall, per_class = detection.detection_metrics(det, cfg)

    reason = None
    if reasoning_items:
        reasoning_items = [reasoning.normalise_reasoning_item(item, i) for i, item in enumerate(reasoning_items)]
        with ProgressBar("evaluate: reasoning", len(reasoning_items), unit="images") as bar:
            reason = reasoning.run_reasoning(here(), reasoning_items, cfg, workspace, similarity, bar.update)
        r_overall, r_classes = reasoning.reasoning_metrics(reason, cfg.judge.enabled)
        overall["reasoning"] = r_overall
        for cls, values in r_classes.items():
            per_class.setdefault(cls, {})["reasoning"] = values
        info["sbert_model"] = reason.sbert_name

    labels = det.column("anomaly")
    counts = {
        "images": len(labels),
        "anomalous": sum(bool(v) for v in labels),
        "normal": sum(not v for v in labels),
        "categories": len(set(det.column("category"))),
        "answered": sum(bool(p) for p in det.column("parsed")),
        "pixel_skipped": det.skipped_pixel_images,
    }
    extra = {
        "eval_resolution": cfg.resolution,
        "pixel_exact": int(det.exact_pixels),
        "counts": counts,
        "speed": {"detection_images_per_s": len(labels) / detect_seconds if detect_seconds > 0 else None},
    }
    flat = report.flat_metrics(overall, per_class, extra)
    info.setdefault("threshold", cfg.threshold)
    info.setdefault("pixel_table_limit", cfg.exact_pixel_limit)

    curve_rows = detection.curves(det)
    report.write_metrics(paths.metrics, {**flat, **(provenance or {})})
    report.write_table(paths.predictions, det.records, report.PREDICTION_COLUMNS)
    if reason is not None:
        report.write_table(paths.reasoning, reason.records, report.REASONING_COLUMNS)
    report.write_curves(paths.curves_dir, curve_rows)
    figure_files = figures.write_figures(det, curve_rows, paths.figures_dir, cfg.threshold)
    report.write_markdown(paths.report_md, flat, info, figure_files)

    if log_to_mlflow:
        tracking.log_metrics(flat)
        tracking.set_tags({k: v for k, v in info.items() if isinstance(v, str | int | float)})
        tracking.log_artifact(paths.metrics)
        tracking.log_artifact(paths.report_md)
        tracking.log_artifact(paths.predictions)
        tracking.log_artifact(paths.figures_dir, "figures")
        tracking.log_artifact(paths.curves_dir, "curves")
    log.info("evaluation written to %s (%d figures)", paths.metrics.parent, len(figure_files))
    return flat


def parallel_settings(params: Params, spec: PredictorSpec | None) -> ParallelParams:
    """``params.parallel`` for the detection: no fan-out without a ``spec`` (nothing for workers to load); on a
    local cluster with several GPUs and ``one_gpu_per_worker``, one worker per GPU (each scores on its own)."""
    settings = params.parallel
    if spec is None:
        return settings.model_copy(update={"workers": 1, "address": None})
    if settings.address is None and settings.workers > 1 and settings.one_gpu_per_worker \
            and resolve_device(spec.device) == "cuda":
        import torch

        if torch.cuda.device_count() > 1:
            return settings.model_copy(update={"workers": torch.cuda.device_count()})
    return settings


def run_evaluate(params: Params, workspace: Path) -> dict[str, Any]:
    """Stage ``evaluate``: the trained model on the zero-shot benchmark files; returns the headline numbers."""
    from anomaly_ov.evaluate.detection import load_test_items
    from anomaly_ov.evaluate.reasoning import load_reasoning_items
    from anomaly_ov.evaluate.report import HEADLINE
    from anomaly_ov.fingerprint import dir_sha256, items_sha256

    cfg = params.evaluate
    bench = in_workspace(workspace, params.instruct.bench_dir)
    test_file = in_workspace(workspace, cfg.test_data) if cfg.test_data else bench / TEST_DATA
    data_root = in_workspace(workspace, cfg.data_root).absolute() if cfg.data_root else None
    if not test_file.exists():
        hint = "check evaluate.test_data" if cfg.test_data else "run `anomaly-ov stage synthesize` first"
        raise StageFailed("evaluate", f"{test_file} not found; {hint}")
    try:
        test_items = load_test_items(test_file, cfg.max_images, data_root, cfg.allow_external_paths)
    except ValueError as exc:
        raise StageFailed("evaluate", str(exc)) from None
    reasoning_items = None
    if cfg.reasoning:
        reasoning_file = in_workspace(workspace, cfg.reasoning_data) if cfg.reasoning_data else bench / REASONING_DATA
        if not reasoning_file.exists():
            raise StageFailed(
                "evaluate",
                f"{reasoning_file} not found; run `anomaly-ov stage synthesize`, check evaluate.reasoning_data, "
                "or set evaluate.reasoning=false",
            )
        try:
            reasoning_items = load_reasoning_items(reasoning_file, cfg.max_reasoning_items, data_root,
                                                   cfg.allow_external_paths)
        except ValueError as exc:
            raise StageFailed("evaluate", str(exc)) from None
    from anomaly_ov.evaluate.detection import PredictorSpec

    model_dir = existing_model_dir(in_workspace(workspace, params.train.instruct.output_dir))
    model_sha256 = dir_sha256(model_dir)
    spec = PredictorSpec(str(model_dir.absolute()), cfg.device, params.parallel.one_gpu_per_worker, model_sha256)
    info = {"dataset": cfg.test_data or f"{params.instruct.bench_dir}/{TEST_DATA}",
            "model": params.train.instruct.output_dir}
    provenance = {"provenance.model_sha256": model_sha256,
                  "provenance.benchmark_sha256": items_sha256({"test": test_items, "reasoning": reasoning_items})}
    # the model is loaded from spec where it scores: here, or only in the workers when the detection fans out
    flat = evaluate_dataset(None, test_items, reasoning_items, params, None, workspace, info,
                            provenance=provenance, predictor_spec=spec)
    summary = {k: flat[k] for k in HEADLINE if flat.get(k) is not None}
    summary["images"] = flat["counts.images"]
    for key in ("reasoning.low_level.rouge_l", "reasoning.low_level.sbert", "reasoning.complex.sbert"):
        if flat.get(key) is not None:
            summary[key] = flat[key]
    return summary
