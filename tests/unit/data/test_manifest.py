"""Manifest schema: round trip through Parquet, and errors that name the column and rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomaly_ov.data.manifest import (
    COLUMNS,
    ManifestError,
    ManifestRow,
    check_schema,
    from_rows,
    read_manifest,
    relative_root,
    resolve,
    write_manifest,
)


def _rows() -> list[ManifestRow]:
    common = {"root": "data/raw/x", "source": "x", "category": "pill", "split": "test", "role": "eval"}
    return [
        ManifestRow(image_path="pill/good/0.png", label="normal", defect_type="good", width=8, height=8, **common),
        ManifestRow(
            image_path="pill/crack/1.png", mask_path="pill/gt/1.png", label="anomaly", defect_type="crack", **common
        ),
    ]


def test_round_trip(tmp_path: Path) -> None:
    frame = from_rows(_rows())
    assert list(frame.columns) == list(COLUMNS)
    path = write_manifest(frame, tmp_path / "m.parquet")
    back = read_manifest(path)
    assert back.to_dict("records") == frame.to_dict("records")
    assert not list(tmp_path.glob(".m.parquet*")), "temporary file left behind"


def test_schema_errors_name_column_and_rows() -> None:
    frame = from_rows(_rows())
    frame.loc[1, "label"] = "broken"
    frame.loc[0, "category"] = ""
    problems = "\n".join(check_schema(frame))
    assert "'label' has values ['broken'] in rows [1]" in problems
    assert "'category' is empty in rows [0]" in problems


def test_missing_column_is_reported(tmp_path: Path) -> None:
    frame = from_rows(_rows()).drop(columns=["role"])
    with pytest.raises(ManifestError, match="role"):
        write_manifest(frame.assign(role=None).drop(columns=["role"]), tmp_path / "m.parquet")


def test_failed_write_keeps_previous_file(tmp_path: Path) -> None:
    target = write_manifest(from_rows(_rows()), tmp_path / "m.parquet")
    before = target.read_bytes()
    bad = from_rows(_rows())
    bad.loc[0, "role"] = "nope"
    with pytest.raises(ManifestError):
        write_manifest(bad, target)
    assert target.read_bytes() == before


def test_unreadable_manifest_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    path.write_bytes(b"not parquet")
    with pytest.raises(ManifestError, match=str(path)):
        read_manifest(path)
    with pytest.raises(FileNotFoundError, match="stage prepare"):
        read_manifest(tmp_path / "missing.parquet")


def test_paths_resolve_against_workspace(tmp_path: Path) -> None:
    row = from_rows(_rows()).iloc[1]
    assert resolve(row, "mask_path", tmp_path) == tmp_path / "data/raw/x/pill/gt/1.png"
    inside = tmp_path / "data" / "set"
    inside.mkdir(parents=True)
    assert relative_root(inside, tmp_path) == "data/set"
    assert relative_root("/elsewhere/set", tmp_path) == "/elsewhere/set"
