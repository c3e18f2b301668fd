"""The optional rewriter against a local stub server: success, HTTP 500, malformed JSON, timeout, unreachable."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from anomaly_ov.config import RewriterParams
from anomaly_ov.instruct.llm import Rewriter, make_rewriter
from anomaly_ov.instruct.regions import region_facts


class _Handler(BaseHTTPRequestHandler):
    mode = "ok"
    received: list[dict] = []

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        mode = type(self).mode
        if mode == "timeout":
            time.sleep(1.0)
        if mode == "500":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"boom")
            return
        payload = {
            "ok": json.dumps({"choices": [{"message": {"role": "assistant", "content": " A rewritten crack. "}}]}),
            "malformed": "{not json",
            "no_choices": json.dumps({"error": "nope"}),
            "empty": json.dumps({"choices": [{"message": {"content": ""}}]}),
            "timeout": json.dumps({"choices": [{"message": {"content": "late"}}]}),
        }[mode]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(payload.encode())


@pytest.fixture
def server():
    _Handler.received = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)  # quick shutdown
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def image_and_facts(tmp_path):
    mask = np.zeros((32, 32), bool)
    mask[10:20, 10:20] = True
    path = tmp_path / "img.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(path)
    return path, region_facts(mask)


def _rewriter(url: str, **kw) -> Rewriter:
    return Rewriter(RewriterParams(enabled=True, base_url=url, model="stub", timeout_s=kw.pop("timeout_s", 5.0), **kw))


def test_success_sends_hint_and_red_box_image(server, image_and_facts, monkeypatch):
    _, url = server
    _Handler.mode = "ok"
    monkeypatch.setenv("STUB_KEY", "secret")
    rw = Rewriter(RewriterParams(enabled=True, base_url=url, model="stub", api_key_env="STUB_KEY"))
    out = rw.rewrite("There is a crack.", "a tile with crack", *image_and_facts)
    assert out == "A rewritten crack."
    assert rw.stats["succeeded"] == 1 and rw.stats["failed"] == 0
    sent = _Handler.received[0]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer secret"
    content = sent["body"]["messages"][1]["content"]
    assert "a tile with crack" in content[0]["text"] and "There is a crack." in content[0]["text"]
    assert content[1]["image_url"]["url"].startswith("data:image/png;base64,")


@pytest.mark.parametrize(("mode", "reason"), [("500", "http_500"), ("malformed", "malformed"),
                                              ("no_choices", "malformed"), ("empty", "empty")])
def test_failures_fall_back_to_the_template(server, mode, reason):
    _, url = server
    _Handler.mode = mode
    rw = _rewriter(url)
    assert rw.rewrite("Template answer.", "a pill with stain") == "Template answer."
    assert rw.stats["failed"] == 1 and rw.stats["failures_by_reason"] == {reason: 1}


def test_timeout_falls_back(server):
    _, url = server
    _Handler.mode = "timeout"
    rw = _rewriter(url, timeout_s=0.2)
    assert rw.rewrite("Template answer.", "hint") == "Template answer."
    assert rw.stats["failures_by_reason"] == {"timeout": 1}


def test_unreachable_server_and_cap():
    rw = _rewriter("http://127.0.0.1:9", max_records=1)  # port 9 (discard) is closed on test machines
    assert rw.rewrite("A.", "hint") == "A."
    assert rw.rewrite("B.", "hint") == "B."
    assert rw.stats["failed"] == 1 and rw.stats["skipped"] == 1
    assert set(rw.stats["failures_by_reason"]) <= {"unreachable", "timeout", "error"}


def test_disabled_by_default_and_config_errors():
    assert make_rewriter(RewriterParams()) is None
    with pytest.raises(ValueError, match="base_url"):
        Rewriter(RewriterParams(enabled=True))


def test_synthesis_uses_the_rewriter_for_anomalous_descriptions(server, workspace):
    from anomaly_ov.instruct.synthesize import synthesize_records

    _, url = server
    _Handler.mode = "ok"
    ws, frame, params = workspace
    rw = _rewriter(url)
    records = synthesize_records(frame[frame.role == "train"], params, ws, rewriter=rw)
    rewritten = [t["value"] for r in records for t in r["conversations"] if t["value"] == "A rewritten crack."]
    assert rewritten and rw.stats["attempted"] == rw.stats["succeeded"] == len(rewritten)
    assert all(r["label"] == "anomaly" for r in records if any(t["value"] == "A rewritten crack."
                                                               for t in r["conversations"]))
    hints = [sent["body"]["messages"][1]["content"][0]["text"] for sent in _Handler.received]
    assert all(h.startswith("Hint: a ") and " with " in h for h in hints)
