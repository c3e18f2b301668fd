"""The torchrun re-launch path: 2 CPU processes (gloo) train a toy model; rank 0 alone saves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anomaly_ov.config import load_params
from anomaly_ov.train import launch

TARGET = str(Path(__file__).with_name("ddp_toy_target.py")) + ":run"


@pytest.mark.slow
def test_two_process_gloo_launch(tmp_path: Path) -> None:
    params = load_params(None, ["tracking.enabled=false"])
    summary = launch.relaunch(TARGET, params, tmp_path, nproc=2, timeout_s=240)
    assert summary["world_size"] == 2 and summary["num_processes"] == 2
    assert summary["steps"] == 2 * 3  # 24 items, 12 per rank, batch 4 -> 3 steps per epoch, 2 epochs
    w0, w1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(w0, w1), "DDP keeps the replicas identical"
    assert (tmp_path / "ckpt" / "last.pt").exists()


def test_failed_child_reports_its_error(tmp_path: Path) -> None:
    params = load_params(None, ["tracking.enabled=false"])
    with pytest.raises(launch.LaunchFailed, match="no_such_function"):
        launch.relaunch(TARGET.replace(":run", ":no_such_function"), params, tmp_path, nproc=1, timeout_s=120)


def test_resolve_target_rejects_bad_names() -> None:
    with pytest.raises(ValueError, match="stage name"):
        launch.resolve_target("nonsense")
