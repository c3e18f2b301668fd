"""VisA-D&R-style benchmark builder (docs/model.md, 'The VisA-D&R protocol') from the evaluation-role manifest rows.

Two JSON files are written into ``params.instruct.bench_dir`` (default ``data/bench``); the evaluation stage reads
exactly this schema.

``test_data.json`` (detection; every evaluation image): a JSON list of::

    {"image":    "<source>/<category>/<rest of image_path after the category folder>",
                 # the class is the second path component, as in the official "VisA/<class>/..." file
     "anomaly":  true | false,
     "file":     "<path to open, relative to the workspace (absolute when the data lies outside it)>",
     "mask":     "<workspace-relative mask path>" or "",
     "category": "<category>"}

Ask each image the VisA-D&R question (``anomaly_ov.model.tokenizer.DETECTION_PROMPT``), decode greedily, and
count a response as positive when it contains "Yes" or "yes".

``visa_dr.json`` (reasoning; anomalous images only): a JSON list of::

    {"image", "file", "mask", "category"   (as above),
     "defect_type": "<manifest defect_type>",
     "questions":   [str, ...],   # plain text, no "<image>": prepend "<image>\\n" to the first question only
     "answers":     [str, ...],   # one reference answer per question
     "kinds":       ["low_level" | "complex", ...]}   # one per question

The questions are multi-turn and asked in order with the model's own earlier answers as history: low-level first
(what it is and looks like, where it is, how big it is; where/how big are left out when the image has no mask),
then complex (likely cause, impact, prevention). Reference answers are written from the mask's region facts and
the defect knowledge base (the same builders as the training answers, seeded per image), so they are true to the
mask. Score low-level answers with ROUGE-L and Sentence-BERT, complex ones with Sentence-BERT.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_ov.config import Params
from anomaly_ov.instruct import answers as A
from anomaly_ov.instruct.synthesize import Item, collect_subjects, record_id_for, workspace_relative

if TYPE_CHECKING:
    import pandas as pd

    from anomaly_ov.parallel import FanOut

TEST_DATA = "test_data.json"
VISA_DR = "visa_dr.json"

#: (kind, sub-kind, question template) in the order they are asked; {object} is the category noun.
BENCH_QUESTIONS: tuple[tuple[str, str, str], ...] = (
    (A.LOW_LEVEL, "what", "What kind of defect does the {object} in the image have, and what does it look like?"),
    (A.LOW_LEVEL, "where", "Where is the defect located in the image?"),
    (A.LOW_LEVEL, "size", "How big is the defect?"),
    (A.COMPLEX, "cause", "What could have caused this defect?"),
    (A.COMPLEX, "impact", "How could this defect affect the {object}?"),
    (A.COMPLEX, "prevention", "How can this kind of defect be prevented?"),
)


def bench_image_key(source: str, category: str, image_path: str) -> str:
    """``<source>/<category>/<rest>``: the image path after its category folder (the whole path when the
    category is not one of its folders)."""
    parts = [p for p in str(image_path).replace("\\", "/").split("/") if p]
    rest = parts
    for i, part in enumerate(parts[:-1]):
        if part == category:
            rest = parts[i + 1 :]
            break
    return "/".join([source, category, *rest])


def _mask_rel(item: Item, workspace: Path) -> str:
    mask = item.masks[0]
    return workspace_relative(mask, workspace) if mask is not None else ""


def reasoning_item(item: Item, seed: int) -> dict[str, Any] | None:
    """Questions and reference answers for one anomalous item (None for normal items)."""
    subject = item.subject
    if not subject.anomalous:
        return None
    rng = random.Random(f"{seed}:bench:{item.id}")
    questions, answers, kinds = [], [], []
    for kind, sub, template in BENCH_QUESTIONS:
        if sub in ("where", "size") and not subject.localised:
            continue
        if kind == A.COMPLEX and subject.domain == "medical":
            template = A.MEDICAL_COMPLEX_QUESTIONS[sub][0]
        questions.append(A.fill(template, subject))
        answers.append(A.low_level_answer(rng, subject, sub) if kind == A.LOW_LEVEL
                       else A.complex_answer(rng, subject, sub))
        kinds.append(kind)
    return {"questions": questions, "answers": answers, "kinds": kinds}


def benchmark_entries(
    frame: pd.DataFrame, params: Params, workspace: str | Path, *, domain: str | None = None, fan: FanOut | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(test_data entries, visa_dr entries) for the rows of ``frame`` (pass the role == "eval" rows); ``fan``
    shards the region facts (:mod:`anomaly_ov.parallel`)."""
    workspace = Path(workspace)
    items = collect_subjects(frame, params, workspace, domain=domain, group_views=False, fan=fan)
    by_id = {record_id_for(row["source"], row["image_path"]): row for row in frame.to_dict("records")}
    detection, reasoning = [], []
    for item in items:
        row = by_id[item.id]
        base = {
            "image": bench_image_key(row["source"], row["category"], row["image_path"]),
            "anomaly": item.label == "anomaly",
            "file": item.images[0],
            "mask": _mask_rel(item, workspace),
            "category": row["category"],
        }
        detection.append(base)
        qa = reasoning_item(item, params.instruct.seed)
        if qa is not None:
            entry = {k: v for k, v in base.items() if k != "anomaly"}
            reasoning.append(entry | {"defect_type": row["defect_type"]} | qa)
    return detection, reasoning


def build_benchmark(
    frame: pd.DataFrame, params: Params, workspace: str | Path, out_dir: str | Path, *, domain: str | None = None,
    fan: FanOut | None = None,
) -> dict[str, Any]:
    """Write ``test_data.json`` and ``visa_dr.json`` into ``out_dir`` (workspace-relative or absolute)."""
    from anomaly_ov.io import atomic_write_json

    workspace = Path(workspace)
    out = Path(out_dir)
    out = out if out.is_absolute() else workspace / out
    detection, reasoning = benchmark_entries(frame, params, workspace, domain=domain, fan=fan)
    atomic_write_json(out / TEST_DATA, detection)
    atomic_write_json(out / VISA_DR, reasoning)
    categories = sorted({d["category"] for d in detection})
    return {
        "test_data": workspace_relative(out / TEST_DATA, workspace),
        "visa_dr": workspace_relative(out / VISA_DR, workspace),
        "detection_images": len(detection),
        "detection_anomalous": sum(d["anomaly"] for d in detection),
        "detection_normal": sum(not d["anomaly"] for d in detection),
        "reasoning_items": len(reasoning),
        "reasoning_questions": sum(len(r["questions"]) for r in reasoning),
        "categories": categories,
    }
