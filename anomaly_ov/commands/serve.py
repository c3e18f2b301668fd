"""`anomaly-ov model predict | chat | serve`: use a trained model (a directory or a registered version) by hand or
over HTTP."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from anomaly_ov.cli import ParamsOpt, WorkspaceOpt, _load, echo_json, in_workspace_file, model_app

ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="model directory, or an MLflow URI such as models:/anomaly-ov@production")
]


@model_app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="image files")],
    model: ModelOpt = "models/anomaly_ov",
    overlay: Annotated[Path | None, typer.Option(help="write <image>_overlay.png (anomaly map in red) here")] = None,
    question: Annotated[str | None, typer.Option("--question", "-q", help="also ask the model this")] = None,
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="score threshold for the label")] = 0.5,
    params_file: ParamsOpt = Path("params.yaml"),
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Score images: JSON with score, label (and the answer to --question) per image."""
    from anomaly_ov.serving import load_predictor, predict_files

    params = _load(in_workspace_file(workspace, params_file), None)
    predictor = load_predictor(model, params, workspace)
    rows = predict_files(predictor, images, question=question, threshold=threshold, overlay_dir=overlay)
    echo_json(rows)


@model_app.command()
def chat(
    images: Annotated[list[Path], typer.Argument(help="image file(s); several = views of one object")],
    model: ModelOpt = "models/anomaly_ov",
    params_file: ParamsOpt = Path("params.yaml"),
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Ask questions about an image, one per line on stdin (`quit` to stop); answers on stdout."""
    from anomaly_ov.io import MissingFile
    from anomaly_ov.serving import chat_loop, load_predictor

    params = _load(in_workspace_file(workspace, params_file), None)
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise MissingFile(f"image file(s) not found: {', '.join(missing)}")
    predictor = load_predictor(model, params, workspace)
    interactive = sys.stdin.isatty()
    if interactive:
        typer.echo("Ask about the image (empty line skipped, `quit` to stop).")

    def lines():
        while True:
            if interactive:
                typer.echo("> ", nl=False)
            line = sys.stdin.readline()
            if not line:
                return
            yield line

    chat_loop(predictor, images, lines(), typer.echo)


@model_app.command()
def serve(
    model: Annotated[str, typer.Option("--model", "-m", help="MLflow model URI or a logged pyfunc folder")] = (
        "models:/anomaly-ov@production"),
    host: Annotated[str, typer.Option(help="address to listen on (keep 127.0.0.1 unless behind a proxy)")] = (
        "127.0.0.1"),
    port: Annotated[int, typer.Option(help="port")] = 5001,
    allowed_root: Annotated[list[Path] | None, typer.Option(
        "--allowed-root", help="folder whose files requests may name by path (repeatable; default: none)")] = None,
    max_body_mb: Annotated[float | None, typer.Option(help="largest request body in MiB (413 above)")] = None,
    params_file: ParamsOpt = Path("params.yaml"),
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Serve the pyfunc over HTTP (MLflow's /invocations) with a request-body limit in front of it.

    The other limits come from ANOMALY_OV_SERVE_* variables (see the README); --allowed-root and --max-body-mb
    set ANOMALY_OV_SERVE_ALLOWED_ROOTS and ANOMALY_OV_SERVE_MAX_BODY_BYTES.
    """
    from anomaly_ov.serving import MODEL_URI_PREFIXES, ServeLimits, scoring_app

    if allowed_root:
        os.environ["ANOMALY_OV_SERVE_ALLOWED_ROOTS"] = os.pathsep.join(str(p.resolve()) for p in allowed_root)
    if max_body_mb is not None:
        os.environ["ANOMALY_OV_SERVE_MAX_BODY_BYTES"] = str(int(max_body_mb * 1024 * 1024))
    limits = ServeLimits.from_env()  # ConfigError naming the variable
    if model.startswith(MODEL_URI_PREFIXES):
        from anomaly_ov.tracking import start_tracking

        start_tracking(_load(in_workspace_file(workspace, params_file), None), workspace)
    import uvicorn

    uvicorn.run(scoring_app(model, limits), host=host, port=port, workers=1, log_level="info")
