"""Datasets outside the workspace: the `sources` stage hashes their content so that DVC finds `prepare` stale when
they change (real dvc, real stages, a folder dataset outside the temporary repository)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from workspaces import BIN, run

pytestmark = pytest.mark.integration


def _image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 40, 3), value, dtype="uint8")).save(path)


def _prepare_status(ws: Path) -> str:
    """`dvc status prepare` after the `sources` stage ran, as every `dvc repro` and the flows do first."""
    run([str(BIN / "dvc"), "repro", "--single-item", "sources"], ws)
    return run([str(BIN / "dvc"), "status", "prepare"], ws).stdout


def test_changed_external_source_makes_prepare_stale(make_workspace, tmp_path: Path) -> None:
    external = tmp_path / "elsewhere" / "widgets"  # not under the workspace: DVC does not look there
    for i in range(3):
        _image(external / "widget" / "good" / f"{i}.png", 100 + i)
    _image(external / "widget" / "crack" / "0.png", 200)
    ws = make_workspace("real", [
        "tracking.enabled=false",  # the generator still runs (its folder is an out); only widgets is read
        f"data.sources=[{{name: widgets, format: folder, path: '{external}', role: train}}]",
    ])
    run([str(BIN / "dvc"), "repro", "prepare"], ws)
    assert "data/sources.fingerprint.json" not in _prepare_status(ws), "unchanged data must not make prepare stale"

    crack = external / "widget" / "crack" / "0.png"  # fixed in place: same size, same mtime
    stat, original = crack.stat(), crack.read_bytes()
    fixed = bytearray(original)
    fixed[-20] ^= 0xFF
    crack.write_bytes(bytes(fixed))
    os.utime(crack, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    status = _prepare_status(ws)
    assert "prepare" in status and "modified:" in status and "data/sources.fingerprint.json" in status, status

    crack.write_bytes(original)  # back to the data prepare last read: up to date again
    os.utime(crack, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert "data/sources.fingerprint.json" not in _prepare_status(ws)

    _image(external / "widget" / "good" / "3.png", 250)  # a new image
    assert "data/sources.fingerprint.json" in _prepare_status(ws)
