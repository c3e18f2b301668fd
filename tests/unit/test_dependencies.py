"""Every third-party package the code imports is declared in pyproject.toml's dependencies (a scan of the imports)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("anomaly_ov", "tasks", "flows")  # what pyproject installs; tests and benchmarks may use dev extras


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_distributions(pyproject: Path) -> set[str]:
    """The distribution names of ``[project] dependencies`` and of the optional extras a user installs for a feature
    (e.g. ``deepspeed``; not ``dev``, which the package never imports), normalised as PEP 503 does."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    extras = [text for name, group in project.get("optional-dependencies", {}).items() if name != "dev"
              for text in group]
    return {_normalise(Requirement(text).name) for text in [*project["dependencies"], *extras]}


def imported_modules(root: Path) -> dict[str, set[str]]:
    """Top-level module -> files that import it, for every absolute import (lazy ones in functions included) of
    the installed packages, without the standard library and the project's own packages."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for file in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), str(file))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in PACKAGES:
                        found.setdefault(top, set()).add(str(file.relative_to(root)))
    return found


def undeclared_imports(root: Path) -> list[str]:
    """One line per imported module whose distribution is not a declared dependency."""
    declared = declared_distributions(root / "pyproject.toml")
    providers = packages_distributions()
    problems = []
    for module, files in sorted(imported_modules(root).items()):
        # an optional extra that is not installed here is known by its module's name only (deepspeed)
        distributions = {_normalise(d) for d in providers.get(module, [])} or {_normalise(module)}
        if not distributions & declared:
            where = ", ".join(sorted(files)[:3])
            problems.append(f"{module} (distribution {sorted(distributions) or 'not installed'}) imported by {where}")
    return problems


def test_every_imported_package_is_declared() -> None:
    problems = undeclared_imports(REPO)
    assert not problems, "imported but not in pyproject.toml's [project] dependencies:\n" + "\n".join(problems)


def test_the_scan_catches_an_undeclared_import(tmp_path: Path) -> None:
    """A copy of the project where one module lazily imports a package pyproject does not declare (the situation
    huggingface_hub, threadpoolctl and uvicorn were in), and one where a declared dependency is dropped."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
    (tmp_path / "anomaly_ov" / "a.py").write_text("import numpy as np\n\ndef f():\n    from packaging import version\n")
    (tmp_path / "flows" / "b.py").write_text("from anomaly_ov.a import f\nimport os\n")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["numpy>=2", "Packaging"]\n')
    assert undeclared_imports(tmp_path) == []
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["numpy>=2"]\n')
    assert undeclared_imports(tmp_path) == ["packaging (distribution ['packaging']) imported by anomaly_ov/a.py"]


def test_dvc_parses_its_files_with_the_c_yaml_parser() -> None:
    """DVC loads dvc.yaml and dvc.lock with ``YAML(typ="safe")`` (dvc.utils.serialize._yaml.parse_yaml), which takes
    ruamel.yaml's C parser when ruamel.yaml.clib is installed and its pure-Python parser otherwise (3-7 times slower
    on this project's files). A ruamel.yaml release that looks for the C parser elsewhere fails here."""
    from ruamel.yaml import YAML
    from ruamel.yaml.main import CParser

    assert CParser is not None, "ruamel.yaml.clib is not installed (a dependency in pyproject.toml)"
    assert YAML(typ="safe").Parser is CParser
