"""The embedded default against its targets: the whole pipeline in fresh clones, one per seed, in one table.

For each seed the script clones the repository's committed HEAD (what CI and a new user get; uncommitted changes are not
measured, and it says so) into a scratch folder, links the repository's ``.venv`` into it, rewrites the clone's
params.yaml with ``train.seed`` (and every ``--set KEY=VALUE``) set, validated as the CLI validates params (the
rewritten file holds every key, without the comments), and runs ``anomaly-ov run`` there, timed: the first run. With
``--rerun`` it runs the flow again unchanged, timed. Then it runs the clone's ``benchmarks/stage2_detection_probe.py``
on the workspace and reads ``reports/metrics.json``, ``reports/register.json`` and
``reports/extensions/{medical,3d}.json``. It prints one row per target (``TARGETS``, the embedded default's targets:
zero-shot detection that passes the gate, grounded descriptions, the medical and 3D runs, the time budget) with each
seed's figure, marked ``**`` where the target is met, and the whole result as JSON.

    .venv/bin/python benchmarks/default_targets.py [--seeds 0,1,2] [--rerun] [--keep DIR] [--set KEY=VALUE ...]
    .venv/bin/python benchmarks/default_targets.py --from DIR [--from DIR ...] [--seeds 0,1,2]

About 10-18 minutes per seed on 2 CPU cores, by the host (the flow, plus about 20 s for the probe and 11-28 s for
the re-run); run nothing else meanwhile, since the flow's time is a target. After the table it prints each seed's
stage-1 training pace (images per second, ``reports/train_expert.json``): the host's speed, which the flow's time
scales with, and the host (CPU model, CPU count, Python, torch, numpy and transformers versions). ``--keep DIR``
leaves the workspaces there (one folder per seed, each with this script's ``default_targets_run.json``: timings, probe,
commit, host) for a closer look; otherwise they are deleted. ``--from DIR`` (repeatable) runs nothing and prints the
table of the seeds kept under those folders, e.g. seeds measured on different days. The last column gives the seeds'
mean ± standard deviation (for the gate, how many seeds reached production). ``--set`` measures
a change to the recipe across the same seeds (e.g. ``--set train.expert.tiny.epochs=24``): one run moves by up to
0.05 of image AUROC with the seed. The README's "Measured end to end, and where it is still weak" table holds these
figures for seeds 0-4, with breakdowns from the same workspaces and the validation splits of
``benchmarks/zero_shot_splits.py`` beside them.
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

_OPS: dict[str, Callable[[Any, Any], bool]] = {">=": operator.ge, "<": operator.lt, "==": operator.eq}


@dataclass(frozen=True)
class Target:
    """One figure the embedded default is meant to reach: ``report``'s ``key`` compared by ``op`` with ``goal``."""

    name: str
    report: str  # metrics | register | medical | 3d | probe | timing
    key: str
    op: str
    goal: float | str

    def met(self, value: Any) -> bool | None:
        """Whether ``value`` reaches the goal; None when the run did not measure it."""
        if value is None:
            return None
        return bool(_OPS[self.op](value, self.goal))


TARGETS: tuple[Target, ...] = (
    Target("zero-shot image AUROC (pcb, round_part)", "metrics", "zero_shot.image_auroc", ">=", 0.85),
    Target("zero-shot pixel AUROC", "metrics", "zero_shot.pixel_auroc", ">=", 0.85),
    Target("the gate on the first run", "register", "verdict", "==", "production"),
    Target("detection macro F1", "metrics", "detection.macro_f1", ">=", 0.75),
    Target("descriptions of unseen training images: own object", "probe", "names_its_object", ">=", 0.60),
    Target("descriptions of unseen training images: defect type", "probe", "names_its_defect_type", ">=", 0.40),
    Target("Sentence-BERT, low-level questions", "metrics", "reasoning.low_level.sbert", ">=", 0.45),
    Target("medical image AUROC (brain MRI, liver CT)", "medical", "zero_shot.image_auroc", ">=", 0.75),
    Target("3D image AUROC per view (cylinder, box, bowl)", "3d", "view.zero_shot.image_auroc", ">=", 0.75),
    Target("3D per-object detection F1", "3d", "object.detection.macro_f1", ">=", 0.6),
    Target("the first run's flow, seconds", "timing", "first_run_s", "<", 900),
    Target("the unchanged re-run, seconds", "timing", "rerun_s", "<", 60),
)

