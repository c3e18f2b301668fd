"""Workspace-relative paths: every path in params.yaml is relative to the workspace (the repo root)."""

from __future__ import annotations

import os
from pathlib import Path

from anomaly_ov.errors import InputError


def in_workspace(workspace: str | Path, path: str | Path) -> Path:
    """Resolve a params path against the workspace unless it is already absolute."""
    path = Path(path)
    return path if path.is_absolute() else Path(workspace) / path


class OutsideRootError(InputError):
    """A path named by a dataset leads out of its root folder; ``path`` and ``reason`` say which and how."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def inside_root(root: str | Path, relative: str | Path, *, allow_external: bool = False) -> Path:
    """``root / relative`` after checking that it stays inside ``root``: the one containment rule of the readers
    and of ``validate``.

    Refused unless ``allow_external`` (a source's ``allow_external_paths``): an absolute path, a path whose
    ``..`` parts climb out of ``root``, and a path that resolves (through symlinks) to outside ``root``.
    """
    root, rel = Path(root), Path(relative)
    hint = "copy the file into the dataset, or set allow_external_paths: true on the source"
    if allow_external:
        return rel if rel.is_absolute() else root / rel
    if rel.is_absolute():
        raise OutsideRootError(rel, f"absolute path {str(rel)!r} outside the dataset {root}; {hint}")
    candidate = root / rel
    real_root = root.resolve()
    try:
        candidate.resolve().relative_to(real_root)
    except ValueError:
        how = "'..' leads" if ".." in rel.parts else "a symlink leads"
        raise OutsideRootError(
            candidate, f"{how} out of the dataset {root} (to {candidate.resolve()}); {hint}"
        ) from None
    return candidate


class RootGuard:
    """:func:`inside_root` for many paths under few roots (a manifest's rows): the same decisions and errors, with
    each root's and each folder's real path resolved once per guard.

    ``realpath(folder / name)`` is ``realpath(folder) / name`` when ``name`` is not a symlink, so a plain file
    costs one ``lstat`` and a few string operations; a path with ``..`` or ``.`` parts, an absolute path, a
    symlinked file and every refusal go through :func:`inside_root` (which words the error). A guard caches what
    the file system said when it was asked: make one per validation, not one per process.
    """

    def __init__(self) -> None:
        self._real: dict[str, str] = {}

    def _realpath(self, folder: str) -> str:
        real = self._real.get(folder)
        if real is None:
            real = self._real[folder] = os.path.realpath(folder)
        return real

    def check(self, root: str | Path, relative: str | Path) -> None:
        """Raise :class:`OutsideRootError` exactly when ``inside_root(root, relative)`` would."""
        rel = os.fspath(relative)
        parts = rel.split(os.sep)
        if not rel or rel.startswith(os.sep) or ".." in parts or "." in parts or "" in parts:
            inside_root(root, relative)  # absolute, climbing, or spelled unusually: the reference decides
            return
        base = os.fspath(root) or "."
        candidate = os.path.join(base, rel)
        if os.path.islink(candidate):
            inside_root(root, relative)
            return
        real_root = self._realpath(base)
        real = os.path.join(self._realpath(os.path.dirname(candidate)), parts[-1])
        if not real.startswith(real_root.rstrip(os.sep) + os.sep):
            inside_root(root, relative)  # raises with the reference message
