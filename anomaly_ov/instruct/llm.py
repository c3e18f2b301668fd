"""Optional LLM rewriter: an OpenAI-compatible ``/chat/completions`` endpoint polishes templated descriptions.

Off by default (``params.instruct.rewriter.enabled``). When on, each anomalous description is sent with the
red-box image (a base64 PNG data URL) and the hint "a [category] with [defect type]", as in the Anomaly-Instruct
recipe. Plain ``urllib`` (no extra dependency). Any failure (unreachable server, timeout, HTTP error, malformed
or empty reply, over-long answer) falls back to the template answer and is counted in :attr:`Rewriter.stats`; the
synthesis run never crashes because of the rewriter.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from anomaly_ov.config import RewriterParams
from anomaly_ov.instruct.regions import MaskFacts

SYSTEM_PROMPT = (
    "You rewrite defect descriptions for an inspection dataset. Keep every fact (defect type, location, size, "
    "count) exactly as given; the red boxes in the image mark the defect. Answer in 1-3 plain sentences, no lists."
)


class Rewriter:
    """Calls the configured endpoint; :meth:`rewrite` always returns a usable answer."""

    def __init__(self, params: RewriterParams, max_chars: int = 1200) -> None:
        if not params.base_url or not params.model:
            raise ValueError("instruct.rewriter.enabled needs instruct.rewriter.base_url and instruct.rewriter.model")
        self.params = params
        self.max_chars = max_chars
        self.attempted = 0
        self.succeeded = 0
        self.skipped = 0
        self.failures: Counter[str] = Counter()

    @property
    def url(self) -> str:
        return self.params.base_url.rstrip("/") + "/chat/completions"

    @property
    def stats(self) -> dict[str, Any]:
        return {
            "enabled": True,
            "attempted": self.attempted,
            "succeeded": self.succeeded,
            "failed": sum(self.failures.values()),
            "skipped": self.skipped,
            "failures_by_reason": dict(sorted(self.failures.items())),
        }

    def _payload(self, text: str, hint: str, image_png: bytes | None) -> dict[str, Any]:
        content: list[dict[str, Any]] = [{"type": "text", "text": f"Hint: {hint}.\nDescription to rewrite: {text}"}]
        if image_png:
            url = "data:image/png;base64," + base64.b64encode(image_png).decode("ascii")
            content.append({"type": "image_url", "image_url": {"url": url}})
        return {
            "model": self.params.model,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}],
            "temperature": 0.2,
            "max_tokens": 200,
        }

    def _post(self, payload: dict[str, Any]) -> str:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.params.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=json.dumps(payload).encode(), headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.params.timeout_s) as response:  # noqa: S310 (configured URL)
            body = response.read()
        reply = json.loads(body)
        content = reply["choices"][0]["message"]["content"]
        if isinstance(content, list):  # some servers return content parts
            content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not isinstance(content, str):
            raise TypeError("message content is not text")
        return content.strip()

    def rewrite(
        self, text: str, hint: str, image_path: str | Path | None = None, facts: MaskFacts | None = None
    ) -> str:
        """Rewritten ``text``, or ``text`` itself when the cap is reached or anything goes wrong."""
        cap = self.params.max_records
        if cap is not None and self.attempted >= cap:
            self.skipped += 1
            return text
        self.attempted += 1
        try:
            image_png = None
            if image_path is not None and facts is not None:
                from anomaly_ov.instruct.visual import red_box_png

                image_png = red_box_png(image_path, facts)
            answer = self._post(self._payload(text, hint, image_png))
        except urllib.error.HTTPError as exc:
            return self._fail(f"http_{exc.code}", text)
        except TimeoutError:
            return self._fail("timeout", text)
        except urllib.error.URLError as exc:
            reason = "timeout" if isinstance(exc.reason, TimeoutError | socket.timeout) else "unreachable"
            return self._fail(reason, text)
        except (json.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError, UnicodeDecodeError):
            return self._fail("malformed", text)
        except (OSError, ValueError):
            return self._fail("error", text)
        if not answer:
            return self._fail("empty", text)
        if len(answer) > self.max_chars:
            return self._fail("too_long", text)
        self.succeeded += 1
        return answer

    def _fail(self, reason: str, text: str) -> str:
        self.failures[reason] += 1
        return text


def disabled_stats() -> dict[str, Any]:
    return {"enabled": False, "attempted": 0, "succeeded": 0, "failed": 0, "skipped": 0, "failures_by_reason": {}}


def make_rewriter(params: RewriterParams, max_chars: int = 1200) -> Rewriter | None:
    """A :class:`Rewriter` when enabled, else None."""
    return Rewriter(params, max_chars) if params.enabled else None
