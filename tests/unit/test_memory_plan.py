"""The memory plan (anomaly_ov/memory_plan.py): parameter counts from config shapes equal the real modules'
``sum(p.numel())``; the plan for the tiny model matches a measured CPU training step; the strategies' arithmetic."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from anomaly_ov import memory_plan as mp

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def assert_parts_match(model) -> None:
    """Total and part by part: the plan's counts against the modules of an AnomalyOVForConditionalGeneration."""
    counts = mp.count_parameters(model.config)
    inner = model.model
    assert counts.total == numel(model)
    assert counts.tower == numel(inner.vision_tower)
    assert counts.expert == numel(model.anomaly_expert)
    assert counts.projector == numel(inner.multi_modal_projector) + inner.image_newline.numel()
    assert counts.llm_embed + counts.llm_body == numel(inner.language_model)
    tied = model.lm_head.weight is inner.language_model.embed_tokens.weight
    assert counts.lm_head == (0 if tied else model.lm_head.weight.numel())
    assert counts.llm_layer == numel(inner.language_model.layers[0])
    assert counts.tower_layer == numel(inner.vision_tower.encoder.layers[0])


def test_parameter_counts_equal_the_tiny_model():
    from anomaly_ov.config import Params
    from anomaly_ov.model.presets import build_model
    from anomaly_ov.model.tokenizer import train_tokenizer

    assert_parts_match(build_model(Params(), tokenizer=train_tokenizer(())))


def test_parameter_counts_equal_the_real_layout_checkpoint(real_layout_checkpoint):
    """The pretrained path on the shrunk real-layout checkpoint (hub config, real vocabulary): whole model, and stage
    1's tower + expert model."""
    from real_layout import real_layout_params

    from anomaly_ov.model.presets import build_expert_model, build_model

    params = real_layout_params(real_layout_checkpoint)
    model = build_model(params)
    assert_parts_match(model)
    counts = mp.count_parameters(model.config)
    assert counts.llm_embed == 152000 * model.config.text_config.hidden_size  # the hub's vocabulary rows
    assert numel(build_expert_model(params)) == counts.of(mp.stage1_workload(1, 1).resident)


def test_self_similarity_term_on_the_real_layout_checkpoint(real_layout_checkpoint):
    """The term turned on for a pretrained preset: the plan counts its two parameters, and the expert scores the real
    tower's grid (the pretrained presets keep it off; this is the path a user who turns it on takes)."""
    import torch
    from real_layout import real_layout_params

    from anomaly_ov.model.presets import build_expert_model, build_model

    params = real_layout_params(real_layout_checkpoint, expert={"self_similarity": True})
    model = build_model(params)
    assert_parts_match(model)
    assert mp.count_parameters(model.config).expert == numel(build_model(real_layout_params(
        real_layout_checkpoint)).anomaly_expert) + 2
    expert = build_expert_model(params).anomaly_expert
    g, c = expert.grid_size, expert.hidden_size
    features = torch.randn(3, g * g, c)
    out = expert(features, [torch.randn(3, g * g, c) for _ in range(expert.num_levels)], [2, 1])
    assert out.score_logits.shape == (2, 1) and torch.isfinite(out.score_logits).all()


@pytest.mark.parametrize("preset", ["llava-onevision-0.5b", "llava-onevision-7b"])
def test_parameter_counts_equal_the_released_shapes(preset):
    """The real 0.5B / 7B architectures built on the meta device (no memory, no download)."""
    import torch

    from anomaly_ov.model.presets import build_shapes_only

    with torch.device("meta"):
        model = build_shapes_only(preset)
    assert_parts_match(model)
    total = mp.count_parameters(model.config).total
    assert (0.85e9 < total < 0.95e9) if preset.endswith("0.5b") else (7.9e9 < total < 8.1e9)


def test_tiny_training_steps_match_the_plan():
    """One measured CPU step per stage (tiny preset, fp32): what is held before the step is the plan's weights +
    optimizer state (the buffers aside); the step's peak is the plan's total within 30 %."""
    sys.path.insert(0, str(BENCHMARKS))
    from memory_plan import tiny_checks

    checks = tiny_checks()
    assert [c.stage for c in checks] == ["stage 1", "stage 2"]
    for check in checks:
        parts = check.plan.parts
        assert check.held == pytest.approx(parts["weights"] + parts["optimizer"], rel=0.01), check.stage
        assert parts["activations"] > parts["weights"], check.stage  # the step is dominated by what it keeps
        assert 0.8 < check.ratio < 1.3, (check.stage, check.measured, check.plan.parts)


