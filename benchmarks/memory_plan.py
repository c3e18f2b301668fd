"""Per-GPU training memory of Anomaly-OV 0.5B and 7B for each strategy and GPU count, checked against measurement.

    .venv/bin/python benchmarks/memory_plan.py                  # tables for 0.5B and 7B + the tiny model's check
    .venv/bin/python benchmarks/memory_plan.py --markdown       # the README's table (7B, stage 2)
    .venv/bin/python benchmarks/memory_plan.py --gpu            # also measure the 0.5B shapes on a GPU (if any)

The accounting is :mod:`anomaly_ov.memory_plan` (parameter counts from the configs' shapes; weights, gradients,
AdamW state with fp32 master weights, gathered shards, activations with and without gradient checkpointing). The
release's recipe sets the shapes: stage 2 trains the projector and the LLM in bf16 with per-device batch 1 on
sequences of one AnyRes (``anyres_max_9``) image -- the visual tokens, the anomaly tokens -- plus the conversation's
text (``--image-size``, ``--text-tokens``); stage 1 trains the expert alone on ``--stage1-images`` images per GPU
(the release's 128 images over 8 GPUs), each image's crops through the frozen tower.

**The check against measurement** (always run; about a second of CPU): one training step of the tiny preset's stage
1 and stage 2 on the CPU in float32, measured by :class:`LiveTensorBytes`, a ``TorchDispatchMode`` that sees every
tensor an operator creates (forward, backward and optimizer step) and the moment its storage is freed. Its peak is
the largest number of bytes held by live tensor storages, which is what ``torch.cuda.max_memory_allocated`` counts
on a GPU (less the caching allocator's 512-byte rounding), so the plan's prediction for the tiny config
(``ddp``, 1 device, fp32, no checkpointing) is compared like for like. Process RSS (psutil) is not comparable:
it holds the interpreter, torch's and transformers' code and the allocator's free pages, hundreds of MB against a
step of a few MB; ``tracemalloc`` sees Python's allocator only, not torch's tensors.

**On a GPU** (``--gpu``, when ``torch.cuda.is_available()``): one stage-2 step of the 0.5B shapes (random weights,
bf16, fp32 master weights for what trains, gradient checkpointing, AdamW) measured with
``torch.cuda.max_memory_allocated`` against the plan's ``ddp`` / 1 GPU prediction for the same sequence.
"""

from __future__ import annotations

import argparse
import sys
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from full_size_forward import parse_size  # noqa: E402  (shared with gpu_real_shapes)

from anomaly_ov import memory_plan as mp  # noqa: E402

PRESETS = {"0.5b": "llava-onevision-0.5b", "7b": "llava-onevision-7b"}
#: what the release trains on (per GPU): stage 1 128 images over 8 GPUs; stage 2 one conversation per GPU
RELEASE_STAGE1_IMAGES_PER_GPU = 16
CARD_GIB = 80.0


# ----------------------------------------------------------------------------------------------- measurement
class LiveTensorBytes(TorchDispatchMode):
    """Bytes held by live tensor storages: those given to :meth:`hold` plus every operator's outputs until freed.

    ``peak`` is the largest total seen; a storage is counted once however many tensors view it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _count(self, tensor: Any) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self.live:
            return
        self.live[key] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def hold(self, tensors: Iterable[Any]) -> None:
        """Count tensors that exist before the measured code (parameters, optimizer state, inputs)."""
        for tensor in tensors:
            self._count(tensor)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            self._count(tensor)
        return out


def held_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Parameters, buffers, existing gradients and the optimizer's state."""
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    return tensors


def measured_peak(model, optimizer, batch: dict, step) -> tuple[int, int]:
    """(bytes held before the step: weights and optimizer state, peak live bytes of one ``step()``), after a
    warm-up step (so AdamW's state exists, as in training). The batch's tensors count towards the peak."""
    step()
    with LiveTensorBytes() as tracker:
        tracker.hold(held_tensors(model, optimizer))
        held = tracker.current
        tracker.hold(v for v in batch.values() if isinstance(v, torch.Tensor))
        step()
    return held, tracker.peak


# ------------------------------------------------------------------------------------------------ tiny check
@dataclass
class Check:
    """One measured step against the plan: ``held`` = weights + optimizer state before the step, ``measured`` =
    the step's peak."""

    stage: str
    held: int
    measured: int
    plan: mp.MemoryPlan

    @property
    def ratio(self) -> float:
        return self.measured / self.plan.total


