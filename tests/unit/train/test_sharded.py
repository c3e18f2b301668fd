"""Sharded training (strategy ``fsdp``, torch FSDP2) on CPU with gloo: two processes train stage 1 and stage 2 to the
same loss curve and weights as one process with the same global batch; a run SIGKILLed between two sharded
checkpoints resumes to the very weights of the uninterrupted run.

The one-process reference uses twice the per-process batch, so both see the same global batches (the permutation is
dealt to the ranks in turn). The settings make each step's loss a mean of per-example terms, as data parallelism
needs to reproduce it exactly: stage 1 without the mask loss's batch-wide dice and without augmentation (drawn per
batch), stage 2 averaging per conversation (``sample``) with length grouping off (it sorts within each rank's share).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anomaly_ov.train import launch

from .conftest import REPO_ROOT, make_workspace, tiny_params  # noqa: TID252

# the module's two-process runs are built once: keep its tests on one xdist worker
pytestmark = pytest.mark.xdist_group("sharded")

TARGET = Path(__file__).with_name("sharded_target.py")
COMMON = [
    # no mask loss (faster), so the image-score BCE has to train the maps (the tiny recipe keeps it off them)
    "train.expert.tiny.mask_loss=false", "train.expert.tiny.score_loss_trains_maps=true",
    "train.expert.tiny.augment=false",
    "train.expert.strategy=fsdp", "train.instruct.strategy=fsdp", "train.instruct.group_by_length=false",
    "train.instruct.tiny.epochs=1", "train.instruct.tiny.grad_accum=2", "train.instruct.tiny.text_warmup_epochs=1",
    # fsdp cannot freeze the LLM for one phase, so it skips the projector alignment (test_instruct_stage.py)
    "train.instruct.tiny.align_epochs=0",
]
#: per-process batches of the two-process run; the one-process run takes twice as many
TWO_PROCESSES = ["train.expert.tiny.batch_size=2", "train.instruct.tiny.batch_size=1",
                 "train.instruct.tiny.text_warmup_batch_size=2"]
ONE_PROCESS = ["train.expert.tiny.batch_size=4", "train.instruct.tiny.batch_size=2",
               "train.instruct.tiny.text_warmup_batch_size=4"]


def weight_tolerance(lr: float) -> float:
    """AdamW divides each gradient component by its running magnitude, so the float noise of a near-zero component
    (summed in another order over two ranks) can move a weight by up to about ``lr`` per step: allow a quarter of
    one step, far below what a wrong gradient (a missed rank, an unscaled accumulation) changes."""
    return 0.25 * lr


def _report(ws: Path, name: str) -> dict:
    return json.loads((ws / "reports" / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both stages trained once in this process and once by two torchrun processes (one launch for both stages)."""
    from anomaly_ov.train.expert import run_train_expert
    from anomaly_ov.train.instruct import run_train_instruct

    single = make_workspace(tmp_path_factory.mktemp("single") / "ws")
    params = tiny_params(*COMMON, *ONE_PROCESS)
    run_train_expert(params, single)
    run_train_instruct(params, single)
    sharded = make_workspace(tmp_path_factory.mktemp("fsdp") / "ws")
    summary = launch.relaunch(f"{TARGET}:both", tiny_params(*COMMON, *TWO_PROCESSES), sharded, nproc=2,
                              timeout_s=900)
    assert summary["num_processes"] == 2
    return {"single": single, "fsdp": sharded}


@pytest.mark.slow
def test_stage1_fsdp_two_processes_match_one(runs: dict[str, Path]) -> None:
    one, two = _report(runs["single"], "train_expert"), _report(runs["fsdp"], "train_expert")
    assert two["strategy"] == "fsdp" and two["num_processes"] == 2 and one["num_processes"] == 1
    assert len(one["loss_curve"]) == len(two["loss_curve"]) == 4
    torch.testing.assert_close(torch.tensor(two["loss_curve"]), torch.tensor(one["loss_curve"]), rtol=1e-4, atol=1e-5)
    assert two["val"]["image_auroc"] == pytest.approx(one["val"]["image_auroc"])
    # the consolidated output has the single-process layout and weights
    a = torch.load(runs["single"] / "models/expert/pretrained_expert.pth")
    b = torch.load(runs["fsdp"] / "models/expert/pretrained_expert.pth")
    assert a.keys() == b.keys()
    atol = weight_tolerance(tiny_params().expert_recipe.lr)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=atol, msg=key)
    ta = load_file(runs["single"] / "models/expert/vision_tower.safetensors")
    tb = load_file(runs["fsdp"] / "models/expert/vision_tower.safetensors")
    assert ta.keys() == tb.keys()
    for key in ta:
        torch.testing.assert_close(tb[key], ta[key], rtol=0, atol=atol, msg=key)
    assert not list((runs["fsdp"] / "checkpoints/expert").glob("*shards-*")), "a finished stage keeps no resume state"