#: where each report lives in a workspace (the probe and the timings are this script's own)
REPORT_FILES = {"metrics": "reports/metrics.json", "register": "reports/register.json",
                "medical": "reports/extensions/medical.json", "3d": "reports/extensions/3d.json"}
#: this script's own figures of one seed (timings, probe, commit, host), kept beside its workspace's reports so that
#: ``--from`` can put seeds measured at different times into one table
RUN_FILE = "default_targets_run.json"
MAX_RUN_FILE_BYTES = 1 << 20  # a run file holds a few hundred bytes


def write_seed_params(params_file: Path, seed: int, overrides: Sequence[str] = ()) -> None:
    """Rewrite ``params_file`` with ``train.seed`` and ``overrides`` set, validated as every params file is
    (:func:`anomaly_ov.config.load_params`; a bad key or value stops here with its message, before any run)."""
    from anomaly_ov.config import dump_params, load_params

    dump_params(load_params(params_file, [f"train.seed={int(seed)}", *overrides]), params_file)


def read_reports(workspace: Path) -> dict[str, dict[str, Any]]:
    """The workspace's reports by name (``REPORT_FILES``); a missing one is an empty dict."""
    out: dict[str, dict[str, Any]] = {}
    for name, rel in REPORT_FILES.items():
        path = workspace / rel
        out[name] = json.loads(path.read_text()) if path.exists() else {}
    return out


