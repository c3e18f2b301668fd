"""The pipeline's stages: one declaration each, and the one way to run a stage.

A stage is declared once, as a :class:`StageSpec` in :data:`SPECS` (run order = declaration order). Everything
else is derived from the declarations: :data:`STAGES` (the CLI's choices), the launch targets of multi-process
training (:func:`launch_targets`), the flow's stage lists (:func:`stage_names`), the report each stage's Prefect
artifact shows (:meth:`StageSpec.report_path`) and ``dvc.yaml`` itself (:func:`render_dvc_yaml`, written by
``anomaly-ov dvc-yaml``). ``tests/unit/test_stage_contract.py`` checks that ``dvc.yaml`` is current, that every
anomaly_ov module a stage imports is among its code deps, and that every param it reads is declared.

Each stage function has the signature ``(params, workspace) -> summary``: it reads :class:`~anomaly_ov.config.Params`
and its inputs from disk under ``workspace``, writes its outputs there (atomically), and returns a small JSON-able
summary. The work lives in the domain packages; this module names the stages, runs one inside its MLflow run
(:func:`run_stage`) and, for ``anomaly-ov stage NAME``, records the outcome in a result file
(:func:`execute`; schema in ``docs/architecture.md``) that the orchestration reads instead of the process output.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from anomaly_ov.errors import AnomalyOVError, ConfigError, StageFailed, failing_items

if TYPE_CHECKING:
    from anomaly_ov.config import Params

__all__ = [
    "RESULT_DIR",
    "SPECS",
    "STAGES",
    "Out",
    "Plot",
    "StageFailed",
    "StageSpec",
    "execute",
    "implementation",
    "launch_targets",
    "new_record",
    "finish_record",
    "read_result",
    "write_result",
    "render_dvc_yaml",
    "render_stage_table",
    "result_path",
    "run_stage",
    "spec",
    "stage_names",
]

Summary = dict[str, Any]
StageKind = Literal["pipeline", "extension", "register"]

#: Where ``anomaly-ov stage NAME`` writes ``NAME.result.json`` (relative to the workspace; not a DVC output).
RESULT_DIR = "reports/stages"
#: Set by the orchestration for each ``dvc repro``; the stage copies it into its result file, so the caller knows
#: the file was written by the run it started (DVC skipped the stage when no result carries it).
INVOCATION_ENV = "ANOMALY_OV_STAGE_INVOCATION"
#: Sections a stage may read without declaring them: they decide where runs are logged, when stages run and on which
#: machines (train.launch: node count, this node's rank, the rendezvous; ``parallel``: how many Dask workers, the
#: outputs are the same bytes), never what a stage writes (the contract test exempts them).
UNTRACKED_PARAMS: tuple[str, ...] = ("tracking", "schedule", "train.launch", "parallel")
#: A result file larger than this is not read (a record is a few kB: the failing list is capped).
MAX_RESULT_BYTES = 4 * 1024 * 1024


# ----------------------------------------------------------------------------------------------- declarations
@dataclass(frozen=True)
class Out:
    """A DVC output: ``cache=False`` keeps it in git instead of the DVC cache; ``persist`` keeps it across runs."""

    path: str
    cache: bool = True
    persist: bool = False


@dataclass(frozen=True)
class Plot:
    """A DVC plot: a CSV/JSON file of records, drawn as ``y`` over ``x`` by ``dvc plots show``."""

    path: str
    x: str
    y: str


@dataclass(frozen=True)
class StageSpec:
    """Everything about one stage, in one place.

    Args:
        name: the stage's name (``anomaly-ov stage NAME``, the DVC stage, the Prefect task).
        implementation: ``"module:function"`` with the signature ``(params, workspace) -> summary``; imported lazily.
        description: one line for people (dvc.yaml comment, docs, ``--help``).
        params: the params.yaml keys (dotted) the stage reads; DVC re-runs it when one changes.
        code: the anomaly_ov files/folders it runs (every module its implementation imports, transitively).
        deps: the data it reads (other stages' outputs, datasets); ``${...}`` interpolates params.yaml.
        outs: what it writes.
        metrics: JSON reports it writes (DVC metrics, kept out of the cache).
        plots: curves it writes (DVC plots, kept out of the cache).
        report: the file its Prefect artifact summarises; ``{section.key}`` is replaced by that param's value.
        kind: ``pipeline`` (every flow run), ``extension`` (when enabled in params) or ``register`` (last).
        launchable: training that can re-launch itself under torchrun (``anomaly_ov.train.launch``).
        always_changed: DVC runs it on every ``repro`` (e.g. hashing datasets outside the workspace).
    """

    name: str
    implementation: str
    description: str
    params: tuple[str, ...] = ()
    code: tuple[str, ...] = ()
    deps: tuple[str, ...] = ()
    outs: tuple[Out, ...] = ()
    metrics: tuple[str, ...] = ()
    plots: tuple[Plot, ...] = ()
    report: str = ""
    kind: StageKind = "pipeline"
    launchable: bool = False
    always_changed: bool = False

    @property
    def module(self) -> str:
        return self.implementation.partition(":")[0]

    def function(self) -> Callable[[Params, Path], Summary]:
        """The stage function, imported now."""
        module, _, func = self.implementation.partition(":")
        return getattr(importlib.import_module(module), func)

    def report_path(self, params: Params) -> str:
        """The report file (relative to the workspace) with ``{section.key}`` placeholders filled from params."""
        import re

        return re.sub(r"\{([\w.]+)\}", lambda m: str(_param(params, m[1])), self.report)


def _param(params: Any, dotted: str) -> Any:
    value = params
    for key in dotted.split("."):
        value = getattr(value, "validate_" if key == "validate" else key)
    return value


#: anomaly_ov modules that nearly every stage runs (config, its vocabularies and errors, file and path helpers,
#: logging and progress).
_CORE = ("anomaly_ov/__init__.py", "anomaly_ov/choices.py", "anomaly_ov/config.py", "anomaly_ov/console.py",
         "anomaly_ov/errors.py", "anomaly_ov/io.py", "anomaly_ov/paths.py")
#: the Dask fan-out of the data stages (params.parallel).
_FANOUT = ("anomaly_ov/parallel.py",)
_IMAGES = ("anomaly_ov/data/__init__.py", "anomaly_ov/data/images.py", "anomaly_ov/data/manifest.py")
_READERS = ("anomaly_ov/data/sources", "anomaly_ov/data/medical.py", "anomaly_ov/data/pointcloud.py")
_MODEL = ("anomaly_ov/model", "anomaly_ov/tracking.py")
_TRAIN = ("anomaly_ov/train", "anomaly_ov/data/loaders.py", "anomaly_ov/plots.py", "anomaly_ov/shutdown.py")
#: the conversations' special tokens (``<image>``) are the model tokenizer's
_TOKENS = ("anomaly_ov/model/__init__.py", "anomaly_ov/model/tokenizer.py")
_INSTRUCT_FACTS = tuple(f"anomaly_ov/instruct/{name}" for name in (
    "__init__.py", "answers.py", "knowledge.py", "knowledge", "regions.py", "synthesize.py", "visual.py")) + _TOKENS
_INSTRUCT_CHECKS = ("anomaly_ov/instruct/validate.py", "anomaly_ov/validate/__init__.py", "anomaly_ov/validate/gx.py",
                    "anomaly_ov/validate/report.py")
_EVALUATE = ("anomaly_ov/evaluate", "anomaly_ov/fingerprint.py", "anomaly_ov/llm_client.py")
_EXTENSION_DATA = ("anomaly_ov/data/extensions.py", "anomaly_ov/data/medical.py", "anomaly_ov/data/pointcloud.py")


#: what prepare reads of the extensions' sections: the medical modalities and 3D shapes that join training
_TRAINING_EXTENSIONS = tuple(
    [f"extensions.medical.{k}" for k in ("join_training", "train_modalities", "train_normal_per_modality",
                                         "train_anomaly_per_modality", "train_out_dir", "image_size")]
    + [f"extensions.threed.{k}" for k in ("join_training", "train_shapes", "train_normal_per_shape",
                                          "train_anomaly_per_shape", "train_out_dir", "views", "image_size",
                                          "points_per_object")])
#: prepare's outputs beside data/raw/synthetic: images the training stages read through the manifest
_EXTENSION_TRAIN_DIRS = ("data/raw/medical_train", "data/raw/3d_train")
_TRAINING_IMAGES = ("data/raw/synthetic", *_EXTENSION_TRAIN_DIRS)


def _code(*groups: Sequence[str]) -> tuple[str, ...]:
    """The paths of ``groups`` once each, leaving out files inside a listed folder (DVC hashes the folder)."""
    paths = list(dict.fromkeys(path for group in groups for path in group))
    folders = [p for p in paths if not p.endswith(".py")]
    return tuple(p for p in paths if not any(p != f and p.startswith(f + "/") for f in folders))


def _extension(section: str, name: str, data_dir: str, description: str) -> StageSpec:
    """An extension stage: the trained model evaluated on the ``extensions.<section>`` set it converts into
    ``data_dir``; its benchmark, figures and report are named after the stage's suffix (``extend_3d`` -> ``3d``)."""
    short = name.removeprefix("extend_")
    return StageSpec(
        name=name,
        implementation=f"anomaly_ov.evaluate.extensions:run_{name}",
        description=description,
        params=("seed", "model", "train.instruct.output_dir", "instruct", "evaluate",
                f"extensions.{section}", "extensions.report_dir", "validate.max_image_side"),
        code=_code(_CORE, _FANOUT, _IMAGES, _MODEL, _EVALUATE, _READERS, _EXTENSION_DATA, _INSTRUCT_FACTS,
                   ("anomaly_ov/instruct/benchmark.py",)),
        deps=("models/anomaly_ov",),
        outs=(Out(data_dir), Out(f"data/extensions/{short}"), Out(f"reports/extensions/figures/{short}", cache=False)),
        metrics=(f"reports/extensions/{short}.json",),
        report=f"{{extensions.report_dir}}/{short}.json",
        kind="extension",
    )


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="sources",
        implementation="anomaly_ov.data.prepare:run_sources",
        description="Hash every dataset listed in params (they may live outside the workspace, where DVC does not "
                    "look); runs on every repro and makes prepare stale when their content changed.",
        params=("data.sources", "data.synthetic.enabled", "data.synthetic.out_dir"),
        code=_code(_CORE, _FANOUT, ("anomaly_ov/data",)),
        outs=(Out("data/sources.fingerprint.json"),),
        report="data/sources.fingerprint.json",
        always_changed=True,
    ),
    StageSpec(
        name="prepare",
        implementation="anomaly_ov.data.prepare:run_prepare",
        description="Generate the synthetic datasets (when enabled) and read every source into data/manifest.parquet.",
        # the medical / 3D sets that join training (their own folders; the extension stages evaluate others)
        params=("seed", "data", *_TRAINING_EXTENSIONS),
        code=_code(_CORE, _FANOUT, ("anomaly_ov/data",)),
        deps=("data/sources.fingerprint.json",),
        outs=(Out("data/raw/synthetic"), *(Out(d) for d in _EXTENSION_TRAIN_DIRS), Out("data/manifest.parquet")),
        report="{data.manifest}",
    ),
    StageSpec(
        name="validate",
        implementation="anomaly_ov.validate.run:run_validate",
        description="Check the manifest and every file it names (Great Expectations + per-file checks); a critical "
                    "failure stops the pipeline.",
        params=("data.manifest", "data.sources", "validate"),
        code=_code(_CORE, _FANOUT, _IMAGES, _READERS, ("anomaly_ov/validate",)),
        deps=("data/manifest.parquet", *_TRAINING_IMAGES),
        outs=(Out("reports/validation.md", cache=False),),
        metrics=("reports/validation.json",),
        report="{validate.report_json}",
    ),
    StageSpec(
        name="synthesize",
        implementation="anomaly_ov.instruct.run:run_synthesize",
        description="Turn masks into region facts and LLaVA conversations (data/instruct) and build the VisA-D&R "
                    "style benchmark (data/bench).",
        params=("seed", "data.manifest", "instruct", "model.preset"),
        code=_code(_CORE, _FANOUT, _IMAGES,
                   ("anomaly_ov/instruct", "anomaly_ov/llm_client.py", "anomaly_ov/tracking.py"), _INSTRUCT_CHECKS,
                   _TOKENS),
        deps=("data/manifest.parquet", *_TRAINING_IMAGES, "reports/validation.json"),
        outs=(Out("data/instruct"), Out("data/bench")),
        metrics=("reports/instruct.json", "reports/instruct_validation.json"),
        report="{instruct.report}",
    ),
    StageSpec(
        name="pretrain_tower",
        implementation="anomaly_ov.train.pretrain_tower:run_pretrain_tower",
        description="Tiny preset: train the vision tower and a small text side on image-caption pairs (object, "
                    "defect, where, how large) with a sigmoid loss; stage 1 starts from the tower. Pretrained presets "
                    "skip it.",
        params=("data.manifest", "model", "train.seed", "train.tower", "train.expert.val_fraction",
                "train.expert.cache_mb"),
        code=_code(_CORE, _IMAGES, _MODEL, _TRAIN, ("anomaly_ov/data/synthetic.py", "anomaly_ov/evaluate/__init__.py",
                                                   "anomaly_ov/evaluate/metrics.py")),
        deps=("data/manifest.parquet", *_TRAINING_IMAGES, "reports/validation.json"),
        outs=(Out("models/tower"),),
        metrics=("reports/pretrain_tower.json",),
        report="{train.tower.report}",
    ),
    StageSpec(
        name="train_expert",
        implementation="anomaly_ov.train.expert:run_train_expert",
        description="Stage 1: train the LTFM anomaly expert (and, for the tiny preset, the vision tower).",
        params=("seed", "data.manifest", "model", "train.seed", "train.expert", "evaluate.resolution",
                "train.tower.enabled", "train.tower.output_dir"),
        code=_code(_CORE, _IMAGES, _MODEL, _TRAIN, ("anomaly_ov/data/synthetic.py", "anomaly_ov/evaluate/__init__.py",
                                                   "anomaly_ov/evaluate/metrics.py")),
        deps=("data/manifest.parquet", *_TRAINING_IMAGES, "reports/validation.json", "models/tower"),
        outs=(Out("models/expert"),),
        metrics=("reports/train_expert.json",),
        # not under reports/curves/: evaluate replaces that folder as a whole
        plots=(Plot("reports/training/train_expert_loss.csv", x="step", y="loss"),
               Plot("reports/training/train_expert_val.csv", x="epoch", y="image_auroc")),
        report="{train.expert.report}",
        launchable=True,
    ),
    StageSpec(
        name="train_instruct",
        implementation="anomaly_ov.train.instruct:run_train_instruct",
        description="Stage 2: instruction tuning of the projector and the LLM with the expert frozen.",
        params=("seed", "model", "train.seed", "train.expert.output_dir", "train.instruct",
                "instruct.train_json", "instruct.validation_json", "instruct.sources_root", "instruct.sources",
                "instruct.use_synthesized", "instruct.dilate_px", "instruct.merge_distance_px",
                "instruct.knowledge_path", "instruct.workers"),
        code=_code(_CORE, _IMAGES, _MODEL, _TRAIN, _INSTRUCT_FACTS, _INSTRUCT_CHECKS,
                   ("anomaly_ov/instruct/sources.py",)),
        # the released instruction sets of instruct.sources all lie in this folder (params.yaml), so DVC sees them
        deps=("data/instruct", *_TRAINING_IMAGES, "models/expert", "${instruct.sources_root}"),
        outs=(Out("models/anomaly_ov"),),
        metrics=("reports/train_instruct.json",),
        plots=(Plot("reports/training/train_instruct_loss.csv", x="step", y="loss"),),
        report="{train.instruct.report}",
        launchable=True,
    ),
    StageSpec(
        name="evaluate",
        implementation="anomaly_ov.evaluate.run:run_evaluate",
        description="Zero-shot detection, localisation and reasoning on the held-out benchmark; metrics, figures, "
                    "predictions and evaluation.md.",
        params=("model", "train.instruct.output_dir", "instruct.bench_dir", "evaluate",
                "validate.max_image_side"),
        code=_code(_CORE, _FANOUT, ("anomaly_ov/data/__init__.py", "anomaly_ov/data/images.py"), _MODEL, _EVALUATE),
        deps=("data/bench", "data/raw/synthetic", "models/anomaly_ov"),
        outs=(Out("reports/predictions.parquet"), Out("reports/evaluation.md", cache=False),
              Out("reports/figures", cache=False)),
        metrics=("reports/metrics.json",),
        plots=(Plot("reports/curves/roc.csv", x="fpr", y="tpr"), Plot("reports/curves/pro.csv", x="fpr", y="pro"),
               Plot("reports/curves/pr.csv", x="recall", y="precision")),
        report="{evaluate.metrics}",
    ),
    _extension("medical", "extend_medical", data_dir="data/raw/medical",
               description="The same model on a medical set (BMAD layout or the generated one)."),
    _extension("threed", "extend_3d", data_dir="data/raw/3d",
               description="The same model on multi-view renders of point clouds (MVTec 3D-AD, Real3D-AD, "
                           "Anomaly-ShapeNet)."),
    StageSpec(
        name="register",
        implementation="anomaly_ov.registry:run_register",
        description="Log the model to MLflow as a new version with alias `candidate`; the promotion gate moves it "
                    "to staging or production.",
        # extensions.report_dir: a threshold on an extension metric reads that stage's report
        params=("registry", "tracking", "train.instruct.output_dir", "evaluate.metrics", "extensions.report_dir"),
        code=_code(_CORE, _IMAGES, _MODEL, ("anomaly_ov/data", "anomaly_ov/registry.py", "anomaly_ov/serving.py",
                                            "anomaly_ov/fingerprint.py", "anomaly_ov/orchestration.py")),
        deps=("models/anomaly_ov", "reports/metrics.json"),
        metrics=("reports/register.json",),
        report="{registry.report}",
        kind="register",
    ),
)