@pytest.mark.slow
def test_stage2_fsdp_two_processes_match_one(runs: dict[str, Path]) -> None:
    from anomaly_ov.model.presets import load_pretrained

    one, two = _report(runs["single"], "train_instruct"), _report(runs["fsdp"], "train_instruct")
    assert two["strategy"] == "fsdp" and two["num_processes"] == 2
    for curve in ("text_warmup_loss_curve", "loss_curve"):
        assert len(one[curve]) == len(two[curve]) == 3, curve
        torch.testing.assert_close(torch.tensor(two[curve]), torch.tensor(one[curve]), rtol=1e-4, atol=1e-5)
    # rank 0 consolidated the shards into an ordinary save_pretrained directory that loads in one process
    model, _ = load_pretrained(runs["fsdp"] / "models/anomaly_ov")
    reference, _ = load_pretrained(runs["single"] / "models/anomaly_ov")
    got, want = model.state_dict(), reference.state_dict()
    assert got.keys() == want.keys()
    atol = weight_tolerance(tiny_params().instruct_recipe.lr)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=atol, msg=key)
    assert not list((runs["fsdp"] / "checkpoints/instruct").rglob("*shards-*"))


def _kill_and_wait_gone(pid: int) -> None:
    """SIGKILL ``pid`` (not a child of this process: init reaps it) and wait until it no longer exists."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    while Path(f"/proc/{pid}").exists() and "State:\tZ" not in _status(pid):  # pytest-timeout bounds the wait
        time.sleep(0.05)


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return ""


@pytest.mark.slow
def test_stage1_fsdp_sigkill_between_sharded_checkpoints_resumes_to_the_same_weights(
        runs: dict[str, Path], tmp_path: Path) -> None:
    """torchrun with 2 processes, SIGKILLed after step 3 (the agent's process group and both ranks, which torchrun
    starts in sessions of their own); checkpoints at steps 2 and 4."""
    ws = make_workspace(tmp_path / "ws")
    params = tiny_params(*COMMON, *TWO_PROCESSES)
    with tempfile.TemporaryDirectory() as tmp:
        params_file = Path(tmp) / "params.json"
        params_file.write_text(json.dumps(params.to_dict()))
        cmd = [sys.executable, "-m", "torch.distributed.run", *launch.torchrun_args(2, params.train.launch),
               "-m", "anomaly_ov.train.launch", f"{TARGET}:paused", "--params-json", str(params_file),
               "--workspace", str(ws), "--result-json", str(Path(tmp) / "result.json")]
        env = {**os.environ, "ANOMALY_OV_TEST_PAUSE_STEP": "3",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
        log = (tmp_path / "killed.log").open("w")
        proc = subprocess.Popen(cmd, env=env, cwd=ws, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        markers = [ws / f"paused.rank{rank}" for rank in range(2)]
        ranks: list[int] = []
        try:
            while not all(m.exists() for m in markers):  # pytest-timeout ends a run that never gets there
                if proc.poll() is not None:
                    raise AssertionError(f"the run ended before step 3:\n{(tmp_path / 'killed.log').read_text()}")
                time.sleep(0.1)
            ranks = [int(m.read_text()) for m in markers]
            os.killpg(proc.pid, signal.SIGKILL)
            for pid in ranks:
                os.kill(pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            log.close()
            for pid in ranks:
                _kill_and_wait_gone(pid)
    ckpt = ws / "checkpoints/expert"
    assert [p.name for p in ckpt.glob("*shards-*")] == ["shards-000000002"]
    assert len(list((ckpt / "shards-000000002").glob("*.distcp"))) == 2, "each rank wrote its own shard"
    assert not (ws / "models/expert").exists()

    summary = launch.relaunch("train_expert", params, ws, nproc=2, timeout_s=900)
    assert summary["resumed_from_step"] == 2 and summary["steps"] == 4
    a = torch.load(runs["fsdp"] / "models/expert/pretrained_expert.pth")
    b = torch.load(ws / "models/expert/pretrained_expert.pth")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ta = load_file(runs["fsdp"] / "models/expert/vision_tower.safetensors")
    tb = load_file(ws / "models/expert/vision_tower.safetensors")
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key
    assert _report(ws, "train_expert")["loss_curve"] == _report(runs["fsdp"], "train_expert")["loss_curve"]
