"""Table checks over the manifest (no file is opened): the data contract every stage relies on.

Expressed as Great Expectations expectations where GX can say it (nulls, empties, value sets, size bounds,
label/mask consistency through row conditions, unique paths) and computed with pandas where it cannot (columns
present, per-category counts, a normal in every category, an anomaly in every evaluation category, declared
sources and categories present). Both end up as :class:`~anomaly_ov.validate.report.Check`.

Severities (the rationale is in each check's message):

- critical: missing columns, an empty manifest, values of the wrong type, null/empty required values, values
  outside the allowed sets, image sides outside ``validate.min_image_side..max_image_side``, an industrial
  anomaly without a mask, a normal image with a mask, duplicate paths, a category with too few/many images or
  without a normal image, an evaluation category without an anomaly, a declared source or category with no rows.
- warning: an anomaly without a mask in a medical/3D source (image-level sets such as BMAD chest X-ray have
  none), ``defect_type`` that disagrees with ``label``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from anomaly_ov.data.manifest import ALLOWED_VALUES, COLUMNS, NORMAL_DEFECT, REQUIRED_NON_EMPTY
from anomaly_ov.validate.report import Check

if TYPE_CHECKING:
    import pandas as pd

    from anomaly_ov.config import SourceParams, ValidateParams

FILE_KEY = "_file"
SIZE_COLUMNS = ("width", "height")


def with_keys(frame: pd.DataFrame) -> pd.DataFrame:
    """Copy of ``frame`` with ``_row`` (position) and ``_file`` (``root/image_path``) naming each row."""
    import numpy as np

    keyed = frame.copy(deep=False)
    keyed["_row"] = np.arange(len(frame))
    if "root" in frame.columns and "image_path" in frame.columns:
        keyed[FILE_KEY] = frame["root"].astype(str).str.rstrip("/") + "/" + frame["image_path"].astype(str)
    return keyed


def manifest_expectations(columns: Sequence[str], settings: ValidateParams) -> list[Any]:
    """The GX expectations of the manifest contract, for the columns that exist."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    present = set(columns)
    items: list[Any] = []

    def add(expectation_cls: Any, name: str, what: str, severity: str = "critical", hint: str = "", **kw: Any):
        needed = [kw["column"]] if "column" in kw else list(kw.get("column_list", []))
        needed += list(kw.pop("_needs", []))
        if all(c in present for c in needed):
            meta = {"check": name, "what": what} | ({"hint": hint} if hint else {})
            items.append(expectation_cls(meta=meta, description=what, severity=severity, **kw))

    for column in COLUMNS:
        add(gxe.ExpectColumnValuesToNotBeNull, f"not_null:{column}", f"column {column!r} has no null values",
            hint="fill it in the reader (\"\" for an absent mask/view/group)", column=column)
    for column in REQUIRED_NON_EMPTY:
        add(gxe.ExpectColumnValueLengthsToBeBetween, f"not_empty:{column}", f"column {column!r} is never empty",
            column=column, min_value=1)
    for column, allowed in ALLOWED_VALUES.items():
        add(gxe.ExpectColumnValuesToBeInSet, f"values_in_set:{column}",
            f"column {column!r} holds only {list(allowed)}", column=column, value_set=list(allowed))
    lo, hi = settings.min_image_side, settings.max_image_side
    for column in SIZE_COLUMNS:
        # 0 means "not measured by the reader"; the file checks measure the decoded image instead.
        add(gxe.ExpectColumnValuesToBeBetween, f"{column}_in_bounds",
            f"image {column} is within [{lo}, {hi}] px (validate.min_image_side/max_image_side; 0 = unknown)",
            column=column, min_value=lo, max_value=hi, row_condition=Column(column) != 0)
    is_anomaly, is_normal = Column("label") == "anomaly", Column("label") == "normal"
    add(gxe.ExpectColumnValueLengthsToBeBetween, "anomaly_has_mask", "every industrial anomaly image has a mask_path",
        hint="add the ground-truth mask or drop the image", column="mask_path", min_value=1,
        row_condition=is_anomaly & (Column("modality") == "industrial"), _needs=["label", "modality"])
    add(gxe.ExpectColumnValueLengthsToBeBetween, "anomaly_has_mask_image_level",
        "medical/3D anomaly images have a mask_path (image-level sets have none: localisation is skipped for them)",
        severity="warning", column="mask_path", min_value=1,
        row_condition=is_anomaly & (Column("modality") != "industrial"), _needs=["label", "modality"])
    add(gxe.ExpectColumnValuesToBeInSet, "normal_has_no_mask", "no normal image has a mask_path",
        hint="a mask on a normal image means the label or the mask is wrong; readers leave mask_path empty",
        column="mask_path", value_set=[""], row_condition=is_normal, _needs=["label"])
    add(gxe.ExpectColumnValuesToBeInSet, "normal_defect_is_good",
        f"normal images have defect_type {NORMAL_DEFECT!r}", severity="warning",
        column="defect_type", value_set=[NORMAL_DEFECT], row_condition=is_normal, _needs=["label"])
    add(gxe.ExpectColumnValuesToNotBeInSet, "anomaly_defect_not_good",
        f"anomaly images have a defect_type other than {NORMAL_DEFECT!r}", severity="warning",
        column="defect_type", value_set=[NORMAL_DEFECT], row_condition=is_anomaly, _needs=["label"])
    add(gxe.ExpectCompoundColumnsToBeUnique, "unique_image_path", "every image (root + image_path) is listed once",
        hint="the reader listed a file twice", column_list=["root", "image_path"])
    return items


