"""Run a training stage through the real CLI in a subprocess that parks itself at a chosen optimiser step.

``python paused_stage.py STAGE WORKSPACE LOOP STEP`` runs ``anomaly-ov stage STAGE --workspace WORKSPACE`` (the
workspace's params.yaml). When the loop whose MLflow prefix is ``LOOP`` ("train": stage 1 or stage 2's visual
phase; "text_warmup") finishes optimiser step ``STEP``, the process writes ``WORKSPACE/paused`` and sleeps, so the
test can SIGKILL it at a known point between two checkpoints (no race with the training speed).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from anomaly_ov.train import common


def main(stage: str, workspace: str, loop: str, pause_step: int) -> None:
    real_loop = common.run_loop

    def run_loop(*args, **kwargs):
        settings = args[6] if len(args) > 6 else kwargs["settings"]
        inner = kwargs.get("on_step_end")
        if settings.log_prefix == loop:
            def hook(step, record):
                if inner is not None:
                    inner(step, record)
                if step == pause_step:
                    (Path(workspace) / "paused").write_text(str(step))
                    while True:  # wait for SIGKILL
                        time.sleep(3600)
            kwargs["on_step_end"] = hook
        return real_loop(*args, **kwargs)

    common.run_loop = run_loop
    from anomaly_ov.cli import app

    app(["stage", stage, "--workspace", workspace], standalone_mode=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
