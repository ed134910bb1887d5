"""OpenAI parity and error answers through a real server: `models.retrieve`, invalid JSON, hyperparameters and
recipe fields named as the client sent them, targets checked at creation, and every failure as OpenAI-shaped
JSON with the right status (an engine failure of a non-streamed request, an unexpected fault)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.helpers import save_random_adapter
from tests.support.platform import QUICK_RECIPE, Platform, Tenant, upload

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]


def error_of(answer: httpx.Response, status: int) -> dict[str, Any]:
    """The `error` object of an OpenAI-shaped JSON answer with `status`."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json"), answer.headers
    body = answer.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    error: dict[str, Any] = body["error"]
    return error


def register(platform: Platform, tenant: Tenant, tiny_dir: Path, tmp_path: Path) -> None:
    """Adapter `support` v1 of `tenant`, with `production` → v1."""
    from lorafleet.models import load_base

    base, _ = load_base(str(tiny_dir), device="cpu")
    adapter = save_random_adapter(base, tmp_path / "support", seed=3)
    platform.registry.adapters.register(tenant.id, "support", adapter, base_model=str(tiny_dir))
    assert tenant.client.post("/v1/adapters/support/aliases/production", json={"version": 1}).is_success


def test_models_retrieve_names_each_form_of_model(
    make_platform: Callable[..., Platform], tiny_dir: Path, tmp_path: Path
) -> None:
    platform = make_platform(serve_models=False)
    acme, rival = platform.tenant("acme"), platform.tenant("rival")
    register(platform, acme, tiny_dir, tmp_path)
    client = openai.OpenAI(base_url=f"{platform.url}/v1", api_key=acme.key, max_retries=0)

    listed = {model.id for model in client.models.list()}
    for name in ("support", "support@1", "support:production"):
        model = client.models.retrieve(name)
        assert (model.id, model.owned_by, model.object) == (name, acme.id, "model")
        assert name in listed
    base = acme.client.get(f"/v1/models/{tiny_dir}").json()
    assert (base["id"], base["owned_by"]) == (str(tiny_dir), "lorafleet")

    rival_client = openai.OpenAI(base_url=f"{platform.url}/v1", api_key=rival.key, max_retries=0)
    for name in ("support", "support@1", "support:production", "support@2", "nothing", "a@b@c"):
        with pytest.raises(openai.NotFoundError):
            rival_client.models.retrieve(name)
    for name in ("support@2", "support:staging", "bad name"):
        assert error_of(acme.client.get(f"/v1/models/{name}"), 404)["code"] == "model_not_found"


def test_invalid_json_is_named_as_such(make_platform: Callable[..., Platform]) -> None:
    platform = make_platform(serve_models=False)
    acme = platform.tenant("acme")
    headers = {"content-type": "application/json"}
    for body in (b'{"model": "x", "training_file": ', b"not json", b'{"a": 1,}'):
        error = error_of(acme.client.post("/v1/fine_tuning/jobs", content=body, headers=headers), 400)
        assert error["message"].startswith("invalid JSON body"), error
        assert error["param"] is None


@pytest.mark.parametrize(
    ("hyperparameters", "param"),
    [
        ({"n_epochs": 0}, "hyperparameters.n_epochs"),
        ({"n_epochs": 5000}, "hyperparameters.n_epochs"),
        ({"batch_size": 0}, "hyperparameters.batch_size"),
        ({"batch_size": 10**6}, "hyperparameters.batch_size"),
        ({"learning_rate_multiplier": 0}, "hyperparameters.learning_rate_multiplier"),
        ({"learning_rate_multiplier": 1e9}, "hyperparameters.learning_rate_multiplier"),
        ({"n_epochs": "many"}, "hyperparameters.n_epochs"),
        ({"epochs": 2}, "hyperparameters.epochs"),
    ],
)
def test_hyperparameters_are_named_as_sent(
    make_platform: Callable[..., Platform],
    qa_rows_file: Path,
    tiny_dir: Path,
    hyperparameters: dict[str, Any],
    param: str,
) -> None:
    platform = make_platform(serve_models=False)
    acme = platform.tenant("acme")
    file_id = upload(acme.client, qa_rows_file).json()["id"]
    body = {"model": str(tiny_dir), "training_file": file_id, "hyperparameters": hyperparameters}
    error = error_of(acme.client.post("/v1/fine_tuning/jobs", json=body), 400)
    assert error["param"] == param, error
    assert error["message"].startswith(param), error
    assert "recipe" not in error["message"], error
    assert acme.client.get("/v1/fine_tuning/jobs").json()["data"] == []


