"""FedProx's proximal term: μ/2 Σ‖w − w_global‖², and its gradient μ(w − w_global)."""

from __future__ import annotations

import torch

from lorafleet.federated.proximal import proximal_penalty, proximal_term


def test_the_proximal_term_equals_its_formula_and_gradient() -> None:
    generator = torch.Generator().manual_seed(0)
    anchors = [torch.randn(4, 8, generator=generator), torch.randn(8, 4, generator=generator)]
    params = [torch.nn.Parameter(a + torch.randn(a.shape, generator=generator)) for a in anchors]
    mu = 0.3
    term = proximal_term(params, anchors, mu)
    expected = mu / 2 * sum(((p.detach() - a) ** 2).sum() for p, a in zip(params, anchors, strict=True))
    torch.testing.assert_close(term.detach(), torch.as_tensor(expected))
    term.backward()
    for p, a in zip(params, anchors, strict=True):
        torch.testing.assert_close(p.grad, mu * (p.detach() - a))


def test_the_penalty_is_anchored_where_the_round_started() -> None:
    param = torch.nn.Parameter(torch.ones(3))
    penalty = proximal_penalty([param], mu=2.0)
    assert penalty().item() == 0.0
    with torch.no_grad():
        param.add_(1.0)  # one local step later
    assert penalty().item() == 3.0  # 2/2 · (1² · 3)