def tiny_model():
    from anomaly_ov.config import Params
    from anomaly_ov.model.presets import build_model, build_processor
    from anomaly_ov.model.tokenizer import train_tokenizer

    params = Params()
    tok = train_tokenizer(["Are there any defects for the object in the image? Yes, a scratch on the left."])
    torch.manual_seed(0)
    return params, build_model(params, tokenizer=tok), build_processor(params, tok)


def tiny_stage1_check(params, model, images: int = 8) -> Check:
    """One step of the tiny recipe (tower + expert trained, base views only, mask loss) at ``images`` images."""
    from gpu_real_shapes import stage1_batch

    from anomaly_ov.train.expert import ExpertStage, expert_loss, set_trainable

    recipe = params.expert_recipe
    size = model.config.vision_config.image_size
    batch = stage1_batch(model, images, size, size, torch.device("cpu"))
    trainable = set_trainable(model, [*model.anomaly_expert.parameters(), *model.model.vision_tower.parameters()])
    stage = ExpertStage(model, recipe.base_view_only)
    opt = torch.optim.AdamW(trainable, lr=recipe.lr)
    crops = list(batch["crops_per_image"])
    model.train()

    def step() -> None:
        out = stage(batch["pixel_values"], batch["image_sizes"], crops)
        loss, _ = expert_loss(out, batch, recipe, (1.0, 1.0))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    held, peak = measured_peak(model, opt, batch, step)
    set_trainable(model, [])
    used = 1 if recipe.base_view_only else max(crops)
    work = mp.stage1_workload(images, used, train_tower=recipe.train_vision_tower, whole_model=True)
    return Check("stage 1", held, peak, mp.plan(model.config, work, "ddp", 1, mp.FP32, checkpointing=False))


