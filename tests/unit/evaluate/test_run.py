"""evaluate_dataset end to end with a fake predictor: reports, flat metrics, curves and figures on disk."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from anomaly_ov.config import Params
from anomaly_ov.evaluate.run import OutputPaths, evaluate_dataset


def _params(**evaluate):
    base = {"resolution": 32, "figures_per_kind": 2}
    base.update(evaluate)
    return Params().model_copy(update={"evaluate": Params().evaluate.model_copy(update=base)})


def test_evaluate_dataset_writes_every_report(benchmark, fake_predictor, word_overlap, tmp_path):
    workspace, test, dr = benchmark
    out = tmp_path / "out"
    flat = evaluate_dataset(fake_predictor, test, dr[:2], _params(), out, workspace, similarity=word_overlap)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == pytest.approx(flat, nan_ok=True)
    for key in ("detection.macro_accuracy", "detection.macro_precision", "detection.macro_recall",
                "detection.macro_f1", "zero_shot.image_auroc", "zero_shot.image_f1_max", "zero_shot.pixel_auroc",
                "zero_shot.pixel_f1_max", "zero_shot.aupro", "expert.accuracy", "expert.f1",
                "reasoning.low_level.rouge_l", "reasoning.low_level.sbert", "reasoning.complex.sbert",
                "per_class.pcb.image_auroc", "per_class.cap.detection.f1", "eval_resolution", "counts.images"):
        assert key in metrics, key
    assert all(not isinstance(v, dict | list) for v in metrics.values())  # flat, DVC-diffable
    assert metrics["eval_resolution"] == 32 and metrics["counts.images"] == 12
    assert metrics["reasoning.count.low_level"] == 4 and metrics["reasoning.count.complex"] == 2
    # multi-turn: the second question sees the model's own first answer as history; the two items are asked
    # together (evaluate.batch_size 4), one batched call per turn
    assert fake_predictor.batches[-3:] == [2, 2, 2]
    assert [len(h) for _, h, _ in fake_predictor.chats[-6:]] == [0, 0, 1, 1, 2, 2]
    assert fake_predictor.chats[-4][1][0][1].startswith("A bright square scratch")

    preds = pd.read_parquet(out / "predictions.parquet")
    assert len(preds) == 12
    assert {"file", "category", "label", "score", "expert_label", "answer", "parsed", "mask"} <= set(preds.columns)
    assert set(preds["parsed"]) == {"yes", "no"}
    reasoning = pd.read_parquet(out / "reasoning.parquet")
    assert len(reasoning) == 6 and reasoning.loc[reasoning["kind"] == "complex", "rouge_l"].isna().all()

    roc = pd.read_csv(out / "curves" / "roc.csv")
    assert list(roc.columns) == ["fpr", "tpr", "category"] and set(roc["category"]) == {"pcb", "cap"}
    assert list(pd.read_csv(out / "curves" / "pro.csv").columns) == ["fpr", "pro", "category"]

    md = (out / "evaluation.md").read_text()
    assert "not comparable" in md and "0.79" in md and "91.1" in md and "| pcb |" in md

    pngs = sorted((out / "figures").rglob("*.png"))
    names = {p.relative_to(out / "figures").as_posix() for p in pngs}
    assert {"confusion.png", "roc_all.png", "pro_all.png", "roc/pcb.png", "pro/cap.png"} <= names
    assert any(n.startswith("samples/pcb/TP_") for n in names) and any(n.startswith("samples/pcb/FP_") for n in names)
    for png in pngs:
        with Image.open(png) as img:
            arr = np.asarray(img.convert("L"), dtype=np.float32)
        assert img.width >= 200 and img.height >= 200, png
        assert arr.std() > 5, f"{png} looks blank"


def test_single_label_class_is_null_in_metrics_json(benchmark, fake_predictor, tmp_path):
    workspace, test, _ = benchmark
    test = [t for t in test if not (t["category"] == "cap" and t["anomaly"])]  # cap: normal images only
    out = tmp_path / "out"
    evaluate_dataset(fake_predictor, test, None, _params(), out, workspace)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["per_class.cap.image_auroc"] is None
    assert metrics["per_class.cap.aupro"] is None
    assert metrics["zero_shot.image_auroc"] == pytest.approx(metrics["per_class.pcb.image_auroc"])
    assert "missing" in (out / "evaluation.md").read_text()
    assert not any(k.startswith("reasoning.") for k in metrics)


def test_stage_paths_come_from_params(tmp_path):
    paths = OutputPaths.from_params(Params(), tmp_path)
    assert paths.metrics == tmp_path / "reports/metrics.json"
    assert paths.curves_dir == tmp_path / "reports/curves"
    assert paths.reasoning == tmp_path / "reports/reasoning.parquet"


def test_missing_image_names_the_file(benchmark, fake_predictor, tmp_path):
    workspace, test, _ = benchmark
    test[0]["file"] = "images/nowhere.png"
    with pytest.raises(ValueError, match="nowhere.png: file not found"):
        evaluate_dataset(fake_predictor, test, None, _params(), tmp_path / "out", workspace)
    assert not (tmp_path / "out" / "metrics.json").exists()


def _stage_workspace(tmp_path, test, dr):
    bench = tmp_path / "data" / "bench"
    bench.mkdir(parents=True)
    (bench / "test_data.json").write_text(json.dumps(test))
    (bench / "visa_dr.json").write_text(json.dumps(dr))
    return tmp_path


def test_run_evaluate_stage_uses_params_paths(benchmark, fake_predictor, word_overlap, monkeypatch):
    import anomaly_ov.evaluate.reasoning as reasoning
    import anomaly_ov.evaluate.run as run

    workspace, test, dr = benchmark
    _stage_workspace(workspace, test, dr)
    (workspace / "models/anomaly_ov").mkdir(parents=True)  # the stage checks the folder before loading from it
    (workspace / "models/anomaly_ov/config.json").write_text("{}")
    seen = []
    monkeypatch.setattr(run, "load_predictor", lambda path, device="auto": seen.append(path) or fake_predictor)
    monkeypatch.setattr(reasoning, "SentenceSimilarity", lambda name: word_overlap)
    params = _params(max_reasoning_items=1, max_images=8)
    summary = run.run_evaluate(params, workspace)
    assert seen == [str((workspace / "models/anomaly_ov").absolute())]  # once, for detection and reasoning
    assert summary["images"] == 8 and "zero_shot.image_auroc" in summary
    metrics = json.loads((workspace / "reports/metrics.json").read_text())
    assert metrics["reasoning.count.items"] == 1 and metrics["counts.images"] == 8
    from anomaly_ov.fingerprint import dir_sha256

    assert metrics["provenance.model_sha256"] == dir_sha256(workspace / "models/anomaly_ov")
    first_bench = metrics["provenance.benchmark_sha256"]
    run.run_evaluate(_params(max_reasoning_items=1, max_images=6), workspace)  # another benchmark: another hash
    assert json.loads((workspace / "reports/metrics.json").read_text())["provenance.benchmark_sha256"] != first_bench
    for rel in ("reports/predictions.parquet", "reports/reasoning.parquet", "reports/evaluation.md",
                "reports/curves/roc.csv", "reports/figures/confusion.png"):
        assert (workspace / rel).exists(), rel


def test_run_evaluate_stage_explains_missing_inputs(tmp_path):
    from anomaly_ov.evaluate.run import run_evaluate
    from anomaly_ov.stages import StageFailed

    with pytest.raises(StageFailed, match="test_data.json not found; run `anomaly-ov stage synthesize`"):
        run_evaluate(_params(), tmp_path)
    (tmp_path / "data/bench").mkdir(parents=True)
    (tmp_path / "data/bench/test_data.json").write_text("[]")
    with pytest.raises(StageFailed, match="evaluate.reasoning=false"):
        run_evaluate(_params(), tmp_path)
