"""extend_medical and extend_3d end to end through ``stages.run_stage`` with a tiny random Anomaly-OV model.

The model is built from the tiny preset (random weights) and saved where ``train_instruct`` would leave it; it
does not have to be good, only to run: the test checks the wiring (data, instruct + benchmark files, real
Predictor on single images and on multi-view conversations, Sentence-BERT scoring, reports, figures, MLflow).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from anomaly_ov.config import load_params

pytestmark = pytest.mark.integration

TINY = [
    "evaluate.max_reasoning_items=1", "evaluate.figures_per_kind=0", "evaluate.max_new_tokens=4",
    "evaluate.device=cpu", "extensions.medical.image_size=48", "extensions.medical.modalities=[brain_mri]",
    "extensions.medical.normal_per_modality=1", "extensions.medical.anomaly_per_modality=2",
    "extensions.threed.image_size=48", "extensions.threed.views=2", "extensions.threed.shapes=[box]",
    "extensions.threed.normal_per_shape=1", "extensions.threed.anomaly_per_shape=1",
    "extensions.threed.points_per_object=1500",
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, blank_mlflow_db: Path) -> Path:
    """A workspace holding a tiny random model at train.instruct.output_dir."""
    import torch

    from anomaly_ov.model.presets import build_model, build_processor, save_pretrained
    from anomaly_ov.model.tokenizer import train_tokenizer

    torch.manual_seed(0)
    ws = tmp_path_factory.mktemp("ext")
    shutil.copyfile(blank_mlflow_db, ws / "mlflow.db")  # a blank store (tests/conftest.py)
    params = load_params(None, TINY)
    tokenizer = train_tokenizer(())
    save_pretrained(build_model(params, tokenizer), build_processor(params, tokenizer),
                    ws / params.train.instruct.output_dir)
    return ws


def _defined(report: dict, key: str) -> None:
    """Every metric these tiny sets define (both labels present, masks, reasoning items) is a number in range:
    a null here would be a metric silently lost, not a missing class."""
    assert report.get(key) is not None, f"{key} is null or missing though the set defines it"
    low = -1.0 if key.endswith("sbert") else 0.0  # cosine similarity may be negative for a random model
    assert low <= report[key] <= 1.0, (key, report[key])


def test_extend_medical_and_3d_end_to_end(workspace):
    import mlflow

    from anomaly_ov.stages import run_stage

    params = load_params(None, TINY)
    medical = run_stage("extend_medical", params, workspace)
    threed = run_stage("extend_3d", params, workspace)

    report = json.loads((workspace / "reports/extensions/medical.json").read_text())
    for key in ("zero_shot.image_auroc", "zero_shot.pixel_auroc", "zero_shot.aupro", "detection.macro_f1",
                "per_class.brain_mri.image_auroc", "reasoning.low_level.rouge_l", "reasoning.complex.sbert"):
        _defined(report, key)
    assert report["counts.images"] == 3 and medical["seconds"] > 0

    report3 = json.loads((workspace / "reports/extensions/3d.json").read_text())
    for key in ("view.zero_shot.image_auroc", "view.zero_shot.pixel_auroc", "object.max.image_auroc",
                "object.mean.image_auroc", "object.detection.macro_accuracy", "object.reasoning.complex.sbert"):
        _defined(report3, key)
    assert report3["object.count"] == 2 and report3["object.answered"] == 2
    assert threed["data.objects"] == 4
    assert (workspace / "reports/extensions/figures/3d/box_view_ring.png").exists()
    assert (workspace / "reports/extensions/figures/medical/brain_mri_slices.png").exists()

    # Both stages logged into MLflow runs of their own, with the report's numbers.
    mlflow.set_tracking_uri(f"sqlite:///{workspace / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=[params.tracking.experiment])
    by_name = {r["tags.mlflow.runName"]: r for _, r in runs.iterrows()}
    assert {"extend_medical", "extend_3d"} <= set(by_name)
    assert "metrics.3d.object.count" in runs.columns