def tiny_stage2_check(params, model, processor, batch_size: int = 2) -> Check:
    """One stage-2 step (projector + LLM trained) on ``batch_size`` copies of a conversation about a 2-crop image."""
    import numpy as np
    from PIL import Image

    from anomaly_ov.train.instruct import answer_positions, conversation_loss

    size = model.config.vision_config.image_size
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, 2 * size, 3), dtype=np.uint8))
    conv = [{"from": "human", "value": "<image>\nAre there any defects for the object in the image?"},
            {"from": "gpt", "value": "Yes, there is a scratch on the left of the object, about a tenth of its width."}]
    batch = dict(processor([[image]] * batch_size, [conv] * batch_size))
    model.set_trainable(vision_tower=False, expert=False, projector=True, language_model=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step() -> None:
        loss = conversation_loss(model, batch, params.instruct_recipe.loss_reduction)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    held, peak = measured_peak(model, opt, batch, step)
    layout = processor.layout(size, 2 * size)
    work = mp.stage2_workload(batch_size, int(batch["input_ids"].shape[1]), layout.visual + layout.anomaly,
                              int(answer_positions(batch["labels"]).numel()) // batch_size, layout.crops)
    return Check("stage 2", held, peak, mp.plan(model.config, work, "ddp", 1, mp.FP32, checkpointing=False))


def tiny_checks() -> list[Check]:
    params, model, processor = tiny_model()
    return [tiny_stage1_check(params, model), tiny_stage2_check(params, model, processor)]


# ------------------------------------------------------------------------------------------ release shapes
def meta_model(preset: str):
    from anomaly_ov.model.presets import build_shapes_only

    with torch.device("meta"):
        return build_shapes_only(PRESETS[preset])


def release_workloads(model, height: int, width: int, text_tokens: int, answer_tokens: int,
                      stage1_images: int) -> tuple[mp.Workload, mp.Workload]:
    """Stage 1 and stage 2 of the release's recipe for one ``height`` x ``width`` image per conversation."""
    from full_size_forward import build_inputs

    _, layout, _ = build_inputs(model, 1, height, width)
    media = layout.visual + layout.anomaly
    stage1 = mp.stage1_workload(stage1_images, layout.crops)
    stage2 = mp.stage2_workload(1, media + text_tokens, media, answer_tokens, layout.crops)
    return stage1, stage2


def gib(value: float) -> str:
    return f"{value / mp.GIB:6.1f}"


def print_counts(preset: str, counts: mp.ParamCounts) -> None:
    parts = ", ".join(f"{p} {getattr(counts, p) / 1e6:,.1f} M" for p in mp.PARTS)
    print(f"{preset}: {counts.total / 1e9:.3f} B parameters ({parts})")


def print_table(title: str, rows: list[mp.MemoryPlan], card: float) -> None:
    print(f"\n{title}  (GiB per GPU; fits = under 90% of {card:g} GiB)")
    print(f"{'strategy':8} {'GPUs':>4} {'ckpt':>4} | {'weights':>7} {'grads':>6} {'optim':>6} {'gather':>6} "
          f"{'activ':>6} | {'total':>6}  fits")
    for r in rows:
        p = r.parts
        fits = "yes" if r.total <= 0.9 * card * mp.GIB else "no"
        print(f"{r.strategy:8} {r.gpus:>4} {'on' if r.checkpointing else 'off':>4} | {gib(p['weights']):>7} "
              f"{gib(p['gradients'])} {gib(p['optimizer'])} {gib(p['gathered'])} {gib(p['activations'])} | "
              f"{gib(r.total)}  {fits}")


def markdown_table(config, stage2: mp.Workload, gpus: int, card: float) -> str:
    """The README's table: 7B stage 2 per strategy on ``gpus`` GPUs, checkpointing on and off."""
    counts = mp.count_parameters(config)
    lines = ["| strategy | checkpointing | weights | gradients | optimizer | gathered | activations | total (GiB) "
             f"| fits {card:g} GB |", "|---|---|---|---|---|---|---|---|---|"]
    for strategy in mp.STRATEGIES:
        for flag in (True, False):
            r = mp.plan(config, stage2, strategy, gpus, mp.BF16, flag, counts=counts)
            g = r.gib()
            fits = "yes" if r.total <= 0.9 * card * mp.GIB else "no"
            lines.append(f"| {strategy} | {'on' if flag else 'off'} | {g['weights']:.1f} | {g['gradients']:.1f} | "
                         f"{g['optimizer']:.1f} | {g['gathered']:.1f} | {g['activations']:.1f} | {g['total']:.1f} "
                         f"| {fits} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- GPU
#: a CPU-sized 0.5B layout for the shapes check's smoke run (the real tower geometry and vocabulary, few narrow
#: layers); its figures check the code path and the checkpointing accounting, not the 0.5B's numbers
SHRINK_TEXT = {"num_hidden_layers": 4, "hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4,
               "num_key_value_heads": 2}
SHRINK_VISION = {"num_hidden_layers": 4, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2}


def shapes_check(device: torch.device, height: int, width: int, shrink: bool = False) -> Check:
    """One stage-2 step of the 0.5B shapes (random weights) with gradient checkpointing, AdamW and, on a GPU, bf16
    autocast on fp32 weights for what trains (stage 2's own recipe), measured against the plan (``ddp``, 1 device).

    GPU: ``torch.cuda.max_memory_allocated`` over the step; CPU (float32, ``shrink`` for a smoke run):
    :class:`LiveTensorBytes`.
    """
    from full_size_forward import build_inputs, stage2_training_step

    from anomaly_ov.config import Params
    from anomaly_ov.model.presets import build_shapes_only
    from anomaly_ov.train.instruct import answer_positions

    cuda = device.type == "cuda"
    overrides = {"text_overrides": SHRINK_TEXT, "vision_overrides": SHRINK_VISION} if shrink else {}
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if cuda else torch.float32)
    try:
        with device:
            model = build_shapes_only(PRESETS["0.5b"], Params(model={"preset": PRESETS["0.5b"]}), **overrides)
    finally:
        torch.set_default_dtype(previous)
    inputs, layout, _ = build_inputs(model, 1, height, width)
    batch = {k: v.to(device) for k, v in inputs.items()}
    step, opt = stage2_training_step(model, batch, lr=1e-5, cuda=cuda, checkpointing=True)

    if cuda:
        step()
        torch.cuda.synchronize(device)
        held = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        held, peak = measured_peak(model, opt, batch, step)
    media = layout.visual + layout.anomaly
    work = mp.stage2_workload(1, int(batch["input_ids"].shape[1]), media,
                              int(answer_positions(batch["labels"]).numel()), layout.crops)
    precision = mp.BF16_FP32_WEIGHTS if cuda else mp.FP32
    return Check("stage 2 (0.5B shapes)", held, peak, mp.plan(model.config, work, "ddp", 1, precision, True))


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=[*PRESETS, "all"], default="all")
    parser.add_argument("--image-size", type=parse_size, default=(1000, 1500), help="HEIGHTxWIDTH of the image")
    parser.add_argument("--text-tokens", type=int, default=256, help="text tokens of a conversation (stage 2)")
    parser.add_argument("--answer-tokens", type=int, default=128, help="answer tokens of a conversation (stage 2)")
    parser.add_argument("--stage1-images", type=int, default=RELEASE_STAGE1_IMAGES_PER_GPU, help="images per GPU")
    parser.add_argument("--card-gib", type=float, default=CARD_GIB, help="GPU memory to fit in")
    parser.add_argument("--markdown", action="store_true", help="print the README's 7B table (8 GPUs) only")
    parser.add_argument("--gpu", action="store_true", help="also measure the 0.5B shapes on a GPU")
    parser.add_argument("--skip-tiny", action="store_true", help="skip the tiny model's CPU check")
    parser.add_argument("--shapes-smoke", action="store_true",
                        help="run the 0.5B shapes check on the CPU, shrunk (a smoke run of the --gpu code path)")
    args = parser.parse_args(argv)
    height, width = args.image_size
    torch.set_num_threads(1)

    if args.markdown:
        model = meta_model("7b")
        _, stage2 = release_workloads(model, height, width, args.text_tokens, args.answer_tokens, args.stage1_images)
        print(f"7B stage 2, 8 GPUs, {stage2.seq_len} tokens per sequence, per-device batch 1, bf16:\n")
        print(markdown_table(model.config, stage2, 8, args.card_gib))
        return

    for preset in PRESETS if args.preset == "all" else [args.preset]:
        model = meta_model(preset)
        counts = mp.count_parameters(model.config)
        print()
        print_counts(preset, counts)
        stage1, stage2 = release_workloads(model, height, width, args.text_tokens, args.answer_tokens,
                                           args.stage1_images)
        print(f"stage 1: {stage1.micro_batch} images x {stage1.crops} crops per GPU, expert trained "
              f"({counts.expert / 1e6:.1f} M), tower frozen; stage 2: batch 1 x {stage2.seq_len} tokens "
              f"({stage2.media_tokens} visual + anomaly), projector + LLM trained")
        print_table(f"{preset} stage 1", mp.plans(model.config, stage1), args.card_gib)
        print_table(f"{preset} stage 2", mp.plans(model.config, stage2), args.card_gib)
        order = [mp.plan(model.config, stage2, s, 8, mp.BF16, True, counts=counts) for s in mp.PREFERENCE]
        best = mp.first_fit(order, args.card_gib)
        print(f"{preset} stage 2 on 8 x {args.card_gib:g} GB: "
              + ", ".join(f"{r.strategy} {r.total / mp.GIB:.1f} GiB" for r in order)
              + f" -> needs {best.strategy if best else 'more GPUs (none fits)'} (least communication that fits)")

    if not args.skip_tiny:
        print("\ntiny preset, one CPU training step in float32 (LiveTensorBytes peak vs the plan, ddp, 1 device):")
        for check in tiny_checks():
            g = check.plan.gib()
            print(f"{check.stage}: measured {check.measured / 2**20:.2f} MiB, plan {check.plan.total / 2**20:.2f} MiB "
                  f"(weights {g['weights'] * 1024:.2f}, gradients {g['gradients'] * 1024:.2f}, optimizer "
                  f"{g['optimizer'] * 1024:.2f}, activations {g['activations'] * 1024:.2f} MiB), "
                  f"measured/plan {check.ratio:.2f}")
    if args.gpu:
        if torch.cuda.is_available():
            report_shapes_check(shapes_check(torch.device("cuda"), height, width), "torch.cuda.max_memory_allocated")
        else:
            print("--gpu: no CUDA device here; the 0.5B shapes were not measured")
    if args.shapes_smoke:
        report_shapes_check(shapes_check(torch.device("cpu"), 384, 576, shrink=True), "LiveTensorBytes, shrunk")


def report_shapes_check(check: Check, how: str) -> None:
    print(f"{check.stage}, {check.plan.strategy} on 1 device, gradient checkpointing ({how}): measured "
          f"{check.measured / mp.GIB:.3f} GiB, plan {check.plan.total / mp.GIB:.3f} GiB, "
          f"measured/plan {check.ratio:.2f}")


if __name__ == "__main__":
    main()
