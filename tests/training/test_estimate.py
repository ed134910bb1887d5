"""The memory estimator against real models: parameter counts, PEFT's adapter size, bitsandbytes' NF4
storage, and the tensors autograd actually saves in a tiny transformers model."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import typer
from click.testing import Result
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from typer.testing import CliRunner

from lorafleet.adapters import LoraSettings, attach, count_parameters
from lorafleet.adapters.quantize import quantize_nf4
from lorafleet.cli.estimate import estimate
from lorafleet.errors import ConfigError
from lorafleet.models import DEFAULT_MODEL_ID, tiny_model
from lorafleet.training import loss
from lorafleet.training.estimate import (
    ALIASES,
    KNOWN_MODELS,
    METHODS,
    ModelShape,
    estimate_memory,
    model_shape,
    nf4_bits_per_weight,
)
from tests.helpers import saved_for_backward

LLAMA_2_7B = ModelShape(
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32, num_kv_heads=32
)
TINY_CONFIGS = {
    "llama": (LlamaConfig, LlamaForCausalLM, {"num_key_value_heads": 2}),
    "llama-bias": (LlamaConfig, LlamaForCausalLM, {"attention_bias": True, "mlp_bias": True, "head_dim": 8}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {"num_key_value_heads": 1, "tie_word_embeddings": True}),
}


def tiny_config_model(name: str) -> PreTrainedModel:
    config_class, model_class, extra = TINY_CONFIGS[name]
    config = config_class(
        vocab_size=300,
        hidden_size=48,
        intermediate_size=112,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=64,
        **extra,
    )
    return model_class(config)


def numel(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- parameter counts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_parameter_count_equals_transformers(name: str) -> None:
    model = tiny_config_model(name)

    assert ModelShape.from_config(model.config).num_parameters() == numel(model)


def test_parameter_count_equals_transformers_for_gpt2() -> None:
    model = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_embd=48, n_layer=3, n_head=4, n_positions=64))
    shape = ModelShape.from_config(model.config)

    assert shape.family == "gpt2"
    assert shape.num_parameters() == numel(model)


def test_known_shapes_have_their_published_parameter_counts() -> None:
    assert model_shape("default").num_parameters() == 134_515_008  # SmolLM2-135M
    assert model_shape("meta-llama/Llama-2-7b-hf").num_parameters() == 6_738_415_616
    assert model_shape("llama-3-8b").num_parameters() == 8_030_261_248
    assert model_shape("mistral-7b").num_parameters() == 7_241_732_096
    assert model_shape("Qwen/Qwen2.5-0.5B").num_parameters() == 494_032_768


def test_default_is_the_bundled_model() -> None:
    assert model_shape("default") == model_shape(DEFAULT_MODEL_ID) == KNOWN_MODELS[ALIASES["default"]]


def test_shape_is_read_from_a_model_directory(tmp_path: Path) -> None:
    model = tiny_config_model("qwen2")
    model.config.save_pretrained(tmp_path)

    assert model_shape(str(tmp_path)) == ModelShape.from_config(model.config)
    assert model_shape(str(tmp_path)).attention_bias == "qkv"


# --- weights, adapter, training state -----------------------------------------------------------------------


def test_qlora_weights_of_a_7b_model_are_about_3_9_gb_not_1() -> None:
    weights = estimate_memory(LLAMA_2_7B, method="qlora").weights

    assert 3.5e9 <= weights <= 3.9e9
    assert nf4_bits_per_weight(double_quant=True) == pytest.approx(4.127, abs=1e-3)
    without_dq = estimate_memory(LLAMA_2_7B, method="qlora", double_quant=False).weights
    assert without_dq - weights == pytest.approx(LLAMA_2_7B.linear_weights() * (0.5 - 0.127) / 8, rel=1e-2)


def test_qlora_weights_equal_bitsandbytes_storage() -> None:
    # Every linear layer here holds a multiple of 64 · 256 weights, so no block is partly filled.
    model, _ = tiny_model("llama", hidden_size=256, intermediate_size=512, num_heads=4, dtype=torch.bfloat16)
    shape = ModelShape.from_config(model.config)
    quantize_nf4(model, compute_dtype=torch.bfloat16)
    stored = 0
    for param in model.parameters():
        state = getattr(param, "quant_state", None)
        stored += param.numel() * param.element_size()  # packed NF4 (uint8) or bfloat16
        if state is not None:
            stored += state.absmax.nbytes + state.state2.absmax.nbytes  # 8-bit absmax + fp32 second level

    assert estimate_memory(shape, method="qlora").weights == stored


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], "all-linear"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_lora_trainable_params_equal_peft(arch: str, targets: list[str] | str) -> None:
    if arch == "gpt2" and targets != "all-linear":
        targets = ["c_attn"]
    model, _ = tiny_model(arch)  # type: ignore[arg-type]
    shape = ModelShape.from_config(model.config)
    peft_model = attach(model, LoraSettings(r=4, target_modules=targets))
    trained = [p for p in peft_model.parameters() if p.requires_grad]

    result = estimate_memory(shape, method="lora", lora_r=4, lora_targets=targets)

    assert result.trainable_params == count_parameters(peft_model).trainable
    assert result.adapter == sum(p.numel() * p.element_size() for p in trained)  # fp32 over a bf16 base


def test_training_state_per_trained_parameter() -> None:
    full = estimate_memory(LLAMA_2_7B, method="full")
    lora = estimate_memory(LLAMA_2_7B, method="lora", optimizer="adamw-8bit")
    n = LLAMA_2_7B.num_parameters()

    assert (full.weights, full.gradients, full.optimizer, full.adapter) == (2 * n, 2 * n, 8 * n, 0)
    assert lora.gradients == 4 * lora.trainable_params
    assert lora.optimizer == 2 * lora.trainable_params
    assert estimate_memory(LLAMA_2_7B, method="full", dtype="float32").weights == 4 * n


# --- activations --------------------------------------------------------------------------------------------


def measured_activations(model: torch.nn.Module, tokens: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves in a training forward pass, plus the returned logits and their
    fp32 gradient (the estimate's `b·s·V·(e + 4)` beyond the fp32 copy that cross-entropy saves)."""
    with saved_for_backward(model) as saved:
        logits = model.train()(input_ids=tokens, labels=tokens).logits
    return sum(saved.values()) + logits.numel() * (logits.element_size() + 4)


