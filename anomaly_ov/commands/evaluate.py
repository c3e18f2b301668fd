"""`anomaly-ov evaluate PATH`: evaluate a model (directory or MLflow registry URI) on any dataset on disk.

The dataset is read with the project's readers (``anomaly_ov.data.sources``), its test split (every row when the
format has no test split) becomes the detection items, and the same reports as the ``evaluate`` stage are
written under ``--out``. With ``--bench FILE`` (a ``test_data.json``, e.g. the official VisA-D&R one) the items
come from that file instead and PATH is the data root their ``image`` paths are relative to, as the release's
``--data_dir``::

    anomaly-ov evaluate /data --bench /data/VisA/test_data.json --reasoning /data/VisA/visa_dr.json -m models/x

Heavy imports stay inside the functions so the CLI starts fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from anomaly_ov.cli import ParamsOpt, SetOpt, WorkspaceOpt, _fail, _load, app

if TYPE_CHECKING:
    import pandas as pd

    from anomaly_ov.config import Params

MODEL_URI_PREFIXES = ("models:/", "runs:/", "mlflow-artifacts:/")
FORMATS = ("mvtec", "visa", "meta_json", "folder", "bmad", "mvtec3d", "real3d", "shapenet")


def manifest_to_test_items(frame: pd.DataFrame, workspace: str | Path = ".") -> list[dict[str, Any]]:
    """Manifest rows -> ``test_data.json``-style items (test split when the data has one, else every row)."""
    from anomaly_ov.data.manifest import resolve

    if frame.empty:
        raise ValueError("the dataset has no images")
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
        raise ValueError(f"--model {uri} needs MLflow, but tracking.enabled is false in the params")
    configure(params, workspace)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except Exception as exc:  # MlflowException and friends: name the URI and what to check
        raise ValueError(f"cannot download {uri} from {mlflow.get_tracking_uri()}: {exc}") from None
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
    raise ValueError(f"{uri} holds no saved model directory (no 'model_dir' artifact); was it logged by `register`?")


@app.command("evaluate")
def evaluate_command(
    path: Annotated[Path, typer.Argument(help="dataset root (or meta.json folder)")],
    fmt: Annotated[str, typer.Option("--format", "-f", help=" | ".join(FORMATS))] = "mvtec",
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
    allow_external: Annotated[
        bool,
        typer.Option(
            "--allow-external-paths", help="accept dataset and item paths that leave PATH ('..', absolute, symlinks)"
        ),
    ] = False,
    params_file: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Evaluate a model on a dataset: detection (Yes/No), image/pixel metrics, optional reasoning; write reports."""
    from anomaly_ov.config import SourceParams

    if fmt not in FORMATS:
        _fail(f"--format {fmt!r} is not one of: {', '.join(FORMATS)}", 2)
    params = _load(workspace / params_file if not params_file.is_absolute() else params_file, overrides)
    out = out or workspace / "reports" / "external" / (path.resolve().name or "dataset")
    allow_external = allow_external or params.evaluate.allow_external_paths
    source = SourceParams(
        name=path.resolve().name or "dataset",
        format=fmt,  # type: ignore[arg-type]
        path=str(path.resolve()),
        role="eval",
        categories=[c.strip() for c in categories.split(",") if c.strip()] if categories else None,
        allow_external_paths=allow_external,
    )
    data_root = path.resolve()
    try:
        if bench is not None:
            from anomaly_ov.evaluate.detection import load_test_items

            items = load_test_items(bench, params.evaluate.max_images, data_root, allow_external)
        else:
            items = None
        summary = _evaluate(params, workspace, source, model, out, reasoning_file, items, data_root, allow_external)
    except (FileNotFoundError, ValueError) as exc:
        _fail(f"evaluate: {exc}")
    typer.echo(json.dumps(summary, indent=2))


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
