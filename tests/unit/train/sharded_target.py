"""Launch targets for the sharded-training tests (imported by path inside the torchrun child processes).

``both``: stage 1 then stage 2 in the same processes (one torchrun start for the two stages). ``paused``: stage 1
that parks every rank after optimiser step ``ANOMALY_OV_TEST_PAUSE_STEP`` (each rank writes its process id to
``WORKSPACE/paused.rank<R>``), so the test can SIGKILL the whole run at a known point between two checkpoints:
torchrun starts each rank in a session of its own, so killing torchrun's process group does not reach them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from anomaly_ov.train import common
from anomaly_ov.train.expert import run_train_expert
from anomaly_ov.train.instruct import run_train_instruct


def both(params: Any, workspace: Path) -> dict:
    return {"expert": run_train_expert(params, workspace), "instruct": run_train_instruct(params, workspace)}


def paused(params: Any, workspace: Path) -> dict:
    pause_step = int(os.environ["ANOMALY_OV_TEST_PAUSE_STEP"])
    real_loop = common.run_loop

    def run_loop(*args: Any, **kwargs: Any) -> common.LoopResult:
        inner = kwargs.get("on_step_end")

        def hook(step: int, record: Any) -> None:
            if inner is not None:
                inner(step, record)
            if step == pause_step:
                marker = Path(workspace) / f"paused.rank{common.dist_info().rank}"
                partial = marker.with_name(marker.name + ".tmp")
                partial.write_text(str(os.getpid()))
                partial.replace(marker)  # whole: the test reads the id as soon as the file exists
                while True:  # wait for SIGKILL
                    time.sleep(3600)

        kwargs["on_step_end"] = hook
        return real_loop(*args, **kwargs)

    common.run_loop = run_loop
    return run_train_expert(params, workspace)