def host_description() -> dict[str, Any]:
    """The CPU and the builds that set the flow's time and, through their rounding, a from-scratch run's figures (the
    same code gives other experts on another CPU or package build), read without importing torch."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text(errors="replace").splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    packages: dict[str, str | None] = {}
    for name in ("torch", "numpy", "transformers"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(), **packages}


def stage1_pace(workspace: Path) -> float | None:
    """Stage 1's training images per second (``reports/train_expert.json``), None when it did not run: the host's
    pace. The flow's seconds scale with it (one host's stage 1 took 1.8 times another's), so the time targets are read
    against it."""
    path = workspace / "reports/train_expert.json"
    pace = json.loads(path.read_text()).get("images_per_s") if path.exists() else None
    return float(pace) if pace is not None else None


def across_seeds(target: Target, values: Sequence[Any]) -> dict[str, Any]:
    """The measured ``values`` of one target over the seeds: for a number their mean, sample standard deviation
    (None with one value) and whether the mean meets the goal; otherwise how many seeds met it (``"2/3"``)."""
    import statistics

    measured = [v for v in values if v is not None]
    if not measured:
        return {"value": None, "sd": None, "met": None}
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in measured):
        mean = statistics.fmean(measured)
        return {"value": mean, "sd": statistics.stdev(measured) if len(measured) > 1 else None,
                "met": target.met(mean)}
    return {"value": f"{sum(bool(target.met(v)) for v in measured)}/{len(measured)}", "sd": None, "met": None}


def target_rows(runs: Mapping[int, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """One row per target: its name, goal, per seed the value and whether it is met (None: not measured), and the
    seeds together (:func:`across_seeds`)."""
    rows = []
    for target in TARGETS:
        cells = {}
        for seed, reports in runs.items():
            value = reports.get(target.report, {}).get(target.key)
            cells[seed] = {"value": value, "met": target.met(value)}
        rows.append({"target": target.name, "goal": f"{target.op} {target.goal}", "seeds": cells,
                     "across_seeds": across_seeds(target, [c["value"] for c in cells.values()])})
    return rows


def _cell(value: Any, met: bool | None) -> str:
    if met is None:
        return "-"
    text = (f"{value:.3f}" if abs(value) < 10 else f"{value:.0f}") if isinstance(value, float) else str(value)
    return f"**{text}**" if met else text


def _summary_cell(summary: Mapping[str, Any]) -> str:
    value, sd = summary["value"], summary["sd"]
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    text = _cell(float(value), summary["met"])
    if sd is None:
        return text
    return f"{text} ± {sd:.3f}" if abs(value) < 10 else f"{text} ± {sd:.0f}"


def markdown_table(rows: Sequence[Mapping[str, Any]], seeds: Sequence[int]) -> str:
    """The rows as a Markdown table, a column per seed and one for the seeds together (mean ± standard deviation;
    for the gate, how many seeds reached production); met targets in bold, unmeasured ones as "-"."""
    head = "| target | goal | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |"
    rule = "|---|---|" + "---|" * (len(seeds) + 1)
    body = [f"| {r['target']} | {r['goal']} | "
            + " | ".join(_cell(r["seeds"][s]["value"], r["seeds"][s]["met"]) for s in seeds)
            + f" | {_summary_cell(r['across_seeds'])} |" for r in rows]
    return "\n".join([head, rule, *body])


def _timed(cmd: Sequence[str], cwd: Path, env: Mapping[str, str], log: Path) -> tuple[int, float]:
    started = time.perf_counter()
    with log.open("w") as out:
        rc = subprocess.run(list(cmd), cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT).returncode
    return rc, round(time.perf_counter() - started, 1)


def run_seed(seed: int, root: Path, rerun: bool, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Clone, set the seed, run the flow (and again, with ``rerun``), probe; the reports and timings of one seed."""
    workspace = root / f"seed_{seed}"
    subprocess.run(["git", "clone", "-q", str(REPO), str(workspace)], check=True)
    (workspace / ".venv").symlink_to(REPO / ".venv")
    write_seed_params(workspace / "params.yaml", seed, overrides)
    venv_bin = workspace / ".venv" / "bin"
    env = {**os.environ, "PYTHONPATH": str(workspace), "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    cli = str(venv_bin / "anomaly-ov")
    print(f"seed {seed}: anomaly-ov run in {workspace} (log: {workspace}/first_run.log)", file=sys.stderr, flush=True)
    rc, first = _timed([cli, "run"], workspace, env, workspace / "first_run.log")
    timing: dict[str, Any] = {"first_run_s": first if rc == 0 else None, "first_run_rc": rc}
    if rc == 0 and rerun:
        rc2, again = _timed([cli, "run"], workspace, env, workspace / "rerun.log")
        timing.update(rerun_s=again if rc2 == 0 else None, rerun_rc=rc2)
    timing["stage1_images_per_s"] = stage1_pace(workspace)
    reports: dict[str, Any] = {**read_reports(workspace), "timing": timing, "probe": {}}
    if rc == 0:
        probe = subprocess.run([sys.executable, str(workspace / "benchmarks/stage2_detection_probe.py"),
                                "--workspace", str(workspace)], cwd=workspace, env=env, capture_output=True,
                               text=True)
        if probe.returncode == 0:
            reports["probe"] = json.loads(probe.stdout)["descriptions_of_unseen_training_images"]
        else:
            print(f"seed {seed}: the probe failed:\n{probe.stderr[-2000:]}", file=sys.stderr)
    else:
        print(f"seed {seed}: anomaly-ov run exited {rc}; see {workspace}/first_run.log", file=sys.stderr)
    write_run_file(workspace, seed, timing, reports["probe"])
    return reports


def write_run_file(workspace: Path, seed: int, timing: Mapping[str, Any], probe: Mapping[str, Any]) -> Path:
    """This script's own figures of one seed beside its workspace's reports (:data:`RUN_FILE`, written atomically):
    what :func:`collect_seeds` reads back, with the workspace's commit and the host."""
    from anomaly_ov.io import atomic_write_json

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=workspace, capture_output=True, text=True)
    return atomic_write_json(workspace / RUN_FILE, {"seed": seed, "commit": commit.stdout.strip() or None,
                                                    "timing": dict(timing), "probe": dict(probe),
                                                    "host": host_description()})


