"""One function per pipeline stage: the single implementation behind `anomaly-ov stage NAME`, dvc.yaml and Prefect.

Each stage reads :class:`~anomaly_ov.config.Params`, reads its inputs from disk under ``workspace``, writes its
outputs there (atomically), and returns a small JSON-able summary. The work itself lives in the domain packages;
this module only names the stages, opens the stage's MLflow run and logs the summary.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anomaly_ov.config import Params
from anomaly_ov.errors import StageFailed

__all__ = ["STAGES", "StageFailed", "implementation", "run_stage"]

Summary = dict[str, Any]


#: stage name -> "module:function" that does the work; imported lazily so the CLI starts fast.
_IMPLEMENTATIONS: dict[str, str] = {
    "sources": "anomaly_ov.data.prepare:run_sources",
    "prepare": "anomaly_ov.data.prepare:run_prepare",
    "validate": "anomaly_ov.validate.run:run_validate",
    "synthesize": "anomaly_ov.instruct.run:run_synthesize",
    "train_expert": "anomaly_ov.train.expert:run_train_expert",
    "train_instruct": "anomaly_ov.train.instruct:run_train_instruct",
    "evaluate": "anomaly_ov.evaluate.run:run_evaluate",
    "extend_medical": "anomaly_ov.evaluate.extensions:run_extend_medical",
    "extend_3d": "anomaly_ov.evaluate.extensions:run_extend_3d",
    "register": "anomaly_ov.registry:run_register",
}
STAGES: tuple[str, ...] = tuple(_IMPLEMENTATIONS)


def implementation(name: str) -> Callable[[Params, Path], Summary]:
    if name not in _IMPLEMENTATIONS:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    module, _, func = _IMPLEMENTATIONS[name].partition(":")
    return getattr(importlib.import_module(module), func)


def run_stage(name: str, params: Params, workspace: str | Path = ".") -> Summary:
    """Run one stage inside its MLflow run and return its summary (with ``seconds``)."""
    from anomaly_ov import tracking
    from anomaly_ov.data.images import configure

    configure(params.validation.max_image_side)  # the size limit of every image the stage opens
    func = implementation(name)
    workspace = Path(workspace)
    started = time.perf_counter()
    with tracking.stage_run(params, name, workspace):
        summary = dict(func(params, workspace) or {})
        summary["seconds"] = round(time.perf_counter() - started, 3)
        tracking.log_metrics(_numeric(summary), prefix=name)
    return summary


def _numeric(summary: Summary) -> Summary:
    return {k: v for k, v in summary.items() if isinstance(v, int | float | dict) and not isinstance(v, bool)}


def sources(params: Params, workspace: str | Path = ".") -> Summary:
    return run_stage("sources", params, workspace)


def prepare(params: Params, workspace: str | Path = ".") -> Summary:
    return run_stage("prepare", params, workspace)


def validate(params: Params, workspace: str | Path = ".") -> Summary:
    return run_stage("validate", params, workspace)


def synthesize(params: Params, workspace: str | Path = ".") -> Summary:
    return run_stage("synthesize", params, workspace)


def train_expert(params: Params, workspace: str | Path = ".") -> Summary:
    return run_stage("train_expert", params, workspace)


def train_instruct(params: Params, workspace: str | Path = ".") -> Summary:
    return run_stage("train_instruct", params, workspace)


def evaluate(params: Params, workspace: str | Path = ".") -> Summary:
    return run_stage("evaluate", params, workspace)


def extend_medical(params: Params, workspace: str | Path = ".") -> Summary:
    return run_stage("extend_medical", params, workspace)


def extend_3d(params: Params, workspace: str | Path = ".") -> Summary:
    return run_stage("extend_3d", params, workspace)


def register(params: Params, workspace: str | Path = ".") -> Summary:
    return run_stage("register", params, workspace)
