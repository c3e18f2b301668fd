"""Commands that work in a workspace refuse to run outside one instead of silently using the defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from anomaly_ov.cli import app
from anomaly_ov.config import dump_params, load_params

runner = CliRunner()


@pytest.mark.parametrize("argv", [["model", "list"], ["stage", "prepare"], ["model", "rollback"],
                                  ["instruct", "preview"]])
def test_workspace_commands_refuse_an_empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv) -> None:
    monkeypatch.chdir(tmp_path)
    done = runner.invoke(app, argv)
    assert done.exit_code == 2, done.output
    assert f"{tmp_path.resolve()}: no params.yaml here" in done.output and "--workspace PATH" in done.output
    assert list(tmp_path.iterdir()) == [], "nothing is written (the old code created mlflow.db here)"


def test_a_missing_params_file_passed_explicitly_is_an_error(tmp_path: Path) -> None:
    done = runner.invoke(app, ["model", "list", "--params", str(tmp_path / "mine.yaml")])
    assert done.exit_code == 2 and "mine.yaml: params file not found" in done.output


def test_params_says_which_file_it_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    done = runner.invoke(app, ["params"])
    assert done.exit_code == 0 and done.stdout.startswith("# params: built-in defaults\n")
    assert "using the built-in defaults" in done.stderr
    dump_params(load_params(None, ["seed=7"]), tmp_path / "params.yaml")
    done = runner.invoke(app, ["params"])
    assert done.stdout.startswith(f"# params: {tmp_path.resolve() / 'params.yaml'}\n") and "seed: 7" in done.stdout
