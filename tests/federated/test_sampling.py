"""Who takes part in a round: each client once per pass without privacy (the same clients for the same seed,
found by the names they answer the roll-call with), Poisson sampling under it."""

from __future__ import annotations

import random
from collections import Counter

from lorafleet.federated.config import FederatedConfig
from lorafleet.federated.exchange import add_names
from lorafleet.federated.server import ClientSampler

NODES = list(range(101, 111))  # ten clients


def test_without_privacy_every_client_takes_part_once_before_any_twice() -> None:
    sampler = ClientSampler(FederatedConfig(clients=10, fraction=0.3, min_clients=1), seed=0)
    rounds = [sampler.sample(NODES) for _ in range(4)]
    assert all(len(chosen) == 3 == len(set(chosen)) for chosen in rounds)
    first_pass = [node for chosen in rounds[:3] for node in chosen]
    assert len(set(first_pass)) == 9  # rounds 1-3: nine different clients
    counts = Counter(node for chosen in rounds for node in chosen)
    assert set(counts) == set(NODES) and max(counts.values()) == 2  # round 4: the tenth, then a new pass


def test_the_draw_follows_the_seed_and_skips_clients_that_left() -> None:
    def draws(seed: int) -> list[list[int]]:
        sampler = ClientSampler(FederatedConfig(clients=10, fraction=0.3, min_clients=1), seed=seed)
        return [sampler.sample(NODES) for _ in range(3)]

    assert draws(1) == draws(1) and draws(1) != draws(2)
    sampler = ClientSampler(FederatedConfig(clients=10, fraction=0.5, min_clients=1), seed=0)
    first = sampler.sample(NODES)
    remaining = [node for node in NODES if node not in first]
    gone = remaining[0]
    second = sampler.sample([node for node in NODES if node != gone])
    assert gone not in second and not set(first) & set(second)


def test_under_privacy_clients_are_sampled_independently_at_rate_q() -> None:
    federated = FederatedConfig(clients=10, fraction=0.3, privacy={"noise_multiplier": 1.0})  # type: ignore[arg-type]
    sampler = ClientSampler(federated, seed=0)
    sizes = [len(sampler.sample(NODES)) for _ in range(2000)]
    assert abs(sum(sizes) / len(sizes) - 3.0) < 0.15  # q·N in expectation
    assert min(sizes) == 0 and max(sizes) >= 7  # Poisson: any size can come up


def test_a_seeded_run_samples_the_same_clients_by_name_whatever_their_node_ids() -> None:
    def draws(node_ids: list[int], *, by_name: bool) -> list[list[str]]:
        names: dict[int, str] = {}
        add_names(node_ids, {node: f"client-{k}" for k, node in enumerate(node_ids)}, names)
        order = sorted(node_ids, key=names.__getitem__ if by_name else None)
        sampler = ClientSampler(FederatedConfig(clients=10, fraction=0.3, min_clients=1), seed=3)
        return [[names[node] for node in sampler.sample(order)] for _ in range(4)]

    generator = random.Random(0)
    first, second = (generator.sample(range(1, 2**63), 10) for _ in range(2))  # as Flower draws them
    assert draws(first, by_name=True) == draws(second, by_name=True)
    assert draws(first, by_name=False) != draws(second, by_name=False)  # in node id order they differ


def test_each_client_gets_one_name_else_its_node_id() -> None:
    names: dict[int, str] = {}
    add_names([11, 12, 13], {11: "site-b", 12: "site-a"}, names)  # 13 did not answer
    assert names == {11: "site-b", 12: "site-a", 13: "13"}
    add_names([14, 15], {14: "site-a", 15: ""}, names)  # joined later: a name already taken, no name
    assert names[14] == "14" and names[15] == "15"
