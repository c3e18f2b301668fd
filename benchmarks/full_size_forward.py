"""One forward of the 0.5B-shaped Anomaly-OV (built from config, random weights, no download).

    .venv/bin/python benchmarks/full_size_forward.py [--preset llava-onevision-0.5b] [--threads 2]
    .venv/bin/python benchmarks/full_size_forward.py --device cuda --batch 4 --steps 5     # GPU: fwd+bwd bf16

CPU: float32, one 384x384 image (1x1 AnyRes grid: base view + 1 crop), prints the sequence layout and the time of
the tower+expert and of the whole forward. CUDA: bf16, stage-2 trainability (projector + LLM; tower and expert
frozen), forward+backward over ``--steps`` steps of ``--batch`` conversations, tokens/s.

The prompt is made by the real AnomalyOVProcessor (with the tiny BPE tokenizer, its placeholder ids mapped to the
shapes-only model's ids), so the layout is exactly what training and inference build.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def shapes_image_processor(cfg):
    """LLaVA-OneVision's image processor for a shapes-only model (no checkpoint to read: crop size and pinpoints
    from the config, transformers' defaults otherwise; the normalisation does not change the timings)."""
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    size = cfg.vision_config.image_size
    return LlavaOnevisionImageProcessorPil(
        size={"height": size, "width": size}, image_grid_pinpoints=[list(p) for p in cfg.image_grid_pinpoints]
    )


def build_inputs(model, batch: int, image_size: int, width: int | None = None):
    """``batch`` copies of one conversation about a random ``image_size`` x ``width`` (height x width) image."""
    from PIL import Image

    from anomaly_ov.model.processing import AnomalyOVProcessor
    from anomaly_ov.model.tokenizer import train_tokenizer

    cfg = model.config
    tok = train_tokenizer(["Are there any defects for the object in the image? Yes, a scratch on the left."])
    proc = AnomalyOVProcessor(tok, shapes_image_processor(cfg), num_image_tokens=cfg.grid_size**2)
    rng = np.random.default_rng(0)
    width = width or image_size
    image = Image.fromarray(rng.integers(0, 255, (image_size, width, 3), dtype=np.uint8))
    conv = [
        {"from": "human", "value": "<image>\nAre there any defects for the object in the image?"},
        {"from": "gpt", "value": "Yes, there is a scratch on the left."},
    ]
    inputs = proc([[image]] * batch, [conv] * batch)
    ids = inputs["input_ids"]
    remap = {
        proc.image_token_id: cfg.image_token_id,
        proc.adv_token_id: cfg.adverb_token_index,
        proc.anomaly_token_id: cfg.anomaly_token_index,
    }
    for src, dst in remap.items():
        ids[ids == src] = dst
    layout = proc.layout(image_size, width)
    return inputs, layout, proc


def stage2_training_step(model, batch: dict, *, lr: float, cuda: bool, checkpointing: bool,
                         loss_reduction: str = "token"):
    """Stage 2's training step on ``batch``, set up as the stage does it: the projector and the LLM train with fp32
    master weights (the frozen tower and expert stay as built), AdamW, bf16 autocast on CUDA, gradient checkpointing
    when ``checkpointing``. Returns the step (forward, backward, optimiser step) as a callable to time or measure,
    and its optimiser (whose state a memory measurement counts)."""
    from anomaly_ov.train.instruct import conversation_loss, fp32_master_weights

    model.set_trainable(vision_tower=False, expert=False, projector=True, language_model=True)
    if checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model.train()
    fp32_master_weights(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = conversation_loss(model, batch, loss_reduction)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, opt


def parse_size(text: str) -> tuple[int, int]:
    """``HEIGHTxWIDTH`` (``--image-size``) as two ints."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must be HEIGHTxWIDTH, e.g. 1000x1500, got {text!r}") from None
    return h, w


def describe(inputs, layout, cfg) -> None:
    ids = inputs["input_ids"][0]
    names = {cfg.image_token_id: "visual", cfg.adverb_token_index: "<adv>", cfg.anomaly_token_index: "anomaly"}
    runs: list[list] = []
    for t in ids.tolist():
        kind = names.get(t, "text")
        if runs and runs[-1][0] == kind:
            runs[-1][1] += 1
        else:
            runs.append([kind, 1])
    print(f"sequence: {ids.numel()} tokens; crops {layout.crops} (grid {layout.grid[0]}x{layout.grid[1]}), "
          f"visual {layout.visual}, anomaly {layout.anomaly} = 1 + 4 + 2h(2w+1)")
    print("layout:   " + " | ".join(f"{k} x{n}" for k, n in runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="llava-onevision-0.5b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=384)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from anomaly_ov.model.expert import count_parameters
    from anomaly_ov.model.presets import build_shapes_only

    start = time.perf_counter()
    torch.manual_seed(0)
    model = build_shapes_only(args.preset)
    millions = {
        name: count_parameters(part) / 1e6
        for name, part in [("all", model), ("tower", model.model.vision_tower),
                           ("LLM", model.model.language_model), ("expert", model.anomaly_expert)]
    }
    print(f"built {args.preset} from config in {time.perf_counter() - start:.1f} s: {millions['all']:.1f} M parameters "
          f"(tower {millions['tower']:.1f} M, LLM {millions['LLM']:.1f} M, expert {millions['expert']:.2f} M); "
          f"expert layers {model.config.expert_layers}, LLM layer {model.config.llm_layer_index}")
    inputs, layout, _ = build_inputs(model, args.batch, args.image_size)
    describe(inputs, layout, model.config)

    if args.device == "cpu":
        model.eval()
        with torch.inference_mode():
            t0 = time.perf_counter()
            exp = model.expert_forward(inputs["pixel_values"], inputs["image_sizes"])
            t1 = time.perf_counter()
            out = model(**inputs)
            t2 = time.perf_counter()
        n = inputs["input_ids"].numel()
        print(f"CPU float32, {args.threads} threads: tower+expert {t1 - t0:.1f} s; full forward {t2 - t1:.1f} s "
              f"({n / (t2 - t1):.0f} tokens/s); loss {float(out.loss):.3f}; score {float(exp.scores[0]):.3f}")
        return

    device = torch.device(args.device)
    model.to(device=device, dtype=torch.bfloat16).train()
    model.set_trainable(vision_tower=False, expert=False, projector=True, language_model=True)
    batch = {k: v.to(device) for k, v in inputs.items()}
    torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(args.steps + 1):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = model(**batch)
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        if step > 0:  # the first step warms up kernels
            times.append(time.perf_counter() - t0)
    n = batch["input_ids"].numel()
    mean = sum(times) / len(times)
    print(f"{torch.cuda.get_device_name(device)} bf16 forward+backward, batch {args.batch} x {n // args.batch} tokens: "
          f"{mean * 1000:.0f} ms/step, {n / mean:,.0f} tokens/s, peak memory "
          f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
