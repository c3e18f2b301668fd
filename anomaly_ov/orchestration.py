"""What the Prefect tasks and flows need that is not Prefect: running a DVC stage, reading its reports, MLflow runs.

Prefect owns *when* (ordering, retries, timeouts, schedules, artifacts); DVC owns *whether* (``dvc repro`` skips a
stage whose code, data and params did not change); MLflow owns the record. This module is the glue in plain
Python so that ``tasks/`` and ``flows/`` stay thin and this logic is testable without a Prefect server:

- :func:`build_stage_command` / :func:`run_dvc_stage`: DVC's status first, in this process (:func:`dvc_status`,
  DVC's Python API): a stage it finds up to date is skipped there and then; otherwise ``dvc repro --single-item
  STAGE`` in the workspace as a subprocess, the venv's ``bin`` first on ``PATH`` (DVC resolves ``anomaly-ov`` from
  ``PATH``), the flow's MLflow run id in ``ANOMALY_OV_MLFLOW_PARENT_RUN_ID`` and a fresh invocation id in
  ``ANOMALY_OV_STAGE_INVOCATION``; output streamed line by line for the log. What happened is read from machine
  output only (:func:`interpret_run`): the stage's result file (``reports/stages/STAGE.result.json``, written by
  ``anomaly-ov stage``: status, error kind, message, exit code, retryable, failing files) tells whether this
  invocation ran the stage and how it ended; no result with this invocation and exit status 0 means DVC skipped
  it; when DVC failed before the stage started, the status asked before says what it found. A
  failure is raised as :class:`StageError` with the stage's typed reason and whether retrying could help.
- :func:`summarize_stage`: the stage's report JSON as Markdown + a key/value table (for Prefect artifacts).
- :func:`start_parent_run` / :func:`finish_parent_run`: one MLflow run per flow run, created through the client
  (the active run is thread-local; the id travels explicitly), closed with the evaluation metrics and reports;
  :func:`closing_parent_run` closes it with the block's outcome (FINISHED, FAILED, or KILLED on SIGTERM / Ctrl-C).

Why ``--single-item``: the flow runs the stages in order, one task each, so every upstream stage has just been
reproduced (or found up to date) by its own task. ``--single-item`` makes each task own exactly one stage, so a
retry, timeout, log or artifact is attributed to the stage that caused it, and DVC never re-runs an upstream stage
inside another stage's task. DVC still checks that one stage's deps/params/outs and skips it when nothing changed.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_ov.errors import StageFailed
from anomaly_ov.stages import INVOCATION_ENV, SPECS, read_result, spec, stage_names
from anomaly_ov.tracking import (
    PARENT_RUN_ENV,
    TRACKING_URI_ENV,
    Terminated,
    flatten,
    numeric_metrics,
    sigterm_raises,
    start_tracking,
)

if TYPE_CHECKING:
    from anomaly_ov.config import Params, StageRunParams

#: The flow's stages in run order, from the declarations in anomaly_ov/stages.py: the pipeline stages (``sources``
#: hashes the datasets on every run so that ``prepare`` sees new data outside the workspace), the optional
#: extensions (after evaluate, when enabled in params), and register last.
PIPELINE_STAGES: tuple[str, ...] = stage_names("pipeline")
EXTENSION_STAGES: tuple[str, ...] = stage_names("extension")
(REGISTER_STAGE,) = stage_names("register")

_TAIL_LINES = 400

LineSink = Callable[[str], None]


# ------------------------------------------------------------------------------------------------ errors
class StageError(StageFailed):
    """A stage's ``dvc repro`` failed; ``reason`` is for people, the other fields are for machines.

    Args:
        stage: the stage.
        reason: why, in one paragraph (the stage's own message when it recorded one).
        retryable: whether running it again could help (from the stage's result file: a data or config error is
            not retryable, a transient service error, a kill or a timeout is).
        kind: the error's class name (``InputError``, ``LayoutError``, ``StageFailed``, ...; ``Killed`` when the
            stage process died before recording a result, ``DvcError`` when DVC failed around the stage,
            ``StageTimeout`` on a timeout).
        failing: the files/rows the stage named.
        returncode: the exit status of ``dvc repro``; ``exit_code`` the stage's own (``anomaly_ov.errors``).
    """

    def __init__(
        self,
        stage: str,
        reason: str,
        *,
        retryable: bool,
        kind: str = "StageError",
        failing: Sequence[str] = (),
        returncode: int | None = None,
        exit_code: int | None = None,
    ) -> None:
        super().__init__(stage, reason, failing=failing)
        self.reason = reason
        self.retryable = retryable  # type: ignore[misc]  # per failure, not per class
        self.kind = kind
        self.returncode = returncode
        self.stage_exit_code = exit_code

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "kind": self.kind, "reason": self.reason, "retryable": self.retryable,
                "failing": list(self.failing), "returncode": self.returncode, "exit_code": self.stage_exit_code}


class StageTimeout(StageError):
    """The stage ran longer than ``schedule.stages.<name>.timeout_s``; its process group was killed."""

    exit_code = 5  # as anomaly_ov.errors.TransientError: a retry may finish in time


# ----------------------------------------------------------------------------------------------- commands
@dataclass(frozen=True)
class StageCommand:
    """A subprocess to run: argv, full environment and working directory."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path


