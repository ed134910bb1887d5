from __future__ import annotations

import torch

from lorafleet.adapters import attach
from lorafleet.adapters.settings import LoraSettings
from lorafleet.models import tiny_model
from lorafleet.training.attention import register


def _step(implementation: str) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Logits (of the real tokens), LoRA gradients and the bytes autograd saved for backward, of one
    padded batch."""
    torch.manual_seed(0)
    model, _ = tiny_model("llama", seed=0)  # 4 query heads sharing 2 key/value heads
    model.set_attn_implementation(implementation)
    lora = LoraSettings(r=4, target_modules=["q_proj", "k_proj", "v_proj"], init="random")
    peft_model = attach(model, lora)
    ids = torch.randint(3, model.config.vocab_size, (3, 24))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding in one row, right padding in another
    mask[2, -7:] = 0
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        if not isinstance(tensor, torch.nn.Parameter):
            saved += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits = peft_model(input_ids=ids, attention_mask=mask).logits
    (logits * mask[..., None]).square().mean().backward()
    grads = {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.grad is not None}
    return logits.detach()[mask.bool()], grads, saved  # padded positions' outputs differ by kernel


def test_recomputed_eager_equals_eager_and_keeps_less_for_backward() -> None:
    eager_logits, eager_grads, eager_saved = _step("eager")
    logits, grads, saved = _step(register())

    torch.testing.assert_close(logits, eager_logits, atol=1e-6, rtol=0)
    assert grads.keys() == eager_grads.keys() and len(grads) == 2 * 3 * 2  # A and B, 3 targets, 2 layers
    for name, grad in grads.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(grad, eager_grads[name], atol=1e-6, rtol=0)
    # eager keeps each layer's probabilities (fp32, then in the model's dtype: here fp32 again)
    probabilities = 2 * 2 * 3 * 4 * 24 * 24 * 4  # layers × copies × B × heads × T × T × bytes
    assert eager_saved - saved >= probabilities


def test_recomputed_eager_matches_sdpa() -> None:
    sdpa_logits, sdpa_grads, _ = _step("sdpa")
    logits, grads, _ = _step(register())

    torch.testing.assert_close(logits, sdpa_logits, atol=1e-5, rtol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, sdpa_grads[name], atol=1e-5, rtol=1e-4)
