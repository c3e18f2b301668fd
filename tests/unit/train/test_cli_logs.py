"""The training resume notice reaches the person running `anomaly-ov -v stage ...` (no handler used to show it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from anomaly_ov.cli import app
from anomaly_ov.config import dump_params
from anomaly_ov.console import LOG_LEVEL_ENV

from .conftest import make_workspace, stage_one_until, tiny_params  # noqa: TID252


@pytest.mark.slow
def test_resume_notice_is_printed_with_v(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LOG_LEVEL_ENV, raising=False)
    ws = make_workspace(tmp_path / "ws", per_label=2)
    params = tiny_params("train.expert.checkpoint_every=1", "train.expert.tiny.epochs=1",
                         "train.expert.tiny.batch_size=2")
    dump_params(params, ws / "params.yaml")
    assert stage_one_until(1, params, ws, monkeypatch) == [1]
    result = CliRunner().invoke(app, ["-v", "stage", "train_expert", "--workspace", str(ws)])
    assert result.exit_code == 0, result.output
    assert "resuming from step 1" in result.stderr, result.stderr