def venv_bin() -> Path:
    """The ``bin`` folder of the running interpreter (the venv that holds ``dvc``, ``anomaly-ov``, ``mlflow``)."""
    return Path(sys.executable).parent


def tool(name: str) -> str:
    """Absolute path of a console script of this environment (``dvc``, ``anomaly-ov``), else one from PATH."""
    candidate = venv_bin() / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"`{name}` not found beside {sys.executable} nor on PATH; install the project (pip install -e .)"
        )
    return found


def subprocess_env(
    parent_run_id: str | None = None, tracking_uri: str | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Environment for a stage subprocess: venv bin first on PATH, MLflow parent run and store, no analytics."""
    env = dict(os.environ if base is None else base)
    bin_dir = str(venv_bin())
    path = env.get("PATH", "")
    if bin_dir not in path.split(os.pathsep):
        env["PATH"] = bin_dir + (os.pathsep + path if path else "")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if parent_run_id:
        env[PARENT_RUN_ENV] = parent_run_id
    else:
        env.pop(PARENT_RUN_ENV, None)
    if tracking_uri:
        env[TRACKING_URI_ENV] = tracking_uri
    return env


def build_stage_command(
    stage: str,
    workspace: str | Path,
    *,
    parent_run_id: str | None = None,
    tracking_uri: str | None = None,
    force: bool = False,
    invocation: str | None = None,
) -> StageCommand:
    """``dvc repro --single-item STAGE`` (``--force`` re-runs it even when DVC finds it up to date).

    ``invocation`` travels in ``ANOMALY_OV_STAGE_INVOCATION``; the stage copies it into its result file.
    """
    argv = [tool("dvc"), "repro", "--single-item", stage]
    if force:
        argv.append("--force")
    env = subprocess_env(parent_run_id, tracking_uri)
    env.pop(INVOCATION_ENV, None)
    if invocation:
        env[INVOCATION_ENV] = invocation
    return StageCommand(argv, env, Path(workspace).resolve())


def build_dvc_command(args: Sequence[str], workspace: str | Path) -> StageCommand:
    """Any other ``dvc`` command (``pull``, ``push``, ``status``) with the same environment rules."""
    return StageCommand([tool("dvc"), *args], subprocess_env(), Path(workspace).resolve())


# ------------------------------------------------------------------------------------------------ running
@dataclass
class CommandResult:
    returncode: int
    lines: list[str]
    seconds: float
    timed_out: bool = False


def run_command(
    command: StageCommand, on_line: LineSink | None = None, timeout_s: float | None = None
) -> CommandResult:
    """Run ``command``, passing every output line (stdout and stderr merged) to ``on_line`` as it arrives.

    The process gets its own process group; on timeout, or when the caller is interrupted (Prefect's own timeout,
    Ctrl-C), the whole group is terminated, then killed, so no stage process outlives its task.
    """
    started = time.perf_counter()
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    proc = subprocess.Popen(
        command.argv,
        cwd=command.cwd,
        env=command.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        bufsize=1,
        start_new_session=True,
    )
    timed_out = threading.Event()
    timer = None
    if timeout_s is not None:

        def _expire() -> None:
            timed_out.set()
            _stop(proc)

        timer = threading.Timer(timeout_s, _expire)
        timer.daemon = True
        timer.start()
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            tail.append(line)
            if on_line is not None:
                on_line(line)
        returncode = proc.wait()
    except BaseException:
        _stop(proc)
        raise
    finally:
        if timer is not None:
            timer.cancel()
    return CommandResult(returncode, list(tail), round(time.perf_counter() - started, 3), timed_out.is_set())


def _stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


@dataclass
class StageOutcome:
    """What happened to one stage: run or skipped (up to date), how long, its summary, which attempt."""

    stage: str
    skipped: bool
    seconds: float
    returncode: int = 0
    summary: dict[str, Any] = field(default_factory=dict)
    attempts: int = 1  #: the Prefect attempt that produced this outcome (2 = it succeeded after one retry)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_dvc_stage(
    stage: str,
    workspace: str | Path,
    *,
    params: Params | None = None,
    on_line: LineSink | None = None,
    timeout_s: float | None = None,
    parent_run_id: str | None = None,
    tracking_uri: str | None = None,
    force: bool = False,
) -> StageOutcome:
    """Reproduce one DVC stage and report whether it ran; raise :class:`StageError` with the reason on failure.

    DVC's status is asked first, in this process (DVC's Python API: 0.2-0.9 s of CPU on the tiny workspace): a stage
    it finds up to date is reported skipped without starting ``dvc repro`` (a process that spends about a second of
    CPU starting up to reach the same verdict). Otherwise the reasons go to ``on_line`` ("DVC status: changed deps:
    ...") and ``dvc repro`` decides and runs, as always; ``force`` skips the question.
    """
    started = time.perf_counter()
    stale = [] if force else dvc_status(stage, workspace)
    if not force and not stale:
        return StageOutcome(stage, True, time.perf_counter() - started, 0, {})
    if on_line is not None and stale:
        on_line("DVC status: " + _first(stale))
    invocation = uuid.uuid4().hex
    command = build_stage_command(stage, workspace, parent_run_id=parent_run_id, tracking_uri=tracking_uri,
                                  force=force, invocation=invocation)
    result = run_command(command, on_line, timeout_s)
    record = read_result(workspace, stage)
    ours = record if record is not None and record.get("invocation") == invocation else None
    if ours is None and result.returncode != 0 and not result.timed_out and force:
        stale = dvc_status(stage, workspace)  # DVC failed before the stage started: its status says what it found
    return interpret_run(stage, workspace, result, ours, stale, timeout_s)


def _first(reasons: Sequence[str], count: int = 10) -> str:
    """``reasons`` joined with "; ", the first ``count`` of them (and how many more)."""
    more = f" (+{len(reasons) - count} more)" if len(reasons) > count else ""
    return "; ".join(reasons[:count]) + more


def interpret_run(
    stage: str,
    workspace: str | Path,
    result: CommandResult,
    record: Mapping[str, Any] | None,
    stale: Sequence[str] = (),
    timeout_s: float | None = None,
) -> StageOutcome:
    """The outcome of one ``dvc repro``, from its exit status and the result record this invocation wrote.

    Args:
        stage: the stage.
        workspace: its workspace (to name declared outputs DVC found missing).
        result: the finished ``dvc repro`` command.
        record: the stage's result record when it carries this invocation's id, else None (the stage did not run).
        stale: :func:`dvc_status`'s reasons, shown when DVC failed before the stage started.
        timeout_s: the limit the command ran under.
    """
    if result.timed_out:
        raise StageTimeout(stage, f"timed out after {timeout_s:g} s (schedule.stages.{stage}.timeout_s)",
                           retryable=True, kind="StageTimeout", returncode=result.returncode)
    status = (record or {}).get("status")
    if record is None:
        if result.returncode == 0:
            return StageOutcome(stage, True, result.seconds, 0, {})
        why = _first(stale) or "up to date"
        raise StageError(stage, f"`dvc repro` exited with {result.returncode} before the stage started (DVC status: "
                         f"{why}){_tail(result)}", retryable=False, kind="DvcError", returncode=result.returncode)
    if status == "failed":
        raise StageError(stage, str(record.get("message") or "failed"), retryable=bool(record.get("retryable")),
                         kind=str(record.get("error_kind") or "StageFailed"), failing=record.get("failing") or [],
                         returncode=result.returncode, exit_code=record.get("exit_code"))
    if status != "succeeded":  # still "running": the process died without recording how it ended
        raise StageError(stage, f"the stage process ended without recording a result (`dvc repro` exited with "
                         f"{result.returncode}): killed, out of memory or crashed{_tail(result)}",
                         retryable=True, kind="Killed", returncode=result.returncode)
    if result.returncode != 0:  # the stage succeeded, DVC did not (e.g. a declared output is missing)
        missing = [o.path for o in spec(stage).outs if not (Path(workspace) / o.path).exists()]
        what = f"declared output(s) missing: {', '.join(missing)}" if missing else "see the log"
        raise StageError(stage, f"the stage succeeded but `dvc repro` exited with {result.returncode} ({what})"
                         f"{_tail(result)}", retryable=False, kind="DvcError", failing=missing,
                         returncode=result.returncode)
    return StageOutcome(stage, False, result.seconds, 0, dict(record.get("summary") or {}))


def _tail(result: CommandResult, lines: int = 3) -> str:
    """The last output lines, quoted for people (nothing is parsed from them)."""
    last = [line.strip() for line in result.lines if line.strip()][-lines:]
    return (" — last output: " + " | ".join(last)) if last else ""


def dvc_status(stage: str, workspace: str | Path) -> list[str]:
    """Why DVC finds ``stage`` stale, from ``dvc status`` (DVC's Python API; empty list when up to date).

    Each reason is one ``"changed deps: data/manifest.parquet (modified)"`` string built from DVC's JSON-shaped
    status (``{"stage": [{"changed deps": {"path": "modified"}}, "always changed"]}``).
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(workspace)) as repo:
            status = repo.status(targets=[f"{Path(workspace).resolve() / 'dvc.yaml'}:{stage}"])
    except DvcException as exc:  # e.g. an invalid dvc.yaml: `dvc repro` will fail and say so
        return [f"dvc status failed: {exc}"]
    reasons: list[str] = []
    for entries in status.values():
        for entry in entries:
            if isinstance(entry, str):
                reasons.append(entry)
                continue
            for kind, changes in entry.items():
                if isinstance(changes, Mapping):
                    reasons += [f"{kind}: {path} ({change})" for path, change in changes.items()]
                else:
                    reasons.append(f"{kind}: {changes}")
    return reasons


# --------------------------------------------------------------------------------------------- summaries
def stage_reports(params: Params) -> dict[str, str]:
    """Stage -> the report file its artifact summarises (relative to the workspace), from the declarations."""
    return {spec.name: spec.report_path(params) for spec in SPECS}


@dataclass
class StageSummary:
    """Markdown for people and a ``[{key, value}]`` table for the Prefect UI."""

    markdown: str
    table: list[dict[str, Any]]


def summarize_stage(
    stage: str, params: Params, workspace: str | Path, outcome: StageOutcome | None = None, max_rows: int = 40
) -> StageSummary:
    """Summarise what the stage wrote (its report JSON), whether it ran or DVC found it up to date."""
    workspace = Path(workspace)
    report = workspace / stage_reports(params)[stage]
    status = "skipped (DVC: up to date)" if outcome and outcome.skipped else "ran"
    head = [f"# Stage `{stage}`", "", f"- status: **{status}**"]
    if outcome is not None:
        head.append(f"- seconds: {outcome.seconds:g}")
        if outcome.attempts > 1:
            head.append(f"- attempt: {outcome.attempts} (retried after {outcome.attempts - 1} failure(s))")
    head.append(f"- report: `{stage_reports(params)[stage]}`")
    rows: list[dict[str, Any]] = []
    body: list[str] = []
    if stage == "prepare":
        rows = _manifest_rows(report)
    elif report.exists():
        data = _read(report)
        if stage == "validate" and isinstance(data, dict):
            body = _validation_markdown(data)
            rows = _flat_rows(data.get("summary", {}), max_rows)
        else:
            rows = _flat_rows(data, max_rows)
    else:
        body = [f"_{stage_reports(params)[stage]} is missing._"]
    if not rows and outcome is not None and outcome.summary:
        rows = _flat_rows(outcome.summary, max_rows)
    table_md = _markdown_table(rows) if rows else []
    return StageSummary("\n".join(head + [""] + body + ([""] if body else []) + table_md) + "\n", rows)


def failure_markdown(error: StageError, attempt: int, attempts: int, will_retry: bool) -> str:
    """The failure artifact: typed reason, failing files, retryable, and which attempt of how many this was."""
    if will_retry:
        retry = f"yes: attempt {attempt} of {attempts} failed, Prefect retries it"
    elif error.retryable and attempt >= attempts:
        retry = f"no more attempts ({attempt} of {attempts} used; schedule.stages.{error.stage}.retries)"
    elif error.retryable:
        retry = "no"
    else:
        retry = f"no: a {error.kind} gives the same result every time (attempt {attempt} of {attempts})"
    lines = [f"# Stage `{error.stage}` failed", "", f"- kind: **{error.kind}**", f"- retryable: {error.retryable}",
             f"- attempt: {attempt} of {attempts}", f"- retried: {retry}"]
    if error.stage_exit_code is not None:
        lines.append(f"- exit code: {error.stage_exit_code}")
    lines += ["", error.reason.replace("\n", "  \n"), ""]
    if error.failing:
        lines += ["| failing |", "|---|", *[f"| {_cell(item)} |" for item in error.failing], ""]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return {"error": f"cannot read {path.name}: {exc}"}


def _manifest_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    import pandas as pd

    frame = pd.read_parquet(path, columns=["source", "split", "label"])
    counts = frame.groupby(["source", "split", "label"]).size()
    rows = [{"key": "images", "value": int(len(frame))}]
    rows += [{"key": f"{src}/{split}/label={label}", "value": int(n)} for (src, split, label), n in counts.items()]
    return rows


def _validation_markdown(data: Mapping[str, Any]) -> list[str]:
    verdict = "passed" if data.get("ok", True) else "**FAILED**"
    lines = [f"Validation {verdict}."]
    failed = [c for c in data.get("checks", []) if not c.get("passed", True)]
    if failed:
        lines += ["", "| check | severity | failing | message |", "|---|---|---|---|"]
        for check in failed[:20]:
            message = str(check.get("message", "")).replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {check.get('name')} | {check.get('severity')} | {check.get('n_failing')} | {message} |")
    return lines


def _flat_rows(data: Any, max_rows: int) -> list[dict[str, Any]]:
    """Scalars of a nested report as ``key: value`` rows; for a list of records (a training curve) the last one."""
    flat: dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list):
            if value and all(isinstance(v, Mapping) for v in value):
                walk(value[-1], f"{key}[last]")
            elif value and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
                flat[f"{key}[last]"] = value[-1]
            elif len(value) <= 5 and all(isinstance(v, str | int | float | bool) for v in value):
                flat[key] = ", ".join(str(v) for v in value)
        elif isinstance(value, float):
            flat[key] = round(value, 4) if math.isfinite(value) else str(value)
        elif isinstance(value, str | int | bool) or value is None:
            flat[key] = value if not isinstance(value, str) else value[:200]

    walk(data, "")
    return [{"key": k, "value": v} for k, v in list(flat.items())[:max_rows]]


