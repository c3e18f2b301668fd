"""Images + LLaVA-format conversations -> Anomaly-OV model inputs, and generated ids -> answers.

The image side reuses transformers' slow PIL ``LlavaOnevisionImageProcessorPil`` (AnyRes crops, no torchvision).
The text side is Qwen's ChatML with the system prompt "You are a helpful assistant."; each ``<image>`` in a human
turn expands to (docs/model.md, 'The LLM input: token layout')::

    <image> x n_visual   "with"  <adv>  " suspicious features: "  <anomaly> x n_anomaly

with n_visual as LLaVA-OneVision counts it (base view + unpadded crops + a newline per row) and
n_anomaly = 1 + 4 + 2h(2w+1) for an h x w crop grid (1 + 4 + 1 newline for an uncropped image: the images of a
multi-image sample are not cropped, as in LLaVA-OV, and their visual and anomaly tokens each end with one
image_newline, as in the release). The model fills the placeholders (see modeling.py).

``max_length`` (the release's ``model_max_length``) cuts a longer conversation from the end, as LLaVA truncates
its input_ids / labels, but never inside an image: an image whose tokens (visual, phrase, anomaly) would be split is
dropped with everything after it (the cut moves to where that image starts) and its pixels leave the batch. A
multi-image sample left with one image loses that one too (one image alone would be cropped, its tokens laid out
for an uncropped one). :meth:`AnomalyOVProcessor.conversation_length` says which conversations a cut would touch.

Usage::

    proc = AnomalyOVProcessor(tokenizer, image_processor)            # or presets.build_processor(params, tok)
    conv = [{"from": "human", "value": "<image>\\nAre there any defects?"}]
    inputs = proc([image], conv)                                       # ends with a human turn -> generation prompt
    out = model.generate(**inputs, max_new_tokens=16)
    proc.decode_answers(out, inputs["input_ids"])                     # -> ["Yes"]
    batch = proc([[img_a], [img_b, img_c]], [conv_a, conv_b])        # a batch; conv ends with gpt -> labels
    # labels = -100 everywhere except each gpt answer and its <|im_end|>

A conversation without ``<image>`` but with one image gets "<image>\\n" in front of its first human turn.
``preprocess_images`` / :func:`collate_crops` are the DataLoader-friendly pieces for stage 1.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from anomaly_ov.model.tokenizer import (
    ADV_TOKEN,
    ADVERB_WORDS,
    ANOMALY_TOKEN,
    IM_END,
    IM_START,
    IMAGE_TOKEN,
    RELEASE_SUSPICIOUS_THRESHOLDS,
)

SYSTEM_PROMPT = "You are a helpful assistant."
PHRASE_PREFIX = "with"
PHRASE_SUFFIX = " suspicious features: "
IGNORE_INDEX = -100
PROCESSOR_FILE = "anomaly_ov_processor.json"

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def adverb_for_score(score: float, thresholds: Sequence[float] = RELEASE_SUSPICIOUS_THRESHOLDS) -> str:
    """"slightly" (< low), "moderately" (low <= s < high) or "highly" (>= high)."""
    low, high = thresholds
    return ADVERB_WORDS[0] if score < low else ADVERB_WORDS[1] if score < high else ADVERB_WORDS[2]


def load_image(image: Any):
    """PIL image from a path or a PIL image, as RGB. Files go through :func:`anomaly_ov.data.images.open_image`
    (size limit checked on the header before decoding; an ``ImageError`` (a ``ValueError``) names a bad file)."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        from anomaly_ov.data.images import open_image

        return open_image(image)
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    if isinstance(image, np.ndarray):
        return Image.fromarray(image).convert("RGB")
    raise TypeError(f"expected an image path or a PIL image, got {type(image).__name__}")


def fitted_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """(height, width) of an image of this size after :func:`fit_longest_side`."""
    if max_side is None or max(width, height) <= max_side:
        return height, width
    if width > height:
        return max(1, int(max_side * height / width)), max_side
    return max_side, max(1, int(max_side * width / height))


