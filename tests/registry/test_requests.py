"""The request log: completions per tenant (text kept or not), feedback on them, corrections, pruning,
and migration 0003 up and down."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, inspect, text, update

from lorafleet.errors import ConfigError, NotFoundError
from lorafleet.registry import Database, Registry, TenantSettings
from lorafleet.registry.database import MIGRATIONS
from lorafleet.registry.tables import Feedback, LoggedCompletion, Tenant

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


def logged(tenant_id: str, completion_id: str, **fields: Any) -> LoggedCompletion:
    values: dict[str, Any] = {
        "key_id": "key-1",
        "model": "bot",
        "adapter_version_id": None,
        "messages": MESSAGES,
        "text": "hello",
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "latency_ms": 12.5,
        "finish_reason": "stop",
        **fields,
    }
    return LoggedCompletion(id=completion_id, tenant_id=tenant_id, **values)


def test_a_completion_is_logged_with_its_text(registry: Registry, tenant: Tenant) -> None:
    registry.requests.add([logged(tenant.id, "chatcmpl-1", adapter_version_id="av-1")])

    row = registry.requests.get(tenant.id, "chatcmpl-1")
    assert (row.model, row.adapter_version_id, row.key_id) == ("bot", "av-1", "key-1")
    assert (row.messages, row.prompt, row.text) == (MESSAGES, None, "hello")
    assert (row.prompt_tokens, row.completion_tokens, row.latency_ms, row.finish_reason) == (
        7,
        3,
        12.5,
        "stop",
    )
    assert row.created_at == pytest.approx(time.time(), abs=60)


def test_a_tenant_that_turned_text_off_gets_no_text_logged(
    registry: Registry, tenant: Tenant, other_tenant: Tenant
) -> None:
    assert tenant.log_text  # on by default
    registry.tenants.set_settings(tenant.id, TenantSettings(log_text=False))
    batch = [
        logged(tenant.id, "chatcmpl-1"),
        logged(tenant.id, "cmpl-2", messages=None, prompt="q"),
        logged(other_tenant.id, "chatcmpl-3"),
    ]

    registry.requests.add(batch)

    for completion_id in ("chatcmpl-1", "cmpl-2"):
        row = registry.requests.get(tenant.id, completion_id)
        assert (row.prompt, row.messages, row.text) == (None, None, None)
        assert (row.prompt_tokens, row.completion_tokens) == (7, 3)
    assert registry.requests.get(other_tenant.id, "chatcmpl-3").text == "hello"
    assert not registry.tenants.get(tenant.id).log_text
    assert registry.tenants.create("initech", settings=TenantSettings(log_text=False)).log_text is False


def test_nul_characters_a_model_generated_are_stored_as_replacement_characters(
    registry: Registry, tenant: Tenant
) -> None:
    messages = [{"role": "user", "content": "a\x00b"}]
    registry.requests.add(
        [
            logged(tenant.id, "chatcmpl-1", messages=messages, text="\x00ok\x00"),
            logged(tenant.id, "cmpl-2", messages=None, prompt="p\x00"),
        ]
    )

    chat, text = registry.requests.get(tenant.id, "chatcmpl-1"), registry.requests.get(tenant.id, "cmpl-2")

    assert (chat.messages, chat.text) == ([{"role": "user", "content": "a\ufffdb"}], "\ufffdok\ufffd")
    assert text.prompt == "p\ufffd"
    with pytest.raises(ConfigError, match="NUL") as refused:
        registry.requests.add_feedback(tenant.id, "chatcmpl-1", correction="fix\x00")
    assert refused.value.field == "correction"
    with pytest.raises(NotFoundError, match="no completion"):
        registry.requests.add_feedback(tenant.id, "chatcmpl-1\x00", score=1.0)
    with pytest.raises(NotFoundError, match="no feedback"):
        registry.requests.feedback(tenant.id, after="fb-\x00")
    assert registry.requests.feedback(tenant.id, completion_id="\x00") == ([], False)
    with pytest.raises(NotFoundError, match="no adapter"):
        registry.requests.corrections(tenant.id, adapter="\x00")


def test_another_tenants_completion_is_not_found_like_an_unknown_one(
    registry: Registry, tenant: Tenant, other_tenant: Tenant
) -> None:
    registry.requests.add([logged(other_tenant.id, "chatcmpl-theirs")])

    with pytest.raises(NotFoundError) as theirs:
        registry.requests.add_feedback(tenant.id, "chatcmpl-theirs", score=1.0)
    with pytest.raises(NotFoundError) as unknown:
        registry.requests.add_feedback(tenant.id, "chatcmpl-nope", score=1.0)

    assert str(theirs.value) == "no completion 'chatcmpl-theirs'"
    assert str(unknown.value) == "no completion 'chatcmpl-nope'"
    assert registry.requests.feedback(other_tenant.id) == ([], False)


@pytest.mark.parametrize(
    ("fields", "field"),
    [({}, None), ({"score": 1.5}, "score"), ({"score": -0.1}, "score"), ({"score": math.nan}, "score")],
)
def test_bad_feedback_is_refused_naming_the_field(
    registry: Registry, tenant: Tenant, fields: dict[str, Any], field: str | None
) -> None:
    registry.requests.add([logged(tenant.id, "chatcmpl-1")])

    with pytest.raises(ConfigError, match="score") as refused:
        registry.requests.add_feedback(tenant.id, "chatcmpl-1", **fields)

    assert refused.value.field == field
    assert registry.requests.feedback(tenant.id) == ([], False)


def test_feedback_is_listed_oldest_first_a_page_at_a_time(registry: Registry, tenant: Tenant) -> None:
    registry.requests.add([logged(tenant.id, "chatcmpl-1"), logged(tenant.id, "chatcmpl-2")])
    sent = [
        registry.requests.add_feedback(tenant.id, "chatcmpl-1", score=0.2, key_id="key-1"),
        registry.requests.add_feedback(tenant.id, "chatcmpl-2", label="rude"),
        registry.requests.add_feedback(tenant.id, "chatcmpl-1", correction="Hello!"),
    ]

    first, more = registry.requests.feedback(tenant.id, limit=2)
    rest, no_more = registry.requests.feedback(tenant.id, after=first[-1].id, limit=2)
    on_one, _ = registry.requests.feedback(tenant.id, completion_id="chatcmpl-1")

    assert [f.id for f in first + rest] == [f.id for f in sent] and more and not no_more
    assert [(f.score, f.label, f.correction) for f in on_one] == [(0.2, None, None), (None, None, "Hello!")]
    assert on_one[0].key_id == "key-1"
    with pytest.raises(NotFoundError, match="no feedback 'fb-nope'"):
        registry.requests.feedback(tenant.id, after="fb-nope")


def test_corrections_are_the_latest_per_completion_whose_text_was_logged(
    registry: Registry, tenant: Tenant, make_adapter_dir: Callable[..., Path]
) -> None:
    version = registry.adapters.register(tenant.id, "bot", make_adapter_dir(), base_model="tiny")
    registry.requests.add(
        [
            logged(tenant.id, "chatcmpl-1", adapter_version_id=version.id),
            logged(tenant.id, "cmpl-2", messages=None, prompt="2 + 2 =", text="5"),
            logged(tenant.id, "chatcmpl-3"),  # scored only
        ]
    )
    registry.requests.add_feedback(tenant.id, "chatcmpl-1", correction="first try")
    registry.requests.add_feedback(tenant.id, "cmpl-2", correction=" 4")
    registry.requests.add_feedback(tenant.id, "chatcmpl-3", score=0.9)
    time.sleep(0.01)
    registry.requests.add_feedback(tenant.id, "chatcmpl-1", correction="Hi.", label="better")
    registry.tenants.set_settings(tenant.id, TenantSettings(log_text=False))
    registry.requests.add([logged(tenant.id, "chatcmpl-4")])  # no text: nothing to train on
    registry.requests.add_feedback(tenant.id, "chatcmpl-4", correction="never exported")

    pairs = registry.requests.corrections(tenant.id)
    served_by_bot = registry.requests.corrections(tenant.id, adapter="bot")

    assert [(c.id, correction) for c, correction in pairs] == [("chatcmpl-1", "Hi."), ("cmpl-2", " 4")]
    assert [(c.id, correction) for c, correction in served_by_bot] == [("chatcmpl-1", "Hi.")]
    with pytest.raises(NotFoundError, match="no adapter 'nope'"):
        registry.requests.corrections(tenant.id, adapter="nope")


def test_prune_deletes_older_completions_and_their_feedback(
    registry: Registry, tenant: Tenant, other_tenant: Tenant
) -> None:
    registry.requests.add([logged(tenant.id, "chatcmpl-old"), logged(other_tenant.id, "chatcmpl-new")])
    registry.requests.add_feedback(tenant.id, "chatcmpl-old", score=0.5)
    registry.requests.add_feedback(other_tenant.id, "chatcmpl-new", score=0.5)
    with registry.db.session() as session:
        old = time.time() - 40 * 86_400
        session.execute(
            update(LoggedCompletion).where(LoggedCompletion.id == "chatcmpl-old").values(created_at=old)
        )

    assert registry.requests.prune(time.time() - 30 * 86_400) == 1

    with pytest.raises(NotFoundError):
        registry.requests.get(tenant.id, "chatcmpl-old")
    assert registry.requests.feedback(tenant.id) == ([], False)
    assert registry.requests.get(other_tenant.id, "chatcmpl-new").id == "chatcmpl-new"
    assert len(registry.requests.feedback(other_tenant.id)[0]) == 1
    assert registry.requests.prune(time.time() - 30 * 86_400) == 0


# --- migration 0003 -------------------------------------------------------------------------------------


@contextmanager
def alembic_on(database: Database) -> Iterator[Callable[[str, str], None]]:
    """`run("upgrade" | "downgrade", revision)` on `database`, as `database.migrate` runs Alembic."""

    def run(direction: str, revision: str) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with database.engine.begin() as connection:
            config.attributes["connection"] = connection
            getattr(command, direction)(config, revision)

    yield run


def columns(connection: Connection, table: str) -> set[str]:
    return {column["name"] for column in inspect(connection).get_columns(table)}


def test_migration_0003_upgrades_and_downgrades_keeping_the_rows(empty_database_url: str) -> None:
    database = Database(empty_database_url, create=False)
    try:
        with alembic_on(database) as run:
            run("upgrade", "0002")
            with database.engine.begin() as conn:
                conn.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('tn-1', 'acme', 1.0)"))
                conn.execute(
                    text(
                        "INSERT INTO api_keys (id, tenant_id, name, prefix, key_hash, created_at) "
                        "VALUES ('key-1', 'tn-1', 'k', 'lf-', 'hash', 1.0)"
                    )
                )

            run("upgrade", "0003")
            with database.engine.begin() as conn:
                assert {"completions", "feedback"} <= set(inspect(conn).get_table_names())
                assert conn.execute(text("SELECT log_text FROM tenants")).scalar_one() in (True, 1)
                conn.execute(
                    text(
                        "INSERT INTO completions (id, tenant_id, model, prompt_tokens, completion_tokens, "
                        "latency_ms, finish_reason, created_at) VALUES ('cmpl-1', 'tn-1', 'm', 1, 1, 1.0, "
                        "'stop', 1.0)"
                    )
                )

            run("downgrade", "0002")
            with database.engine.begin() as conn:
                assert not {"completions", "feedback"} & set(inspect(conn).get_table_names())
                assert "log_text" not in columns(conn, "tenants")
                assert conn.execute(text("SELECT name FROM tenants")).scalars().all() == ["acme"]
                assert conn.execute(text("SELECT tenant_id FROM api_keys")).scalar_one() == "tn-1"

            run("upgrade", "head")
            with database.engine.begin() as conn:
                assert "log_text" in columns(conn, "tenants")
    finally:
        database.close()
    registry = Registry(empty_database_url, artifacts_url=None)
    try:
        assert registry.tenants.get("acme").log_text is True
        registry.requests.add([logged("tn-1", "chatcmpl-after")])
        registry.requests.add_feedback("tn-1", "chatcmpl-after", score=1.0)
        assert isinstance(registry.requests.feedback("tn-1")[0][0], Feedback)
    finally:
        registry.close()