def _markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| key | value |", "|---|---|"]
    for row in rows:
        value = str(row["value"]).replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {row['key']} | {value} |")
    return lines


def artifact_key(stage: str, suffix: str = "summary") -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]", "-", f"{stage}-{suffix}".lower())


def stage_run_settings(params: Params, stage: str) -> StageRunParams:
    """``schedule.stages.<stage>`` (retries, retry delay, timeout) or the defaults."""
    from anomaly_ov.config import StageRunParams

    return params.schedule.stages.get(stage) or StageRunParams()


def enabled_extensions(params: Params) -> list[str]:
    """Extension stages switched on in params (``extensions.medical.enabled``, ``extensions.threed.enabled``)."""
    chosen = []
    if params.extensions.medical.enabled:
        chosen.append("extend_medical")
    if params.extensions.threed.enabled:
        chosen.append("extend_3d")
    return chosen


# ------------------------------------------------------------------------------------------ MLflow parent
@dataclass
class ParentRun:
    """The MLflow run of one flow run; stage runs nest under it through ``ANOMALY_OV_MLFLOW_PARENT_RUN_ID``."""

    run_id: str
    tracking_uri: str
    experiment_id: str
    owned: bool = True  #: False when the run belongs to an outer flow (retrain -> pipeline) and must stay open


