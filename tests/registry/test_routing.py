"""Routing in the registry: canaries and experiments stored per tenant, audited as adapter events, applied
by `route` fresh on every call; adapter events; what deleting an adapter or a version does to splits;
migration 0004 up and down."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from lorafleet.errors import ConfigError, ConflictError, InvalidNameError, NotFoundError, UnknownAdapterError
from lorafleet.registry import Database, Registry
from lorafleet.registry.tables import AdapterVersion, Tenant
from lorafleet.serving.router import AdapterHandle, Arm, Canary, Experiment
from tests.registry.test_requests import alembic_on, columns

USERS = [f"user-{i}" for i in range(200)]


@pytest.fixture
def versions(
    registry: Registry, tenant: Tenant, make_adapter_dir: Callable[..., Path]
) -> list[AdapterVersion]:
    """`support` v1, v2, v3 (production → v1) and `other` v1."""
    made = [
        registry.adapters.register(
            tenant.id, "support", make_adapter_dir(f"v{i}", weights=bytes([i]) * 10), base_model="tiny"
        )
        for i in (1, 2, 3)
    ]
    registry.adapters.register(tenant.id, "other", make_adapter_dir("o1"), base_model="tiny")
    registry.adapters.promote(tenant.id, "support", "production", 1, actor="alice")
    return made


def served(registry: Registry, tenant: Tenant, model: str, user: str) -> str | None:
    route = registry.routing.route(tenant.id, model, user=user)
    return route.handle.reference if route.handle is not None else None


def test_route_answers_a_handle_of_the_version(
    registry: Registry, tenant: Tenant, versions: list[AdapterVersion]
) -> None:
    route = registry.routing.route(tenant.id, "support", user="u")
    assert route.handle == AdapterHandle(versions[0].id, "support@1", versions[0].artifact, "tiny")
    assert route.reason == "explicit"
    assert registry.routing.route(tenant.id, "support:production", user="u").reason == "alias"
    assert registry.routing.route(tenant.id, "support@3", user="u").target == versions[2].id
    base = registry.routing.route(tenant.id, "tiny-base", user="u", base_names=["tiny-base"])
    assert (base.handle, base.reason) == (None, "base")
    with pytest.raises(UnknownAdapterError, match="no adapter 'nope'"):
        registry.routing.route(tenant.id, "nope", user="u")
    with pytest.raises(InvalidNameError):
        registry.routing.route(tenant.id, "a:b:c", user="u")


def test_a_canary_applies_to_the_next_route_and_is_audited(
    registry: Registry, tenant: Tenant, versions: list[AdapterVersion]
) -> None:
    canary = Canary(model="support", target_ref="support@3", percent=30)
    assert registry.routing.set_canary(tenant.id, canary, actor="alice") == canary
    assert registry.routing.canary(tenant.id, "support") == canary
    assert registry.routing.canary(tenant.id, "support:production") is None
    routed = {user: served(registry, tenant, "support", user) for user in USERS}
    assert set(routed.values()) == {"support@1", "support@3"}
    assert routed == {user: served(registry, tenant, "support", user) for user in USERS}  # sticky
    assert served(registry, tenant, "support@2", USERS[0]) == "support@2"  # pinned requests are not split

    wider = Canary(model="support", target_ref="support@3", percent=60)
    registry.routing.set_canary(tenant.id, wider, actor="bob")  # replaces it; its users stay in it
    after = {user: served(registry, tenant, "support", user) for user in USERS}
    assert {u for u, v in routed.items() if v == "support@3"} < {
        u for u, v in after.items() if v == "support@3"
    }
    assert registry.routing.settings(tenant.id).canaries == [wider]

    assert registry.routing.clear_canary(tenant.id, "support", actor="carol") == wider
    assert {served(registry, tenant, "support", user) for user in USERS} == {"support@1"}
    with pytest.raises(NotFoundError, match="no canary on 'support'"):
        registry.routing.clear_canary(tenant.id, "support", actor="carol")

    events = registry.adapters.events(tenant.id, "support")
    assert [(e.kind, e.actor, e.detail["percent"]) for e in events] == [
        ("canary_set", "alice", 30),
        ("canary_set", "bob", 60),
        ("canary_cleared", "carol", 60),
    ]
    assert events[0].detail == canary.model_dump(mode="json")
    later = registry.adapters.events(tenant.id, "support", since_id=events[0].id)
    assert [e.id for e in later] == [e.id for e in events[1:]]


def test_splits_are_checked_when_set(
    registry: Registry, tenant: Tenant, other_tenant: Tenant, versions: list[AdapterVersion]
) -> None:
    with pytest.raises(UnknownAdapterError, match=r"target 'support@9': adapter 'support' has no version"):
        registry.routing.set_canary(
            tenant.id, Canary(model="support", target_ref="support@9", percent=5), actor="a"
        )
    with pytest.raises(UnknownAdapterError, match="no adapter 'nope'"):
        registry.routing.set_canary(
            tenant.id, Canary(model="nope", target_ref="support@2", percent=5), actor="a"
        )
    with pytest.raises(InvalidNameError) as caught:
        registry.routing.set_canary(
            tenant.id, Canary(model="support", target_ref="a b", percent=5), actor="a"
        )
    assert caught.value.field == "target"
    with pytest.raises(UnknownAdapterError):  # another tenant's adapter is unknown
        registry.routing.set_canary(
            other_tenant.id, Canary(model="support", target_ref="support@2", percent=5), actor="a"
        )
    arms = [Arm(target_ref="support@1", percent=50), Arm(target_ref="support:staging", percent=50)]
    with pytest.raises(UnknownAdapterError, match=r"arms.1.target 'support:staging'.*no alias"):
        registry.routing.set_experiment(
            tenant.id, Experiment(name="e", model="support", arms=arms), actor="a"
        )
    assert registry.routing.settings(tenant.id).canaries == []
    assert registry.routing.experiments(tenant.id) == []
    assert registry.adapters.events(tenant.id, "support") == []


def test_experiments_split_their_model_and_one_model_has_one(
    registry: Registry, tenant: Tenant, versions: list[AdapterVersion]
) -> None:
    arms = [Arm(target_ref="support@2", percent=50), Arm(target_ref="support@3", percent=50)]
    trial = Experiment(name="trial", model="support", arms=arms)
    registry.routing.set_experiment(tenant.id, trial, actor="alice")
    route = registry.routing.route(tenant.id, "support", user="u1")
    assert route.reason == "ab:trial"
    assert {served(registry, tenant, "support", user) for user in USERS} == {"support@2", "support@3"}
    with pytest.raises(ConflictError, match="experiment 'trial' already splits 'support'"):
        registry.routing.set_experiment(tenant.id, trial.model_copy(update={"name": "rival"}), actor="bob")

    moved = Experiment(name="trial", model="other", arms=[Arm(target_ref="support@3", percent=100)])
    registry.routing.set_experiment(tenant.id, moved, actor="bob")  # the same name on another model
    assert registry.routing.experiments(tenant.id) == [moved]
    assert {served(registry, tenant, "support", user) for user in USERS} == {"support@1"}
    assert served(registry, tenant, "other", "u1") == "support@3"
    assert registry.routing.clear_experiment(tenant.id, "trial", actor="carol") == moved
    with pytest.raises(NotFoundError, match="no experiment 'trial'"):
        registry.routing.experiment(tenant.id, "trial")

    kinds = [(e.kind, e.actor) for e in registry.adapters.events(tenant.id, "support")]
    assert kinds == [("experiment_set", "alice"), ("experiment_cleared", "bob")]
    kinds = [(e.kind, e.actor) for e in registry.adapters.events(tenant.id, "other")]
    assert kinds == [("experiment_set", "bob"), ("experiment_cleared", "carol")]


def test_splits_are_per_tenant(
    registry: Registry,
    tenant: Tenant,
    other_tenant: Tenant,
    versions: list[AdapterVersion],
    make_adapter_dir: Callable[..., Path],
) -> None:
    for _ in range(2):
        registry.adapters.register(other_tenant.id, "support", make_adapter_dir("x"), base_model="tiny")
    registry.routing.set_canary(
        tenant.id, Canary(model="support", target_ref="support@3", percent=100), actor="a"
    )
    assert served(registry, tenant, "support", "u") == "support@3"
    assert served(registry, other_tenant, "support", "u") == "support@2"  # its own latest, no canary
    assert registry.routing.canary(other_tenant.id, "support") is None


def test_a_split_target_that_stops_resolving_names_the_split(
    registry: Registry, tenant: Tenant, versions: list[AdapterVersion]
) -> None:
    registry.adapters.promote(tenant.id, "support", "staging", 2, actor="a")
    registry.routing.set_canary(
        tenant.id, Canary(model="support", target_ref="support:staging", percent=100), actor="a"
    )
    with registry.db.session() as session:  # the alias goes away behind the registry's back
        session.execute(text("DELETE FROM aliases WHERE name = 'staging'"))
    with pytest.raises(UnknownAdapterError, match=r"the canary of 'support' targets 'support:staging'"):
        registry.routing.route(tenant.id, "support", user="u")


def test_record_event_keeps_the_order_and_checks_the_kind(
    registry: Registry, tenant: Tenant, versions: list[AdapterVersion]
) -> None:
    first = registry.adapters.record_event(tenant.id, "support", "trigger", actor="controller")
    second = registry.adapters.record_event(
        tenant.id, "support", "job_started", actor="controller", detail={"reason": "drift"}, job_id="ftjob-1"
    )
    assert second.id > first.id
    events = registry.adapters.events(tenant.id, "support")
    assert [(e.kind, e.job_id, e.detail) for e in events] == [
        ("trigger", None, {}),
        ("job_started", "ftjob-1", {"reason": "drift"}),
    ]
    assert registry.adapters.events(tenant.id, "support", since_id=second.id) == []
    assert [e.id for e in registry.adapters.events(tenant.id, "support", since_id=first.id)] == [second.id]
    with pytest.raises(ConfigError, match="event kind"):
        registry.adapters.record_event(tenant.id, "support", "not a word", actor="controller")
    with pytest.raises(UnknownAdapterError):
        registry.adapters.record_event(tenant.id, "nope", "trigger", actor="controller")


def test_deleting_an_adapter_deletes_its_events_and_the_splits_naming_it(
    registry: Registry, tenant: Tenant, versions: list[AdapterVersion]
) -> None:
    registry.routing.set_canary(
        tenant.id, Canary(model="support", target_ref="support@2", percent=5), actor="a"
    )
    registry.routing.set_canary(
        tenant.id, Canary(model="other", target_ref="support@3", percent=5), actor="a"
    )
    arms = [Arm(target_ref="other@1", percent=100)]
    registry.routing.set_experiment(tenant.id, Experiment(name="e", model="other", arms=arms), actor="a")

    registry.adapters.delete(tenant.id, "support", actor="admin")

    assert registry.routing.settings(tenant.id).canaries == []  # both named support
    assert [e.name for e in registry.routing.experiments(tenant.id)] == ["e"]
    events = registry.adapters.events(tenant.id, "other")
    assert [(e.kind, e.actor) for e in events][-1] == ("canary_cleared", "admin")
    assert events[-1].detail["deleted_adapter"] == "support"
    with pytest.raises(UnknownAdapterError):
        registry.adapters.events(tenant.id, "support")


def test_a_version_a_split_targets_cannot_be_deleted(
    registry: Registry, tenant: Tenant, versions: list[AdapterVersion]
) -> None:
    registry.routing.set_canary(
        tenant.id, Canary(model="support", target_ref="support@v3", percent=5), actor="a"
    )
    with pytest.raises(ConflictError, match=r"support@3 is the target of the canary of 'support'"):
        registry.adapters.delete_version(tenant.id, "support", 3)
    registry.adapters.delete_version(tenant.id, "support", 2)
    registry.routing.clear_canary(tenant.id, "support", actor="a")
    registry.adapters.delete_version(tenant.id, "support", 3)


# --- migration 0004 -------------------------------------------------------------------------------------


def test_migration_0004_upgrades_and_downgrades_keeping_the_rows(empty_database_url: str) -> None:
    database = Database(empty_database_url, create=False)
    try:
        with alembic_on(database) as run:
            run("upgrade", "0003")
            with database.engine.begin() as conn:
                conn.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('tn-1', 'acme', 1.0)"))
                conn.execute(
                    text(
                        "INSERT INTO completions (id, tenant_id, model, prompt_tokens, completion_tokens, "
                        "latency_ms, finish_reason, created_at) VALUES ('cmpl-1', 'tn-1', 'm', 1, 1, 1.0, "
                        "'stop', 1.0)"
                    )
                )
                conn.execute(
                    text(
                        "INSERT INTO feedback (id, tenant_id, completion_id, created_at) "
                        "VALUES ('fb-1', 'tn-1', 'cmpl-1', 1.0)"
                    )
                )

            run("upgrade", "0004")
            with database.engine.begin() as conn:
                assert {"route_splits", "adapter_events"} <= set(inspect(conn).get_table_names())
                assert {"version", "route"} <= columns(conn, "completions")
                assert conn.execute(text("SELECT version, route FROM completions")).one() == (None, None)

            run("downgrade", "0003")
            with database.engine.begin() as conn:
                assert not {"route_splits", "adapter_events"} & set(inspect(conn).get_table_names())
                assert not {"version", "route"} & columns(conn, "completions")
                assert conn.execute(text("SELECT completion_id FROM feedback")).scalar_one() == "cmpl-1"

            run("upgrade", "head")
    finally:
        database.close()
    registry = Registry(empty_database_url, artifacts_url=None)
    try:
        assert registry.requests.get("tn-1", "cmpl-1").version is None
    finally:
        registry.close()
