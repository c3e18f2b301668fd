"""`anomaly-ov model evaluate PATH`: dataset reader -> test items -> reports, and models:/ URIs -> model directory."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from anomaly_ov.cli import app
from anomaly_ov.commands.evaluate import manifest_to_test_items, model_dir_from_uri
from anomaly_ov.config import Params


def _mvtec(root, cls="bottle", size=32, n=3):
    rng = np.random.default_rng(0)
    for split, kind in (("train", "good"), ("test", "good"), ("test", "crack")):
        (root / cls / split / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = (rng.random((size, size)) * 80).astype(np.uint8)
            if kind == "crack":
                img[10:16, 10:16] = 240
                mask = np.zeros((size, size), np.uint8)
                mask[10:16, 10:16] = 255
                (root / cls / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(root / cls / "ground_truth" / kind / f"{i:03d}_mask.png")
            Image.fromarray(np.stack([img] * 3, -1)).save(root / cls / split / kind / f"{i:03d}.png")
    return root


def test_evaluate_command_on_mvtec_layout(tmp_path, monkeypatch, fake_predictor):
    import anomaly_ov.evaluate.run as run
    from anomaly_ov.config import dump_params

    dump_params(Params(), tmp_path / "params.yaml")
    data = _mvtec(tmp_path / "mvtec")
    loaded = []
    monkeypatch.setattr(run, "load_predictor", lambda path, device="auto": loaded.append(path) or fake_predictor)
    out = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        ["model", "evaluate", str(data), "--format", "mvtec", "--model", "my_model", "--out", str(out),
         "--workspace", str(tmp_path), "--set", "tracking.enabled=false", "--set", "evaluate.resolution=16",
         "--set", "evaluate.figures_per_kind=1", "--json"],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["images"] == 6  # the test split only
    assert summary["zero_shot.image_auroc"] == pytest.approx(1.0)
    assert loaded == [tmp_path / "my_model"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["per_class.bottle.n_anomalous"] == 3 and metrics["eval_resolution"] == 16
    assert (out / "predictions.parquet").exists() and (out / "figures" / "confusion.png").exists()


def test_evaluate_command_explains_bad_input(tmp_path):
    from anomaly_ov.config import dump_params

    dump_params(Params(), tmp_path / "params.yaml")
    runner = CliRunner()
    result = runner.invoke(app, ["model", "evaluate", str(tmp_path), "--format", "nope", "--workspace", str(tmp_path)])
    assert result.exit_code == 2 and "nope" in result.output
    result = runner.invoke(app, ["model", "evaluate", str(tmp_path / "missing"), "--format", "mvtec",
                                 "--workspace", str(tmp_path), "--set", "tracking.enabled=false"])
    assert result.exit_code == 3 and "missing" in result.output  # InputError: the dataset folder


def test_manifest_to_test_items_prefers_test_split(tmp_path):
    from anomaly_ov.config import SourceParams
    from anomaly_ov.data.sources import read_source

    data = _mvtec(tmp_path / "d")
    frame = read_source(SourceParams(name="d", format="mvtec", path=str(data), role="eval"), tmp_path)
    items = manifest_to_test_items(frame, tmp_path)
    assert len(items) == 6 and sum(i["anomaly"] for i in items) == 3
    assert all((i["mask"] != "") == i["anomaly"] for i in items)
    assert items[0]["image"].startswith("d/bottle/")


@pytest.mark.slow
def test_model_dir_from_registry_uri(tmp_path, monkeypatch, mlflow_store):
    import mlflow

    monkeypatch.chdir(tmp_path)
    model_dir = tmp_path / "saved"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    params = Params()
    from anomaly_ov.tracking import configure

    mlflow_store(tmp_path)
    configure(params, tmp_path)

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), artifacts={"model_dir": str(model_dir)},
                                       pip_requirements=["mlflow"], registered_model_name="eval-test")
    client = mlflow.MlflowClient()
    client.set_registered_model_alias("eval-test", "production", info.registered_model_version)
    found = model_dir_from_uri("models:/eval-test@production", params, tmp_path, tmp_path / "dl")
    assert (found / "config.json").exists() and found.is_relative_to(tmp_path / "dl")
    with pytest.raises(ValueError, match="cannot download"):
        model_dir_from_uri("models:/no-such-model@production", params, tmp_path, tmp_path / "dl2")


def _evaluate_argv(data, out, tmp_path, *extra):
    return ["model", "evaluate", str(data), "--format", "mvtec", "--model", "m", "--out", str(out),
            "--workspace", str(tmp_path), "--set", "tracking.enabled=false", "--set", "evaluate.resolution=16",
            "--set", "evaluate.figures_per_kind=1", *extra]


def test_verbose_shows_evaluation_progress_and_quiet_does_not(tmp_path, monkeypatch, fake_predictor):
    """No log handler was configured, so the evaluation's progress lines were dropped; -v shows them."""
    import anomaly_ov.evaluate.run as run
    from anomaly_ov.config import dump_params
    from anomaly_ov.console import LOG_LEVEL_ENV

    monkeypatch.delenv(LOG_LEVEL_ENV, raising=False)
    dump_params(Params(), tmp_path / "params.yaml")
    data = _mvtec(tmp_path / "mvtec")
    monkeypatch.setattr(run, "load_predictor", lambda path, device="auto": fake_predictor)
    runner = CliRunner()
    loud = runner.invoke(app, ["-v", *_evaluate_argv(data, tmp_path / "a", tmp_path, "--json")])
    assert loud.exit_code == 0, loud.output
    assert "evaluate: detection: 6 / 6 images" in loud.stderr
    assert f"evaluation written to {tmp_path / 'a'}" in loud.stderr
    assert json.loads(loud.stdout)["images"] == 6, "--json: stdout holds the JSON only"
    monkeypatch.delenv(LOG_LEVEL_ENV)  # the -v run handed INFO down to its children through the environment
    quiet = runner.invoke(app, ["-q", *_evaluate_argv(data, tmp_path / "b", tmp_path)])
    assert quiet.exit_code == 0, quiet.output
    assert "evaluate: detection" not in quiet.stderr and "evaluation written" not in quiet.stderr
    assert "zero_shot.image_auroc" in quiet.stdout, "the table of headline numbers for people"


