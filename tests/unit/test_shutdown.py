"""exit_process: the process ends with the command's status after its threads, atexit handlers and output are done."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from anomaly_ov.shutdown import exit_code

#: A program that leaves work for shutdown: a non-daemon thread still writing, an atexit handler, 200 kB of
#: buffered stdout behind a pipe, then exit_process(STATUS).
PROGRAM = """
import atexit, sys, threading, time
from pathlib import Path
from anomaly_ov.shutdown import exit_process

out = Path(sys.argv[1])
def late_writer():
    time.sleep(0.3)
    (out / "thread.txt").write_text("done")
threading.Thread(target=late_writer).start()
atexit.register(lambda: (out / "atexit.txt").write_text("ran"))
sys.stdout.write("x" * 200_000 + "\\nend\\n")
exit_process(STATUS)
"""


@pytest.mark.parametrize(("status", "code"), [(None, 0), (3, 3), ("a message", 1)])
def test_exit_process_finishes_threads_handlers_and_output_then_exits_with_the_status(
        tmp_path: Path, status: object, code: int) -> None:
    program = PROGRAM.replace("STATUS", repr(status))
    done = subprocess.run([sys.executable, "-c", program, str(tmp_path)], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ))
    assert done.returncode == code, done.stderr
    assert done.stdout.endswith("x\nend\n") and len(done.stdout) == 200_005
    assert (tmp_path / "thread.txt").read_text() == "done", "the non-daemon thread was cut off"
    assert (tmp_path / "atexit.txt").read_text() == "ran"
    assert ("a message" in done.stderr) == (status == "a message")


def test_exit_code_follows_sys_exit() -> None:
    assert exit_code(None) == 0 and exit_code(0) == 0 and exit_code(2) == 2


def test_the_console_script_keeps_the_exit_status_and_output(tmp_path: Path) -> None:
    """`anomaly-ov` (cli.main) as a process: a command's full output and status; an unknown stage is exit 2."""
    script = Path(sys.executable).with_name("anomaly-ov")
    shown = subprocess.run([str(script), "params"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("# params: built-in defaults") and "registry:" in shown.stdout
    refused = subprocess.run([str(script), "stage", "no_such_stage", "-w", str(tmp_path)], capture_output=True,
                             text=True, cwd=tmp_path, timeout=120)
    assert refused.returncode == 2 and "params.yaml" in refused.stderr, refused.stderr
