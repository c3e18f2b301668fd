"""The shared chat-completions client against real local HTTP servers: redirects, plain http, size, slow replies.

The "other host" is a second server on 127.0.0.2 (another loopback address, so another host for urllib): it
records every request, and the tests assert that the API key never reaches it, through the judge and the rewriter.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from anomaly_ov.config import JudgeParams, RewriterParams
from anomaly_ov.evaluate.judge import Judge, JudgeError
from anomaly_ov.instruct.llm import Rewriter
from anomaly_ov.llm_client import ChatClient, LLMClientError, check_base_url

KEY = "sk-test-do-not-leak-0123456789"
REPLY = json.dumps({"choices": [{"message": {"content": "Score: 7"}}]}).encode()


class Recorder(BaseHTTPRequestHandler):
    """Answers by ``mode``; every request's method, path and Authorization header lands in ``seen``."""

    mode = "ok"
    target = ""
    seen: list
    dripped_out = False  # the "drip" reply was sent to its end

    def log_message(self, *args):
        pass

    def _record(self):
        self.seen.append((self.command, self.path, self.headers.get("Authorization")))

    def do_GET(self):  # noqa: N802 (http.server API)
        self._record()
        self._reply()

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._record()
        self._reply()

    def _reply(self):
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if self.mode.startswith("redirect"):
                self.send_response(int(self.mode.split("_")[1]))
                self.send_header("Location", self.target)
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.mode == "huge":
                self.send_response(200)
                self.end_headers()
                for _ in range(3 * 1024):
                    self.wfile.write(b" " * 1024)
            elif self.mode == "drip":  # one byte every 50 ms for up to 6 s, then a valid reply
                self.send_response(200)
                self.end_headers()
                for _ in range(120):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.05)
                self.wfile.write(REPLY)
                type(self).dripped_out = True
            else:
                self.send_response(200)
                self.send_header("Content-Length", str(len(REPLY)))
                self.end_headers()
                self.wfile.write(REPLY)


def serve(host: str):
    handler = type("Handler", (Recorder,), {"seen": []})
    httpd = ThreadingHTTPServer((host, 0), handler)
    httpd.daemon_threads = True
    # a short poll: shutdown() waits up to one poll interval (0.5 s by default) for the loop to notice
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    return httpd, handler, f"http://{host}:{httpd.server_address[1]}"


@pytest.fixture
def servers():
    """(front URL, front handler, other-host handler, other-host URL)."""
    front, front_handler, front_url = serve("127.0.0.1")
    other, other_handler, other_url = serve("127.0.0.2")
    yield front_url, front_handler, other_handler, other_url
    for httpd in (front, other):
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("code", [301, 302, 303, 307])
def test_a_redirect_to_another_host_never_receives_the_key(servers, monkeypatch, caplog, code):
    front_url, front, other, other_url = servers
    monkeypatch.setenv("LLM_KEY_FOR_TEST", KEY)
    front.mode, front.target = f"redirect_{code}", other_url + "/v1/chat/completions"
    caplog.set_level(logging.DEBUG)

    judge = Judge(JudgeParams(enabled=True, base_url=front_url + "/v1", model="m", api_key_env="LLM_KEY_FOR_TEST",
                              timeout_s=5))
    with pytest.raises(JudgeError, match="redirects are not followed") as failed:
        judge.score("q", "ref", "ans")
    rewriter = Rewriter(RewriterParams(enabled=True, base_url=front_url + "/v1", model="m",
                                       api_key_env="LLM_KEY_FOR_TEST", timeout_s=5))
    assert rewriter.rewrite("Template.", "hint") == "Template."
    assert rewriter.stats["failures_by_reason"] == {"redirect": 1}

    assert [auth for _, _, auth in front.seen] == [f"Bearer {KEY}"] * 2  # the configured host got it
    assert all(auth is None for _, _, auth in other.seen), other.seen
    assert other.seen == []  # and the other host got no request at all
    assert KEY not in str(failed.value) and KEY not in caplog.text


def test_plain_http_only_for_loopback_and_no_credentials_in_the_url():
    for url in ("https://api.example.com/v1", "http://127.0.0.1:8000/v1", "http://localhost:8000/v1",
                "http://[::1]:8000/v1"):
        assert check_base_url(url) == url
    with pytest.raises(ValueError, match="plain http is only accepted for a loopback host"):
        Judge(JudgeParams(enabled=True, base_url="http://judge.example.com/v1", model="m"))
    with pytest.raises(ValueError, match="instruct.rewriter.base_url=.*plain http"):
        Rewriter(RewriterParams(enabled=True, base_url="http://10.0.0.5:8000/v1", model="m"))
    with pytest.raises(ValueError, match="credentials inside the URL"):
        check_base_url("https://user:secret@api.example.com/v1")
    with pytest.raises(ValueError, match="not an http"):
        check_base_url("file:///etc/passwd")


def test_replies_are_size_limited(servers):
    front_url, front, _, _ = servers
    front.mode = "huge"  # 3 MiB of spaces
    client = ChatClient(front_url, "m", api_key_env="", timeout_s=10, max_response_bytes=1024 * 1024)
    with pytest.raises(LLMClientError, match="larger than 1,048,576 bytes") as failed:
        client.complete([{"role": "user", "content": "hi"}])
    assert failed.value.reason == "too_large"


@pytest.mark.timeout(30)
def test_a_reply_dripping_in_slower_than_the_timeout_is_cut(servers):
    front_url, front, _, _ = servers
    front.mode = "drip"  # each byte well inside the socket timeout; the whole reply takes 6 s
    rewriter = Rewriter(RewriterParams(enabled=True, base_url=front_url, model="m", timeout_s=0.5))
    assert rewriter.rewrite("Template.", "hint") == "Template."
    assert rewriter.stats["failures_by_reason"] == {"timeout": 1}
    # cut while the reply was still coming: a read that waits for a full buffer returned only at the reply's end
    assert not front.dripped_out
