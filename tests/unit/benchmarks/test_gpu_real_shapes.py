"""benchmarks/gpu_real_shapes.py runs on a CPU (shrunk model, small image, the warm-up step only) and prints every
figure it promises: per stage time, images/s, tokens/s, peak memory, FLOPs and MFU; the 0.5B memory plan."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
FIGURES = (r"(\d+) ms/step, ([\d.]+) images/s, ([\d,]+) tokens/s, peak memory ([\d.]+) GiB, ([\d.]+) TFLOP/step, "
           r"[\d.]+ TFLOP/s, MFU ([\d.]+)%")


@pytest.mark.slow
def test_gpu_real_shapes_smoke_on_cpu():
    cmd = [sys.executable, str(REPO / "benchmarks/gpu_real_shapes.py"), "--device", "cpu", "--shrink",
           "--image-size", "384x576", "--steps", "0", "--stage1-batch", "2", "--threads", "1", "--peak-tflops", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for stage in ("stage 1", "stage 2"):
        match = re.search(rf"^{stage}: {FIGURES}$", out, re.MULTILINE)
        assert match, f"no figures for {stage} in:\n{out}"
        ms, images, tokens, memory, tflop, mfu = match.groups()
        assert int(ms) > 0 and float(images) > 0 and int(tokens.replace(",", "")) > 0 and float(memory) > 0
        assert float(tflop) > 0 and float(mfu) > 0
    # a 384 x 576 image is a 1 x 2 crop grid of 384 px (anyres), 27 x 27 patches each
    assert "stage 2: batch 1 x" in out and "grid 1x2" in out and "crops of 729 patches" in out
    # the project's memory plan of the real 0.5B at this step's shapes (not the shrunk model), 1 GPU and ZeRO-2 over 8
    plans = dict(re.findall(r"^plan llava-onevision-0.5b stage 2 \(\d+ tokens, (ddp on 1 GPU|zero2 on 8 GPUs), "
                            r"checkpointing\): ([\d.]+) GiB per GPU", out, re.MULTILINE))
    assert set(plans) == {"ddp on 1 GPU", "zero2 on 8 GPUs"}, out
    assert 5 < float(plans["ddp on 1 GPU"]) < 20 and float(plans["zero2 on 8 GPUs"]) < float(plans["ddp on 1 GPU"])
