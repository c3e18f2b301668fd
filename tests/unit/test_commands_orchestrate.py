"""`anomaly-ov schedule` / `run` argument handling (no flow is run here)."""

from __future__ import annotations

import os

from typer.testing import CliRunner

from anomaly_ov.cli import app


def test_schedule_without_a_server_says_how_to_start_one(monkeypatch, tmp_path):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    done = CliRunner().invoke(app, ["schedule", "-w", str(tmp_path)])
    assert done.exit_code == 2  # ConfigError
    assert "prefect server start" in done.output and "PREFECT_API_URL=http://127.0.0.1:4200/api" in done.output


def test_run_rejects_an_unknown_flow():
    done = CliRunner().invoke(app, ["run", "--flow", "nightly"])
    assert done.exit_code == 2 and "pipeline" in done.output


def test_run_calls_the_chosen_flow_and_keeps_a_stage_error_exit_code(monkeypatch, tmp_path):
    """`run --flow X` calls flow X (stand-ins record the call; the flows themselves run in the integration tests)."""
    import flows.extensions
    import flows.pipeline
    import flows.retrain
    from anomaly_ov.commands.orchestrate import OFFLINE_DEFAULTS
    from anomaly_ov.orchestration import StageError

    for name in (*OFFLINE_DEFAULTS, "PREFECT_API_URL"):  # run sets defaults in os.environ: restore them afterwards
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:
            monkeypatch.delenv(name, raising=False)
    called = []

    def stand_in(name):
        def flow(workspace, params_file, force):
            called.append((name, workspace, params_file, force))
            if name == "retrain":
                raise StageError("train_expert", "loss diverged", retryable=False)
        return flow

    for module, name in ((flows.pipeline, "pipeline"), (flows.retrain, "retrain"), (flows.extensions, "extensions")):
        monkeypatch.setattr(module, name, stand_in(name))
    runner = CliRunner()
    assert runner.invoke(app, ["run", "-w", str(tmp_path)]).exit_code == 0
    assert runner.invoke(app, ["run", "--flow", "extensions", "--force", "-w", str(tmp_path)]).exit_code == 0
    failed = runner.invoke(app, ["run", "--flow", "retrain", "-w", str(tmp_path)])
    assert called == [("pipeline", str(tmp_path.resolve()), "params.yaml", False),
                      ("extensions", str(tmp_path.resolve()), "params.yaml", True),
                      ("retrain", str(tmp_path.resolve()), "params.yaml", False)]
    assert failed.exit_code == StageError.exit_code and "retrain flow stopped" in failed.output
