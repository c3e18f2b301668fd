"""The tiny preset's tokenizer: a byte-level BPE trained in seconds on the project's own instruction text.

It speaks Qwen's ChatML (``<|im_start|>``/``<|im_end|>``, system prompt "You are a helpful assistant.") and has
the placeholders the model fills as special tokens: ``<image>``, ``<video>`` (unused, LLaVA-OV expects it),
``<adv>`` (the suspicious level) and ``<anomaly>`` (the expert's tokens). " slightly", " moderately" and " highly"
are single tokens (the model embeds the chosen one at ``<adv>``): the corpus is seeded with the phrase so BPE
learns them, and training fails loudly if it did not.

    tok = train_tokenizer(texts, vocab_size=2000)    # PreTrainedTokenizerFast; tok.save_pretrained(dir)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
ADV_TOKEN = "<adv>"
ANOMALY_TOKEN = "<anomaly>"
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, IM_END, IMAGE_TOKEN, VIDEO_TOKEN, ADV_TOKEN, ANOMALY_TOKEN]
ADVERB_WORDS = ("slightly", "moderately", "highly")
#: the release's (low, high) between them: "slightly" below 0.3, "highly" from 0.7 (a preset may choose others:
#: ``anomaly_ov.model.presets.suspicious_thresholds``)
RELEASE_SUSPICIOUS_THRESHOLDS = (0.3, 0.7)

#: the VisA-D&R detection prompt (docs/model.md, 'The VisA-D&R protocol'): evaluation and `predict` ask it, the
#: instruction data trains on it as one of its detection phrasings. Declared here, the lightest module every user
#: already imports.
DETECTION_PROMPT = "Are there any defects for the object in the image? Please reply with 'Yes' or 'No'."

#: A small built-in corpus so a tokenizer exists before any instruction data (tests, shapes-only models).
BASE_CORPUS = [
    "You are a helpful assistant.",
    DETECTION_PROMPT,
    "Yes", "No", "Yes.", "No.",
    "Is there any anomaly in the image? Describe the defect, where it is, how big it is and how many there are.",
    "What is the likely cause of this defect? What could its impact be, and how could it be prevented?",
    "The image shows a normal object without visible defects.",
    "There is a scratch near the top left corner of the object.",
    "A small crack appears in the center, covering a small part of the surface.",
    "Two stains are visible at the bottom right; a hole is on the left side.",
    "The defect is a contamination on the surface, likely caused by handling during manufacturing.",
    "It may weaken the part; regular inspection and cleaner processes could prevent it.",
    "fabric wood metal tiles screw pill pcb round part bottle cable capsule carpet grid hazelnut leather "
    "metal nut toothbrush transistor zipper candle capsules cashew chewinggum fryum macaroni pipe brain liver "
    "chest retina scan slice view render point cloud top bottom left right center corner edge large medium tiny",
]


def _seeded(texts: Iterable[str], repeats: int) -> Iterator[str]:
    yield from BASE_CORPUS
    for word in ADVERB_WORDS:
        for _ in range(repeats):
            yield f"with {word} suspicious features: "
    yield from texts


def train_tokenizer(texts: Iterable[str] = (), vocab_size: int = 2000, min_frequency: int = 2):
    """Train a byte-level BPE on ``texts`` (+ the built-in corpus) -> ``PreTrainedTokenizerFast`` with ChatML."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise ValueError(f"vocab_size must be at least 300 (256 bytes + specials + merges), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_seeded(texts, repeats=200), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[IM_START, IMAGE_TOKEN, VIDEO_TOKEN, ADV_TOKEN, ANOMALY_TOKEN],
        model_max_length=32768,
        padding_side="right",
    )
    fast.chat_template = CHATML_TEMPLATE
    for word in ADVERB_WORDS:
        ids = fast.encode(" " + word, add_special_tokens=False)
        if len(ids) != 1:
            raise RuntimeError(f"the trained tokenizer splits ' {word}' into {len(ids)} tokens; raise vocab_size")
    return fast
