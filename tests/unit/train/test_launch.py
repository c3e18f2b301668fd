"""The torchrun re-launch path: 2 CPU processes (gloo) on two "nodes" train a toy model; rank 0 alone saves."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from anomaly_ov.config import load_params
from anomaly_ov.errors import ConfigError
from anomaly_ov.train import launch

TARGET = str(Path(__file__).with_name("ddp_toy_target.py")) + ":run"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_nodes_share_one_rendezvous(tmp_path: Path) -> None:
    """Two "nodes" of one process each on localhost (two torchrun agents, node ranks 0 and 1) meet at one rendezvous
    endpoint and train as one DDP job: 2 ranks, node 0 holds rank 0 and writes the summary. With gradient
    accumulation 2, DDP reduces gradients only on the last micro-step of each group."""
    launch_keys = ["tracking.enabled=false", "train.launch.nnodes=2",
                   f"train.launch.rdzv_endpoint=127.0.0.1:{_free_port()}"]
    node0 = load_params(None, launch_keys)
    node1 = load_params(None, [*launch_keys, "train.launch.node_rank=1"])
    assert launch.torchrun_args(1, node1.train.launch)[:2] == ["--nnodes=2", "--node-rank=1"]
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(launch.relaunch, TARGET, node1, tmp_path, 1, 240)
        summary = launch.relaunch(TARGET, node0, tmp_path, nproc=1, timeout_s=240)
        assert other.result() == {"node_rank": 1, "num_processes": 2}
    assert summary["world_size"] == 2 and summary["num_processes"] == 2
    assert summary["steps"] == 2 * 2  # 24 items, 12 per rank, batch 4, accumulation 2 -> 2 steps per epoch
    # on an accumulation micro-step the ranks' gradients stay their own (no all-reduce before the group's last)
    assert summary["micro_steps_checked"] == 2 and summary["micro_steps_synced"] == 0
    w0, w1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(w0, w1), "DDP keeps the replicas identical"
    assert (tmp_path / "ckpt" / "last.pt").exists()


def test_launch_params_name_what_is_missing() -> None:
    with pytest.raises(ConfigError) as err:
        load_params(None, ["train.launch.nnodes=2", "train.launch.node_rank=2"])
    assert "train.launch" in str(err.value) and "rdzv_endpoint" in str(err.value) and "node_rank 2" in str(err.value)
    with pytest.raises(ConfigError, match="host:port"):
        load_params(None, ["train.launch.rdzv_endpoint=nohost"])
    assert launch.torchrun_args(4, load_params(None, []).train.launch) == ["--standalone", "--nproc-per-node=4"]


def test_failed_child_reports_its_error(tmp_path: Path) -> None:
    params = load_params(None, ["tracking.enabled=false"])
    with pytest.raises(launch.LaunchFailed, match="no_such_function"):
        launch.relaunch(TARGET.replace(":run", ":no_such_function"), params, tmp_path, nproc=1, timeout_s=120)


def test_resolve_target_rejects_bad_names() -> None:
    with pytest.raises(ConfigError, match="stage name"):
        launch.resolve_target("nonsense")
