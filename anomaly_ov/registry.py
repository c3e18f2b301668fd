"""The MLflow model registry side: a pyfunc wrapping the saved model, registration, the promotion gate, rollback.

- :class:`AnomalyOVPyfunc`: an ``mlflow.pyfunc.PythonModel`` around ``models/anomaly_ov`` (artifact key
  ``model_dir``). Input: a DataFrame with a column ``image`` (base64-encoded image bytes, optionally as
  ``data:image/png;base64,...``; file paths only under folders the server allows, see ``anomaly_ov.serving``) and
  an optional ``question``; rows, bytes and pixels are capped (``ServeLimits``). Output: ``score``, ``label``,
  ``answer`` and, with the inference param ``return_map=True``, the anomaly map as a nested list. It loads the
  model through ``anomaly_ov.model.predict.Predictor`` so serving and ``anomaly-ov model predict`` share one
  implementation. The serving environment needs the ``anomaly-ov`` package installed
  (``mlflow models serve --env-manager local``).
- :func:`run_register` (the ``register`` stage): log + register the model with ``reports/metrics.json``, alias
  ``candidate``, run the gate, write ``params.registry.report``.
- The gate (:func:`decide` is the pure rule, :func:`apply_gate` applies it): a new version becomes ``candidate``;
  ``staging`` when every metric in ``registry.thresholds`` is met (``extensions.<name>.<key>`` names a metric of
  an extension stage's report, :func:`extension_metrics`); ``production`` when it also beats the current
  production on ``registry.primary_metric`` by at least ``registry.margin`` (and strictly), or when there is no
  production yet. A worse model never replaces production automatically. Every decision is written as tags on
  the version (``metric.*``, ``gate.*``), and every change of production is appended to the registered model's
  ``production_history`` tag so that :func:`rollback` can restore the one before.

Aliases are read with ``get_model_version`` / ``get_model_version_by_alias`` (``search_model_versions`` returns
empty aliases on SQLite).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import math
import uuid
from collections.abc import Iterator, Mapping
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
from mlflow.pyfunc.model import PythonModel

from anomaly_ov.choices import RegistryAlias, values
from anomaly_ov.config import Params, RegistryParams
from anomaly_ov.errors import ConfigError, InputError, StageFailed, TransientError

ALIASES = values(RegistryAlias)
MODEL_ARTIFACT = "model"
HISTORY_TAG = "production_history"
PREVIOUS_TAG = "previous_production"
PENDING_TAG = "register.pending"
#: thresholds named ``extensions.<name>.<key>`` read the extension stage's report (:func:`extension_metrics`)
EXTENSION_PREFIX = "extensions."
_log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- pyfunc
def decode_image(value: Any, limits: Any = None):
    """A PIL RGB image from base64 bytes (``data:`` URI allowed) under the serving limits (paths only if enabled)."""
    from anomaly_ov.serving import ServeLimits, decode_row_image

    return decode_row_image(value, limits or ServeLimits())


def encode_image(path: str | Path) -> str:
    """Base64 text of an image file (what a client sends to ``/invocations``)."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


class AnomalyOVPyfunc(PythonModel):
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
@dataclass(frozen=True)
class Evidence:
    """What a version's metrics were measured on: the model's and the benchmark's content hashes, and the counts.

    Read from metrics.json (``provenance.*``, ``counts.*``, written by the evaluate stage) and kept on the version
    as ``eval.*`` tags, so that the gate compares two versions only when they were measured on the same benchmark.
    """

    model_sha256: str | None = None
    benchmark_sha256: str | None = None
    images: int | None = None
    anomalous: int | None = None
    normal: int | None = None

    @classmethod
    def from_metrics(cls, raw: Mapping[str, Any]) -> Evidence:
        """From the flat metrics.json of the evaluate stage."""
        def text(key: str) -> str | None:
            value = raw.get(key)
            return value if isinstance(value, str) and value else None

        return cls(text("provenance.model_sha256"), text("provenance.benchmark_sha256"),
                   _count(raw.get("counts.images")), _count(raw.get("counts.anomalous")),
                   _count(raw.get("counts.normal")))

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Evidence:
        """From a version's ``eval.*`` tags (absent for versions registered before they existed)."""
        return cls(tags.get("eval.model_sha256") or None, tags.get("eval.benchmark_sha256") or None,
                   _count(tags.get("eval.images")), _count(tags.get("eval.anomalous")), _count(tags.get("eval.normal")))

    def to_tags(self) -> dict[str, str]:
        return {f"eval.{key}": str(value) for key, value in asdict(self).items() if value is not None}