def collect_seeds(folders: Sequence[Path], wanted: Sequence[int] | None = None
                  ) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    """Seeds measured earlier with ``--keep``: every ``<folder>/seed_<N>/`` holding :data:`RUN_FILE` (only the
    ``wanted`` seeds when given) -> (reports by seed, as :func:`run_seed` returns them; the run files by seed).
    Stops with a message naming the folders when a seed appears twice, a wanted seed is missing or none is found."""
    runs: dict[int, dict[str, Any]] = {}
    records: dict[int, dict[str, Any]] = {}
    where: dict[int, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            raise SystemExit(f"--from {folder}: no such folder")
        for run_file in sorted(folder.glob(f"seed_*/{RUN_FILE}")):
            workspace = run_file.parent
            if run_file.stat().st_size > MAX_RUN_FILE_BYTES:
                raise SystemExit(f"{run_file}: larger than {MAX_RUN_FILE_BYTES} bytes, not a run file of this script")
            try:
                record = json.loads(run_file.read_text())
                seed = int(record["seed"])
                if not all(isinstance(record.get(key, {}), dict) for key in ("timing", "probe", "host")):
                    raise TypeError("timing, probe and host must be objects")
            except (ValueError, KeyError, TypeError) as exc:
                raise SystemExit(f"{run_file}: not a run file of this script ({exc})") from None
            if wanted is not None and seed not in wanted:
                continue
            if seed in where:
                raise SystemExit(f"seed {seed} is in both {where[seed]} and {workspace}: pass one of the folders")
            where[seed] = workspace
            records[seed] = record
            runs[seed] = {**read_reports(workspace), "timing": record.get("timing", {}),
                          "probe": record.get("probe", {})}
    missing = sorted(set(wanted or ()) - set(runs))
    if missing or not runs:
        names = ", ".join(str(f) for f in folders)
        raise SystemExit(f"no seed_<N>/{RUN_FILE} for seed {missing[0]} under {names}" if missing
                         else f"no seed_<N>/{RUN_FILE} under {names}: keep runs with --keep DIR first")
    order = sorted(runs)
    return {s: runs[s] for s in order}, {s: records[s] for s in order}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default=None, help="comma-separated train.seed values (default: 0,1,2; with "
                        "--from, every seed found)")
    parser.add_argument("--from", action="append", type=Path, default=[], dest="sources", metavar="DIR",
                        help="run nothing: read the seeds kept earlier with --keep DIR (repeatable) into one table")
    parser.add_argument("--rerun", action="store_true", help="time an unchanged second run of each seed's flow")
    parser.add_argument("--keep", type=Path, default=None, help="keep the workspaces under this folder")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="a params override for every seed (repeatable), e.g. train.expert.tiny.epochs=24")
    args = parser.parse_args()
    from anomaly_ov.config import load_params, parse_seed_list
    from anomaly_ov.errors import ConfigError

    try:
        wanted = parse_seed_list(args.seeds) if args.seeds is not None else None
    except ConfigError as exc:
        parser.error(f"--seeds: {exc}")
    if args.sources:
        if args.rerun or args.keep is not None or args.overrides:
            parser.error("--from reads runs kept earlier: --rerun, --keep and --set do not apply")
        runs, records = collect_seeds(args.sources, wanted)
        commits = ", ".join(f"seed {s}: {r.get('commit')}" for s, r in records.items())
        print_results(runs, list(runs), f"the embedded default ({commits})",
                      {s: r.get("host", {}) for s, r in records.items()})
        return
    seeds = wanted or [0, 1, 2]

    load_params(REPO / "params.yaml", [f"train.seed={seeds[0]}", *args.overrides])  # a bad --set fails before any run
    if not (REPO / ".venv").exists():
        raise SystemExit(f"{REPO / '.venv'} is missing: run `make setup` (or `make pipeline`) first")
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    if dirty:
        print("note: the working tree has uncommitted changes; the clones measure the committed HEAD",
              file=sys.stderr)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        existing = [s for s in seeds if (args.keep / f"seed_{s}").exists()]
        if existing:
            raise SystemExit(f"{args.keep} already holds seed_{existing[0]}: choose another --keep folder")
    tmp = None if args.keep is not None else tempfile.mkdtemp(prefix="default_targets_")
    root = args.keep if args.keep is not None else Path(tmp or ".")
    try:
        runs = {seed: run_seed(seed, root, args.rerun, args.overrides) for seed in seeds}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    host = host_description()
    print_results(runs, seeds, f"the embedded default at {head.stdout.strip()}", {s: host for s in seeds})


def print_results(runs: Mapping[int, Mapping[str, Any]], seeds: Sequence[int], title: str,
                  hosts: Mapping[int, Mapping[str, Any]]) -> None:
    """The table, each seed's stage-1 pace, the host (each seed's, when they differ) and everything as JSON."""
    rows = target_rows(runs)
    print(f"\n{title}, met targets in bold:\n")
    print(markdown_table(rows, seeds))
    paces = ", ".join(f"seed {s}: {runs[s]['timing'].get('stage1_images_per_s')}" for s in seeds)
    print(f"\nthe host's pace, stage 1's training images per second (the flow's time scales with it): {paces}")
    distinct = list({json.dumps(h, sort_keys=True): h for h in hosts.values()}.values())
    for host in distinct:
        which = "" if len(distinct) == 1 else " of seed " + ", ".join(str(s) for s in seeds if hosts[s] == host)
        print(f"the host{which}: " + ", ".join(f"{k} {v}" for k, v in host.items()))
    print(json.dumps({"default_targets": rows, "runs": {str(s): runs[s]["timing"] for s in seeds},
                      "hosts": {str(s): hosts[s] for s in seeds}}))


if __name__ == "__main__":
    main()