def start_parent_run(
    params: Params, workspace: str | Path, flow_name: str, tags: Mapping[str, str] | None = None
) -> ParentRun | None:
    """Create the flow's MLflow run (tagged with git commit, params hash, dvc.lock hashes) and log params."""
    if not params.tracking.enabled:
        return None
    from mlflow import MlflowClient

    from anomaly_ov.tracking import end_stale_runs, experiment_id, owner_tags, run_tags

    uri = start_tracking(params, workspace)
    client = MlflowClient(uri)
    experiment = experiment_id(client, params.tracking.experiment)
    end_stale_runs(client, experiment, workspace)  # runs of flows/stages killed before they ended
    all_tags = {**run_tags(params, workspace), **owner_tags(workspace), "flow": flow_name,
                **{k: str(v) for k, v in (tags or {}).items()}}
    run = client.create_run(experiment, tags=all_tags, run_name=flow_name)
    flat = [(k, str(v)[:6000]) for k, v in flatten(params.to_dict()).items()]
    from mlflow.entities import Param

    for i in range(0, len(flat), 100):
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in flat[i : i + 100]])
    return ParentRun(run.info.run_id, uri, experiment)


def finish_parent_run(
    parent: ParentRun | None,
    params: Params,
    workspace: str | Path,
    *,
    status: str,
    outcomes: Sequence[StageOutcome] = (),
    error: str | None = None,
) -> None:
    """Log evaluation metrics, stage timings, the reports and the outcome on the flow's run, then close it."""
    if parent is None:
        return
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(parent.tracking_uri)
    workspace = Path(workspace)
    now = int(time.time() * 1000)
    metrics: dict[str, float] = {}
    metrics_file = workspace / params.evaluate.metrics
    if metrics_file.exists():
        metrics.update(numeric_metrics(_read(metrics_file)))
    for outcome in outcomes:
        metrics[f"stage.{outcome.stage}.seconds"] = float(outcome.seconds)
        metrics[f"stage.{outcome.stage}.skipped"] = float(outcome.skipped)
    batch = [Metric(_metric_key(k), v, now, 0) for k, v in metrics.items()]
    for i in range(0, len(batch), 500):
        client.log_batch(parent.run_id, metrics=batch[i : i + 500])
    tags = {"outcome": status.lower()}
    if error:
        tags["error"] = error[:5000]
    register = workspace / params.registry.report
    if register.exists():
        data = _read(register)
        if isinstance(data, dict):
            for key in ("model_name", "version", "verdict", "alias"):
                if data.get(key) is not None:
                    tags[f"registry.{key}"] = str(data[key])
    for key, value in tags.items():
        client.set_tag(parent.run_id, key, value)
    for path in _report_files(params, workspace):
        client.log_artifact(parent.run_id, str(path), artifact_path="reports")
    client.log_text(parent.run_id, json.dumps([o.to_dict() for o in outcomes], indent=2, default=str), "stages.json")
    if parent.owned:
        client.set_terminated(parent.run_id, status=status)