def _count(value: Any) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) and number >= 0 else None


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


def _size_failures(evidence: Evidence, registry: RegistryParams) -> list[str]:
    """Why the evaluation is too small to judge a model by (empty when it is large enough)."""
    if evidence.images is None:
        return ["the metrics do not say how many images were evaluated (counts.images): re-run the evaluate stage"]
    failures = []
    if evidence.images < registry.min_images:
        failures.append(f"evaluated on {evidence.images} images; registry.min_images is {registry.min_images}")
    for label in ("anomalous", "normal"):
        count = getattr(evidence, label)
        if registry.min_per_label and (count is None or count < registry.min_per_label):
            failures.append(f"{count if count is not None else 'an unknown number of'} {label} images; "
                            f"registry.min_per_label is {registry.min_per_label}")
    return failures


def decide(
    metrics: Mapping[str, float],
    registry: RegistryParams,
    production_metrics: Mapping[str, float] | None,
    evidence: Evidence | None = None,
    production_evidence: Evidence | None = None,
) -> GateDecision:
    """The promotion rule (pure).

    ``candidate`` when a threshold is missed or the evaluation is smaller than ``registry.min_images`` /
    ``min_per_label``; otherwise ``staging``; ``production`` only when the primary metric is known and either no
    production exists or the candidate beats production's value, measured on the same benchmark (same content
    hash), by ``registry.margin``. When production has no value to compare with (no primary metric recorded, a
    different or unknown benchmark: a changed ``primary_metric``, a null AUROC, a version promoted by hand) the
    gate refuses automatic promotion and says why: a person compares and uses ``anomaly-ov model promote``.
    """
    evidence = evidence or Evidence()
    failures = []
    for key, minimum in sorted(registry.thresholds.items()):
        value = metrics.get(key)
        if value is None:
            failures.append(f"{key} missing from the metrics (need >= {minimum:g})")
        elif not value >= minimum:
            failures.append(f"{key}={value:.4f} < {minimum:g}")
    failures += _size_failures(evidence, registry)
    name = registry.primary_metric
    primary = metrics.get(name)
    if failures:
        return GateDecision("candidate", "rejected: " + "; ".join(failures), failures, primary)
    by_hand = "; compare by hand and use `anomaly-ov model promote --to production` if it should replace production"
    if primary is None:
        return GateDecision("staging", f"{name} missing: a version without it is never promoted to production "
                            "automatically" + by_hand, [], None)
    if production_metrics is None:
        return GateDecision("production", "passed thresholds; no production version yet", [], primary)
    current = production_metrics.get(name)
    before = production_evidence or Evidence()
    if current is None:
        return GateDecision("staging", f"production has no {name} recorded: automatic promotion refused" + by_hand,
                            [], primary)
    if before.benchmark_sha256 is None or before.benchmark_sha256 != evidence.benchmark_sha256:
        what = ("an unrecorded benchmark" if before.benchmark_sha256 is None
                else f"benchmark {before.benchmark_sha256[:12]}")
        reason = (f"production was measured on {what}, this version on benchmark "
                  f"{(evidence.benchmark_sha256 or 'unknown')[:12]}: {name} {primary:.4f} vs {current:.4f} is not a "
                  "comparison; automatic promotion refused" + by_hand)
        return GateDecision("staging", reason, [], primary, current)
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
                number = float(value)
            except ValueError:
                continue
            if math.isfinite(number):
                out[key[len("metric."):]] = number
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
    """Move ``production`` to ``version``, keeping the chain of earlier productions for rollback.

    Callers hold :func:`registry_lock`, so the history read here is not overwritten by a concurrent writer.
    """
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


