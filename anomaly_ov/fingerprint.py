"""Content hashes that tie a metrics file to what it measured: the model's files and the benchmark's items.

``dir_sha256(models/anomaly_ov)`` hashes every file under the folder (relative path and bytes, in sorted order),
so any change of weights, config or tokenizer changes it. ``items_sha256(items)`` hashes the evaluated benchmark
items as canonical JSON (file names, labels, masks, categories, questions): the identity of the benchmark as the
evaluation saw it, after ``evaluate.max_images`` trimmed it. The image bytes themselves are DVC's to track.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def dir_sha256(directory: str | Path) -> str:
    """SHA-256 over every regular file under ``directory`` (relative path + content, sorted by path)."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        digest.update(rel.encode() + b"\0")
        with path.open("rb") as handle:
            while block := handle.read(CHUNK):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def items_sha256(items: Any) -> str:
    """SHA-256 of ``items`` as canonical JSON (sorted keys; non-JSON values as their ``str``)."""
    text = json.dumps(items, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
