"""Atomic writes: a failure never leaves a partial file under the real name nor loses the old one."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomaly_ov.io import atomic_dir, atomic_path, atomic_write_json, read_json


def test_exception_keeps_old_file_and_cleans_temp(tmp_path: Path) -> None:
    target = atomic_write_json(tmp_path / "out.json", {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert read_json(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_dir_replaces_whole_folder(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    with pytest.raises(ValueError), atomic_dir(target) as tmp:
        (tmp / "c.txt").write_text("3")
        raise ValueError("boom")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_read_json_names_file_and_position(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1,\n "b": }')
    with pytest.raises(ValueError, match=r"bad.json: invalid JSON at line 2"):
        read_json(bad)