def fit_longest_side(image: Any, max_side: int | None):
    """The release's evaluation and training resize: an image whose longer side exceeds ``max_side`` is resized
    (bicubic, PIL's default for RGB) to ``max_side`` on that side, the other side scaled by the same factor and
    truncated to an integer (at least 1); smaller images and ``max_side=None`` pass through unchanged.

    A 1500 x 1000 image becomes 1024 x 682, for which the 384-px grid pinpoints pick a 2 x 3 crop grid (3 x 4 at
    full size). Pretrained presets use ``max_side=1024``; the tiny preset does not resize.
    """
    from PIL import Image

    width, height = image.size
    new_height, new_width = fitted_size(height, width, max_side)
    if (new_height, new_width) == (height, width):
        return image
    return image.resize((new_width, new_height), Image.Resampling.BICUBIC)


def load_image_processor(source: str | Path) -> Any:
    """The image processor saved in ``source`` (a checkpoint or model directory, or a hub id when online).

    Reads ``preprocessor_config.json`` into transformers' PIL ``LlavaOnevisionImageProcessorPil`` (crop size,
    mean/std, resampling, grid pinpoints, padding: whatever the checkpoint says; the llava-hf LLaVA-OneVision ones
    say SigLIP's 384 px and mean/std 0.5). Every pretrained image processor the pipeline uses comes from here, so
    stage 1, stage 2, evaluation and serving normalise an image the same way.
    """
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    try:
        return LlavaOnevisionImageProcessorPil.from_pretrained(str(source))
    except OSError as exc:
        raise FileNotFoundError(
            f"cannot read the image processor (preprocessor_config.json) of {source}: {exc}"
        ) from exc


