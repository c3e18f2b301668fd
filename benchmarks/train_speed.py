"""Training throughput: stage 1 images/s and stage 2 tokens/s.

* tiny preset on CPU (always): the real stage-1 step (tower + expert forward/backward + AdamW, base view only as
  the tiny recipe trains) and the real stage-2 step (processor-built batch, projector + LLM trainable, the LM head
  on the answer positions only), against a baseline stage-2 step that takes the model's own loss over every
  position (``stage2_answer_logits_speedup``); and the text warm-up's step on mixed-length conversations batched
  by length against the plain shuffle (``text_warmup_length_grouping_speedup``).
* when CUDA is available: the 0.5B-shaped model (``build_shapes_only``, random weights) in bf16 — stage 1 with the
  tower frozen (the pretrained recipe) and stage 2 on the LLM with a 2048-token sequence — with MFU
  (6 * trainable-or-forward FLOPs / peak; peak bf16 dense from ``--peak-tflops``, default 989 for H100/H200).

    python benchmarks/train_speed.py [--steps 5] [--batch 16] [--threads 2] [--gpu-only] [--cpu-only]
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch


def _timed(fn, steps: int, warmup: int = 1, sync=lambda: None) -> float:
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - start) / steps


def tiny_cpu(steps: int, batch: int) -> dict:
    from PIL import Image

    from anomaly_ov.config import load_params
    from anomaly_ov.data.loaders import collate_instruct
    from anomaly_ov.model.presets import build_model, processor_for
    from anomaly_ov.model.tokenizer import train_tokenizer
    from anomaly_ov.train import common
    from anomaly_ov.train.expert import ExpertStage, expert_loss
    from anomaly_ov.train.instruct import conversation_loss, text_warmup_items

    params = load_params(None, ["tracking.enabled=false"])
    tok = train_tokenizer(())
    model = build_model(params, tokenizer=tok)
    proc = processor_for(model, tok)
    recipe = params.expert_recipe

    # stage 1
    stage = ExpertStage(model, recipe.base_view_only)
    model.set_trainable(vision_tower=True, expert=True, projector=False, language_model=False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    size = model.config.vision_config.image_size
    pix = torch.randn(batch, 3, size, size)
    sizes = torch.tensor([[size, size]] * batch)
    g = model.config.grid_size
    res = params.evaluate.resolution
    masks = (torch.rand(batch, 1, res, res) > 0.95).float()
    b = {"labels": (torch.arange(batch) % 2).float(), "masks": masks,
         "mask_grids": torch.nn.functional.adaptive_avg_pool2d(masks, g),  # defect fraction per expert cell
         "has_mask_target": torch.ones(batch, dtype=torch.bool)}

    def step1():
        out = stage(pix, sizes, [1] * batch)
        loss, _ = expert_loss(out, b, recipe, (1.0, 1.0))
        opt.zero_grad()
        loss.backward()
        opt.step()

    s1 = _timed(step1, steps)
    # stage 2
    model.set_trainable(vision_tower=False, expert=False, projector=True, language_model=True)
    opt2 = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    img = Image.new("RGB", (size, size), (120, 100, 90))
    conv = [{"from": "human", "value": "<image>\nAre there any defects for the object in the image? "
                                       "Please reply with 'Yes' or 'No'."},
            {"from": "gpt", "value": "Yes. There is a small dark stain near the upper left corner of the fabric."}]
    inputs = proc([[img]] * batch, [conv] * batch)
    tokens = int(inputs["attention_mask"].sum())

    reduction = params.instruct_recipe.loss_reduction

    def step2(full_logits: bool = False):
        # the stage's loss (LM head on the answer positions only) or, as the baseline, the model's own on every one
        loss = model(**inputs).loss if full_logits else conversation_loss(model, inputs, reduction)
        opt2.zero_grad()
        loss.backward()
        opt2.step()

    s2 = _timed(step2, steps)
    s2_full = _timed(lambda: step2(full_logits=True), steps)

    # stage 2's text warm-up: the same mixed-length conversations in the plain shuffle or grouped by length
    rng = random.Random(0)
    words = ["the", "fabric", "shows", "a", "small", "dark", "stain", "near", "the", "upper", "left", "corner"]
    records = [{"image": "x.png", "conversations": [
        {"from": "human", "value": "<image>\nDescribe the defect."},
        {"from": "gpt", "value": " ".join(rng.choices(words, k=rng.choice([1, 1, 12, 20, 30, 60, 120])))}]}
        for _ in range(batch * 8)]
    items = text_warmup_items(records, proc, {("x.png",): ["highly"]}, max_length=1024)
    lengths = [len(it["input_ids"]) for it in items]

    def text_epoch(grouped: bool) -> None:
        for indices in common.epoch_batches(len(items), batch, 0, 0, lengths=lengths if grouped else None):
            b2 = collate_instruct([items[i] for i in indices], proc.pad_token_id)
            loss = conversation_loss(model, {k: b2[k] for k in ("input_ids", "attention_mask", "labels")}, reduction)
            opt2.zero_grad()
            loss.backward()
            opt2.step()

    text_plain = _timed(lambda: text_epoch(False), 1)
    text_grouped = _timed(lambda: text_epoch(True), 1)
    return {"device": "cpu", "threads": torch.get_num_threads(), "grid": g, "batch": batch,
            "stage1_images_per_s": round(batch / s1, 1), "stage2_tokens_per_s": round(tokens / s2, 1),
            "stage2_full_logits_tokens_per_s": round(tokens / s2_full, 1),
            "stage2_answer_logits_speedup": round(s2_full / s2, 2), "stage2_tokens_per_batch": tokens,
            "text_warmup_tokens_per_s": round(sum(lengths) / text_grouped, 1),
            "text_warmup_ungrouped_tokens_per_s": round(sum(lengths) / text_plain, 1),
            "text_warmup_length_grouping_speedup": round(text_plain / text_grouped, 2)}


def shapes_gpu(steps: int, batch: int, seq: int, peak_tflops: float) -> dict:
    from anomaly_ov.model.presets import build_shapes_only

    dev = torch.device("cuda")
    sync = torch.cuda.synchronize
    model = build_shapes_only("llava-onevision-0.5b").to(dev, dtype=torch.bfloat16)
    cfg = model.config
    tower_params = sum(p.numel() for p in model.model.vision_tower.parameters())
    expert_params = sum(p.numel() for p in model.anomaly_expert.parameters())
    llm_params = sum(p.numel() for p in model.model.language_model.parameters())
    # stage 1, pretrained recipe: tower frozen, expert trained
    model.set_trainable(vision_tower=False, expert=True, projector=False, language_model=False)
    opt = torch.optim.AdamW(list(model.anomaly_expert.parameters()), lr=1e-4)
    size = cfg.vision_config.image_size
    crops = 2  # a square image: base view + one crop
    pix = torch.randn(batch, crops, 3, size, size, device=dev, dtype=torch.bfloat16)
    labels = (torch.arange(batch, device=dev) % 2).float()

    def step1():
        with torch.no_grad():
            feats, levels = model.tower_features(pix.flatten(0, 1))
        out = model._run_expert(feats, levels, [crops] * batch)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.score_logits.float().reshape(-1), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    s1 = _timed(step1, steps, warmup=2, sync=sync)
    tokens_per_crop = cfg.grid_size ** 2
    flops1 = 2 * tower_params * tokens_per_crop * crops * batch + 6 * expert_params * tokens_per_crop * crops * batch
    # stage 2: LLM (+ projector) trained on `seq`-token sequences
    model.set_trainable(vision_tower=False, expert=False, projector=True, language_model=True)
    model.gradient_checkpointing_enable()
    opt2 = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, foreach=True)
    lm_batch = max(1, batch // 8)
    ids = torch.randint(0, 150000, (lm_batch, seq), device=dev)

    def step2():
        out = model(input_ids=ids, labels=ids)
        opt2.zero_grad()
        out.loss.backward()
        opt2.step()

    s2 = _timed(step2, steps, warmup=2, sync=sync)
    tokens = lm_batch * seq
    flops2 = 6 * llm_params * tokens
    peak = peak_tflops * 1e12
    return {"device": torch.cuda.get_device_name(0), "dtype": "bfloat16", "batch_images": batch,
            "stage1_images_per_s": round(batch / s1, 1), "stage1_mfu": round(flops1 / s1 / peak, 4),
            "stage2_tokens_per_s": round(tokens / s2, 1), "stage2_mfu": round(flops2 / s2 / peak, 4),
            "stage2_seq_len": seq, "stage2_batch": lm_batch, "params_tower": tower_params,
            "params_expert": expert_params, "params_llm": llm_params,
            "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--gpu-only", action="store_true")
    parser.add_argument("--cpu-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    if not args.gpu_only:
        results["tiny_cpu"] = tiny_cpu(args.steps, args.batch)
        print(json.dumps({"tiny_cpu": results["tiny_cpu"]}), flush=True)
    if torch.cuda.is_available() and not args.cpu_only:
        results["llava_0_5b_shapes_gpu"] = shapes_gpu(args.steps, args.batch * 4, args.seq, args.peak_tflops)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