def test_live_tensor_bytes_counts_storage_once_and_frees():
    import torch

    sys.path.insert(0, str(BENCHMARKS))
    from memory_plan import LiveTensorBytes

    with LiveTensorBytes() as tracker:
        a = torch.ones(1000)  # 4000 bytes
        view = a[:10]  # same storage: not counted again
        b = a * 2
        del b
        c = torch.zeros(500)
    assert tracker.peak == 8000 and tracker.current == 6000
    assert view.numel() == 10 and c.numel() == 500


# ---------------------------------------------------------------------------------------------- strategies
@pytest.fixture(scope="module")
def seven_b():
    import torch

    from anomaly_ov.model.presets import build_shapes_only

    with torch.device("meta"):
        config = build_shapes_only("llava-onevision-7b").config
    work = mp.stage2_workload(1, seq_len=9000, media_tokens=8700, answer_tokens=128, crops=13)
    return config, work


def test_7b_stage2_does_not_fit_80gb_under_ddp_and_fits_under_zero2_with_checkpointing(seven_b):
    config, work = seven_b
    trained = mp.count_parameters(config).of(work.trained)
    ddp = mp.plan(config, work, "ddp", 8)
    # bf16 weight + bf16 gradient + fp32 master + two fp32 moments: 16 bytes a trained parameter, and DDP's buckets
    assert ddp.parts["optimizer"] == 12 * trained and ddp.parts["gradients"] == 2 * 2 * trained
    assert ddp.total > 80 * mp.GIB
    zero2 = mp.plan(config, work, "zero2", 8, checkpointing=True)
    assert zero2.total < 0.9 * 80 * mp.GIB
    assert mp.plan(config, work, "zero2", 8, checkpointing=False).total > zero2.total + 20 * mp.GIB
    candidates = [mp.plan(config, work, s, 8) for s in mp.PREFERENCE]
    assert mp.first_fit(candidates, 80).strategy == "zero2"


def test_sharding_divides_what_each_strategy_shards(seven_b):
    config, work = seven_b
    one = {s: mp.plan(config, work, s, 1) for s in mp.STRATEGIES}
    eight = {s: mp.plan(config, work, s, 8) for s in mp.STRATEGIES}
    assert eight["zero2"].parts["weights"] == one["zero2"].parts["weights"]
    assert eight["zero2"].parts["optimizer"] == one["zero2"].parts["optimizer"] / 8
    for s in ("zero3", "fsdp"):
        assert eight[s].parts["weights"] == one[s].parts["weights"] / 8
        assert eight[s].parts["gathered"] > 0 == one[s].parts["gathered"]
    # FSDP2 keeps the fp32 shard as the master weight: 4 + 4 + 8 bytes, the same 16 as DeepSpeed's bf16 mode
    trained = mp.count_parameters(config).of(work.trained)
    assert one["fsdp"].parts["optimizer"] == 8 * trained and one["fsdp"].parts["gradients"] == 4 * trained
    assert eight["ddp"].parts["activations"] == one["ddp"].parts["activations"]


def test_bad_strategy_and_gpu_count_are_both_reported(seven_b):
    from anomaly_ov.errors import ConfigError

    config, work = seven_b
    with pytest.raises(ConfigError, match=r"strategy must be one of ddp, fsdp, zero2, zero3, got 'zero1'; gpus must"):
        mp.plan(config, work, "zero1", 0)


def test_readme_memory_table_is_current():
    """The README's 7B table is what `benchmarks/memory_plan.py --markdown` prints today."""
    sys.path.insert(0, str(BENCHMARKS))
    from memory_plan import CARD_GIB, RELEASE_STAGE1_IMAGES_PER_GPU, markdown_table, meta_model, release_workloads

    model = meta_model("7b")
    _, stage2 = release_workloads(model, 1000, 1500, 256, 128, RELEASE_STAGE1_IMAGES_PER_GPU)
    table = markdown_table(model.config, stage2, 8, CARD_GIB)
    readme = (BENCHMARKS.parent / "README.md").read_text()
    assert table in readme, f"README's memory table is stale; paste `benchmarks/memory_plan.py --markdown`:\n{table}"
    assert f"{stage2.seq_len} tokens a sequence" in readme


def test_shapes_check_with_gradient_checkpointing_matches_the_plan_on_cpu():
    """The --gpu code path (0.5B layout, stage 2, gradient checkpointing, AdamW) run on the CPU with a shrunk model:
    the real vocabulary and tied embedding, 4 narrow layers; measured peak within 30 % of the plan."""
    import torch

    sys.path.insert(0, str(BENCHMARKS))
    from memory_plan import shapes_check

    check = shapes_check(torch.device("cpu"), 384, 576, shrink=True)
    assert check.plan.checkpointing and check.plan.parts["activations"] > 0
    assert check.held == pytest.approx(check.plan.parts["weights"] + check.plan.parts["optimizer"], rel=0.01)
    assert 0.8 < check.ratio < 1.3, (check.measured, check.plan.parts)
