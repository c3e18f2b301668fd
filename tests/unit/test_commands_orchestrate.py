"""`anomaly-ov schedule` / `run` argument handling (no flow is run here)."""

from __future__ import annotations

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
