"""Bad input reaching a stage through the real CLI (what `dvc repro` runs): the error names every bad file, and the
stage's result file (what the orchestration reads) lists them and says it is not retryable. Before, PIL's
DecompressionBombError (not an OSError) escaped as a traceback, which the Prefect flow took for a transient crash
and retried."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml
from hostile import write_declared, write_mask, write_png, write_random

from anomaly_ov import orchestration as orch
from anomaly_ov.stages import read_result

REPO = Path(__file__).resolve().parents[2]


def _stage(workspace: Path, name: str, *overrides: str) -> orch.CommandResult:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    argv = [sys.executable, "-c", "from anomaly_ov.cli import main; main()", "stage", name,
            "--workspace", str(workspace), *[a for o in overrides for a in ("--set", o)]]
    return orch.run_command(orch.StageCommand(argv, env, workspace))


def _workspace(tmp_path: Path) -> Path:
    cdir = tmp_path / "ds" / "widget"
    for i in range(2):
        write_png(cdir / "train" / "good" / f"{i}.png")
        write_png(cdir / "test" / "good" / f"{i}.png")
    write_png(cdir / "test" / "crack" / "0.png", (60, 40))
    write_mask(cdir / "ground_truth" / "crack" / "0_mask.png", (60, 40))
    write_declared(cdir / "train" / "good" / "bomb.png", 100_000, 100_000)
    write_random(cdir / "test" / "good" / "random.png")
    params = {
        "data": {"synthetic": {"enabled": False},
                 "sources": [{"name": "mine", "format": "mvtec", "path": "ds", "role": "eval"}]},
        "tracking": {"enabled": False},
        "extensions": {"medical": {"join_training": False}, "threed": {"join_training": False}},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def test_prepare_names_every_bad_file_and_is_not_retryable(tmp_path):
    workspace = _workspace(tmp_path)
    result = _stage(workspace, "prepare")
    output = "\n".join(result.lines)
    assert result.returncode == 4, output  # StageFailed (anomaly_ov.errors)
    assert "Traceback" not in output and "DecompressionBomb" not in output.split("declares")[0]
    assert "bomb.png" in output and "random.png" in output and "2 unusable file(s)" in output
    record = read_result(workspace, "prepare")  # what the orchestration reads: typed, not parsed from the output
    assert (record["status"], record["error_kind"], record["retryable"]) == ("failed", "StageFailed", False)
    assert [Path(f.split(":")[0]).name for f in record["failing"]] == ["bomb.png", "random.png"]
    assert "bomb.png" in record["message"] and record["exit_code"] == 4
    assert not (workspace / "data" / "manifest.parquet").exists()


def _stage_in_process(workspace: Path, name: str, *overrides: str) -> tuple[int, str]:
    """The same ``anomaly-ov stage`` command run in this process (for properties that are not about processes)."""
    from typer.testing import CliRunner

    from anomaly_ov.cli import app

    result = CliRunner().invoke(app, ["stage", name, "--workspace", str(workspace),
                                      *[a for o in overrides for a in ("--set", o)]])
    return result.exit_code, result.output


def test_the_size_limit_comes_from_validate_max_image_side(tmp_path):
    workspace = _workspace(tmp_path)
    (workspace / "ds" / "widget" / "train" / "good" / "bomb.png").unlink()
    (workspace / "ds" / "widget" / "test" / "good" / "random.png").unlink()
    assert _stage_in_process(workspace, "prepare")[0] == 0
    code, output = _stage_in_process(workspace, "prepare", "validate.max_image_side=50")  # the 60 x 40 anomaly
    assert code == 4 and "0.png" in output and "limit of 50 px" in output, output
    record = read_result(workspace, "prepare")
    assert record["retryable"] is False and [Path(f.split(":")[0]).name for f in record["failing"]] == ["0.png"]


def test_predict_refuses_oversized_and_broken_images_before_the_model(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import anomaly_ov.serving as serving
    from anomaly_ov.cli import app

    class NeverCalled:
        def predict(self, *args, **kwargs):
            raise AssertionError("the model must not see a refused image")

    monkeypatch.setattr(serving, "load_predictor", lambda *args, **kwargs: NeverCalled())
    from anomaly_ov.config import Params, dump_params

    dump_params(Params(), tmp_path / "params.yaml")  # the defaults: validate.max_image_side 8192
    monkeypatch.chdir(tmp_path)
    bomb = write_declared(tmp_path / "bomb.png", 100_000, 100_000)  # was: DecompressionBombError traceback
    wide = write_declared(tmp_path / "wide.png", 10_000, 10_000)  # was: decoded (~2 GB, 42 s), then scored
    junk = write_random(tmp_path / "junk.png")
    for path, needle in ((bomb, "10000000000 pixels"), (wide, "10000 x 10000"), (junk, "not an image")):
        result = CliRunner().invoke(app, ["model", "predict", str(path)])
        assert result.exit_code == 3 and isinstance(result.exception, SystemExit), result.output
        assert str(path) in result.output and needle in result.output