@contextmanager
def closing_parent_run(
    parent: ParentRun | None, params: Params, workspace: str | Path, outcomes: list[StageOutcome]
) -> Iterator[None]:
    """Run the block, then close the flow's run (:func:`finish_parent_run`) with how it ended: FINISHED, FAILED with
    the error, or KILLED when SIGTERM (which raises :class:`~anomaly_ov.tracking.Terminated` inside the block
    instead of leaving the run RUNNING) or Ctrl-C stopped it. ``outcomes`` is read when the run closes, so the block
    appends the stages it ran to it."""
    try:
        with sigterm_raises():
            yield
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, Terminated | KeyboardInterrupt) else "FAILED"
        finish_parent_run(parent, params, workspace, status=status, outcomes=outcomes,
                          error=str(exc) or type(exc).__name__)
        raise
    finish_parent_run(parent, params, workspace, status="FINISHED", outcomes=outcomes)


def _metric_key(key: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in key)


def _report_files(params: Params, workspace: Path) -> list[Path]:
    names = [
        params.validation.report_json,
        params.validation.report_md,
        params.instruct.report,
        params.train.expert.report,
        params.train.instruct.report,
        params.evaluate.metrics,
        params.evaluate.report_md,
        params.registry.report,
    ]
    files = [workspace / n for n in names]
    ext = workspace / params.extensions.report_dir
    if ext.is_dir():
        files += sorted(ext.glob("*.json"))
    return [f for f in files if f.is_file()]


