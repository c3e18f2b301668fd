"""Temporary DVC workspaces for the integration tests: git + DVC + a local remote, fake or real stages."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

#: The medical / 3D sets that join training by default (``join_training``), as small as they go.
SMALL_JOINED_EXTENSIONS = [
    "extensions.medical.image_size=64",
    "extensions.medical.train_normal_per_modality=2",
    "extensions.medical.train_anomaly_per_modality=2",
    "extensions.threed.image_size=64",
    "extensions.threed.views=2",
    "extensions.threed.train_normal_per_shape=1",
    "extensions.threed.train_anomaly_per_shape=1",
    "extensions.threed.points_per_object=2000",
]

#: The smallest configuration the real stages accept: few images, one epoch, no extensions. Every image count
#: is set here, the training categories' own counts included (params.yaml draws 100 + 120 images for each of those,
#: which made a "tiny" workspace generate 454 images instead of 30).
TINY_OVERRIDES = [
    "data.synthetic.image_size=64",
    "data.synthetic.train_categories=[fabric, screw]",
    "data.synthetic.eval_categories=[pcb]",
    "data.synthetic.train_normal_per_category=4",
    "data.synthetic.test_normal_per_category=2",
    "data.synthetic.test_anomaly_per_category=4",
    "data.synthetic.training_normals_per_category=4",
    "data.synthetic.training_anomalies_per_category=4",
    "train.tower.epochs=1",
    "train.expert.tiny.epochs=1",
    "train.instruct.tiny.epochs=1",
    "train.instruct.tiny.text_warmup_epochs=1",  # the text-only phase still runs (the recipe's 3 epochs: 3 steps)
    "train.instruct.max_records=16",
    "evaluate.max_images=8",
    "evaluate.max_reasoning_items=2",
    "evaluate.reasoning=false",
    "evaluate.max_new_tokens=4",
    "evaluate.figures_per_kind=1",
    "extensions.medical.enabled=false",
    "extensions.threed.enabled=false",
    *SMALL_JOINED_EXTENSIONS,
    "registry.thresholds={}",
    "registry.min_images=1",  # the tiny benchmark above: 6 images
    "registry.min_per_label=1",
]


def run(argv: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check and done.returncode != 0:
        raise AssertionError(f"{argv} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def init_repo(root: Path) -> Path:
    """git init + dvc init + a local DVC remote beside the repo.

    DVC is initialised and configured through its Python API (what ``dvc init`` / ``dvc config`` / ``dvc remote
    add -d`` call), in this process: the same files, without importing DVC in four new processes per workspace
    (seconds each on 2 busy cores). The stages themselves still run through the ``dvc`` command.
    """
    from dvc.repo import Repo

    root.mkdir(parents=True, exist_ok=True)
    run(["git", "init", "-q", "-b", "main"], root)
    remote = root.parent / f"{root.name}-remote"
    repo = Repo.init(str(root))  # prints "Initialized DVC repository." (captured by pytest)
    try:
        with repo.config.edit() as conf:
            conf["core"]["analytics"] = "false"
            conf["core"]["autostage"] = "true"
            conf["remote"]["local"] = {"url": str(remote)}
            conf["core"]["remote"] = "local"
    finally:
        repo.close()
    return root


def commit_all(root: Path, message: str = "workspace") -> None:
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", message, "--allow-empty"], root)


def write_params(root: Path, overrides: list[str], base: Path | None = None) -> None:
    """params.yaml for the workspace: ``base`` (None = the built-in defaults) plus ``overrides``."""
    from anomaly_ov.config import dump_params, load_params

    dump_params(load_params(base, overrides), root / "params.yaml")


#: The stand-in workspace's settings on top of the built-in defaults.
FAKE_OVERRIDES = ["train.expert.tiny.epochs=1", "registry.model_name=fake"]


def make_fake_workspace(root: Path, overrides: list[str] = ()) -> Path:
    from fake_stages import FAKE_DVC_YAML

    init_repo(root)
    shutil.copy(Path(__file__).with_name("fake_stages.py"), root / "fake_stages.py")
    (root / "dvc.yaml").write_text(yaml.safe_dump(FAKE_DVC_YAML, sort_keys=False))
    write_params(root, [*FAKE_OVERRIDES, *overrides])
    (root / ".gitignore").write_text("/mlflow.db\n/mlruns/\n/reports/\ncrashed.flag\n")
    commit_all(root, "fake workspace")
    return root


def make_real_workspace(root: Path, overrides: list[str] = ()) -> Path:
    init_repo(root)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO_ROOT / "anomaly_ov", root / "anomaly_ov", ignore=skip)
    shutil.copy(REPO_ROOT / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(REPO_ROOT / ".dvcignore", root / ".dvcignore")
    shutil.copytree(REPO_ROOT / "data" / "instruct_sources", root / "data" / "instruct_sources")  # a dvc.yaml dep
    write_params(root, [*TINY_OVERRIDES, *overrides], base=REPO_ROOT / "params.yaml")
    (root / ".gitignore").write_text("/mlflow.db\n/mlruns/\n/reports/\n")
    commit_all(root, "real workspace")
    return root


def read_json(path: Path):
    return json.loads(path.read_text())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM the process group started with ``start_new_session``, SIGKILL it if it has not ended in 30 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
