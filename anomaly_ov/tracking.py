"""MLflow run helpers: one parent run per flow run, one nested run per stage.

A stage called from a Prefect flow finds the flow's run id in ``ANOMALY_OV_MLFLOW_PARENT_RUN_ID`` and opens a
nested run under it; a stage called by hand (``anomaly-ov stage NAME``) opens a run of its own. Each stage run is
tagged with the git commit, the params hash and the ``dvc.lock`` hashes of the data outputs, so a model version
points back to the exact data it came from. With ``tracking.enabled: false`` every helper is a no-op.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anomaly_ov.config import Params

log = logging.getLogger(__name__)

PARENT_RUN_ENV = "ANOMALY_OV_MLFLOW_PARENT_RUN_ID"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
#: The store this process was started with (a flow hands it to its stage processes). Read once: MLflow's own
#: ``set_tracking_uri`` exports the variable, so reading it later would return whatever store was used last.
_INHERITED_URI = os.environ.get(TRACKING_URI_ENV) or None


def configure(params: Params, workspace: str | Path = ".", honour_env: bool = True) -> str | None:
    """Point MLflow at the configured store (a SQLite file in the workspace by default) and experiment.

    A ``MLFLOW_TRACKING_URI`` present when the process started wins (``honour_env``), so that a stage launched by a
    flow logs where the flow does; otherwise ``params.tracking.tracking_uri``, anchored to ``workspace``.
    """
    if not params.tracking.enabled:
        return None
    import mlflow

    inherited = _INHERITED_URI if honour_env else None
    uri = inherited or _absolute_sqlite_uri(params.tracking.tracking_uri, workspace)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(params.tracking.experiment)
    if experiment is None:
        artifact_location = params.tracking.artifact_location
        if artifact_location is None:
            artifact_location = (Path(workspace).resolve() / "mlruns").as_uri()
        mlflow.create_experiment(params.tracking.experiment, artifact_location=artifact_location)
    mlflow.set_experiment(params.tracking.experiment)
    return uri


def _absolute_sqlite_uri(uri: str, workspace: str | Path) -> str:
    """``sqlite:///mlflow.db`` is relative to the current folder; anchor it to the workspace instead."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(workspace).resolve() / uri[len(prefix) :])
    return uri


def run_tags(params: Params, workspace: str | Path = ".") -> dict[str, str]:
    """Lineage tags: git commit (and dirty flag), params hash, and each dvc.lock data-output hash."""
    tags = {"params_hash": params.section_hash(), "preset": params.model.preset}
    commit = _git(workspace, "rev-parse", "HEAD")
    if commit:
        tags["git_commit"] = commit
        tags["git_dirty"] = str(bool(_git(workspace, "status", "--porcelain", "--untracked-files=no")))
    for out, md5 in dvc_lock_hashes(workspace).items():
        tags[f"dvc.{out}"] = md5
    return tags


