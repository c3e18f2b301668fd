"""One small client for OpenAI-compatible ``/chat/completions`` endpoints (the LLM judge and the rewriter use it).

The network policy lives here, in one place:

- ``base_url`` must be ``https://``; plain ``http://`` only for a loopback host (``localhost``, ``127.0.0.0/8``,
  ``::1``), so an API key never crosses a network in clear text. Credentials inside the URL are refused.
- Redirects are never followed: urllib would re-send the ``Authorization`` header to whatever host the server
  names. A redirect is an error that names the target host; set ``base_url`` to the final address instead.
- The reply is read up to ``max_response_bytes`` and within ``timeout_s`` in total (not only per socket read).
- The API key is read from the environment variable named by ``api_key_env`` at request time, sent only as the
  ``Authorization`` header of the request to ``base_url``, and appears in no message, log line or ``repr``.

Standard library only (urllib).
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from anomaly_ov.errors import TransientError

DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024


class LLMClientError(TransientError):
    """A request that gave no usable reply; ``reason`` is a short machine-readable cause (``http_500``, ...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (``127.0.0.0/8``, ``::1``)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(url: str, key: str = "base_url") -> str:
    """``url`` without a trailing slash, or ``ValueError`` naming ``key`` when the policy refuses it."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{key}={url!r} is not an http(s) URL such as https://api.example.com/v1")
    if parts.username or parts.password:
        raise ValueError(f"{key}: credentials inside the URL are not accepted; put the key in the environment "
                         "variable named by api_key_env")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(f"{key}={url!r}: plain http is only accepted for a loopback host (localhost, 127.0.0.1); "
                         "use https:// for a remote server")
    return url.strip().rstrip("/")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse every redirect (urllib would forward the Authorization header to the new host)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 (urllib API)
        target = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, newurl))
        raise LLMClientError("redirect", f"{req.full_url} answered HTTP {code} redirecting to "
                             f"{target.scheme}://{target.netloc}{target.path}; redirects are not followed "
                             "(set base_url to the final address)")


@dataclass
class ChatClient:
    """POST chat completions to ``base_url`` + ``/chat/completions`` under the policy above."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    setting: str = "base_url"  # how the URL is called in messages, e.g. "evaluate.judge.base_url"
    _opener: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.base_url or not self.model:
            raise ValueError(f"{self.setting} and the model name must both be set")
        self.base_url = check_base_url(self.base_url, self.setting)
        self._opener = urllib.request.build_opener(_NoRedirect)

    @property
    def url(self) -> str:
        return self.base_url + "/chat/completions"

    def complete(self, messages: list[dict[str, Any]], **options: Any) -> str:
        """The first choice's message text; raises :class:`LLMClientError` for anything else."""
        payload = {"model": self.model, "messages": messages, **options}
        request = urllib.request.Request(self.url, data=json.dumps(payload).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if key:
            request.add_unredirected_header("Authorization", f"Bearer {key}")
        body = self._send(request)
        try:
            reply = json.loads(body)
            content = reply["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError):
            raise LLMClientError("malformed", f"reply from {self.url} is not a chat completion: "
                                 f"{body[:200]!r}") from None
        if isinstance(content, list):  # some servers return content parts
            content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not isinstance(content, str):
            raise LLMClientError("malformed", f"reply from {self.url}: message content is not text")
        return content

    def _send(self, request: urllib.request.Request) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                chunks: list[bytes] = []
                size = 0
                while True:
                    if time.monotonic() > deadline:
                        raise LLMClientError("timeout", f"{self.url} took more than {self.timeout_s:g} s")
                    chunk = response.read1(64 * 1024)  # what has arrived: read() would wait for 64 KiB or the end
                    if not chunk:
                        return b"".join(chunks)
                    size += len(chunk)
                    if size > self.max_response_bytes:
                        raise LLMClientError("too_large", f"reply from {self.url} is larger than "
                                             f"{self.max_response_bytes:,} bytes")
                    chunks.append(chunk)
        except LLMClientError:
            raise
        except urllib.error.HTTPError as exc:
            raise LLMClientError(f"http_{exc.code}", f"{self.url} answered HTTP {exc.code}") from None
        except TimeoutError:
            raise LLMClientError("timeout", f"{self.url} took more than {self.timeout_s:g} s") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise LLMClientError("timeout", f"{self.url} took more than {self.timeout_s:g} s") from None
            raise LLMClientError("unreachable", f"{self.url} is unreachable: {exc.reason}") from None
        except OSError as exc:
            raise LLMClientError("error", f"request to {self.url} failed: {type(exc).__name__}") from None
