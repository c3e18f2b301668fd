"""Using a trained model by hand: load it from a directory or the registry, predict, draw overlays, chat.

``load_predictor("models/anomaly_ov")`` reads a saved directory; ``load_predictor("models:/anomaly-ov@production")``
loads the registered pyfunc through MLflow and takes its predictor, so `anomaly-ov model predict` and the served model
give the same numbers. Overlays are plain PIL (no matplotlib): the anomaly map in red over the image.

What a served model accepts from the network (:class:`ServeLimits`, :func:`check_request`, :func:`decode_row_image`)
is decided here too. By default the ``image`` column holds base64 image bytes only; a file path is read only when
the server's operator names allowed folders in ``ANOMALY_OV_SERVE_ALLOWED_ROOTS`` (``os.pathsep``-separated), and
then only an absolute path whose real path (symlinks resolved) is a regular file under one of them. Rows, bytes per
image and per request, pixels per image and question length are capped (``ANOMALY_OV_SERVE_*`` variables, read
when the model is loaded). A refused request raises :class:`RequestError` with a short message naming the row.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_ov.errors import ConfigError, InputError
from anomaly_ov.io import MissingFile

if TYPE_CHECKING:
    from anomaly_ov.config import Params

MODEL_URI_PREFIXES = ("models:/", "runs:/", "mlflow-artifacts:/")
ENV_PREFIX = "ANOMALY_OV_SERVE_"
MiB = 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 25_000_000  # 5000 x 5000; the processor resizes far below this anyway


class RequestError(InputError):
    """A scoring request refused for what the client sent (the server answers 400 with this message)."""


@dataclass(frozen=True)
class ServeLimits:
    """What one ``/invocations`` request may carry. Defaults suit a CPU/GPU server scoring a few images at a time.

    Every field can be set with an environment variable ``ANOMALY_OV_SERVE_<FIELD>`` (upper case) where the model
    is served, e.g. ``ANOMALY_OV_SERVE_MAX_ROWS=64``; ``ANOMALY_OV_SERVE_ALLOWED_ROOTS=/data/a:/data/b`` enables
    file paths under those folders.
    """

    allowed_roots: tuple[Path, ...] = ()
    max_rows: int = 32
    max_request_bytes: int = 32 * MiB
    max_image_bytes: int = 8 * MiB
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_question_chars: int = 2000
    batch_size: int = 8
    max_body_bytes: int = 34 * MiB  # the HTTP body as a whole (`anomaly-ov model serve`); a bit over max_request_bytes

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServeLimits:
        """Limits from ``ANOMALY_OV_SERVE_*`` variables; a bad value raises ``ConfigError`` naming the variable."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in ("max_rows", "max_request_bytes", "max_image_bytes", "max_image_pixels", "max_question_chars",
                     "batch_size", "max_body_bytes"):
            key = ENV_PREFIX + name.upper()
            raw = environ.get(key, "").strip()
            if not raw:
                continue
            try:
                values[name] = int(raw)
            except ValueError:
                raise ConfigError(f"{key}={raw!r} is not a whole number") from None
            if values[name] < 1:
                raise ConfigError(f"{key}={raw!r} must be at least 1")
        roots_raw = environ.get(ENV_PREFIX + "ALLOWED_ROOTS", "").strip()
        roots = []
        for item in filter(None, (r.strip() for r in roots_raw.split(os.pathsep))):
            root = Path(item)
            if not root.is_absolute() or not root.is_dir():
                raise ConfigError(f"{ENV_PREFIX}ALLOWED_ROOTS: {item!r} is not an absolute path to a folder")
            roots.append(Path(os.path.realpath(root)))
        return cls(allowed_roots=tuple(roots), **values)


def check_request(images: Sequence[Any], questions: Sequence[str | None], limits: ServeLimits) -> None:
    """Refuse a request that is over the limits before anything in it is decoded."""
    if not len(images):
        raise RequestError("the request has no rows")
    if len(images) > limits.max_rows:
        raise RequestError(f"the request has {len(images)} rows; this server takes at most {limits.max_rows}")
    total = 0
    for row, value in enumerate(images):
        if not isinstance(value, str | bytes | bytearray):
            raise RequestError(f"row {row}: 'image' must be a base64 string, not {type(value).__name__}")
        total += len(value)
    if total > limits.max_request_bytes:
        raise RequestError(f"the request carries {total:,} bytes of images; the limit is {limits.max_request_bytes:,}")
    for row, question in enumerate(questions):
        if question is not None and len(question) > limits.max_question_chars:
            raise RequestError(f"row {row}: the question has {len(question):,} characters; "
                               f"the limit is {limits.max_question_chars:,}")


