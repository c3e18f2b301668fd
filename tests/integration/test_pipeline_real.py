"""The real pipeline (real dvc.yaml and stages, tiny params) under Prefect, MLflow and DVC; one run shared.

The module fixture copies the project's dvc.yaml, params.yaml (+ a tiny override: few images, one epoch, no
extensions) and the `anomaly_ov` sources into a temporary git repository and runs the pipeline flow once; the
tests inspect what that run left: the registered version, its aliases and tags, the nested MLflow runs, the
pyfunc, the CLI, and a re-run that DVC skips entirely.

`mlflow models serve -m models:/NAME@production` over HTTP (the README's command) is test_serving_http.py's: there
the model is logged and registered by the same ``registry.log_model`` as the register stage, and the loading of
this pipeline's registered model by that URI is test_registered_pyfunc_loads_and_predicts here.
"""

from __future__ import annotations

import json
import os
import time

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from workspaces import make_real_workspace, read_json

from anomaly_ov.tracking import numeric_metrics

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def real_run(prefect_server, tmp_path_factory):
    from flows.pipeline import pipeline

    ws = make_real_workspace(tmp_path_factory.mktemp("real") / "ws")
    started = time.perf_counter()
    result = pipeline(workspace=str(ws))
    print(f"\nreal pipeline, first run: {time.perf_counter() - started:.1f} s")
    uri = f"sqlite:///{ws / 'mlflow.db'}"
    return ws, result, MlflowClient(uri), uri


def eval_image(ws) -> str:
    frame = pd.read_parquet(ws / "data/manifest.parquet")
    row = frame[(frame.role == "eval") & (frame.label == "anomaly")].iloc[0]
    from anomaly_ov.data.manifest import resolve

    return str(resolve(row, "image_path", ws))


@pytest.mark.timeout(900)  # includes the module fixture: the whole real pipeline, once
def test_pipeline_registers_a_version_with_aliases_and_tags(real_run):
    ws, result, client, _ = real_run
    assert [s["stage"] for s in result["stages"]] == [
        "sources", "prepare", "validate", "synthesize", "pretrain_tower", "train_expert", "train_instruct", "evaluate",
        "register"]
    report = result["register"]
    name, version = report["model_name"], report["version"]
    mv = client.get_model_version(name, version)
    assert "candidate" in mv.aliases and report["verdict"] == "production"  # first version, thresholds empty
    assert set(mv.aliases) == {"candidate", "staging", "production"}
    metrics = numeric_metrics(read_json(ws / "reports/metrics.json"))
    assert float(mv.tags["metric.zero_shot.image_auroc"]) == pytest.approx(metrics["zero_shot.image_auroc"], abs=1e-5)
    assert mv.tags["gate.verdict"] == "production" and mv.tags["gate.reason"]
    assert len(mv.tags["lineage.git_commit"]) == 40 and "lineage.dvc.models/anomaly_ov" in mv.tags

    parent = client.get_run(result["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and "zero_shot.image_auroc" in parent.data.metrics
    assert parent.data.tags["registry.version"] == str(version)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.tags["stage"] for r in children) == sorted(s["stage"] for s in result["stages"])


def test_registered_pyfunc_loads_and_predicts(real_run):
    ws, _, _, uri = real_run
    mlflow.set_tracking_uri(uri)
    name = read_json(ws / "reports/register.json")["model_name"]
    model = mlflow.pyfunc.load_model(f"models:/{name}@production")
    image = eval_image(ws)
    from anomaly_ov.registry import encode_image

    out = model.predict(pd.DataFrame({"image": [encode_image(image)]}), params={"return_map": True})
    assert list(out.columns) == ["score", "label", "answer", "anomaly_map"]
    assert 0.0 <= out.score[0] <= 1.0 and out.label[0] in ("anomaly", "normal")
    from PIL import Image

    with Image.open(image) as img:
        assert (len(out.anomaly_map[0]), len(out.anomaly_map[0][0])) == (img.height, img.width)


def test_predict_cli_writes_json_and_overlay(real_run, tmp_path):
    from typer.testing import CliRunner

    from anomaly_ov.cli import app

    ws = real_run[0]
    image = eval_image(ws)
    done = CliRunner().invoke(app, ["model", "predict", image, "--overlay", str(tmp_path), "-w", str(ws)])
    assert done.exit_code == 0, done.output
    rows = json.loads(done.stdout)
    assert rows[0]["image"] == image and rows[0]["label"] in ("anomaly", "normal")
    assert os.path.getsize(rows[0]["overlay"]) > 0


def test_unchanged_rerun_is_skipped_and_registers_nothing(real_run):
    from flows.pipeline import pipeline

    ws, first, client, _ = real_run
    started = time.perf_counter()
    again = pipeline(workspace=str(ws))
    print(f"\nreal pipeline, unchanged re-run: {time.perf_counter() - started:.1f} s")
    assert [s["stage"] for s in again["stages"] if not s["skipped"]] == ["sources"]  # always re-hashes the data
    name = first["register"]["model_name"]
    versions = [str(v.version) for v in client.search_model_versions(f"name='{name}'")]
    assert versions == [str(first["register"]["version"])]
