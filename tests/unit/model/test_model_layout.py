"""The assembled LLM input: token order and counts per image (docs/model.md, 'The LLM input: token layout')."""

from __future__ import annotations

import pytest
import torch

from anomaly_ov.model.expert import ExpertOutput

from .conftest import make_image

QUESTION = "Are there any defects?"


def runs(ids: list[int], special: dict[int, str]) -> list[tuple[str, int, list[int]]]:
    """Compress ids into runs: (kind, length, ids) with kind the placeholder name or 'text'."""
    out: list[tuple[str, int, list[int]]] = []
    for t in ids:
        kind = special.get(t, "text")
        if out and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1] + 1, out[-1][2] + [t])
        else:
            out.append((kind, 1, [t]))
    return out


def image_runs(proc, ids):
    special = {proc.image_token_id: "image", proc.adv_token_id: "adv", proc.anomaly_token_id: "anomaly"}
    return runs(ids, special)


def check_image_block(tok, block, visual, anomaly):
    """block = runs starting at an image run: image, 'with', adv, ' suspicious features: ', anomaly."""
    kinds = [(k, n) for k, n, _ in block[:5]]
    assert kinds[0] == ("image", visual)
    assert kinds[2] == ("adv", 1)
    assert kinds[4] == ("anomaly", anomaly)
    assert tok.decode(block[1][2]) == "with"
    assert tok.decode(block[3][2]) == " suspicious features: "


@pytest.mark.parametrize(
    ("height", "width", "grid", "visual", "anomaly"),
    [
        # 1x1 grid: base 16x16 + crop 16x16 + 16 newlines; anomaly 1 + 4 + 2*1*(2*1+1)
        (128, 128, (1, 1), 256 + 256 + 16, 1 + 4 + 2 * 3),
        # 2x3 grid (256x384 px): base 256 + 32x48 unpadded + 32 newlines; anomaly 1 + 4 + 4*(6+1)
        (256, 384, (2, 3), 256 + 32 * 48 + 32, 1 + 4 + 4 * 7),
    ],
)
def test_single_image_order_and_counts(tiny_parts, height, width, grid, visual, anomaly):
    _, tok, model, proc = tiny_parts
    image = make_image(height, width)
    layout = proc.layout(height, width)
    assert layout.grid == grid and layout.visual == visual and layout.anomaly == anomaly
    inputs = proc([image], [{"from": "human", "value": f"<image>\n{QUESTION}"}])
    ids = inputs["input_ids"][0].tolist()
    r = image_runs(proc, ids)
    first_image = next(i for i, run in enumerate(r) if run[0] == "image")
    assert tok.decode(r[first_image - 1][2]).endswith("<|im_start|>user\n")
    check_image_block(tok, r[first_image:], visual, anomaly)
    assert tok.decode(r[first_image + 5][2]) == f"\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    assert [run[0] for run in r if run[0] != "text"] == ["image", "adv", "anomaly"]
    # the model fills exactly these placeholders (it raises on any count mismatch)
    with torch.no_grad():
        embeds, encoded = model.build_inputs_embeds(
            inputs["input_ids"], inputs["pixel_values"], inputs["image_sizes"], inputs["batch_num_images"]
        )
    assert encoded.visual.shape[0] == visual and encoded.anomaly.shape[0] == anomaly
    assert encoded.expert.maps.shape[0] == 1 + grid[0] * grid[1]
    pos = (inputs["input_ids"][0] == proc.anomaly_token_id).nonzero()[0, 0]
    torch.testing.assert_close(embeds[0, pos], encoded.anomaly[0])
    adv_pos = (inputs["input_ids"][0] == proc.adv_token_id).nonzero()[0, 0]
    adverb = int(encoded.adverb_index[0])
    torch.testing.assert_close(embeds[0, adv_pos], model.adverb_embeddings()[adverb])


