"""The stage contract: dvc.yaml, the code deps and the params of each stage agree with what the stage really does.

- dvc.yaml is exactly what the declarations in anomaly_ov/stages.py render (``anomaly-ov dvc-yaml --check``).
- Code: every anomaly_ov module a stage's implementation imports, transitively, at module level or lazily inside a
  function, or names as a ``"module:function"`` string (the lazily imported reader/launcher registries), lies in one
  of the stage's declared code deps. Found with ``ast``, so nothing is imported or run.
- Params: running the stage on a tiny workspace with a recording ``Params`` (every field read is noted, through
  sub-sections handed to other functions too) reads nothing outside its declared params.

Each check is also shown to fail when one dependency is removed from a declaration.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import importlib.util
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from anomaly_ov import stages
from anomaly_ov.config import Params, _Section, load_params

# the stage runs behind the params checks are built once: keep the module on one xdist worker
pytestmark = pytest.mark.xdist_group("stage_contract")

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "anomaly_ov"
#: the module that declares and runs the stages is not a stage's code: editing a declaration changes dvc.yaml,
#: which DVC sees by itself.
BOUNDARY = {"anomaly_ov.stages"}
_MODULE_STRING = re.compile(r"^anomaly_ov(?:\.\w+)+(?::\w+)?$")


# --------------------------------------------------------------------------------------------------- dvc.yaml
def test_dvc_yaml_is_rendered_from_the_declarations():
    on_disk = (REPO / "dvc.yaml").read_text()
    assert on_disk == stages.render_dvc_yaml(), "dvc.yaml is stale: run `anomaly-ov dvc-yaml` and commit it"
    graph = yaml.safe_load(on_disk)["stages"]
    assert list(graph) == list(stages.STAGES)  # run order = declaration order
    for spec in stages.SPECS:
        entry = graph[spec.name]
        assert entry["cmd"] == f"anomaly-ov stage {spec.name}"
        assert entry.get("deps", []) == [*spec.code, *spec.deps]
        assert entry.get("params", []) == list(spec.params)


def test_every_declared_param_exists_in_params_yaml():
    """DVC refuses a stage whose params are missing from params.yaml ("Parameters ... are missing")."""
    defaults = load_params(None).to_dict()
    on_disk = yaml.safe_load((REPO / "params.yaml").read_text())

    def has(tree: Any, key: str) -> bool:
        for part in key.split("."):
            if not isinstance(tree, dict) or part not in tree:
                return False
            tree = tree[part]
        return True

    missing = [f"{s.name}: {p}" for s in stages.SPECS for p in s.params if not has(defaults, p)]
    assert missing == []
    assert [f"{s.name}: {p}" for s in stages.SPECS for p in s.params if not has(on_disk, p)] == []


def test_dvc_yaml_check_fails_with_a_diff_when_stale_and_the_command_rewrites_it(tmp_path):
    from anomaly_ov.cli import app

    stale = stages.render_dvc_yaml().replace("    - evaluate.resolution\n", "")
    (tmp_path / "dvc.yaml").write_text(stale)
    result = CliRunner().invoke(app, ["dvc-yaml", "--check", "--workspace", str(tmp_path)])
    assert result.exit_code == 1
    assert "+    - evaluate.resolution" in result.output and "is stale" in result.output
    assert (tmp_path / "dvc.yaml").read_text() == stale  # --check writes nothing
    assert CliRunner().invoke(app, ["dvc-yaml", "--workspace", str(tmp_path)]).exit_code == 0
    assert (tmp_path / "dvc.yaml").read_text() == stages.render_dvc_yaml()
    assert CliRunner().invoke(app, ["dvc-yaml", "--check", "--workspace", str(tmp_path)]).exit_code == 0


def test_every_derived_list_comes_from_the_declarations():
    from anomaly_ov import orchestration as orch
    from anomaly_ov.train import launch

    assert orch.PIPELINE_STAGES + orch.EXTENSION_STAGES + (orch.REGISTER_STAGE,) == stages.STAGES
    assert {s.name: s.implementation for s in stages.SPECS if s.launchable} == launch.TARGETS
    params = load_params(None)
    reports = orch.stage_reports(params)
    assert list(reports) == list(stages.STAGES)
    for spec in stages.SPECS:  # the summarised report is one of the files the stage declares
        declared = {o.path for o in spec.outs} | set(spec.metrics)
        assert reports[spec.name] in declared, spec.name


# ----------------------------------------------------------------------------------------------------- code
def _module_file(module: str) -> Path | None:
    base = REPO / Path(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


@functools.cache
def imported_modules(module: str) -> frozenset[str]:
    """The anomaly_ov modules ``module`` imports anywhere (lazily too), with their parent packages."""
    path = _module_file(module)
    assert path is not None, module
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    skipped = _type_checking_nodes(tree)
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            names |= {base, *(f"{base}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_STRING.match(node.value):
            names.add(node.value.partition(":")[0])  # "module:function" registries imported with importlib
    found = set()
    for name in names:
        if name.split(".")[0] != PACKAGE or _module_file(name) is None:
            continue
        parts = name.split(".")
        found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return frozenset(found)


def code_closure(module: str) -> set[str]:
    """Every anomaly_ov module that running ``module`` may import, as repository-relative file paths."""
    parts = module.split(".")
    todo = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    seen: set[str] = set()
    while todo:
        current = todo.pop()
        if current in seen or current in BOUNDARY:
            continue
        seen.add(current)
        todo += sorted(imported_modules(current) - seen)
    return {str(_module_file(m).relative_to(REPO)) for m in seen}


def uncovered_code(spec: stages.StageSpec) -> list[str]:
    """Files the stage runs that none of its code deps (a file, or a folder above it) covers."""
    def covered(path: str) -> bool:
        return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in spec.code)

    return sorted(p for p in code_closure(spec.module) if not covered(p))


@pytest.mark.parametrize("name", stages.STAGES)
def test_code_deps_cover_every_module_the_stage_imports(name):
    spec = stages.spec(name)
    closure = code_closure(spec.module)
    assert len(closure) >= 5, closure  # the walk followed imports (not an empty scan)
    assert uncovered_code(spec) == [], f"add these to the code deps of {name!r} in anomaly_ov/stages.py"
    for dep in spec.code:
        assert (REPO / dep).exists(), f"{name}: code dep {dep} does not exist"


def test_the_import_walk_sees_lazy_imports_and_registries():
    expert = code_closure("anomaly_ov.train.expert")
    assert "anomaly_ov/evaluate/metrics.py" in expert  # imported inside a function of train/expert.py
    assert "anomaly_ov/stages.py" not in expert
    assert "anomaly_ov/data/sources/mvtec.py" in code_closure("anomaly_ov.data.prepare")  # data.sources.READERS


def test_removing_a_code_dep_breaks_the_contract():
    spec = stages.spec("train_expert")
    cut = dataclasses.replace(spec, code=tuple(c for c in spec.code if c != "anomaly_ov/evaluate/metrics.py"))
    assert uncovered_code(cut) == ["anomaly_ov/evaluate/metrics.py"]
    folder = dataclasses.replace(spec, code=tuple(c for c in spec.code if c != "anomaly_ov/model"))
    assert "anomaly_ov/model/expert.py" in uncovered_code(folder)


# --------------------------------------------------------------------------------------------------- params
def _field_key(section: _Section, name: str) -> str:
    info = type(section).model_fields[name]
    return info.alias or name


def _section_paths(section: Any, prefix: str, paths: dict[int, str]) -> None:
    if not isinstance(section, _Section):
        return
    paths[id(section)] = prefix
    for name in type(section).model_fields:
        value = section.__dict__[name]
        key = f"{prefix}.{_field_key(section, name)}" if prefix else _field_key(section, name)
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else [value]
        for item in items:
            _section_paths(item, key, paths)


@contextmanager
def recording_reads(params: Params) -> Iterator[set[str]]:
    """Note every leaf param of ``params`` that is read (``train.expert.lr``), through sub-sections too."""
    paths: dict[int, str] = {}
    _section_paths(params, "", paths)
    reads: set[str] = set()
    original = _Section.__getattribute__

    def spy(self: Any, name: str) -> Any:
        value = original(self, name)
        prefix = paths.get(id(self))
        if prefix is not None and name in type(self).model_fields and not isinstance(value, _Section):
            key = _field_key(self, name)
            reads.add(f"{prefix}.{key}" if prefix else key)
        return value

    _Section.__getattribute__ = spy  # type: ignore[method-assign]
    try:
        yield reads
    finally:
        _Section.__getattribute__ = original  # type: ignore[method-assign]


def undeclared_params(spec: stages.StageSpec, reads: set[str]) -> list[str]:
    allowed = (*spec.params, *stages.UNTRACKED_PARAMS)
    return sorted(r for r in reads if not any(r == d or r.startswith(d + ".") for d in allowed))


def _train_fixtures() -> Any:
    path = REPO / "tests" / "unit" / "train" / "conftest.py"
    module_spec = importlib.util.spec_from_file_location("_train_fixtures", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train_expert_run(tmp_path_factory) -> tuple[set[str], Path]:
    """Stage 1 on a tiny workspace (one short epoch): the params it read, and the workspace."""
    fixtures = _train_fixtures()
    workspace = fixtures.make_workspace(tmp_path_factory.mktemp("contract"), per_label=2)
    params = fixtures.tiny_params("train.expert.tiny.epochs=1")
    with recording_reads(params) as reads:
        stages.implementation("train_expert")(params, workspace)
    return set(reads), workspace


@pytest.fixture(scope="module")
def train_expert_reads(train_expert_run) -> set[str]:
    return train_expert_run[0]


@pytest.mark.slow
def test_train_expert_declares_every_param_it_reads(train_expert_reads):
    assert "evaluate.resolution" in train_expert_reads  # the mask size of the validation metrics
    assert "train.expert.tiny.epochs" in train_expert_reads  # read through the recipe handed to the loop
    assert undeclared_params(stages.spec("train_expert"), train_expert_reads) == []


@pytest.mark.slow
def test_train_expert_writes_its_declared_plots(train_expert_run):
    workspace = train_expert_run[1]
    for plot in stages.spec("train_expert").plots:
        lines = (workspace / plot.path).read_text().splitlines()
        assert lines[0] == f"{plot.x},{plot.y}" and len(lines) >= 2, plot.path  # a header and at least one point


@pytest.mark.slow
def test_removing_a_param_from_a_declaration_breaks_the_contract(train_expert_reads):
    spec = stages.spec("train_expert")
    cut = dataclasses.replace(spec, params=tuple(p for p in spec.params if p != "evaluate.resolution"))
    assert undeclared_params(cut, train_expert_reads) == ["evaluate.resolution"]


@pytest.fixture(scope="module")
def data_stage_reads(tmp_path_factory) -> dict[str, set[str]]:
    """prepare (tiny synthetic set) then validate on it: the params each read."""
    workspace = tmp_path_factory.mktemp("contract-data")
    params = load_params(None, [
        "tracking.enabled=false", "data.synthetic.image_size=32", "data.synthetic.train_categories=[fabric]",
        "data.synthetic.eval_categories=[pcb]", "data.synthetic.train_normal_per_category=2",
        "data.synthetic.test_normal_per_category=1", "data.synthetic.test_anomaly_per_category=1",
        "data.synthetic.training_normals_per_category=2", "data.synthetic.training_anomalies_per_category=2",
        "validate.min_images_per_category=1",
        # the extensions that join training, at their smallest (their code paths and params are the same)
        "extensions.medical.image_size=32", "extensions.medical.train_normal_per_modality=1",
        "extensions.medical.train_anomaly_per_modality=1", "extensions.threed.image_size=32",
        "extensions.threed.views=2", "extensions.threed.points_per_object=500",
        "extensions.threed.train_normal_per_shape=1", "extensions.threed.train_anomaly_per_shape=1",
    ])
    reads: dict[str, set[str]] = {}
    for name in ("prepare", "validate"):
        # a tiny set may fail a check; the params the stage read are what matters
        with recording_reads(params) as seen, contextlib.suppress(stages.StageFailed):
            stages.implementation(name)(params, workspace)
        reads[name] = set(seen)
    return reads


@pytest.mark.slow
@pytest.mark.parametrize("name", ["prepare", "validate"])
def test_data_stages_declare_every_param_they_read(data_stage_reads, name):
    assert len(data_stage_reads[name]) >= 3  # the recorder saw the stage's reads
    assert undeclared_params(stages.spec(name), data_stage_reads[name]) == []


def test_the_recorder_follows_sub_sections_and_aliases():
    params = load_params(None)
    with recording_reads(params) as reads:
        recipe = params.expert_recipe  # a property: reads model.preset, returns a section
        _ = recipe.lr, params.validation.max_image_side
    assert reads == {"model.preset", "train.expert.tiny.lr", "validate.max_image_side"}
    _ = params.seed  # outside the block: not recorded
    assert "seed" not in reads


# ---------------------------------------------------------------------------------------------------- outputs
def test_prepare_writes_every_declared_output_with_the_generator_off(tmp_path):
    """data/raw/synthetic and the extensions' training folders are declared outputs of prepare: DVC fails a stage
    that leaves one missing, so a switched-off generator still leaves its (empty) folder."""
    from hostile import write_mask, write_png

    category = tmp_path / "ds" / "widget"
    for i in range(2):
        write_png(category / "train" / "good" / f"{i}.png")
        write_png(category / "test" / "good" / f"{i}.png")
    write_png(category / "test" / "crack" / "0.png")
    write_mask(category / "ground_truth" / "crack" / "0_mask.png")
    params = load_params(None, ["data.synthetic.enabled=false", "tracking.enabled=false",
                                "extensions.medical.join_training=false", "extensions.threed.join_training=false",
                                "data.sources=[{name: mine, format: mvtec, path: ds, role: eval}]"])
    stages.implementation("prepare")(params, tmp_path)
    missing = [o.path for o in stages.spec("prepare").outs if not (tmp_path / o.path).exists()]
    assert missing == []


# ------------------------------------------------------------------------------------------------------- docs
def test_the_architecture_page_shows_the_current_stage_table():
    page = (REPO / "docs" / "architecture.md").read_text()
    shown = page.split("<!-- stage-table:begin -->\n")[1].split("<!-- stage-table:end -->")[0]
    wanted = stages.render_stage_table()
    assert shown == wanted, f"replace the table in docs/architecture.md with:\n{wanted}"


# ------------------------------------------------------------------------------------------- dependency rule
#: modules that may read the stage declarations (the plots a stage declares, its launchable stages)
_READS_DECLARATIONS = {"anomaly_ov.plots", "anomaly_ov.train.launch"}
_UPPER = {"anomaly_ov.stages", "anomaly_ov.orchestration", "anomaly_ov.cli", "anomaly_ov.commands"}


def test_domain_modules_import_nothing_above_them():
    """flows -> tasks -> stages/orchestration -> domain: a domain module imports none of those (lazily neither)."""
    wrong = []
    for path in sorted((REPO / PACKAGE).rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        if any(module == upper or module.startswith(upper + ".") for upper in _UPPER):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                top = name.split(".")[0]
                above = top in ("tasks", "flows", "prefect") or any(
                    name == upper or name.startswith(upper + ".") for upper in _UPPER)
                if above and not (name == "anomaly_ov.stages" and module in _READS_DECLARATIONS):
                    wrong.append(f"{module} imports {name}")
    assert wrong == []


def _module_file(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _defined_and_imported(path: Path) -> tuple[set[str], set[str]]:
    """Names a module defines (functions, classes, assignments) and names it only imports."""
    defined, imported = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            imported.update(a.asname or a.name.split(".")[0] for a in node.names)
    return defined, imported - defined


def relayed_imports(roots: list[Path]) -> list[str]:
    """``from M import name`` where module M (not a package's ``__init__``, which may be its package's face) only
    imports ``name`` from its owner: the importer should name the owner."""
    wrong: list[str] = []
    seen: dict[Path, set[str]] = {}
    for path in sorted(p for root in roots for p in root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.module and not node.level
                    and node.module.split(".")[0] in ("anomaly_ov", "flows", "tasks")):
                continue
            source = _module_file(node.module)
            if source is None or source.name == "__init__.py":
                continue
            if source not in seen:
                seen[source] = _defined_and_imported(source)[1]
            where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
            wrong += [f"{where}:{node.lineno} takes {alias.name} from {node.module}"
                      for alias in node.names if alias.name in seen[source]]
    return wrong


def test_project_code_imports_names_from_their_owners():
    """flows, tasks and anomaly_ov import a name from the module that defines it, not from one that relays it
    (``orchestration.start_tracking`` is ``tracking``'s)."""
    assert relayed_imports([REPO / "anomaly_ov", REPO / "flows", REPO / "tasks"]) == []


def test_the_owner_scan_catches_a_relayed_import(tmp_path):
    caller = REPO / "anomaly_ov" / "commands" / "serve.py"
    text = caller.read_text()
    assert "from anomaly_ov.tracking import start_tracking" in text
    relayed = tmp_path / "serve.py"
    relayed.write_text(text.replace("from anomaly_ov.tracking import start_tracking",
                                    "from anomaly_ov.orchestration import start_tracking"))
    assert any("takes start_tracking from anomaly_ov.orchestration" in w for w in relayed_imports([tmp_path]))
