"""The MLflow model registry side: a pyfunc wrapping the saved model, registration, the promotion gate, rollback.

- :class:`AnomalyOVPyfunc`: an ``mlflow.pyfunc.PythonModel`` around ``models/anomaly_ov`` (artifact key
  ``model_dir``). Input: a DataFrame with a column ``image`` (base64-encoded image bytes, optionally as
  ``data:image/png;base64,...``; file paths only under folders the server allows, see ``anomaly_ov.serving``) and
  an optional ``question``; rows, bytes and pixels are capped (``ServeLimits``). Output: ``score``, ``label``,
  ``answer`` and, with the inference param ``return_map=True``, the anomaly map as a nested list. It loads the
  model through ``anomaly_ov.model.predict.Predictor`` so serving and ``anomaly-ov predict`` share one
  implementation. The serving environment needs the ``anomaly-ov`` package installed
  (``mlflow models serve --env-manager local``).
- :func:`run_register` (the ``register`` stage): log + register the model with ``reports/metrics.json``, alias
  ``candidate``, run the gate, write ``params.registry.report``.
- The gate (:func:`decide` is the pure rule, :func:`apply_gate` applies it): a new version becomes ``candidate``;
  ``staging`` when every metric in ``registry.thresholds`` is met; ``production`` when it also beats the current
  production on ``registry.primary_metric`` by at least ``registry.margin`` (and strictly), or when there is no
  production yet. A worse model never replaces production automatically. Every decision is written as tags on
  the version (``metric.*``, ``gate.*``), and every change of production is appended to the registered model's
  ``production_history`` tag so that :func:`rollback` can restore the one before.

Aliases are read with ``get_model_version`` / ``get_model_version_by_alias`` (``search_model_versions`` returns
empty aliases on SQLite).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR

from anomaly_ov.config import Params, RegistryParams

ALIASES = ("candidate", "staging", "production")
MODEL_ARTIFACT = "model"
HISTORY_TAG = "production_history"
PREVIOUS_TAG = "previous_production"
_log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- pyfunc
def decode_image(value: Any, limits: Any = None):
    """A PIL RGB image from base64 bytes (``data:`` URI allowed) under the serving limits (paths only if enabled)."""
    from anomaly_ov.serving import ServeLimits, decode_row_image

    return decode_row_image(value, limits or ServeLimits())


def encode_image(path: str | Path) -> str:
    """Base64 text of an image file (what a client sends to ``/invocations``)."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


