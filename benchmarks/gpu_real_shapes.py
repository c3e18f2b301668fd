"""One stage-1 and one stage-2 training step at the real LLaVA-OneVision shapes (random weights, no download).

    .venv/bin/python benchmarks/gpu_real_shapes.py                      # GPU: 0.5B, bf16, a 1000 x 1500 image
    .venv/bin/python benchmarks/gpu_real_shapes.py --preset 7b          # 7B: measured if it fits, else estimated
    .venv/bin/python benchmarks/gpu_real_shapes.py --device cpu --shrink --image-size 384x384 --steps 1  # CI smoke

The model is ``build_shapes_only`` (SigLIP so400m 384 px / patch 14, Qwen2 0.5B or 7B, the expert) in bf16 on a
GPU, float32 on a CPU. Each step is the stages' own code: stage 1 runs ``ExpertStage`` + ``expert_loss`` of the
pretrained recipe (tower frozen, expert trained) on ``--stage1-batch`` images; stage 2 runs ``conversation_loss``
(LM head on answer positions only) with the projector and LLM trainable, tower and expert frozen, gradient
checkpointing on a GPU, on ``--batch`` conversations, then an AdamW step. The prompt comes from the real
``AnomalyOVProcessor`` (AnyRes ``anyres_max_9`` crops of the image, the anomaly tokens, a Yes/No answer).

Printed per stage: time per step (the first step warms up and is not counted), images/s, tokens/s, peak memory,
model FLOPs per step and the model FLOPs utilisation (MFU) against the device's bf16 dense peak (``--peak-tflops``
or a table of known GPUs). Model FLOPs are analytic, without gradient checkpointing's recomputation:

* a trained matmul weight costs 6 FLOPs per token (2 forward, 4 backward), a frozen one that no gradient flows
  through 2, a frozen one that gradients pass through (the LLM's inputs need them for the projector) 4;
* attention scores and values add 4 * layers * width * tokens per token forward (x3 with backward), counted
  over the whole sequence (not halved for the causal mask);
* stage 2: LLM body trained over all tokens, LM head over the answer positions, projector over the visual and
  anomaly tokens, tower and expert forward only; stage 1: tower forward only, expert trained.

``--shrink`` keeps the image geometry (384 px, 27 x 27 grid, the 36 pinpoints) and the vocabulary but cuts depth and
width, so the script runs in seconds on a CPU; its figures then say nothing about the real model. Every run prints
the project's memory plan (``anomaly_ov.memory_plan``) of this stage-2 step on 1 GPU and with ZeRO-2 over 8, and on
a GPU the measured / planned peak.

Measured on one H200 (2026-12-04, torch 2.11.0+cu130; README, 'Real checkpoints on a GPU'): 0.5B stage 1 114
ms/step (MFU 31 %), stage 2 300 ms/step, 29,400 tokens/s, peak 10.15 GiB against 9.6 planned (MFU 16 %); 7B stage 1
117 ms/step, stage 2 out of memory on the one GPU (the plan: 118.3 GiB).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from full_size_forward import build_inputs, parse_size, stage2_training_step  # noqa: E402  (shared with memory_plan)

PRESETS = {"0.5b": "llava-onevision-0.5b", "7b": "llava-onevision-7b"}
#: bf16 dense peak (no sparsity) in TFLOP/s by a substring of torch.cuda.get_device_name(); first match wins.
BF16_PEAK_TFLOPS = [
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("H800", 989.0), ("GH200", 989.0),
    ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
    ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0), ("A6000", 155.0),
]
SHRINK_TEXT = {"num_hidden_layers": 1, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
               "num_key_value_heads": 2}
SHRINK_VISION = {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2}
GIB = 2**30


# --------------------------------------------------------------------------------------------------- FLOPs
@dataclass
class Counts:
    """Parameter counts of the model's parts (matmul weights and everything else; embeddings excluded)."""

    tower: int
    tower_layers: int
    tower_width: int
    expert: int
    projector: int
    llm_body: int
    llm_layers: int
    llm_width: int
    vocab: int

    @classmethod
    def of(cls, model) -> Counts:
        inner = model.model
        lm = inner.language_model
        body = sum(p.numel() for n, p in lm.named_parameters() if "embed_tokens" not in n)
        tower = sum(p.numel() for n, p in inner.vision_tower.named_parameters() if "embedding" not in n)
        vcfg, tcfg = model.config.vision_config, model.config.text_config
        return cls(
            tower=tower, tower_layers=vcfg.num_hidden_layers, tower_width=vcfg.hidden_size,
            expert=sum(p.numel() for p in model.anomaly_expert.parameters()),
            projector=sum(p.numel() for p in inner.multi_modal_projector.parameters()),
            llm_body=body, llm_layers=tcfg.num_hidden_layers, llm_width=tcfg.hidden_size, vocab=tcfg.vocab_size,
        )