def normalize_conversation(conversation: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """LLaVA ``{"from", "value"}`` or chat ``{"role", "content"}`` turns -> [(role, text)] with roles user/assistant."""
    turns = []
    for i, turn in enumerate(conversation):
        if not isinstance(turn, Mapping):
            raise ValueError(f"conversation turn {i} must be a mapping, got {type(turn).__name__}")
        who = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        if who not in _ROLES:
            raise ValueError(f"conversation turn {i}: unknown speaker {who!r} (use human/gpt or user/assistant)")
        if not isinstance(text, str):
            raise ValueError(f"conversation turn {i}: the text must be a string, got {type(text).__name__}")
        turns.append((_ROLES[who], text))
    if not turns:
        raise ValueError("empty conversation")
    return turns


@dataclass(frozen=True)
class ImageLayout:
    """Token counts of one image in the LLM input."""

    crops: int  # base view + AnyRes crops
    grid: tuple[int, int]  # (h, w) crop grid; (0, 0) when not cropped
    visual: int
    anomaly: int


class AnomalyOVProcessor:
    """Tokenizer + PIL image processor + the Anomaly-OV prompt layout (see module docstring)."""

    def __init__(
        self,
        tokenizer: Any,
        image_processor: Any,
        *,
        num_image_tokens: int | None = None,
        vision_aspect_ratio: str = "anyres_max_9",
        system_prompt: str = SYSTEM_PROMPT,
        num_pooling_tokens: int = 2,
        max_image_side: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        size = image_processor.size
        self.crop_size = int(size["height"] if "height" in size and size["height"] else size["shortest_edge"])
        self.num_image_tokens = num_image_tokens
        self.vision_aspect_ratio = vision_aspect_ratio
        self.system_prompt = system_prompt
        self.num_pooling_tokens = num_pooling_tokens
        self.max_image_side = max_image_side  # see fit_longest_side
        self.image_token_id = self._token_id(IMAGE_TOKEN)
        self.adv_token_id = self._token_id(ADV_TOKEN)
        self.anomaly_token_id = self._token_id(ANOMALY_TOKEN)
        self.im_end_id = self._token_id(IM_END)
        self._token_id(IM_START)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.im_end_id
        self._cache: dict[str, list[int]] = {}

    def _token_id(self, token: str) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == self.tokenizer.unk_token_id or self.tokenizer.convert_ids_to_tokens(tid) != token:
            raise ValueError(f"the tokenizer has no {token!r} token (add it: presets.prepare_tokenizer)")
        return int(tid)

    @property
    def grid_side(self) -> int:
        if self.num_image_tokens is None:
            raise ValueError("num_image_tokens (G*G of the vision tower) is unset")
        return math.isqrt(self.num_image_tokens)

    # --------------------------------------------------------------------------------------------- images
    def preprocess_images(self, images: Sequence[Any] | Sequence[Sequence[Any]]) -> dict[str, torch.Tensor]:
        """Images (flat list: one per sample; nested: images per sample) -> pixel_values [I,max_crops,3,H,W],
        image_sizes [I,2] (height, width, after :func:`fit_longest_side` with ``max_image_side``),
        batch_num_images [batch]."""
        nested = len(images) > 0 and isinstance(images[0], (list, tuple))

        def prepared(image: Any) -> Any:
            return fit_longest_side(load_image(image), self.max_image_side)

        pil = [[prepared(im) for im in group] for group in images] if nested else [prepared(im) for im in images]
        out = self.image_processor(pil, return_tensors="pt")
        return {
            "pixel_values": out["pixel_values"],
            "image_sizes": torch.as_tensor(out["image_sizes"], dtype=torch.long),
            "batch_num_images": torch.as_tensor(out["batch_num_images"], dtype=torch.long),
        }

    def crop_grid(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) AnyRes crop grid LLaVA-OV picks for an image of this size."""
        from transformers.image_processing_utils import select_best_resolution

        best_h, best_w = select_best_resolution((height, width), self.image_processor.image_grid_pinpoints)
        return best_h // self.crop_size, best_w // self.crop_size

    def layout(self, height: int, width: int, cropped: bool = True) -> ImageLayout:
        """How many crops, visual and anomaly tokens an image of this size takes."""
        g = self.grid_side
        base = g * g
        p = self.num_pooling_tokens
        if not cropped:
            return ImageLayout(crops=1, grid=(0, 0), visual=base + 1, anomaly=1 + p * p + 1)
        h, w = self.crop_grid(height, width)
        cur_h, cur_w = g * h, g * w
        if width / height > cur_w / cur_h:
            new_h = int(round(height * (cur_w / width), 7))
            cur_h -= ((cur_h - new_h) // 2) * 2
        else:
            new_w = int(round(width * (cur_h / height), 7))
            cur_w -= ((cur_w - new_w) // 2) * 2
        unpadded, newlines = cur_h * cur_w, cur_h
        max_patches = int(self.vision_aspect_ratio.removeprefix("anyres_max_"))
        ratio = math.sqrt(cur_h * cur_w / (max_patches * g**2))
        if ratio > 1.1:
            unpadded = int(cur_h // ratio) * int(cur_w // ratio)
            newlines = int(cur_h // ratio)
        anomaly = 1 + p * p + (p * h) * (p * w + 1)
        return ImageLayout(crops=1 + h * w, grid=(h, w), visual=base + unpadded + newlines, anomaly=anomaly)

    # ----------------------------------------------------------------------------------------------- text
    def _encode(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(self._cache) > 4096:
                self._cache.clear()
        return list(self._cache[text])

    def phrase_ids(self, adverb: str | None = None) -> list[int]:
        """'with <adv> suspicious features: ' as ids: the ``<adv>`` placeholder, or the word ``adverb`` itself."""
        middle = [self.adv_token_id] if adverb is None else self._encode(" " + adverb)
        return self._encode(PHRASE_PREFIX) + middle + self._encode(PHRASE_SUFFIX)

    def image_ids(self, layout: ImageLayout) -> list[int]:
        """Placeholder ids of one image: visual tokens, the phrase with <adv>, anomaly tokens."""
        return [self.image_token_id] * layout.visual + self.phrase_ids() + [self.anomaly_token_id] * layout.anomaly

    def encode_conversation(
        self,
        conversation: Sequence[Mapping[str, Any]],
        layouts: Sequence[ImageLayout],
        add_generation_prompt: bool | None = None,
    ) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of one conversation; labels keep only the assistant answers and their <|im_end|>."""
        return self._encode_turns(conversation, [self.image_ids(lay) for lay in layouts], add_generation_prompt)

    def encode_text_only(
        self,
        conversation: Sequence[Mapping[str, Any]],
        adverbs: Sequence[str],
        add_generation_prompt: bool | None = None,
    ) -> tuple[list[int], list[int]]:
        """(input_ids, labels) with each image reduced to its phrase, the adverb spelled out (no visual or anomaly
        tokens): the text the LLM reads around an image whose expert score gave ``adverbs[i]``."""
        return self._encode_turns(conversation, [self.phrase_ids(a) for a in adverbs], add_generation_prompt)

    def _encode_turns(
        self,
        conversation: Sequence[Mapping[str, Any]],
        image_segments: Sequence[list[int]],
        add_generation_prompt: bool | None,
    ) -> tuple[list[int], list[int]]:
        """ChatML ids and labels; ``image_segments[i]`` replaces the i-th ``<image>``."""
        turns = normalize_conversation(conversation)
        n_placeholders = sum(text.count(IMAGE_TOKEN) for role, text in turns if role == "user")
        if n_placeholders == 0 and len(image_segments) == 1:
            idx = next((i for i, (role, _) in enumerate(turns) if role == "user"), None)
            if idx is None:
                raise ValueError("the conversation has no human turn to attach the image to")
            turns[idx] = ("user", IMAGE_TOKEN + "\n" + turns[idx][1])
            n_placeholders = 1
        if n_placeholders != len(image_segments):
            raise ValueError(
                f"the conversation has {n_placeholders} '<image>' placeholder(s) but {len(image_segments)} image(s) "
                "were given"
            )
        if add_generation_prompt is None:
            add_generation_prompt = turns[-1][0] == "user"
        ids: list[int] = []
        labels: list[int] = []

        def emit(tokens: list[int], learn: bool = False) -> None:
            ids.extend(tokens)
            labels.extend(tokens if learn else [IGNORE_INDEX] * len(tokens))

        system = self.system_prompt
        if turns[0][0] == "system":
            system = turns.pop(0)[1]
        emit(self._encode(f"{IM_START}system\n{system}{IM_END}\n"))
        segments = iter(image_segments)
        for role, text in turns:
            if role == "system":
                raise ValueError("a system turn may only come first")
            emit(self._encode(f"{IM_START}{role}\n"))
            if role == "user":
                for k, piece in enumerate(re.split(re.escape(IMAGE_TOKEN), text)):
                    if k > 0:
                        emit(next(segments))
                    if piece:
                        emit(self._encode(piece))
                emit(self._encode(f"{IM_END}\n"))
            else:
                if IMAGE_TOKEN in text:
                    raise ValueError("'<image>' may only appear in human turns")
                emit(self._encode(text) + [self.im_end_id], learn=True)
                emit(self._encode("\n"))
        if add_generation_prompt:
            emit(self._encode(f"{IM_START}assistant\n"))
        return ids, labels

    def __call__(
        self,
        images: Sequence[Any] | None = None,
        conversation: Sequence[Mapping[str, Any]] | Sequence[Sequence[Mapping[str, Any]]] | None = None,
        *,
        add_generation_prompt: bool | None = None,
        max_length: int | None = None,
        padding_side: str | None = None,
        return_labels: bool | None = None,
    ) -> dict[str, torch.Tensor]:
        """Build model inputs for one conversation (``images`` a list of its images) or a batch (nested lists).

        Returns input_ids, attention_mask, pixel_values, image_sizes, batch_num_images and, for conversations that
        end with an answer (or ``return_labels=True``), labels. Generation prompts are left-padded, training
        batches right-padded. ``max_length`` cuts from the end, never inside an image (see the module docstring).
        """
        if conversation is None:
            raise ValueError("a conversation is required")
        batched = len(conversation) > 0 and isinstance(conversation[0], (list, tuple))
        # a batch is a sequence of conversations (each a sequence of turns), else one conversation
        convs = (cast(list[Sequence[Mapping[str, Any]]], list(conversation)) if batched
                 else [cast(Sequence[Mapping[str, Any]], conversation)])
        if images is None:
            groups: list[list[Any]] = [[] for _ in convs]
        elif batched:
            groups = [list(g) if isinstance(g, (list, tuple)) else [g] for g in images]
        else:
            groups = [list(images) if isinstance(images, (list, tuple)) else [images]]
        if len(groups) != len(convs):
            raise ValueError(f"{len(groups)} image groups for {len(convs)} conversations")

        result: dict[str, torch.Tensor] = {}
        layouts_per_conv: list[list[ImageLayout]] = [[] for _ in convs]
        if any(groups):
            if not all(groups):
                raise ValueError("every conversation of a batch needs at least one image (or none has any)")
            pix = self.preprocess_images(groups)
            result.update(pix)
            sizes = pix["image_sizes"].tolist()
            k = 0
            for c, group in enumerate(groups):
                cropped = len(group) == 1
                for _ in group:
                    h, w = sizes[k]
                    layouts_per_conv[c].append(self.layout(h, w, cropped=cropped))
                    k += 1

        encoded = [
            self.encode_conversation(conv, lays, add_generation_prompt)
            for conv, lays in zip(convs, layouts_per_conv, strict=True)
        ]
        if max_length is not None:
            cut = [self._truncate(ids, labels, max_length, multi_image=len(group) > 1)
                   for (ids, labels), group in zip(encoded, groups, strict=True)]
            encoded = [(ids, labels) for ids, labels, _ in cut]
            kept = [k for _, _, k in cut]
            if any(k < len(group) for k, group in zip(kept, groups, strict=True)):
                self._drop_cut_images(result, groups, kept)
        generating = all(
            (add_generation_prompt if add_generation_prompt is not None else normalize_conversation(c)[-1][0] == "user")
            for c in convs
        )
        side = padding_side or ("left" if generating else "right")
        width = max(len(ids) for ids, _ in encoded)
        input_ids = torch.full((len(encoded), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(encoded), width), dtype=torch.long)
        labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
        for i, (ids, lab) in enumerate(encoded):
            sl = slice(width - len(ids), width) if side == "left" else slice(0, len(ids))
            input_ids[i, sl] = torch.tensor(ids)
            attention[i, sl] = 1
            labels[i, sl] = torch.tensor(lab)
        result["input_ids"] = input_ids
        result["attention_mask"] = attention
        want_labels = return_labels if return_labels is not None else not generating
        if want_labels:
            result["labels"] = labels
        return result

    def image_spans(self, ids: Sequence[int]) -> list[tuple[int, int]]:
        """[start, end) of each image's tokens in ``ids``: its visual run through the end of its anomaly run."""
        starts, ends = [], []
        for i, t in enumerate(ids):
            if t == self.image_token_id and (i == 0 or ids[i - 1] != self.image_token_id):
                starts.append(i)
            if t == self.anomaly_token_id and (i + 1 == len(ids) or ids[i + 1] != self.anomaly_token_id):
                ends.append(i + 1)
        return list(zip(starts, ends, strict=True))

    def _truncate(self, ids: list[int], labels: list[int], max_length: int, multi_image: bool = False
                  ) -> tuple[list[int], list[int], int]:
        """(ids, labels, images kept): cut to ``max_length`` tokens, at the start of the first image that would be
        split (see the module docstring)."""
        spans = self.image_spans(ids)
        if len(ids) <= max_length:
            return ids, labels, len(spans)
        kept = sum(1 for _, end in spans if end <= max_length)
        if multi_image and kept == 1:
            kept = 0
        cut = min(max_length, spans[kept][0]) if kept < len(spans) else max_length
        return ids[:cut], labels[:cut], kept

    @staticmethod
    def _drop_cut_images(result: dict[str, torch.Tensor], groups: Sequence[Sequence[Any]], kept: Sequence[int]) -> None:
        """Remove the pixels of the images a cut dropped (``kept[c]`` first images of conversation ``c`` stay)."""
        keep: list[bool] = []
        for group, k in zip(groups, kept, strict=True):
            keep += [i < k for i in range(len(group))]
        if not any(keep):
            for key in ("pixel_values", "image_sizes", "batch_num_images"):
                result.pop(key, None)
            return
        index = torch.tensor(keep)
        result["pixel_values"] = result["pixel_values"][index]
        result["image_sizes"] = result["image_sizes"][index]
        result["batch_num_images"] = torch.as_tensor(list(kept), dtype=torch.long)

    def conversation_length(self, conversation: Sequence[Mapping[str, Any]], image_sizes: Sequence[tuple[int, int]],
                            add_generation_prompt: bool | None = False) -> int:
        """Tokens of ``conversation`` with images of these original (height, width) sizes before any cut (resized by
        :func:`fit_longest_side` as :meth:`preprocess_images` does; a single image is cropped, several are not, as in
        :meth:`__call__`); compare with ``max_length`` to know which ones are cut."""
        cropped = len(image_sizes) == 1
        layouts = [self.layout(*fitted_size(h, w, self.max_image_side), cropped=cropped) for h, w in image_sizes]
        text = self._encode_turns(conversation, [[] for _ in layouts], add_generation_prompt)[0]
        phrase = len(self.phrase_ids())
        return len(text) + sum(lay.visual + phrase + lay.anomaly for lay in layouts)

    # --------------------------------------------------------------------------------------------- decode
    def decode_answers(self, generated: torch.Tensor, input_ids: torch.Tensor | None = None) -> list[str]:
        """Text of the new tokens of each row (``generated`` = prompt + answer, as generate() returns it)."""
        start = 0 if input_ids is None else input_ids.shape[1]
        return [t.strip() for t in self.tokenizer.batch_decode(generated[:, start:], skip_special_tokens=True)]

    def batch_decode(self, ids: torch.Tensor, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(ids, **kwargs)

    # ------------------------------------------------------------------------------------------ save/load
    def settings(self) -> dict[str, Any]:
        return {
            "num_image_tokens": self.num_image_tokens,
            "vision_aspect_ratio": self.vision_aspect_ratio,
            "system_prompt": self.system_prompt,
            "num_pooling_tokens": self.num_pooling_tokens,
            "max_image_side": self.max_image_side,
        }

    def save_pretrained(self, directory: str | Path) -> None:
        """Tokenizer files, preprocessor_config.json and anomaly_ov_processor.json into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)
        (directory / PROCESSOR_FILE).write_text(json.dumps(self.settings(), indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> AnomalyOVProcessor:
        from transformers import AutoTokenizer

        directory = Path(directory)
        settings_file = directory / PROCESSOR_FILE
        if not settings_file.is_file():
            raise FileNotFoundError(f"{settings_file} is missing: not a directory written by AnomalyOVProcessor")
        settings = json.loads(settings_file.read_text())
        tokenizer = AutoTokenizer.from_pretrained(directory)
        return cls(tokenizer, load_image_processor(directory), **settings)


# ------------------------------------------------------------------------------------------------- stage 1
class ImagePreprocessor:
    """Picklable DataLoader-worker transform: image -> (pixel_values [n_crops,3,H,W], image_size (height, width))."""

    def __init__(self, image_processor: Any, max_image_side: int | None = None) -> None:
        self.image_processor = image_processor
        self.max_image_side = max_image_side  # as AnomalyOVProcessor's: see fit_longest_side

    def __call__(self, image: Any) -> tuple[torch.Tensor, tuple[int, int]]:
        out = self.image_processor([fit_longest_side(load_image(image), self.max_image_side)], return_tensors="pt")
        size = tuple(int(x) for x in out["image_sizes"][0])
        return out["pixel_values"][0], (size[0], size[1])


def collate_crops(items: Sequence[tuple[torch.Tensor, tuple[int, int]]]) -> dict[str, torch.Tensor]:
    """Pad crops to the batch's largest count (zeros, like LLaVA-OV) -> pixel_values [B,max,3,H,W], image_sizes."""
    if not items:
        raise ValueError("empty batch")
    most = max(pv.shape[0] for pv, _ in items)
    padded = []
    for pv, _ in items:
        if pv.shape[0] < most:
            pv = torch.cat([pv, pv.new_zeros((most - pv.shape[0], *pv.shape[1:]))], dim=0)
        padded.append(pv)
    return {
        "pixel_values": torch.stack(padded),
        "image_sizes": torch.tensor([list(size) for _, size in items], dtype=torch.long),
    }


class ConversationCollator:
    """Stage-2 DataLoader ``collate_fn``: items ``(images, conversation)`` -> one training batch with labels.

    ``images`` is a list of PIL images or paths (one per ``<image>``); ``conversation`` a LLaVA-format list of turns.
    """

    def __init__(self, processor: AnomalyOVProcessor, max_length: int | None = None) -> None:
        self.processor = processor
        self.max_length = max_length

    def __call__(self, items: Sequence[tuple[Sequence[Any], Sequence[Mapping[str, Any]]]]) -> dict[str, torch.Tensor]:
        if not items:
            raise ValueError("empty batch")
        groups = [list(images) for images, _ in items]
        convs = [list(conv) for _, conv in items]
        return self.processor(
            groups, convs, add_generation_prompt=False, max_length=self.max_length, padding_side="right",
            return_labels=True,
        )
