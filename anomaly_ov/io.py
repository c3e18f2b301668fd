"""Atomic file output: write to a temporary name beside the target, then move it into place.

Every stage writes through these helpers so that a crash never leaves a half-written file under the real name
and a previous good output is only replaced by a complete new one.

Guarantees:

* **Complete or previous.** Readers of ``target`` see the old content or the new, never a mix. A file is written
  under a temporary name and renamed over the target (``os.replace``). A folder is swapped with
  ``renameat2(RENAME_EXCHANGE)`` on Linux (ext4, xfs, btrfs, tmpfs...): the target path exists at every instant.
  Where that call is missing (macOS, old kernels, some network file systems) the old folder is renamed aside and
  the new one renamed in: a reader may find no folder for that moment, and a crash between the two renames leaves
  the old folder as ``.NAME.old``, which the next write to the target puts back before anything else.
* **Durable.** Files are fsync'ed before the rename, and the parent folder after it, so a power loss does not
  leave an empty file under the real name.
* **Permissions.** Outputs get the modes of a plain ``open()`` / ``mkdir()``: 0666 / 0777 less the umask (not
  the 0600 / 0700 of ``tempfile``), so a service account in the group can read ``reports/`` and ``models/``.
* **No litter.** Temporary names carry the host and pid (``.NAME.tmp-HOST-PID-XXXX``); a process killed
  mid-write leaves one behind, and the next write to the same target removes those of dead processes on this
  host.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from anomaly_ov.errors import InputError


# ------------------------------------------------------------------------------------------- permissions
def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but only for that instant)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    """fsync a file or a folder (folders: where the OS allows opening them)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some file systems refuse fsync on folders
            os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            if not os.path.islink(os.path.join(folder, name)):
                _fsync(Path(folder) / name)
        _fsync(Path(folder))


# ------------------------------------------------------------------------------------------ temporary names
def _temp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-{socket.gethostname()}-{os.getpid()}-"


def _remove_stale_temps(target: Path) -> None:
    """Remove temporaries of ``target`` left by processes of this host that are gone (killed mid-write), and those
    of earlier versions of this module (``.NAME.XXXXXXXX``, no owner recorded)."""
    name = re.escape(target.name)
    pattern = re.compile(rf"^\.{name}\.tmp-{re.escape(socket.gethostname())}-(\d+)-")
    legacy = re.compile(rf"^\.{name}\.[a-z0-9_]{{8}}(\.[A-Za-z0-9]+)?$")
    if not target.parent.is_dir():
        return
    for entry in target.parent.iterdir():
        m = pattern.match(entry.name)
        if not (legacy.match(entry.name) or (m and not _pid_alive(int(m[1])))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary file path in the target's folder; on success it replaces ``target`` (see the module doc)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=suffix or ".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~current_umask())
        _fsync(tmp_path)
        os.replace(tmp_path, target)
        _fsync(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is not available."""
    import ctypes
    import errno
    import sys

    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)  # glibc >= 2.28
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 1 << 1
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # kernel or file system without the flag
    raise OSError(err, os.strerror(err), str(a), None, str(b))


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` as a whole (see the module
    doc: an atomic exchange on Linux, so the target never disappears)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    backup = target.with_name(f".{target.name}.old")
    if backup.exists() or backup.is_symlink():
        if target.exists():  # a crash after the fallback's second rename: the backup is stale
            _remove(backup)
        else:  # a crash between the two renames: put the old folder back
            os.replace(backup, target)
    _remove_stale_temps(target)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())
        _fsync_tree(tmp)
        if target.exists() and target.is_dir() and not target.is_symlink() and _exchange(tmp, target):
            pass  # tmp now holds the old folder; removed below
        else:
            if target.exists() or target.is_symlink():
                os.replace(target, backup)
            os.replace(tmp, target)
            _remove(backup)
        _fsync(target.parent)
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


class MissingFile(InputError, FileNotFoundError):
    """A file the user named (or a params key points at) does not exist; the message names it and what to do."""


def read_json(path: str | Path) -> Any:
    """Read JSON with an error that names the file and the position of the problem (both :class:`InputError`)."""
    path = Path(path)
    if not path.exists():
        raise MissingFile(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None


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