def attention_flops(layers: int, width: int, tokens: int) -> float:
    """Forward FLOPs of QK^T and AV over one sequence of ``tokens`` (whole square, not causal-halved)."""
    return 4.0 * layers * width * tokens * tokens


def tower_flops(c: Counts, crops: int, patches: int, layers_run: int | None = None) -> float:
    """Forward FLOPs of the vision tower over ``crops`` crops of ``patches`` tokens."""
    frac = (layers_run or c.tower_layers) / c.tower_layers
    per_crop = 2.0 * c.tower * frac * patches + attention_flops(layers_run or c.tower_layers, c.tower_width, patches)
    return crops * per_crop


def stage1_flops(c: Counts, crops: int, patches: int) -> float:
    """Stage 1 (pretrained recipe): tower forward, expert forward + backward (6 per weight per token)."""
    return tower_flops(c, crops, patches) + 6.0 * c.expert * patches * crops


def stage2_flops(c: Counts, crops: int, patches: int, seq_len: int, batch: int, media_tokens: int,
                 answer_positions: int) -> float:
    """Stage 2: tower + expert forward, projector trained over the media tokens, LLM body trained over every token,
    LM head over the answer positions (``logits_to_keep``)."""
    llm = batch * (6.0 * c.llm_body * seq_len + 3.0 * attention_flops(c.llm_layers, c.llm_width, seq_len))
    head = 6.0 * c.vocab * c.llm_width * answer_positions * batch
    projector = 6.0 * c.projector * media_tokens * batch
    frozen = tower_flops(c, crops, patches) + 2.0 * c.expert * patches * crops
    return llm + head + projector + frozen


def peak_flops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override * 1e12, f"{override:g} TFLOP/s (--peak-tflops)"
    if device.type != "cuda":
        return None, "unknown for a CPU (pass --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    for key, tflops in BF16_PEAK_TFLOPS:
        if key in name:
            return tflops * 1e12, f"{tflops:g} TFLOP/s ({name}, bf16 dense)"
    return None, f"unknown for {name} (pass --peak-tflops)"


# -------------------------------------------------------------------------------------------------- memory
def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB; the whole process