# ------------------------------------------------------------------------------------------ where to look
def where_to_look(params: Params, workspace: str | Path, parent: ParentRun | None = None) -> str:
    """The lines printed at the end of a flow: UIs, reports, the registered version and its alias."""
    workspace = Path(workspace).resolve()
    lines = ["", "Where to look:"]
    if params.tracking.enabled:
        uri = parent.tracking_uri if parent else params.tracking.tracking_uri
        lines.append(f"  MLflow UI:     cd {workspace} && mlflow ui --backend-store-uri {uri}")
        if parent:
            lines.append(f"                 run {parent.run_id} in experiment '{params.tracking.experiment}'")
    api = os.environ.get("PREFECT_API_URL")
    if api:
        lines.append(f"  Prefect UI:    {api.removesuffix('/api')}")
    else:
        lines.append(
            "  Prefect UI:    prefect server start  (then http://127.0.0.1:4200; this run used a temporary server"
            " — set PREFECT_API_URL=http://127.0.0.1:4200/api to keep run history)"
        )
    lines.append(f"  Report:        {workspace / params.evaluate.report_md}")
    lines.append(f"  Metrics:       {workspace / params.evaluate.metrics}")
    register = workspace / params.registry.report
    if register.exists():
        data = _read(register)
        if isinstance(data, dict) and data.get("version") is not None:
            aliases = ", ".join(data.get("aliases") or []) or "none"
            lines.append(
                f"  Model:         models:/{data.get('model_name')}/{data.get('version')} "
                f"(aliases: {aliases}; gate: {data.get('verdict')} — {data.get('reason')})"
            )
        elif isinstance(data, dict):
            lines.append(f"  Model:         not registered ({data.get('reason', 'see ' + params.registry.report)})")
    return "\n".join(lines)


def read_register_report(params: Params, workspace: str | Path) -> dict[str, Any]:
    """The register stage's report (version, aliases, verdict, reason), or {} when it has not run."""
    path = Path(workspace) / params.registry.report
    data = _read(path) if path.exists() else {}
    return data if isinstance(data, dict) else {}
