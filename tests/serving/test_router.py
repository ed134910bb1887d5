"""Router: references, aliases and versions, task routing, sticky A/B splits and canaries."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lorafleet.errors import ConfigError, InvalidNameError, UnknownAdapterError
from lorafleet.serving.router import (
    AdapterHandle,
    AdapterRef,
    DirectoryCatalog,
    Route,
    Router,
    RouterSettings,
    StaticCatalog,
    assignment_bucket,
    parse_reference,
)

USERS = [f"user-{i}" for i in range(10_000)]


@pytest.fixture
def catalog() -> StaticCatalog:
    return StaticCatalog(
        {
            "support": {
                "versions": {"1": "/a/support/1", "2": "/a/support/2", "3": "/a/support/3"},
                "aliases": {"production": "2", "staging": "3"},
                "tasks": ["support", "chat"],
            },
            "extract": {"versions": {"v1": "/a/extract/v1", "v2": "/a/extract/v2"}, "tasks": ["extraction"]},
            "alpha-extract": {"versions": {"1": "/a/alpha"}, "tasks": ["extraction"]},
            "summarize": "/a/summarize",
        }
    )


def split(router: Router, model: str) -> dict[str | None, float]:
    """Share of USERS (in percent) routed to each target."""
    counts: dict[str | None, int] = {}
    for user in USERS:
        target = router.route(model, user=user).target
        counts[target] = counts.get(target, 0) + 1
    return {target: 100 * n / len(USERS) for target, n in counts.items()}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("support", AdapterRef("support")),
        ("support@3", AdapterRef("support", version="3")),
        ("support@v3", AdapterRef("support", version="v3")),
        ("support:production", AdapterRef("support", alias="production")),
        ("my_adapter-2.1", AdapterRef("my_adapter-2.1")),
    ],
)
def test_parse_reference(text: str, expected: AdapterRef) -> None:
    assert parse_reference(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "adapter reference '': name is empty"),
        ("a@", "adapter reference 'a@': version is empty"),
        ("a:", "adapter reference 'a:': alias is empty"),
        ("@3", "adapter reference '@3': name is empty"),
        ("a:b:c", "'a:b:c' has more than one"),
        ("a@1:prod", "'a@1:prod' has more than one"),
        ("../etc", "adapter reference '../etc': name '../etc' contains a path separator"),
        ("a b", "may hold only letters"),
        ("a@v 1", "adapter reference 'a@v 1': version 'v 1' may hold only"),
    ],
)
def test_bad_references_are_named(text: str, why: str) -> None:
    with pytest.raises(InvalidNameError, match=re.escape(why)):
        parse_reference(text)


@pytest.mark.parametrize(
    ("model", "target", "reason"),
    [
        ("support", "/a/support/2", "explicit"),  # the production alias
        ("support@3", "/a/support/3", "explicit"),
        ("support:staging", "/a/support/3", "alias"),
        ("support:production", "/a/support/2", "alias"),
        ("extract", "/a/extract/v2", "explicit"),  # no production alias: the latest
        ("extract@1", "/a/extract/v1", "explicit"),  # 1 and v1 are the same version
        ("summarize", "/a/summarize", "explicit"),
    ],
)
def test_references_resolve_through_the_catalog(
    catalog: StaticCatalog, model: str, target: str, reason: str
) -> None:
    route = Router(catalog).route(model)
    assert (route.target, route.reason) == (target, reason)
    assert route.adapter == parse_reference(model)
    assert route.handle is not None and route.handle.artifact == target


def test_the_handle_names_the_version_as_a_request_would(catalog: StaticCatalog) -> None:
    router = Router(catalog)
    staging = AdapterHandle("/a/support/3", "support@3", "/a/support/3")
    assert router.route("support:staging").handle == staging
    assert router.route("extract@1").handle == AdapterHandle("/a/extract/v1", "extract@v1", "/a/extract/v1")


def test_base_names_and_no_model_mean_no_adapter(catalog: StaticCatalog) -> None:
    router = Router(catalog, {"base_names": ["base", "HuggingFaceTB/SmolLM2-135M-Instruct"]})
    for model in (None, "base", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        route = router.route(model)
        assert route == Route(adapter=None, handle=None, reason="base")
        assert route.target is None
        assert route.is_base


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("nope", "unknown adapter 'nope'; known adapters: alpha-extract, extract, summarize, support"),
        ("support@9", "adapter 'support' has no version '9'; its versions: 1, 2, 3"),
        ("support:canary", "adapter 'support' has no alias 'canary'; its aliases: production, staging"),
    ],
)
def test_unknown_adapters_are_named(catalog: StaticCatalog, model: str, message: str) -> None:
    with pytest.raises(UnknownAdapterError) as caught:
        Router(catalog).route(model)
    assert str(caught.value) == message


def test_task_picks_the_first_adapter_listing_it(catalog: StaticCatalog) -> None:
    router = Router(catalog)
    alpha = AdapterHandle("/a/alpha", "alpha-extract@1", "/a/alpha")
    assert router.route(None, task="extraction") == Route(AdapterRef("alpha-extract"), alpha, "task")
    assert router.route("base", task="chat").target == "/a/support/2"
    assert router.route("extract@1", task="chat").reason == "explicit"  # a named adapter wins
    with pytest.raises(UnknownAdapterError, match="no adapter lists task 'poetry'"):
        router.route(None, task="poetry")


def test_ab_split_matches_percentages_and_is_sticky(catalog: StaticCatalog) -> None:
    settings = {
        "experiments": [
            {
                "name": "support-v3",
                "model": "support",
                "arms": [
                    {"target_ref": "support:production", "percent": 70},
                    {"target_ref": "support@3", "percent": 20},
                    {"target_ref": "base", "percent": 10},
                ],
            }
        ]
    }
    router = Router(catalog, settings)
    shares = split(router, "support")
    assert shares.keys() == {"/a/support/2", "/a/support/3", None}
    assert shares["/a/support/2"] == pytest.approx(70, abs=2)
    assert shares["/a/support/3"] == pytest.approx(20, abs=2)
    assert shares[None] == pytest.approx(10, abs=2)

    again = Router(catalog, settings)  # sticky across restarts: the hash, not process state
    for user in USERS[:200]:
        first = router.route("support", user=user)
        assert router.route("support", user=user) == first == again.route("support", user=user)
        assert first.reason == "ab:support-v3"
    assert router.route("support@1", user="user-1").reason == "explicit"  # pinned requests are not split


def test_task_routed_requests_join_the_experiment_of_their_adapter(catalog: StaticCatalog) -> None:
    arms = [{"target_ref": "extract@1", "percent": 100}]
    router = Router(catalog, {"experiments": [{"name": "x", "model": "alpha-extract", "arms": arms}]})
    handle = AdapterHandle("/a/extract/v1", "extract@v1", "/a/extract/v1")
    assert router.route(None, task="extraction", user="u") == Route(
        AdapterRef("extract", version="1"), handle, "ab:x"
    )
    assert router.route("extract", task="extraction").reason == "explicit"


def test_canary_takes_its_share_and_growing_it_keeps_its_users(catalog: StaticCatalog) -> None:
    def canary_users(percent: float, users: list[str] = USERS) -> set[str]:
        router = Router(
            catalog, {"canaries": [{"model": "support", "target_ref": "support@3", "percent": percent}]}
        )
        routes = {user: router.route("support", user=user) for user in users}
        others = {(r.target, r.reason) for r in routes.values() if r.reason != "canary"}
        assert others <= {("/a/support/2", "explicit")}  # the rest resolve as usual
        return {user for user, route in routes.items() if route.reason == "canary"}

    at_10, at_20 = canary_users(10), canary_users(20)
    assert len(at_10) / len(USERS) * 100 == pytest.approx(10, abs=2)
    assert len(at_20) / len(USERS) * 100 == pytest.approx(20, abs=2)
    assert at_10 <= at_20
    assert canary_users(0, USERS[:500]) == set()
    assert canary_users(100, USERS[:500]) == set(USERS[:500])


def test_requests_without_a_user_are_split_at_random(catalog: StaticCatalog) -> None:
    settings = {
        "experiments": [
            {
                "name": "e",
                "model": "support",
                "arms": [
                    {"target_ref": "support@1", "percent": 50},
                    {"target_ref": "support@3", "percent": 50},
                ],
            }
        ]
    }
    targets = [Router(catalog, settings, rng=random.Random(0)).route("support").target for _ in range(2)]
    assert targets[0] == targets[1]  # a seeded rng is reproducible
    router = Router(catalog, settings, rng=random.Random(1))
    share = sum(router.route("support").target == "/a/support/1" for _ in range(4000)) / 40
    assert share == pytest.approx(50, abs=4)


def test_assignment_bucket_is_stable_and_in_range() -> None:
    buckets = [assignment_bucket("exp", user) for user in USERS[:1000]]
    assert all(0 <= b < 100 for b in buckets)
    assert assignment_bucket("exp", "user-1") == assignment_bucket("exp", "user-1")
    assert assignment_bucket("exp", "user-1") != assignment_bucket("other", "user-1")


def experiment(**changes: Any) -> dict[str, Any]:
    base = {
        "name": "e",
        "model": "support",
        "arms": [{"target_ref": "support@1", "percent": 50}, {"target_ref": "support@2", "percent": 50}],
    }
    return {**base, **changes}


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        (
            {"experiments": [experiment(arms=[{"target_ref": "support@1", "percent": 90}])]},
            "router.experiments.0.arms: Value error, arm percents sum to 90; they must sum to 100",
        ),
        (
            {"experiments": [experiment(arms=[{"target_ref": "a", "percent": 120}])]},
            "router.experiments.0.arms.0.percent",
        ),
        (
            {
                "experiments": [
                    experiment(arms=[{"target_ref": "a", "percent": 50}, {"target_ref": "a:", "percent": 50}])
                ]
            },
            "experiments.0.arms.1.target_ref: adapter reference 'a:': alias is empty",
        ),
        ({"experiments": [experiment(name="../x")]}, "router.experiments.0.name"),
        ({"experiments": [experiment(model="a:b:c")]}, "experiments.0.model: adapter reference 'a:b:c'"),
        (
            {"experiments": [experiment(), experiment(name="f")]},
            "experiments.*.model: 'support' appears more",
        ),
        ({"experiments": [experiment(), experiment(model="x")]}, "experiments.*.name: 'e' appears more"),
        (
            {"canaries": [{"model": "support", "target_ref": "support@3", "percent": -1}]},
            "canaries.0.percent",
        ),
        ({"canaries": [{"model": "support", "target": "support@3", "percent": 5}]}, "canaries.0.target"),
        ({"experiment": []}, "router.experiment: Extra inputs are not permitted"),
    ],
)
def test_bad_settings_name_the_field(settings: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RouterSettings.parse(settings)
    assert named in str(caught.value)


def test_check_targets_names_the_experiment(catalog: StaticCatalog) -> None:
    router = Router(
        catalog, {"experiments": [experiment(), {**experiment(), "name": "g", "model": "extract"}]}
    )
    router.check_targets()  # all known
    bad = Router(catalog, {"experiments": [experiment(arms=[{"target_ref": "support@7", "percent": 100}])]})
    with pytest.raises(
        UnknownAdapterError, match="experiment 'e' targets 'support@7': adapter 'support' has no"
    ):
        bad.check_targets()


def test_static_catalog_rejects_inconsistent_entries() -> None:
    with pytest.raises(ConfigError, match=r"catalog.support: .*alias 'production' points at version '9'"):
        StaticCatalog({"support": {"versions": {"1": "/a"}, "aliases": {"production": "9"}}})
    with pytest.raises(ConfigError, match=r"catalog\.support\.versions"):
        StaticCatalog({"support": {"versions": {}}})
    with pytest.raises(InvalidNameError, match="catalog adapter name"):
        StaticCatalog({"a/b": "/a"})


def save_adapter_dir(root: Path, name: str, training: dict[str, Any] | None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    if training is not None:
        (folder / "lorafleet.json").write_text(json.dumps({"training": training}))
    return folder


def test_directory_catalog_reads_adapters_and_tasks(lorafleet_home: Path) -> None:
    root = lorafleet_home / "adapters"
    support = save_adapter_dir(root, "support", {"task": "chat"})
    save_adapter_dir(root, "extract", {"task": ["extraction", "chat"]})
    save_adapter_dir(root, "plain", None)
    (root / "not-an-adapter").mkdir()
    catalog = DirectoryCatalog()
    assert catalog.root == root
    assert catalog.resolve("support") == AdapterHandle(str(support), "support", str(support))
    assert catalog.adapters_for_task("chat") == ["extract", "support"]
    assert catalog.adapters_for_task("extraction") == ["extract"]
    assert Router(catalog).route(None, task="chat").target == str(root / "extract")
    with pytest.raises(UnknownAdapterError, match=r"unknown adapter 'nope'.*extract, plain, support"):
        catalog.resolve("nope")
    with pytest.raises(UnknownAdapterError, match=r"has no versions or aliases, so support@2 is unknown"):
        catalog.resolve("support", version="2")


def test_router_and_queue_do_not_import_torch() -> None:
    src = Path(__file__).parents[2] / "src" / "lorafleet" / "serving"
    code = (
        "import importlib.util, sys\n"
        f"for path in [{str(src / 'router.py')!r}, {str(src / 'queue.py')!r}]:\n"
        "    spec = importlib.util.spec_from_file_location('checked', path)\n"
        "    sys.modules['checked'] = module = importlib.util.module_from_spec(spec)\n"
        "    spec.loader.exec_module(module)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
