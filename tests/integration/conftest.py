"""Integration fixtures: Prefect's temporary server (once per session), DVC workspaces in temporary git repos.

- ``prefect_server``: ``prefect_test_harness`` started once for the whole session (12-17 s on 2 cores), with the
  flow heartbeat off (each flow call costs ~0.2 s instead of ~1.1 s).
- ``fake_workspace`` / ``make_workspace(kind, overrides)``: see workspaces.py (``kind="fake"``: the tiny stand-in
  stages of fake_stages.py; ``kind="real"``: the project's dvc.yaml and stages with a tiny params override).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the helper modules beside this file (workspaces, fake_stages)
from workspaces import make_fake_workspace, make_real_workspace  # noqa: E402


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}), prefect_test_harness(
        server_startup_timeout=120
    ):
        yield


@pytest.fixture
def fake_workspace(tmp_path: Path) -> Path:
    return make_fake_workspace(tmp_path / "ws")


@pytest.fixture
def make_workspace(tmp_path: Path) -> Callable[..., Path]:
    def build(kind: str = "fake", overrides: list[str] = (), name: str = "ws") -> Path:
        maker = make_fake_workspace if kind == "fake" else make_real_workspace
        return maker(tmp_path / name, list(overrides))

    return build