@pytest.mark.parametrize(
    ("recipe", "param", "says"),
    [
        ({"lora": {"target_modules": ["q_projj"]}}, "recipe.lora.target_modules", "'q_projj'"),
        ({"lora": {"target_modules": "mlp\\.nothing"}}, "recipe.lora.target_modules", "mlp"),
        ({"lora": {"modules_to_save": ["lm_headd"]}}, "recipe.lora.modules_to_save", "'lm_headd'"),
        ({"lora": {"r": 0}}, "recipe.lora.r", "lora.r"),
        ({"training": {"learning_rate": 5}}, "recipe.training.learning_rate", "training.learning_rate"),
        ({"training": {"learnin_rate": 1e-3}}, "recipe.training.learnin_rate", "learnin_rate"),
    ],
)
def test_recipe_fields_are_checked_at_creation(
    make_platform: Callable[..., Platform],
    qa_rows_file: Path,
    tiny_dir: Path,
    recipe: dict[str, Any],
    param: str,
    says: str,
) -> None:
    platform = make_platform(serve_models=False)
    acme = platform.tenant("acme")
    file_id = upload(acme.client, qa_rows_file).json()["id"]
    body = {"model": str(tiny_dir), "training_file": file_id, "recipe": recipe}
    error = error_of(acme.client.post("/v1/fine_tuning/jobs", json=body), 400)
    assert error["param"] == param, error
    assert says in error["message"], error
    if "target_modules" in param or "modules_to_save" in param:  # the answer lists what may be named
        assert all(name in error["message"] for name in ("q_proj", "v_proj", "o_proj", "down_proj"))
    assert acme.client.get("/v1/fine_tuning/jobs").json()["data"] == []
    good = {**body, "recipe": QUICK_RECIPE}  # the same request with good targets is queued
    assert acme.client.post("/v1/fine_tuning/jobs", json=good).status_code == 200


def test_an_engine_failure_of_a_whole_response_is_a_503_in_openai_shape(
    make_platform: Callable[..., Platform], tiny_dir: Path, tmp_path: Path
) -> None:
    platform = make_platform()
    acme = platform.tenant("acme")
    register(platform, acme, tiny_dir, tmp_path)
    version = platform.registry.adapters.resolve(acme.id, "support")
    loaded = platform.app.state.inference.engine.cache.get(version.id)
    for _a, b in loaded.factors.values():  # a broken adapter: every logit of its rows turns to nan
        b.fill_(float("nan"))
    chat = {"model": "support", "messages": [{"role": "user", "content": "q1"}], "max_tokens": 3}
    for route, body in (
        ("/v1/chat/completions", chat),
        ("/v1/completions", {"model": "support", "prompt": "q1", "max_tokens": 3}),
    ):
        error = error_of(acme.client.post(route, json=body), 503)
        assert error["type"] == "server_error" and "non-finite" in error["message"], error
    plain = {**chat, "model": str(tiny_dir)}
    assert acme.client.post("/v1/chat/completions", json=plain).status_code == 200  # the base still serves


def test_an_unexpected_fault_is_a_500_in_openai_shape(
    make_platform: Callable[..., Platform], monkeypatch: pytest.MonkeyPatch
) -> None:
    platform = make_platform(serve_models=False)
    acme = platform.tenant("acme")

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("disk on fire at /srv/secret/path")

    monkeypatch.setattr(platform.registry.adapters, "all", broken)
    error = error_of(acme.client.get("/v1/adapters"), 500)
    assert error["type"] == "server_error"
    assert "/srv/secret" not in error["message"]  # the details stay in the server log


def test_a_bad_event_cursor_is_named(make_platform: Callable[..., Platform]) -> None:
    platform = make_platform(serve_models=False)
    acme = platform.tenant("acme")
    for cursor in ("nope", "ftevent-", "ftevent-²", f"ftevent-{2**70}"):
        answer = acme.client.get("/v1/fine_tuning/jobs/ftjob-x/events", params={"after": cursor})
        assert error_of(answer, 400)["param"] == "after", cursor
