"""Optional LLM rewriter: an OpenAI-compatible ``/chat/completions`` endpoint polishes templated descriptions.

Off by default (``params.instruct.rewriter.enabled``). When on, each anomalous description is sent with the
red-box image (a base64 PNG data URL) and the hint "a [category] with [defect type]", as in the Anomaly-Instruct
recipe. Any failure (unreachable server, timeout, HTTP error, malformed
or empty reply, over-long answer) falls back to the template answer and is counted in :attr:`Rewriter.stats`; the
synthesis run never crashes because of the rewriter. Requests go through
:class:`anomaly_ov.llm_client.ChatClient` (https except loopback, no redirects, bounded replies, key never logged).
"""

from __future__ import annotations

import base64
from collections import Counter
from pathlib import Path
from typing import Any

from anomaly_ov.config import RewriterParams
from anomaly_ov.instruct.regions import MaskFacts
from anomaly_ov.llm_client import ChatClient, LLMClientError

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
        self.client = ChatClient(params.base_url, params.model, params.api_key_env, params.timeout_s,
                                 setting="instruct.rewriter.base_url")
        self.max_chars = max_chars
        self.attempted = 0
        self.succeeded = 0
        self.skipped = 0
        self.failures: Counter[str] = Counter()

    @property
    def url(self) -> str:
        return self.client.url

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
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}],
            "temperature": 0.2,
            "max_tokens": 200,
        }

    def _post(self, payload: dict[str, Any]) -> str:
        return self.client.complete(**payload).strip()

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
        except LLMClientError as exc:
            return self._fail(exc.reason, text)
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
