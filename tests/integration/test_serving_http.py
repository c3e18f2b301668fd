"""The served model over real HTTP: `mlflow models serve` on 127.0.0.1 with the tiny model, friendly and hostile.

The model is logged and registered as the register stage does (``registry.log_model``), and both servers load it
by the README's URI, ``models:/NAME@production``, from an MLflow SQLite store. One server per module (it takes a
while to start on a busy machine), started with an allowed folder for paths and small limits so that the limit
cases stay cheap. Every request has a timeout and every test a pytest timeout, so a hung worker fails the test
instead of the suite.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from anomaly_ov import registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BIN = Path(sys.executable).parent
MAX_ROWS = 4
MAX_REQUEST_BYTES = 400_000
MAX_PIXELS = 1_000_000
MAX_BODY_MB = 1
SERVERS = ("mlflow", "anomaly-ov")
MODEL_NAME = "serve-test"


def png_bytes(seed: int = 0, size: tuple[int, int] = (48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG of a few kilobytes declaring ``width`` x ``height`` grey pixels (all zero)."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = zlib.compress(b"\x00" * ((width + 1) * height), 9)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def served(tmp_path_factory, blank_mlflow_db):
    """({kind: base URL}, in-process pyfunc, allowed folder, outside folder, {kind: log}) for both live servers."""
    import torch

    from anomaly_ov.config import Params, dump_params
    from anomaly_ov.model.presets import build_model, build_processor, save_pretrained
    from anomaly_ov.model.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("serve")
    shutil.copyfile(blank_mlflow_db, root / "mlflow.db")  # a blank store (tests/conftest.py)
    torch.manual_seed(0)
    tok = train_tokenizer(["Yes, there is a scratch on the left.", "No, the object looks normal."] * 5)
    params = Params()
    save_pretrained(build_model(params, tok).eval(), build_processor(params, tok), root / "weights")
    # logged and registered as the register stage does (registry.log_model), served by the README's URI; root is a
    # workspace with the default params, whose store is root/mlflow.db (`anomaly-ov model serve` reads it there)
    dump_params(params, root / "params.yaml")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    # an explicit experiment in this store: the active one an earlier test left behind belongs to another store
    experiment_id = mlflow.MlflowClient(tracking_uri).create_experiment("serving")
    with mlflow.start_run(experiment_id=experiment_id):
        info = registry.log_model(root / "weights", registered_model_name=MODEL_NAME, validate_example=False)
    mlflow.MlflowClient(tracking_uri).set_registered_model_alias(MODEL_NAME, "production",
                                                                 info.registered_model_version)
    model_uri = f"models:/{MODEL_NAME}@production"
    allowed, outside = root / "allowed", root / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "part.png").write_bytes(png_bytes(1))
    (outside / "secret.png").write_bytes(png_bytes(2))
    (allowed / "link.png").symlink_to(outside / "secret.png")
    os.mkfifo(allowed / "pipe.png")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
           "ANOMALY_OV_SERVE_ALLOWED_ROOTS": str(allowed), "ANOMALY_OV_SERVE_MAX_ROWS": str(MAX_ROWS),
           "ANOMALY_OV_SERVE_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
           "ANOMALY_OV_SERVE_MAX_IMAGE_PIXELS": str(MAX_PIXELS), "ANOMALY_OV_SERVE_BATCH_SIZE": "2",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": tracking_uri}
    ports = {}
    for kind in ("mlflow", "anomaly-ov"):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports[kind] = sock.getsockname()[1]
    commands = {  # the README's `mlflow models serve`, and `anomaly-ov model serve` with its body limit
        "mlflow": [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
                   "-h", "127.0.0.1", "-p", str(ports["mlflow"]), "-t", "60"],
        "anomaly-ov": [str(BIN / "anomaly-ov"), "model", "serve", "-m", model_uri,
                       "--port", str(ports["anomaly-ov"]), "--max-body-mb", str(MAX_BODY_MB)],
    }
    procs, logs = {}, {}
    for kind, command in commands.items():
        logs[kind] = root / f"{kind}.log"
        procs[kind] = subprocess.Popen(command, cwd=root, env=env, stdout=logs[kind].open("w"),
                                       stderr=subprocess.STDOUT, start_new_session=True)
    urls = {kind: f"http://127.0.0.1:{port}" for kind, port in ports.items()}
    try:
        deadline = time.monotonic() + 240
        for kind, url in urls.items():
            while True:
                assert procs[kind].poll() is None, logs[kind].read_text()[-3000:]
                try:
                    urllib.request.urlopen(url + "/ping", timeout=5)
                    break
                except OSError:
                    assert time.monotonic() < deadline, "server did not come up\n" + logs[kind].read_text()[-3000:]
                    time.sleep(1)
        old = {k: os.environ.get(k) for k in ("ANOMALY_OV_SERVE_ALLOWED_ROOTS",)}
        os.environ["ANOMALY_OV_SERVE_ALLOWED_ROOTS"] = str(allowed)
        try:
            local = mlflow.pyfunc.load_model(model_uri)
        finally:
            for key, value in old.items():
                os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        yield urls, local, allowed, outside, logs
    finally:
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):  # a server that failed to start has no group left
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def post(url: str, body: dict | bytes) -> tuple[int, str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + "/invocations", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def assert_clean_400(status: int, text: str, *must: str) -> dict:
    """A 400 whose body carries a message and nothing of the server: no traceback, no file system paths."""
    assert status == 400, text[:2000]
    body = json.loads(text)
    assert "stack_trace" not in body and "Traceback" not in text, text[:2000]
    for leak in ("site-packages", str(Path(registry.__file__).parent), "/tmp/", "/etc/"):
        assert leak not in body["message"].split("\nError:")[-1], body["message"]
    for fragment in must:
        assert fragment in body["message"], body["message"]
    return body


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", SERVERS)
def test_readme_request_matches_the_in_process_pyfunc(served, kind):
    urls, local, allowed, _, _ = served
    url = urls[kind]
    records = [{"image": b64(png_bytes(seed)), "question": ""} for seed in (3, 4, 5)]  # 3 rows: 2 batches of 2
    status, text = post(url, {"dataframe_records": records, "params": {"threshold": 0.5}})
    assert status == 200, text[:2000]
    remote = pd.DataFrame(json.loads(text)["predictions"])
    expected = local.predict(pd.DataFrame(records), params={"threshold": 0.5})
    assert list(remote.columns) == ["score", "label", "answer"]
    np.testing.assert_allclose(remote["score"], expected["score"], atol=1e-6)
    assert list(remote["label"]) == list(expected["label"]) and list(remote["answer"]) == list(expected["answer"])
    # a path under the allowed folder gives the same result as its bytes
    by_path = post(url, {"dataframe_records": [{"image": str(allowed / "part.png")}]})
    by_bytes = post(url, {"dataframe_records": [{"image": b64((allowed / "part.png").read_bytes())}]})
    assert by_path[0] == by_bytes[0] == 200 and json.loads(by_path[1]) == json.loads(by_bytes[1])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", SERVERS)
def test_paths_outside_the_allowed_folder_are_refused_alike(served, kind):
    urls, _, allowed, outside, _ = served
    url = urls[kind]
    refusals = {}
    for value in (str(outside / "secret.png"),        # a real PNG outside every allowed folder
                  str(allowed / "link.png"),          # a symlink inside pointing outside
                  str(allowed / ".." / "outside" / "secret.png"),
                  "/etc/passwd", "/etc/no-such-file",  # existing or not: the same answer
                  "~/secret.png", "part.png",          # no ~ expansion, no relative paths
                  str(allowed / "pipe.png")):          # a named pipe must not hold the worker
        status, text = post(url, {"dataframe_records": [{"image": value}]})
        body = assert_clean_400(status, text, "row 0")
        refusals[value] = body["message"].split("\nError:")[-1]
    assert len(set(refusals.values())) == 1, refusals


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", SERVERS)
def test_bad_images_and_limits_get_short_400s(served, kind):
    urls, _, _, _, logs = served
    url, log = urls[kind], logs[kind]
    truncated = png_bytes(6)[:200]
    cases = [
        ([{"image": b64(b"this is not an image")}], "row 0: not an image"),
        ([{"image": b64(truncated)}], "row 0"),
        ([{"image": b64(png_bytes(7))}, {"image": b64(bomb_png(2000, 2000))}], "row 1: 2000x2000 pixels"),
        ([{"image": b64(png_bytes(8))}] * (MAX_ROWS + 1), f"at most {MAX_ROWS}"),
        ([{"image": "A" * (MAX_REQUEST_BYTES + 4)}], "the limit is"),
        ([{"image": b64(png_bytes(9)), "question": "why? " * 1000}], "row 0: the question has"),
    ]
    for records, fragment in cases:
        assert_clean_400(*post(url, {"dataframe_records": records}), fragment)
    assert "Traceback" not in log.read_text()  # refusals are the client's problem, not logged as crashes


@pytest.mark.timeout(300)
def test_anomaly_ov_serve_refuses_an_oversized_body_before_reading_it(served):
    import http.client
    from urllib.parse import urlsplit

    urls, _, _, _, _ = served
    size = 2 * 1024 * 1024  # > MAX_BODY_MB
    target = urlsplit(urls["anomaly-ov"])
    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
    try:  # the headers alone: the answer comes without a byte of the body being sent
        conn.putrequest("POST", "/invocations")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        response = conn.getresponse()
        status, body = response.status, json.loads(response.read())
    finally:
        conn.close()
    assert status == 413 and "at most 1,048,576" in body["message"]
    big = json.dumps({"dataframe_records": [{"image": "A" * size}]}).encode()
    assert post(urls["mlflow"], big)[0] == 400  # mlflow's server reads it all; the pyfunc still refuses it