STAGES: tuple[str, ...] = tuple(s.name for s in SPECS)
_BY_NAME: dict[str, StageSpec] = {s.name: s for s in SPECS}


def spec(name: str) -> StageSpec:
    """The declaration of stage ``name``; a :class:`ConfigError` listing the stages when there is none."""
    if name not in _BY_NAME:
        raise ConfigError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    return _BY_NAME[name]


def stage_names(kind: StageKind) -> tuple[str, ...]:
    """The stages of one kind, in run order."""
    return tuple(s.name for s in SPECS if s.kind == kind)


def launch_targets() -> dict[str, str]:
    """Stage name -> ``module:function`` for the stages that can re-launch themselves under torchrun."""
    return {s.name: s.implementation for s in SPECS if s.launchable}


def implementation(name: str) -> Callable[[Params, Path], Summary]:
    """The function of stage ``name`` (imported now)."""
    return spec(name).function()


# -------------------------------------------------------------------------------------------------- dvc.yaml
DVC_YAML_HEADER = """\
# The stage graph, generated from the declarations in anomaly_ov/stages.py by `anomaly-ov dvc-yaml`: edit those,
# not this file (`anomaly-ov dvc-yaml --check` fails when it is stale). Every command is `anomaly-ov stage NAME`;
# every knob is in params.yaml. DVC owns lineage and staleness: `dvc repro` re-runs a stage only when its code,
# data deps or params changed.
"""


