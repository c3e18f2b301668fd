"""Optional LLM judge for reasoning answers, through any OpenAI-compatible ``/chat/completions`` endpoint.

Off by default (``evaluate.judge.enabled``). The prompt ships as ``judge_prompt.txt`` beside this module; the
judge replies ``Score: N`` with N in 0..10 and the score is reported divided by 10. Network errors, HTTP errors
and unparseable replies raise :class:`JudgeError`; the caller counts them and carries on (never fatal).
Requests go through :class:`anomaly_ov.llm_client.ChatClient` (https except loopback, no redirects, bounded replies).
"""

from __future__ import annotations

import re
from importlib import resources
from typing import TYPE_CHECKING

from anomaly_ov.errors import TransientError

if TYPE_CHECKING:
    from anomaly_ov.config import JudgeParams

SCORE_RE = re.compile(r"score\s*[:=]\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


class JudgeError(TransientError):
    """The judge could not give a score for one answer (the evaluation goes on without it)."""


def judge_prompt() -> str:
    return resources.files("anomaly_ov.evaluate").joinpath("judge_prompt.txt").read_text()


def parse_score(text: str) -> float:
    """``"Score: 7"`` -> 0.7; raises :class:`JudgeError` when no score in 0..10 is found."""
    match = SCORE_RE.search(text or "")
    if not match:
        raise JudgeError(f"judge reply has no 'Score: N' line: {text[:200]!r}")
    value = float(match.group(1))
    if not 0 <= value <= 10:
        raise JudgeError(f"judge score {value} is outside 0..10")
    return value / 10.0


class Judge:
    """Scores (question, reference, answer) triples with one HTTP request each."""

    def __init__(self, cfg: JudgeParams, prompt: str | None = None) -> None:
        from anomaly_ov.llm_client import ChatClient

        if not cfg.base_url or not cfg.model:
            raise ValueError("evaluate.judge.enabled is true but evaluate.judge.base_url or .model is empty")
        self.cfg = cfg
        self.prompt = prompt or judge_prompt()
        self.client = ChatClient(cfg.base_url, cfg.model, cfg.api_key_env, cfg.timeout_s,
                                 setting="evaluate.judge.base_url")
        self.url = self.client.url
        self.calls = 0
        self.failures = 0

    def score(self, question: str, reference: str, answer: str) -> float:
        self.calls += 1
        try:
            return parse_score(self._ask(self.prompt.format(question=question, reference=reference, answer=answer)))
        except JudgeError:
            self.failures += 1
            raise

    def try_score(self, question: str, reference: str, answer: str) -> float | None:
        """Like :meth:`score` but returns None on failure (counted in ``failures``)."""
        try:
            return self.score(question, reference, answer)
        except JudgeError:
            return None

    def _ask(self, content: str) -> str:
        from anomaly_ov.llm_client import LLMClientError

        try:
            return self.client.complete([{"role": "user", "content": content}], temperature=0)
        except LLMClientError as exc:
            raise JudgeError(f"judge request failed: {exc}") from None
