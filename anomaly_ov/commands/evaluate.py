"""`anomaly-ov model evaluate PATH`: evaluate a model (directory or MLflow registry URI) on any dataset on disk.

The dataset is read with the project's readers (``anomaly_ov.data.sources``), its test split (every row when the
format has no test split) becomes the detection items, and the same reports as the ``evaluate`` stage are
written under ``--out``. With ``--bench FILE`` (a ``test_data.json``, e.g. the official VisA-D&R one) the items
come from that file instead and PATH is the data root their ``image`` paths are relative to, as the release's
``--data_dir``::

    anomaly-ov model evaluate /data --bench /data/VisA/test_data.json --reasoning /data/VisA/visa_dr.json -m models/x

It prints the headline numbers as a table (``--json``: only JSON on stdout, for scripts).

Heavy imports stay inside the functions so the CLI starts fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from anomaly_ov.choices import SourceFormat, choices
from anomaly_ov.cli import (
    AllowExternalOpt,
    JsonOpt,
    ParamsOpt,
    SetOpt,
    WorkspaceOpt,
    _load,
    echo_json,
    in_workspace_file,
    model_app,
)
from anomaly_ov.errors import ConfigError, InputError

if TYPE_CHECKING:
    import pandas as pd

    from anomaly_ov.config import Params

MODEL_URI_PREFIXES = ("models:/", "runs:/", "mlflow-artifacts:/")
DatasetFormat = choices("DatasetFormat", SourceFormat)


def manifest_to_test_items(frame: pd.DataFrame, workspace: str | Path = ".") -> list[dict[str, Any]]:
    """Manifest rows -> ``test_data.json``-style items (test split when the data has one, else every row)."""
    from anomaly_ov.data.manifest import resolve

    if frame.empty:
        raise InputError("the dataset has no images (check PATH and --format)")
    test = frame[frame["split"] == "test"]
    rows = test if len(test) else frame
    items = []
    for _, row in rows.iterrows():
        items.append(
            {
                "image": f"{row['source']}/{row['category']}/{row['image_path']}",
                "anomaly": row["label"] == "anomaly",
                "file": str(resolve(row, "image_path", workspace)),
                "mask": str(resolve(row, "mask_path", workspace)) if row["mask_path"] else "",
                "category": row["category"],
            }
        )
    return items


def model_dir_from_uri(uri: str, params: Params, workspace: str | Path, dst: str | Path) -> Path:
    """Download a registered pyfunc and return the saved model directory it carries (artifact key ``model_dir``)."""
    import mlflow
    import yaml

    from anomaly_ov.tracking import configure

    if not params.tracking.enabled:
        raise ConfigError(f"--model {uri} needs MLflow, but tracking.enabled is false in the params")
    configure(params, workspace)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except Exception as exc:  # MlflowException and friends: name the URI and what to check
        raise InputError(f"cannot download {uri} from {mlflow.get_tracking_uri()}: {exc}") from None
    mlmodel = local / "MLmodel"
    if mlmodel.exists():
        spec = yaml.safe_load(mlmodel.read_text()) or {}
        artifacts = (spec.get("flavors", {}).get("python_function", {}) or {}).get("artifacts", {}) or {}
        entry = artifacts.get("model_dir")
        if entry and (local / entry["path"]).is_dir():
            return local / entry["path"]
    candidates = sorted(p.parent for p in local.rglob("config.json"))
    if candidates:
        return candidates[0]
    raise InputError(f"{uri} holds no saved model directory (no 'model_dir' artifact); was it logged by `register`?")


@model_app.command("evaluate")
def evaluate_command(
    path: Annotated[Path, typer.Argument(help="dataset root (or meta.json folder)")],
    fmt: Annotated[DatasetFormat, typer.Option("--format", "-f", help="dataset layout")  # type: ignore[valid-type]
                   ] = DatasetFormat("mvtec"),
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="model directory or MLflow URI (models:/NAME@ALIAS)")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="report folder (default: reports/external/<dataset folder>)")
    ] = None,
    categories: Annotated[str | None, typer.Option(help="comma-separated subset of categories")] = None,
    reasoning_file: Annotated[
        Path | None, typer.Option("--reasoning", help="visa_dr.json-style file: also run the reasoning protocol")
    ] = None,
    bench: Annotated[
        Path | None, typer.Option("--bench", help="test_data.json-style detection file; PATH is then its data root")
    ] = None,
    allow_external: AllowExternalOpt = False,
    as_json: JsonOpt = False,
    params_file: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Evaluate a model on a dataset: detection (Yes/No), image/pixel metrics, optional reasoning; write reports."""
    from anomaly_ov.config import SourceParams

    params = _load(in_workspace_file(workspace, params_file), overrides)
    out = out or workspace / "reports" / "external" / (path.resolve().name or "dataset")
    allow_external = allow_external or params.evaluate.allow_external_paths
    source = SourceParams(
        name=path.resolve().name or "dataset",
        format=cast(SourceFormat, str(fmt)),
        path=str(path.resolve()),
        role="eval",
        categories=[c.strip() for c in categories.split(",") if c.strip()] if categories else None,
        allow_external_paths=allow_external,
    )
    data_root = path.resolve()
    items = None
    if bench is not None:
        from anomaly_ov.evaluate.detection import load_test_items

        items = load_test_items(bench, params.evaluate.max_images, data_root, allow_external)
    summary = _evaluate(params, workspace, source, model, out, reasoning_file, items, data_root, allow_external)
    if as_json:
        echo_json(summary)
    else:
        _print_summary(summary)