def _stage_entry(s: StageSpec) -> dict[str, Any]:
    entry: dict[str, Any] = {"cmd": f"anomaly-ov stage {s.name}"}
    if s.always_changed:
        entry["always_changed"] = True
    if s.code or s.deps:
        entry["deps"] = [*s.code, *s.deps]
    if s.params:
        entry["params"] = list(s.params)
    if s.outs:
        entry["outs"] = [_out_entry(o) for o in s.outs]
    if s.metrics:
        entry["metrics"] = [{m: {"cache": False}} for m in s.metrics]
    if s.plots:
        entry["plots"] = [{p.path: {"cache": False, "x": p.x, "y": p.y}} for p in s.plots]
    return entry


def _out_entry(out: Out) -> str | dict[str, Any]:
    flags = {**({"cache": False} if not out.cache else {}), **({"persist": True} if out.persist else {})}
    return {out.path: flags} if flags else out.path


def render_dvc_yaml(specs: Sequence[StageSpec] = SPECS) -> str:
    """dvc.yaml for ``specs``: one stage each, its description as a comment, in declaration order."""
    import yaml

    lines = [DVC_YAML_HEADER.rstrip("\n"), "stages:"]
    for i, s in enumerate(specs):
        if i:
            lines.append("")
        lines += [f"  # {line}" for line in _wrap(s.description, 114)]
        body = yaml.safe_dump({s.name: _stage_entry(s)}, sort_keys=False, default_flow_style=False, width=1000)
        lines += [f"  {line}" for line in body.rstrip("\n").splitlines()]
    return "\n".join(lines) + "\n"


