"""Stage 2's answer loss: the kept logit positions and the token / square / sample reductions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from anomaly_ov.train.instruct import answer_loss, answer_positions


def _batch(vocab: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    """Row 0: a 1-token answer (a Yes/No); row 1: a 6-token answer (a description); row 2: none (truncated)."""
    torch.manual_seed(0)
    logits = torch.randn(3, 12, vocab, requires_grad=True)
    labels = torch.full((3, 12), -100)
    labels[0, 5] = 3
    labels[1, 4:10] = torch.randint(0, vocab, (6,))
    return logits, labels


def _full(logits: torch.Tensor, labels: torch.Tensor, reduction: str) -> torch.Tensor:
    """The loss through the kept positions, as the training step computes it."""
    keep = answer_positions(labels)
    return answer_loss(logits[:, keep], labels[:, keep + 1], reduction)


def test_kept_positions_are_those_before_any_answer_token() -> None:
    _, labels = _batch()
    assert answer_positions(labels).tolist() == [3, 4, 5, 6, 7, 8]


def test_token_reduction_is_the_causal_lm_loss() -> None:
    logits, labels = _batch()
    reference = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                ignore_index=-100)
    assert torch.allclose(_full(logits, labels, "token"), reference)


def test_sample_reduction_weighs_each_conversation_alike() -> None:
    logits, labels = _batch()
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none")
    short, long = per_token[0].sum(), per_token[1].sum() / 6
    assert torch.allclose(_full(logits, labels, "sample"), (short + long) / 2)
    square = (short + per_token[1].sum() / 6**0.5) / (1 + 6 / 6**0.5)
    assert torch.allclose(_full(logits, labels, "square"), square)


def test_the_short_answer_weighs_more_under_sample_than_under_token() -> None:
    logits, labels = _batch()
    grads = {}
    for reduction in ("token", "sample"):
        logits.grad = None
        _full(logits, labels, reduction).backward()
        grads[reduction] = logits.grad[0].norm() / logits.grad[1].norm()
    assert grads["sample"] > 3 * grads["token"]


def test_a_batch_without_answers_gives_a_zero_loss_with_a_graph() -> None:
    logits, labels = _batch()
    labels[:] = -100
    loss = _full(logits, labels, "sample")
    assert loss.item() == 0.0 and loss.requires_grad


def test_an_unknown_reduction_is_refused() -> None:
    logits, labels = _batch()
    with pytest.raises(ValueError, match="unknown loss reduction 'mean'"):
        _full(logits, labels, "mean")