def _git(workspace: str | Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=workspace, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def dvc_lock_hashes(workspace: str | Path = ".") -> dict[str, str]:
    """``{out path: md5}`` for every stage output recorded in dvc.lock (empty when there is none)."""
    lock = Path(workspace) / "dvc.lock"
    if not lock.exists():
        return {}
    import yaml

    data = yaml.safe_load(lock.read_text()) or {}
    hashes: dict[str, str] = {}
    for stage in (data.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if "md5" in out:
                hashes[out["path"]] = out["md5"]
    return hashes


# ------------------------------------------------------------------------------------- runs that outlive a kill
PID_TAG, HOST_TAG, STARTED_TAG, WORKSPACE_TAG = "process.pid", "process.host", "process.started", "workspace"


class Terminated(SystemExit):
    """Raised in the main thread by SIGTERM while a run is open, so the run can end as KILLED (exit code 143)."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def _process_started(pid: int) -> str:
    """The start time of process ``pid`` (tells a live owner from a later process that reused its pid)."""
    import psutil

    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""


def owner_tags(workspace: str | Path) -> dict[str, str]:
    """Tags naming the process that owns a run: pid, host, its start time, and the workspace."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname(), STARTED_TAG: _process_started(os.getpid()),
            WORKSPACE_TAG: str(Path(workspace).resolve())}


def _owner_is_gone(tags: Mapping[str, str]) -> bool:
    try:
        pid = int(tags.get(PID_TAG, ""))
    except ValueError:
        return False
    started = _process_started(pid)
    return not started or (bool(tags.get(STARTED_TAG)) and started != tags.get(STARTED_TAG))


def experiment_id(client: Any, name: str) -> str:
    """The id of MLflow experiment ``name`` (``client``: an ``MlflowClient``), which :func:`configure` creates."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        from anomaly_ov.errors import ConfigError

        raise ConfigError(f"MLflow experiment {name!r} not found in {client.tracking_uri}: check tracking.experiment "
                          "and tracking.tracking_uri (the pipeline creates the experiment on its first run)")
    return str(experiment.experiment_id)


def end_stale_runs(client: Any, experiment_id: str, workspace: str | Path) -> list[str]:
    """Mark KILLED the RUNNING runs of ``workspace`` whose process on this host is gone (SIGKILL, OOM, power loss
    leave a run RUNNING forever); returns their ids. Runs owned by another host, or by a process that is still
    alive, are left alone: this host cannot tell whether they are still working."""
    here = {WORKSPACE_TAG: str(Path(workspace).resolve()), HOST_TAG: socket.gethostname()}
    ended = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000):
        if any(run.data.tags.get(k) != v for k, v in here.items()):
            continue
        if _owner_is_gone(run.data.tags):
            client.set_tag(run.info.run_id, "ended_by", f"stale: process {run.data.tags[PID_TAG]} is gone")
            client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
    if ended:
        log.warning("marked %d MLflow run(s) of %s KILLED: their process is gone (%s)", len(ended), workspace,
                    ", ".join(ended))
    return ended


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While open, SIGTERM raises :class:`Terminated` in the main thread (elsewhere: nothing changes)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def stage_run(params: Params, stage: str, workspace: str | Path = ".") -> Iterator[Any]:
    """Open the stage's MLflow run (nested under the flow's run when one is in the environment).

    The run records its process (pid, host, start time): the next stage or flow started in this workspace marks it
    KILLED if the process died without closing it. SIGTERM (a timeout, ``docker stop``, Ctrl-C of the flow)
    ends it as KILLED; any other exception as FAILED.
    """
    if not params.tracking.enabled:
        yield None
        return
    import mlflow

    configure(params, workspace)
    client = mlflow.MlflowClient()
    end_stale_runs(client, experiment_id(client, params.tracking.experiment), workspace)
    parent = os.environ.get(PARENT_RUN_ENV)
    tags = {**run_tags(params, workspace), **owner_tags(workspace), "stage": stage}
    if parent:
        tags["mlflow.parentRunId"] = parent
    with sigterm_raises():
        run = mlflow.start_run(run_name=stage, tags=tags)
        try:
            yield run
        except Terminated:
            mlflow.end_run("KILLED")
            raise
        except BaseException:
            mlflow.end_run("FAILED")
            raise
        mlflow.end_run("FINISHED")


def active() -> bool:
    if "mlflow" not in __import__("sys").modules:
        return False
    import mlflow

    return mlflow.active_run() is not None


def log_params(values: Mapping[str, Any], prefix: str = "") -> None:
    """Log a (nested) mapping of params with dotted keys; no-op outside a run."""
    if not active():
        return
    import mlflow

    flat = flatten(values, prefix)
    items = list(flat.items())
    for i in range(0, len(items), 100):
        mlflow.log_params({k: str(v)[:6000] for k, v in items[i : i + 100]})


def log_metrics(values: Mapping[str, Any], step: int | None = None, prefix: str = "") -> None:
    """Log the numeric entries of a (nested) mapping; None and non-numbers are skipped."""
    if not active():
        return
    import mlflow

    numeric = {}
    for key, value in flatten(values, prefix).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if value != value:  # NaN: MLflow stores it, but a missing metric reads better than NaN
            continue
        numeric[_metric_key(key)] = float(value)
    if numeric:
        mlflow.log_metrics(numeric, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    if not active():
        return
    import mlflow

    path = Path(path)
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path=artifact_path)
    elif path.exists():
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def set_tags(tags: Mapping[str, Any]) -> None:
    if not active():
        return
    import mlflow

    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def current_run_id() -> str | None:
    if not active():
        return None
    import mlflow

    run = mlflow.active_run()
    return run.info.run_id if run is not None else None


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def _metric_key(key: str) -> str:
    """MLflow metric names allow letters, digits, ``_ - . / space``; replace anything else."""
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in key)


def start_tracking(params: Params, workspace: str | Path) -> str:
    """Configure MLflow for ``workspace`` from ``params.tracking`` and return the URI to hand to stage processes.

    In the flow (or CLI) process the workspace's params decide the store: ``MLFLOW_TRACKING_URI`` is dropped first,
    because ``mlflow.set_tracking_uri`` itself exports it, so a process that has touched another workspace would
    otherwise keep writing to that workspace's database. The variable then carries this URI to stage processes.
    """
    os.environ.pop(TRACKING_URI_ENV, None)
    return configure(params, workspace, honour_env=False) or ""


def numeric_metrics(data: Any) -> dict[str, float]:
    """Flat ``{"zero_shot.image_auroc": 0.91, ...}`` from a (nested or flat) metrics JSON; non-numbers dropped."""
    if not isinstance(data, Mapping):
        return {}
    out = {}
    for key, value in flatten(data).items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            continue
        out[key] = float(value)
    return out