def decode_row_image(value: str | bytes, limits: ServeLimits, row: int = 0):
    """The PIL RGB image of one request row: base64 bytes (``data:`` URI allowed) or, if enabled, an allowed path."""
    data: bytes | None
    if isinstance(value, bytes | bytearray):
        data = bytes(value)
    else:
        text = value.strip()
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]
        data = _b64(text, limits, row)
        if data is None:
            if not limits.allowed_roots:
                raise RequestError(f"row {row}: 'image' must be base64-encoded image bytes "
                                   "(this server does not read file paths)")
            data = _read_allowed_file(text, limits, row)
    if len(data) > limits.max_image_bytes:
        raise RequestError(f"row {row}: the image has {len(data):,} bytes; the limit is {limits.max_image_bytes:,}")
    return open_image(data, max_pixels=limits.max_image_pixels, name=f"row {row}")


def open_image(data: bytes, *, max_pixels: int, name: str):
    """PIL RGB image from encoded bytes through the project's one image opener (the declared width x height is
    checked before any pixel is decoded).

    Every failure is a :class:`RequestError` with a short reason (no PIL internals, no paths).
    """
    from anomaly_ov.data.images import ImageError, ImageTooLarge
    from anomaly_ov.data.images import open_image as open_checked

    try:
        return open_checked(data, max_side=max_pixels, max_pixels=max_pixels, name=name)
    except ImageTooLarge as exc:
        declared = f"{exc.size[0]}x{exc.size[1]} pixels" if exc.size else "more pixels than allowed"
        raise RequestError(f"{name}: {declared} is more than the limit of {max_pixels:,}") from None
    except ImageError:
        raise RequestError(f"{name}: not an image, or corrupt or truncated image data") from None


def _b64(text: str, limits: ServeLimits, row: int) -> bytes | None:
    """Strict base64 decoding; None when ``text`` is not base64 (it may then be a path)."""
    if len(text) > (limits.max_image_bytes + 2) // 3 * 4 + 4:
        raise RequestError(f"row {row}: the image is larger than the limit of {limits.max_image_bytes:,} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _read_allowed_file(text: str, limits: ServeLimits, row: int) -> bytes:
    """Bytes of a regular file whose real path lies under an allowed root; one message for every refusal."""
    refused = RequestError(f"row {row}: 'image' is neither base64 image bytes nor a readable image file "
                           "under this server's allowed folders")
    if "\x00" in text or not os.path.isabs(text):
        raise refused
    real = Path(os.path.realpath(text))
    if not any(real.is_relative_to(root) for root in limits.allowed_roots):
        raise refused
    try:  # O_NONBLOCK: a named pipe must not hold the worker; fstat on the open file (no check-then-open race)
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        raise refused from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise refused
        if info.st_size > limits.max_image_bytes:
            raise RequestError(f"row {row}: the image file has {info.st_size:,} bytes; "
                               f"the limit is {limits.max_image_bytes:,}")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(limits.max_image_bytes + 1)
    except OSError:
        raise refused from None
    finally:
        os.close(fd)


def limit_body(app: Any, max_bytes: int) -> Any:
    """ASGI middleware: answer 413 to any request whose body is larger than ``max_bytes``, before the app reads it.

    A declared ``Content-Length`` over the limit is refused without reading the body; a chunked body is read up to
    the limit and refused as soon as it passes it. MLflow's scoring app reads the whole body into memory and parses
    it before the model sees a row, so this is the cap that protects the server's memory.
    """

    async def reply(send: Any, status: int, message: str) -> None:
        body = json.dumps({"error_code": "REQUEST_LIMIT_EXCEEDED" if status == 413 else "BAD_REQUEST",
                           "message": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def middleware(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await reply(send, 400, "invalid Content-Length header")
                return
            if length > max_bytes:
                await reply(send, 413, f"the request body has {length:,} bytes; this server takes at most "
                                       f"{max_bytes:,}")
                return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > max_bytes:
                await reply(send, 413, f"the request body is larger than {max_bytes:,} bytes")
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await app(scope, replay, send)

    return middleware


def scoring_app(model_uri: str, limits: ServeLimits) -> Any:
    """MLflow's scoring app (``/invocations``, ``/ping``) for ``model_uri`` behind :func:`limit_body`."""
    import mlflow
    from mlflow.pyfunc import scoring_server

    model = mlflow.pyfunc.load_model(model_uri)
    return limit_body(scoring_server.init(model), limits.max_body_bytes)


def load_predictor(model: str, params: Params | None = None, workspace: str | Path = ".", device: str = "cpu"):
    """A ``Predictor`` from a saved model directory or an MLflow model URI (``models:/name@alias``)."""
    if model.startswith(MODEL_URI_PREFIXES):
        import mlflow

        if params is not None:
            from anomaly_ov.tracking import start_tracking

            start_tracking(params, workspace)
        loaded = mlflow.pyfunc.load_model(model)
        return loaded.unwrap_python_model().predictor
    path = Path(model)
    if not path.is_absolute():
        path = Path(workspace) / path
    if not path.is_dir():
        raise MissingFile(
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
    heat_img = Image.fromarray((heat * 255).astype("uint8"), mode="L").resize(base.size, Image.Resampling.BILINEAR)
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
        raise MissingFile(f"image file(s) not found: {', '.join(missing)}")
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
