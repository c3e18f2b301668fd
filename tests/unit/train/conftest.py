"""A tiny workspace for the stage tests: 2 categories x (3 normal + 3 anomalous) 64 px images with masks, the
manifest, and a LLaVA instruction file (detection + description turns)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_ov.config import dump_params, load_params
from anomaly_ov.data.manifest import ManifestRow, from_rows, write_manifest

TINY_OVERRIDES = [
    "tracking.enabled=false",
    "train.tower.enabled=false",  # stage 1 from a random tower unless a test runs stage pretrain_tower first
    "train.expert.tiny.epochs=2",
    "train.expert.tiny.batch_size=4",
    "train.expert.val_fraction=0.34",
    "train.expert.checkpoint_every=2",
    "train.expert.device=cpu",
    "train.instruct.tiny.epochs=2",
    "train.instruct.tiny.batch_size=4",
    "train.instruct.checkpoint_every=2",
    "train.instruct.device=cpu",
    "train.instruct.tokenizer_vocab_size=400",
    "evaluate.resolution=32",
]


def tiny_params(*extra: str):
    return load_params(None, [*TINY_OVERRIDES, *extra])


def make_workspace(root: Path, per_label: int = 3) -> Path:
    rng = np.random.default_rng(0)
    rows, records = [], []
    for c, cat in enumerate(("weave", "plate")):
        for i in range(2 * per_label):
            anomalous = i >= per_label
            img = (rng.normal(120 + 40 * c, 12, (64, 64, 3))).clip(0, 255).astype("uint8")
            kind = "spot" if anomalous else "good"
            rel = f"{cat}/{'test' if anomalous else 'train'}/{kind}/{i:03d}.png"
            mask_rel = ""
            (root / "data/raw" / rel).parent.mkdir(parents=True, exist_ok=True)
            if anomalous:
                y, x = rng.integers(8, 40, 2)
                img[y : y + 16, x : x + 16] = (240, 30, 30)
                mask = np.zeros((64, 64), dtype="uint8")
                mask[y : y + 16, x : x + 16] = 255
                mask_rel = f"{cat}/ground_truth/spot/{i:03d}_mask.png"
                (root / "data/raw" / mask_rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(root / "data/raw" / mask_rel)
            Image.fromarray(img).save(root / "data/raw" / rel)
            rows.append(ManifestRow(image_path=rel, root="data/raw", source="tiny", category=cat,
                                    split="test" if anomalous else "train", role="train",
                                    label="anomaly" if anomalous else "normal", defect_type=kind,
                                    mask_path=mask_rel, width=64, height=64))
            answer = "Yes" if anomalous else "No"
            describe = (f"There is a red spot on the {cat}." if anomalous else f"The {cat} looks normal.")
            records.append({
                "id": f"{cat}-{i}", "image": f"data/raw/{rel}", "label": "anomaly" if anomalous else "normal",
                "category": cat,
                "conversations": [
                    {"from": "human", "value": "<image>\nAre there any defects for the object in the image? "
                                               "Please reply with 'Yes' or 'No'."},
                    {"from": "gpt", "value": answer},
                    {"from": "human", "value": "Describe the object."},
                    {"from": "gpt", "value": describe},
                ],
            })
    write_manifest(from_rows(rows), root / "data/manifest.parquet")
    (root / "data/instruct").mkdir(parents=True, exist_ok=True)
    (root / "data/instruct/train.json").write_text(json.dumps(records))
    return root


@pytest.fixture
def tiny_workspace(tmp_path: Path) -> Path:
    return make_workspace(tmp_path / "ws")


@pytest.fixture(scope="module")
def trained_expert_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace where stage 1 has already run (shared by the stage-2 tests of a module)."""
    from anomaly_ov.train.expert import run_train_expert

    ws = make_workspace(tmp_path_factory.mktemp("expert") / "ws")
    run_train_expert(tiny_params(), ws)
    return ws


REPO_ROOT = Path(__file__).resolve().parents[3]


def sigkill_stage_at(stage: str, workspace: Path, params, loop: str, step: int) -> str:
    """Run ``anomaly-ov stage STAGE`` in a subprocess (params written to the workspace's params.yaml), wait until
    the loop ``loop`` ("train", "text_warmup") has finished optimiser step ``step``, SIGKILL the process there and
    return its output. The caller chooses ``step`` between two checkpoints. The subprocess gets this process's
    torch thread count, so its arithmetic matches an in-process run bit for bit."""
    import torch

    dump_params(params, workspace / "params.yaml")
    paused = workspace / "paused"
    paused.unlink(missing_ok=True)
    log = workspace / f"{stage}.killed.log"
    threads = str(torch.get_num_threads())  # BLAS too: an earlier test's library may have left them in os.environ
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    runner = Path(__file__).with_name("paused_stage.py")
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, str(runner), stage, str(workspace), loop, str(step)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workspace)
        try:
            while not paused.exists():  # pytest-timeout ends a run that never gets there
                if proc.poll() is not None:
                    raise AssertionError(f"the stage ended before step {step}:\n{log.read_text()[-3000:]}")
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    paused.unlink()
    return log.read_text()


# ------------------------------------------------------------------------------- a pretrained-layout checkpoint
PRETRAINED_OVERRIDES = [
    "tracking.enabled=false",
    "model.preset=llava-onevision-0.5b",
    "train.expert.pretrained.epochs=1",
    "train.expert.pretrained.batch_size=4",
    "train.expert.val_fraction=0.34",
    "train.expert.device=cpu",
    "train.instruct.pretrained.batch_size=2",
    "train.instruct.pretrained.grad_accum=1",
    "train.instruct.device=cpu",
    "train.instruct.checkpoint_every=1",
    "evaluate.resolution=32",
]


def pretrained_params(checkpoint: Path, *extra: str):
    return load_params(None, [*PRETRAINED_OVERRIDES, f"model.checkpoint={checkpoint}", *extra])


@pytest.fixture(scope="session")
def llava_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shrunk hub-layout llava-onevision-qwen2-0.5b-ov-hf directory (tests/real_layout.py) stored in bf16 (the
    release trains in bf16; a bf16 weight rounds lr 1e-5 updates away), session-wide, read-only."""
    from real_layout import write_real_layout_checkpoint

    return write_real_layout_checkpoint(tmp_path_factory.mktemp("llava") / "hub", layout="hub", dtype="bfloat16")


class StopTraining(Exception):
    pass


def stage_one_until(step: int, params, ws, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Run stage 1 and stop it at the end of step ``step`` (after that step's checkpoint, if it writes one); returns
    the steps it ran (a resumed run starts after its checkpoint's step)."""
    from anomaly_ov.train import common
    from anomaly_ov.train.expert import run_train_expert

    real_loop, ran = common.run_loop, []

    def stop_at(*args, **kwargs):
        def hook(done, record):
            ran.append(done)
            if done == step:
                raise StopTraining()
        kwargs["on_step_end"] = hook
        return real_loop(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(common, "run_loop", stop_at)
        with pytest.raises(StopTraining):
            run_train_expert(params, ws)
    return ran


def count_expert_scorings(patch: pytest.MonkeyPatch) -> list[int]:
    """Patch stage 1's ``score_images`` (it still scores) to record each call; returns the growing record."""
    from anomaly_ov.train import expert as stage1

    calls: list[int] = []
    score = stage1.score_images
    patch.setattr(stage1, "score_images", lambda *a, **k: calls.append(1) or score(*a, **k))
    return calls