class AnomalyOVPyfunc(mlflow.pyfunc.PythonModel):
    """Anomaly-OV as a pyfunc: DataFrame(image[, question]) -> DataFrame(score, label, answer[, anomaly_map]).

    A request the client got wrong (bad image, over a limit, a path where none is allowed) raises an
    ``MlflowException`` with ``INVALID_PARAMETER_VALUE``, which MLflow's scoring server answers with HTTP 400 and
    the message alone; any other failure is logged here with its traceback and the client gets a short 500 with a
    reference, never the traceback or the server's paths.
    """

    def load_context(self, context) -> None:
        from anomaly_ov.model.predict import Predictor
        from anomaly_ov.serving import ServeLimits

        self.limits = ServeLimits.from_env()
        self.predictor = Predictor.from_pretrained(context.artifacts["model_dir"])

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from anomaly_ov.serving import RequestError

        try:
            return self._predict(model_input, params or {})
        except RequestError as exc:
            raise MlflowException.invalid_parameter_value(str(exc)) from None
        except MlflowException:
            raise
        except Exception:
            ref = uuid.uuid4().hex[:12]
            _log.exception("scoring failed (ref %s)", ref)
            raise MlflowException(
                f"internal error while scoring (ref {ref}); the server log has the details", error_code=INTERNAL_ERROR
            ) from None

    def _predict(self, model_input: Any, params: dict[str, Any]) -> pd.DataFrame:
        from anomaly_ov.serving import RequestError, ServeLimits, check_request, decode_row_image

        limits = getattr(self, "limits", None) or ServeLimits()
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "image" not in frame.columns:
            raise RequestError(f"input needs a column 'image' (base64 image bytes); got columns {list(frame.columns)}")
        threshold = float(params.get("threshold", 0.5))
        if not 0.0 <= threshold <= 1.0:
            raise RequestError(f"params.threshold={threshold} is outside 0..1")
        generate = bool(params.get("generate", False))
        return_map = bool(params.get("return_map", False))
        questions = frame["question"] if "question" in frame.columns else pd.Series([None] * len(frame))
        keyed = [(None if q is None or (isinstance(q, float) and math.isnan(q)) else str(q)) for q in questions]
        images = list(frame["image"])
        check_request(images, keyed, limits)
        rows: list[dict[str, Any] | None] = [None] * len(frame)
        # one call per distinct question keeps batching where it is possible; images are decoded one batch at a time
        for question in dict.fromkeys(keyed):
            index = [i for i, q in enumerate(keyed) if q == question]
            for start in range(0, len(index), limits.batch_size):
                chunk = index[start : start + limits.batch_size]
                decoded = [decode_row_image(images[i], limits, row=i) for i in chunk]
                preds = self.predictor.predict(
                    decoded, question=question, generate=generate or question is not None, threshold=threshold,
                    batch_size=len(decoded),
                )
                for i, pred in zip(chunk, preds, strict=True):
                    row = {"score": float(pred.score), "label": str(pred.label), "answer": pred.answer or ""}
                    if return_map:
                        row["anomaly_map"] = pred.anomaly_map.tolist()
                    rows[i] = row
        return pd.DataFrame(rows)


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("string", "image"), ColSpec("string", "question", required=False)])
    outputs = Schema([ColSpec("double", "score"), ColSpec("string", "label"), ColSpec("string", "answer")])
    params = ParamSchema(
        [
            ParamSpec("threshold", "double", 0.5),
            ParamSpec("generate", "boolean", False),
            ParamSpec("return_map", "boolean", False),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def _example_image_b64(size: int = 32) -> str:
    import numpy as np
    from PIL import Image

    grid = (np.indices((size, size)).sum(axis=0) % 2 * 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(grid).convert("RGB").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def pip_requirements() -> list[str]:
    """Pinned requirements of the pyfunc: this package and what it needs to load and run the model."""
    reqs = []
    for dist in ("anomaly-ov", "mlflow", "torch", "transformers", "tokenizers", "safetensors", "pillow", "numpy",
                 "pandas"):
        try:
            reqs.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            reqs.append(dist)
    return reqs


def log_model(model_dir: str | Path, registered_model_name: str | None = None, validate_example: bool = True):
    """Log ``model_dir`` as the pyfunc in the active run (and register it); returns MLflow's ``ModelInfo``."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} not found: run the train_instruct stage first")
    example = pd.DataFrame({"image": [_example_image_b64()]})
    return mlflow.pyfunc.log_model(
        name=MODEL_ARTIFACT,
        python_model=AnomalyOVPyfunc(),
        artifacts={"model_dir": str(model_dir)},
        pip_requirements=pip_requirements(),
        signature=_signature(),
        input_example=example if validate_example else None,
        registered_model_name=registered_model_name,
    )


# -------------------------------------------------------------------------------------------------- gate
@dataclass
class GateDecision:
    """The gate's verdict for one version: ``candidate`` (rejected), ``staging`` or ``production``."""

    verdict: str
    reason: str
    failures: list[str] = field(default_factory=list)
    primary: float | None = None
    production_primary: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    metrics: Mapping[str, float],
    registry: RegistryParams,
    production_metrics: Mapping[str, float] | None,
) -> GateDecision:
    """The promotion rule (pure): thresholds for staging, then beat production on the primary metric by margin."""
    failures = []
    for key, minimum in sorted(registry.thresholds.items()):
        value = metrics.get(key)
        if value is None:
            failures.append(f"{key} missing from the metrics (need >= {minimum:g})")
        elif not value >= minimum:
            failures.append(f"{key}={value:.4f} < {minimum:g}")
    primary = metrics.get(registry.primary_metric)
    if failures:
        return GateDecision("candidate", "below thresholds: " + "; ".join(failures), failures, primary)
    if production_metrics is None:
        return GateDecision("production", "passed thresholds; no production version yet", [], primary)
    current = production_metrics.get(registry.primary_metric)
    name = registry.primary_metric
    if primary is None:
        return GateDecision("staging", f"{name} missing: cannot compare with production", [], None, current)
    if current is None:
        return GateDecision("production", f"production has no {name} recorded; replacing it", [], primary)
    gain = primary - current
    if gain > 0 and gain >= registry.margin:
        reason = f"{name} {primary:.4f} beats production {current:.4f} by {gain:.4f} (margin {registry.margin:g})"
        return GateDecision("production", reason, [], primary, current)
    reason = (f"passed thresholds but {name} {primary:.4f} does not beat production {current:.4f} "
              f"by the margin {registry.margin:g}")
    return GateDecision("staging", reason, [], primary, current)


def version_metrics(client: MlflowClient, name: str, version: str | int) -> dict[str, float]:
    """The metrics recorded on a version's ``metric.*`` tags."""
    tags = client.get_model_version(name, str(version)).tags
    out = {}
    for key, value in tags.items():
        if key.startswith("metric."):
            try:
                out[key[len("metric."):]] = float(value)
            except ValueError:
                continue
    return out


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version holding ``alias``, or None."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def production_history(client: MlflowClient, name: str) -> list[str]:
    tags = client.get_registered_model(name).tags
    try:
        history = json.loads(tags.get(HISTORY_TAG, "[]"))
    except json.JSONDecodeError:
        history = []
    return [str(v) for v in history]


def set_production(client: MlflowClient, name: str, version: str | int, how: str) -> str | None:
    """Move ``production`` to ``version``, keeping the chain of earlier productions for rollback."""
    version = str(version)
    current = alias_version(client, name, "production")
    if current == version:
        return current
    history = production_history(client, name)
    if current is not None and (not history or history[-1] != current):
        history.append(current)
    history.append(version)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    client.set_registered_model_tag(name, PREVIOUS_TAG, current or "")
    client.set_registered_model_alias(name, "production", version)
    client.set_model_version_tag(name, version, "production.since", _now())
    client.set_model_version_tag(name, version, "production.how", how)
    if current is not None:
        client.set_model_version_tag(name, version, "production.replaced", current)
    return current


def apply_gate(
    client: MlflowClient, registry: RegistryParams, version: str | int, metrics: Mapping[str, float]
) -> GateDecision:
    """Alias the new version ``candidate``, decide, move ``staging``/``production``, tag every step."""
    name, version = registry.model_name, str(version)
    client.set_registered_model_alias(name, "candidate", version)
    production = alias_version(client, name, "production")
    production_metrics = version_metrics(client, name, production) if production else None
    decision = decide(metrics, registry, production_metrics)
    tags = {
        "gate.verdict": decision.verdict,
        "gate.reason": decision.reason,
        "gate.thresholds": json.dumps(registry.thresholds, sort_keys=True),
        "gate.primary_metric": registry.primary_metric,
        "gate.margin": str(registry.margin),
        "gate.production_before": production or "none",
        "gate.decided_at": _now(),
    }
    if decision.production_primary is not None:
        tags["gate.production_primary"] = f"{decision.production_primary:.6g}"
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if decision.verdict in ("staging", "production"):
        client.set_registered_model_alias(name, "staging", version)
    if decision.verdict == "production":
        set_production(client, name, version, how="gate")
    return decision


# ---------------------------------------------------------------------------------------- promote / rollback
def promote(params: Params, version: str | int, alias: str, workspace: str | Path = ".") -> dict[str, Any]:
    """Point ``alias`` at ``version`` by hand (recorded as a manual promotion; production keeps its history)."""
    if alias not in ALIASES:
        raise ValueError(f"alias {alias!r} is not one of {', '.join(ALIASES)}")
    client = _client(params, workspace)
    name, version = params.registry.model_name, str(version)
    try:
        client.get_model_version(name, version)
    except MlflowException:
        raise ValueError(f"model {name!r} has no version {version}; see the MLflow UI (Models tab)") from None
    previous = alias_version(client, name, alias)
    if alias == "production":
        set_production(client, name, version, how="manual")
    else:
        client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, f"promoted.{alias}", _now())
    return {"model_name": name, "version": version, "alias": alias, "previous": previous}


def rollback(params: Params, workspace: str | Path = ".") -> dict[str, Any]:
    """Give ``production`` back to the version that held it before the current one."""
    client = _client(params, workspace)
    name = params.registry.model_name
    current = alias_version(client, name, "production")
    if current is None:
        raise ValueError(f"model {name!r} has no production version: nothing to roll back")
    history = production_history(client, name)
    while history and history[-1] == current:
        history.pop()
    if not history:
        raise ValueError(f"model {name!r}: no earlier production version is recorded; use `anomaly-ov promote`")
    target = history[-1]
    client.set_registered_model_alias(name, "production", target)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    client.set_registered_model_tag(name, PREVIOUS_TAG, history[-2] if len(history) > 1 else "")
    client.set_model_version_tag(name, current, "production.rolled_back_at", _now())
    client.set_model_version_tag(name, target, "production.restored_at", _now())
    return {"model_name": name, "production": target, "rolled_back": current}


def describe(params: Params, workspace: str | Path = ".") -> dict[str, Any]:
    """Every version with its aliases, gate verdict and primary metric (for `anomaly-ov models`)."""
    client = _client(params, workspace)
    name = params.registry.model_name
    try:
        client.get_registered_model(name)
    except MlflowException:
        return {"model_name": name, "versions": []}
    versions = []
    for item in client.search_model_versions(f"name='{name}'"):
        full = client.get_model_version(name, item.version)  # search_model_versions has no aliases on SQLite
        versions.append({
            "version": str(full.version),
            "aliases": list(full.aliases),
            "verdict": full.tags.get("gate.verdict"),
            params.registry.primary_metric: full.tags.get(f"metric.{params.registry.primary_metric}"),
        })
    versions.sort(key=lambda v: int(v["version"]))
    return {"model_name": name, "versions": versions, "production_history": production_history(client, name)}


# ------------------------------------------------------------------------------------------ the stage
def run_register(params: Params, workspace: Path) -> dict[str, Any]:
    """Register ``models/anomaly_ov`` with its evaluation metrics, alias it ``candidate``, run the gate."""
    from anomaly_ov.io import atomic_write_json, read_json
    from anomaly_ov.orchestration import numeric_metrics
    from anomaly_ov.stages import StageFailed
    from anomaly_ov.tracking import configure, run_tags

    workspace = Path(workspace)
    registry = params.registry
    report_path = workspace / registry.report
    model_dir = workspace / params.train.instruct.output_dir
    metrics_file = workspace / params.evaluate.metrics
    for path, stage in ((model_dir, "train_instruct"), (metrics_file, "evaluate")):
        if not path.exists():
            raise StageFailed("register", f"{path} is missing: run the {stage} stage first")
    metrics = numeric_metrics(read_json(metrics_file))
    if not params.tracking.enabled:
        report = {"model_name": registry.model_name, "version": None, "verdict": None, "aliases": [],
                  "reason": "tracking.enabled is false: nothing registered", "metrics": metrics}
        atomic_write_json(report_path, report)
        return {"registered": 0}
    uri = configure(params, workspace)
    own_run = mlflow.active_run() is None
    if own_run:
        mlflow.start_run(run_name="register", tags={**run_tags(params, workspace), "stage": "register"})
    try:
        run_id = mlflow.active_run().info.run_id
        info = log_model(model_dir, registered_model_name=registry.model_name)
        version = str(info.registered_model_version)
        client = MlflowClient(uri)
        for key, value in metrics.items():
            client.set_model_version_tag(registry.model_name, version, f"metric.{key}", f"{value:.6g}")
        for key, value in run_tags(params, workspace).items():
            client.set_model_version_tag(registry.model_name, version, f"lineage.{key}", value)
        decision = apply_gate(client, registry, version, metrics)
        aliases = sorted(client.get_model_version(registry.model_name, version).aliases)
        mlflow.set_tags({"registry.version": version, "gate.verdict": decision.verdict})
    finally:
        if own_run:
            mlflow.end_run()
    report = {
        "model_name": registry.model_name,
        "version": version,
        "model_uri": f"models:/{registry.model_name}/{version}",
        "logged_model_uri": info.model_uri,
        "run_id": run_id,
        "aliases": aliases,
        "verdict": decision.verdict,
        "reason": decision.reason,
        "failures": decision.failures,
        "primary_metric": registry.primary_metric,
        "primary": decision.primary,
        "production_primary": decision.production_primary,
        "production": alias_version(client, registry.model_name, "production"),
        "thresholds": registry.thresholds,
        "metrics": metrics,
        "tracking_uri": uri,
    }
    atomic_write_json(report_path, report)
    return {
        "version": int(version),
        "promoted_staging": int(decision.verdict in ("staging", "production")),
        "promoted_production": int(decision.verdict == "production"),
    }


def _client(params: Params, workspace: str | Path) -> MlflowClient:
    """A client on the workspace's registry (``params.tracking``; see ``orchestration.start_tracking``)."""
    from anomaly_ov.orchestration import start_tracking

    if not params.tracking.enabled:
        raise ValueError("tracking.enabled is false: there is no model registry to use")
    return MlflowClient(start_tracking(params, workspace))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