def test_score_histograms_are_written_and_every_figure_is_linked(tmp_path, monkeypatch, fake_predictor):
    import anomaly_ov.evaluate.run as run
    from anomaly_ov.config import dump_params

    dump_params(Params(), tmp_path / "params.yaml")
    data = _mvtec(tmp_path / "mvtec")
    monkeypatch.setattr(run, "load_predictor", lambda path, device="auto": fake_predictor)
    out = tmp_path / "report"
    result = CliRunner().invoke(app, _evaluate_argv(data, out, tmp_path, "--json"))
    assert result.exit_code == 0, result.output
    histogram = out / "figures" / "scores" / "bottle.png"
    assert histogram.exists() and Image.open(histogram).size[0] > 100
    markdown = (out / "evaluation.md").read_text()
    assert "![scores/bottle](figures/scores/bottle.png)" in markdown
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert len(pngs) >= 6  # samples, ROC/PRO/histogram per class, the overviews, confusion
    for png in pngs:
        assert f"]({png})" in markdown, f"{png} is not linked from evaluation.md"


def test_a_project_error_is_one_red_line_with_its_exit_code(tmp_path, monkeypatch):
    import anomaly_ov.evaluate.run as run
    from anomaly_ov.config import dump_params
    from anomaly_ov.errors import StageFailed

    def refuse(path, device="auto"):
        raise StageFailed("evaluate", "no model in models/anomaly_ov")

    dump_params(Params(), tmp_path / "params.yaml")
    monkeypatch.setattr(run, "load_predictor", refuse)
    result = CliRunner().invoke(app, _evaluate_argv(_mvtec(tmp_path / "mvtec"), tmp_path / "o", tmp_path))
    assert result.exit_code == StageFailed.exit_code == 4
    assert result.stderr == "error: stage 'evaluate' failed: no model in models/anomaly_ov\n"
    assert isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("bug", [RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 16x2)"),
                                 ValueError("too many values to unpack (expected 2)")])
def test_any_other_exception_keeps_its_traceback(tmp_path, monkeypatch, bug):
    """The old blanket `except (FileNotFoundError, ValueError)` turned a bug inside a stage into one red line."""
    import anomaly_ov.evaluate.run as run
    from anomaly_ov.config import dump_params

    def crash(path, device="auto"):
        raise bug

    dump_params(Params(), tmp_path / "params.yaml")
    monkeypatch.setattr(run, "load_predictor", crash)
    result = CliRunner().invoke(app, _evaluate_argv(_mvtec(tmp_path / "mvtec"), tmp_path / "o", tmp_path))
    assert result.exit_code == 1
    assert result.exception is bug, "the exception propagates (its traceback is printed by Python)"
