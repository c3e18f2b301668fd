"""Instruction-set validation: the contract an instruction file must meet before stage 2 trains on it.

Same report format and severities as the data validation (:mod:`anomaly_ov.validate.report`), and the same Great
Expectations helper (:func:`anomaly_ov.validate.gx.run_suite`): each record becomes one row of a derived table
(flags computed here), GX checks the per-record expectations over it, and pandas computes the set-level ones.

Checks (critical unless noted):

- ``records_present``: the set is not empty.
- ``id_present`` / ``unique_ids``: every record has an id and ids are unique.
- ``images_exist``: every image path of every record exists (relative to the image root: the workspace for the
  synthesized set, the source's ``image_root`` for a released set; absolute paths as they are). A text-only
  record (no ``image`` and no ``<image>``) is allowed, as LLaVA-format data has them.
- ``images_inside_root`` (only with ``allow_external=False``, as for released sets): no image path is absolute or
  climbs out of the image root with ``..`` or a symlink.
- ``roles_alternate``: turns alternate human, gpt, human, ... starting with human and ending with gpt.
- ``image_placeholders``: exactly one ``<image>`` per image of the record, all in the first human turn.
- ``answers_not_empty`` / ``answer_length``: every gpt answer is non-empty and at most
  ``instruct.max_answer_chars`` characters.
- ``detection_one_word``: answers of "detection" turns are exactly "Yes" or "No".
- ``kinds_match_turns``: when a record lists ``kinds``, there is one per human/gpt pair, each a known kind.
- ``yes_no_balance``: the share of "Yes" among detection answers is within ``instruct.yes_no_tolerance`` of 0.5.
- ``distinct_answers`` (warning): per question kind, distinct answers / answers >=
  ``instruct.min_distinct_answer_ratio`` (templated data that repeats itself teaches the model one sentence).

Every failing record is listed in the report (by default), named by its ``id`` ("record <id>") and row.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_ov.instruct.answers import DETECTION, KINDS
from anomaly_ov.model.tokenizer import IMAGE_TOKEN
from anomaly_ov.validate.report import Check, ValidationReport

if TYPE_CHECKING:
    import pandas as pd

    from anomaly_ov.config import InstructParams

SUITE = "instruct_records"


def _images(record: Any) -> list[str]:
    image = record.get("image") if isinstance(record, dict) else None
    if isinstance(image, str):
        return [image] if image else []
    if isinstance(image, list):
        return [str(i) for i in image]
    return []


def _turns(record: Any) -> list[Any]:
    turns = record.get("conversations") if isinstance(record, dict) else None
    return turns if isinstance(turns, list) else []


def _inside(root: Path, path: str) -> bool:
    from anomaly_ov.paths import OutsideRootError, inside_root

    try:
        inside_root(root, path)
    except OutsideRootError:
        return False
    return True


def record_flags(record: Any, workspace: Path, max_chars: int, allow_external: bool = True) -> dict[str, Any]:
    """One row of the derived table: the record's id, first file and 0/1 flags for each per-record check.

    ``workspace`` is the image root the record's relative image paths are resolved against."""
    images = _images(record)
    turns = _turns(record)
    values = [t.get("value") if isinstance(t, dict) else None for t in turns]
    roles = [t.get("from") if isinstance(t, dict) else None for t in turns]
    expected = ["human", "gpt"] * (len(turns) // 2)
    roles_ok = bool(turns) and len(turns) % 2 == 0 and roles == expected
    texts = [v if isinstance(v, str) else "" for v in values]
    answers = [t for t, r in zip(texts, roles, strict=True) if r == "gpt"]
    n_tokens = sum(t.count(IMAGE_TOKEN) for t in texts)
    first_tokens = texts[0].count(IMAGE_TOKEN) if texts else 0
    text_only = isinstance(record, dict) and "image" not in record
    placeholders_ok = n_tokens == len(images) == first_tokens and (bool(images) or text_only)
    exist = all((Path(p) if Path(p).is_absolute() else workspace / p).exists() for p in images)
    inside = allow_external or all(_inside(workspace, p) for p in images)
    kinds = record.get("kinds") if isinstance(record, dict) else None
    kinds_ok = True
    detection_ok = True
    if kinds is not None:
        kinds_ok = isinstance(kinds, list) and len(kinds) == len(turns) // 2 and all(k in KINDS for k in kinds)
        if kinds_ok and roles_ok:
            detection_ok = all(answers[i].strip() in ("Yes", "No") for i, k in enumerate(kinds) if k == DETECTION)
    raw_id = record.get("id") if isinstance(record, dict) else None
    return {
        "id": raw_id if isinstance(raw_id, str | int) and not isinstance(raw_id, bool) and str(raw_id) else None,
        "_record": str(raw_id),
        "_id": str(raw_id),
        "_file": images[0] if images else "",
        "n_images": len(images),
        "images_exist": int(exist),
        "images_inside": int(inside),
        "roles_ok": int(roles_ok),
        "placeholders_ok": int(placeholders_ok),
        "min_answer_chars": min((len(a.strip()) for a in answers), default=0),
        "max_answer_chars": max((len(a) for a in answers), default=0),
        "detection_ok": int(detection_ok),
        "kinds_ok": int(kinds_ok),
    }


def record_table(records: Sequence[Any], workspace: str | Path, max_chars: int = 1200,
                 allow_external: bool = True) -> pd.DataFrame:
    import pandas as pd

    rows = [record_flags(r, Path(workspace), max_chars, allow_external) for r in records]
    return pd.DataFrame(rows, columns=list(record_flags({}, Path(workspace), max_chars)))


def record_expectations(settings: InstructParams) -> list[Any]:
    """The GX expectations over :func:`record_table`."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.metadata_types import FailureSeverity

    critical = FailureSeverity.CRITICAL

    def flag(name: str, column: str, what: str, hint: str) -> Any:
        return gxe.ExpectColumnValuesToBeInSet(column=column, value_set=[1], severity=critical, description=what,
                                               meta={"check": name, "what": what, "hint": hint})

    return [
        gxe.ExpectColumnValuesToNotBeNull(column="id", severity=critical, description="every record has an id",
                                          meta={"check": "id_present", "what": "every record has a non-empty id"}),
        gxe.ExpectColumnValuesToBeUnique(column="id", severity=critical, description="record ids are unique",
                                         meta={"check": "unique_ids", "what": "record ids are unique",
                                               "hint": "give repeated conversations a suffix (id#1)"}),
        flag("images_exist", "images_exist", "every image of every record exists",
             "image paths are relative to the image root (the workspace, or the source's image_root); "
             "re-run prepare/synthesize or fix the source's image_root"),
        flag("images_inside_root", "images_inside", "every image path stays inside the image root",
             "use paths relative to the image root, or set allow_external_paths: true on the source"),
        flag("roles_alternate", "roles_ok", "turns alternate human/gpt, starting with human, ending with gpt",
             "each question needs exactly one answer"),
        flag("image_placeholders", "placeholders_ok",
             "exactly one <image> per image, all in the first human turn", "one '<image>\\n' line per view"),
        gxe.ExpectColumnValuesToBeBetween(
            column="min_answer_chars", min_value=1, severity=critical, description="no gpt answer is empty",
            meta={"check": "answers_not_empty", "what": "no gpt answer is empty"}),
        gxe.ExpectColumnValuesToBeBetween(
            column="max_answer_chars", max_value=settings.max_answer_chars, severity=critical,
            description=f"every answer has at most {settings.max_answer_chars} characters (instruct.max_answer_chars)",
            meta={"check": "answer_length", "what": f"answers are at most {settings.max_answer_chars} characters",
                  "hint": "shorten the templates or raise instruct.max_answer_chars"}),
        flag("detection_one_word", "detection_ok", "detection answers are exactly 'Yes' or 'No'",
             "the detection target must be one word"),
        flag("kinds_match_turns", "kinds_ok", "`kinds` has one known kind (detection|low_level|complex) per turn",
             "fix the record's metadata"),
    ]


def set_checks(records: Sequence[Any], settings: InstructParams, max_examples: int = 20) -> list[Check]:
    """Set-level checks (pandas): non-empty set, Yes/No balance, distinct answers per kind."""
    checks = [Check.from_failures("records_present", "critical", [] if records else ["the instruction set is empty"],
                                  ok_message=f"{len(records)} records", fail_message="the instruction set is empty")]
    yes = no = 0
    answers: dict[str, list[str]] = defaultdict(list)
    for record in records:
        turns = _turns(record)
        kinds = record.get("kinds") if isinstance(record, dict) else None
        if not isinstance(kinds, list):
            continue
        gpt = [t.get("value", "") for t in turns if isinstance(t, dict) and t.get("from") == "gpt"]
        for kind, answer in zip(kinds, gpt, strict=False):
            answer = answer if isinstance(answer, str) else ""
            if kind == DETECTION:
                yes += answer.strip() == "Yes"
                no += answer.strip() == "No"
            else:
                answers[str(kind)].append(answer)
    tol = settings.yes_no_tolerance
    if yes + no == 0:
        checks.append(Check("yes_no_balance", "critical", True, "no detection turns to balance", [], 0))
    else:
        share = yes / (yes + no)
        ok = abs(share - 0.5) <= tol + 1e-12
        message = (f"Yes share {share:.3f} ({yes} Yes / {no} No) is within 0.5 +/- {tol} (instruct.yes_no_tolerance)"
                   if ok else f"Yes share {share:.3f} ({yes} Yes / {no} No) is outside 0.5 +/- {tol}; balance "
                   "normal and anomalous detection questions or raise instruct.yes_no_tolerance")
        checks.append(Check("yes_no_balance", "critical", ok, message,
                            [] if ok else [{"yes": yes, "no": no, "share": round(share, 4)}], 0 if ok else 1))
    low = []
    ratios = {}
    for kind, values in sorted(answers.items()):
        ratio = len(set(values)) / len(values)
        ratios[kind] = round(ratio, 4)
        if ratio < settings.min_distinct_answer_ratio:
            low.append({"kind": kind, "ratio": round(ratio, 4), "answers": len(values)})
    checks.append(Check.from_failures(
        "distinct_answers", "warning", low, max_examples=max_examples,
        ok_message=f"distinct-answer ratios {ratios} >= {settings.min_distinct_answer_ratio}",
        fail_message=f"{{n}} question kind(s) repeat their answers (ratio < {settings.min_distinct_answer_ratio}, "
                     "instruct.min_distinct_answer_ratio): {examples}"))
    return checks


def validate_records(
    records: Sequence[Any],
    settings: InstructParams,
    workspace: str | Path,
    *,
    subject: str = "",
    max_examples: int | None = None,
    use_gx: bool = True,
    allow_external: bool = True,
) -> ValidationReport:
    """Validate an instruction set; ``use_gx=False`` evaluates the per-record flags with pandas only (same checks,
    no 3 s GX import: for quick interactive use).

    ``workspace`` is the image root; ``allow_external=False`` adds ``images_inside_root``. ``max_examples`` caps
    the failing records listed per check (None: every one)."""
    started = time.perf_counter()
    max_examples = max(len(records), 1) if max_examples is None else max_examples
    table = record_table(records, workspace, settings.max_answer_chars, allow_external)
    expectations = [e for e in record_expectations(settings)
                    if not (allow_external and e.meta.get("check") == "images_inside_root")]
    if use_gx and len(table):
        from anomaly_ov.validate.gx import run_suite

        record_checks = run_suite(table, expectations, suite_name=SUITE,
                                  key_columns=["_record", "_id", "_file"], max_examples=max_examples)
    else:
        record_checks = _pandas_record_checks(table, settings, max_examples, allow_external)
    checks = set_checks(records, settings, max_examples) + record_checks
    return ValidationReport.build(checks, title="Instruction-set validation", subject=subject, rows=len(records),
                                  started=started)


def _pandas_record_checks(table: pd.DataFrame, settings: InstructParams, max_examples: int,
                          allow_external: bool = True) -> list[Check]:
    """The same per-record checks as :func:`record_expectations`, evaluated with pandas."""

    def failing(mask: Any) -> list[dict[str, Any]]:
        return [{"record": r, "file": f, "row": int(i), "id": r}
                for i, (r, f) in enumerate(zip(table["_id"], table["_file"], strict=True)) if mask[i]]

    ids = table["id"]
    tests = [
        ("id_present", "every record has a non-empty id", ids.isna().to_numpy()),
        ("unique_ids", "record ids are unique", (ids.duplicated(keep=False) & ids.notna()).to_numpy()),
        ("images_exist", "every image of every record exists", (table["images_exist"] != 1).to_numpy()),
        *([] if allow_external else [("images_inside_root", "every image path stays inside the image root",
                                      (table["images_inside"] != 1).to_numpy())]),
        ("roles_alternate", "turns alternate human/gpt", (table["roles_ok"] != 1).to_numpy()),
        ("image_placeholders", "exactly one <image> per image", (table["placeholders_ok"] != 1).to_numpy()),
        ("answers_not_empty", "no gpt answer is empty", (table["min_answer_chars"] < 1).to_numpy()),
        ("answer_length", f"answers are at most {settings.max_answer_chars} characters",
         (table["max_answer_chars"] > settings.max_answer_chars).to_numpy()),
        ("detection_one_word", "detection answers are exactly 'Yes' or 'No'", (table["detection_ok"] != 1).to_numpy()),
        ("kinds_match_turns", "`kinds` has one known kind per turn", (table["kinds_ok"] != 1).to_numpy()),
    ]
    return [Check.from_failures(name, "critical", failing(mask), ok_message=f"{what}: ok",
                                fail_message=f"{what}: {{n}} record(s) fail; e.g. {{examples}}",
                                max_examples=max_examples) for name, what, mask in tests]
