"""The OpenAI-compatible inference routes on a real uvicorn server, called with httpx and the `openai` client:
text equal to the engine's own, streaming, adapters, errors in OpenAI's shape, usage, and cancellation."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from fastapi import FastAPI, Request
from openai.types.chat import ChatCompletionMessageParam

from lorafleet.api import inference
from lorafleet.api.deps import Caller
from lorafleet.api.errors import install_error_handlers
from lorafleet.api.inference import InferenceService, UsageEvent
from lorafleet.api.routes.completions import router
from lorafleet.errors import QuotaExceededError, UnknownAdapterError
from lorafleet.models import load_base
from lorafleet.serving.cache import DirectorySource
from lorafleet.serving.engine import Engine
from lorafleet.serving.generate import SamplingSettings, encode_prompt
from lorafleet.serving.requests import Completion
from lorafleet.serving.requests import Request as EngineRequest
from lorafleet.serving.router import AdapterHandle, AdapterRef, Route
from tests.helpers import save_random_adapter
from tests.support.server import run_server

pytestmark = pytest.mark.integration

BASE = "tiny-base"
ADAPTERS = {("t1", "support-bot"): "support-bot", ("t1", "broken"): "broken"}  # (tenant, model) → ref
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello there"},
]


@dataclass
class Served:
    url: str
    service: InferenceService
    usage: list[UsageEvent]

    def client(self, tenant: str = "t1") -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.url}/v1", api_key="x", max_retries=0, default_headers={"X-Tenant": tenant}
        )

    def engine_completion(self, adapter: str | None, **inputs: object) -> Completion:
        """What the engine itself generates, greedy, for a prompt (as is) or chat messages."""
        chat = "messages" in inputs
        sampling = SamplingSettings(max_tokens=12, temperature=0.0, chat=chat)
        request = EngineRequest(adapter=adapter, sampling=sampling, **inputs)
        return self.service.engine.generate([request])[0]

    def usage_of(self, response_id: str) -> UsageEvent:
        request_id = response_id.split("-", 1)[1]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            events = [event for event in self.usage if event.request_id == request_id]
            if events:
                assert len(events) == 1, events
                return events[0]
            time.sleep(0.01)
        raise AssertionError(f"no usage event for {response_id}")


def route(tenant: str, model: str, user: str | None) -> Route:
    if tenant == "over-quota":
        raise QuotaExceededError(f"tenant {tenant!r} has used its tokens for this month")
    if model == BASE:
        return Route(adapter=None, handle=None, reason="base")
    if (tenant, model) not in ADAPTERS:
        raise UnknownAdapterError(f"tenant {tenant!r} has no adapter {model!r}")
    handle = AdapterHandle(version_id=ADAPTERS[(tenant, model)], reference=f"{model}@1")
    return Route(adapter=AdapterRef(model), handle=handle, reason="explicit")


def authenticate(request: Request) -> Caller:
    if request.headers.get("X-Admin"):
        return Caller(tenant_id=None, key_id="admin", is_admin=True)
    return Caller(tenant_id=request.headers.get("X-Tenant", "t1"), key_id="k1")


def serve(service: InferenceService) -> FastAPI:
    app = FastAPI()
    app.state.authenticate = authenticate
    app.state.inference = service
    app.include_router(router)
    install_error_handlers(app)
    return app


@pytest.fixture(scope="module")
def adapter_source(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> DirectorySource:
    """A random adapter of the tiny model, and an empty directory where another should be."""
    base, _ = load_base(str(tiny_dir), device="cpu")
    folder = tmp_path_factory.mktemp("adapters")
    (folder / "broken").mkdir()
    adapter = save_random_adapter(base, folder / "support-bot")
    return DirectorySource({"support-bot": adapter, "broken": folder / "broken"})


@pytest.fixture(scope="module")
def served(tiny_dir: Path, adapter_source: DirectorySource) -> Iterator[Served]:
    usage: list[UsageEvent] = []
    service = InferenceService.build(
        str(tiny_dir),
        adapter_source,
        base_name=BASE,
        route=route,
        on_usage=usage.append,
        max_batch=4,
        queue_size=16,
        device="cpu",
    )
    try:
        with run_server(serve(service)) as url:
            yield Served(url, service, usage)
    finally:
        service.close()


def post(served: Served, path: str, body: dict[str, object], **headers: str) -> httpx.Response:
    return httpx.post(f"{served.url}{path}", json=body, headers=headers, timeout=30)


def test_completion_is_the_engines_greedy_text_with_its_token_counts(served: Served) -> None:
    response = post(
        served, "/v1/completions", {"model": BASE, "prompt": "hello", "max_tokens": 12, "temperature": 0}
    )

    assert response.status_code == 200, response.text
    body = response.json()
    expected = served.engine_completion(None, prompt="hello")
    assert body["object"] == "text_completion" and body["model"] == BASE
    assert body["choices"][0]["text"] == expected.text
    assert body["choices"][0]["finish_reason"] == expected.finish_reason
    prompt_tokens = len(encode_prompt(served.service.engine.tokenizer, "hello", chat=False)["input_ids"][0])
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(expected.token_ids),
        "total_tokens": prompt_tokens + len(expected.token_ids),
    }


def test_openai_client_completion_and_chat(served: Served) -> None:
    client = served.client()

    completion = client.completions.create(model=BASE, prompt=["hello"], max_tokens=12, temperature=0)
    chat = client.chat.completions.create(model=BASE, messages=MESSAGES, max_tokens=12, temperature=0)

    assert completion.choices[0].text == served.engine_completion(None, prompt="hello").text
    expected = served.engine_completion(None, messages=MESSAGES)
    assert chat.object == "chat.completion"
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == expected.text
    assert chat.usage is not None and chat.usage.completion_tokens == len(expected.token_ids)


def test_streamed_chat_deltas_add_up_to_the_whole_answer(served: Served) -> None:
    client = served.client()
    whole = client.chat.completions.create(model=BASE, messages=MESSAGES, max_tokens=12, temperature=0)

    chunks = list(
        client.chat.completions.create(
            model=BASE,
            messages=MESSAGES,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(chunk.object == "chat.completion.chunk" and chunk.id == chunks[0].id for chunk in chunks)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content
    finishing = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finishing[-1] == whole.choices[0].finish_reason and not any(finishing[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_streamed_completion_ends_with_done(served: Served) -> None:
    body = {"model": BASE, "prompt": "hello", "max_tokens": 12, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{served.url}/v1/completions", json=body, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]

    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert (
        "".join(c["choices"][0]["text"] for c in chunks)
        == served.engine_completion(None, prompt="hello").text
    )
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_an_adapter_changes_the_text_and_serves_what_the_engine_makes(served: Served) -> None:
    client = served.client()

    base = client.completions.create(model=BASE, prompt="hello", max_tokens=12, temperature=0)
    tuned = client.completions.create(model="support-bot", prompt="hello", max_tokens=12, temperature=0)

    assert tuned.choices[0].text == served.engine_completion("support-bot", prompt="hello").text
    assert tuned.choices[0].text != base.choices[0].text
    assert (base.system_fingerprint, tuned.system_fingerprint) == (BASE, "support-bot@1")
    event = served.usage_of(tuned.id)
    assert (event.tenant_id, event.key_id, event.model, event.adapter) == (
        "t1",
        "k1",
        "support-bot",
        "support-bot",
    )
    assert (event.version, event.route) == ("support-bot@1", "explicit")


def test_usage_callback_gets_the_engines_token_counts(served: Served) -> None:
    client = served.client()

    chat = client.chat.completions.create(model=BASE, messages=MESSAGES, max_tokens=12, temperature=0)

    event = served.usage_of(chat.id)
    tokenizer = served.service.engine.tokenizer
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=True)
    expected = served.engine_completion(None, messages=MESSAGES)
    assert event.prompt_tokens == len(prompt["input_ids"]) == expected.prompt_tokens
    assert event.completion_tokens == len(expected.token_ids)
    assert (event.tenant_id, event.model, event.adapter, event.finish_reason) == (
        "t1",
        BASE,
        None,
        expected.finish_reason,
    )
    assert event.seconds > 0


def test_unknown_model_is_404_in_openai_shape(served: Served) -> None:
    response = post(served, "/v1/completions", {"model": "nope", "prompt": "hi"})
    other_tenant = post(
        served, "/v1/completions", {"model": "support-bot", "prompt": "hi"}, **{"X-Tenant": "t2"}
    )

    assert response.status_code == 404
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "nope" in error["message"] and error["param"] == "model" and error["code"] == "model_not_found"
    assert other_tenant.status_code == 404
    with pytest.raises(openai.NotFoundError):
        served.client().chat.completions.create(model="nope", messages=MESSAGES)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"model": BASE, "prompt": "hi", "temperature": -1}, "temperature"),
        ("/v1/completions", {"model": BASE, "prompt": ["a", "b"]}, "prompt"),
        ("/v1/completions", {"model": BASE, "prompt": "hi", "n": 2}, "n"),
        ("/v1/chat/completions", {"model": BASE, "messages": MESSAGES, "top_p": 0}, "top_p"),
        (
            "/v1/chat/completions",
            {"model": BASE, "messages": [{"role": "tool", "content": "x"}]},
            "messages.0.role",
        ),
        ("/v1/chat/completions", {"model": BASE, "messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"model": BASE, "prompt": ""}, "prompt"),
    ],
)
def test_bad_fields_are_400_naming_the_field(
    served: Served, path: str, body: dict[str, object], param: str
) -> None:
    response = post(served, path, body)

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert param.split(".")[0] in error["message"]


def test_openai_client_sees_a_bad_temperature_as_bad_request(served: Served) -> None:
    with pytest.raises(openai.BadRequestError, match="temperature"):
        served.client().completions.create(model=BASE, prompt="hi", temperature=-1)


def test_unknown_fields_are_ignored_and_extensions_honoured(served: Served) -> None:
    body = {"model": BASE, "prompt": "hi", "max_tokens": 5, "temperature": 0, "ignore_eos": True, "x": 1}

    response = post(served, "/v1/completions", body)

    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 5


def test_max_completion_tokens_wins_over_max_tokens(served: Served) -> None:
    body = {
        "model": BASE,
        "messages": MESSAGES,
        "max_tokens": 9,
        "max_completion_tokens": 3,
        "ignore_eos": True,
    }

    response = post(served, "/v1/chat/completions", body)

    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 3


def test_an_adapter_that_cannot_be_loaded_is_422_naming_it(served: Served) -> None:
    response = post(served, "/v1/completions", {"model": "broken", "prompt": "hi"})

    assert response.status_code == 422
    error = response.json()["error"]
    assert "'broken'" in error["message"] and error["code"] == "adapter_unavailable"


def test_a_tenant_over_its_token_quota_gets_429_with_retry_after(served: Served) -> None:
    response = post(served, "/v1/completions", {"model": BASE, "prompt": "hi"}, **{"X-Tenant": "over-quota"})

    assert response.status_code == 429
    assert response.json()["error"]["code"] == "quota_exceeded"
    assert int(response.headers["Retry-After"]) >= 1


def test_the_admin_key_is_refused(served: Served) -> None:
    response = post(served, "/v1/completions", {"model": BASE, "prompt": "hi"}, **{"X-Admin": "1"})

    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_error"


@contextmanager
def slow_steps(engine: Engine) -> Iterator[None]:
    """Each engine step 10 ms longer, so a long request is surely still generating when its client leaves."""
    step = engine.step

    def slow_step() -> bool:
        time.sleep(0.01)
        return step()

    engine.step = slow_step
    try:
        yield
    finally:
        engine.step = step


LONG = {"model": BASE, "prompt": "hello", "max_tokens": 480, "temperature": 0, "ignore_eos": True}


def test_client_going_away_mid_stream_cancels_the_request(served: Served) -> None:
    engine = served.service.engine

    with slow_steps(engine):
        body = {**LONG, "stream": True}
        with httpx.stream("POST", f"{served.url}/v1/completions", json=body, timeout=30) as response:
            first = next(line for line in response.iter_lines() if line)
        event = served.usage_of(json.loads(first.removeprefix("data: "))["id"])

    assert event.finish_reason == "cancelled"
    assert 0 < event.completion_tokens < 480
    assert engine.stats()["running"] == 0


def test_client_going_away_before_the_answer_cancels_the_request(served: Served) -> None:
    engine = served.service.engine
    before = len(served.usage)

    with slow_steps(engine):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{served.url}/v1/completions", json=LONG, timeout=httpx.Timeout(30, read=0.3))
        deadline = time.monotonic() + 10
        while len(served.usage) == before and time.monotonic() < deadline:
            time.sleep(0.01)

    [event] = served.usage[before:]
    assert event.finish_reason == "cancelled"
    assert event.completion_tokens < 480
    assert engine.stats()["running"] == 0


@pytest.fixture
def stalled(tiny_dir: Path, adapter_source: DirectorySource) -> Iterator[Served]:
    """A server whose engine is stopped, with room for one waiting request."""
    service = InferenceService.build(
        str(tiny_dir), adapter_source, base_name=BASE, route=route, queue_size=1, device="cpu"
    )
    service.engine.stop()
    try:
        with run_server(serve(service)) as url:
            yield Served(url, service, [])
    finally:
        service.close()


def test_a_full_queue_is_429_with_retry_after(stalled: Served) -> None:
    stalled.service.engine.submit(EngineRequest(prompt="hi", sampling=SamplingSettings(max_tokens=2)))

    response = post(stalled, "/v1/completions", {"model": BASE, "prompt": "hi"})

    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert response.json()["error"]["type"] == "rate_limit_error"
    with pytest.raises(openai.RateLimitError):
        stalled.client().chat.completions.create(model=BASE, messages=MESSAGES)


def test_a_queued_stream_is_kept_alive_with_sse_comments(
    stalled: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inference, "KEEP_ALIVE_SECONDS", 0.1)
    body = {"model": BASE, "messages": MESSAGES, "stream": True}

    with httpx.stream("POST", f"{stalled.url}/v1/chat/completions", json=body, timeout=10) as response:
        lines = response.iter_lines()
        first = next(line for line in lines if line)
        second = next(line for line in lines if line)

    assert first.startswith("data: ") and '"role":"assistant"' in first
    assert second == ": keep-alive"  # the engine is stopped: the request waits in the queue


def test_a_finished_stream_reports_usage_once(served: Served) -> None:
    # the end of the stream and the response's closing both report unless reported: one event comes out
    client = served.client()
    chunks = list(
        client.completions.create(model=BASE, prompt="hey", max_tokens=6, temperature=0, stream=True)
    )

    time.sleep(0.1)
    assert len([e for e in served.usage if e.request_id == chunks[0].id.split("-", 1)[1]]) == 1


# --- sampling fields: refused at the door, or served without touching anyone else's request ------------

BAD_SAMPLING: list[tuple[dict[str, object], str]] = [
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": 0}, "top_p"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"frequency_penalty": 1}, "frequency_penalty"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"n": 2}, "n"),
    ({"n": 0}, "n"),
    ({"seed": 2**64}, "seed"),
    ({"seed": -(2**63) - 1}, "seed"),
    ({"stop": [f"s{i}" for i in range(17)]}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": 2**31}, "top_k"),
    ({"repetition_penalty": 1e-300}, "repetition_penalty"),
    ({"repetition_penalty": 0.009}, "repetition_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"repetition_penalty": -1}, "repetition_penalty"),
    ({"repetition_penalty": 10.5}, "repetition_penalty"),
]


@pytest.mark.parametrize(("fields", "param"), BAD_SAMPLING, ids=[f"{f}" for f, _ in BAD_SAMPLING])
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_each_bad_sampling_value_is_400_naming_the_field(
    served: Served, path: str, fields: dict[str, object], param: str
) -> None:
    inputs = {"prompt": "Hello"} if path == "/v1/completions" else {"messages": MESSAGES}

    response = post(served, path, {"model": BASE, "max_tokens": 4, **inputs, **fields})

    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert error["message"].startswith(param), error


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ('"temperature": NaN', "temperature"),
        ('"temperature": Infinity', "temperature"),
        ('"top_p": NaN', "top_p"),
        ('"repetition_penalty": -Infinity', "repetition_penalty"),
        ('"presence_penalty": NaN', "presence_penalty"),
        ('"frequency_penalty": Infinity', "frequency_penalty"),
    ],
)
def test_nan_and_infinity_in_the_json_are_400_naming_the_field(served: Served, raw: str, param: str) -> None:
    body = f'{{"model": "{BASE}", "prompt": "Hello", "max_tokens": 4, {raw}}}'.encode()

    response = httpx.post(
        f"{served.url}/v1/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and "finite number" in error["message"], error


@pytest.mark.parametrize("temperature", [1e-45, 1e-300])
def test_a_tiny_temperature_is_served_as_greedy(served: Served, temperature: float) -> None:
    body = {"model": BASE, "prompt": "hello", "max_tokens": 12, "temperature": temperature}

    response = post(served, "/v1/completions", body)

    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == served.engine_completion(None, prompt="hello").text


@dataclass
class Answer:
    """What a client got: the status, the text (joined from the chunks when streamed), and how it ended."""

    status: int
    text: str
    finish: str | None  # stop or length; "error" for an error event in a stream


def ask(served: Served, path: str, body: dict[str, object], tenant: str) -> Answer:
    """Send `body` as `tenant` and read the whole answer, streamed or not."""
    headers = {"X-Tenant": tenant}
    if not body.get("stream"):
        response = httpx.post(f"{served.url}{path}", json=body, headers=headers, timeout=60)
        if response.status_code != 200:
            return Answer(response.status_code, response.text, None)
        choice = response.json()["choices"][0]
        text = choice["message"]["content"] if "message" in choice else choice["text"]
        return Answer(200, text, choice["finish_reason"])
    with httpx.stream("POST", f"{served.url}{path}", json=body, headers=headers, timeout=60) as response:
        lines = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    events = [json.loads(line) for line in lines if line != "[DONE]"]
    if any("error" in event for event in events):
        return Answer(response.status_code, "", "error")
    choices = [event["choices"][0] for event in events if event["choices"]]
    text = "".join(c["delta"].get("content") or "" if "delta" in c else c["text"] for c in choices)
    return Answer(response.status_code, text, choices[-1]["finish_reason"])


GREEDY_CHAT = {"messages": MESSAGES, "max_tokens": 12, "temperature": 0}
SEEDED_PROMPT = {"prompt": "hello", "max_tokens": 12, "temperature": 0.8, "seed": 11}
OTHERS: list[tuple[str, dict[str, object], str]] = [  # (path, body, tenant): other tenants' requests
    ("/v1/chat/completions", {"model": "support-bot", **GREEDY_CHAT}, "t1"),
    ("/v1/chat/completions", {"model": BASE, **GREEDY_CHAT, "stream": True}, "t2"),
    ("/v1/completions", {"model": BASE, **SEEDED_PROMPT, "stream": True}, "t3"),
]


@pytest.mark.parametrize(
    "poison",
    [{"temperature": 1e-45}, {"temperature": 1.0, "seed": 3, "repetition_penalty": 0.01}],
    ids=["temperature 1e-45", "lowest repetition_penalty"],
)
def test_a_poisoned_request_leaves_other_tenants_in_its_batch_as_alone(
    served: Served, poison: dict[str, object]
) -> None:
    engine = served.service.engine
    requests = [
        *OTHERS,
        ("/v1/completions", {"model": BASE, "prompt": "Hello", "max_tokens": 12, **poison}, "t9"),
    ]
    alone = [ask(served, *request) for request in requests]
    assert all(answer.status == 200 and answer.finish in ("stop", "length") for answer in alone), alone

    engine.stop()  # queue them all, then let them in together: one batch
    try:
        with ThreadPoolExecutor(len(requests)) as pool:
            futures = [pool.submit(ask, served, *request) for request in requests]
            deadline = time.monotonic() + 30
            while engine.stats()["waiting"] < len(requests) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert engine.stats()["waiting"] == len(requests) <= engine.max_batch
            engine.start()
            together = [future.result(timeout=60) for future in futures]
    finally:
        engine.start()

    assert together == alone
