"""The command line as people and scripts meet it: groups and choices in --help, --version, logging, errors."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from anomaly_ov.choices import Label, Modality, PointCloudFormat, RegistryAlias, Role, SourceFormat, Split, values
from anomaly_ov.cli import app
from anomaly_ov.console import LOG_LEVEL_ENV, ProgressBar, configure_logging, redact

WIDE = {"TERMINAL_WIDTH": "250", "COLUMNS": "250"}  # no wrapped or cut help lines


def _help(*argv: str) -> str:
    result = CliRunner(env=WIDE).invoke(app, [*argv, "--help"])
    assert result.exit_code == 0, result.output
    return result.stdout


GROUPS = {
    "data": ("validate", "convert-medical", "render-3d"),
    "instruct": ("check", "preview"),
    "model": ("list", "promote", "rollback", "evaluate", "predict", "chat", "serve"),
}


def test_root_help_lists_groups_commands_and_global_options() -> None:
    text = _help()
    for name in ("run", "schedule", "stage", "params", *GROUPS):
        assert f" {name} " in text, name
    for option in ("--verbose", "-v", "--quiet", "-q", "--version", "--install-completion", "--show-completion"):
        assert option in text, option
    for old in ("convert-medical", "instruct-check", "promote", "models"):  # no duplicates left at the top level
        assert f" {old} " not in text, old


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_each_group_lists_its_commands(group: str) -> None:
    text = _help(group)
    for command in GROUPS[group]:
        assert f" {command} " in text, (group, command)


@pytest.mark.parametrize(("argv", "vocabulary"), [
    (("data", "validate"), SourceFormat), (("data", "validate"), Role), (("data", "validate"), Modality),
    (("model", "evaluate"), SourceFormat), (("data", "render-3d"), PointCloudFormat),
    (("data", "convert-medical"), Split), (("model", "promote"), RegistryAlias), (("instruct", "preview"), Label),
])
def test_help_lists_the_choices_from_the_one_declaration(argv: tuple[str, ...], vocabulary: object) -> None:
    assert "|".join(values(vocabulary)) in _help(*argv).replace(" ", "").replace("\n", "")


def test_run_help_lists_the_flows() -> None:
    assert "pipeline|retrain|extensions" in _help("run").replace(" ", "")


def test_every_format_has_a_reader_and_no_reader_lacks_a_format() -> None:
    from anomaly_ov.data.sources import READERS

    assert tuple(READERS) == values(SourceFormat)
    assert set(values(PointCloudFormat)) < set(values(SourceFormat))


def test_version_names_the_package_and_the_libraries() -> None:
    from importlib.metadata import version

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.startswith(f"anomaly-ov {version('anomaly-ov')} (python ")
    assert f"torch {version('torch')}" in result.stdout and f"transformers {version('transformers')}" in result.stdout


def test_a_config_error_exits_two_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("seed: [1\n")
    result = CliRunner().invoke(app, ["params", "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and "params.yaml" in result.stderr
    assert "Traceback" not in result.output


def test_levels_from_flags_and_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LOG_LEVEL_ENV, raising=False)
    assert configure_logging(0, False) == logging.WARNING
    assert configure_logging(1, False) == logging.INFO and os.environ[LOG_LEVEL_ENV] == "INFO"
    assert configure_logging(0, False) == logging.INFO, "a child without -v inherits the parent's level"
    assert configure_logging(0, True) == logging.ERROR and os.environ[LOG_LEVEL_ENV] == "ERROR"
    assert configure_logging(2, False) == logging.DEBUG
    assert logging.getLogger().level == logging.WARNING, "libraries stay at WARNING below -vvv"
    configure_logging(3, False)
    assert logging.getLogger().level == logging.DEBUG
    monkeypatch.delenv(LOG_LEVEL_ENV)
    configure_logging(0, False)


#: A child process as DVC starts it: the CLI without -v (its root callback configures logging), then a record at INFO.
CHILD = ("import logging\nfrom anomaly_ov.cli import app\napp(['params'], standalone_mode=False)\n"
         "logging.getLogger('anomaly_ov.train.common').info('stage 1: resuming from step 3')\n")


def test_the_level_reaches_a_stage_subprocess(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`anomaly-ov -v run` starts `anomaly-ov stage ...` through DVC: the child logs at INFO without -v."""
    monkeypatch.delenv(LOG_LEVEL_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(app, ["-v", "params"]).exit_code == 0
    assert os.environ[LOG_LEVEL_ENV] == "INFO"
    child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, cwd=tmp_path,
                           env=dict(os.environ), timeout=120, check=True)
    assert "INFO anomaly_ov.train.common: stage 1: resuming from step 3" in child.stderr, child.stderr
    monkeypatch.delenv(LOG_LEVEL_ENV)
    child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, cwd=tmp_path,
                           env=dict(os.environ), timeout=120, check=True)
    assert "resuming" not in child.stderr, "without -v anywhere the notice stays below the default level"


def test_secrets_never_reach_the_log(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOMALY_OV_JUDGE_API_KEY", "sk-live-1234567890")
    monkeypatch.delenv(LOG_LEVEL_ENV, raising=False)
    configure_logging(1, False)
    logging.getLogger("anomaly_ov.test").info("calling %s with key %s", "https://bob:hunter22@llm.example/v1",
                                              "sk-live-1234567890")
    err = capsys.readouterr().err
    assert "calling https://bob:***@llm.example/v1 with key ***" in err
    assert "sk-live" not in err and "hunter22" not in err
    assert redact("no secrets here") == "no secrets here"
    monkeypatch.delenv(LOG_LEVEL_ENV)
    configure_logging(0, False)


def test_progress_without_a_terminal_logs_about_every_tenth(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="anomaly_ov")
    with ProgressBar("evaluate: detection", total=40, unit="images") as bar:
        for done in range(4, 41, 4):
            bar.update(done, 40)
    lines = [r.getMessage() for r in caplog.records if r.name == "anomaly_ov.progress"]
    assert [line.split(" elapsed ")[0] for line in lines] == [f"evaluate: detection: {n} / 40 images"
                                                              for n in range(4, 41, 4)]
    assert all(re.search(r" elapsed \d+s ETA \d+s$", line) for line in lines), lines
