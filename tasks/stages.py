"""Prefect tasks: one thin task per DVC stage, plus `dvc pull` / `dvc push` and the promotion report.

A stage task runs ``dvc repro --single-item <stage>`` through :mod:`anomaly_ov.orchestration` when DVC's status
finds the stage stale (DVC decides; the stage itself is ``anomaly-ov stage <stage>``, declared in
``anomaly_ov/stages.py``), streams its output into the Prefect run logger, and publishes a Markdown + table artifact
built from the stage's report.
Whether the stage ran, was skipped or failed, and whether a retry could help, come from the stage's result file and
DVC's status (never from the text of the output). Retries, retry delay and timeout come from
``params.schedule.stages[<stage>]`` via :func:`stage_task`; the retry policy reads the failure's ``retryable``, so
deterministic failures (bad data, a failed validation, a bad param) are never retried. A failure is logged and
published as the ``<stage>-failure`` artifact with its kind, the failing files and the attempt (n of m).

Task caching is off (``NO_CACHE``): DVC alone decides whether a stage needs to run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from anomaly_ov import orchestration as orch
from anomaly_ov.config import Params


def _retryable(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only failures whose result says ``retryable`` (a kill, a timeout, a transient service error)."""
    try:
        state.result()
    except orch.StageError as exc:
        return exc.retryable
    except Exception:  # noqa: BLE001 - anything else (e.g. Prefect's own timeout) may be transient
        return True
    return True


@task(name="stage", cache_policy=NO_CACHE, retry_condition_fn=_retryable)
def run_stage_task(
    stage: str,
    workspace: str,
    params: Params,
    parent_run_id: str | None = None,
    tracking_uri: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Reproduce one DVC stage; return its outcome (``skipped`` is True when DVC found it up to date)."""
    from prefect.runtime import task_run

    logger = get_run_logger()
    settings = orch.stage_run_settings(params, stage)
    attempt, attempts = max(task_run.run_count, 1), settings.retries + 1
    try:
        outcome = orch.run_dvc_stage(
            stage,
            workspace,
            params=params,
            on_line=lambda line: logger.info("%s | %s", stage, line),
            timeout_s=settings.timeout_s,
            parent_run_id=parent_run_id,
            tracking_uri=tracking_uri,
            force=force,
        )
    except orch.StageError as exc:
        will_retry = exc.retryable and attempt < attempts
        failing = f" | failing: {'; '.join(exc.failing[:10])}" if exc.failing else ""
        then = "Prefect will retry it" if will_retry else "not retried"
        logger.error("%s failed on attempt %d of %d: %s: %s%s | retryable: %s, %s", stage, attempt, attempts,
                     exc.kind, exc.reason, failing, exc.retryable, then)
        create_markdown_artifact(orch.failure_markdown(exc, attempt, attempts, will_retry),
                                 key=orch.artifact_key(stage, "failure"), description=f"why {stage} failed")
        raise
    outcome.attempts = attempt
    if outcome.skipped:
        logger.info("%s: skipped by DVC (inputs, params and outputs unchanged)", stage)
    else:
        retried = f" (attempt {attempt} of {attempts}, after {attempt - 1} failed)" if attempt > 1 else ""
        logger.info("%s: ran in %.1f s%s", stage, outcome.seconds, retried)
    summary = orch.summarize_stage(stage, params, workspace, outcome)
    create_markdown_artifact(summary.markdown, key=orch.artifact_key(stage), description=f"{stage} summary")
    if summary.table:
        create_table_artifact(summary.table, key=orch.artifact_key(stage, "table"), description=f"{stage} figures")
    return outcome.to_dict()


def stage_task(stage: str, params: Params):
    """The stage task configured for ``stage``: name, retries, retry delay and timeout from params.schedule."""
    settings = orch.stage_run_settings(params, stage)
    return run_stage_task.with_options(
        name=stage,
        task_run_name=stage,
        retries=settings.retries,
        retry_delay_seconds=settings.retry_delay_s,
        # DVC's process is stopped by our own timer at timeout_s; Prefect's limit is a backstop a little later.
        timeout_seconds=settings.timeout_s + 30,
    )


@task(name="dvc", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def dvc_task(args: list[str], workspace: str, tolerate_failure: bool = False) -> dict[str, Any]:
    """Run a ``dvc`` command (``pull``, ``push``) in the workspace with its output in the task log."""
    logger = get_run_logger()
    command = orch.build_dvc_command(args, workspace)
    result = orch.run_command(command, on_line=lambda line: logger.info("dvc %s | %s", args[0], line))
    if result.returncode != 0:
        message = f"`dvc {' '.join(args)}` exited with {result.returncode}: " + " | ".join(result.lines[-3:])
        if not tolerate_failure:
            raise RuntimeError(message)
        logger.warning("%s (tolerated)", message)
    return {"args": args, "returncode": result.returncode, "seconds": result.seconds}


@task(name="promotion", cache_policy=NO_CACHE)
def promotion_task(workspace: str, params: Params) -> dict[str, Any]:
    """Publish the promotion gate's decision (taken by the register stage) as an artifact; warn on a refusal."""
    import json

    logger = get_run_logger()
    report = Path(workspace) / params.registry.report
    if not report.exists():
        logger.warning("no %s: the register stage did not run", params.registry.report)
        return {}
    decision = json.loads(report.read_text())
    summary = orch.summarize_stage("register", params, workspace)
    create_markdown_artifact(summary.markdown, key="promotion-decision", description="promotion gate decision")
    verdict = decision.get("verdict")
    if verdict == "production":
        logger.info("version %s promoted to production: %s", decision.get("version"), decision.get("reason"))
    else:
        logger.warning("version %s NOT promoted to production (%s): %s",
                       decision.get("version"), verdict, decision.get("reason"))
    return decision
