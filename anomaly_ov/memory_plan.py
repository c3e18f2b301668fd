"""Per-GPU training memory of Anomaly-OV, from the model config's shapes, for each strategy and GPU count.

Nothing here builds a model or imports torch: parameter counts come from the config's fields (the SigLIP tower,
the projector, the LTFM expert, the Qwen2 LLM) the way transformers and :mod:`anomaly_ov.model.expert` lay the
weights out, and ``tests/unit/test_memory_plan.py`` checks them against ``sum(p.numel())`` of the real modules.
``benchmarks/memory_plan.py`` prints the tables and checks the accounting against a measured training step.

The accounting, per GPU (bytes):

* **weights**: every part the stage holds (stage 1 of a pretrained preset: tower + expert, the LLM is never
  loaded; stage 2: everything). Frozen parts at the compute dtype; trained parts as the :class:`Precision` holds
  them: bf16 under DeepSpeed's bf16 mode, fp32 under ``fsdp`` (torch's FSDP2 with a bf16 ``MixedPrecisionPolicy``:
  the sharded parameter is the fp32 master itself) and under this project's own stage 2 (``fp32_master_weights``).
* **gradients**: one per trained parameter, in the dtype of the held weight.
  ``ddp`` with more than one GPU also holds its gradient buckets (a second copy; ``gradient_as_bucket_view`` is
  off by default).
* **optimizer**: AdamW's fp32 ``exp_avg`` and ``exp_avg_sq`` (8 bytes) plus, when the held weight is bf16, the
  fp32 master weights (4 bytes): 12 bytes per trained parameter (with the bf16 weight and gradient, the 16 bytes
  a parameter the 7B's stage 2 needs under plain DDP).
* **sharding**: ``ddp`` replicates everything; DeepSpeed ``zero2`` splits gradients and optimizer state over the
  GPUs; ``zero3`` and ``fsdp`` (ZeRO-3-like) split weights too, and hold the gathered compute-dtype weights of
  the layer being computed and the one prefetched (plus, for ``fsdp``, the root module's own parameters: the
  embeddings, the LM head and whatever is not inside a decoder layer).
* **activations**: what autograd keeps for the backward pass, per token and layer from the layer's shapes (see
  :func:`llm_layer_activation_bytes`), for ``micro_batch`` sequences of ``seq_len`` tokens; with gradient
  checkpointing each decoder layer keeps only its input and one layer is recomputed at a time. Attention is
  flash / memory-efficient (no [heads, seq, seq] tensor kept) unless ``attention="eager"``. The LM head runs on
  the answer positions only (``logits_to_keep``), as stage 2's loss does. A tied embedding adds two transient
  embedding-sized gradients (the LM head's and the input embedding's, summed). Frozen parts run without a graph;
  their transient working set is not counted (it is freed before the LLM's backward, where the peak is).

What it leaves out (so real peaks run a few percent higher): allocator fragmentation and caching, CUDA context
and kernels (~0.5-1 GiB a GPU), NCCL buffers, ``torch.compile`` workspaces.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from anomaly_ov.errors import ConfigError

GIB = 2**30
#: ``ddp``: replicated; ``zero2``: DeepSpeed ZeRO-2 (gradients + optimizer split); ``zero3``: DeepSpeed ZeRO-3;
#: ``fsdp``: torch's FSDP2 ``fully_shard`` (ZeRO-3-like: weights split too).
STRATEGIES = ("ddp", "fsdp", "zero2", "zero3")
#: least communication first: DDP all-reduces gradients; ZeRO-2 reduce-scatters them and all-gathers updated
#: weights once a step; FSDP / ZeRO-3 also gather every layer's weights in forward and again in backward.
PREFERENCE = ("ddp", "zero2", "fsdp", "zero3")
GPU_COUNTS = (1, 2, 4, 8, 16)
PARTS = ("tower", "expert", "projector", "llm_embed", "llm_body", "lm_head")
CATEGORIES = ("weights", "gradients", "optimizer", "gathered", "activations")


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    value = cfg.get(name, default) if isinstance(cfg, Mapping) else getattr(cfg, name, default)
    return default if value is None else value


# ---------------------------------------------------------------------------------------------- parameters
def siglip_layer_params(vision: Any) -> int:
    """One SigLIP encoder layer: two LayerNorms, q/k/v/out projections (with bias), fc1/fc2 (with bias)."""
    c, i = vision.hidden_size, vision.intermediate_size
    return 2 * 2 * c + 4 * (c * c + c) + (c * i + i) + (i * c + c)


def vision_tower_params(vision: Any) -> int:
    """``SiglipVisionModel`` of ``vision`` (a ``SiglipVisionConfig``): patch conv, position embedding, the layers,
    the post-LayerNorm and, when ``vision_use_head``, the attention-pooling head."""
    c, i, p = vision.hidden_size, vision.intermediate_size, vision.patch_size
    tokens = (vision.image_size // p) ** 2
    embeddings = vision.num_channels * c * p * p + c + tokens * c
    total = embeddings + vision.num_hidden_layers * siglip_layer_params(vision) + 2 * c
    if _get(vision, "vision_use_head", True):
        total += c + (3 * c * c + 3 * c) + (c * c + c) + 2 * c + (c * i + i) + (i * c + c)
    return total


def _expert_width(config: Any) -> int:
    """E of the config's expert (``expert_config["embed_dim"]``; AnomalyExpert's default 512 when unset)."""
    return int(_get(_get(config, "expert_config", {}), "embed_dim", 512))


def expert_params(config: Any) -> int:
    """The LTFM expert (:class:`anomaly_ov.model.expert.AnomalyExpert`) of an ``AnomalyOVConfig``."""
    c = config.vision_config.hidden_size
    e = _expert_width(config)
    p = _get(_get(config, "expert_config", {}), "predictor_dim", e)
    levels = len(config.expert_layers)
    tokens = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    prompts = 2 * e
    pooling = tokens + 1
    class_predictor = (c * e + e) + (e * e + e)
    adaptors = levels * (c * e + e) + levels * (2 * e * e + e)
    final = (c * p + p) + (p + 1)
    q_former = 2 * (c * e + e)
    self_similarity = 2 if _get(_get(config, "expert_config", {}), "self_similarity", False) else 0  # scale, shift
    return prompts + pooling + class_predictor + adaptors + final + q_former + self_similarity


def projector_params(config: Any) -> int:
    """LLaVA-OneVision's two-layer projector (tower width x feature layers -> LLM width -> LLM width, biases as
    ``multimodal_projector_bias``) plus the ``image_newline`` vector."""
    c, d = config.vision_config.hidden_size, config.text_config.hidden_size
    layers = config.vision_feature_layer
    c_in = c * (len(layers) if isinstance(layers, list | tuple) else 1)
    bias = bool(_get(config, "multimodal_projector_bias", True))
    return c_in * d + d * d + (2 * d if bias else 0) + d


def qwen2_head_dim(text: Any) -> int:
    return _get(text, "head_dim", text.hidden_size // text.num_attention_heads)


def qwen2_layer_params(text: Any) -> int:
    """One Qwen2 decoder layer: q/k/v with bias, o without, gate/up/down without bias, two RMSNorms."""
    d, i, hd = text.hidden_size, text.intermediate_size, qwen2_head_dim(text)
    q, kv = text.num_attention_heads * hd, _get(text, "num_key_value_heads", text.num_attention_heads) * hd
    return (d * q + q) + 2 * (d * kv + kv) + q * d + 3 * d * i + 2 * d


def qwen2_params(text: Any) -> tuple[int, int, int]:
    """(input embeddings, decoder layers + final norm, LM head; 0 when tied to the embeddings)."""
    embed = text.vocab_size * text.hidden_size
    body = text.num_hidden_layers * qwen2_layer_params(text) + text.hidden_size
    head = 0 if _get(text, "tie_word_embeddings", False) else embed
    return embed, body, head


@dataclass(frozen=True)
class ParamCounts:
    """Parameters of each part of the model (``projector`` includes ``image_newline``)."""

    tower: int
    expert: int
    projector: int
    llm_embed: int
    llm_body: int
    lm_head: int
    llm_layer: int = 0  # one decoder layer (the unit FSDP / ZeRO-3 gather)
    tower_layer: int = 0

    def of(self, parts: Iterable[str]) -> int:
        return sum(getattr(self, p) for p in parts)

    @property
    def total(self) -> int:
        return self.of(PARTS)


def count_parameters(config: Any, tie_word_embeddings: bool | None = None) -> ParamCounts:
    """Parameters of the model an ``AnomalyOVConfig`` describes, part by part, from its shapes.

    ``tie_word_embeddings``: the whole model's setting when it differs from the text config's (transformers 5 ties
    the LM head when either says so); by default the text config's or else the top-level config's.
    """
    text = config.text_config
    if tie_word_embeddings is None:
        tie_word_embeddings = bool(_get(text, "tie_word_embeddings", False) or _get(config, "tie_word_embeddings"))
    embed, body, head = qwen2_params(text)
    if tie_word_embeddings:
        head = 0
    return ParamCounts(
        tower=vision_tower_params(config.vision_config),
        expert=expert_params(config),
        projector=projector_params(config),
        llm_embed=embed,
        llm_body=body,
        lm_head=head,
        llm_layer=qwen2_layer_params(text),
        tower_layer=siglip_layer_params(config.vision_config),
    )


# -------------------------------------------------------------------------------------------------- precision
@dataclass(frozen=True)
class Precision:
    """Bytes per element of the compute dtype (frozen weights, activations), of a trained weight as held, of its
    gradient and of its optimizer state (AdamW's two moments, plus the fp32 master weight when the held weight is
    16-bit)."""

    name: str
    compute: int
    trained_weight: int
    grad: int
    optimizer: int


#: DeepSpeed's bf16 mode (the release): bf16 weights and gradients, fp32 master weights + moments in the optimizer.
BF16 = Precision("bf16", compute=2, trained_weight=2, grad=2, optimizer=12)
#: bf16 compute on fp32 weights: FSDP2 with a bf16 ``MixedPrecisionPolicy`` (the fp32 shard is the master) and
#: this project's stage 2 (``fp32_master_weights``: what trains is held in fp32, autocast computes in bf16).
BF16_FP32_WEIGHTS = Precision("bf16+fp32 weights", compute=2, trained_weight=4, grad=4, optimizer=8)
FP32 = Precision("fp32", compute=4, trained_weight=4, grad=4, optimizer=8)
PRECISIONS = {"bf16": BF16, "bf16+fp32 weights": BF16_FP32_WEIGHTS, "fp32": FP32}


# ---------------------------------------------------------------------------------------------------- workload
@dataclass(frozen=True)
class Workload:
    """One training stage's shapes per GPU and micro-step.

    Args:
        stage: 1 (expert) or 2 (instruction tuning).
        resident: the parts the stage holds (stage 1 of a pretrained preset has no LLM).
        trained: the parts that train.
        micro_batch: stage 1: images; stage 2: conversations, per GPU per micro-step.
        seq_len: stage 2's tokens per conversation.
        media_tokens: stage 2's projected tokens per conversation (visual + anomaly).
        answer_tokens: stage 2's answer positions per conversation (the LM head runs on these).
        crops: crops per image through the tower (base view included).
    """

    stage: int
    resident: tuple[str, ...]
    trained: tuple[str, ...]
    micro_batch: int = 1
    seq_len: int = 0
    media_tokens: int = 0
    answer_tokens: int = 0
    crops: int = 1


def stage1_workload(images: int, crops: int, train_tower: bool = False, whole_model: bool = False) -> Workload:
    """Stage 1: the expert trains (and the tower with it for the tiny preset); a pretrained preset holds the tower
    and the expert only, the tiny preset builds the whole model."""
    resident = PARTS if whole_model else ("tower", "expert")
    trained = ("tower", "expert") if train_tower else ("expert",)
    return Workload(1, tuple(resident), trained, micro_batch=images, crops=crops)


def stage2_workload(micro_batch: int, seq_len: int, media_tokens: int, answer_tokens: int, crops: int) -> Workload:
    """Stage 2: projector and LLM train, tower and expert frozen."""
    return Workload(2, PARTS, ("projector", "llm_embed", "llm_body", "lm_head"), micro_batch=micro_batch,
                    seq_len=seq_len, media_tokens=media_tokens, answer_tokens=answer_tokens, crops=crops)


# ------------------------------------------------------------------------------------------------ activations
def llm_layer_activation_bytes(text: Any, act: int) -> int:
    """Bytes one Qwen2 decoder layer keeps for backward per token (flash / memory-efficient attention).

    Each RMSNorm keeps its fp32 upcast input and its normalised output (4 + ``act`` bytes x width); q/k/v keep
    their shared input; attention keeps q, k, v (k and v at the KV width) and its output; o_proj's input is that
    output; the SwiGLU MLP keeps its input, gate and up outputs, SiLU(gate) and the product (4 x intermediate).
    """
    d, i = text.hidden_size, text.intermediate_size
    hd = qwen2_head_dim(text)
    q = text.num_attention_heads * hd
    kv = _get(text, "num_key_value_heads", text.num_attention_heads) * hd
    norms = 2 * (4 + act) * d
    attention = act * (d + q + 2 * kv + q)
    mlp = act * (d + 4 * i)
    return norms + attention + mlp


def eager_attention_bytes(text: Any, seq_len: int, act: int) -> int:
    """Per sequence and layer, what eager attention adds: the fp32 softmax output and its cast, [heads, s, s]."""
    return text.num_attention_heads * seq_len * seq_len * (4 + act)


def siglip_layer_activation_bytes(vision: Any, act: int) -> int:
    """Bytes one SigLIP layer keeps per token when the tower trains: LayerNorm inputs, q/k/v input and outputs,
    attention output, fc1 input and output, GELU output."""
    c, i = vision.hidden_size, vision.intermediate_size
    return act * (2 * c + c + 3 * c + c + c + 2 * i) + 2 * 2 * 4  # + LayerNorm mean/rstd


def expert_activation_bytes(config: Any, act: int) -> int:
    """Bytes the trained expert keeps per crop: the tower features it reads (LLM layer + levels, [T, C] each), each
    level's adapted features [T, E] and matching products, the q_former's keys [T, E] and the quadrant weights."""
    c, e = config.vision_config.hidden_size, _expert_width(config)
    levels = len(config.expert_layers)
    tokens = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    return act * tokens * ((levels + 1) * c + levels * (e + 8) + e + 8)


def activation_bytes(config: Any, work: Workload, act: int, checkpointing: bool, attention: str = "flash") -> int:
    """Activation bytes per GPU for ``work`` (see the module docstring)."""
    vision, text = config.vision_config, config.text_config
    if work.stage == 1:
        crops = work.micro_batch * work.crops
        total = crops * expert_activation_bytes(config, act)
        if "tower" in work.trained:
            tokens = (vision.image_size // vision.patch_size) ** 2
            per_layer = tokens * siglip_layer_activation_bytes(vision, act)
            if attention == "eager":
                per_layer += vision.num_attention_heads * tokens * tokens * (4 + act)
            total += crops * vision.num_hidden_layers * per_layer
        return total
    b, s, d = work.micro_batch, work.seq_len, text.hidden_size
    layers = text.num_hidden_layers
    layer = s * llm_layer_activation_bytes(text, act)
    if attention == "eager":
        layer += eager_attention_bytes(text, s, act)
    body = (layers * act * s * d + layer) if checkpointing else layers * layer
    final_norm = s * (4 + act) * d
    logits = work.answer_tokens * text.vocab_size * (act + 4 + 4)  # logits, fp32 log-softmax, its gradient
    projector = work.media_tokens * act * (vision.hidden_size + 2 * d)
    return b * (body + final_norm + logits + projector)


# ------------------------------------------------------------------------------------------------------ plan
@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per GPU by category for one strategy and GPU count."""

    strategy: str
    gpus: int
    checkpointing: bool
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def gib(self) -> dict[str, float]:
        return {k: v / GIB for k, v in {**self.parts, "total": self.total}.items()}


