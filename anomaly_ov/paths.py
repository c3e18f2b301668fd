"""Workspace-relative paths: every path in params.yaml is relative to the workspace (the repo root)."""

from __future__ import annotations

from pathlib import Path


def in_workspace(workspace: str | Path, path: str | Path) -> Path:
    """Resolve a params path against the workspace unless it is already absolute."""
    path = Path(path)
    return path if path.is_absolute() else Path(workspace) / path
