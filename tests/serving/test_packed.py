"""Linears packed for oneDNN: the same outputs as `nn.Linear`, each row independent of its batch."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lorafleet.models import tiny_model
from lorafleet.serving.packed import PackedLinear, pack_linears

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 48), (2, 7, 48)], ids=["2d", "3d"])
def test_a_packed_linear_equals_the_linear(bias: bool, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(48, 80, bias=bias)
    x = torch.randn(*shape)
    with torch.inference_mode():
        torch.testing.assert_close(PackedLinear(linear)(x), linear(x), atol=1e-5, rtol=0)


def test_a_row_gives_the_same_result_alone_and_in_a_batch() -> None:
    torch.manual_seed(0)
    layer = PackedLinear(nn.Linear(576, 1536, bias=False))
    batch = torch.randn(32, 576)
    with torch.inference_mode():
        assert torch.equal(layer(batch)[3], layer(batch[3:4])[0])


def test_only_large_fp32_linears_are_packed() -> None:
    model, _ = tiny_model("llama", hidden_size=64, intermediate_size=128)
    input_ids = torch.arange(9)[None]
    logits_before = model(input_ids=input_ids).logits
    half = copy.deepcopy(model).to(torch.bfloat16)

    names = pack_linears(model, min_weights=64 * 128)  # the MLP (64 × 128) and head (260 × 64), not q/k/v/o

    projections = ("gate_proj", "up_proj", "down_proj")
    mlp = [f"model.layers.{i}.mlp.{p}" for i in range(model.config.num_hidden_layers) for p in projections]
    assert sorted(names) == sorted(["lm_head", *mlp])
    with torch.inference_mode():
        logits = model(input_ids=input_ids).logits
    torch.testing.assert_close(logits, logits_before, atol=1e-5, rtol=0)
    assert pack_linears(half, min_weights=0) == []  # bf16 stays as it is
