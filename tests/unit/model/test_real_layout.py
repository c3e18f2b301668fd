"""The real-layout fixture (tests/real_layout.py) and the pretrained path it feeds: a llava-hf LLaVA-OneVision
0.5B directory (hub key names or today's save_pretrained ones) loads through ``params.model.preset =
llava-onevision-0.5b`` with the same weights and logits, and the tokenizer gives the release's ids."""

from __future__ import annotations

import json

import torch
from real_layout import (
    IMAGE_TOKEN_ID,
    PINPOINTS,
    build_plain_model,
    real_layout_params,
    write_real_layout_checkpoint,
)
from safetensors import safe_open

from anomaly_ov.model.presets import build_model, build_processor, prepare_tokenizer, token_settings

from .conftest import make_image, talkative


def _keys(directory) -> list[str]:
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        return list(f.keys())


def test_hub_layout_has_the_hub_files_and_key_names(real_layout_checkpoint):
    keys = _keys(real_layout_checkpoint)
    assert {k.split(".")[0] for k in keys} == {"language_model", "vision_tower", "multi_modal_projector",
                                               "image_newline"}
    assert all(k.startswith("language_model.model.") for k in keys if k.startswith("language_model"))
    assert all(k.startswith("vision_tower.vision_model.") for k in keys if k.startswith("vision_tower"))
    assert "language_model.lm_head.weight" not in keys  # the 0.5B ties its head to the embeddings
    config = json.loads((real_layout_checkpoint / "config.json").read_text())
    assert config["vision_aspect_ratio"] == "anyres_max_9" and config["image_token_index"] == IMAGE_TOKEN_ID
    assert config["image_grid_pinpoints"][0] == [384, 384] and config["image_grid_pinpoints"][-1] == [2304, 2304]
    assert config["vision_feature_layer"] == -1 and config["vision_feature_select_strategy"] == "full"
    assert config["text_config"]["vocab_size"] == 152000 and config["text_config"]["rope_theta"] == 1e6
    pre = json.loads((real_layout_checkpoint / "preprocessor_config.json").read_text())
    assert pre["image_mean"] == pre["image_std"] == [0.5, 0.5, 0.5] and pre["size"] == {"height": 384, "width": 384}


def test_both_layouts_load_the_same_weights_and_give_the_same_logits(real_layout_checkpoints):
    plain = build_plain_model().half().state_dict()
    models = {}
    for layout, directory in real_layout_checkpoints.items():
        model = build_model(real_layout_params(directory)).eval()
        state = model.state_dict()
        differs = [k for k, v in plain.items() if not torch.equal(v, state[k])]
        assert not differs, f"{layout}: {differs[:5]}"
        models[layout] = model
    cfg = models["hub"].config  # the release's settings, read through LlavaOnevisionConfig from the hub's JSON
    assert cfg.vision_config.image_size == 384 and cfg.grid_size == 27
    assert cfg.image_grid_pinpoints == PINPOINTS and cfg.vision_aspect_ratio == "anyres_max_9"
    assert cfg.llm_layer_index == cfg.vision_config.num_hidden_layers  # -1: llava-hf already dropped SigLIP's last
    assert cfg.text_config.vocab_size == 152000 and cfg.image_token_index == IMAGE_TOKEN_ID
    assert cfg.expert_config["temperature"] == 100.0  # the pretrained presets' (the release)
    models["save_pretrained"].anomaly_expert.load_state_dict(models["hub"].anomaly_expert.state_dict())
    proc = build_processor(real_layout_params(real_layout_checkpoints["hub"]))
    inputs = proc([make_image(300, 400)], [{"from": "human", "value": "<image>\nAre there any defects?"}])
    with torch.no_grad():  # the last 8 positions: 152000-wide logits for all ~3000 would take 0.9 GB
        logits = {k: m(**inputs, logits_to_keep=8).logits.float() for k, m in models.items()}
    assert torch.isfinite(logits["hub"]).all()
    torch.testing.assert_close(logits["hub"], logits["save_pretrained"], rtol=0, atol=0)


