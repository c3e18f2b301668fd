"""Broken, oversized and escaping inputs to `evaluate`: a clear error naming every bad file, never a traceback,
never a score of a file outside the dataset, and no metrics from a partial set."""

from __future__ import annotations

import json

import pytest
from hostile import write_declared, write_mask, write_png, write_random, write_truncated
from typer.testing import CliRunner

from anomaly_ov.cli import app
from anomaly_ov.config import Params, dump_params
from anomaly_ov.evaluate.detection import EvaluationInputError
from anomaly_ov.evaluate.run import evaluate_dataset


def _mvtec(root, n: int = 2):
    cdir = root / "bottle"
    for i in range(n):
        write_png(cdir / "train" / "good" / f"{i:03d}.png")
        write_png(cdir / "test" / "good" / f"{i:03d}.png")
        write_png(cdir / "test" / "crack" / f"{i:03d}.png")
        write_mask(cdir / "ground_truth" / "crack" / f"{i:03d}_mask.png")
    return root


@pytest.fixture
def evaluate_cli(tmp_path, monkeypatch, fake_predictor):
    import anomaly_ov.evaluate.run as run

    dump_params(Params(), tmp_path / "params.yaml")
    monkeypatch.setattr(run, "load_predictor", lambda path, device="auto": fake_predictor)

    def invoke(data, *extra):
        return CliRunner().invoke(app, [
            "model", "evaluate", str(data), "--format", "mvtec", "--model", "m", "--out", str(tmp_path / "out"),
            "--workspace", str(tmp_path), "--set", "tracking.enabled=false", "--set", "evaluate.resolution=16",
            "--set", "evaluate.figures_per_kind=0", *extra,
        ])

    return invoke


def test_files_the_reader_refuses_are_all_named_and_nothing_is_scored(tmp_path, evaluate_cli, fake_predictor):
    data = _mvtec(tmp_path / "ds")
    good = data / "bottle" / "test" / "good"
    write_random(good / "random.png")
    write_declared(good / "bomb.png", 100_000, 100_000)  # was: DecompressionBombError traceback
    write_declared(good / "wide.png", 10_000, 10_000)  # was: decoded for 42 s at 2 GB, then scored
    (good / "link.png").symlink_to(write_png(tmp_path / "elsewhere" / "secret.png"))  # was: scored and logged

    result = evaluate_cli(data)

    assert result.exit_code == 3, result.output  # InputError
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    for name in ("random.png", "bomb.png", "wide.png", "link.png"):
        assert name in result.output, name
    assert "symlink leads out of the dataset" in result.output and "10000 x 10000" in result.output
    assert fake_predictor.calls == 0 and not (tmp_path / "out" / "metrics.json").exists()


def test_outside_paths_are_scored_only_when_allowed(tmp_path, evaluate_cli, fake_predictor):
    data = _mvtec(tmp_path / "ds")
    (data / "bottle" / "test" / "good" / "link.png").symlink_to(write_png(tmp_path / "elsewhere" / "x.png"))
    assert evaluate_cli(data).exit_code == 3
    result = evaluate_cli(data, "--allow-external-paths", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 5


def test_truncated_image_and_wrong_size_mask_are_named_together(tmp_path, evaluate_cli, fake_predictor):
    data = _mvtec(tmp_path / "ds")
    write_truncated(data / "bottle" / "test" / "good" / "001.png")  # was: OSError traceback mid-evaluation
    write_mask(data / "bottle" / "ground_truth" / "crack" / "000_mask.png", (20, 10))  # was: silently resized

    result = evaluate_cli(data)

    assert result.exit_code == 3, result.output  # InputError
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert "001.png" in result.output and "cannot decode" in result.output
    assert "000_mask.png: mask is 20 x 10 px but its image" in result.output and "40 x 40 px" in result.output
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_evaluate_dataset_collects_decode_failures_and_writes_nothing(benchmark, fake_predictor, tmp_path):
    workspace, test, _ = benchmark
    broken = [test[0]["file"], test[4]["mask"]]
    for rel in broken:
        write_truncated(workspace / rel)  # headers read, pixels do not
    out = tmp_path / "report"
    params = Params()
    with pytest.raises(EvaluationInputError) as caught:
        evaluate_dataset(fake_predictor, test, None, params, out, workspace, log_to_mlflow=False)
    assert len(caught.value.problems) == 2
    assert all(rel in str(caught.value) for rel in broken)
    assert isinstance(caught.value, ValueError) and not out.exists()


def test_oversized_benchmark_image_is_refused_from_its_header(benchmark, fake_predictor, tmp_path):
    workspace, test, _ = benchmark
    write_declared(workspace / test[1]["file"], 9000, 9000)
    with pytest.raises(EvaluationInputError, match="9000 x 9000 px, a side above the limit of 8192"):
        evaluate_dataset(fake_predictor, test, None, Params(), tmp_path / "r", workspace, log_to_mlflow=False)
    assert not (tmp_path / "r").exists()  # nothing decoded from it, no metrics written
