"""Training progress without a terminal: the shared ProgressBar's log lines with step, loss and ETA (what a flow's
log shows under ``-v``); training has no printer of its own."""

from __future__ import annotations

import logging
import re

import pytest

from anomaly_ov.console import ProgressBar


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "anomaly_ov.progress"]


def test_plain_progress_logs_about_every_tenth_step_with_the_loss(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="anomaly_ov")
    with ProgressBar("stage 1 (expert)", total=20, unit="steps") as bar:  # pytest's stderr is not a terminal
        for step in range(20):
            bar.advance(loss=1.0 / (step + 1))
    lines = _lines(caplog)
    assert len(lines) == 10
    assert re.fullmatch(r"stage 1 \(expert\): 20 / 20 steps loss 0\.0500 elapsed \d+s ETA 0s", lines[-1]), lines


def test_resumed_progress_counts_from_the_checkpoint_step(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="anomaly_ov")
    with ProgressBar("stage 1 (expert)", total=20, unit="steps", done=13) as bar:
        for _ in range(7):
            bar.advance(loss=0.5)
    assert [line.split(" loss")[0] for line in _lines(caplog)] == [
        "stage 1 (expert): 14 / 20 steps", "stage 1 (expert): 16 / 20 steps", "stage 1 (expert): 18 / 20 steps",
        "stage 1 (expert): 20 / 20 steps"]


def test_disabled_progress_is_silent(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="anomaly_ov")
    with ProgressBar("x", total=5, enabled=False) as bar:
        bar.advance(loss=1.0)
    assert _lines(caplog) == []
