"""Manifest rows + masks -> LLaVA-format instruction records (docs/model.md, 'The Anomaly-Instruct recipe').

Record format (one dict per conversation; ``data/instruct/train.json`` is a JSON list of them)::

    {"id": str,
     "image": "<workspace-relative path>"  or  ["<view 1>", "<view 2>", ...]  (multi-view 3D groups),
     "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...],
     "category": str, "label": "normal"|"anomaly", "defect_type": str, "source": str, "modality": str,
     "kinds": ["detection"|"low_level"|"complex", ...]   (one per human/gpt turn),
     "red_box": "<workspace-relative png>"   (only when params.instruct.red_boxes rendered one)}

The first human turn starts with one ``<image>`` line per image. Question kinds: one-word detection ("Yes" /
"No", balanced between normal and anomalous images over the whole set by undersampling the larger group),
low-level description (what / where / how big / how many) and complex reasoning (cause / impact / prevention);
``params.instruct.multi_turn_fraction`` of the records are multi-turn. Every answer about a defect is built from
the mask's region facts; normal images get "no defect" answers that describe the normal object.

Randomness: each record draws from ``random.Random(f"{seed}:{id}")``, so the set is reproducible and a record
does not change when other rows are added. The functions are reusable by the medical and 3D extensions:
:func:`collect_subjects`, :func:`synthesize_records` and :func:`summarize_records`.
"""

from __future__ import annotations

import functools
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_ov.config import Params
from anomaly_ov.data.manifest import NORMAL_DEFECT, resolve
from anomaly_ov.instruct import answers as A
from anomaly_ov.instruct.knowledge import KnowledgeBase, domain_of, load_knowledge
from anomaly_ov.instruct.regions import MaskFacts, facts_from_files
from anomaly_ov.model.tokenizer import IMAGE_TOKEN

if TYPE_CHECKING:
    import pandas as pd

    from anomaly_ov.instruct.llm import Rewriter
    from anomaly_ov.parallel import FanOut


@dataclass
class Item:
    """One record subject: a single image, or the views of one multi-view object (in view order)."""

    id: str
    images: list[str]  # workspace-relative paths
    files: list[Path]  # paths to open
    masks: list[Path | None]
    source: str
    category: str
    label: str
    defect_type: str
    modality: str
    subject: A.Subject
    facts_per_view: list[MaskFacts | None] = field(default_factory=list)


