"""The repository stands on its own: no file points to design or reference notes kept outside it."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("anomaly_ov", "tasks", "flows", "tests", "benchmarks", "docs", ".ci")
SCANNED_FILES = ("README.md", "Makefile", "dvc.yaml", "params.yaml", "pyproject.toml")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".json", ".cfg", ""}
# spelled in pieces so that this file does not match itself
OUTSIDE_NOTES = re.compile("|".join([r"REFERENCE" + r"\.md", r"DESIGN" + r"\.md", r"\.\./" + "shared",
                                     r"see the " + "notes"]), re.IGNORECASE)


def _files() -> list[Path]:
    files = [REPO / name for name in SCANNED_FILES if (REPO / name).is_file()]
    for folder in SCANNED:
        files += [p for p in (REPO / folder).rglob("*") if p.is_file() and p.suffix in SUFFIXES
                  and "__pycache__" not in p.parts]
    return files


def test_no_pointer_to_notes_outside_the_repository() -> None:
    hits = []
    for file in _files():
        text = file.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE_NOTES.search(line):
                hits.append(f"{file.relative_to(REPO)}:{number}: {line.strip()[:100]}")
    assert not hits, "pointers to notes that are not in the repository (write the fact under docs/):\n" + "\n".join(
        hits)