# ---------------------------------------------------------------------------------------------------- steps
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step, steps: int, device: torch.device) -> float:
    """Seconds per step, mean over ``steps`` after one warm-up step (``steps`` 0: the warm-up step alone); the
    GPU's peak-memory counter starts here, so the peak read afterwards is the steps'."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(steps + 1):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        if i > 0 or steps == 0:
            times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


def stage1_batch(model, batch: int, height: int, width: int, device: torch.device) -> dict:
    """A collate_expert batch of ``batch`` random images through the stage-1 preprocessor (labels alternate)."""
    from full_size_forward import shapes_image_processor
    from PIL import Image

    from anomaly_ov.data.loaders import collate_expert
    from anomaly_ov.model.processing import ImagePreprocessor

    pre = ImagePreprocessor(shapes_image_processor(model.config))
    rng = np.random.default_rng(1)
    grid = model.config.grid_size
    items = []
    for i in range(batch):
        image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        pixels, size = pre(image)
        items.append({"index": i, "pixel_values": pixels, "image_size": size, "label": i % 2,
                      "mask": torch.zeros(1, 64, 64), "mask_grid": torch.zeros(1, grid, grid),
                      "has_mask_target": i % 2 == 0, "category": "shapes"})
    out = collate_expert(items)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in out.items()}


def run_stage1(model, params, args, device, peak) -> None:
    from anomaly_ov.train.expert import ExpertStage, expert_loss, set_trainable

    recipe = params.expert_recipe
    batch = stage1_batch(model, args.stage1_batch, args.height, args.width, device)
    trainable = list(model.anomaly_expert.parameters())
    if recipe.train_vision_tower:
        trainable += list(model.model.vision_tower.parameters())
    trainable = set_trainable(model, trainable)
    stage = ExpertStage(model, recipe.base_view_only)
    opt = torch.optim.AdamW(trainable, lr=recipe.lr)
    crops = list(batch["crops_per_image"])
    used = len(crops) if recipe.base_view_only else sum(crops)
    model.train()

    def step() -> None:  # as stage 1's loop: no autocast (the weights are already bf16 on a GPU)
        out = stage(batch["pixel_values"], batch["image_sizes"], crops)
        loss, _ = expert_loss(out, batch, recipe, (1.0, 1.0))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    seconds = timed_steps(step, args.steps, device)
    patches = model.config.grid_size**2
    flops = stage1_flops(Counts.of(model), used, patches)
    report("stage 1", seconds, images=len(crops), tokens=used * patches, flops=flops, peak=peak, device=device,
           extra=f"{len(crops)} images, {used} crops of {patches} patches through the tower"
                 f"{' (base views only)' if recipe.base_view_only else ''}")
    set_trainable(model, [])


def run_stage2(model, params, args, device, peak, planned: float) -> None:
    from anomaly_ov.train.instruct import answer_positions

    recipe = params.instruct_recipe
    inputs, layout, _ = build_inputs(model, args.batch, args.height, args.width)
    batch = {k: v.to(device) for k, v in inputs.items()}
    cuda = device.type == "cuda"
    # as stage 2: what trains is updated in float32, the frozen parts stay bf16
    step, _ = stage2_training_step(model, batch, lr=recipe.lr, cuda=cuda, loss_reduction=recipe.loss_reduction,
                                   checkpointing=cuda and params.train.instruct.gradient_checkpointing)
    seconds = timed_steps(step, args.steps, device)
    seq_len = batch["input_ids"].shape[1]
    keep = int(answer_positions(batch["labels"]).numel())
    patches = model.config.grid_size**2
    flops = stage2_flops(Counts.of(model), layout.crops * args.batch, patches, seq_len, args.batch,
                         layout.visual + layout.anomaly, keep)
    report("stage 2", seconds, images=args.batch, tokens=args.batch * seq_len, flops=flops, peak=peak,
           device=device, extra=f"batch {args.batch} x {seq_len} tokens (visual {layout.visual}, anomaly "
                                f"{layout.anomaly}, {layout.crops} crops, grid {layout.grid[0]}x{layout.grid[1]})")
    if cuda and planned:
        print(f"stage 2: measured / planned peak (ddp, 1 GPU) {peak_memory_gib(device) / planned:.2f}")


def report(name: str, seconds: float, *, images: int, tokens: int, flops: float, peak: tuple, device,
           extra: str) -> None:
    peak_value, _ = peak
    achieved = flops / seconds
    mfu = f"{100 * achieved / peak_value:.1f}%" if peak_value else "n/a"
    print(f"{name}: {extra}")
    print(f"{name}: {seconds * 1000:.0f} ms/step, {images / seconds:.2f} images/s, {tokens / seconds:,.0f} tokens/s, "
          f"peak memory {peak_memory_gib(device):.2f} GiB, {flops / 1e12:.3f} TFLOP/step, "
          f"{achieved / 1e12:.2f} TFLOP/s, MFU {mfu}")


def stage2_plans(model, preset: str, batch: int, height: int, width: int) -> float:
    """Print the memory plan (``anomaly_ov.memory_plan``, what ``benchmarks/memory_plan.py`` tabulates) of this
    stage-2 step on 1 GPU (ddp) and over 8 (ZeRO-2), gradient checkpointing on; return the 1-GPU total in GiB."""
    from anomaly_ov import memory_plan as mp
    from anomaly_ov.train.instruct import answer_positions

    inputs, layout, _ = build_inputs(model, batch, height, width)
    work = mp.stage2_workload(batch, int(inputs["input_ids"].shape[1]), layout.visual + layout.anomaly,
                              int(answer_positions(inputs["labels"]).numel()) // batch, layout.crops)
    one = 0.0
    for strategy, gpus in (("ddp", 1), ("zero2", 8)):
        gib = mp.plan(model.config, work, strategy, gpus, mp.BF16, checkpointing=True).gib()
        one = one or gib["total"]
        print(f"plan {preset} stage 2 ({work.seq_len} tokens, {strategy} on {gpus} GPU{'s' if gpus > 1 else ''}, "
              f"checkpointing): {gib['total']:.1f} GiB per GPU = " + " + ".join(
                  f"{k} {v:.1f}" for k, v in gib.items() if k != "total"))
    return one


# ----------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="0.5b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-size", type=parse_size, default=(1000, 1500), help="HEIGHTxWIDTH")
    parser.add_argument("--batch", type=int, default=1, help="stage-2 conversations per step (release: 1 per GPU)")
    parser.add_argument("--stage1-batch", type=int, default=4, help="stage-1 images per step")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps after one warm-up (GPU 3, CPU 1; 0: time the warm-up step alone)")
    parser.add_argument("--shrink", action="store_true", help="few narrow layers (CPU smoke runs)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's bf16 peak, for MFU")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    args.height, args.width = args.image_size
    device = torch.device(args.device)
    if args.steps is None:
        args.steps = 3 if device.type == "cuda" else 1
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    from anomaly_ov.config import Params
    from anomaly_ov.model.presets import build_shapes_only

    preset = PRESETS[args.preset]
    params = Params(model={"preset": preset})
    overrides = {"text_overrides": SHRINK_TEXT, "vision_overrides": SHRINK_VISION} if args.shrink else {}
    with torch.device("meta"):  # the real preset's sizes, whatever --shrink says
        meta = build_shapes_only(preset, params)
    planned = stage2_plans(meta, preset, args.batch, args.height, args.width)
    peak = peak_flops(device, args.peak_tflops)
    print(f"device {device} ({'bf16' if dtype == torch.bfloat16 else 'float32'}), peak {peak[1]}; "
          f"{args.steps} timed step(s) after a warm-up; image {args.height}x{args.width}")

    torch.manual_seed(0)
    start = time.perf_counter()
    try:
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                model = build_shapes_only(preset, params, **overrides)
        finally:
            torch.set_default_dtype(previous)
        print(f"built {preset}{' (shrunk)' if args.shrink else ''} on {device} in {time.perf_counter() - start:.1f} s:"
              f" {sum(p.numel() for p in model.parameters()) / 1e9:.3f} B parameters")
        run_stage1(model, params, args, device, peak)
        run_stage2(model, params, args, device, peak, planned if not args.shrink else 0.0)
    except torch.OutOfMemoryError as exc:
        first = str(exc).splitlines()[0]
        print(f"{preset} does not fit on {device}: {first}; see the plan above")


if __name__ == "__main__":
    main()
