"""Shared training machinery: devices, seeding, reproducible data order, atomic checkpoints with exact resume,
divergence detection, progress bars, MLflow logging and training curves.

Both stages run through :func:`run_loop`. Its contract: a stage killed at any point and re-run with the same
params continues from the last checkpoint and ends with the *same* weights as an uninterrupted run (same seed,
same device). That works because

* the data order of epoch ``e`` is a permutation drawn from ``seed + e`` (not from a shared RNG stream), so the
  resumed run rebuilds it and skips the batches already consumed, without loading them;
* the checkpoint holds the weights, optimiser, scheduler, the python / numpy / torch RNG states, the step and
  the position (epoch, next batch) and the metric history;
* checkpoints are written atomically (``anomaly_ov.io``), so a kill during a save leaves the previous one intact.

A non-finite loss stops the run with :class:`TrainingDiverged` *before* the optimiser step, so the last good
checkpoint on disk is the newest one. Distributed runs (``torchrun``) shard every epoch's permutation by rank;
only rank 0 logs to MLflow and draws progress bars; the loss it records is the mean over the ranks.

Strategies (``train.<stage>.strategy``, see ``docs/training.md``): ``ddp`` replicates the model
(DistributedDataParallel; rank 0 writes the one-file checkpoint), ``fsdp`` shards weights, gradients and optimiser
state over the ranks (torch's FSDP2 ``fully_shard``; every rank writes its shards through
``torch.distributed.checkpoint``), ``deepspeed`` hands the model to a DeepSpeed ZeRO-2/3 engine (its own sharded
checkpoints). On gradient-accumulation micro-steps no gradient is all-reduced (DDP's ``no_sync``, FSDP's
``set_requires_gradient_sync(False)``, DeepSpeed's accumulation boundary).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import math
import os
import pickle
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from anomaly_ov.console import ProgressBar
from anomaly_ov.errors import AnomalyOVError, ConfigError, InputError, StageFailed

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "last.pt"


class TrainingDiverged(AnomalyOVError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint (if any) is kept on disk."""

    exit_code = StageFailed.exit_code

    def __init__(self, step: int, loss: float, checkpoint: Path | None) -> None:
        where = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written yet"
        super().__init__(
            f"training diverged at step {step}: loss is {loss}; {where}. Lower the learning rate "
            "(train.*.lr), enable gradient clipping, or check the inputs of this batch."
        )
        self.step = step
        self.loss = loss
        self.checkpoint = checkpoint


class CheckpointError(InputError, RuntimeError):
    """A resume checkpoint that cannot be used (unreadable, incomplete, written by another strategy); the message
    names the file and says to delete it to start the stage afresh."""


# ------------------------------------------------------------------------------------------- devices / ranks
def select_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda, then mps, then cpu; an explicit device that is not available is an error."""

    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.*.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
        return torch.device("cuda", dist_info().local_rank % max(torch.cuda.device_count(), 1))
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("train.*.device is 'mps' but MPS is not available; use 'auto' or 'cpu'")
    return torch.device(name)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """Rank and world size from the environment ``torchrun`` sets (single process when absent)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""

    info = dist_info()
    if info.distributed and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL collectives of Python objects use the current device
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info


def barrier() -> None:

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def gather_dicts(local: Mapping[Any, Any]) -> dict[Any, Any]:
    """The union of every rank's ``local`` dict (picklable values), the same on every rank; a copy when single."""

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return dict(local)
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, dict(local))
    merged: dict[Any, Any] = {}
    for part in parts:
        merged.update(part)
    return merged


def gather_list(local: Any) -> list[Any]:
    """Every rank's ``local`` (picklable), in rank order, on every rank; ``[local]`` in a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [local]
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return parts


Strategy = Literal["ddp", "fsdp", "deepspeed"]
STRATEGIES: tuple[str, ...] = ("ddp", "fsdp", "deepspeed")


def deepspeed_available() -> bool:
    """Whether the optional ``deepspeed`` package is importable (``pip install 'anomaly-ov[deepspeed]'``)."""
    return importlib.util.find_spec("deepspeed") is not None


def require_strategy(strategy: str, key: str) -> None:
    """Fail early with a :class:`ConfigError` naming ``key`` when ``strategy`` cannot run in this environment."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"{key}: unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if strategy == "deepspeed" and not deepspeed_available():
        raise ConfigError(f"{key} is 'deepspeed' but DeepSpeed is not installed; install it with "
                          "`pip install 'anomaly-ov[deepspeed]'` (it builds its kernels for CUDA GPUs) or use "
                          "strategy 'fsdp', which needs nothing beyond torch")