def _print_summary(summary: dict[str, Any]) -> None:
    """The headline numbers as a table (undefined metrics are left out of ``summary``)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"evaluation: {summary['images']} images", header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        if key not in ("images", "out"):
            table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    console = Console()
    console.print(table)
    console.print(f"reports: {summary['out']} (evaluation.md, metrics.json, figures/)")


def _evaluate(
    params: Params,
    workspace: Path,
    source: Any,
    model: str | None,
    out: Path,
    reasoning_file: Path | None,
    items: list[dict[str, Any]] | None = None,
    data_root: Path | None = None,
    allow_external: bool = False,
) -> dict[str, Any]:
    import tempfile

    from anomaly_ov import tracking
    from anomaly_ov.data.sources import read_source
    from anomaly_ov.evaluate.detection import balanced_subset
    from anomaly_ov.evaluate.reasoning import load_reasoning_items
    from anomaly_ov.evaluate.report import HEADLINE
    from anomaly_ov.evaluate.run import evaluate_dataset, load_predictor
    from anomaly_ov.paths import in_workspace

    if items is None:
        items = manifest_to_test_items(read_source(source, workspace), workspace)
        items = balanced_subset(items, params.evaluate.max_images)
    reasoning = (load_reasoning_items(reasoning_file, params.evaluate.max_reasoning_items, data_root, allow_external)
                 if reasoning_file else None)
    model = model or params.train.instruct.output_dir
    with tempfile.TemporaryDirectory(prefix="anomaly-ov-model-") as tmp:
        if model.startswith(MODEL_URI_PREFIXES):
            model_dir = model_dir_from_uri(model, params, workspace, tmp)
        else:
            model_dir = in_workspace(workspace, model)
        predictor = load_predictor(model_dir, params.evaluate.device)
        info = {"dataset": f"{source.path} ({source.format})", "model": model}
        with tracking.stage_run(params, "evaluate_external", workspace):
            tracking.log_params({"dataset": source.path, "format": source.format, "model": model})
            flat = evaluate_dataset(predictor, items, reasoning, params, out, workspace, info)
    summary = {k: flat[k] for k in HEADLINE if flat.get(k) is not None}
    summary.update(images=flat["counts.images"], out=str(out))
    return summary