def render_stage_table(specs: Sequence[StageSpec] = SPECS) -> str:
    """The stage graph as a Markdown table (docs/architecture.md carries it; a test keeps it current)."""
    rows = ["| stage | kind | what it does | params | data deps | outputs |", "| --- | --- | --- | --- | --- | --- |"]
    for s in specs:
        outs = [o.path for o in s.outs] + list(s.metrics) + [p.path for p in s.plots]
        flags = " (always runs)" if s.always_changed else ""
        kind = s.kind + (", launchable" if s.launchable else "")
        rows.append(f"| `{s.name}` | {kind}{flags} | {s.description} | {_codes(s.params)} | {_codes(s.deps)} | "
                    f"{_codes(outs)} |")
    return "\n".join(rows) + "\n"


def _codes(items: Sequence[str]) -> str:
    return ", ".join(f"`{item}`" for item in items) or "-"


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


# ------------------------------------------------------------------------------------------------- running
def run_stage(name: str, params: Params, workspace: str | Path = ".") -> Summary:
    """Run one stage inside its MLflow run and return its summary (with ``seconds``)."""
    from anomaly_ov import tracking
    from anomaly_ov.data.images import configure

    configure(params.validation.max_image_side)  # the size limit of every image the stage opens
    func = implementation(name)
    workspace = Path(workspace)
    started = time.perf_counter()
    with tracking.stage_run(params, name, workspace):
        summary = dict(func(params, workspace) or {})
        summary["seconds"] = round(time.perf_counter() - started, 3)
        tracking.log_metrics(_numeric(summary), prefix=name)
    return summary