def test_untied_seven_b_layout_loads_its_lm_head(tmp_path, qwen2_tokenizer):
    directory = write_real_layout_checkpoint(tmp_path / "7b", variant="7b", seed=1, tokenizer=qwen2_tokenizer)
    assert "language_model.lm_head.weight" in _keys(directory)
    model = build_model(real_layout_params(directory, preset="llava-onevision-7b"))
    reference = build_plain_model("7b", seed=1).half()
    assert not torch.equal(model.lm_head.weight, model.model.language_model.embed_tokens.weight)
    assert torch.equal(model.lm_head.weight, reference.lm_head.weight)


def test_tokenizer_has_the_release_ids(qwen2_tokenizer, real_layout_checkpoint):
    from transformers import AutoTokenizer

    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(real_layout_checkpoint))
    ids = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"])
    assert ids == [151643, 151644, 151645, 151646, 151647]
    assert tok.convert_tokens_to_ids(["<adv>", "<anomaly>"]) == [151648, 151649]  # added after llava-hf's
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    # Qwen2's BPE: each adverb is one token, and the phrase is what the released LLM reads.
    settings = token_settings(tok)
    assert settings["adverb_token_ids"] == [[10078], [69251], [7548]]  # " slightly", " moderately", " highly"
    assert tok.encode(" suspicious features: ", add_special_tokens=False) == [31327, 4419, 25, 220]
    assert [tok.encode(w, add_special_tokens=False) for w in ("Yes", "No")] == [[9454], [2753]]
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n" \
                   "<|im_start|>assistant\n"


def test_batched_questions_on_the_release_layout_answer_as_one_at_a_time(real_layout_checkpoint):
    """Evaluation asks its reasoning and 3D questions ``evaluate.batch_size`` conversations per ``generate()``: on the
    release's layout (384 px SigLIP, AnyRes up to 9 crops, Qwen2's 152k vocabulary) images of other shapes give
    conversations of other lengths, and each still gets the answer it gets alone."""
    from anomaly_ov.model.predict import Predictor

    params = real_layout_params(real_layout_checkpoint)
    predictor = Predictor(talkative(build_model(params).eval()), build_processor(params))
    conversations = [
        ([make_image(300, 400, seed=1)], [], "Are there any defects?"),
        ([make_image(500, 250, seed=2)], [("Is it broken?", "Yes")], "Where?"),
        ([make_image(384, 384, seed=3), make_image(200, 600, seed=4)], [], "Describe the views."),
    ]
    alone = [predictor.chat(images, history, question, max_new_tokens=3) for images, history, question in conversations]
    assert all(alone) and len(set(alone)) > 1  # random weights still answer each conversation in its own words
    assert predictor.chat_batch(conversations, max_new_tokens=3, batch_size=3) == alone


def test_stage2_lengths_count_the_release_processors_image_tokens(real_layout_checkpoint, tmp_path):
    """Stage 2 groups its visual batches, and counts cut records, by :func:`record_lengths`, read from the images'
    headers without decoding them. On the release's processor (AnyRes up to 9 crops of 384 px, the image tokens
    unpadded to each image's aspect) it must equal what the encoder makes, for one image or several of any shape."""
    from PIL import Image

    from anomaly_ov.train.instruct import make_encoder, record_lengths

    processor = build_processor(real_layout_params(real_layout_checkpoint))
    shapes = {"wide.png": (300, 800), "tall.png": (700, 260), "square.png": (384, 384), "small.png": (90, 120)}
    for seed, (name, (h, w)) in enumerate(shapes.items()):
        make_image(h, w, seed=seed).save(tmp_path / name)
    ask = [{"from": "gpt", "value": "Yes, a scratch on the left."}]
    records = [
        {"image": "wide.png", "conversations": [{"from": "human", "value": "<image>\nIs it defective?"}, *ask]},
        {"image": "tall.png", "conversations": [{"from": "human", "value": "<image>\nAny defect?"}, *ask]},
        {"image": ["square.png", "small.png"],
         "conversations": [{"from": "human", "value": "<image>\n<image>\nTwo views: any defect?"}, *ask]},
    ]
    encode = make_encoder(processor, 32768)
    encoded = []
    for rec in records:
        names = rec["image"] if isinstance(rec["image"], list) else [rec["image"]]
        encoded.append(len(encode([Image.open(tmp_path / n).convert("RGB") for n in names],
                                  rec["conversations"])["input_ids"]))
    assert record_lengths(records, processor, tmp_path) == encoded
    assert len(set(encoded)) == 3 and min(encoded) > 729  # each image brings at least its base view's 27 x 27
