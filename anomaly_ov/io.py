"""Atomic file output: write to a temporary name beside the target, then move it into place.

Every stage writes through these helpers so that a crash never leaves a half-written file under the real name
and a previous good output is only replaced by a complete new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary file path in the target's folder; on success it replaces ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` as a whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        backup = None
        if target.exists():
            backup = target.with_name(f".{target.name}.old")
            if backup.exists():
                shutil.rmtree(backup)
            os.replace(target, backup)
        os.replace(tmp, target)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(target: str | Path, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target)


def atomic_write_bytes(target: str | Path, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_json(target: str | Path, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(target, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    """Make numpy scalars, paths and sets JSON-friendly without importing numpy eagerly."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read_json(path: str | Path) -> Any:
    """Read JSON with an error that names the file and the position of the problem."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None


# ------------------------------------------------------------------------------------------- content hashes
_HASH_BLOCK = 1 << 20


def file_digest(path: str | Path) -> str:
    """SHA-256 of the whole file, streamed in 1 MiB blocks ("missing" when it does not exist).

    The content is hashed, not size + mtime: a file fixed in place keeps its size and may keep its mtime (copied
    with ``cp -p``, restored from a backup), and must still count as changed. Nothing is cached across calls for
    the same reason.
    """
    digest = hashlib.sha256()
    try:
        with Path(path).open("rb") as fh:
            while block := fh.read(_HASH_BLOCK):
                digest.update(block)
    except FileNotFoundError:
        return "missing"
    return digest.hexdigest()


def content_digest(paths: Iterable[str | Path], root: str | Path | None = None, workers: int = 8) -> str:
    """One SHA-256 over (name, content hash) of every file in ``paths``, each named relative to ``root`` when under
    it (so the same data in a moved folder hashes the same). Files are hashed in a thread pool (hashlib releases
    the GIL on large blocks)."""
    from concurrent.futures import ThreadPoolExecutor

    base = Path(root).resolve() if root is not None else None
    unique = sorted({str(p) for p in paths})

    def name(p: str) -> str:
        resolved = Path(p).resolve()
        if base is not None and resolved.is_relative_to(base):
            return resolved.relative_to(base).as_posix()
        return str(resolved)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        digests = list(pool.map(file_digest, unique))
    blob = hashlib.sha256()
    for p, d in zip(unique, digests, strict=True):
        blob.update(f"{name(p)}\0{d}\n".encode())
    return blob.hexdigest()


def tree_digest(root: str | Path) -> dict[str, Any]:
    """``{"files", "bytes", "sha256"}`` of every regular file under ``root`` (a folder or one file), by content."""
    root = Path(root)
    if root.is_file():
        files = [root]
        base = root.parent
    else:
        files = [Path(d) / f for d, _, names in os.walk(root) for f in names if (Path(d) / f).is_file()]
        base = root
    return {"files": len(files), "bytes": sum(f.stat().st_size for f in files),
            "sha256": content_digest(files, base)}