@contextlib.contextmanager
def registry_lock(tracking_uri: str, workspace: str | Path, timeout_s: float = 300.0) -> Iterator[Path]:
    """Serialise every read-decide-write on the aliases of one registry (a file lock beside its SQLite file).

    Two registrations at once would otherwise both be judged against the same old production, and the history
    tag written by one would be overwritten by the other. The lock is an OS lock (``filelock``): it is released
    when its holder dies, so a killed registration never blocks the next one. For a remote tracking server the
    lock file is in the workspace, which serialises the registrations started from it.
    """
    from filelock import FileLock, Timeout

    if tracking_uri.startswith("sqlite:///"):
        database = Path(tracking_uri[len("sqlite:///"):])
        path = database.with_name(database.name + ".registry.lock")
    else:
        path = Path(workspace) / ".anomaly-ov-registry.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=timeout_s)
    try:
        lock.acquire()
    except Timeout:
        raise TransientError(f"another registration has held {path} for more than {timeout_s:g} s "
                         "(registry.lock_timeout_s); wait for it to finish and retry") from None
    try:
        yield path
    finally:
        lock.release()


def apply_gate(
    client: MlflowClient,
    registry: RegistryParams,
    version: str | int,
    metrics: Mapping[str, float],
    evidence: Evidence | None = None,
) -> GateDecision:
    """Alias the new version ``candidate``, decide, move ``staging``/``production``, tag every step.

    Call it under :func:`registry_lock` (``run_register`` does): it reads production and then writes aliases.
    """
    name, version = registry.model_name, str(version)
    evidence = evidence or Evidence()
    client.set_registered_model_alias(name, "candidate", version)
    production = alias_version(client, name, "production")
    if production == version:  # a re-run completing a version that already got there
        production = _production_before(client, name, version)
    production_metrics = version_metrics(client, name, production) if production else None
    production_evidence = Evidence.from_tags(client.get_model_version(name, production).tags) if production else None
    decision = decide(metrics, registry, production_metrics, evidence, production_evidence)
    tags = {
        "gate.verdict": decision.verdict,
        "gate.reason": decision.reason,
        "gate.thresholds": json.dumps(registry.thresholds, sort_keys=True),
        "gate.primary_metric": registry.primary_metric,
        "gate.margin": str(registry.margin),
        "gate.min_images": str(registry.min_images),
        "gate.min_per_label": str(registry.min_per_label),
        "gate.production_before": production or "none",
        "gate.decided_at": _now(),
        **evidence.to_tags(),
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


def gate_version(
    client: MlflowClient,
    registry: RegistryParams,
    tracking_uri: str,
    workspace: str | Path,
    version: str | int,
    metrics: Mapping[str, float],
    evidence: Evidence | None = None,
) -> GateDecision:
    """:func:`apply_gate` under :func:`registry_lock`, then clear the version's ``register.pending`` tag."""
    with registry_lock(tracking_uri, workspace, registry.lock_timeout_s):
        decision = apply_gate(client, registry, version, metrics, evidence)
        if PENDING_TAG in client.get_model_version(registry.model_name, str(version)).tags:
            client.delete_model_version_tag(registry.model_name, str(version), PENDING_TAG)
    return decision


def _production_before(client: MlflowClient, name: str, version: str) -> str | None:
    history = production_history(client, name)
    while history and history[-1] == version:
        history.pop()
    return history[-1] if history else None


# ---------------------------------------------------------------------------------------- promote / rollback
PASSED = {"staging": ("staging", "production"), "production": ("staging", "production")}


def promote(
    params: Params,
    version: str | int,
    alias: str,
    workspace: str | Path = ".",
    force: bool = False,
    reason: str | None = None,
) -> dict[str, Any]:
    """Point ``alias`` at ``version`` by hand (recorded as a manual promotion; production keeps its history).

    ``staging`` and ``production`` take only a version that passed the gate's thresholds and size checks (verdict
    ``staging`` or ``production``). Any other version (rejected by the gate, or never judged) needs ``force=True``
    and a ``reason``; both are recorded as tags on the version (``promoted.<alias>.forced``, ``.reason``).
    """
    if alias not in ALIASES:
        raise ConfigError(f"alias {alias!r} is not one of {', '.join(ALIASES)}")
    uri, client = _client_and_uri(params, workspace)
    name, version = params.registry.model_name, str(version)
    with registry_lock(uri, workspace, params.registry.lock_timeout_s):
        try:
            found = client.get_model_version(name, version)
        except MlflowException:
            raise ConfigError(f"model {name!r} has no version {version}; see `anomaly-ov model list`") from None
        verdict = found.tags.get("gate.verdict")
        gated = alias in PASSED and verdict not in PASSED[alias]
        why = (reason or "").strip()
        if gated and not (force and why):
            said = (f"the gate rejected it ({found.tags.get('gate.reason', '')})" if verdict
                    else "the gate never judged it")
            raise ConfigError(f"version {version} cannot go to {alias}: {said}. To override, pass --force and "
                             "--reason 'why' (both are recorded on the version)")
        previous = alias_version(client, name, alias)
        if alias == "production":
            set_production(client, name, version, how="forced" if gated else "manual")
        else:
            client.set_registered_model_alias(name, alias, version)
        client.set_model_version_tag(name, version, f"promoted.{alias}", _now())
        if gated:
            client.set_model_version_tag(name, version, f"promoted.{alias}.forced", "true")
            client.set_model_version_tag(name, version, f"promoted.{alias}.reason", why)
            client.set_model_version_tag(name, version, f"promoted.{alias}.by", _user())
    return {"model_name": name, "version": version, "alias": alias, "previous": previous, "forced": gated}


def rollback(params: Params, workspace: str | Path = ".") -> dict[str, Any]:
    """Give ``production`` back to the version that held it before the current one."""
    uri, client = _client_and_uri(params, workspace)
    name = params.registry.model_name
    with registry_lock(uri, workspace, params.registry.lock_timeout_s):
        current = alias_version(client, name, "production")
        if current is None:
            raise InputError(f"model {name!r} has no production version: nothing to roll back")
        history = production_history(client, name)
        while history and history[-1] == current:
            history.pop()
        if not history:
            raise InputError(f"model {name!r}: no earlier production version is recorded; "
                             "use `anomaly-ov model promote`")
        target = history[-1]
        try:
            client.get_model_version(name, target)
        except MlflowException:
            raise InputError(
                f"model {name!r}: version {target}, which held production before version {current}, no longer "
                f"exists (deleted); production stays on {current}. Pick a version with `anomaly-ov model list` and "
                "`anomaly-ov model promote --version N --to production`"
            ) from None
        client.set_registered_model_alias(name, "production", target)
        client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
        client.set_registered_model_tag(name, PREVIOUS_TAG, history[-2] if len(history) > 1 else "")
        client.set_model_version_tag(name, current, "production.rolled_back_at", _now())
        client.set_model_version_tag(name, target, "production.restored_at", _now())
    return {"model_name": name, "production": target, "rolled_back": current}


def describe(params: Params, workspace: str | Path = ".") -> dict[str, Any]:
    """Every version with its aliases, gate verdict and primary metric (for `anomaly-ov model list`)."""
    client = _client(params, workspace)
    name = params.registry.model_name
    try:
        client.get_registered_model(name)
    except MlflowException:
        return {"model_name": name, "versions": []}
    versions: list[dict[str, Any]] = []
    for item in client.search_model_versions(f"name='{name}'"):
        full = client.get_model_version(name, item.version)  # search_model_versions has no aliases on SQLite
        verdict = full.tags.get("gate.verdict")
        if verdict is None:
            verdict = "incomplete" if full.tags.get(PENDING_TAG) else None
        versions.append({
            "version": str(full.version),
            "aliases": list(full.aliases),
            "verdict": verdict,
            params.registry.primary_metric: full.tags.get(f"metric.{params.registry.primary_metric}"),
        })
    versions.sort(key=lambda v: int(v["version"]))
    return {"model_name": name, "versions": versions, "production_history": production_history(client, name)}


# ------------------------------------------------------------------------------------------ the stage


def _pending_version(client: MlflowClient, name: str, evidence: Evidence) -> str | None:
    """A version of this very model and benchmark whose registration was cut short before the gate judged it."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        return None
    for item in client.search_model_versions(f"name='{name}'"):
        tags = item.tags
        if (tags.get(PENDING_TAG) == "true"  # killed before or during the gate
                and tags.get("eval.model_sha256") == evidence.model_sha256
                and tags.get("eval.benchmark_sha256") == evidence.benchmark_sha256):
            return str(item.version)
    return None


def extension_metrics(params: Params, workspace: str | Path, model_sha256: str
                      ) -> tuple[dict[str, float], dict[str, str]]:
    """The extension metrics the gate's params name, and a note per extension report on why it was (not) read.

    A threshold (or the primary metric) ``extensions.<name>.<key>`` is ``<key>`` of the extension stage's report
    ``<extensions.report_dir>/<name>.json`` (``extensions.medical.zero_shot.image_auroc``,
    ``extensions.3d.object.max.image_auroc``). It is read only when the report measured this model (its
    ``provenance.model_sha256``); otherwise the metric stays missing, which fails the threshold safe, and the note
    says why (no report: the extension stage did not run; another model: re-run it).
    """
    from anomaly_ov.io import read_json
    from anomaly_ov.paths import in_workspace
    from anomaly_ov.tracking import numeric_metrics

    registry = params.registry
    named = [key for key in (*registry.thresholds, registry.primary_metric) if key.startswith(EXTENSION_PREFIX)]
    wanted: dict[str, list[str]] = {}
    for key in named:
        extension, _, metric = key.removeprefix(EXTENSION_PREFIX).partition(".")
        wanted.setdefault(extension, []).append(metric)
    values: dict[str, float] = {}
    notes: dict[str, str] = {}
    for extension, keys in sorted(wanted.items()):
        path = in_workspace(Path(workspace), params.extensions.report_dir) / f"{extension}.json"
        if not path.is_file():
            notes[extension] = f"{path} not found: run `anomaly-ov stage extend_{extension}` (or drop the threshold)"
            continue
        raw = read_json(path)
        measured = raw.get("provenance.model_sha256") if isinstance(raw, Mapping) else None
        if measured != model_sha256:
            notes[extension] = (f"{path} measured {'another model' if measured else 'an unknown model'}: re-run "
                                f"`anomaly-ov stage extend_{extension}` for this one")
            continue
        report = numeric_metrics(raw)
        values.update({f"{EXTENSION_PREFIX}{extension}.{key}": report[key] for key in keys if key in report})
        notes[extension] = f"read from {path}"
    return values, notes


def run_register(params: Params, workspace: Path) -> dict[str, Any]:
    """Register ``models/anomaly_ov`` with its evaluation metrics, alias it ``candidate``, run the gate.

    The metrics must describe this model: metrics.json's ``provenance.model_sha256`` (written by the evaluate
    stage) must equal the hash of the model folder, or nothing is registered. The version is created with its
    metric, evidence and lineage tags and ``register.pending=true`` in one call; the gate then runs under
    :func:`registry_lock` and clears the pending tag. A registration killed in between leaves a pending version
    that the next run of this stage (same model, same benchmark) completes instead of registering a second one.
    """
    from anomaly_ov.fingerprint import dir_sha256
    from anomaly_ov.io import atomic_write_json, read_json
    from anomaly_ov.tracking import configure, numeric_metrics, run_tags

    workspace = Path(workspace)
    registry = params.registry
    report_path = workspace / registry.report
    model_dir = workspace / params.train.instruct.output_dir
    metrics_file = workspace / params.evaluate.metrics
    for path, stage in ((model_dir, "train_instruct"), (metrics_file, "evaluate")):
        if not path.exists():
            raise StageFailed("register", f"{path} is missing: run the {stage} stage first")
    raw = read_json(metrics_file)
    metrics = numeric_metrics(raw)
    evidence = Evidence.from_metrics(raw if isinstance(raw, Mapping) else {})
    model_sha = dir_sha256(model_dir)
    extension_values, extension_notes = extension_metrics(params, workspace, model_sha)
    metrics.update(extension_values)
    if evidence.model_sha256 is None:
        raise StageFailed("register", f"{metrics_file} does not say which model it measured "
                          "(no provenance.model_sha256): re-run `anomaly-ov stage evaluate`")
    if evidence.model_sha256 != model_sha:
        raise StageFailed("register", f"{metrics_file} measured model {evidence.model_sha256[:12]}, but {model_dir} "
                          f"is now {model_sha[:12]}: re-run `anomaly-ov stage evaluate` before registering")
    uri = configure(params, workspace)
    if uri is None:  # tracking.enabled is false
        atomic_write_json(report_path, {
            "model_name": registry.model_name, "version": None, "verdict": None, "aliases": [],
            "reason": "tracking.enabled is false: nothing registered", "metrics": metrics,
            "extension_metrics": extension_notes})
        return {"registered": 0}
    client = MlflowClient(uri)
    active = mlflow.active_run()
    own_run = active is None
    run = active or mlflow.start_run(run_name="register", tags={**run_tags(params, workspace), "stage": "register"})
    try:
        run_id = run.info.run_id
        pending = _pending_version(client, registry.model_name, evidence)
        resumed = pending is not None
        if pending is not None:
            version = pending
            logged_uri = client.get_model_version(registry.model_name, version).source
        else:
            info = log_model(model_dir)
            logged_uri = info.model_uri
            tags = {f"metric.{key}": f"{value:.6g}" for key, value in metrics.items()}
            tags.update({f"lineage.{key}": value for key, value in run_tags(params, workspace).items()})
            tags.update(evidence.to_tags())
            tags[PENDING_TAG] = "true"
            created = mlflow.register_model(logged_uri, registry.model_name, tags=tags)
            version = str(created.version)
        decision = gate_version(client, registry, uri, workspace, version, metrics, evidence)
        aliases = sorted(client.get_model_version(registry.model_name, version).aliases)
        mlflow.set_tags({"registry.version": version, "gate.verdict": decision.verdict})
    finally:
        if own_run:
            mlflow.end_run()
    report: dict[str, Any] = {
        "model_name": registry.model_name,
        "version": version,
        "resumed_pending_version": resumed,
        "model_uri": f"models:/{registry.model_name}/{version}",
        "logged_model_uri": logged_uri,
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
        "extension_metrics": extension_notes,
        "evidence": asdict(evidence),
        "metrics": metrics,
        "tracking_uri": uri,
    }
    atomic_write_json(report_path, report)
    return {
        "version": int(version),
        "promoted_staging": int(decision.verdict in ("staging", "production")),
        "promoted_production": int(decision.verdict == "production"),
    }


def _client_and_uri(params: Params, workspace: str | Path) -> tuple[str, MlflowClient]:
    """The tracking URI and a client on the workspace's registry (``params.tracking``)."""
    from anomaly_ov.tracking import start_tracking

    if not params.tracking.enabled:
        raise ConfigError("tracking.enabled is false: there is no model registry to use")
    uri = start_tracking(params, workspace)
    return uri, MlflowClient(uri)


def _client(params: Params, workspace: str | Path) -> MlflowClient:
    """A client on the workspace's registry (``params.tracking``; see ``tracking.start_tracking``)."""
    return _client_and_uri(params, workspace)[1]


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