def workspace_relative(path: Path, workspace: Path) -> str:
    """``path`` relative to the workspace (POSIX) when inside it, else absolute."""
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.resolve().relative_to(Path(workspace).resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def record_id_for(source: str, image_path: str) -> str:
    """Stable record id of a manifest row: ``<source>/<image_path without extension>``."""
    stem = re.sub(r"\.[A-Za-z0-9]+$", "", image_path)
    return re.sub(r"[^A-Za-z0-9_./-]+", "_", f"{source}/{stem}")


def _file_of(row: Any, workspace: Path) -> tuple[str, Path]:
    path = resolve(row, "image_path", workspace)
    root = Path(str(row["root"]))
    rel = (root / str(row["image_path"])).as_posix() if not root.is_absolute() else workspace_relative(path, workspace)
    return rel, path


FactsKey = tuple[str, str, bool]


def _facts_job(args: tuple[str, str, bool, int, int]) -> tuple[MaskFacts | None, str]:
    mask, image, texture, dilate, merge = args
    try:
        return facts_from_files(mask, image, dilate_px=dilate, merge_distance_px=merge, texture=texture), ""
    except (OSError, ValueError) as exc:  # missing or unreadable file: reported with its manifest row
        return None, str(exc)


def compute_facts(keys: list[FactsKey], dilate_px: int, merge_distance_px: int, workers: int = 1,
                  fan: FanOut | None = None) -> list[Any]:
    """Region facts for (mask, image, texture) keys, in order; a distributed ``fan`` shards them over its workers,
    else ``workers`` > 1 fans out over local processes. Each result is ``(facts | None, error message)``."""
    jobs = [(m, i, t, dilate_px, merge_distance_px) for m, i, t in keys]
    if fan is not None and fan.distributed:
        return [r for _, part in fan.map("synthesize", _facts_jobs, jobs, name=lambda job: job[0], what="masks")
                for r in part]
    if workers <= 1 or len(jobs) < 64:
        return _facts_jobs(jobs)
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_facts_job, jobs, chunksize=max(1, len(jobs) // (workers * 8))))


def _fraction(facts: MaskFacts | None) -> float:
    """The defect's share of the image; -1 for a view without mask facts (never the best view)."""
    return facts.image_fraction if facts is not None else -1.0


def _facts_jobs(jobs: list[tuple[str, str, bool, int, int]]) -> list[tuple[MaskFacts | None, str]]:
    return [_facts_job(job) for job in jobs]


def _facts_key(row: Any, workspace: Path, texture: bool) -> FactsKey | None:
    if row["label"] != "anomaly" or not row["mask_path"]:
        return None
    return (str(resolve(row, "mask_path", workspace)), str(resolve(row, "image_path", workspace)), texture)


def collect_subjects(
    frame: pd.DataFrame,
    params: Params,
    workspace: str | Path,
    *,
    domain: str | None = None,
    kb: KnowledgeBase | None = None,
    group_views: bool = True,
    workers: int | None = None,
    fan: FanOut | None = None,
) -> list[Item]:
    """Turn manifest rows into :class:`Item` s with region facts and knowledge (sorted by id, deterministic).

    Rows of modality ``3d`` sharing a non-empty ``group`` become one multi-view item (``group_views``).
    ``domain`` forces the knowledge domain; by default it follows each row's ``modality``. ``workers``
    (default ``params.instruct.workers``) processes compute the region facts, or the workers of a distributed
    ``fan`` (:mod:`anomaly_ov.parallel`)."""
    workspace = Path(workspace)
    kb = kb or load_knowledge(params.instruct.knowledge_path and str(workspace / params.instruct.knowledge_path))
    singles: list[Any] = []
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for row in frame.to_dict("records"):
        if group_views and row.get("group") and row.get("modality") == "3d":
            groups[(row["source"], row["group"])].append(row)
        else:
            singles.append(row)
    # Region facts first, for all anomalous rows at once (optionally over several processes).
    keys: dict[FactsKey, Any] = {}
    for row in frame.to_dict("records"):
        dom = domain or domain_of(row["modality"])
        key = _facts_key(row, workspace, kb.category(dom, row["category"]).texture)
        if key is not None:
            keys[key] = row
    results = compute_facts(list(keys), params.instruct.dilate_px, params.instruct.merge_distance_px,
                            workers if workers is not None else params.instruct.workers, fan=fan)
    facts_by_key: dict[FactsKey, MaskFacts] = {}
    for (key, row), (facts, error) in zip(keys.items(), results, strict=True):
        if facts is None:
            message = f"{error} [manifest row: source={row['source']}, image_path={row['image_path']}]"
            raise (FileNotFoundError if "not found" in error else ValueError)(message)
        facts_by_key[key] = facts

    def _facts(row: Any, texture: bool) -> tuple[Path | None, MaskFacts | None]:
        key = _facts_key(row, workspace, texture)
        return (None, None) if key is None else (Path(key[0]), facts_by_key[key])

    items: list[Item] = []
    for row in singles:
        dom = domain or domain_of(row["modality"])
        cat = kb.category(dom, row["category"])
        rel, path = _file_of(row, workspace)
        mask, facts = _facts(row, cat.texture)
        anomalous = row["label"] == "anomaly"
        subject = A.Subject(label=row["label"], category=cat, domain=dom, facts=facts,
                            defect=kb.defect(dom, row["defect_type"], row["category"]) if anomalous else None)
        items.append(Item(id=record_id_for(row["source"], row["image_path"]), images=[rel], files=[path], masks=[mask],
                          source=row["source"], category=row["category"], label=row["label"],
                          defect_type=row["defect_type"], modality=row["modality"], subject=subject,
                          facts_per_view=[facts]))
    for (source, group), rows in groups.items():
        rows = sorted(rows, key=lambda r: _natural(str(r.get("view") or r["image_path"])))
        dom = domain or domain_of(rows[0]["modality"])
        cat = kb.category(dom, rows[0]["category"])
        anomalous_rows = [r for r in rows if r["label"] == "anomaly"]
        label = "anomaly" if anomalous_rows else "normal"
        defect_type = anomalous_rows[0]["defect_type"] if anomalous_rows else NORMAL_DEFECT
        files, masks, facts_list, rels = [], [], [], []
        for r in rows:
            rel, path = _file_of(r, workspace)
            mask, facts = _facts(r, cat.texture)
            rels.append(rel)
            files.append(path)
            masks.append(mask)
            facts_list.append(facts)
        best = max(range(len(rows)), key=lambda i: _fraction(facts_list[i]))
        subject = A.Subject(label=label, category=cat, domain=dom, facts=facts_list[best], views=len(rows),
                            view_index=best if facts_list[best] is not None else None,
                            defect=kb.defect(dom, defect_type, rows[0]["category"]) if label == "anomaly" else None)
        local = group[len(source) + 1:] if group.startswith(f"{source}/") else group
        if "/" not in local:
            local = f"{rows[0]['category']}/{local}"
        items.append(Item(id=record_id_for(source, local), images=rels, files=files,
                          masks=masks, source=source, category=rows[0]["category"], label=label,
                          defect_type=defect_type, modality=rows[0]["modality"], subject=subject,
                          facts_per_view=facts_list))
    items.sort(key=lambda it: it.id)
    return items


def _natural(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


# ------------------------------------------------------------------------------------------------ conversations
def _detection_plan(items: list[Item], seed: int, pass_index: int) -> set[str]:
    """Ids that get a detection turn: the smaller label group entirely, an equal-size sample of the larger."""
    normal = [it.id for it in items if it.label != "anomaly"]
    anomalous = [it.id for it in items if it.label == "anomaly"]
    small, large = (normal, anomalous) if len(normal) <= len(anomalous) else (anomalous, normal)
    rng = random.Random(f"{seed}:detection:{pass_index}")
    picked = rng.sample(large, len(small)) if small else []
    return set(small) | set(picked)


def _turns(rng: random.Random, item: Item, detect: bool, multi: bool) -> list[tuple[str, str]]:
    """Plan of (kind, sub-kind) turns for one record."""
    subject = item.subject
    low_subs = ["describe", "what", "where", "size", "count", "explain"]
    if subject.anomalous and not subject.localised:
        low_subs = ["describe", "what", "explain"]
    elif not subject.anomalous:
        low_subs = ["describe"] * 4 + low_subs  # normal images mostly get a description of the normal object
    complex_subs = ["cause", "impact", "prevention"]
    plan: list[tuple[str, str]] = []
    if detect:
        plan.append((A.DETECTION, ""))
    if multi:
        n_low = 1 + (rng.random() < 0.5) if subject.anomalous else 1
        for sub in rng.sample(sorted(set(low_subs)), min(n_low, len(set(low_subs)))) if n_low > 1 else [
            rng.choice(low_subs)
        ]:
            plan.append((A.LOW_LEVEL, sub))
        if subject.anomalous or rng.random() < 0.5:
            plan.append((A.COMPLEX, rng.choice(complex_subs)))
        if len(plan) < 2:
            plan.append((A.LOW_LEVEL, "describe" if plan[0][1] != "describe" else "what"))
    else:
        plan.append((A.LOW_LEVEL, rng.choice(["describe"] * 2 + low_subs)) if rng.random() < 0.65
                    else (A.COMPLEX, rng.choice(complex_subs)))
    return plan


def _qa(rng: random.Random, item: Item, kind: str, sub: str) -> tuple[str, str]:
    subject = item.subject
    if kind == A.DETECTION:
        return A.detection_question(rng, subject), A.detection_answer(subject)
    if kind == A.LOW_LEVEL:
        return A.low_level_question(rng, subject, sub), A.low_level_answer(rng, subject, sub)
    return A.complex_question(rng, subject, sub), A.complex_answer(rng, subject, sub)


def image_prefix(n_images: int) -> str:
    return "\n".join([IMAGE_TOKEN] * n_images) + "\n"


def conversation_for(
    item: Item,
    seed: int,
    *,
    detect: bool,
    multi: bool,
    pass_index: int = 0,
    rewriter: Rewriter | None = None,
    red_box: str | None = None,
    plan: list[tuple[str, str]] | None = None,
    suffix: str = "",
) -> dict[str, Any]:
    """One LLaVA record for ``item`` (see the module docstring for the format); ``plan`` forces the turns."""
    record_id = (item.id if pass_index == 0 else f"{item.id}#{pass_index}") + suffix
    rng = random.Random(f"{seed}:{record_id}")
    plan = _turns(rng, item, detect, multi) if plan is None else plan
    conversations: list[dict[str, str]] = []
    kinds: list[str] = []
    for i, (kind, sub) in enumerate(plan):
        question, answer = _qa(rng, item, kind, sub)
        if i == 0:
            if len(item.images) > 1 and rng.random() < 0.5:
                noun = item.subject.category.noun if A.names_object(rng) else A.GENERIC_OBJECT
                question = f"These are {len(item.images)} views of the same {noun}. {question}"
            question = image_prefix(len(item.images)) + question
        if rewriter is not None and kind == A.LOW_LEVEL and sub == "describe" and item.subject.anomalous:
            view = item.files[item.subject.view_index or 0]
            answer = rewriter.rewrite(answer, A.hint(item.subject), view, item.subject.facts)
        conversations.append({"from": "human", "value": question})
        conversations.append({"from": "gpt", "value": answer})
        kinds.append(kind)
    record: dict[str, Any] = {
        "id": record_id,
        "image": item.images[0] if len(item.images) == 1 else list(item.images),
        "conversations": conversations,
        "category": item.category,
        "label": item.label,
        "defect_type": item.defect_type,
        "source": item.source,
        "modality": item.modality,
        "kinds": kinds,
    }
    if red_box:
        record["red_box"] = red_box
    return record


def render_red_boxes(items: Iterable[Item], out_dir: Path, workspace: Path) -> dict[str, str]:
    """Draw red boxes for every localised anomalous item (first marked view); returns id -> relative png path."""
    from anomaly_ov.instruct.visual import save_red_boxes

    written: dict[str, str] = {}
    for item in items:
        subject = item.subject
        if not (subject.anomalous and subject.localised):
            continue
        view = subject.view_index or 0
        target = out_dir / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', item.id)}.png"
        save_red_boxes(item.files[view], subject.marked_facts, target)
        written[item.id] = workspace_relative(target, workspace)
    return written


def synthesize_records(
    frame: pd.DataFrame,
    params: Params,
    workspace: str | Path,
    *,
    domain: str | None = None,
    rewriter: Rewriter | None = None,
    red_box_dir: str | Path | None = None,
    items: list[Item] | None = None,
    fan: FanOut | None = None,
) -> list[dict[str, Any]]:
    """LLaVA records for every row of ``frame`` (pass the role == "train" rows for the training set).

    ``params.instruct.conversations_per_image`` passes are made; each pass balances the detection turns.
    ``red_box_dir`` (absolute or workspace-relative) renders the red-box visual prompts there. A distributed
    ``fan`` (:mod:`anomaly_ov.parallel`) shards the region facts and, without a rewriter, the conversations: which
    records get a detection or a multi-turn conversation is drawn here for the whole set first, and each record
    draws from its own id's seed, so the records are the same for any number of workers."""
    workspace = Path(workspace)
    cfg = params.instruct
    items = items if items is not None else collect_subjects(frame, params, workspace, domain=domain, fan=fan)
    red: dict[str, str] = {}
    if red_box_dir is not None:
        out = Path(red_box_dir)
        red = render_red_boxes(items, out if out.is_absolute() else workspace / out, workspace)
    plan: list[RecordPlan] = []
    for pass_index in range(cfg.conversations_per_image):
        detect_ids = _detection_plan(items, cfg.seed, pass_index)
        multi_rng = random.Random(f"{cfg.seed}:multi:{pass_index}")
        for item in items:
            multi = multi_rng.random() < cfg.multi_turn_fraction
            plan.append(RecordPlan(item, pass_index, item.id in detect_ids, multi, red.get(item.id)))
    job = functools.partial(records_for, seed=cfg.seed)
    if fan is not None and fan.distributed and rewriter is None:
        parts = [part for _, part in fan.map("synthesize", job, plan, name=lambda p: p.item.id, what="records")]
    else:
        from anomaly_ov.console import track

        parts = [records_for(track(plan, "synthesize: conversations", total=len(plan), unit="records"), cfg.seed,
                             rewriter)]
    return [record for part in parts for records in part for record in records]


@dataclass
class RecordPlan:
    """What one item's pass turns into: its detection and multi-turn draws (made for the whole set at once)."""

    item: Item
    pass_index: int
    detect: bool
    multi: bool
    red_box: str | None = None


def records_for(plan: Iterable[RecordPlan], seed: int, rewriter: Rewriter | None = None) -> list[list[dict[str, Any]]]:
    """The records of each planned item pass: the one-word detection record (a detection turn on a single-turn
    pass) beside the content record."""
    out = []
    for p in plan:
        records = []
        if p.detect and not p.multi:
            records.append(conversation_for(p.item, seed, detect=True, multi=False, pass_index=p.pass_index,
                                            plan=[(A.DETECTION, "")], suffix="/detect"))
        records.append(conversation_for(p.item, seed, detect=p.detect and p.multi, multi=p.multi,
                                        pass_index=p.pass_index, rewriter=rewriter, red_box=p.red_box))
        out.append(records)
    return out


# ----------------------------------------------------------------------------------------------------- summary
def summarize_records(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts by question kind, category, label and turn count; Yes/No balance; distinct-answer ratios."""
    kinds: Counter[str] = Counter()
    answers: dict[str, list[str]] = defaultdict(list)
    yes = no = 0
    for record in records:
        gpt = [t["value"] for t in record["conversations"] if t["from"] == "gpt"]
        for kind, answer in zip(record.get("kinds", []), gpt, strict=False):
            kinds[kind] += 1
            answers[kind].append(answer)
            if kind == A.DETECTION:
                yes += answer.strip().lower().startswith("yes")
                no += answer.strip().lower().startswith("no")
    distinct = {k: round(len(set(v)) / len(v), 4) for k, v in answers.items() if v and k != A.DETECTION}
    all_free = [a for k, v in answers.items() if k != A.DETECTION for a in v]
    return {
        "records": len(records),
        "turns": sum(kinds.values()),
        "by_kind": dict(sorted(kinds.items())),
        "by_category": dict(sorted(Counter(r["category"] for r in records).items())),
        "by_label": dict(sorted(Counter(r["label"] for r in records).items())),
        "by_turns": {str(k): v for k, v in sorted(Counter(len(r["kinds"]) for r in records).items())},
        "multi_image_records": sum(isinstance(r["image"], list) for r in records),
        "detection_yes": yes,
        "detection_no": no,
        "yes_share": round(yes / (yes + no), 4) if yes + no else None,
        "distinct_answer_ratio": distinct,
        "distinct_answer_ratio_all": round(len(set(all_free)) / len(all_free), 4) if all_free else None,
        "distinct_questions": len({r["conversations"][0]["value"] for r in records}),
        "answer_chars_mean": {k: round(sum(map(len, v)) / len(v), 1) for k, v in sorted(answers.items()) if v},
        "answer_chars_max": {k: max(map(len, v)) for k, v in sorted(answers.items()) if v},
        "record_chars_max": max((sum(len(t["value"]) for t in r["conversations"]) for r in records), default=0),
    }
