"""Multi-process training: the stage re-launches itself through ``torchrun`` when ``num_processes > 1``.

Parent side (:func:`relaunch`): writes the effective params to a temporary JSON file and runs
``python -m torch.distributed.run --standalone --nproc_per_node N -m anomaly_ov.train.launch TARGET ...``
(on several machines, ``train.launch``: ``--nnodes``, ``--node-rank``, ``--rdzv-backend``, ``--rdzv-endpoint``,
``--rdzv-id`` instead of ``--standalone``; every node runs the same stage command with its own ``node_rank``);
waits; returns the summary rank 0 wrote (on the other nodes: a summary saying which node this was). The
parent's active MLflow run id travels in ``ANOMALY_OV_MLFLOW_RUN_ID`` so rank 0 logs into the same (stage) run;
the other ranks log nothing.

Child side (:func:`main`): loads the params, joins the MLflow run on rank 0, silences logging below ERROR on the
other ranks, calls the stage function (which sees ``WORLD_SIZE`` > 1, wraps its model for the stage's strategy —
gloo on CPU, nccl on CUDA — and lets rank 0 alone save), and rank 0 writes the summary JSON. TARGET is a stage
name (``train_expert``, ``train_instruct``), ``module:function`` or
``path/to/file.py:function`` (a function with the stage signature ``(params, workspace) -> dict``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_ov.errors import ConfigError, TransientError
from anomaly_ov.stages import launch_targets

if TYPE_CHECKING:
    from anomaly_ov.config import LaunchParams, Params

RUN_ID_ENV = "ANOMALY_OV_MLFLOW_RUN_ID"
#: stage name -> "module:function" of the stages declared ``launchable`` in anomaly_ov/stages.py
TARGETS: dict[str, str] = launch_targets()


class LaunchFailed(TransientError):
    """A distributed run exited with an error; the message carries the tail of its output."""


def resolve_target(target: str) -> Callable[..., dict[str, Any]]:
    spec = TARGETS.get(target, target)
    module_name, sep, func = spec.rpartition(":")
    if not sep:
        raise ConfigError(f"launch target {target!r}: use a stage name ({', '.join(TARGETS)}) or module:function")
    if module_name.endswith(".py"):
        file_spec = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
        if file_spec is None or file_spec.loader is None:
            raise ConfigError(f"launch target {target!r}: cannot import {module_name}")
        module = importlib.util.module_from_spec(file_spec)
        file_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    return getattr(module, func)


def torchrun_args(nproc: int, launch: LaunchParams) -> list[str]:
    """torchrun's options for ``nproc`` processes on this node: ``--standalone`` on one machine, else the
    rendezvous of ``train.launch`` (node count, this node's rank, endpoint, backend, run id)."""
    if launch.nnodes == 1:
        return ["--standalone", f"--nproc-per-node={nproc}"]
    return [f"--nnodes={launch.nnodes}", f"--node-rank={launch.node_rank}", f"--nproc-per-node={nproc}",
            f"--rdzv-backend={launch.rdzv_backend}", f"--rdzv-endpoint={launch.rdzv_endpoint}",
            f"--rdzv-id={launch.rdzv_id}"]


def relaunch(target: str, params: Params, workspace: str | Path, nproc: int, timeout_s: float | None = None
             ) -> dict[str, Any]:
    """Run ``target`` in ``nproc`` processes (on this node; ``params.train.launch`` for several) under torchrun
    and return rank 0's summary. A node other than node 0 returns ``{"node_rank": r, "num_processes": world}``:
    its ranks trained, node 0 wrote the outputs."""
    from anomaly_ov import tracking

    launch = params.train.launch
    timeout_s = timeout_s if timeout_s is not None else launch.timeout_s

    workspace = Path(workspace).resolve()
    with tempfile.TemporaryDirectory(prefix="anomaly-ov-launch-") as tmp:
        params_file = Path(tmp) / "params.json"
        result_file = Path(tmp) / "result.json"
        params_file.write_text(json.dumps(params.to_dict()))
        env = dict(os.environ)
        run_id = tracking.current_run_id()
        if run_id:
            import mlflow

            env[RUN_ID_ENV] = run_id
            env[tracking.TRACKING_URI_ENV] = mlflow.get_tracking_uri()
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args(nproc, launch),
               "-m", "anomaly_ov.train.launch", target, "--params-json", str(params_file),
               "--workspace", str(workspace), "--result-json", str(result_file)]
        where = f" on node {launch.node_rank} of {launch.nnodes}" if launch.nnodes > 1 else ""
        try:
            done = subprocess.run(cmd, env=env, cwd=workspace, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            tail = (_text(exc.stdout) + _text(exc.stderr))[-4000:]
            raise LaunchFailed(f"{target} with {nproc} processes{where} ran past {timeout_s} s "
                               f"(train.launch.timeout_s):\n{tail}") from None
        if done.returncode != 0 or (launch.node_rank == 0 and not result_file.exists()):
            tail = (done.stdout + done.stderr)[-4000:]
            raise LaunchFailed(f"{target} with {nproc} processes{where} exited with code {done.returncode}:\n{tail}")
        if launch.node_rank != 0:
            return {"node_rank": launch.node_rank, "num_processes": nproc * launch.nnodes}
        return json.loads(result_file.read_text())


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value or ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anomaly_ov.train.launch", description=__doc__.split("\n")[0])
    parser.add_argument("target")
    parser.add_argument("--params-json", required=True)
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--result-json", required=True)
    args = parser.parse_args(argv)

    from anomaly_ov import tracking
    from anomaly_ov.config import params_from_dict
    from anomaly_ov.io import atomic_write_json
    from anomaly_ov.train.common import dist_info, shutdown_distributed

    params = params_from_dict(json.loads(Path(args.params_json).read_text()), args.params_json)
    workspace = Path(args.workspace)
    func = resolve_target(args.target)
    info = dist_info()
    if not info.is_main:
        logging.disable(logging.WARNING)  # rank 0 alone logs (errors still show)
    run_id = os.environ.get(RUN_ID_ENV)
    try:
        if info.is_main and run_id and params.tracking.enabled:
            import mlflow

            tracking.configure(params, workspace)
            with mlflow.start_run(run_id=run_id):
                summary = func(params, workspace)
        else:
            summary = func(params, workspace)
        if info.is_main:
            atomic_write_json(args.result_json, {**dict(summary or {}), "num_processes": info.world_size})
    finally:
        shutdown_distributed()
    return 0


if __name__ == "__main__":
    from anomaly_ov.shutdown import exit_process

    exit_process(main())  # a rank's process ends without the interpreter's 2-3 s teardown of torch's modules