def test_four_views_each_with_own_phrase_and_tokens(tiny_parts):
    _, tok, model, proc = tiny_parts
    views = [make_image(128, 128, seed=s) for s in range(4)]
    conv = [{"from": "human", "value": "<image><image><image><image>\n" + QUESTION}]
    inputs = proc([views], [conv])
    assert inputs["batch_num_images"].tolist() == [4]
    r = image_runs(proc, inputs["input_ids"][0].tolist())
    starts = [i for i, run in enumerate(r) if run[0] == "image"]
    assert len(starts) == 4
    for s in starts:  # multi-image samples are not cropped: base 256 + newline; anomaly 1 + 4 + newline
        check_image_block(tok, r[s:], 257, 6)
    with torch.no_grad():
        out = model(**inputs)
    assert out.anomaly_scores.shape == (4, 1)


def test_batch_of_different_grids_runs(tiny_parts):
    _, _, model, proc = tiny_parts
    conv = [{"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": "Yes."}]
    inputs = proc([[make_image(128, 128)], [make_image(256, 384)]], [conv, conv])
    with torch.no_grad():
        out = model(**inputs)
    assert torch.isfinite(out.loss)
    assert out.anomaly_maps.shape == (2 + 7, 1, 16, 16)


def test_crop_tokens_form_a_2h_by_2w_grid_with_newlines(tiny_parts):
    _, _, model, _ = tiny_parts
    h, w, c = 2, 3, 3
    n = 1 + h * w
    tokens = torch.zeros(n, 4, c)
    for crop in range(n):
        for q in range(4):
            tokens[crop, q] = torch.tensor([crop, q, 1.0])
    expert = ExpertOutput(
        maps=torch.zeros(n, 1, 16, 16), crop_tokens=tokens, global_tokens=torch.full((1, 1, c), -1.0),
        scores=torch.zeros(1, 1), score_logits=torch.zeros(1, 1), significance=torch.zeros(n), level_maps=[],
        image_index=torch.zeros(n, dtype=torch.long), base_index=torch.zeros(1, dtype=torch.long),
    )
    newline = torch.tensor([9.0, 9.0, 9.0])
    (seq,) = model.anomaly_token_layout(expert, [n], torch.tensor([[256, 384]]), project=lambda x: x, newline=newline)
    assert seq.shape == (1 + 4 + 2 * h * (2 * w + 1), c)
    assert seq[0].tolist() == [-1.0] * c
    assert [row.tolist() for row in seq[1:5]] == [[0, q, 1.0] for q in range(4)]
    grid = seq[5:].reshape(2 * h, 2 * w + 1, c)
    for r in range(2 * h):
        assert grid[r, -1].tolist() == [9.0] * c
        for col in range(2 * w):
            crop = 1 + (r // 2) * w + col // 2
            quadrant = (r % 2) * 2 + col % 2
            assert grid[r, col].tolist() == [crop, quadrant, 1.0]


def test_uncropped_images_anomaly_tokens_end_with_a_newline_like_their_visual_tokens(tiny_parts):
    """Several images in one sample are not cropped; the release lays out each one's anomaly tokens as global, the
    base view's 4, then image_newline (1 + 4 + 1), as its visual tokens end with one image_newline."""
    _, _, model, proc = tiny_parts
    c = 3
    tokens = torch.stack([torch.tensor([[img, q, 1.0] for q in range(4)]) for img in range(2)])  # [2,4,3]
    expert = ExpertOutput(
        maps=torch.zeros(2, 1, 16, 16), crop_tokens=tokens, global_tokens=torch.tensor([[[-1.0] * c], [[-2.0] * c]]),
        scores=torch.zeros(2, 1), score_logits=torch.zeros(2, 1), significance=torch.zeros(2), level_maps=[],
        image_index=torch.arange(2), base_index=torch.arange(2),
    )
    newline = torch.tensor([9.0, 9.0, 9.0])
    per_image = model.anomaly_token_layout(expert, [1, 1], torch.tensor([[128, 128], [128, 128]]),
                                           project=lambda x: x, newline=newline)
    for img, seq in enumerate(per_image):
        assert [row.tolist() for row in seq] == [[-1.0 - img] * c, *([img, q, 1.0] for q in range(4)), [9.0] * c]
    assert proc.layout(128, 128, cropped=False).anomaly == len(per_image[0]) == 6
    # the model fills exactly the placeholders the processor lays out, with image_newline's value at the end
    views = [make_image(128, 128, seed=s) for s in range(2)]
    inputs = proc([views], [[{"from": "human", "value": "<image><image>\n" + QUESTION}]])
    with torch.no_grad():
        embeds, _ = model.build_inputs_embeds(inputs["input_ids"], inputs["pixel_values"], inputs["image_sizes"],
                                              inputs["batch_num_images"])
    anomaly_at = (inputs["input_ids"][0] == model.config.anomaly_token_index).nonzero()[:, 0]
    assert len(anomaly_at) == 12
    for last in (anomaly_at[5], anomaly_at[11]):
        torch.testing.assert_close(embeds[0, last], model.model.image_newline)


def test_adverb_thresholds(tiny_parts):
    _, _, model, _ = tiny_parts
    assert model.config.suspicious_thresholds == [0.5, 0.75]  # the tiny preset's (the release: 0.3, 0.7)
    scores = torch.tensor([0.0, 0.49, 0.5, 0.74, 0.75, 1.0])
    assert model.adverb_index(scores).tolist() == [0, 0, 1, 1, 2, 2]


def test_image_count_mismatch_is_refused(tiny_parts):
    _, _, _, proc = tiny_parts
    with pytest.raises(ValueError, match="placeholder"):
        proc([make_image(128, 128), make_image(128, 128)], [{"from": "human", "value": "<image>\nQ"}])


def test_visual_token_counts_match_llava_packing_at_full_size(tiny_parts):
    """The processor's counts equal transformers' pack_image_features (unpadding + anyres_max_9) for 384 px crops."""
    from types import SimpleNamespace

    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )
    from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel

    from anomaly_ov.model.processing import AnomalyOVProcessor

    _, tok, _, _ = tiny_parts
    image_processor = LlavaOnevisionImageProcessorPil()  # 384 px, the release's 36 pinpoints
    proc = AnomalyOVProcessor(tok, image_processor, num_image_tokens=27 * 27)
    fake = SimpleNamespace(
        config=SimpleNamespace(
            vision_config=SimpleNamespace(image_size=384, patch_size=14),
            image_grid_pinpoints=image_processor.image_grid_pinpoints,
        )
    )
    sizes = [(h, w) for h in (100, 384, 500, 767, 1000, 2300, 3000) for w in (90, 384, 640, 1333, 4000)]
    for h, w in sizes:
        layout = proc.layout(h, w)
        gh, gw = layout.grid
        feats = [torch.zeros(1 + gh * gw, 27 * 27, 1)]
        _, lens = LlavaOnevisionModel.pack_image_features(fake, feats, torch.tensor([[h, w]]), torch.zeros(1))
        assert int(lens[0]) == layout.visual, (h, w)
        assert layout.anomaly == 1 + 4 + 2 * gh * (2 * gw + 1)


