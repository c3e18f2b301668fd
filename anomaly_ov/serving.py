"""Using a trained model by hand: load it from a directory or the registry, predict, draw overlays, chat.

``load_predictor("models/anomaly_ov")`` reads a saved directory; ``load_predictor("models:/anomaly-ov@production")``
loads the registered pyfunc through MLflow and takes its predictor, so `anomaly-ov predict` and the served model
give the same numbers. Overlays are plain PIL (no matplotlib): the anomaly map in red over the image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anomaly_ov.config import Params

MODEL_URI_PREFIXES = ("models:/", "runs:/", "mlflow-artifacts:/")


def load_predictor(model: str, params: Params | None = None, workspace: str | Path = ".", device: str = "cpu"):
    """A ``Predictor`` from a saved model directory or an MLflow model URI (``models:/name@alias``)."""
    if model.startswith(MODEL_URI_PREFIXES):
        import mlflow

        if params is not None:
            from anomaly_ov.orchestration import start_tracking

            start_tracking(params, workspace)
        loaded = mlflow.pyfunc.load_model(model)
        return loaded.unwrap_python_model().predictor
    path = Path(model)
    if not path.is_absolute():
        path = Path(workspace) / path
    if not path.is_dir():
        raise FileNotFoundError(
            f"model directory {path} not found: train first (`anomaly-ov run`) or pass --model models:/NAME@ALIAS"
        )
    from anomaly_ov.model.predict import Predictor

    return Predictor.from_pretrained(str(path), device=device)


def overlay(image: Any, anomaly_map: Any, alpha: float = 0.5):
    """The image with the anomaly map (values in [0, 1], any size) blended in red; returns a PIL RGB image."""
    import numpy as np
    from PIL import Image

    base = image.convert("RGB")
    heat = np.clip(np.asarray(anomaly_map, dtype=np.float32), 0.0, 1.0)
    heat_img = Image.fromarray((heat * 255).astype("uint8"), mode="L").resize(base.size, Image.BILINEAR)
    weight = np.asarray(heat_img, dtype=np.float32)[..., None] / 255.0 * alpha
    red = np.zeros((*weight.shape[:2], 3), dtype=np.float32)
    red[..., 0] = 255.0
    mixed = np.asarray(base, dtype=np.float32) * (1 - weight) + red * weight
    return Image.fromarray(mixed.clip(0, 255).astype("uint8"))


def predict_files(
    predictor: Any,
    images: Sequence[str | Path],
    *,
    question: str | None = None,
    threshold: float = 0.5,
    overlay_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Predict for image files; JSON-able rows (image, score, label, answer, overlay path when asked)."""
    from anomaly_ov.io import atomic_path
    from anomaly_ov.model.processing import load_image

    missing = [str(p) for p in images if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"image file(s) not found: {', '.join(missing)}")
    loaded = [load_image(str(p)) for p in images]
    preds = predictor.predict(loaded, question=question, generate=question is not None, threshold=threshold)
    rows = []
    for path, image, pred in zip(images, loaded, preds, strict=True):
        row: dict[str, Any] = {"image": str(path), "score": round(float(pred.score), 6), "label": pred.label}
        if pred.answer is not None:
            row["answer"] = pred.answer
        if overlay_dir is not None:
            target = Path(overlay_dir) / f"{Path(path).stem}_overlay.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target, suffix=".png") as tmp:
                overlay(image, pred.anomaly_map).save(tmp, format="PNG")
            row["overlay"] = str(target)
        rows.append(row)
    return rows


def chat_loop(
    predictor: Any, images: Sequence[str | Path], lines: Iterable[str], emit: Callable[[str], None]
) -> list[tuple[str, str]]:
    """Answer each non-empty line as the next question about ``images``; ``quit``/``exit`` ends the chat."""
    history: list[tuple[str, str]] = []
    for raw in lines:
        question = raw.strip()
        if not question:
            continue
        if question.lower() in ("quit", "exit", ":q"):
            break
        answer = predictor.chat([str(p) for p in images], history=history, question=question)
        history.append((question, answer))
        emit(answer)
    return history