def no_split_classes(model: nn.Module) -> set[str]:
    """Class names of the blocks transformers never splits across devices (decoder / encoder layers), collected
    from every submodule's ``_no_split_modules``: the units FSDP shards one by one."""
    names: set[str] = set()
    for module in model.modules():
        names |= set(getattr(module, "_no_split_modules", None) or ())
    return names


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` was sharded by :func:`wrap_distributed` with strategy ``fsdp`` (FSDP2)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_model(model: nn.Module) -> nn.Module:
    """Shard ``model`` in place over every rank with FSDP2 (``fully_shard``): each transformer block (see
    :func:`no_split_classes`) is its own unit, gathered just before its forward and freed after; the rest (embeddings,
    projector, expert, heads) forms the root unit. Parameters become DTensors: build the optimiser afterwards."""
    from torch.distributed.fsdp import fully_shard

    blocks = no_split_classes(model)
    for module in list(model.modules()):
        if module is not model and type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(model)
    return model


def wrap_distributed(model: nn.Module, device: torch.device, strategy: str = "ddp", *,
                     find_unused_parameters: bool = False) -> nn.Module:
    """``model`` ready for data-parallel training under torchrun (the model itself in a single process).

    Args:
        model: the module whose ``forward`` the stage's step calls; its ``requires_grad`` flags must be final
            (what trains is decided before wrapping).
        device: the rank's device (gloo on CPU, nccl on CUDA).
        strategy: ``ddp`` (a DistributedDataParallel replica; an existing DDP wrapper is replaced, so a second
            loop over the same model with other frozen parts gets its own) or ``fsdp`` (sharded in place once; a
            sharded model is returned as is). ``deepspeed`` models are wrapped by :class:`DeepSpeedRun`.
        find_unused_parameters: DDP only: set when some trainable parameters get no gradient in a step (DDP then
            searches the autograd graph every step, which costs time; FSDP and DeepSpeed need no such flag).
    """
    if not dist_info().distributed:
        return model
    init_distributed(device)
    if strategy == "fsdp":
        return model if is_sharded(model) else shard_model(model)
    if strategy != "ddp":
        raise ValueError(f"wrap_distributed handles ddp and fsdp, not {strategy!r}")
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(unwrap(model), device_ids=ids, find_unused_parameters=find_unused_parameters)


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Inside, ``backward`` reduces gradients across ranks only when ``enabled`` (the last micro-step of an
    accumulation group); on the other micro-steps they accumulate locally (DDP ``no_sync``, FSDP2
    ``set_requires_gradient_sync``). A no-op in a single process."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
        return
    if is_sharded(model):
        model.set_requires_gradient_sync(enabled)  # type: ignore[operator]
    yield


def mean_over_ranks(values: Mapping[str, float]) -> dict[str, float]:
    """``values`` averaged over every rank (one all-reduce); the same dict in a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1 or not values:
        return dict(values)
    keys = sorted(values)
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / dist.get_world_size() for k, v in zip(keys, t.tolist(), strict=True)}


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel or DeepSpeed wrapper (an FSDP2 model is its own module)."""
    inner = getattr(model, "module", model)
    return inner if isinstance(inner, nn.Module) else model


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole, unsharded state dict of ``model`` on CPU, for saving the final model.

    Sharded (``fsdp``): a collective (call it on every rank); rank 0 gets every tensor, the other ranks an empty
    dict. Otherwise the local module's state dict (every rank holds it whole).
    """
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return cast(dict[str, torch.Tensor], full)
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


# ------------------------------------------------------------------------------------------------- seeding
def seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict[str, Any]:
    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    # numpy's state as a tensor and plain numbers: checkpoints load with torch.load(weights_only=True)
    numpy_state = {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    import numpy as np

    random.setstate(state["python"])
    ns = state["numpy"]
    if isinstance(ns, Mapping):
        ns = (ns["name"], ns["keys"].numpy().astype(np.uint32), ns["pos"], ns["has_gauss"], ns["cached_gaussian"])
    np.random.set_state(ns)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------- data order
def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The order of epoch ``epoch``: a permutation drawn from its own generator (seed, epoch)."""

    if not shuffle:
        return list(range(n))
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=gen).tolist()


#: batches per length group (see ``epoch_batches``)
LENGTH_GROUP_BATCHES = 8


def epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int, *, shuffle: bool = True, drop_last: bool = False,
    rank: int = 0, world_size: int = 1, lengths: Sequence[int] | None = None,
) -> list[list[int]]:
    """Index batches of one epoch for one rank (the permutation is padded so every rank gets as many batches).

    With ``lengths`` (one per item), each run of ``LENGTH_GROUP_BATCHES`` batches of the permutation is sorted by
    length before it is cut into batches, so a batch pads to a similar length (as transformers' length-grouped
    sampler): the same batch count, still a seeded shuffle, far less padding for text of mixed lengths.
    """
    order = epoch_permutation(n, seed, epoch, shuffle)
    if world_size > 1:
        total = math.ceil(n / world_size) * world_size
        order = (order + order[: total - n]) if total > n else order
        order = order[rank::world_size]
    if lengths is not None:
        if len(lengths) != n:
            raise ValueError(f"{len(lengths)} lengths for {n} items")
        group = batch_size * LENGTH_GROUP_BATCHES
        order = [i for g in range(0, len(order), group)
                 for i in sorted(order[g : g + group], key=lambda i: -lengths[i])]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def batches_per_epoch(n: int, batch_size: int, *, drop_last: bool = False, world_size: int = 1) -> int:
    per_rank = math.ceil(n / world_size)
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


def steps_per_epoch(n: int, batch_size: int, grad_accum: int = 1, *, drop_last: bool = False,
                    world_size: int = 1) -> int:
    """Optimiser steps in one epoch (a trailing partial accumulation group still makes a step)."""
    return math.ceil(batches_per_epoch(n, batch_size, drop_last=drop_last, world_size=world_size) / grad_accum)


class ItemDataset(Protocol):
    """What the loop trains on: the stages' datasets (``ExpertDataset``, ``InstructDataset``) or a list of items."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> Any: ...


Collate = Callable[[list[Any]], Any]


def make_loader(dataset: ItemDataset, batch_indices: Sequence[Sequence[int]], collate: Collate | None,
                num_workers: int, seed: int, epoch: int) -> DataLoader[Any]:
    """A DataLoader over precomputed index batches (worker seeds are fixed by (seed, epoch))."""

    gen = torch.Generator().manual_seed(int(seed) * 7919 + int(epoch))
    return DataLoader(cast(Dataset[Any], dataset), batch_sampler=[list(b) for b in batch_indices],
                      collate_fn=collate, num_workers=num_workers,
                      generator=gen, persistent_workers=False)


# ---------------------------------------------------------------------------------------------- checkpoints
def fingerprint(*parts: Any) -> str:
    """Short hash identifying a training run's inputs; a checkpoint is only resumed when it matches."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's whole content (see :func:`anomaly_ov.io.file_digest`)."""
    from anomaly_ov.io import file_digest as digest

    return digest(path)


def file_signature(path: str | Path) -> str:
    """Identity of an input file: its size and the hash of its whole content."""
    path = Path(path)
    if not path.exists():
        return "missing"
    return f"{path.stat().st_size}:{file_digest(path)[:16]}"


def data_fingerprint(paths: Iterable[str | Path], root: str | Path | None = None) -> str:
    """One short hash over the content of every file in ``paths`` (named relative to ``root`` when under it).

    This is what a training stage reads (images, masks, the stage-1 output), so a checkpoint is only resumed for
    the very same data: a mask fixed in place (same size, even same mtime) starts the stage afresh.
    """
    from anomaly_ov.io import content_digest

    return content_digest(paths, root)[:16]


def remove_checkpoints(directory: str | Path) -> None:
    """Delete the resume state under ``directory`` (every ``last.pt``) once the stage's outputs are written.

    A finished checkpoint kept on disk would be resumed by the next run of the stage as "already done"; the
    outputs are the result now, and the next run (new data, ``--force``) trains afresh.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return
    for ckpt in sorted(directory.rglob(CHECKPOINT_FILE)):
        ckpt.unlink(missing_ok=True)
    for shards in sorted(directory.rglob(SHARDED_PREFIX + "*")):
        if shards.is_dir():
            shutil.rmtree(shards, ignore_errors=True)


#: folder name prefix of a sharded checkpoint (torch.distributed.checkpoint or DeepSpeed) beside ``last.pt``
SHARDED_PREFIX = "shards-"


def _sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer, trainable_only: bool
                   ) -> dict[str, dict[str, Any]]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(ignore_frozen_params=trainable_only)
    model_sd, optim_sd = get_state_dict(model, optimizer, options=options)
    return {"model": model_sd, "optimizer": optim_sd}


def save_sharded(directory: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                 trainable_only: bool) -> str:
    """Every rank writes its shards of the weights (trainable ones only when ``trainable_only``) and optimiser state
    to ``directory/shards-<step>`` through ``torch.distributed.checkpoint`` (a collective). Written under a temporary
    name first and renamed by rank 0 once every rank is done, so a kill mid-save leaves no half checkpoint behind
    the name ``last.pt`` points to. Returns the folder's name."""
    import torch.distributed.checkpoint as dcp

    name = f"{SHARDED_PREFIX}{step:09d}"
    tmp = Path(directory) / f".{name}.tmp"
    if dist_info().is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    dcp.save(_sharded_state(model, optimizer, trainable_only), checkpoint_id=str(tmp))
    barrier()
    if dist_info().is_main:
        final = Path(directory) / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    barrier()
    return name


def load_sharded(directory: Path, name: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                 trainable_only: bool) -> None:
    """Load the shards :func:`save_sharded` wrote under ``directory/name`` into ``model`` and ``optimizer`` (every
    rank reads its own part, resharded if needed)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    folder = Path(directory) / name
    if not folder.is_dir():
        last = Path(directory) / CHECKPOINT_FILE
        raise CheckpointError(f"{last} points to the sharded checkpoint {folder}, which is missing (on a multi-node "
                              f"run the checkpoint folder must be shared by every node); delete {last} to start afresh")
    state = _sharded_state(model, optimizer, trainable_only)
    # partial: a fresh optimiser is given zero state for every parameter, also for those that never had a gradient
    # (stage 1's unused ones), which the saved optimiser has no state for; AdamW skips them either way
    dcp.load(state, checkpoint_id=str(folder), planner=DefaultLoadPlanner(allow_partial_load=True))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(ignore_frozen_params=trainable_only, strict=False))


def prune_sharded(directory: Path, keep: str | None) -> None:
    """Delete the sharded checkpoints under ``directory`` other than ``keep`` (and leftovers of interrupted
    saves); rank 0 only."""
    for old in Path(directory).glob(f"*{SHARDED_PREFIX}*"):
        if old.is_dir() and old.name != keep:
            shutil.rmtree(old, ignore_errors=True)


def model_state(model: nn.Module, trainable_only: bool) -> dict[str, torch.Tensor]:
    """Weights to checkpoint: everything, or only trainable parameters plus buffers (frozen weights are rebuilt)."""
    module = unwrap(model)
    state = module.state_dict()
    if not trainable_only:
        return state
    keep = {name for name, p in module.named_parameters() if p.requires_grad}
    keep |= {name for name, _ in module.named_buffers()}
    return {k: v for k, v in state.items() if k in keep}


def save_checkpoint(directory: Path, payload: Mapping[str, Any]) -> Path:
    """Write ``directory/last.pt`` atomically."""

    from anomaly_ov.io import atomic_path

    target = Path(directory) / CHECKPOINT_FILE
    with atomic_path(target, suffix=".pt") as tmp:
        torch.save(dict(payload), tmp)
    return target


def load_checkpoint(directory: Path) -> dict[str, Any] | None:
    """The checkpoint in ``directory`` (None when there is none); a corrupt file is an error that says what to do."""

    path = Path(directory) / CHECKPOINT_FILE
    if not path.exists():
        return None
    try:
        # weights only: tensors and plain containers/numbers (no pickled objects, so no code runs on load)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # a pickled object: not written by this code, maybe tampered with
        detail = next((ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln), "")
        raise CheckpointError(f"{path}: unreadable checkpoint (it holds objects other than tensors and plain values: "
                           f"{detail or 'refused by weights-only loading'}); delete it to start the stage afresh"
                           ) from None
    except Exception as exc:  # torch raises several types for truncated / foreign files
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc}); delete it to start the stage afresh") from exc


# ------------------------------------------------------------------------------------------------ the loop
@dataclass
class StepOutput:
    """What a stage's step function returns for one micro-batch."""

    loss: torch.Tensor  # scalar with grad
    items: int  # images or tokens in the batch (for throughput)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class LoopSettings:
    epochs: int
    batch_size: int  # per process
    seed: int
    checkpoint_dir: Path
    checkpoint_every: int
    grad_accum: int = 1
    max_grad_norm: float | None = None
    drop_last: bool = False
    num_workers: int = 0
    log_every: int = 1
    desc: str = "train"
    items_name: str = "images"
    fingerprint: str = ""
    trainable_only_checkpoint: bool = True
    progress: bool = True
    log_prefix: str = "train"  # MLflow metric prefix (a second loop of the same stage logs under its own)
    lengths: Sequence[int] | None = None  # per item: batch items of similar length together (see epoch_batches)
    strategy: str = "ddp"  # ddp and fsdp: the model comes wrapped (wrap_distributed); deepspeed: wrapped here
    zero_stage: int = 2  # deepspeed only
    bf16: bool = False  # deepspeed only (its engine keeps fp32 master weights and computes in bf16)


@dataclass
class LoopResult:
    step: int
    history: list[dict[str, float]]
    epoch_metrics: list[dict[str, float]]
    seconds: float
    items: int
    resumed_from_step: int | None
    model: nn.Module | None = None  # what trained (a DeepSpeed engine under deepspeed); see full_model_state

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0

    def last(self, key: str, window: int = 1) -> float | None:
        values = [h[key] for h in self.history if key in h]
        if not values:
            return None
        tail = values[-window:]
        return float(sum(tail) / len(tail))


StepFn = Callable[[nn.Module, Any], StepOutput]
EpochEndFn = Callable[[int, nn.Module], Mapping[str, float] | None]
StepHook = Callable[[int, Mapping[str, float]], None]
Scheduler = torch.optim.lr_scheduler.LRScheduler


class _Trainer:
    """Backward, optimiser step and checkpoint state for one strategy (single process, DDP, FSDP2, DeepSpeed)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Scheduler | None,
                 settings: LoopSettings) -> None:
        self.settings = settings
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.engine: Any = None
        if settings.strategy == "deepspeed" and dist_info().distributed:
            self.engine = deepspeed_engine(model, optimizer, scheduler, settings)
            model = self.engine
        self.model = model
        self.sharded = is_sharded(model)

    def params(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def backward(self, step_fn: StepFn, batch: Any, boundary: bool, on_loss: Callable[[float], None]) -> StepOutput:
        """Forward and backward of one micro-batch; gradients are reduced across ranks only at ``boundary``."""
        if self.engine is not None:
            self.engine.set_gradient_accumulation_boundary(boundary)
            out = step_fn(self.model, batch)
            on_loss(float(out.loss.detach()))
            self.engine.backward(out.loss)  # DeepSpeed divides by its accumulation steps itself
            return out
        with gradient_sync(self.model, boundary):
            out = step_fn(self.model, batch)
            on_loss(float(out.loss.detach()))
            (out.loss / self.settings.grad_accum).backward()
        return out

    def step(self) -> None:
        if self.engine is not None:
            self.engine.step()  # clips, steps the optimiser and the scheduler, zeroes the gradients
            return
        if self.settings.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params(), self.settings.max_grad_norm)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def save(self, directory: Path, step: int) -> dict[str, Any]:
        """Weights and optimiser state for ``last.pt``, or the name of the sharded folder every rank wrote."""
        trainable_only = self.settings.trainable_only_checkpoint
        if self.engine is not None:
            name = f"{SHARDED_PREFIX}{step:09d}"
            self.engine.save_checkpoint(str(directory), tag=name, exclude_frozen_parameters=trainable_only)
            return {"sharded": name, "engine": "deepspeed"}
        if self.sharded:
            return {"sharded": save_sharded(directory, step, self.model, self.optimizer, trainable_only),
                    "engine": "dcp"}
        return {"model": model_state(self.model, trainable_only), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}

    def load(self, directory: Path, ckpt: Mapping[str, Any]) -> None:
        trainable_only = self.settings.trainable_only_checkpoint
        if "sharded" in ckpt:
            if self.engine is not None and ckpt.get("engine") == "deepspeed":
                self.engine.load_checkpoint(str(directory), tag=ckpt["sharded"],
                                            load_module_strict=not trainable_only)
                return
            if self.sharded and ckpt.get("engine") == "dcp":
                load_sharded(directory, ckpt["sharded"], self.model, self.optimizer, trainable_only)
                if self.scheduler is not None and ckpt.get("scheduler") is not None:
                    self.scheduler.load_state_dict(ckpt["scheduler"])
                return
            raise CheckpointError(f"{directory / CHECKPOINT_FILE} was written by another training strategy "
                              f"({ckpt.get('engine')}); delete it to start afresh")
        missing = set(model_state(self.model, trainable_only)) - set(ckpt["model"])
        if missing:
            raise CheckpointError(f"{directory / CHECKPOINT_FILE}: checkpoint lacks weights {sorted(missing)[:5]}; "
                              "delete it to start afresh")
        unwrap(self.model).load_state_dict(ckpt["model"], strict=False)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt.get("scheduler") is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])


def deepspeed_engine(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Scheduler | None,
                     settings: LoopSettings) -> Any:
    """A DeepSpeed ZeRO engine (stage ``settings.zero_stage``) around ``model``, ``optimizer`` and ``scheduler``:
    micro-batch ``settings.batch_size`` per process, ``grad_accum`` accumulation steps, clipping at
    ``max_grad_norm``, bf16 when ``settings.bf16`` (DeepSpeed then keeps fp32 master weights), no offload — the
    release's settings for stage 2."""
    require_strategy("deepspeed", "train.*.strategy")
    import deepspeed

    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": settings.batch_size,
        "gradient_accumulation_steps": settings.grad_accum,
        "zero_optimization": {"stage": settings.zero_stage, "stage3_gather_16bit_weights_on_model_save": True},
        "bf16": {"enabled": bool(settings.bf16)},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if settings.max_grad_norm:
        config["gradient_clipping"] = settings.max_grad_norm
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config,
                                           dist_init_required=False)
    return engine


def consolidated_state(result: LoopResult, model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained model's whole state dict on CPU for saving (a collective under fsdp and deepspeed ZeRO-3: call
    it on every rank; rank 0 gets the tensors)."""
    trained: Any = result.model if result.model is not None else model  # a DeepSpeed engine has more methods
    if hasattr(trained, "zero_optimization_partition_weights") and trained.zero_optimization_partition_weights():
        state = trained._zero3_consolidated_16bit_state_dict() or {}  # DeepSpeed's consolidation (ZeRO-3)
        return {k: v.detach().cpu() for k, v in state.items()}
    return full_model_state(trained)


def _check_finite(step: int, last_good: Path | None, loss: float) -> None:
    """Stop before the backward of a non-finite loss (the last good checkpoint stays the newest)."""
    if not math.isfinite(loss):
        raise TrainingDiverged(step, loss, last_good)


def run_loop(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Scheduler | None,
    dataset: ItemDataset,
    collate: Collate | None,
    step_fn: StepFn,
    settings: LoopSettings,
    *,
    on_epoch_end: EpochEndFn | None = None,
    on_step_end: StepHook | None = None,
) -> LoopResult:
    """Train ``model`` for ``settings.epochs`` epochs, resuming from ``settings.checkpoint_dir`` when possible.

    Args:
        model: the module ``step_fn`` calls: plain, DDP- or FSDP-wrapped (:func:`wrap_distributed`); under
            ``settings.strategy == "deepspeed"`` the plain module, wrapped here in a DeepSpeed engine.
        optimizer, scheduler: built over ``model``'s (wrapped) trainable parameters; the scheduler steps per
            optimiser step.
        dataset, collate: the training items; every epoch's order comes from ``(settings.seed, epoch)``.
        step_fn: ``step_fn(model, batch)`` computes the loss of one micro-batch (the loop calls backward,
            clipping, the optimiser and the scheduler step).
        on_epoch_end: ``on_epoch_end(epoch, model)`` may return validation metrics; they are logged and kept in
            the history (under fsdp it runs on every rank: the sharded forward is a collective).
        on_step_end: ``on_step_end(step, metrics)`` runs after each optimiser step (and after a checkpoint due at
            that step was written).
    """
    from anomaly_ov import tracking

    info = dist_info()
    ckpt_dir = Path(settings.checkpoint_dir)
    n = len(dataset)
    if n == 0:
        raise ValueError(f"{settings.desc}: the training set is empty")
    n_batches = batches_per_epoch(n, settings.batch_size, drop_last=settings.drop_last, world_size=info.world_size)
    if n_batches == 0:
        raise ValueError(f"{settings.desc}: {n} items make no full batch of {settings.batch_size} (drop_last)")
    per_epoch = steps_per_epoch(n, settings.batch_size, settings.grad_accum, drop_last=settings.drop_last,
                                world_size=info.world_size)
    total_steps = per_epoch * settings.epochs
    trainer = _Trainer(model, optimizer, scheduler, settings)
    model = trainer.model

    step, epoch, next_batch = 0, 0, 0
    history: list[dict[str, float]] = []
    epoch_metrics: list[dict[str, float]] = []
    resumed_from: int | None = None
    ckpt = load_checkpoint(ckpt_dir)
    if ckpt is not None and ckpt.get("fingerprint") != settings.fingerprint:
        if info.is_main:
            log.warning("%s: checkpoint in %s belongs to other inputs/params; starting afresh", settings.desc, ckpt_dir)
        ckpt = None
    if ckpt is not None:
        trainer.load(ckpt_dir, ckpt)
        ranks = ckpt.get("rng_ranks") or []
        set_rng_state(ranks[info.rank] if len(ranks) == info.world_size else ckpt["rng"])
        step, epoch, next_batch = ckpt["step"], ckpt["epoch"], ckpt["next_batch"]
        history, epoch_metrics = list(ckpt["history"]), list(ckpt["epoch_metrics"])
        resumed_from = step
        if info.is_main:
            log.info("%s: resuming from step %d (epoch %d, batch %d)", settings.desc, step, epoch, next_batch)

    last_good: Path | None = ckpt_dir / CHECKPOINT_FILE if ckpt is not None else None

    def checkpoint() -> None:
        nonlocal last_good
        state = trainer.save(ckpt_dir, step)  # a collective under fsdp / deepspeed
        rng_ranks = gather_list(get_rng_state())
        if info.is_main:
            scheduler_state = scheduler.state_dict() if scheduler is not None and trainer.engine is None else None
            last_good = save_checkpoint(ckpt_dir, {
                "fingerprint": settings.fingerprint, "scheduler": scheduler_state, **state,
                "rng": rng_ranks[0], "rng_ranks": rng_ranks,
                "step": step, "epoch": epoch, "next_batch": next_batch,
                "history": history, "epoch_metrics": epoch_metrics,
            })
            if "sharded" in state:
                prune_sharded(ckpt_dir, keep=state["sharded"])
        barrier()

    progress = ProgressBar(settings.desc, total_steps, unit="steps", done=step,
                           enabled=settings.progress and info.is_main)
    started = time.perf_counter()
    items_done = 0
    window_items, window_t = 0, time.perf_counter()
    model.train()
    with progress:
        while epoch < settings.epochs:
            batches = epoch_batches(n, settings.batch_size, settings.seed, epoch, drop_last=settings.drop_last,
                                    rank=info.rank, world_size=info.world_size, lengths=settings.lengths)
            first = next_batch
            loader = make_loader(dataset, batches[first:], collate, settings.num_workers, settings.seed, epoch)
            accum_loss, accum_n = 0.0, 0
            accum_metrics: dict[str, float] = {}
            for offset, batch in enumerate(loader):
                b = first + offset
                end_of_epoch = b + 1 == len(batches)
                boundary = accum_n + 1 >= settings.grad_accum or end_of_epoch

                out = trainer.backward(step_fn, batch, boundary, partial(_check_finite, step + 1, last_good))
                accum_loss += float(out.loss.detach())
                accum_n += 1
                for key, value in out.metrics.items():
                    accum_metrics[key] = accum_metrics.get(key, 0.0) + float(value)
                items_done += out.items
                window_items += out.items
                if not boundary:
                    continue
                trainer.step()
                step += 1
                now = time.perf_counter()
                # the loss of the whole (global) batch: every rank's mean, averaged (ranks hold equal batches)
                means = mean_over_ranks({"loss": accum_loss / accum_n,
                                         **{k: v / accum_n for k, v in accum_metrics.items()}})
                record = {
                    "step": float(step), "epoch": epoch + (b + 1) / len(batches),
                    "loss": means.pop("loss"), "lr": trainer.lr(),
                    f"{settings.items_name}_per_s": window_items / max(now - window_t, 1e-9),
                    **means,
                }
                window_items, window_t = 0, now
                history.append(record)
                accum_loss, accum_metrics, accum_n = 0.0, {}, 0
                if info.is_main and (step % settings.log_every == 0 or step == total_steps):
                    tracking.log_metrics({k: v for k, v in record.items() if k != "step"}, step=step,
                                         prefix=settings.log_prefix)
                progress.advance(loss=record["loss"])
                if end_of_epoch:
                    model.eval()
                    with torch.no_grad():
                        val = dict(on_epoch_end(epoch, model) or {}) if on_epoch_end else {}
                    model.train()
                    epoch_metrics.append({"epoch": float(epoch + 1), "step": float(step), **val})
                    if info.is_main and val:
                        tracking.log_metrics(val, step=step, prefix="val")
                    epoch, next_batch = epoch + 1, 0
                else:
                    next_batch = b + 1
                if step % settings.checkpoint_every == 0 or step == total_steps:
                    checkpoint()
                if on_step_end is not None:
                    on_step_end(step, record)
            if next_batch != 0:  # the loader ended early (can only happen when batches were skipped oddly)
                epoch, next_batch = epoch + 1, 0
    return LoopResult(step=step, history=history, epoch_metrics=epoch_metrics,
                      seconds=time.perf_counter() - started, items=items_done, resumed_from_step=resumed_from,
                      model=model)


# ------------------------------------------------------------------------------------------------ reporting
def plot_curves(result: LoopResult, target: Path, title: str, keys: Sequence[str] = ("loss", "lr")) -> Path | None:
    """Training curves (per-step keys and per-epoch validation metrics) as a PNG, written atomically."""
    if not result.history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anomaly_ov.io import atomic_path

    val_keys = sorted({k for e in result.epoch_metrics for k in e if k not in ("epoch", "step")})
    panels = [k for k in keys if any(k in h for h in result.history)] + (["validation"] if val_keys else [])
    width = 4.5 * len(panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 3.2), squeeze=False)
    steps = [h["step"] for h in result.history]
    for ax, key in zip(axes[0], panels, strict=True):
        if key == "validation":
            for vk in val_keys:
                pts = [(e["step"], e[vk]) for e in result.epoch_metrics if vk in e]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=vk)
            ax.legend(fontsize=7)
        else:
            ax.plot(steps, [h.get(key, float("nan")) for h in result.history])
            if key == "loss":
                ax.set_yscale("log")
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.suptitle(title)
    # fixed margins in inches: tight_layout draws the figure once more to measure it (half of the plot's 0.4 s)
    fig.subplots_adjust(left=0.7 / width, right=1 - 0.2 / width, bottom=0.16, top=0.82, wspace=0.3)
    with atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return Path(target)


def summarise_history(result: LoopResult, window: int = 10) -> dict[str, float]:
    """First/last loss (mean over ``window`` steps) for reports."""
    losses = [h["loss"] for h in result.history]
    if not losses:
        return {}
    head, tail = losses[:window], losses[-window:]
    return {"loss_first": sum(head) / len(head), "loss_last": sum(tail) / len(tail), "loss_final_step": losses[-1]}
