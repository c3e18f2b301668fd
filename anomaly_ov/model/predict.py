"""Inference API: image score, anomaly map at the image's size, label, and (when asked) the model's answer.

    predictor = Predictor.from_pretrained("models/anomaly_ov", device="cpu")   # or (model, processor=proc)
    preds = predictor.predict(["a.png", pil_image], generate=True, threshold=0.5)
    preds[0].score, preds[0].label, preds[0].anomaly_map.shape == (H, W), preds[0].answer
    predictor.chat(["view1.png", "view2.png"], history=[("Is it defective?", "Yes.")], question="Where?")
    predictor.chat_batch([(["a.png"], [], "Is it defective?"), (["b.png"], [], "Where?")], batch_size=8)  # answers

Scores and maps come from one batched tower + expert pass per ``batch_size`` images (the base view's map, which
covers the whole image, resized bilinearly to the image). Answers come from greedy ``generate()`` with the
detection prompt of VisA-D&R unless another question is given; with ``generate=True`` the same pass gives the
prompt embeddings and the scores (the tower runs once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_ov.model.processing import load_image
from anomaly_ov.model.tokenizer import DETECTION_PROMPT, IMAGE_TOKEN


@dataclass
class Prediction:
    """One image's result."""

    score: float
    label: str  # "anomaly" | "normal"
    anomaly_map: np.ndarray  # float32 [H, W] in [0, 1]
    answer: str | None = None


def _conversation_turns(num_images: int, history: Sequence[tuple[str, str]], question: str) -> list[dict[str, str]]:
    """The processor's turns for ``history`` and ``question``; the first turn takes the images' tokens when no turn
    places them."""
    turns: list[dict[str, str]] = []
    for q, a in history:
        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    turns.append({"from": "human", "value": question})
    if not any(IMAGE_TOKEN in t["value"] for t in turns):
        turns[0] = {"from": "human", "value": IMAGE_TOKEN * num_images + "\n" + turns[0]["value"]}
    return turns


class Predictor:
    """Batched inference over an :class:`AnomalyOVForConditionalGeneration` and its processor."""

    def __init__(self, model: Any, processor: Any, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = device

    @classmethod
    def from_pretrained(cls, path_or_model: Any, device: str = "cpu", processor: Any = None) -> Predictor:
        """From a saved directory (model + processor) or from a model object plus its ``processor``."""
        if isinstance(path_or_model, (str, Path)):
            from anomaly_ov.model.presets import load_pretrained

            model, loaded = load_pretrained(path_or_model, device=device)
            return cls(model, processor or loaded, device=device)
        if processor is None:
            raise ValueError("Predictor.from_pretrained(model) needs processor=... (the model's AnomalyOVProcessor)")
        return cls(path_or_model, processor, device=device)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) if hasattr(v, "to") else v for k, v in batch.items()}

    def _maps_at_image_size(self, base_maps: Any, images: Sequence[Any]) -> list[np.ndarray]:
        import torch.nn.functional as F

        maps = []
        for b, image in enumerate(images):
            width, height = image.size
            resized = F.interpolate(
                base_maps[b : b + 1].float(), size=(height, width), mode="bilinear", align_corners=False
            )
            maps.append(resized[0, 0].clamp_(0, 1).cpu().numpy().astype(np.float32))
        return maps

    def score_images(self, images: Sequence[Any]) -> tuple[np.ndarray, list[np.ndarray]]:
        """(scores [B] float, maps: float32 [H, W] per image) for already loaded PIL images."""
        import torch

        pix = self._to_device(self.processor.preprocess_images(list(images)))
        with torch.inference_mode():
            out = self.model.expert_forward(pix["pixel_values"], pix["image_sizes"])
            return out.scores.float().reshape(-1).cpu().numpy(), self._maps_at_image_size(out.base_maps, images)

    def _generate(
        self, groups: list[list[Any]], conversations: list[list[dict]], max_new_tokens: int
    ) -> tuple[list[str], Any]:
        """Answers + the expert output of the same pass (the prompt embeddings are built once, then generated from)."""
        import torch

        inputs = self._to_device(self.processor(groups, conversations, add_generation_prompt=True))
        with torch.inference_mode():
            embeds, encoded = self.model.build_inputs_embeds(
                inputs["input_ids"], inputs["pixel_values"], inputs["image_sizes"], inputs.get("batch_num_images")
            )
            out = self.model.generate(
                inputs_embeds=embeds,
                attention_mask=inputs["attention_mask"],
                max_new_tokens=max_new_tokens,
                do_sample=False,
            )
        # with only inputs_embeds, generate() returns the new tokens alone
        return self.processor.decode_answers(out), encoded.expert

    def predict(
        self,
        images: Sequence[Any],
        question: str | None = None,
        generate: bool = False,
        threshold: float = 0.5,
        max_new_tokens: int = 64,
        batch_size: int = 8,
    ) -> list[Prediction]:
        """Score, map, label and optional answer for every image (paths or PIL images), ``batch_size`` at a time."""
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if isinstance(images, (str, Path)) or hasattr(images, "size") and not isinstance(images, Sequence):
            images = [images]
        results: list[Prediction] = []
        prompt = question or DETECTION_PROMPT
        for start in range(0, len(images), max(1, batch_size)):
            loaded = [load_image(im) for im in images[start : start + batch_size]]
            answers: list[str | None] = [None] * len(loaded)
            if generate:
                convs = [[{"from": "human", "value": f"{IMAGE_TOKEN}\n{prompt}"}] for _ in loaded]
                texts, expert = self._generate([[im] for im in loaded], convs, max_new_tokens)
                answers = list(texts)
                scores = expert.scores.float().reshape(-1).cpu().numpy()
                maps = self._maps_at_image_size(expert.base_maps, loaded)
            else:
                scores, maps = self.score_images(loaded)
            for score, amap, answer in zip(scores, maps, answers, strict=True):
                label = "anomaly" if float(score) >= threshold else "normal"
                results.append(Prediction(score=float(score), label=label, anomaly_map=amap, answer=answer))
        return results

    def chat(
        self,
        images: Sequence[Any],
        history: Sequence[tuple[str, str]] = (),
        question: str = DETECTION_PROMPT,
        max_new_tokens: int = 128,
    ) -> str:
        """One more answer in a multi-turn conversation about ``images`` (several = multi-view, each its own tokens)."""
        return self.chat_batch([(images, history, question)], max_new_tokens=max_new_tokens)[0]

    def chat_batch(
        self,
        conversations: Sequence[tuple[Sequence[Any], Sequence[tuple[str, str]], str]],
        max_new_tokens: int = 128,
        batch_size: int = 8,
    ) -> list[str]:
        """The next answer of each conversation ``(images, history, question)``, ``batch_size`` conversations per
        ``generate()`` call (left-padded, greedy). Batched answers can differ from one-at-a-time ones where two
        tokens' logits are within float rounding of each other (the padded matmuls sum in another order)."""
        step = max(1, batch_size)
        answers: list[str] = []
        for start in range(0, len(conversations), step):
            groups, turns = [], []
            for images, history, question in conversations[start:start + step]:
                if isinstance(images, (str, Path)) or not isinstance(images, Sequence):
                    images = [images]
                groups.append([load_image(im) for im in images])
                turns.append(_conversation_turns(len(images), history, question))
            answers += self._generate(groups, turns, max_new_tokens)[0]
        return answers
