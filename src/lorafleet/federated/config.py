"""`FederatedConfig`: how a federated run goes (the recipe's `federated:` section).

A run is `rounds` rounds. Each round the server samples clients, sends them the global LoRA tensors, each
trains `local_steps` optimizer steps on its own rows and answers with its LoRA tensors; the server checks
every answer (finite, update norm ≤ `max_update_norm`), aggregates the accepted ones and applies the result.

- `fedavg`:  the new global is the mean of the clients' tensors weighted by their row counts.
- `fedprox`: the same mean, but each client adds μ/2 ‖w − w_global‖² to its loss (`proximal_mu`), which
             keeps clients with very different rows (non-IID) from drifting apart.

With `secure_aggregation`, the round goes through Flower's SecAgg+ protocol: each client sends its update
masked so that only the sum over the round is revealed to the server (`federated.secure`). The server
can then check only the aggregate, not each client; under privacy each client clips its own update.

With `privacy`, client-level differential privacy (DP-FedAvg): clients are sampled independently with
probability `fraction` (Poisson sampling, what the accountant assumes), each update Δₖ = wₖ − w_global is
clipped to norm C, and the new global is w_global + (Σₖ clip(Δₖ) + N(0, σ²C²·I)) / (fraction × clients).
σ comes from the target (ε, δ) through Opacus' RDP accountant, or is given; the run stops before a round
that would spend more than ε (`federated.privacy`).

This schema imports no torch or flwr, so a recipe is validated cheaply.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lorafleet.errors import validated

Strategy = Literal["fedavg", "fedprox"]


class PrivacyConfig(BaseModel):
    """Client-level differential privacy: clipping, Gaussian noise and the ε budget."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epsilon: float | None = Field(
        None,
        gt=0.0,
        le=1000.0,
        description="The ε budget of the whole run; σ is computed from it unless noise_multiplier is given, "
        "and the run stops before a round that would exceed it.",
    )
    delta: float = Field(1e-5, gt=0.0, lt=1.0, description="δ of (ε, δ)-DP; below 1/clients is the rule.")
    clip_norm: float = Field(
        0.05,
        gt=0.0,
        le=1e6,
        description="C: each client's update (L2 norm over all LoRA tensors) is clipped to it.",
    )
    noise_multiplier: float | None = Field(
        None,
        gt=0.0,
        le=1e4,
        description="σ: the noise std is σ·C; default: the smallest σ that keeps the run within epsilon.",
    )

    @model_validator(mode="after")
    def _check_budget(self) -> PrivacyConfig:
        if self.epsilon is None and self.noise_multiplier is None:
            raise ValueError("privacy needs epsilon (a budget) or noise_multiplier (σ), or both")
        return self


class SecureAggregationConfig(BaseModel):
    """Secure aggregation through Flower's SecAgg+: the server learns only the sum of the round's updates.

    Each sampled client sends its update Δₖ = wₖ − w_global quantized to integers and masked with random
    vectors that cancel in the sum; a client that drops out mid-round has its masks rebuilt from the secret
    shares its neighbours hold (Shamir). Values of Δ outside ±clipping_range are refused by the client (its
    round fails, the protocol carries on without it), so nothing is silently clipped."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shares: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Share of the round's sampled clients among which each client's secrets are split "
        "(its SecAgg+ neighbours); 1: all of them.",
    )
    threshold: float = Field(
        0.6,
        gt=0.0,
        le=1.0,
        description="Share of a client's secret shares needed to rebuild it: a dropped client's masks are "
        "removed while this many of its neighbours answer; fewer colluding than this learn nothing.",
    )
    clipping_range: float = Field(
        1.0,
        gt=0.0,
        le=1e4,
        description="Every value of a client's update must lie within ±clipping_range (it is quantized "
        "over that range).",
    )
    quantization_range: int = Field(
        2**22,
        ge=2**8,
        le=2**24,
        description="Integer levels over [-clipping_range, clipping_range]: the quantization step is "
        "2·clipping_range / quantization_range.",
    )
    max_weight: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="A client's update is weighted by its row count, capped at this (the protocol masks "
        "weight/max_weight); under privacy every client weighs 1.",
    )


class FederatedConfig(BaseModel):
    """The rounds, sampling, local training, aggregation and privacy of a federated run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    clients: int = Field(
        10,
        ge=1,
        le=100_000,
        description="Clients taking part: simulated ones (`lorafleet federate`, each reading data.path with "
        "{client} replaced by its number), or the SuperNodes the server waits for (`lorafleet fl server`).",
    )
    rounds: int = Field(10, ge=1, le=100_000, description="Federated rounds.")
    fraction: float = Field(
        0.3, gt=0.0, le=1.0, description="Share of clients sampled per round (the sampling rate q under DP)."
    )
    min_clients: int = Field(
        2,
        ge=1,
        le=100_000,
        description="A round's update is applied only when at least this many answers are accepted "
        "(without privacy: under privacy the noised sum is released whoever answered).",
    )
    local_steps: int = Field(4, ge=1, le=100_000, description="Optimizer steps each sampled client trains.")
    strategy: Strategy = Field(
        "fedavg", description="fedavg, or fedprox (a proximal term in each client's loss)."
    )
    proximal_mu: float = Field(
        0.01, ge=0.0, le=1e6, description="fedprox: μ of the client-side term μ/2 ‖w − w_global‖²."
    )
    max_update_norm: float = Field(
        100.0,
        gt=0.0,
        le=1e9,
        description="A client update (or an aggregate) whose L2 norm exceeds this, or that holds NaN or "
        "inf, is refused and logged, never averaged in.",
    )
    round_timeout: float = Field(
        3600.0,
        gt=0.0,
        le=86400.0,
        description="Seconds to wait for answers; later ones are dropped (stragglers).",
    )
    validation_rows: int = Field(
        64,
        ge=0,
        le=100_000,
        description="Rows of data.validation_path (else eval.test_path) the server scores each round "
        "(0: none).",
    )
    privacy: PrivacyConfig | None = Field(None, description="Client-level DP; none: no noise, no ε.")
    secure_aggregation: SecureAggregationConfig | None = Field(
        None,
        description="SecAgg+ (Flower's): the server sees only the sum of a round's updates, never one "
        "client's; none: clients send their LoRA tensors in the clear.",
    )

    @model_validator(mode="after")
    def _check_fields(self) -> FederatedConfig:
        if "proximal_mu" in self.model_fields_set and self.strategy != "fedprox":
            raise ValueError(
                f"proximal_mu only applies to strategy 'fedprox', but strategy is {self.strategy!r}"
            )
        if self.min_clients > self.clients:
            raise ValueError(f"min_clients ({self.min_clients}) exceeds clients ({self.clients})")
        if self.secure_aggregation is not None and self.privacy is None and self.min_clients < 2:
            raise ValueError(
                "secure_aggregation needs min_clients of at least 2: a sum over one client is that "
                "client's update"
            )
        return self

    def expected_clients(self) -> float:
        """Clients sampled per round on average: fraction × clients (the DP mean's divisor)."""
        return self.fraction * self.clients

    @classmethod
    def parse(cls, **values: object) -> FederatedConfig:
        """Build from untrusted values, raising `ConfigError` that names the bad field (`federated.…`)."""
        return validated(cls, "federated", **values)
