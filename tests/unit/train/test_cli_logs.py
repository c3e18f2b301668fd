"""The training resume notice reaches the person running `anomaly-ov -v stage ...` (no handler used to show it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from anomaly_ov.cli import app
from anomaly_ov.config import dump_params
from anomaly_ov.console import LOG_LEVEL_ENV
from anomaly_ov.train import common
from anomaly_ov.train import expert as stage1

from .conftest import make_workspace, tiny_params  # noqa: TID252


class _Stop(Exception):
    pass


@pytest.mark.slow
def test_resume_notice_is_printed_with_v(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LOG_LEVEL_ENV, raising=False)
    ws = make_workspace(tmp_path / "ws", per_label=2)
    params = tiny_params("train.expert.checkpoint_every=1", "train.expert.tiny.epochs=1",
                         "train.expert.tiny.batch_size=2")
    dump_params(params, ws / "params.yaml")
    real_loop = common.run_loop

    def stop_after_two(*args, **kwargs):
        def hook(step, record):
            if step == 1:
                raise _Stop()
        kwargs["on_step_end"] = hook
        return real_loop(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(common, "run_loop", stop_after_two)
        with pytest.raises(_Stop):
            stage1.run_train_expert(params, ws)
    result = CliRunner().invoke(app, ["-v", "stage", "train_expert", "--workspace", str(ws)])
    assert result.exit_code == 0, result.output
    assert "resuming from step 1" in result.stderr, result.stderr
