"""Workspace-relative paths: every path in params.yaml is relative to the workspace (the repo root)."""

from __future__ import annotations

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