def _numeric(summary: Summary) -> Summary:
    return {k: v for k, v in summary.items() if isinstance(v, int | float | dict) and not isinstance(v, bool)}


def result_path(workspace: str | Path, name: str) -> Path:
    """``<workspace>/reports/stages/<name>.result.json``."""
    return Path(workspace) / RESULT_DIR / f"{name}.result.json"


def read_result(workspace: str | Path, name: str) -> dict[str, Any] | None:
    """The stage's last result record, or None when there is none (or it is unreadable)."""
    path = result_path(workspace, name)
    try:
        if path.stat().st_size > MAX_RESULT_BYTES:
            return None
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


#: Exceptions outside the project's hierarchy that running again may fix (memory, network, a timeout).
_TRANSIENT_BUILTINS = (MemoryError, ConnectionError, TimeoutError)


def describe_failure(exc: BaseException) -> dict[str, Any]:
    """The failure fields of a result record: kind, message, exit code, retryable, the failing files/rows."""
    if isinstance(exc, AnomalyOVError):
        exit_code, retryable, message = exc.exit_code, exc.retryable, str(exc)
    elif isinstance(exc, KeyboardInterrupt | SystemExit):  # Ctrl-C, or SIGTERM through tracking.sigterm_raises
        exit_code, retryable, message = 130, True, f"interrupted ({type(exc).__name__})"
    else:  # a bug, unless the machine ran out of something
        exit_code, retryable = 1, isinstance(exc, _TRANSIENT_BUILTINS)
        message = f"{type(exc).__name__}: {exc}"
    return {
        "error_kind": type(exc).__name__,
        "error_category": _category(exc),
        "message": message,
        "exit_code": exit_code,
        "retryable": retryable,
        "failing": failing_items(exc),
    }


