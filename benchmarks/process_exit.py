"""Benchmark: how long a stage process takes to end, with Python's usual shutdown and with ``exit_process``.

    .venv/bin/python benchmarks/process_exit.py [--repeats 3] [--modules anomaly_ov.model.modeling,mlflow,...]

Each trial starts a fresh interpreter that imports what a stage imports (by default the model, MLflow and
scikit-learn's metrics, as ``anomaly-ov stage evaluate`` does), prints the time it has reached the end of its work,
then ends either by returning (the interpreter's teardown of every module) or through
:func:`anomaly_ov.shutdown.exit_process`. Printed: the median seconds from the end of the work to the end of the
process for each way, and their ratio. The two ways alternate so that a busy machine slows both alike.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CHILD = """
import sys, time
for name in sys.argv[2].split(","):
    __import__(name)
print(time.time(), flush=True)
if sys.argv[1] == "exit_process":
    from anomaly_ov.shutdown import exit_process
    exit_process(0)
"""


def trial(way: str, modules: str) -> float:
    """Seconds between the child's last line of work and its end."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, way, modules], stdout=subprocess.PIPE, text=True)
    work_done = float(proc.stdout.readline())
    proc.wait()
    return time.time() - work_done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modules", default="anomaly_ov.model.modeling,mlflow,sklearn.metrics")
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {"interpreter": [], "exit_process": []}
    for _ in range(args.repeats):
        for way, times in seconds.items():
            times.append(trial(way, args.modules))
    median = {way: statistics.median(times) for way, times in seconds.items()}
    print(f"modules imported: {args.modules}")
    for way, times in seconds.items():
        print(f"{way:>12}: {median[way]:.2f} s from the end of the work to the end of the process "
              f"(runs: {', '.join(f'{t:.2f}' for t in times)})")
    print(f"exit_process ends the process {median['interpreter'] / max(median['exit_process'], 1e-3):.0f}x sooner")


if __name__ == "__main__":
    main()