def table_checks(
    frame: pd.DataFrame,
    settings: ValidateParams,
    sources: Sequence[SourceParams] = (),
) -> list[Check]:
    """Every table check of the manifest ``frame`` (GX suite + pandas group checks)."""
    from anomaly_ov.validate.gx import run_suite

    cap = settings.max_failing_examples
    missing = [c for c in COLUMNS if c not in frame.columns]
    checks = [
        Check.from_failures(
            "columns_present", "critical", missing, ok_message="all manifest columns are present",
            fail_message="manifest is missing column(s) {examples}; expected " + str(list(COLUMNS)),
            max_examples=cap,
        ),
        type_check(frame, cap),
        Check("manifest_not_empty", "critical", len(frame) > 0,
              f"the manifest lists {len(frame)} image(s)" if len(frame) else
              "the manifest lists no image; check data.sources (paths, formats, categories) and re-run prepare"),
    ]
    keyed = with_keys(frame)
    checks += run_suite(
        keyed, manifest_expectations(list(frame.columns), settings), suite_name="manifest",
        key_columns=["_row", FILE_KEY], max_examples=cap,
    )
    if {"source", "category", "label", "role"} <= set(frame.columns):
        checks += category_checks(frame, settings)
    if sources and {"source", "category"} <= set(frame.columns):
        checks += declared_checks(frame, sources, cap)
    return checks


def type_check(frame: pd.DataFrame, cap: int) -> Check:
    """Text columns hold strings and ``width``/``height`` whole numbers (nulls are the not_null checks' job)."""
    import pandas as pd

    failing: list[dict[str, Any]] = []
    count = 0
    for column, kind in COLUMNS.items():
        if column not in frame.columns:
            continue
        values = frame[column]
        present = values.notna()
        if kind == "int":
            numbers = pd.to_numeric(values, errors="coerce")
            bad = present & (numbers.isna() | (numbers.fillna(0) % 1 != 0))
        elif isinstance(values.dtype, pd.StringDtype):
            continue  # pandas' string dtype (what Parquet text columns read as) holds only strings and nulls
        else:
            bad = present & ~values.map(lambda v: isinstance(v, str))
        positions = bad.to_numpy().nonzero()[0]
        count += len(positions)
        failing += [_located(frame, int(p), column) for p in positions[: max(cap - len(failing), 0)]]
    return Check.from_failures(
        "column_types", "critical", failing, max_examples=cap, n_failing=count,
        ok_message="text columns hold strings; width and height hold whole numbers",
        fail_message="{n} value(s) have the wrong type (text columns need strings, width/height whole numbers): "
        "{examples}",
    )


