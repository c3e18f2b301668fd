"""run_suite names failing rows itself (GX lists their index labels): the examples must be exactly the ones GX's
own ``unexpected_index_column_names`` would give, for every kind of expectation the manifest suite uses."""

from __future__ import annotations

import numpy as np
import pandas as pd

from anomaly_ov.config import params_from_dict
from anomaly_ov.validate.gx import _batch_definition, _clean_row, check_name, run_suite
from anomaly_ov.validate.table import FILE_KEY, manifest_expectations, with_keys


def _hostile_manifest(rows: int = 60) -> pd.DataFrame:
    """Every row fails something: nulls, empty values, unknown labels, sizes out of bounds, masks on normals, no
    mask on anomalies, duplicate paths; on a shuffled, non-default index (labels are not positions)."""
    i = np.arange(rows)
    frame = pd.DataFrame({
        "image_path": [f"img_{k % 7}.png" for k in i],  # duplicates
        "root": "data/raw/x",
        "mask_path": np.where(i % 3 == 0, "", "m.png"),
        "source": np.where(i % 11 == 0, None, "src"),
        "category": np.where(i % 5 == 0, "", "cat"),
        "split": "test",
        "role": np.where(i % 2 == 0, "eval", "bogus"),
        "label": np.where(i % 4 == 0, "weird", np.where(i % 3 == 0, "anomaly", "normal")),
        "defect_type": np.where(i % 2 == 0, "good", "crack"),
        "modality": np.where(i % 6 == 0, "medical", "industrial"),
        "view": "",
        "group": "",
        "width": np.where(i % 9 == 0, 0, np.where(i % 2 == 0, 5, 100_000)),
        "height": 64,
    }).astype({"source": object, "category": object})
    return frame.set_axis(np.random.default_rng(0).permutation(rows) + 1000)


def _gx_reference(frame, expectations, keys, cap):
    import great_expectations as gx

    suite = gx.ExpectationSuite(name="reference")
    for expectation in expectations:
        suite.add_expectation(expectation)
    batch = _batch_definition("reference").get_batch(batch_parameters={"dataframe": frame})
    results = batch.validate(suite, result_format={
        "result_format": "SUMMARY", "unexpected_index_column_names": keys, "partial_unexpected_count": cap,
        "include_unexpected_rows": False})
    return {check_name(r.expectation_config): [_clean_row(item) for item in
                                               r.result.get("partial_unexpected_index_list") or []][:cap]
            for r in results.results}


def test_failing_rows_are_named_as_gx_names_them():
    cap = 5
    settings = params_from_dict({}).validation
    frame = with_keys(_hostile_manifest())
    expectations = manifest_expectations(list(frame.columns), settings)
    checks = run_suite(frame, expectations, suite_name="manifest-test", key_columns=["_row", FILE_KEY],
                       max_examples=cap)
    reference = _gx_reference(frame, manifest_expectations(list(frame.columns), settings), ["_row", FILE_KEY], cap)
    failed = [c for c in checks if not c.passed]
    assert len(failed) >= 10  # the manifest is built to fail nearly every expectation
    for check in checks:
        ours, theirs = check.failing, reference[check.name]
        assert [list(item.items()) for item in ours] == [list(item.items()) for item in theirs], check.name
    # examples name rows by position (the index is shuffled labels) and carry the failing value
    unique = next(c for c in checks if c.name == "unique_image_path")
    assert unique.failing[0].keys() >= {"file", "row", "root", "image_path"}
    assert all(frame.iloc[item["row"]]["image_path"] == item["image_path"] for item in unique.failing)


def test_duplicate_index_labels_still_name_the_right_rows():
    frame = with_keys(_hostile_manifest(12)).set_axis([0] * 12)
    settings = params_from_dict({}).validation
    checks = run_suite(frame, manifest_expectations(list(frame.columns), settings), suite_name="manifest-dup",
                       key_columns=["_row", FILE_KEY], max_examples=20)
    labels = next(c for c in checks if c.name == "values_in_set:label")
    assert [item["row"] for item in labels.failing] == [k for k in range(12) if k % 4 == 0]
    assert all(item["label"] == "weird" for item in labels.failing)
