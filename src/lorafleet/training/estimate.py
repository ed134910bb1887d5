"""Memory estimator: bytes to fine-tune a decoder LLM fully, with LoRA, or with QLoRA, before trying it.

Parameters of a Llama-style model (h hidden, i intermediate, L layers, V vocab, q = heads·head_dim,
k = kv_heads·head_dim):

    P = V·h (embedding) + L·(h·q + 2·h·k + q·h + 3·h·i + 2·h) + h (final norm) + V·h (head, unless tied)

Weights, by method (e = bytes of `dtype`: 2 for bfloat16/float16, 4 for float32):

    full    P·e
    lora    P·e for the frozen base; the adapter (r·(in + out) per adapted linear) in fp32, because PEFT
            keeps adapter weights in fp32 over a 16-bit base
    qlora   the linear layers of the decoder in NF4: 4 bits per weight plus the block constants,
            8/64 + 32/(64·256) ≈ 0.127 bits with double quantization (32/64 = 0.5 bits without);
            embeddings, head, norms and biases stay in `dtype`.

So a Llama-2-7B base in QLoRA is 6.48e9 · 4.127 / 8 bytes (3.34 GB) + 2 · 32000 · 4096 · 2 bytes of
embedding and head (0.52 GB) ≈ 3.87 GB: more than "6.7e9 × 4 bits = 3.4 GB" suggests, and nowhere near
the "1 GB" of folklore.
(PEFT's `prepare_model_for_kbit_training`, which `attach(..., "nf4")` calls, upcasts the non-NF4
weights to fp32: 0.52 GB more on a 7B, and activations then run in fp32 unless autocast is on.)

Training state: gradients as the trained weights (e bytes in full fine-tuning, 4 for the fp32 adapter);
AdamW keeps two fp32 moments, 8 bytes per trained parameter (2 with 8-bit AdamW). Full fine-tuning is
taken as pure `dtype` training: no fp32 master copy (mixed precision would add 4 bytes per parameter).

Activations are an explicit count of what autograd saves for the backward pass in one Llama-style
decoder layer with SDPA/flash attention, per token, with no autocast (checked against a real
transformers model in the tests; GPT-2-style layers are approximated by the same count):

    2 RMSNorms      2 · (4h + 4)       the fp32 input copy and 1/rms; + e·h each when norms are trained
    attention       e·(2q + 2k) + 4a   q, k, v, output and the log-sum-exp (a heads); eager attention
                                       also keeps the (4 + e)·a·s softmax scores instead
    MLP (SwiGLU)    3·e·i              SiLU input and output, up output
    linear inputs   e·width            kept once per distinct input when the layer is trained; a LoRA
                                       layer over a 16-bit base keeps its own fp32 copy (4·width) plus
                                       its r-wide hidden (4·r)

times b·s tokens and L layers, plus the final norm, the head input, and the logits at the loss:
b·s·V·(e + 4 + 4) (the logits, their fp32 copy kept by cross-entropy, its fp32 gradient). Past
`loss.CHUNK_ELEMENTS` logits lorafleet's loss runs the head in slices (`training/loss.py`): the head's
input (e·h per token) is kept instead, and one slice's logits exist at a time. With
gradient checkpointing each layer keeps only its input (e·h per token) and one layer is recomputed at a
time. Frozen layers do not keep their inputs, so LoRA activations are close to, not far below, full
fine-tuning's. The whole estimate is ±20%: it leaves out the CUDA context (≈0.5 GB), the allocator's
fragmentation and temporary buffers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from lorafleet.errors import ConfigError, validated
from lorafleet.training import loss

if TYPE_CHECKING:
    from transformers import PretrainedConfig

Method = Literal["full", "lora", "qlora"]
DType = Literal["bfloat16", "float16", "float32"]
Optimizer = Literal["adamw", "adamw-8bit", "sgd"]
Attention = Literal["sdpa", "eager"]
Reads = Literal["attn_in", "attn_out", "mlp_in", "mlp_hidden"]

METHODS: tuple[Method, ...] = ("full", "lora", "qlora")
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
DTYPE_BYTES: dict[str, int] = {"bfloat16": 2, "float16": 2, "float32": 4}
OPTIMIZER_BYTES: dict[str, int] = {"adamw": 8, "adamw-8bit": 2, "sgd": 0}
ADAPTER_BYTES = 4  # PEFT keeps LoRA weights in fp32 (autocast_adapter_dtype) whatever the base dtype
NF4_BLOCK, NF4_NESTED_BLOCK = 64, 256


def nf4_bits_per_weight(double_quant: bool = True) -> float:
    """4 bits per weight plus each 64-block's absmax: 8 bits (+ fp32 per 256 blocks) or 32 bits."""
    if double_quant:
        return 4 + 8 / NF4_BLOCK + 32 / (NF4_BLOCK * NF4_NESTED_BLOCK)
    return 4 + 32 / NF4_BLOCK