@pytest.mark.parametrize(
    ("method", "dtype", "targets"),
    [
        ("full", torch.bfloat16, None),
        ("full", torch.float32, None),
        ("lora", torch.bfloat16, ["q_proj", "k_proj", "v_proj", "o_proj"]),
        ("lora", torch.bfloat16, "all-linear"),
        ("lora", torch.float32, "all-linear"),
        ("qlora", torch.float32, ["q_proj", "v_proj"]),
    ],
)
def test_activations_match_what_autograd_saves(
    method: str, dtype: torch.dtype, targets: list[str] | str | None
) -> None:
    model, _ = tiny_model("llama", hidden_size=128, intermediate_size=384, num_layers=4, dtype=dtype)
    shape = ModelShape.from_config(model.config)
    if targets is not None:
        model = attach(
            copy.deepcopy(model),
            LoraSettings(r=8, target_modules=targets),
            "nf4" if method == "qlora" else None,
        )
    tokens = torch.randint(0, 256, (2, 64))

    estimated = estimate_memory(
        shape,
        method=method,  # type: ignore[arg-type]
        batch_size=2,
        seq_length=64,
        lora_r=8,
        lora_targets=targets or "all-linear",
        dtype=str(dtype).removeprefix("torch."),  # type: ignore[arg-type]
    ).activations

    assert estimated == pytest.approx(measured_activations(model, tokens), rel=0.03)


def test_eager_attention_activations_match_what_autograd_saves() -> None:
    model, _ = tiny_model("llama", hidden_size=128, intermediate_size=384, num_layers=4, dtype=torch.bfloat16)
    model.set_attn_implementation("eager")
    shape = ModelShape.from_config(model.config)
    tokens = torch.randint(0, 256, (2, 128))

    estimated = estimate_memory(shape, method="full", batch_size=2, seq_length=128, attention="eager")

    assert estimated.activations == pytest.approx(measured_activations(model, tokens), rel=0.03)


def test_past_the_threshold_the_loss_keeps_the_head_input_and_one_slice_of_logits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """lorafleet's sliced loss (`training/loss.py`): what autograd saves, plus one slice's logits, fp32 copy
    and gradient."""
    model, _ = tiny_model("llama", hidden_size=128, intermediate_size=384, num_layers=4, dtype=torch.bfloat16)
    model = attach(model, LoraSettings(r=8, target_modules="all-linear"), None)
    vocab = model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(loss, "CHUNK_ELEMENTS", 16 * vocab)
    tokens = torch.randint(0, 256, (2, 64))
    batch = {"input_ids": tokens, "attention_mask": torch.ones_like(tokens), "labels": tokens}
    with saved_for_backward(model) as saved:
        model.train()
        loss.causal_lm_loss(model, batch)
    estimated = estimate_memory(
        ModelShape.from_config(model.config),
        method="lora",
        batch_size=2,
        seq_length=64,
        lora_r=8,
        lora_targets="all-linear",
    ).activations
    one_slice = 16 * vocab * (2 + 4 + 4)

    assert estimated - one_slice == pytest.approx(sum(saved.values()), rel=0.03)


def test_gradient_checkpointing_keeps_one_input_per_layer() -> None:
    for method in METHODS:
        kept = estimate_memory(LLAMA_2_7B, method=method, gradient_checkpointing=False).activations
        checkpointed = estimate_memory(LLAMA_2_7B, method=method, gradient_checkpointing=True).activations
        assert checkpointed < kept / 5
        assert checkpointed > 32 * 2048 * 4096 * 2  # at least every layer's bf16 input