def test_text_only_encoding_is_the_visual_one_less_the_image_tokens(tiny_parts):
    """The text warm-up's ids: the visual layout with visual and anomaly tokens removed and <adv> spelled out."""
    _, tok, _, proc = tiny_parts
    conv = [{"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": "Yes"},
            {"from": "human", "value": "Describe it."}, {"from": "gpt", "value": "A scratch on the left."}]
    ids, labels = proc.encode_conversation(conv, [proc.layout(128, 128)])
    text_ids, text_labels = proc.encode_text_only(conv, ["highly"])
    (highly,) = tok(" highly", add_special_tokens=False)["input_ids"]
    drop = {proc.image_token_id, proc.anomaly_token_id}
    kept = [(highly if t == proc.adv_token_id else t, lab) for t, lab in zip(ids, labels, strict=True) if t not in drop]
    assert text_ids == [t for t, _ in kept] and text_labels == [lab for _, lab in kept]
    assert "with highly suspicious features: \n" + QUESTION in tok.decode(text_ids)


def test_text_only_encoding_spells_each_images_own_word(tiny_parts):
    _, tok, _, proc = tiny_parts
    conv = [{"from": "human", "value": "<image><image>\n" + QUESTION}]
    ids, labels = proc.encode_text_only(conv, ["slightly", "highly"])
    text = tok.decode(ids)
    assert text.index("with slightly suspicious features: ") < text.index("with highly suspicious features: ")
    assert text.endswith("<|im_start|>assistant\n") and set(labels) == {-100}
    with pytest.raises(ValueError, match="placeholder"):
        proc.encode_text_only(conv, ["slightly"])
