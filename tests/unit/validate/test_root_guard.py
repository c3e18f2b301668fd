"""RootGuard (validate's per-row containment check) decides exactly as inside_root, on a real file tree."""

from __future__ import annotations

import os

import pytest

from anomaly_ov.paths import OutsideRootError, RootGuard, inside_root


def _tree(tmp_path):
    root = tmp_path / "data" / "set"
    (root / "cat" / "sub").mkdir(parents=True)
    (root / "cat" / "a.png").write_bytes(b"x")
    outside = tmp_path / "elsewhere"
    (outside / "deep").mkdir(parents=True)
    (outside / "b.png").write_bytes(b"y")
    (root / "cat" / "link_out.png").symlink_to(outside / "b.png")  # file symlink out
    (root / "cat" / "link_in.png").symlink_to(root / "cat" / "a.png")  # file symlink that stays in
    (root / "dir_out").symlink_to(outside / "deep", target_is_directory=True)  # folder symlink out
    (root / "dir_in").symlink_to(root / "cat", target_is_directory=True)  # folder symlink that stays in
    (root / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    os.symlink(root, tmp_path / "alias")  # the root itself reached through a symlink
    return root, outside


CASES = ["cat/a.png", "cat/missing.png", "cat/sub/none/deeper.png", "cat/link_out.png", "cat/link_in.png",
         "dir_out/x.png", "dir_in/a.png", "dangling.png", "../elsewhere/b.png", "cat/../cat/a.png",
         "cat/../../set/cat/a.png", "/etc/passwd", "./cat/a.png", "cat/./a.png", "."]


def _reference(root, relative):
    try:
        inside_root(root, relative)
    except OutsideRootError as exc:
        return str(exc)
    return None


def _guarded(guard, root, relative):
    try:
        guard.check(root, relative)
    except OutsideRootError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("via_alias", [False, True])
def test_root_guard_agrees_with_inside_root(tmp_path, via_alias):
    root, _ = _tree(tmp_path)
    if via_alias:
        root = tmp_path / "alias"
    guard = RootGuard()
    decisions = {}
    for _ in range(2):  # the second pass answers from the guard's cache
        for relative in CASES:
            decisions[relative] = _guarded(guard, root, relative)
            assert decisions[relative] == _reference(root, relative), relative
    assert {r for r, error in decisions.items() if error} == {
        "cat/link_out.png", "dir_out/x.png", "dangling.png", "../elsewhere/b.png", "/etc/passwd"}


def test_relative_root_is_resolved_against_the_working_directory(tmp_path, monkeypatch):
    _tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    guard = RootGuard()
    for relative in CASES:
        assert _guarded(guard, "data/set", relative) == _reference("data/set", relative), relative
