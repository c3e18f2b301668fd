"""The evaluate stage for real: tiny random Anomaly-OV saved to disk, benchmark files, MLflow on SQLite."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _bench(ws: Path, size: int = 48) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    test, dr = [], []
    for cat in ("pcb", "cap"):
        for i in range(4):
            anomaly = i >= 2
            img = (rng.random((size, size, 3)) * 120).astype(np.uint8)
            rel = f"data/raw/{cat}/{i}.png"
            mask_rel = ""
            if anomaly:
                img[10:20, 12:22] = 240
                mask = np.zeros((size, size), np.uint8)
                mask[10:20, 12:22] = 255
                mask_rel = f"data/raw/{cat}/{i}_mask.png"
                (ws / mask_rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(ws / mask_rel)
            (ws / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(ws / rel)
            test.append({"image": f"Synth/{cat}/{i}.png", "anomaly": anomaly, "file": rel, "mask": mask_rel,
                         "category": cat})
            if anomaly and cat == "pcb":
                dr.append({"image": f"Synth/{cat}/{i}.png", "file": rel, "mask": mask_rel, "category": cat,
                           "defect_type": "stain", "questions": ["What is the defect?", "Why might it happen?"],
                           "answers": ["A bright stain near the top.", "Contamination during handling."],
                           "kinds": ["low_level", "complex"]})
    (ws / "data/bench").mkdir(parents=True, exist_ok=True)
    (ws / "data/bench/test_data.json").write_text(json.dumps(test))
    (ws / "data/bench/visa_dr.json").write_text(json.dumps(dr))


def test_evaluate_stage_with_the_real_tiny_model(tmp_path, monkeypatch, mlflow_store):
    import mlflow
    import torch

    from anomaly_ov.config import load_params
    from anomaly_ov.model.presets import build_model, build_processor, save_pretrained
    from anomaly_ov.model.tokenizer import train_tokenizer
    from anomaly_ov.stages import run_stage

    torch.manual_seed(0)
    ws = tmp_path / "ws"
    ws.mkdir()
    mlflow_store(ws)
    monkeypatch.chdir(ws)
    params = load_params(None, ["evaluate.resolution=32", "evaluate.max_new_tokens=4",
                                "evaluate.reasoning_max_new_tokens=6", "evaluate.figures_per_kind=1",
                                "evaluate.device=cpu"])
    tokenizer = train_tokenizer(["Yes, there is a defect.", "No, the object looks normal."] * 4)
    model = build_model(params, tokenizer)
    save_pretrained(model, build_processor(params, tokenizer), ws / params.train.instruct.output_dir)
    _bench(ws)

    summary = run_stage("evaluate", params, ws)

    metrics = json.loads((ws / "reports/metrics.json").read_text())
    assert summary["images"] == metrics["counts.images"] == 8
    assert metrics["counts.answered"] == 8  # the real model answered every detection prompt
    for key in ("zero_shot.image_auroc", "zero_shot.pixel_auroc", "zero_shot.aupro", "reasoning.complex.sbert"):
        assert metrics[key] is not None and 0.0 <= metrics[key] <= 1.0, key
    assert (ws / "reports/predictions.parquet").exists() and (ws / "reports/reasoning.parquet").exists()
    assert (ws / "reports/curves/roc.csv").exists() and (ws / "reports/figures/confusion.png").exists()
    assert "all-MiniLM-L6-v2" in (ws / "reports/evaluation.md").read_text()

    mlflow.set_tracking_uri(f"sqlite:///{ws / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=[params.tracking.experiment], output_format="list")[0]
    assert run.data.metrics["zero_shot.image_auroc"] == pytest.approx(metrics["zero_shot.image_auroc"], abs=1e-6)
    assert "evaluate.images" in run.data.metrics
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"metrics.json", "evaluation.md", "figures", "curves"} <= artifacts
