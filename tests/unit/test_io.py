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


def test_outputs_honour_the_umask_not_tempfiles_0600(tmp_path: Path) -> None:
    """A service account in the group must be able to read reports/ and models/."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        report = atomic_write_json(tmp_path / "reports" / "r.json", {"v": 1})
        with atomic_dir(tmp_path / "models" / "m") as tmp:
            (tmp / "w.bin").write_bytes(b"1")
    finally:
        os.umask(old)
    assert stat.S_IMODE(report.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "models" / "m").stat().st_mode) == 0o755


def test_atomic_dir_swap_leaves_no_moment_without_the_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every rename the swap makes keeps ``target`` in place (an atomic exchange on Linux), and fsyncs happen
    before the new content becomes visible."""
    import os

    from anomaly_ov import io

    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("old")
    events: list[str] = []
    real_replace, real_exchange, real_fsync = os.replace, getattr(io, "_exchange", None), os.fsync

    def replace(a, b):
        real_replace(a, b)
        events.append(f"replace target_exists={target.exists()}")

    def exchange(a, b):
        done = real_exchange(a, b)
        events.append(f"exchange {done} target_exists={target.exists()}")
        return done

    def fsync(fd):
        events.append("fsync")
        real_fsync(fd)

    monkeypatch.setattr(io.os, "replace", replace)
    monkeypatch.setattr(io, "_exchange", exchange, raising=False)
    monkeypatch.setattr(io.os, "fsync", fsync)
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("new")
    monkeypatch.undo()
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    swaps = [e for e in events if e != "fsync"]
    assert swaps and all(e.endswith("target_exists=True") for e in swaps), events
    assert events.index(swaps[0]) > events.index("fsync"), "the new files are fsync'ed before the swap"
    assert events[-1] == "fsync", "the parent folder is fsync'ed after the swap"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_atomic_dir_restores_the_old_folder_after_a_crash_between_fallback_renames(tmp_path: Path) -> None:
    target = tmp_path / "model"
    (tmp_path / ".model.old").mkdir()
    (tmp_path / ".model.old" / "a.txt").write_text("old")  # the old folder moved aside, the new never arrived
    with pytest.raises(ValueError), atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("new")
        raise ValueError("boom")
    assert (target / "a.txt").read_text() == "old"


_KILLED_WRITER = """
import os, sys, time
from pathlib import Path
from anomaly_ov.io import atomic_dir, atomic_path
root = Path(sys.argv[1])
with atomic_dir(root / "raw" / "synthetic") as tmp, atomic_path(root / "last.pt") as part:
    (tmp / "x.png").write_bytes(b"1")
    part.write_bytes(b"2")
    (root / "ready").write_text("1")
    while True:
        time.sleep(0.1)
"""


def test_temporaries_of_a_killed_writer_are_removed_by_the_next_write(tmp_path: Path) -> None:
    """A generator or checkpoint write SIGKILLed mid-way leaves its temporaries; the next write to the same target
    removes them (those of a live process stay)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], env=env)
    try:
        while not (tmp_path / "ready").exists():  # pytest-timeout ends a child that never gets there
            assert proc.poll() is None, "the writer died before writing"
            time.sleep(0.05)
        with atomic_dir(tmp_path / "raw" / "synthetic") as tmp:  # the writer is alive: its temporary stays
            (tmp / "y.png").write_bytes(b"3")
        assert len(list((tmp_path / "raw").glob(".synthetic.tmp-*"))) == 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(list(tmp_path.glob(".last.pt.tmp-*"))) == 1
    (tmp_path / "raw" / ".synthetic.k2_9x0qa").mkdir()  # left by an earlier version (tempfile's own names)
    with atomic_dir(tmp_path / "raw" / "synthetic") as tmp:
        (tmp / "z.png").write_bytes(b"4")
    atomic_write_json(tmp_path / "last.pt", {"v": 1})
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["synthetic"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "raw", "ready"]
