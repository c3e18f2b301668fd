"""Training progress without a terminal: plain lines with step, loss and ETA (what a flow's log shows)."""

from __future__ import annotations

from anomaly_ov.train.common import _Progress


def test_plain_progress_prints_about_every_tenth_step(capsys) -> None:
    progress = _Progress("stage 1 (expert)", total=20, done=0, enabled=True)  # pytest's stdout is not a TTY
    for step in range(20):
        progress.advance(1.0 / (step + 1))
    progress.close()
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 10
    assert lines[-1].startswith("stage 1 (expert): step 20/20 loss 0.0500 elapsed")
    assert "ETA 0s" in lines[-1]


def test_disabled_progress_is_silent(capsys) -> None:
    progress = _Progress("x", total=5, done=0, enabled=False)
    progress.advance(1.0)
    progress.close()
    assert capsys.readouterr().out == ""
