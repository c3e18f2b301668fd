"""Integration fixtures: Prefect's temporary server (once per session), DVC workspaces in temporary git repos.

- ``prefect_server``: ``prefect_test_harness`` started once for the whole session (12-17 s on 2 cores), with the
  flow heartbeat off (each flow call costs ~0.2 s instead of ~1.1 s).
- ``make_workspace(kind)``: a git + DVC repository with a local DVC remote; ``kind="fake"`` uses the tiny
  stand-in stages of ``fake_stages.py``; ``kind="real"`` copies the project's dvc.yaml, params.yaml (with a tiny
  override) and the ``anomaly_ov`` sources the stages depend on.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

#: The smallest configuration the real stages accept: few images, one epoch, no extensions.
TINY_OVERRIDES = [
    "data.synthetic.image_size=64",
    "data.synthetic.train_categories=[fabric, screw]",
    "data.synthetic.eval_categories=[pcb]",
    "data.synthetic.train_normal_per_category=4",
    "data.synthetic.test_normal_per_category=2",
    "data.synthetic.test_anomaly_per_category=4",
    "train.expert.tiny.epochs=1",
    "train.instruct.tiny.epochs=1",
    "train.instruct.max_records=16",
    "evaluate.max_images=8",
    "evaluate.max_reasoning_items=2",
    "evaluate.max_new_tokens=4",
    "evaluate.figures_per_kind=1",
    "extensions.medical.enabled=false",
    "extensions.threed.enabled=false",
    "registry.thresholds={}",
]


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}), prefect_test_harness(
        server_startup_timeout=120
    ):
        yield


def run(argv: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**__import__("os").environ, "PATH": f"{BIN}:{__import__('os').environ.get('PATH', '')}"}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check and done.returncode != 0:
        raise AssertionError(f"{argv} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def init_repo(root: Path) -> Path:
    """git init + dvc init + a local DVC remote beside the repo."""
    root.mkdir(parents=True, exist_ok=True)
    run(["git", "init", "-q", "-b", "main"], root)
    run([str(BIN / "dvc"), "init", "-q"], root)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], root)
    run([str(BIN / "dvc"), "config", "core.autostage", "true"], root)
    remote = root.parent / f"{root.name}-remote"
    run([str(BIN / "dvc"), "remote", "add", "-d", "local", str(remote)], root)
    return root


def commit_all(root: Path, message: str = "workspace") -> None:
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", message, "--allow-empty"], root)


def write_params(root: Path, overrides: list[str], base: Path | None = None) -> None:
    from anomaly_ov.config import dump_params, load_params

    dump_params(load_params(base or (REPO_ROOT / "params.yaml"), overrides), root / "params.yaml")


def make_fake_workspace(root: Path, overrides: list[str] = ()) -> Path:
    from fake_stages import FAKE_DVC_YAML

    init_repo(root)
    shutil.copy(Path(__file__).with_name("fake_stages.py"), root / "fake_stages.py")
    (root / "dvc.yaml").write_text(yaml.safe_dump(FAKE_DVC_YAML, sort_keys=False))
    write_params(root, ["train.expert.tiny.epochs=1", "registry.model_name=fake", *overrides])
    (root / ".gitignore").write_text("/mlflow.db\n/mlruns/\n/reports/\ncrashed.flag\n")
    commit_all(root, "fake workspace")
    return root


def make_real_workspace(root: Path, overrides: list[str] = ()) -> Path:
    init_repo(root)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO_ROOT / "anomaly_ov", root / "anomaly_ov", ignore=skip)
    shutil.copy(REPO_ROOT / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(REPO_ROOT / ".dvcignore", root / ".dvcignore")
    write_params(root, [*TINY_OVERRIDES, *overrides])
    (root / ".gitignore").write_text("/mlflow.db\n/mlruns/\n/reports/\n")
    commit_all(root, "real workspace")
    return root


@pytest.fixture
def fake_workspace(tmp_path: Path) -> Path:
    return make_fake_workspace(tmp_path / "ws")


@pytest.fixture
def make_workspace(tmp_path: Path) -> Callable[..., Path]:
    def build(kind: str = "fake", overrides: list[str] = (), name: str = "ws") -> Path:
        maker = make_fake_workspace if kind == "fake" else make_real_workspace
        return maker(tmp_path / name, list(overrides))

    return build


def read_json(path: Path):
    return json.loads(path.read_text())