@dataclass(frozen=True)
class Projection:
    """One linear layer of a decoder layer: its module name, the activation it reads, its size."""

    name: str
    reads: Reads
    in_features: int
    out_features: int
    bias: bool


class ModelShape(BaseModel):
    """The numbers that decide a decoder LLM's memory; no weights needed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: int = Field(ge=1, description="Tokens in the vocabulary: rows of the embedding and the head.")
    hidden_size: int = Field(ge=1, description="Width h of the residual stream.")
    intermediate_size: int = Field(ge=1, description="Width of the MLP's hidden layer.")
    num_layers: int = Field(ge=1, le=10_000, description="Decoder layers.")
    num_heads: int = Field(ge=1, description="Query heads.")
    num_kv_heads: int = Field(ge=1, description="Key/value heads (fewer than num_heads: grouped-query).")
    head_dim: int | None = Field(None, ge=1, description="Width of one head; None = hidden_size / num_heads.")
    tie_word_embeddings: bool = Field(False, description="The output head shares the embedding matrix.")
    family: Literal["llama", "gpt2"] = Field(
        "llama",
        description="llama: RMSNorm, rotary, q/k/v/o and SwiGLU gate/up/down (Llama, Mistral, Qwen2, "
        "SmolLM); gpt2: LayerNorm, learned positions, fused c_attn, GELU c_fc/c_proj, biases everywhere.",
    )
    attention_bias: Literal["none", "qkv", "all"] = Field(
        "none", description="Which attention projections have a bias (Qwen2: qkv); llama family only."
    )
    mlp_bias: bool = Field(False, description="The MLP projections have biases; llama family only.")
    max_positions: int = Field(0, ge=0, description="Rows of a learned position embedding (gpt2 family).")

    @model_validator(mode="before")
    @classmethod
    def _default_kv_heads(cls, values: object) -> object:
        if isinstance(values, dict) and values.get("num_kv_heads") is None:
            return {**values, "num_kv_heads": values.get("num_heads")}
        return values

    @model_validator(mode="after")
    def _check_heads(self) -> ModelShape:
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
            )
        return self

    @classmethod
    def parse(cls, **values: object) -> ModelShape:
        """Build from untrusted values, raising `ConfigError` that names the bad field."""
        return validated(cls, "model", **values)

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> ModelShape:
        """The shape of a transformers config: Llama/Mistral/Qwen2-style names, or GPT-2's n_embd/n_layer."""
        get = config.to_dict().get
        model_type = str(get("model_type", ""))
        if model_type == "gpt2" or get("n_embd") is not None:
            hidden = _required(config, "n_embd")
            return cls.parse(
                vocab_size=_required(config, "vocab_size"),
                hidden_size=hidden,
                intermediate_size=get("n_inner") or 4 * hidden,
                num_layers=_required(config, "n_layer"),
                num_heads=_required(config, "n_head"),
                tie_word_embeddings=get("tie_word_embeddings", True),
                family="gpt2",
                max_positions=get("n_positions") or 0,
            )
        bias = "qkv" if model_type == "qwen2" else "all" if get("attention_bias") else "none"
        return cls.parse(
            vocab_size=_required(config, "vocab_size"),
            hidden_size=_required(config, "hidden_size"),
            intermediate_size=_required(config, "intermediate_size"),
            num_layers=_required(config, "num_hidden_layers"),
            num_heads=_required(config, "num_attention_heads"),
            num_kv_heads=get("num_key_value_heads"),
            head_dim=get("head_dim"),
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            attention_bias=bias,
            mlp_bias=bool(get("mlp_bias", False)),
        )

    @classmethod
    def from_path(cls, path: Path | str) -> ModelShape:
        """The shape of a model directory's `config.json`; nothing else is read."""
        from transformers import AutoConfig

        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise ConfigError(
                f"{folder}: no config.json here; give a HF model directory or a known model name"
            )
        try:
            config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, KeyError) as err:
            raise ConfigError(
                f"{folder / 'config.json'}: cannot be read as a transformers config: {err}"
            ) from err
        return cls.from_config(config)

    @property
    def head_width(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    def projections(self) -> list[Projection]:
        """The linear layers of one decoder layer, by module name (what LoRA `target_modules` names)."""
        h, i = self.hidden_size, self.intermediate_size
        q, kv = self.num_heads * self.head_width, self.num_kv_heads * self.head_width
        if self.family == "gpt2":
            return [
                Projection("c_attn", "attn_in", h, q + 2 * kv, True),
                Projection("c_proj", "attn_out", q, h, True),
                Projection("c_fc", "mlp_in", h, i, True),
                Projection("c_proj", "mlp_hidden", i, h, True),
            ]
        qkv_bias = self.attention_bias != "none"
        return [
            Projection("q_proj", "attn_in", h, q, qkv_bias),
            Projection("k_proj", "attn_in", h, kv, qkv_bias),
            Projection("v_proj", "attn_in", h, kv, qkv_bias),
            Projection("o_proj", "attn_out", q, h, self.attention_bias == "all"),
            Projection("gate_proj", "mlp_in", h, i, self.mlp_bias),
            Projection("up_proj", "mlp_in", h, i, self.mlp_bias),
            Projection("down_proj", "mlp_hidden", i, h, self.mlp_bias),
        ]

    def linear_weights(self) -> int:
        """Weights (no biases) of every decoder linear layer: what QLoRA stores in NF4."""
        return self.num_layers * sum(p.in_features * p.out_features for p in self.projections())

    def num_parameters(self) -> int:
        """Every parameter, as `sum(p.numel() for p in model.parameters())` counts them."""
        h = self.hidden_size
        norm = 2 * h if self.family == "gpt2" else h  # LayerNorm has a bias, RMSNorm only a weight
        biases = sum(p.out_features for p in self.projections() if p.bias)
        embeddings = self.vocab_size * h * (1 if self.tie_word_embeddings else 2) + self.max_positions * h
        return embeddings + self.linear_weights() + self.num_layers * (biases + 2 * norm) + norm


def _llama(
    vocab: int, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, **more: object
) -> ModelShape:
    return ModelShape.parse(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_layers=layers,
        num_heads=heads, num_kv_heads=kv_heads, **more,
    )  # fmt: skip


# Well-known models, from their config.json:  vocab, hidden, intermediate, layers, heads, kv heads.
KNOWN_MODELS: dict[str, ModelShape] = {
    "smollm2-135m": _llama(49152, 576, 1536, 30, 9, 3, tie_word_embeddings=True),
    "llama-2-7b": _llama(32000, 4096, 11008, 32, 32, 32),
    "llama-2-13b": _llama(32000, 5120, 13824, 40, 40, 40),
    "llama-3-8b": _llama(128256, 4096, 14336, 32, 32, 8),
    "llama-3.2-1b": _llama(128256, 2048, 8192, 16, 32, 8, head_dim=64, tie_word_embeddings=True),
    "mistral-7b": _llama(32000, 4096, 14336, 32, 32, 8),
    "qwen2.5-0.5b": _llama(151936, 896, 4864, 24, 14, 2, tie_word_embeddings=True, attention_bias="qkv"),
    "qwen2.5-7b": _llama(152064, 3584, 18944, 28, 28, 4, attention_bias="qkv"),
}
# Other names of the same shapes (matched case-insensitively); "default" is the bundled model.
ALIASES: dict[str, str] = {
    "default": "smollm2-135m",
    "huggingfacetb/smollm2-135m": "smollm2-135m",
    "huggingfacetb/smollm2-135m-instruct": "smollm2-135m",
    "llama-7b": "llama-2-7b",
    "meta-llama/llama-2-7b-hf": "llama-2-7b",
    "meta-llama/llama-2-13b-hf": "llama-2-13b",
    "meta-llama/meta-llama-3-8b": "llama-3-8b",
    "meta-llama/llama-3.1-8b": "llama-3-8b",
    "meta-llama/llama-3.2-1b": "llama-3.2-1b",
    "mistralai/mistral-7b-v0.1": "mistral-7b",
    "qwen/qwen2.5-0.5b": "qwen2.5-0.5b",
    "qwen/qwen2.5-7b": "qwen2.5-7b",
}


def model_shape(spec: str) -> ModelShape:
    """The shape of `default`, a known name or hub id (case-insensitive), or a directory with config.json.

    Never downloads: a hub id that is not in `KNOWN_MODELS` raises `ConfigError` listing the known names.
    """
    name = spec.strip().lower()
    known = KNOWN_MODELS.get(ALIASES.get(name, name))
    if known is not None:
        return known
    path = Path(spec).expanduser()
    if path.is_dir():
        return ModelShape.from_path(path)
    if path.name == "config.json" and path.is_file():
        return ModelShape.from_path(path.parent)
    names = ", ".join(["default", *KNOWN_MODELS])
    raise ConfigError(
        f"model {spec!r} is neither a known name nor a directory with config.json (nothing is downloaded); "
        f"known names: {names}; or give the shape as numbers (hidden size, layers, heads, ...)"
    )


class MemoryEstimate(BaseModel):
    """Bytes of GPU memory for one way of training one model; `total` is the sum of the rows."""

    model_config = ConfigDict(frozen=True)

    method: Method = Field(description="full fine-tuning, LoRA over a 16/32-bit base, or QLoRA over NF4.")
    gradient_checkpointing: bool = Field(
        description="Layers recompute their activations in the backward pass."
    )
    batch_size: int = Field(ge=1, description="Sequences per step.")
    seq_length: int = Field(ge=1, description="Tokens per sequence.")
    trainable_params: int = Field(ge=0, description="Parameters the optimizer updates.")
    weights: int = Field(ge=0, description="The base model's weights (NF4 + the rest in QLoRA).")
    adapter: int = Field(ge=0, description="LoRA adapter weights (fp32); 0 in full fine-tuning.")
    gradients: int = Field(ge=0, description="Gradients of the trained parameters.")
    optimizer: int = Field(ge=0, description="Optimizer state (AdamW: two fp32 moments per parameter).")
    activations: int = Field(
        ge=0, description="Tensors kept for the backward pass, and the logits at the loss."
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total(self) -> int:
        """The sum of the rows above."""
        return self.weights + self.adapter + self.gradients + self.optimizer + self.activations


def estimate_memory(
    shape: ModelShape,
    *,
    method: Method,
    batch_size: int = 1,
    seq_length: int = 2048,
    lora_r: int = 16,
    lora_targets: Sequence[str] | str = DEFAULT_TARGETS,
    dtype: DType = "bfloat16",
    optimizer: Optimizer = "adamw",
    gradient_checkpointing: bool = False,
    double_quant: bool = True,
    attention: Attention = "sdpa",
) -> MemoryEstimate:
    """Memory to train `shape` by `method` at `batch_size` × `seq_length` tokens (see the module docstring).

    `lora_targets` are module names (`q_proj`, ...) or "all-linear"; `dtype` is the base's weights and
    compute dtype. Out-of-range or unknown values raise `ConfigError` naming the argument.
    """
    _choose("method", method, METHODS)
    _choose("dtype", dtype, tuple(DTYPE_BYTES))
    _choose("optimizer", optimizer, tuple(OPTIMIZER_BYTES))
    _choose("attention", attention, ("sdpa", "eager"))
    for name, value in [("batch_size", batch_size), ("seq_length", seq_length), ("lora_r", lora_r)]:
        if value < 1:
            raise ConfigError(f"{name} must be ≥ 1 (got {value})")
    e = DTYPE_BYTES[dtype]
    total_params = shape.num_parameters()
    adapted = [] if method == "full" else _adapted(shape, lora_targets)
    adapter_params = shape.num_layers * sum(lora_r * (p.in_features + p.out_features) for p in adapted)
    if method == "qlora":
        nf4 = shape.linear_weights()
        weights = math.ceil(nf4 * nf4_bits_per_weight(double_quant) / 8) + (total_params - nf4) * e
    else:
        weights = total_params * e
    trainable = total_params if method == "full" else adapter_params
    grad_bytes = e if method == "full" else ADAPTER_BYTES
    tokens = batch_size * seq_length
    layer = _layer_activations(shape, method, adapted, lora_r, e, attention, seq_length)
    h = shape.hidden_size
    per_layer = e * h if gradient_checkpointing else layer  # checkpointing keeps only each layer's input
    recomputed = layer if gradient_checkpointing else 0  # and rebuilds one layer at a time in the backward
    layers = shape.num_layers * per_layer + recomputed
    final_norm = _norm_activations(shape, e, trained=method == "full")
    logit_rows = loss.logit_rows(tokens, shape.vocab_size)  # fewer: lorafleet's loss slices the head
    head_input = e * h if method == "full" or logit_rows < tokens else 0
    return MemoryEstimate(
        method=method,
        gradient_checkpointing=gradient_checkpointing,
        batch_size=batch_size,
        seq_length=seq_length,
        trainable_params=trainable,
        weights=weights,
        adapter=adapter_params * ADAPTER_BYTES,
        gradients=trainable * grad_bytes,
        optimizer=trainable * OPTIMIZER_BYTES[optimizer],
        activations=tokens * (layers + final_norm + head_input) + logit_rows * shape.vocab_size * (e + 4 + 4),
    )


def _layer_activations(
    shape: ModelShape,
    method: Method,
    adapted: list[Projection],
    r: int,
    e: int,
    attention: Attention,
    seq_length: int,
) -> int:
    """Bytes one decoder layer keeps for the backward pass, per token (the table in the module docstring)."""
    heads, width = shape.num_heads, shape.head_width
    q, kv = heads * width, shape.num_kv_heads * width
    kept = 2 * _norm_activations(shape, e, trained=method == "full")
    kept += e * (2 * q + 2 * kv)  # SDPA keeps q, k, v and its output, which is also o_proj's input
    kept += (4 + e) * heads * seq_length if attention == "eager" else 4 * heads  # scores or log-sum-exp
    kept += e * shape.intermediate_size * (3 if shape.family == "llama" else 1)  # activation fn (and up)
    readers: dict[Reads, list[Projection]] = {}
    for projection in shape.projections():
        readers.setdefault(projection.reads, []).append(projection)
    for reads, group in readers.items():
        size = group[0].in_features
        lora = [p for p in group if p in adapted]
        shares_input = method == "full" or (bool(lora) and e == ADAPTER_BYTES)
        if shares_input and reads != "attn_out":  # attn_out is already kept by SDPA
            kept += e * size
        if e != ADAPTER_BYTES:
            kept += len(lora) * ADAPTER_BYTES * size  # PEFT casts each LoRA layer's input to fp32
        kept += len(lora) * ADAPTER_BYTES * r  # A's output, read by B
    return kept


def _norm_activations(shape: ModelShape, e: int, *, trained: bool) -> int:
    """Per token: RMSNorm keeps an fp32 copy of its input and 1/rms; LayerNorm its input, mean and 1/std."""
    h = shape.hidden_size
    kept = e * h + 8 if shape.family == "gpt2" else 4 * h + 4
    return kept + (e * h if trained and shape.family == "llama" else 0)  # normalized x, for the weight grad


def _adapted(shape: ModelShape, targets: Sequence[str] | str) -> list[Projection]:
    projections = shape.projections()
    if targets == "all-linear":
        return projections
    names = [targets] if isinstance(targets, str) else list(targets)
    known = sorted({p.name for p in projections})
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise ConfigError(
            f"lora_targets {', '.join(map(repr, unknown)) or '(none)'} matches no linear layer of this "
            f"{shape.family}-style model; its linear layers are: {', '.join(known)}, or use 'all-linear'"
        )
    return [p for p in projections if p.name in names]


def _choose(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} {value!r} is not one of {', '.join(choices)}")


def _required(config: PretrainedConfig, name: str) -> int:
    value = config.to_dict().get(name, getattr(config, name, None))
    if not isinstance(value, int):
        kind = getattr(config, "model_type", "") or type(config).__name__
        raise ConfigError(f"config of model type {kind!r} has no integer {name}; cannot estimate its memory")
    return value