def _category(exc: BaseException) -> str:
    from anomaly_ov import errors

    for cls in (errors.ConfigError, errors.InputError, errors.StageFailed, errors.TransientError):
        if isinstance(exc, cls):
            return cls.__name__
    return "AnomalyOVError" if isinstance(exc, AnomalyOVError) else "Bug"


def write_result(workspace: str | Path, name: str, record: dict[str, Any]) -> Path:
    """Write a result record atomically (a reader never sees half a file)."""
    from anomaly_ov.io import atomic_write_json

    return atomic_write_json(result_path(workspace, name), record)


def new_record(name: str) -> dict[str, Any]:
    """The result record of a stage that is starting (``status: running``); see :func:`finish_record`."""
    return {
        "stage": name,
        "status": "running",
        "invocation": os.environ.get(INVOCATION_ENV),
        "pid": os.getpid(),
        "started_at": _now(),
        "finished_at": None,
        "seconds": None,
        "exit_code": None,
        "error_kind": None,
        "error_category": None,
        "message": None,
        "retryable": None,
        "failing": [],
        "summary": {},
    }


def finish_record(
    record: dict[str, Any], seconds: float, summary: Summary | None = None, error: BaseException | None = None
) -> dict[str, Any]:
    """``record`` completed: ``succeeded`` with ``summary``, or ``failed`` with the fields of ``error``."""
    record.update(finished_at=_now(), seconds=round(seconds, 3))
    if error is None:
        record.update(status="succeeded", exit_code=0, summary=dict(summary or {}))
    else:
        record.update(describe_failure(error), status="failed")
        if isinstance(error, StageFailed):
            record["summary"] = error.summary
    return record