def test_activations_grow_with_batch_and_eager_attention_with_the_square_of_length() -> None:
    one = estimate_memory(LLAMA_2_7B, method="lora", batch_size=1).activations
    short = estimate_memory(LLAMA_2_7B, method="lora", batch_size=1, seq_length=256).activations
    four = estimate_memory(LLAMA_2_7B, method="lora", batch_size=4, seq_length=256).activations
    eager = estimate_memory(LLAMA_2_7B, method="lora", attention="eager").activations

    assert four == 4 * short  # 1024 tokens × 32000: under the loss's slicing threshold
    # eager keeps the (4 + e)·a·s softmax scores per token and layer instead of SDPA's 4·a log-sum-exp
    assert eager - one == 32 * 2048 * 32 * ((4 + 2) * 2048 - 4)


def test_totals_order_qlora_below_lora_below_full() -> None:
    for checkpointed in (False, True):
        totals = [
            estimate_memory(LLAMA_2_7B, method=m, gradient_checkpointing=checkpointed).total for m in METHODS
        ]
        assert totals[2] < totals[1] < totals[0]


# --- bad input ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["batch_size", "seq_length", "lora_r"])
def test_non_positive_sizes_raise_config_error_naming_the_field(field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        estimate_memory(LLAMA_2_7B, method="lora", **{field: 0})  # type: ignore[arg-type]


def test_unknown_choices_and_targets_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="dtype 'int8' is not one of bfloat16"):
        estimate_memory(LLAMA_2_7B, method="full", dtype="int8")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="method"):
        estimate_memory(LLAMA_2_7B, method="dora")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"c_attn.*linear layers are: down_proj"):
        estimate_memory(LLAMA_2_7B, method="lora", lora_targets=["c_attn"])


def test_unknown_model_names_the_known_ones_and_downloads_nothing() -> None:
    with pytest.raises(ConfigError, match="known names: default, smollm2-135m, llama-2-7b"):
        model_shape("someone/unknown-70b")


def test_directory_without_config_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=str(tmp_path)):
        ModelShape.from_path(tmp_path)


def test_bad_shape_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"model\.num_layers"):
        ModelShape.parse(vocab_size=10, hidden_size=8, intermediate_size=8, num_layers=0, num_heads=2)
    with pytest.raises(ConfigError, match="not a multiple of num_kv_heads"):
        ModelShape.parse(
            vocab_size=10, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=2, num_kv_heads=3
        )


# --- CLI ----------------------------------------------------------------------------------------------------


def invoke(*args: str) -> Result:
    app = typer.Typer()
    app.command()(estimate)
    return CliRunner().invoke(app, list(args))


def test_cli_prints_every_row_with_and_without_checkpointing() -> None:
    result = invoke("llama-2-7b", "--batch-size", "1", "--seq-length", "2048")

    assert result.exit_code == 0, result.output
    for word in [
        "weights",
        "adapter",
        "gradients",
        "optimizer",
        "activations",
        "total",
        "qlora ckpt",
        "10⁹ bytes",
    ]:
        assert word in result.stdout
    assert "3.866" in result.stdout  # the 7B QLoRA base


def test_cli_json_parses_and_accepts_a_shape_as_numbers() -> None:
    numbers = ["--vocab-size", "300", "--hidden-size", "48", "--intermediate-size", "112", "--layers", "3"]
    result = invoke(*numbers, "--heads", "4", "--no-gradient-checkpointing", "--json")

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [e["method"] for e in document["estimates"]] == list(METHODS)
    assert document["parameters"] == document["estimates"][0]["trainable_params"]
    assert all(e["total"] > e["activations"] > 0 for e in document["estimates"])


def test_cli_shape_numbers_change_a_named_model() -> None:
    result = invoke("llama-2-7b", "--layers", "16", "--json")

    assert json.loads(result.stdout)["shape"]["num_layers"] == 16


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["default", "--batch-size", "0"], "batch_size"),
        (["default", "--r", "0"], "lora_r"),
        (["nobody/unknown-7b"], "known names"),
        (["--hidden-size", "64"], "--vocab-size"),
    ],
)
def test_cli_bad_input_raises_config_error(args: list[str], needle: str) -> None:
    result = invoke(*args)

    assert isinstance(result.exception, ConfigError)
    assert needle in str(result.exception)


def test_cli_bad_input_is_one_error_line_when_registered() -> None:
    from lorafleet.cli.app import app

    if "estimate" not in {command.name for command in app.registered_commands}:
        pytest.skip("estimate is not registered in lorafleet.cli.app yet")
    result = CliRunner().invoke(app, ["estimate", "default", "--seq-length", "0"])

    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error: seq_length")
    assert len(result.stderr.strip().splitlines()) == 1