def _located(frame: pd.DataFrame, position: int, column: str) -> dict[str, Any]:
    record = frame.iloc[position]
    where: dict[str, Any] = {}
    if "root" in frame.columns and "image_path" in frame.columns:
        where["file"] = f"{str(record['root']).rstrip('/')}/{record['image_path']}"
    value = record[column]
    return where | {"row": position, "column": column, "value": value if isinstance(value, str | int) else repr(value)}


def category_checks(frame: pd.DataFrame, settings: ValidateParams) -> list[Check]:
    """Per (source, category): image count within bounds, a normal image, and an anomaly for role=eval."""
    cap = settings.max_failing_examples
    lo, hi = settings.min_images_per_category, settings.max_images_per_category
    keys = {c: frame[c].astype(object).where(frame[c].notna(), "<null>").astype(str) for c in ("source", "category")}
    groups = (
        frame.assign(**keys, _normal=frame["label"] == "normal", _anomaly=frame["label"] == "anomaly",
                     _eval=frame["role"] == "eval")
        .groupby(["source", "category"], dropna=False, sort=True)
        .agg(count=("label", "size"), normal=("_normal", "sum"), anomaly=("_anomaly", "sum"), eval=("_eval", "any"))
        .reset_index()
    )

    def rows(mask: Any) -> list[dict[str, Any]]:
        picked = groups[mask]
        return [
            {"source": str(r.source), "category": str(r.category), "images": int(r.count),
             "normal": int(r.normal), "anomaly": int(r.anomaly)}
            for r in picked.itertuples(index=False)
        ]

    def label(item: dict[str, Any]) -> str:
        return f"{item['source']}/{item['category']} ({item['images']} images)"

    size_bad = rows((groups["count"] < lo) | (groups["count"] > hi))
    no_normal = rows(groups["normal"] == 0)
    no_anomaly = rows(groups["eval"] & (groups["anomaly"] == 0))
    return [
        Check.from_failures(
            "category_size", "critical", size_bad, max_examples=cap,
            ok_message=f"every category has {lo}..{hi} images ({len(groups)} categories)",
            fail_message=f"{{n}} category(ies) have a number of images outside [{lo}, {hi}] "
            f"(validate.min_images_per_category/max_images_per_category): "
            + ", ".join(label(i) for i in size_bad[:3]),
        ),
        Check.from_failures(
            "category_has_normal", "critical", no_normal, max_examples=cap,
            ok_message="every category has at least one normal image",
            fail_message="{n} category(ies) have no normal image (the expert's reference and the AUROC need one): "
            + ", ".join(label(i) for i in no_normal[:3]),
        ),
        Check.from_failures(
            "eval_category_has_anomaly", "critical", no_anomaly, max_examples=cap,
            ok_message="every evaluation category has at least one anomaly image",
            fail_message="{n} evaluation category(ies) have no anomaly image (detection metrics are undefined): "
            + ", ".join(label(i) for i in no_anomaly[:3]),
        ),
    ]


def declared_checks(frame: pd.DataFrame, sources: Sequence[SourceParams], cap: int) -> list[Check]:
    """Every source named in params.yaml has rows, and so does every category it lists."""
    present = frame.groupby("source")["category"].agg(lambda s: set(s.astype(str))).to_dict()
    missing_sources = [{"source": s.name, "path": s.path} for s in sources if s.name not in present]
    missing_categories = [
        {"source": s.name, "category": c, "path": s.path}
        for s in sources
        if s.name in present
        for c in (s.categories or [])
        if c not in present[s.name]
    ]
    return [
        Check.from_failures(
            "declared_sources_present", "critical", missing_sources, max_examples=cap,
            ok_message=f"all {len(sources)} declared source(s) have images",
            fail_message="{n} source(s) declared in data.sources have no rows in the manifest: "
            + ", ".join(f"{m['source']} ({m['path']})" for m in missing_sources[:3])
            + "; check the path and format, then re-run prepare",
        ),
        Check.from_failures(
            "declared_categories_present", "critical", missing_categories, max_examples=cap,
            ok_message="every declared category has images",
            fail_message="{n} declared category(ies) have no images: "
            + ", ".join(f"{m['source']}/{m['category']}" for m in missing_categories[:3])
            + "; check the spelling in data.sources[].categories and the folder names",
        ),
    ]