def execute(
    name: str,
    workspace: str | Path,
    load: Callable[[], Params],
    *,
    echo: Callable[[str], None] = print,
    echo_error: Callable[[str], None] = print,
) -> int:
    """Run stage ``name`` as ``anomaly-ov stage NAME`` does: record the result, return the exit code.

    The result file (:func:`result_path`) is written when the stage starts (``status: running``: a process that is
    killed leaves it so) and again when it ends, successfully or not, atomically. Project errors
    (:class:`~anomaly_ov.errors.AnomalyOVError`) become one line on ``echo_error`` and their kind's exit code; any
    other exception is recorded and re-raised so that its traceback is printed (a bug, exit code 1).

    Args:
        name: the stage.
        workspace: the workspace root.
        load: returns the params (raises :class:`~anomaly_ov.errors.ConfigError` when they are invalid).
        echo, echo_error: where the summary (JSON) and the one-line error go.
    """
    if name not in _BY_NAME:  # no result file is named after an unknown word
        echo_error(f"unknown stage {name!r}; choose one of: {', '.join(STAGES)}")
        return ConfigError.exit_code
    started = time.perf_counter()
    record = new_record(name)
    write_result(workspace, name, record)
    try:
        summary = run_stage(name, load(), workspace)
    except BaseException as exc:
        write_result(workspace, name, finish_record(record, time.perf_counter() - started, error=exc))
        if isinstance(exc, AnomalyOVError):
            echo_error(str(exc) if str(exc).startswith(f"stage {name!r}") else f"stage {name!r}: {exc}")
            return exc.exit_code
        raise
    write_result(workspace, name, finish_record(record, time.perf_counter() - started, summary))
    echo(json.dumps(summary, indent=2, default=str))
    return 0


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