def plan(
    config: Any,
    work: Workload,
    strategy: str,
    gpus: int,
    precision: Precision = BF16,
    checkpointing: bool = True,
    attention: str = "flash",
    counts: ParamCounts | None = None,
) -> MemoryPlan:
    """Per-GPU memory of ``work`` under ``strategy`` on ``gpus`` GPUs (see the module docstring for the model)."""
    problems = []
    if strategy not in STRATEGIES:
        problems.append(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if gpus < 1:
        problems.append(f"gpus must be >= 1, got {gpus}")
    if problems:
        raise ConfigError("memory plan: " + "; ".join(problems))
    counts = counts or count_parameters(config)
    trained = counts.of(work.trained)
    frozen = counts.of(p for p in work.resident if p not in work.trained)
    if strategy == "fsdp" and precision == BF16:
        precision = BF16_FP32_WEIGHTS  # FSDP2's sharded parameter is the fp32 master weight
    cb = precision.compute
    sharded_weights = strategy in ("zero3", "fsdp")
    weights: float = frozen * cb + trained * precision.trained_weight
    grads: float = trained * precision.grad
    optimizer: float = trained * precision.optimizer
    grad_b = precision.grad
    gathered = 0.0
    if strategy == "ddp":
        grads += trained * grad_b if gpus > 1 else 0  # DDP's bucket copy of the gradients
    elif strategy == "zero2":
        grads, optimizer = grads / gpus, optimizer / gpus
    else:
        weights, grads, optimizer = weights / gpus, grads / gpus, optimizer / gpus
    if sharded_weights and gpus > 1:
        unit = max(counts.llm_layer if "llm_body" in work.resident else 0, counts.tower_layer)
        gathered = 2 * unit * cb  # the layer computed and the one prefetched
        if strategy == "fsdp":
            root = counts.of(p for p in work.resident if p not in ("llm_body", "tower"))
            gathered += root * cb
    acts = activation_bytes(config, work, cb, checkpointing and work.stage == 2, attention)
    if "llm_embed" in work.trained and counts.lm_head == 0:
        # a tied embedding gets two gradients (LM head and input embedding), summed at the end of backward: two
        # more embedding-sized tensors live for a moment, before any reduce or shard
        acts += 2 * counts.llm_embed * precision.grad
    parts = {"weights": weights, "gradients": grads, "optimizer": optimizer, "gathered": gathered,
             "activations": acts}
    return MemoryPlan(strategy, gpus, checkpointing, parts)


def plans(config: Any, work: Workload, precision: Precision = BF16, strategies: Iterable[str] = STRATEGIES,
          gpu_counts: Iterable[int] = GPU_COUNTS, **kwargs: Any) -> list[MemoryPlan]:
    """:func:`plan` for every strategy and GPU count (with and without checkpointing for stage 2)."""
    counts = count_parameters(config)
    flags = (True, False) if work.stage == 2 else (False,)
    return [plan(config, work, s, n, precision, flag, counts=counts, **kwargs)
            for s in strategies for n in gpu_counts for flag in flags]


def first_fit(candidates: Iterable[MemoryPlan], budget_gib: float, headroom: float = 0.9) -> MemoryPlan | None:
    """The first candidate whose total fits ``headroom`` x ``budget_gib`` (order them by preference, e.g.
    :data:`PREFERENCE`); None when none does."""
    for candidate in candidates:
        if candidate.total <= headroom * budget_gib * GIB:
            return candidate
    return None

